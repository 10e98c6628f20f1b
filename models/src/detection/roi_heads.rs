//! The box branch of Faster / Mask R-CNN's ROI heads, exactly as
//! torchvision's `MultiScaleRoIAlign` + `LevelMapper`
//! (torchvision/ops/poolers.py), `TwoMLPHead` + `FastRCNNPredictor`
//! (torchvision/models/detection/faster_rcnn.py) and `RoIHeads`' box path:
//! training-time proposal selection, `fastrcnn_loss` and
//! `postprocess_detections` (torchvision/models/detection/roi_heads.py).
//!
//! [`MultiScaleRoIAlign::forward`] is the engine op
//! `engine::ops::detection::multiscale_roi_align` (one op over all levels,
//! on the features' device, rows in input order as torchvision's).
//!
//! What differs from torchvision, and why:
//! - The sampler draws with `engine::Rng` (see [`super::sampler`]); whenever
//!   every eligible proposal is sampled the losses equal torchvision's.
//! - The box-regression loss is a mean over the positives' 4 deltas
//!   rescaled to torchvision's sum over N (one extra rounding).
//! - In eval mode targets are not used (as torchvision); no validation loss.

use super::box_coder::{clip_boxes_to_image, remove_small_boxes, BoxCoder};
use super::box_dtype;
use super::host::{count_uploads, read, to_device_of};
use super::matcher::Matcher;
use super::sampler::BalancedPositiveNegativeSampler;
use engine::nn::{join, Linear, Module, Param};
use engine::ops::detection::match_boxes;
use engine::ops::detection::{multiscale_roi_align, LevelMapper};
use engine::ops::{batched_nms, box_iou};
use engine::{DType, Element, Error, Float, Result, Rng, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// torchvision's `MultiScaleRoIAlign` over FPN levels given finest first
/// (P2, P3, ... : featmap names "0".."3" in Mask R-CNN), with its
/// `LevelMapper`.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiScaleRoIAlign {
    /// [ph, pw]
    pub output_size: [usize; 2],
    pub sampling_ratio: i64,
    pub aligned: bool,
    /// LevelMapper `canonical_scale` (224).
    pub canonical_scale: f64,
    /// LevelMapper `canonical_level` (4).
    pub canonical_level: f64,
    /// LevelMapper `eps` (1e-6).
    pub eps: f64,
}

/// RoIs pooled by [`MultiScaleRoIAlign::forward`].
pub struct PooledRois {
    /// [K, C, ph, pw]; row r is RoI r of the images' boxes concatenated
    /// (image 0's first), as torchvision; gradient flows to the features.
    pub features: Tensor,
    /// Each level's spatial scale.
    pub scales: Vec<f64>,
}

impl MultiScaleRoIAlign {
    /// The Mask R-CNN box pooler: 7x7, sampling ratio 2, aligned = false,
    /// LevelMapper (224, 4, 1e-6).
    pub fn box_default() -> MultiScaleRoIAlign {
        MultiScaleRoIAlign {
            output_size: [7, 7],
            sampling_ratio: 2,
            aligned: false,
            canonical_scale: 224.0,
            canonical_level: 4.0,
            eps: 1e-6,
        }
    }

    /// torchvision's `_setup_scales`: the scale of each level, inferred from
    /// its height H_l and the largest image height H over `image_sizes`
    /// (height, width) as 2^round(log2(H_l / H)) (log2 in f32, round half to
    /// even, as `torch.tensor(float).log2().round()`; torchvision uses the
    /// height alone), and the LevelMapper's (k_min, k_max) =
    /// (int(-log2 scale_0), int(-log2 scale_last)).
    pub fn scales(
        &self,
        level_hw: &[(usize, usize)],
        image_sizes: &[(usize, usize)],
    ) -> Result<(Vec<f64>, i64, i64)> {
        const OP: &str = "MultiScaleRoIAlign::scales";
        if image_sizes.is_empty() || level_hw.is_empty() {
            return Err(Error::arg(
                OP,
                "needs at least one image size and one feature level",
            ));
        }
        let max_h = image_sizes.iter().map(|s| s.0).max().unwrap_or(0);
        if max_h == 0 {
            return Err(Error::arg(OP, "every image has height 0"));
        }
        let scales: Vec<f64> = level_hw
            .iter()
            .map(|&(h, _)| {
                let approx = (h as f64 / max_h as f64) as f32;
                2f64.powf(approx.log2().round_ties_even() as f64)
            })
            .collect();
        let k = |s: f64| -((s as f32).log2()) as i64;
        let (k_min, k_max) = (k(scales[0]), k(scales[scales.len() - 1]));
        if k_max - k_min + 1 != level_hw.len() as i64 {
            return Err(Error::arg(
                OP,
                format!(
                    "feature sizes {level_hw:?} for images up to height {max_h} give scales {scales:?}, levels {k_min}..={k_max}; expected one level per feature map, each half the previous"
                ),
            ));
        }
        Ok((scales, k_min, k_max))
    }

