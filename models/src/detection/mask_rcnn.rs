//! Mask R-CNN assembled from the torchvision-checked pieces, as
//! torchvision's `MaskRCNN` / `GeneralizedRCNN`
//! (torchvision/models/detection/{mask_rcnn,generalized_rcnn,roi_heads,transform}.py):
//! ResNet body -> FPN -> RPN -> box ROI heads -> mask branch ->
//! `transform.postprocess`.
//!
//! What differs from torchvision, and why:
//! - The input transform (resize, normalise, pad) is not part of the model:
//!   callers pass the batch [`super::data::DetTransform`] + `pad_batch`
//!   produce, with the sizes before padding and the original sizes.
//! - The backbone's BatchNorm layers stand in for `FrozenBatchNorm2d`: they
//!   are kept in eval mode whatever [`MaskRcnn::set_training`] is told, and
//!   [`MaskRcnn::trainable_params`] leaves their weights out (they stay in
//!   [`MaskRcnn::params`] so checkpoints hold them). They and the frozen
//!   stages' weights are frozen params (`Param::set_frozen`), as
//!   torchvision's are `requires_grad_(False)`, so no backward runs for them.
//! - Train mode: `RoiHeads::select_training_samples` does not expose the
//!   matched gt index of each sampled proposal, so the mask branch re-matches
//!   its positive proposals with `roi_heads.matcher`. With
//!   `allow_low_quality_matches = false` (Mask R-CNN's default) a proposal's
//!   match depends on that proposal alone, so the indices equal torchvision's.
//! - The mask head's `dim_reduced` (torchvision: 256) is `fpn_channels`.

use super::data::DetTarget;
use super::fpn::Fpn;
use super::mask_head::{
    maskrcnn_inference, maskrcnn_loss, paste_masks_in_image, MaskHead, MaskHeadConfig,
};
use super::matcher::{BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS};
use super::roi_heads::{fastrcnn_loss, MultiScaleRoIAlign, RoiHeads, RoiTarget};
use super::rpn::Rpn;
use crate::resnet::{ResNet, ResNetConfig};
use engine::nn::{Buffer, Module, Param};
use engine::ops::box_iou;
use engine::{DType, Device, Error, Result, Rng, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// Shape of a Mask R-CNN with a ResNet-FPN backbone.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskRcnnConfig {
    /// `resnet18`, `resnet34` or `resnet50`.
    pub arch: String,
    /// Width of the first stage; stages are `width * [1, 2, 4, 8]` (64 in
    /// torchvision).
    pub width: usize,
    /// Classes including background.
    pub num_classes: usize,
    /// FPN output channels (256); also the mask head's channels.
    pub fpn_channels: usize,
    /// Box head MLP width (1024).
    pub representation_size: usize,
    /// Backbone stages trained, counted from the top (0..=5, torchvision's
    /// `trainable_backbone_layers`, default 3: conv1 and layer1 frozen).
    pub trainable_layers: usize,
    /// Image channels (3; 1 for gray images such as the built-in benchmark).
    pub in_channels: usize,
}

impl MaskRcnnConfig {
    /// torchvision's `maskrcnn_resnet50_fpn` settings on `arch`: width 64,
    /// FPN 256, representation 1024, 3 trainable backbone layers.
    pub fn torchvision(arch: &str, num_classes: usize) -> MaskRcnnConfig {
        MaskRcnnConfig {
            arch: arch.to_string(),
            width: 64,
            num_classes,
            fpn_channels: 256,
            representation_size: 1024,
            trainable_layers: 3,
            in_channels: 3,
        }
    }
}

/// One image's detections at its original size, in decreasing score order.
pub struct ImageDetections {
    /// (x1, y1, x2, y2) in original-image pixels.
    pub boxes: Vec<[f64; 4]>,
    pub scores: Vec<f64>,
    /// Class indices >= 1.
    pub labels: Vec<i64>,
    /// [K, 1, H0, W0] mask probabilities pasted at the original size.
    pub masks: Tensor,
}

/// torchvision's five Mask R-CNN training losses (scalars).
pub struct MaskRcnnLosses {
    pub classifier: Tensor,
    pub box_reg: Tensor,
    pub mask: Tensor,
    pub objectness: Tensor,
    pub rpn_box_reg: Tensor,
}

impl MaskRcnnLosses {
    /// classifier + box_reg + mask + objectness + rpn_box_reg (what the
    /// torchvision references back-propagate).
    pub fn total(&self) -> Result<Tensor> {
        self.classifier
            .add(&self.box_reg)?
            .add(&self.mask)?
            .add(&self.objectness)?
            .add(&self.rpn_box_reg)
    }
}

/// torchvision's `MaskRCNN` (without its transform); train mode by default.
pub struct MaskRcnn {
    pub config: MaskRcnnConfig,
    /// `backbone.body.*`, no fc; BatchNorm always in eval mode.
    pub backbone: ResNet,
    /// `backbone.fpn.*`
    pub fpn: Fpn,
    /// `rpn.*`
    pub rpn: Rpn,
    /// `roi_heads.box_head.*`, `roi_heads.box_predictor.*`
    pub roi_heads: RoiHeads,
    /// 14x14, sampling ratio 2.
    pub mask_roi_pool: MultiScaleRoIAlign,
    /// `roi_heads.mask_head.*`, `roi_heads.mask_predictor.*`
    pub mask_head: MaskHead,
    /// See [`MaskRcnn::set_compute_dtype`].
    compute: DType,
    training: AtomicBool,
}

/// The 4 FPN levels the ROI poolers use (P2..P5; P6 is the RPN's only).
const POOLED_LEVELS: usize = 4;

impl MaskRcnn {
    /// Builds the model in f32, drawing the backbone, FPN, RPN, box heads
    /// and mask head from `rng` in that order, with torchvision's names.
    pub fn new(config: MaskRcnnConfig, rng: &mut Rng) -> Result<MaskRcnn> {
        const OP: &str = "MaskRcnn::new";
        if config.width == 0 || config.trainable_layers > 5 {
            return Err(Error::arg(
                OP,
                format!(
                    "width must be > 0 ({}) and trainable_layers in 0..=5 ({})",
                    config.width, config.trainable_layers
                ),
            ));
        }
        let w = config.width;
        let mut rc = ResNetConfig::by_name(&config.arch, 1)?
            .with_widths([w, 2 * w, 4 * w, 8 * w])
            .with_in_channels(config.in_channels);
        rc.num_classes = None;
        let exp = rc.block.expansion();
        let in_channels: Vec<usize> = rc.widths.iter().map(|&c| c * exp).collect();
        let backbone = ResNet::new("backbone.body", rc, rng)?;
        let fpn = Fpn::new("backbone.fpn", &in_channels, config.fpn_channels, rng)?;
        let rpn = Rpn::fpn_default("rpn", config.fpn_channels, DType::F32, rng)?;
        let roi_heads = RoiHeads::new(
            "roi_heads",
            config.fpn_channels,
            config.representation_size,
            config.num_classes,
            DType::F32,
            rng,
        )?;
        let mask_config = MaskHeadConfig {
            in_channels: config.fpn_channels,
            layers: vec![config.fpn_channels; 4],
            dilation: 1,
            dim_reduced: config.fpn_channels,
            num_classes: config.num_classes,
        };
        let mask_head = MaskHead::new("roi_heads", &mask_config, DType::F32, rng)?;
        let mask_roi_pool = MultiScaleRoIAlign {
            output_size: [14, 14],
            ..MultiScaleRoIAlign::box_default()
        };
        let model = MaskRcnn {
            config,
            backbone,
            fpn,
            rpn,
            roi_heads,
            mask_roi_pool,
            mask_head,
            compute: DType::F32,
            training: AtomicBool::new(true),
        };
        // what torchvision leaves with requires_grad False (FrozenBatchNorm2d
        // has no params; `_resnet_fpn_extractor` freezes all but the first
        // `trainable_layers` of layer4, layer3, layer2, layer1, conv1) is
        // frozen here too: no gradient is computed for it, nor for the
        // stages before the first trainable one (their backward is skipped)
        let stages = ["layer4", "layer3", "layer2", "layer1", "conv1"];
        let train = &stages[..model.config.trainable_layers.min(5)];
        for p in model.backbone.params() {
            let name = p.name().strip_prefix("backbone.body.").unwrap_or(p.name());
            // the ResNet's convs have no bias, so its rank-1 parameters are
            // exactly the BatchNorm weights and biases
            let trained = p.dims().len() > 1 && train.iter().any(|s| name.starts_with(s));
            p.set_frozen(!trained);
        }
        model.set_training(true);
        Ok(model)
    }