    /// The `LevelMapper` of levels `k_min..=k_max` with this pooler's
    /// canonical scale, level and eps.
    pub fn mapper(&self, k_min: i64, k_max: i64) -> LevelMapper {
        LevelMapper {
            k_min,
            k_max,
            canonical_scale: self.canonical_scale,
            canonical_level: self.canonical_level,
            eps: self.eps,
        }
    }

    /// torchvision's `MultiScaleRoIAlign.forward`: `features` are the
    /// levels [B, C, H_l, W_l] (same B, C, float dtype and device), `boxes`
    /// per image its RoIs (x1, y1, x2, y2) in image coordinates (converted
    /// to the features' dtype; bf16 / f16 features are pooled in f32 and
    /// the result cast back, as torchvision's autocast does for
    /// `roi_align`), `image_sizes` the B
    /// images' (height, width) before padding. One engine op
    /// (`multiscale_roi_align`) maps each RoI to its level with
    /// [`Self::mapper`] (all to level 0 when there is one level) and pools
    /// it there as `Tensor::roi_align(.., output_size, scale_l,
    /// sampling_ratio, aligned)`; see [`PooledRois`] for the row order.
    pub fn forward(
        &self,
        features: &[Tensor],
        boxes: &[Vec<[f64; 4]>],
        image_sizes: &[(usize, usize)],
    ) -> Result<PooledRois> {
        const OP: &str = "MultiScaleRoIAlign::forward";
        let computed = check_features(OP, features, None)?;
        let dtype = box_dtype(OP, computed)?;
        check_batch(
            OP,
            "boxes",
            boxes.len(),
            image_sizes.len(),
            features[0].dims()[0],
        )?;
        let level_hw: Vec<(usize, usize)> = features
            .iter()
            .map(|f| (f.dims()[2], f.dims()[3]))
            .collect();
        let (scales, k_min, k_max) = self.scales(&level_hw, image_sizes)?;
        // torchvision's _convert_to_roi_format: (image index, box) rows
        let rois: Vec<f64> = boxes
            .iter()
            .enumerate()
            .flat_map(|(b, bx)| {
                bx.iter()
                    .flat_map(move |r| [b as f64, r[0], r[1], r[2], r[3]])
            })
            .collect();
        let k = rois.len() / 5;
        // on the host: the op checks and maps them there, then uploads them
        // (and, with several levels, their level indices)
        let rois = Tensor::from_vec(rois, &[k, 5])?.to_dtype(dtype)?;
        count_uploads(if features.len() > 1 { 2 } else { 1 });
        let cast: Vec<Tensor>;
        let features = if computed == dtype {
            features
        } else {
            cast = features
                .iter()
                .map(|f| f.to_dtype(dtype))
                .collect::<Result<_>>()?;
            &cast[..]
        };
        let pooled = multiscale_roi_align(
            features,
            &rois,
            &scales,
            self.output_size,
            self.sampling_ratio,
            self.aligned,
            &self.mapper(k_min, k_max),
        )?
        .to_dtype(computed)?;
        Ok(PooledRois {
            features: pooled,
            scales,
        })
    }
}

/// Checks that `features` are non-empty rank-4 maps with one batch size,
/// one channel count (`channels` when given) and one float dtype.
fn check_features(op: &'static str, features: &[Tensor], channels: Option<usize>) -> Result<DType> {
    let Some(first) = features.first() else {
        return Err(Error::arg(op, "got no feature map"));
    };
    let dtype = first.dtype();
    box_dtype(op, dtype)?;
    let d0 = first.dims();
    if d0.len() != 4 || d0[0] == 0 {
        return Err(Error::shape(
            op,
            format!("feature map 0 must be [B > 0, C, H, W], got {d0:?}"),
        ));
    }
    let c = channels.unwrap_or(d0[1]);
    for (l, f) in features.iter().enumerate() {
        let d = f.dims();
        if d.len() != 4 || d[0] != d0[0] || d[1] != c || d[2] == 0 || d[3] == 0 {
            return Err(Error::shape(
                op,
                format!(
                    "feature map {l} must be [B = {}, C = {c}, H > 0, W > 0], got {d:?}",
                    d0[0]
                ),
            ));
        }
        if f.dtype() != dtype {
            return Err(Error::arg(
                op,
                format!(
                    "feature map {l} is {} but feature map 0 is {}",
                    f.dtype().name(),
                    dtype.name()
                ),
            ));
        }
    }
    Ok(dtype)
}

/// torchvision's `TwoMLPHead`: x.flatten(1) -> relu(fc6) -> relu(fc7).
/// Parameters `<prefix>.fc6.{weight,bias}`, `<prefix>.fc7.{weight,bias}`
/// (prefix `roi_heads.box_head` in Mask R-CNN), nn.Linear's default init.
pub struct TwoMlpHead {
    pub fc6: Linear,
    pub fc7: Linear,
}

impl TwoMlpHead {
    pub fn new(
        prefix: &str,
        in_channels: usize,
        representation_size: usize,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<TwoMlpHead> {
        let r = representation_size;
        Ok(TwoMlpHead {
            fc6: linear(prefix, "fc6", in_channels, r, dtype, rng)?,
            fc7: linear(prefix, "fc7", r, r, dtype, rng)?,
        })
    }

    /// x [K, ...] with prod(...) = fc6's input size -> [K, representation_size].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.flatten(1)?;
        self.fc7.forward(&self.fc6.forward(&x)?.relu()?)?.relu()
    }

    pub fn params(&self) -> Vec<Param> {
        let mut p = self.fc6.params();
        p.extend(self.fc7.params());
        p
    }
}

/// torchvision's `FastRCNNPredictor`: class logits = cls_score(x) [K,
/// num_classes] and box deltas = bbox_pred(x) [K, 4 num_classes] (class j's
/// deltas in columns 4j..4j+4). Parameters `<prefix>.cls_score.*`,
/// `<prefix>.bbox_pred.*` (prefix `roi_heads.box_predictor`).
pub struct FastRcnnPredictor {
    pub cls_score: Linear,
    pub bbox_pred: Linear,
}

impl FastRcnnPredictor {
    pub fn new(
        prefix: &str,
        in_channels: usize,
        num_classes: usize,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<FastRcnnPredictor> {
        let (c, k) = (in_channels, num_classes);
        Ok(FastRcnnPredictor {
            cls_score: linear(prefix, "cls_score", c, k, dtype, rng)?,
            bbox_pred: linear(prefix, "bbox_pred", c, 4 * k, dtype, rng)?,
        })
    }

    /// (class logits, box deltas) of x [K, ...] flattened from dim 1.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = x.flatten(1)?;
        Ok((self.cls_score.forward(&x)?, self.bbox_pred.forward(&x)?))
    }

    pub fn params(&self) -> Vec<Param> {
        let mut p = self.cls_score.params();
        p.extend(self.bbox_pred.params());
        p
    }

    pub fn num_classes(&self) -> usize {
        self.cls_score.out_features()
    }
}

/// One entry of `what` and one image size per image of the batch.
fn check_batch(op: &'static str, what: &str, n: usize, sizes: usize, batch: usize) -> Result<()> {
    if n != batch || sizes != batch {
        return Err(Error::arg(
            op,
            format!("got {what} for {n} images and {sizes} image sizes for a batch of {batch}"),
        ));
    }
    Ok(())
}

/// `<prefix>.<name>`: a Linear with bias.
fn linear(
    prefix: &str,
    name: &str,
    in_features: usize,
    out_features: usize,
    dtype: DType,
    rng: &mut Rng,
) -> Result<Linear> {
    Linear::new_dtype(
        &join(prefix, name),
        in_features,
        out_features,
        true,
        dtype,
        rng,
    )
}