    /// Train or eval mode for the RPN and ROI heads; the backbone's
    /// BatchNorm stays in eval mode (FrozenBatchNorm2d).
    pub fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
        self.backbone.set_training(false);
        self.fpn.set_training(training);
        self.rpn.set_training(training);
        self.roi_heads.set_training(training);
        self.mask_head.set_training(training);
    }

    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }

    /// What the convolutions and linear layers compute in for f32 images:
    /// f32 (the default), bf16 or f16, as under torchvision's autocast.
    /// RoIAlign, box coding, proposal selection, post-processing and the
    /// losses stay in f32 ([`super::box_dtype`]); the parameters stay f32
    /// (each layer casts its weights per forward, and the cast's backward
    /// hands back f32 gradients). f64 images always compute in f64.
    pub fn set_compute_dtype(&mut self, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::dtype(
                "MaskRcnn::set_compute_dtype",
                "f32, bf16 or f16",
                dtype,
            ));
        }
        self.compute = dtype;
        Ok(())
    }

    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    /// Every parameter (backbone BN weights included), in a stable order:
    /// backbone, FPN, RPN, box heads, mask head.
    pub fn params(&self) -> Vec<Param> {
        let mut p = self.backbone.params();
        p.extend(self.fpn.params());
        p.extend(self.rpn.params());
        p.extend(self.roi_heads.params());
        p.extend(self.mask_head.params());
        p
    }

    /// The backbone's BN running statistics.
    pub fn buffers(&self) -> Vec<Buffer> {
        self.backbone.buffers()
    }

    /// Moves every parameter and buffer to `device` (all or none, as
    /// `Module::to_device`); the model computes where its tensors are.
    pub fn to_device(&self, device: Device) -> Result<()> {
        engine::nn::move_to_device(&self.params(), &self.buffers(), device)
    }

    /// Where the parameters are.
    pub fn device(&self) -> Device {
        self.params().first().map_or(Device::Cpu, |p| p.device())
    }

    /// What torchvision optimises: [`Self::params`] but the frozen ones
    /// (`MaskRcnn::new` freezes what torchvision does).
    pub fn trainable_params(&self) -> Vec<Param> {
        self.params()
            .into_iter()
            .filter(|p| !p.is_frozen())
            .collect()
    }

    /// Backbone + FPN: P2..P6, f32 images computed in the compute dtype.
    fn features(&self, images: &Tensor) -> Result<Vec<Tensor>> {
        let x = match images.dtype() {
            DType::F32 => images.to_dtype(self.compute)?,
            _ => images.clone(),
        };
        self.fpn.forward(&self.backbone.stage_outputs(&x)?)
    }

    fn check_batch(
        op: &'static str,
        images: &Tensor,
        image_sizes: &[(usize, usize)],
    ) -> Result<(usize, usize)> {
        let d = images.dims();
        if d.len() != 4 || !(images.dtype() == DType::F32 || images.dtype() == DType::F64) {
            return Err(Error::shape(
                op,
                format!(
                    "images must be a float [B, C, H, W] batch, got {d:?} {}",
                    images.dtype()
                ),
            ));
        }
        if image_sizes.len() != d[0] {
            return Err(Error::arg(
                op,
                format!("{} image sizes for a batch of {}", image_sizes.len(), d[0]),
            ));
        }
        for (b, &(h, w)) in image_sizes.iter().enumerate() {
            if h == 0 || w == 0 || h > d[2] || w > d[3] {
                return Err(Error::arg(
                    op,
                    format!(
                        "image {b} has size {h} x {w}, outside the padded {} x {}",
                        d[2], d[3]
                    ),
                ));
            }
        }
        Ok((d[2], d[3]))
    }

    /// torchvision's `GeneralizedRCNN.forward` in eval mode (the model must
    /// be in eval mode): `images` the normalised, padded batch [B, C, H, W],
    /// `image_sizes` each image's (height, width) inside it,
    /// `original_sizes` each image's size before resizing. Proposals from
    /// the RPN on P2..P6, detections from the ROI heads on P2..P5; each
    /// detection's box pooled 14x14 from P2..P5, mask logits from the mask
    /// head, sigmoid of its class's channel (`maskrcnn_inference`). Then
    /// `transform.postprocess`: boxes times (original / resized) per axis,
    /// ratios in f32 (torchvision's `resize_boxes`), and masks pasted at
    /// the original size with `paste_masks_in_image(.., padding 1)`.
    pub fn forward_eval(
        &self,
        images: &Tensor,
        image_sizes: &[(usize, usize)],
        original_sizes: &[(usize, usize)],
    ) -> Result<Vec<ImageDetections>> {
        const OP: &str = "MaskRcnn::forward_eval";
        if self.is_training() || self.rpn.is_training() || self.roi_heads.is_training() {
            return Err(Error::arg(
                OP,
                "the model is in train mode; call set_training(false) first",
            ));
        }
        let padded = Self::check_batch(OP, images, image_sizes)?;
        if original_sizes.len() != image_sizes.len()
            || original_sizes.iter().any(|&(h, w)| h == 0 || w == 0)
        {
            return Err(Error::arg(
                OP,
                format!("need one non-empty original size per image, got {original_sizes:?}"),
            ));
        }
        let dtype = images.dtype();
        let _guard = engine::no_grad();
        let feats = self.features(images)?;
        // eval mode draws nothing from the rng
        let mut rng = Rng::new(0);
        let proposals = self
            .rpn
            .forward_with_scores(&feats, image_sizes, padded, None, &mut rng)?
            .boxes;
        let pooled_feats = &feats[..POOLED_LEVELS];
        let dets = self
            .roi_heads
            .forward(pooled_feats, &proposals, image_sizes, None, &mut rng)?
            .detections;
        let total: usize = dets.iter().map(|d| d.boxes.len()).sum();
        let probs: Vec<Tensor> = if total == 0 {
            let m = 2 * self.mask_roi_pool.output_size[0];
            (0..dets.len())
                .map(|_| Tensor::zeros(&[0, 1, m, m], dtype))
                .collect()
        } else {
            let boxes: Vec<Vec<[f64; 4]>> = dets.iter().map(|d| d.boxes.clone()).collect();
            let pooled = self
                .mask_roi_pool
                .forward(pooled_feats, &boxes, image_sizes)?;
            let logits = self.mask_head.forward(&pooled.features)?;
            let labels: Vec<Vec<usize>> = dets
                .iter()
                .map(|d| d.labels.iter().map(|&l| l as usize).collect())
                .collect();
            maskrcnn_inference(&logits, &labels)?
        };
        let mut out = Vec::with_capacity(dets.len());
        for (b, (d, p)) in dets.into_iter().zip(probs).enumerate() {
            let (h, w) = image_sizes[b];
            let (oh, ow) = original_sizes[b];
            let (rh, rw) = (oh as f32 / h as f32, ow as f32 / w as f32);
            let boxes: Vec<[f64; 4]> = d
                .boxes
                .iter()
                .map(|bx| {
                    let r = [rw, rh, rw, rh];
                    std::array::from_fn(|q| match dtype {
                        DType::F32 => (bx[q] as f32 * r[q]) as f64,
                        _ => bx[q] * r[q] as f64,
                    })
                })
                .collect();
            let k = boxes.len();
            let masks = if k == 0 {
                Tensor::zeros(&[0, 1, oh, ow], dtype)
            } else {
                let bt = Tensor::from_vec(
                    boxes.iter().flatten().copied().collect::<Vec<f64>>(),
                    &[k, 4],
                )?
                .to_dtype(dtype)?;
                paste_masks_in_image(&p, &bt, [oh, ow], 1)?
            };
            out.push(ImageDetections {
                boxes,
                scores: d.scores,
                labels: d.labels,
                masks,
            });
        }
        Ok(out)
    }

    /// torchvision's `GeneralizedRCNN.forward` in train mode (the model
    /// must be in train mode): `images` [B, C, H, W] normalised and padded,
    /// `image_sizes` each image's size inside it, `targets` each image's gt
    /// at that size (boxes, labels, masks). RPN losses on P2..P6; box
    /// losses on the proposals sampled by `roi_heads`
    /// (`select_training_samples`, gt boxes appended); mask loss
    /// (`maskrcnn_loss`, 28x28 targets) on the sampled positives, pooled
    /// 14x14 from P2..P5, each with its gt matched by `roi_heads.matcher`
    /// (see the module docs). `rng` drives both samplers.
    pub fn forward_train(
        &self,
        images: &Tensor,
        image_sizes: &[(usize, usize)],
        targets: &[DetTarget],
        rng: &mut Rng,
    ) -> Result<MaskRcnnLosses> {
        const OP: &str = "MaskRcnn::forward_train";
        if !self.is_training() {
            return Err(Error::arg(
                OP,
                "the model is in eval mode; call set_training(true) first",
            ));
        }
        let padded = Self::check_batch(OP, images, image_sizes)?;
        check_targets(targets, image_sizes, self.config.num_classes)?;
        let dtype = images.dtype();
        let feats = self.features(images)?;
        let gt_boxes: Vec<Vec<[f32; 4]>> = targets.iter().map(|t| t.boxes.clone()).collect();
        let rpn =
            self.rpn
                .forward_with_scores(&feats, image_sizes, padded, Some(&gt_boxes), rng)?;
        let rpn_losses = rpn
            .losses
            .ok_or_else(|| Error::arg(OP, "the RPN returned no losses in train mode"))?;
        let roi_targets: Vec<RoiTarget> = targets
            .iter()
            .map(|t| RoiTarget {
                boxes: t.boxes.iter().map(|b| b.map(|v| v as f64)).collect(),
                labels: t.labels.clone(),
            })
            .collect();
        let pooled_feats = &feats[..POOLED_LEVELS];
        let heads = &self.roi_heads;
        let samples = match dtype {
            DType::F64 => heads.select_training_samples::<f64>(&rpn.boxes, &roi_targets, rng)?,
            _ => heads.select_training_samples::<f32>(&rpn.boxes, &roi_targets, rng)?,
        };
        let pooled = heads
            .box_roi_pool
            .forward(pooled_feats, &samples.proposals, image_sizes)?;
        let (logits, deltas) = heads.predict(&pooled.features)?;
        let labels = samples.labels.concat();
        let regs = samples.regression_targets.concat();
        let box_losses = fastrcnn_loss(&logits, &deltas, &labels, &regs)?;

        // mask branch on the positives, re-matched to their gt
        let mut positives = Vec::with_capacity(targets.len());
        let mut matched = Vec::with_capacity(targets.len());
        for (b, t) in roi_targets.iter().enumerate() {
            let pos: Vec<[f64; 4]> = samples.proposals[b]
                .iter()
                .zip(&samples.labels[b])
                .filter(|(_, &l)| l > 0)
                .map(|(p, _)| *p)
                .collect();
            matched.push(self.match_positives(&pos, &t.boxes, dtype)?);
            positives.push(pos);
        }
        let n_pos: usize = positives.iter().map(|p| p.len()).sum();
        let gt_masks: Vec<Tensor> = targets.iter().map(mask_tensor).collect::<Result<_>>()?;
        let gt_labels: Vec<Vec<usize>> = targets
            .iter()
            .map(|t| t.labels.iter().map(|&l| l as usize).collect())
            .collect();
        let mask = if n_pos == 0 {
            // torchvision: mask_logits.sum() * 0 over an empty batch of logits
            self.mask_head.params()[0].get().sum_all()?.scale(0.0)?
        } else {
            let pooled = self
                .mask_roi_pool
                .forward(pooled_feats, &positives, image_sizes)?;
            let mask_logits = self.mask_head.forward(&pooled.features)?;
            // the rows are the images' positives in order: one run per image
            // that has any, so maskrcnn_loss sees every row with its target
            let (mut props, mut masks, mut labs, mut idxs) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (b, pos) in positives.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
                let n = pos.len();
                let flat: Vec<f64> = pos.iter().flatten().copied().collect();
                props.push(Tensor::from_vec(flat, &[n, 4])?.to_dtype(dtype)?);
                masks.push(gt_masks[b].clone());
                labs.push(gt_labels[b].clone());
                idxs.push(matched[b].clone());
            }
            maskrcnn_loss(&mask_logits, &props, &masks, &labs, &idxs)?
        };
        Ok(MaskRcnnLosses {
            classifier: box_losses.classifier,
            box_reg: box_losses.box_reg,
            mask,
            objectness: rpn_losses.objectness,
            rpn_box_reg: rpn_losses.box_reg,
        })
    }

    /// The gt index `roi_heads.matcher` gives each positive proposal, in
    /// the images' dtype (as `select_training_samples`).
    fn match_positives(
        &self,
        pos: &[[f64; 4]],
        gt: &[[f64; 4]],
        dtype: DType,
    ) -> Result<Vec<usize>> {
        const OP: &str = "MaskRcnn::forward_train";
        if pos.is_empty() {
            return Ok(Vec::new());
        }
        let t = |b: &[[f64; 4]]| -> Result<Tensor> {
            Tensor::from_vec(
                b.iter().flatten().copied().collect::<Vec<f64>>(),
                &[b.len(), 4],
            )?
            .to_dtype(dtype)
        };
        let iou = box_iou(&t(gt)?, &t(pos)?)?;
        let m = match dtype {
            DType::F64 => self.roi_heads.matcher.match_or_background(
                &iou.float_data::<f64>()?,
                gt.len(),
                pos.len(),
            )?,
            _ => self.roi_heads.matcher.match_or_background(
                &iou.float_data::<f32>()?,
                gt.len(),
                pos.len(),
            )?,
        };
        m.iter()
            .map(|&i| match i {
                BELOW_LOW_THRESHOLD | BETWEEN_THRESHOLDS => Err(Error::arg(
                    OP,
                    "a positive proposal no longer matches a gt box (the matcher allows low-quality matches, which the mask branch cannot reproduce)",
                )),
                i => Ok(i as usize),
            })
            .collect()
    }
}