/// The box branch's two losses, scalars in the features' dtype.
pub struct RoiLosses {
    /// torchvision `loss_classifier`.
    pub classifier: Tensor,
    /// torchvision `loss_box_reg`.
    pub box_reg: Tensor,
}

/// One image's detections, in decreasing score order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detections {
    pub boxes: Vec<[f64; 4]>,
    pub scores: Vec<f64>,
    /// Class indices >= 1.
    pub labels: Vec<i64>,
}

/// Ground truth of one image for the ROI heads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoiTarget {
    /// (x1, y1, x2, y2) with x2 > x1, y2 > y1.
    pub boxes: Vec<[f64; 4]>,
    /// Class of each box, in [1, num_classes).
    pub labels: Vec<i64>,
}

/// The proposals kept for training by [`RoiHeads::select_training_samples`].
pub struct TrainingSamples {
    /// Per image, the sampled proposals (its proposals then its gt boxes,
    /// sampled ones in increasing index, as torchvision's `torch.where`).
    pub proposals: Vec<Vec<[f64; 4]>>,
    /// Per image, each sampled proposal's class (0 = background).
    pub labels: Vec<Vec<i64>>,
    /// Per image, each sampled proposal's regression target: the encoding
    /// of its matched gt box for a positive, zeros for a negative (unused).
    pub regression_targets: Vec<Vec<[f64; 4]>>,
}

/// What [`RoiHeads::forward`] returns.
pub struct RoiHeadsOutput {
    /// Eval mode: one entry per image. Train mode: empty (as torchvision).
    pub detections: Vec<Detections>,
    /// Train mode only.
    pub losses: Option<RoiLosses>,
}