/// Validates the training targets against the batch.
fn check_targets(
    targets: &[DetTarget],
    image_sizes: &[(usize, usize)],
    num_classes: usize,
) -> Result<()> {
    const OP: &str = "MaskRcnn::forward_train";
    if targets.len() != image_sizes.len() {
        return Err(Error::arg(
            OP,
            format!(
                "{} targets for a batch of {}",
                targets.len(),
                image_sizes.len()
            ),
        ));
    }
    for (b, t) in targets.iter().enumerate() {
        if t.size != image_sizes[b] {
            return Err(Error::arg(
                OP,
                format!(
                    "target {b} refers to size {:?} but the image is {:?}",
                    t.size, image_sizes[b]
                ),
            ));
        }
        if t.labels.len() != t.boxes.len() || t.masks.len() != t.boxes.len() {
            return Err(Error::arg(
                OP,
                format!(
                    "target {b} has {} boxes, {} labels and {} masks",
                    t.boxes.len(),
                    t.labels.len(),
                    t.masks.len()
                ),
            ));
        }
        let n = t.size.0 * t.size.1;
        if let Some(g) = t.masks.iter().position(|m| m.len() != n) {
            return Err(Error::arg(
                OP,
                format!(
                    "mask {g} of target {b} has {} values, expected {n}",
                    t.masks[g].len()
                ),
            ));
        }
        for (g, (bx, &l)) in t.boxes.iter().zip(&t.labels).enumerate() {
            if !bx.iter().all(|v| v.is_finite()) || bx[2] <= bx[0] || bx[3] <= bx[1] {
                return Err(Error::arg(
                    OP,
                    format!("box {g} of target {b} is {bx:?}; need x2 > x1, y2 > y1"),
                ));
            }
            if l < 1 || l as usize >= num_classes {
                return Err(Error::arg(
                    OP,
                    format!("label {g} of target {b} is {l}, outside [1, {num_classes})"),
                ));
            }
        }
    }
    Ok(())
}

/// A target's masks as f32 [N, H, W].
fn mask_tensor(t: &DetTarget) -> Result<Tensor> {
    let (h, w) = t.size;
    let v: Vec<f32> = t.masks.iter().flatten().map(|&m| m as f32).collect();
    Tensor::from_vec(v, &[t.masks.len(), h, w])
}