/// torchvision's `fastrcnn_loss` over N sampled RoIs: `class_logits` [N,
/// C], `box_regression` [N, 4 C], `labels` [N] in [0, C),
/// `regression_targets` [N] (used for rows with label > 0):
/// classifier = cross_entropy(class_logits, labels) (mean over N);
/// box_reg = (1/N) sum_{r: label_r > 0} sum_k smooth_l1_{beta=1/9}(
/// box_regression[r, 4 label_r + k] - target_rk), on the positives' rows
/// gathered with `index_select` as torchvision does. Errors on N = 0
/// (torchvision returns NaN) or mismatched shapes.
pub fn fastrcnn_loss(
    class_logits: &Tensor,
    box_regression: &Tensor,
    labels: &[i64],
    regression_targets: &[[f64; 4]],
) -> Result<RoiLosses> {
    const OP: &str = "fastrcnn_loss";
    let n = labels.len();
    let cd = class_logits.dims();
    if n == 0 {
        return Err(Error::arg(
            OP,
            "no sampled RoI: the losses are undefined (torchvision gives NaN)",
        ));
    }
    if cd.len() != 2
        || cd[0] != n
        || box_regression.dims() != [n, 4 * cd[1]]
        || regression_targets.len() != n
    {
        return Err(Error::shape(
            OP,
            format!(
                "expected class_logits [N = {n}, C], box_regression [N, 4 C] and {n} regression targets, got {cd:?}, {:?} and {}",
                box_regression.dims(),
                regression_targets.len()
            ),
        ));
    }
    let c = cd[1];
    if let Some((i, l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l < 0 || l as usize >= c)
    {
        return Err(Error::arg(
            OP,
            format!("label {i} is {l}, outside [0, {c})"),
        ));
    }
    let labels_t = to_device_of(Tensor::from_vec(labels.to_vec(), &[n])?, class_logits)?;
    let classifier = class_logits.cross_entropy(&labels_t, 0.0, None)?;
    // each positive's deltas for its class, rows of [N C, 4]
    let (rows, target): (Vec<i64>, Vec<[f64; 4]>) = labels
        .iter()
        .zip(regression_targets)
        .enumerate()
        .filter(|(_, (&l, _))| l > 0)
        .map(|(r, (&l, t))| ((r * c) as i64 + l, *t))
        .unzip();
    let box_reg = if rows.is_empty() {
        // torchvision: a sum over no positives, 0 with a zero gradient
        box_regression.sum_all()?.scale(0.0)?
    } else {
        let p = rows.len();
        count_uploads(1);
        let target =
            Tensor::from_vec(target.concat(), &[p, 4])?.to_dtype(box_regression.dtype())?;
        box_regression
            .reshape(&[n * c, 4])?
            .index_select(0, &Tensor::from_vec(rows, &[p])?)?
            .smooth_l1(&to_device_of(target, box_regression)?, 1.0 / 9.0)?
            .scale((4 * p) as f64 / n as f64)?
    };
    Ok(RoiLosses {
        classifier,
        box_reg,
    })
}

/// torchvision's `RoIHeads` box branch with Mask R-CNN's defaults (see
/// [`RoiHeads::new`]); train mode by default.
pub struct RoiHeads {
    pub box_roi_pool: MultiScaleRoIAlign,
    pub box_head: TwoMlpHead,
    pub box_predictor: FastRcnnPredictor,
    /// Weights (10, 10, 5, 5).
    pub box_coder: BoxCoder,
    /// (0.5, 0.5, no low-quality matches).
    pub matcher: Matcher,
    /// (512, 0.25).
    pub sampler: BalancedPositiveNegativeSampler,
    /// Class scores must be > this (0.05).
    pub score_thresh: f64,
    /// Per-class NMS IoU (0.5).
    pub nms_thresh: f64,
    /// Detections kept per image (100).
    pub detections_per_img: usize,
    /// Decoded boxes with a side < this are dropped (1e-2).
    pub min_size: f64,
    training: AtomicBool,
}

impl RoiHeads {
    /// Mask R-CNN's box branch on `in_channels`-channel FPN levels:
    /// [`MultiScaleRoIAlign::box_default`], `<prefix>.box_head` =
    /// TwoMlpHead(in_channels 7 7, representation_size) and
    /// `<prefix>.box_predictor` = FastRcnnPredictor(representation_size,
    /// num_classes) (drawn from `rng` in that order), box coder (10, 10, 5,
    /// 5), matcher (0.5, 0.5), sampler (512, 0.25), score 0.05, NMS 0.5,
    /// 100 detections, min size 1e-2. torchvision: prefix `roi_heads`,
    /// representation_size 1024, num_classes 91 (COCO).
    pub fn new(
        prefix: &str,
        in_channels: usize,
        representation_size: usize,
        num_classes: usize,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<RoiHeads> {
        if in_channels == 0 || representation_size == 0 || num_classes < 2 {
            return Err(Error::arg(
                "RoiHeads::new",
                format!(
                    "{prefix}: need in_channels > 0 ({in_channels}), representation_size > 0 ({representation_size}) and num_classes >= 2 with background ({num_classes})"
                ),
            ));
        }
        if dtype != DType::F32 && dtype != DType::F64 {
            return Err(Error::dtype("RoiHeads::new", "f32 or f64", dtype));
        }
        let pool = MultiScaleRoIAlign::box_default();
        let [ph, pw] = pool.output_size;
        Ok(RoiHeads {
            box_head: TwoMlpHead::new(
                &join(prefix, "box_head"),
                in_channels * ph * pw,
                representation_size,
                dtype,
                rng,
            )?,
            box_predictor: FastRcnnPredictor::new(
                &join(prefix, "box_predictor"),
                representation_size,
                num_classes,
                dtype,
                rng,
            )?,
            box_roi_pool: pool,
            box_coder: BoxCoder::new([10.0, 10.0, 5.0, 5.0]),
            matcher: Matcher::roi_heads_default(),
            sampler: BalancedPositiveNegativeSampler {
                batch_size_per_image: 512,
                positive_fraction: 0.25,
            },
            score_thresh: 0.05,
            nms_thresh: 0.5,
            detections_per_img: 100,
            min_size: 1e-2,
            training: AtomicBool::new(true),
        })
    }

    pub fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed)
    }

    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }

    /// box_head.fc6, fc7, box_predictor.cls_score, bbox_pred (weight, bias each).
    pub fn params(&self) -> Vec<Param> {
        let mut p = self.box_head.params();
        p.extend(self.box_predictor.params());
        p
    }

    pub fn num_classes(&self) -> usize {
        self.box_predictor.num_classes()
    }

    /// Box head and predictor on pooled RoIs: (class logits, box deltas),
    /// cast to f32 when computed in bf16 / f16 (the losses and box decoding
    /// that follow run in f32, see [`box_dtype`]).
    pub fn predict(&self, pooled: &Tensor) -> Result<(Tensor, Tensor)> {
        let dtype = box_dtype("RoiHeads::predict", pooled.dtype())?;
        let (logits, deltas) = self
            .box_predictor
            .forward(&self.box_head.forward(pooled)?)?;
        Ok((logits.to_dtype(dtype)?, deltas.to_dtype(dtype)?))
    }

    /// torchvision's `select_training_samples` (box part), in `T`: per
    /// image, its gt boxes are appended to its proposals; each is matched
    /// by IoU with [`Self::matcher`] (all background without gt); label =
    /// the matched gt's class, 0 below the threshold, -1 between (never
    /// sampled); [`Self::sampler`] picks positives and negatives from `rng`;
    /// positives get encode(matched gt, proposal) with [`Self::box_coder`].
    pub fn select_training_samples<T: Float>(
        &self,
        proposals: &[Vec<[f64; 4]>],
        targets: &[RoiTarget],
        rng: &mut Rng,
    ) -> Result<TrainingSamples> {
        const OP: &str = "RoiHeads::select_training_samples";
        if proposals.len() != targets.len() {
            return Err(Error::arg(
                OP,
                format!(
                    "got proposals for {} images but targets for {}",
                    proposals.len(),
                    targets.len()
                ),
            ));
        }
        let to_t = |b: &[f64; 4]| b.map(<T as Element>::from_f64);
        let mut out = TrainingSamples {
            proposals: Vec::new(),
            labels: Vec::new(),
            regression_targets: Vec::new(),
        };
        for (props, tgt) in proposals.iter().zip(targets) {
            let gt: Vec<[T; 4]> = tgt.boxes.iter().map(to_t).collect();
            let all: Vec<[T; 4]> = props.iter().map(to_t).chain(gt.iter().copied()).collect();
            let (g, p) = (gt.len(), all.len());
            let quality = if g == 0 {
                Tensor::zeros(&[0, p], T::DTYPE)
            } else {
                box_iou(
                    &Tensor::from_vec(gt.iter().flatten().copied().collect::<Vec<T>>(), &[g, 4])?,
                    &Tensor::from_vec(all.iter().flatten().copied().collect::<Vec<T>>(), &[p, 4])?,
                )?
            };
            let gt_labels = Tensor::from_vec(tgt.labels.clone(), &[g])?;
            let (matches, labels) = match_boxes(&quality, self.matcher.rule(), Some(&gt_labels))?;
            let (matches, labels) = (matches.to_vec::<i64>()?, labels.to_vec::<i64>()?);
            let (pos, neg) = self.sampler.sample_host(&labels, rng)?;
            let mut keep = [pos, neg].concat();
            keep.sort_unstable();
            let mut boxes = Vec::with_capacity(keep.len());
            let mut lab = Vec::with_capacity(keep.len());
            let mut regs = Vec::with_capacity(keep.len());
            for &i in &keep {
                boxes.push(all[i].map(Element::to_f64));
                lab.push(labels[i]);
                regs.push(if labels[i] > 0 {
                    let e = self.box_coder.encode(&gt[matches[i] as usize], &all[i])?;
                    std::array::from_fn(|q| Element::to_f64(e[q]))
                } else {
                    [0.0; 4]
                });
            }
            out.proposals.push(boxes);
            out.labels.push(lab);
            out.regression_targets.push(regs);
        }
        Ok(out)
    }

    /// torchvision's `RoIHeads.forward` for boxes.
    ///
    /// `features`: the pooler's levels (P2..P5), [B, C, H_l, W_l], f32 or
    /// f64; `proposals`: per image, its RPN proposals; `image_sizes`: (h,
    /// w) of each image before padding; `targets`: required in train mode,
    /// ignored in eval mode; `rng` drives the sampler.
    ///
    /// Train mode: [`Self::select_training_samples`], pool, box head,
    /// predictor, [`fastrcnn_loss`]; no detections. Eval mode: all
    /// proposals pooled and classified, then [`Self::postprocess_detections`].
    pub fn forward(
        &self,
        features: &[Tensor],
        proposals: &[Vec<[f64; 4]>],
        image_sizes: &[(usize, usize)],
        targets: Option<&[RoiTarget]>,
        rng: &mut Rng,
    ) -> Result<RoiHeadsOutput> {
        const OP: &str = "RoiHeads::forward";
        let in_c = self.box_head.fc6.in_features();
        let [ph, pw] = self.box_roi_pool.output_size;
        if !in_c.is_multiple_of(ph * pw) {
            return Err(Error::shape(
                OP,
                format!("box_head.fc6 takes {in_c} inputs, not C x {ph} x {pw}"),
            ));
        }
        let dtype = box_dtype(OP, check_features(OP, features, Some(in_c / (ph * pw)))?)?;
        let batch = features[0].dims()[0];
        check_batch(OP, "proposals", proposals.len(), image_sizes.len(), batch)?;
        for (b, &(h, w)) in image_sizes.iter().enumerate() {
            if h == 0 || w == 0 {
                return Err(Error::arg(OP, format!("image {b} has size {h} x {w}")));
            }
        }
        if !self.is_training() {
            let pooled = self
                .box_roi_pool
                .forward(features, proposals, image_sizes)?;
            let (logits, deltas) = self.predict(&pooled.features)?;
            let detections =
                self.postprocess_detections(&logits, &deltas, proposals, image_sizes)?;
            return Ok(RoiHeadsOutput {
                detections,
                losses: None,
            });
        }
        let Some(targets) = targets else {
            return Err(Error::arg(OP, "targets are required in train mode (as torchvision: \"targets should not be None\")"));
        };
        self.check_targets(targets, batch)?;
        let samples = match dtype {
            DType::F64 => self.select_training_samples::<f64>(proposals, targets, rng)?,
            _ => self.select_training_samples::<f32>(proposals, targets, rng)?,
        };
        let pooled = self
            .box_roi_pool
            .forward(features, &samples.proposals, image_sizes)?;
        let (logits, deltas) = self.predict(&pooled.features)?;
        let labels: Vec<i64> = samples.labels.concat();
        let regs: Vec<[f64; 4]> = samples.regression_targets.concat();
        let losses = fastrcnn_loss(&logits, &deltas, &labels, &regs)?;
        Ok(RoiHeadsOutput {
            detections: Vec::new(),
            losses: Some(losses),
        })
    }

    fn check_targets(&self, targets: &[RoiTarget], batch: usize) -> Result<()> {
        const OP: &str = "RoiHeads::forward";
        if targets.len() != batch {
            return Err(Error::arg(
                OP,
                format!(
                    "got targets for {} images but a batch of {batch}",
                    targets.len()
                ),
            ));
        }
        let c = self.num_classes() as i64;
        for (b, t) in targets.iter().enumerate() {
            if t.boxes.len() != t.labels.len() {
                return Err(Error::arg(
                    OP,
                    format!(
                        "image {b} has {} gt boxes but {} labels",
                        t.boxes.len(),
                        t.labels.len()
                    ),
                ));
            }
            for (g, (bx, &l)) in t.boxes.iter().zip(&t.labels).enumerate() {
                if !bx.iter().all(|v| v.is_finite()) || bx[2] <= bx[0] || bx[3] <= bx[1] {
                    return Err(Error::arg(
                        OP,
                        format!("target box {g} of image {b} is {bx:?}; boxes must be finite (x1, y1, x2, y2) with positive width and height"),
                    ));
                }
                if l < 1 || l >= c {
                    return Err(Error::arg(
                        OP,
                        format!("target label {g} of image {b} is {l}; labels must be in [1, {c}) (0 is background)"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// torchvision's `postprocess_detections`: `class_logits` [N, C] and
    /// `box_regression` [N, 4 C] for the N proposals of all images
    /// concatenated in order. Per image, computed in the logits' dtype:
    /// scores = softmax over classes; boxes = decode(class deltas,
    /// proposal) with [`Self::box_coder`], clipped to the image; the
    /// background class dropped; the (proposal, class) pairs, proposal-major,
    /// with score > `score_thresh`, then sides >= `min_size`, then
    /// `batched_nms` at `nms_thresh` with the class as category, the first
    /// `detections_per_img` in decreasing score.
    pub fn postprocess_detections(
        &self,
        class_logits: &Tensor,
        box_regression: &Tensor,
        proposals: &[Vec<[f64; 4]>],
        image_sizes: &[(usize, usize)],
    ) -> Result<Vec<Detections>> {
        match class_logits.dtype() {
            DType::F64 => {
                self.postprocess::<f64>(class_logits, box_regression, proposals, image_sizes)
            }
            DType::F32 => {
                self.postprocess::<f32>(class_logits, box_regression, proposals, image_sizes)
            }
            d => Err(Error::dtype(
                "RoiHeads::postprocess_detections",
                "f32 or f64 logits",
                d,
            )),
        }
    }

    fn postprocess<T: Float>(
        &self,
        class_logits: &Tensor,
        box_regression: &Tensor,
        proposals: &[Vec<[f64; 4]>],
        image_sizes: &[(usize, usize)],
    ) -> Result<Vec<Detections>> {
        const OP: &str = "RoiHeads::postprocess_detections";
        let n: usize = proposals.iter().map(|p| p.len()).sum();
        let cd = class_logits.dims().to_vec();
        if cd.len() != 2
            || cd[0] != n
            || cd[1] == 0
            || box_regression.dims() != [n, 4 * cd[1]]
            || proposals.len() != image_sizes.len()
        {
            return Err(Error::shape(
                OP,
                format!(
                    "expected class_logits [N = {n}, C] and box_regression [N, 4 C] for {} images with {} sizes, got {cd:?} and {:?}",
                    proposals.len(),
                    image_sizes.len(),
                    box_regression.dims()
                ),
            ));
        }
        let c = cd[1];
        // one read: each row's class scores, then its class deltas
        let rows = read::<T>(&Tensor::cat(
            &[
                class_logits.detach().softmax(1)?,
                box_regression.detach().to_dtype(class_logits.dtype())?,
            ],
            1,
        )?)?;
        let (mut scores, mut deltas) = (Vec::with_capacity(n * c), Vec::with_capacity(4 * n * c));
        for row in rows.chunks_exact(5 * c) {
            scores.extend_from_slice(&row[..c]);
            deltas.extend_from_slice(&row[c..]);
        }
        let thresh = <T as Element>::from_f64(self.score_thresh);
        let mut out = Vec::with_capacity(proposals.len());
        let mut row0 = 0;
        for (props, &size) in proposals.iter().zip(image_sizes) {
            let p = props.len();
            let anchors: Vec<T> = props
                .iter()
                .flatten()
                .map(|&v| <T as Element>::from_f64(v))
                .collect();
            let decoded = self
                .box_coder
                .decode(&deltas[4 * c * row0..4 * c * (row0 + p)], &anchors)?;
            let decoded = clip_boxes_to_image(&decoded, size)?;
            let sc = &scores[c * row0..c * (row0 + p)];
            let mut cb: Vec<T> = Vec::new();
            let mut cs: Vec<T> = Vec::new();
            let mut cl: Vec<i64> = Vec::new();
            for i in 0..p {
                for j in 1..c {
                    let s = sc[i * c + j];
                    if s > thresh {
                        cb.extend_from_slice(&decoded[4 * (i * c + j)..4 * (i * c + j) + 4]);
                        cs.push(s);
                        cl.push(j as i64);
                    }
                }
            }
            let big = remove_small_boxes(&cb, self.min_size)?;
            let kb: Vec<T> = big
                .iter()
                .flat_map(|&k| cb[4 * k..4 * k + 4].to_vec())
                .collect();
            let ks: Vec<T> = big.iter().map(|&k| cs[k]).collect();
            let kl: Vec<i64> = big.iter().map(|&k| cl[k]).collect();
            let m = ks.len();
            let keep = batched_nms(
                &Tensor::from_vec(kb.clone(), &[m, 4])?,
                &Tensor::from_vec(ks.clone(), &[m])?,
                &kl,
                self.nms_thresh,
            )?;
            let keep = &keep[..keep.len().min(self.detections_per_img)];
            out.push(Detections {
                boxes: keep
                    .iter()
                    .map(|&k| std::array::from_fn(|q| Element::to_f64(kb[4 * k + q])))
                    .collect(),
                scores: keep.iter().map(|&k| Element::to_f64(ks[k])).collect(),
                labels: keep.iter().map(|&k| kl[k]).collect(),
            });
            row0 += p;
        }
        Ok(out)
    }
}
