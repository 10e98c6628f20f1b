//! The mask branch of Mask R-CNN, exactly as torchvision builds it
//! (torchvision/models/detection/mask_rcnn.py and roi_heads.py): the
//! `MaskRCNNHeads` conv tower + `MaskRCNNPredictor`, the training target
//! (`project_masks_on_boxes`) and loss (`maskrcnn_loss`), and the inference
//! post-processing (`maskrcnn_inference`, `paste_masks_in_image`).
//!
//! The head consumes already-pooled RoI features [K, C, 14, 14] (torchvision's
//! `mask_roi_pool` = MultiScaleRoIAlign(P2..P5, 14, sampling 2)); pooling is
//! the RoI heads' job, not this file's.
//!
//! What differs from torchvision, and why:
//! - The engine has no gather op with a backward, so the per-RoI class
//!   channel is picked with a one-hot [K, num_classes, 1, 1] multiply and a
//!   sum over the class dim (exact: the other terms are `x * 0 = 0`, unless
//!   a logit is non-finite).
//! - Labels and matched indices are `usize` slices, validated against the
//!   number of classes / gt instances instead of indexing out of bounds.
//! - `paste_masks_in_image` places nothing for a box that lies entirely
//!   outside the image (torchvision's slicing raises or misbehaves there).

use super::box_dtype;
use super::host::{count_uploads, to_device_of};
use engine::nn::{init, join, Conv2d, ConvTranspose2d, Module, Param};
use engine::ops::detection::paste_masks;
use engine::ops::{Conv2dParams, ConvTranspose2dParams};
use engine::{no_grad, DType, Error, Result, Rng, Tensor};

/// Shape of the mask branch. torchvision's Mask R-CNN R50-FPN is
/// `MaskHeadConfig::default_for(num_classes)`: 256 input channels, four 3x3
/// convs of 256, dilation 1, a 256-channel deconvolution.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskHeadConfig {
    /// Channels of the pooled features (the FPN's `out_channels`).
    pub in_channels: usize,
    /// Output channels of each 3x3 conv of `MaskRCNNHeads`.
    pub layers: Vec<usize>,
    /// Dilation (and padding) of those convs.
    pub dilation: usize,
    /// Output channels of the 2x2 stride-2 deconvolution `conv5_mask`.
    pub dim_reduced: usize,
    /// Number of classes including background (one mask logit map each).
    pub num_classes: usize,
}

impl MaskHeadConfig {
    /// torchvision's defaults for `maskrcnn_resnet50_fpn`.
    pub fn default_for(num_classes: usize) -> MaskHeadConfig {
        MaskHeadConfig {
            in_channels: 256,
            layers: vec![256; 4],
            dilation: 1,
            dim_reduced: 256,
            num_classes,
        }
    }
}

/// `MaskRCNNHeads` followed by `MaskRCNNPredictor`:
/// x [K, C, S, S] -> (conv3x3 + ReLU) per entry of `layers` -> ConvTranspose2d
/// (2x2, stride 2) + ReLU -> 1x1 conv -> mask logits [K, num_classes, 2S, 2S].
///
/// Parameter names under `prefix` (in Mask R-CNN: `roi_heads`) are
/// torchvision's: `mask_head.{i}.0.{weight,bias}` (each conv is a
/// `Conv2dNormActivation` without norm), `mask_predictor.conv5_mask.{weight,bias}`
/// and `mask_predictor.mask_fcn_logits.{weight,bias}`.
pub struct MaskHead {
    pub fcn: Vec<Conv2d>,
    pub conv5_mask: ConvTranspose2d,
    pub mask_fcn_logits: Conv2d,
    pub config: MaskHeadConfig,
}

impl MaskHead {
    /// A head with parameters in `dtype`, initialised as torchvision:
    /// every weight N(0, 2 / fan_out) (kaiming normal, fan_out, ReLU gain;
    /// for the deconvolution's weight [Cin, Cout, 2, 2] fan_out is Cin * 4,
    /// as PyTorch computes it); the tower's biases 0; the predictor's biases
    /// keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) since
    /// torchvision only re-initialises the predictor's weights
    /// (fan_in = dim_reduced * 4 for `conv5_mask`, dim_reduced for the logits).
    pub fn new(
        prefix: &str,
        config: &MaskHeadConfig,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<MaskHead> {
        const OP: &str = "MaskHead::new";
        let c = config;
        if c.in_channels == 0
            || c.layers.contains(&0)
            || c.dilation == 0
            || c.dim_reduced == 0
            || c.num_classes == 0
        {
            return Err(Error::arg(
                OP,
                format!("{prefix}: all channel counts, the dilation and num_classes must be > 0, got {c:?}"),
            ));
        }
        if !dtype.is_float() {
            return Err(Error::dtype(OP, "a float dtype", dtype));
        }
        let tower = Conv2dParams {
            padding: [c.dilation; 2],
            dilation: [c.dilation; 2],
            ..Conv2dParams::default()
        };
        let mut fcn = Vec::with_capacity(c.layers.len());
        let mut cin = c.in_channels;
        for (i, &cout) in c.layers.iter().enumerate() {
            let p = join(prefix, &format!("mask_head.{i}.0"));
            fcn.push(Conv2d::new_dtype(
                &p,
                cin,
                cout,
                [3, 3],
                tower,
                true,
                dtype,
                rng,
            )?);
            cin = cout;
        }
        let pred = join(prefix, "mask_predictor");
        let deconv_shape = [cin, c.dim_reduced, 2, 2];
        let conv5_mask = ConvTranspose2d::from_params(
            Param::new(
                join(&pred, "conv5_mask.weight"),
                init::kaiming_normal_fan_out(&deconv_shape, dtype, rng)?,
                false,
            )?,
            Some(Param::new(
                join(&pred, "conv5_mask.bias"),
                init::uniform(
                    &[c.dim_reduced],
                    init::default_bound(c.dim_reduced * 4),
                    dtype,
                    rng,
                ),
                true,
            )?),
            ConvTranspose2dParams {
                stride: [2, 2],
                ..ConvTranspose2dParams::default()
            },
        )?;
        let logits_shape = [c.num_classes, c.dim_reduced, 1, 1];
        let mask_fcn_logits = Conv2d::from_params(
            Param::new(
                join(&pred, "mask_fcn_logits.weight"),
                init::kaiming_normal_fan_out(&logits_shape, dtype, rng)?,
                false,
            )?,
            Some(Param::new(
                join(&pred, "mask_fcn_logits.bias"),
                init::uniform(
                    &[c.num_classes],
                    init::default_bound(c.dim_reduced),
                    dtype,
                    rng,
                ),
                true,
            )?),
            Conv2dParams::default(),
        )?;
        Ok(MaskHead {
            fcn,
            conv5_mask,
            mask_fcn_logits,
            config: config.clone(),
        })
    }
}

impl Module for MaskHead {
    /// Pooled features [K, in_channels, S, S] -> mask logits
    /// [K, num_classes, 2S, 2S], in the features' dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 4 || x.dims()[1] != self.config.in_channels {
            return Err(Error::shape(
                "MaskHead::forward",
                format!(
                    "pooled mask features must be [K, {}, S, S], got {:?}",
                    self.config.in_channels,
                    x.dims()
                ),
            ));
        }
        let mut h = x.clone();
        for conv in &self.fcn {
            h = conv.forward(&h)?.relu()?;
        }
        let h = self.conv5_mask.forward(&h)?.relu()?;
        self.mask_fcn_logits.forward(&h)
    }
    fn children(&self) -> Vec<&dyn Module> {
        let mut c: Vec<&dyn Module> = self.fcn.iter().map(|m| m as &dyn Module).collect();
        c.push(&self.conv5_mask);
        c.push(&self.mask_fcn_logits);
        c
    }
}

/// Mask training targets: for each proposal k (`boxes` [K, 4] = x1, y1, x2,
/// y2 in image pixels) the gt mask `gt_masks[matched_idxs[k]]` (`gt_masks`
/// [N, H, W], any dtype, usually u8 0/1) cropped and resized to [m, m] with
/// RoIAlign — exactly torchvision's
/// `roi_align(gt_masks[:, None], [idx, box], (m, m), 1.0)[:, 0]`
/// (spatial scale 1, adaptive sampling ratio, aligned = false).
/// Returns [K, m, m] in the boxes' float dtype, with no gradient.
pub fn project_masks_on_boxes(
    gt_masks: &Tensor,
    boxes: &Tensor,
    matched_idxs: &[usize],
    m: usize,
) -> Result<Tensor> {
    const OP: &str = "project_masks_on_boxes";
    if gt_masks.rank() != 3 {
        return Err(Error::shape(
            OP,
            format!("gt_masks must be [N, H, W], got {:?}", gt_masks.dims()),
        ));
    }
    if boxes.rank() != 2 || boxes.dims()[1] != 4 || boxes.dims()[0] != matched_idxs.len() {
        return Err(Error::shape(
            OP,
            format!(
                "boxes must be [K, 4] with K = {} matched indices, got {:?}",
                matched_idxs.len(),
                boxes.dims()
            ),
        ));
    }
    if !boxes.dtype().is_float() {
        return Err(Error::dtype(OP, "float boxes", boxes.dtype()));
    }
    if m == 0 {
        return Err(Error::arg(OP, "output size m must be > 0"));
    }
    let [n, h, w] = [gt_masks.dims()[0], gt_masks.dims()[1], gt_masks.dims()[2]];
    if let Some(&bad) = matched_idxs.iter().find(|&&i| i >= n) {
        return Err(Error::arg(
            OP,
            format!("matched index {bad} out of range for {n} gt masks"),
        ));
    }
    let dtype = boxes.dtype();
    let k = matched_idxs.len();
    if k == 0 {
        return Ok(Tensor::zeros(&[0, m, m], dtype));
    }
    let _guard = no_grad();
    let b = boxes.to_vec_f64()?;
    let rois: Vec<f64> = matched_idxs
        .iter()
        .zip(b.chunks(4))
        .flat_map(|(&i, bx)| [i as f64, bx[0], bx[1], bx[2], bx[3]])
        .collect();
    let rois = Tensor::from_vec(rois, &[k, 5])?.to_dtype(dtype)?;
    let masks = gt_masks.detach().to_dtype(dtype)?.reshape(&[n, 1, h, w])?;
    masks
        .roi_align(&rois, [m, m], 1.0, -1, false)?
        .reshape(&[k, m, m])
}

/// Row k num_classes + labels[k] of each RoI k: where its class's mask
/// lies in the logits seen as [K num_classes, M, M] (an i64 index on the
/// host, uploaded by `index_select`).
fn class_rows(labels: &[usize], num_classes: usize, op: &'static str) -> Result<Tensor> {
    let mut rows = Vec::with_capacity(labels.len());
    for (k, &l) in labels.iter().enumerate() {
        if l >= num_classes {
            return Err(Error::arg(
                op,
                format!("label {l} of RoI {k} is out of range for {num_classes} classes"),
            ));
        }
        rows.push((k * num_classes + l) as i64);
    }
    count_uploads(1);
    Tensor::from_vec(rows, &[labels.len()])
}

/// `mask_logits` [K, C, M, M] at RoI k's class `labels[k]`: [K, M, M]
/// (torchvision's `mask_logits[arange(K), labels]`), in f32 when the
/// logits are bf16 / f16 (autocast: what follows runs in f32).
fn select_class(op: &'static str, mask_logits: &Tensor, labels: &[usize]) -> Result<Tensor> {
    let [k, c, m] = logits_dims(op, mask_logits)?;
    mask_logits
        .reshape(&[k * c, m, m])?
        .index_select(0, &class_rows(labels, c, op)?)?
        .to_dtype(box_dtype(op, mask_logits.dtype())?)
}

/// Checks logits [K, C, M, M] and returns (K, C, M).
fn logits_dims(op: &'static str, logits: &Tensor) -> Result<[usize; 3]> {
    let d = logits.dims();
    if d.len() != 4 || d[2] != d[3] || !logits.dtype().is_float() {
        return Err(Error::shape(
            op,
            format!(
                "mask logits must be float [K, num_classes, M, M], got {:?} {}",
                d,
                logits.dtype()
            ),
        ));
    }
    Ok([d[0], d[1], d[2]])
}

/// torchvision's `maskrcnn_loss`: with K = sum_i K_i positive proposals
/// (`proposals[i]` [K_i, 4], image i's rows of `mask_logits` in order),
/// each matched to gt instance `matched_idxs[i][k]` of image i with class
/// `gt_labels[i][matched_idxs[i][k]]`,
///
/// loss = mean over k, y, x of BCE-with-logits(mask_logits[k, label_k, y, x],
///        target_k[y, x]),
///
/// where target_k = `project_masks_on_boxes(gt_masks[i], proposals[i],
/// matched_idxs[i], M)`. With no proposals at all it is
/// `0 * sum(mask_logits)` (a zero that keeps the graph), as in torchvision.
/// Differentiable w.r.t. `mask_logits`; f32 for bf16 / f16 logits (the
/// selected logits are cast before the loss, as under autocast).
pub fn maskrcnn_loss<L: AsRef<[usize]>, I: AsRef<[usize]>>(
    mask_logits: &Tensor,
    proposals: &[Tensor],
    gt_masks: &[Tensor],
    gt_labels: &[L],
    matched_idxs: &[I],
) -> Result<Tensor> {
    const OP: &str = "maskrcnn_loss";
    let [k, _, m] = logits_dims(OP, mask_logits)?;
    let n_img = proposals.len();
    if gt_masks.len() != n_img || gt_labels.len() != n_img || matched_idxs.len() != n_img {
        return Err(Error::arg(
            OP,
            format!(
                "need one entry per image: {} proposals, {} gt_masks, {} gt_labels, {} matched_idxs",
                n_img,
                gt_masks.len(),
                gt_labels.len(),
                matched_idxs.len()
            ),
        ));
    }
    let mut labels = Vec::with_capacity(k);
    let mut targets = Vec::with_capacity(n_img);
    for i in 0..n_img {
        let (gl, mi) = (gt_labels[i].as_ref(), matched_idxs[i].as_ref());
        if gl.len() != gt_masks[i].dims().first().copied().unwrap_or(0) {
            return Err(Error::arg(
                OP,
                format!(
                    "image {i}: {} gt labels for gt masks {:?}",
                    gl.len(),
                    gt_masks[i].dims()
                ),
            ));
        }
        // project_masks_on_boxes validates the matched indices against the masks
        targets.push(project_masks_on_boxes(&gt_masks[i], &proposals[i], mi, m)?);
        labels.extend(mi.iter().map(|&j| gl[j]));
    }
    if labels.len() != k {
        return Err(Error::shape(
            OP,
            format!(
                "{} proposals in all images but {k} rows of mask logits",
                labels.len()
            ),
        ));
    }
    if k == 0 {
        return mask_logits
            .sum_all()?
            .scale(0.0)?
            .to_dtype(box_dtype(OP, mask_logits.dtype())?);
    }
    let picked = select_class(OP, mask_logits, &labels)?;
    // the targets are built on the host
    let targets = Tensor::cat(&targets, 0)?.to_dtype(picked.dtype())?;
    picked.bce_with_logits(&to_device_of(targets, mask_logits)?)
}

/// torchvision's `maskrcnn_inference`: sigmoid(mask_logits[k, label_k]) for
/// each detection k, split per image (`labels[i]` holds image i's predicted
/// classes, its rows of `mask_logits` in order); image i gets
/// [len(labels[i]), 1, M, M] probabilities (f32 for bf16 / f16 logits).
pub fn maskrcnn_inference<L: AsRef<[usize]>>(
    mask_logits: &Tensor,
    labels: &[L],
) -> Result<Vec<Tensor>> {
    const OP: &str = "maskrcnn_inference";
    let [k, _, m] = logits_dims(OP, mask_logits)?;
    let all: Vec<usize> = labels
        .iter()
        .flat_map(|l| l.as_ref().iter().copied())
        .collect();
    if all.len() != k {
        return Err(Error::shape(
            OP,
            format!(
                "{} labels in all images but {k} rows of mask logits",
                all.len()
            ),
        ));
    }
    let probs = select_class(OP, mask_logits, &all)?
        .sigmoid()?
        .reshape(&[k, 1, m, m])?;
    let mut out = Vec::with_capacity(labels.len());
    let mut start = 0;
    for l in labels {
        let n = l.as_ref().len();
        out.push(probs.narrow(0, start, n)?.contiguous()?);
        start += n;
    }
    Ok(out)
}

/// torchvision's `expand_boxes` followed by `.to(int64)`: each box scaled
/// about its centre by `scale`, in the boxes' own precision (f32 boxes are
/// expanded in f32, as torch does), then truncated toward zero.
fn expand_boxes_int(boxes: &Tensor, scale: f64) -> Result<Vec<[i64; 4]>> {
    const OP: &str = "paste_masks_in_image";
    let b = boxes.to_vec_f64()?;
    if let Some(bad) = b.iter().find(|v| !v.is_finite()) {
        return Err(Error::arg(OP, format!("boxes must be finite, got {bad}")));
    }
    macro_rules! expand {
        ($t:ty) => {
            b.chunks(4)
                .map(|x| {
                    let x: [$t; 4] = [x[0] as $t, x[1] as $t, x[2] as $t, x[3] as $t];
                    let s = scale as $t;
                    let w_half = (x[2] - x[0]) * 0.5 * s;
                    let h_half = (x[3] - x[1]) * 0.5 * s;
                    let x_c = (x[2] + x[0]) * 0.5;
                    let y_c = (x[3] + x[1]) * 0.5;
                    [x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half].map(|v| v as i64)
                })
                .collect()
        };
    }
    match boxes.dtype() {
        DType::F32 => Ok(expand!(f32)),
        DType::F64 => Ok(expand!(f64)),
        other => Err(Error::dtype(OP, "f32 or f64 boxes", other)),
    }
}

/// torchvision's `paste_masks_in_image`: masks [K, 1, Mh, M] (probabilities)
/// and their boxes [K, 4] (x1, y1, x2, y2, f32 or f64, on the host) ->
/// [K, 1, H, W] in the masks' dtype on the masks' device, `img_hw` = [H, W].
///
/// Per mask: zero-pad by `padding` on every side (`expand_masks`), expand
/// its box about the centre by scale (M + 2 padding) / M (`expand_boxes`,
/// M the last mask dim) and truncate it to integers b; bilinearly resize
/// the padded mask (align_corners = false) to h = max(b3 - b1 + 1, 1) by
/// w = max(b2 - b0 + 1, 1); copy the part of it that falls inside the image
/// to rows b1.., columns b0..; everything else is 0. The boxes are expanded
/// here on the host; the rest is the engine's `paste_masks` op on the
/// masks' device (the masks are not read back here), which uploads the
/// boxes' sampling tables (counted as one upload). Thresholding (0.5 in
/// torchvision's evaluation) is left to the caller. No gradient.
pub fn paste_masks_in_image(
    masks: &Tensor,
    boxes: &Tensor,
    img_hw: [usize; 2],
    padding: usize,
) -> Result<Tensor> {
    const OP: &str = "paste_masks_in_image";
    let d = masks.dims();
    if d.len() != 4 || d[1] != 1 || d[2] == 0 || d[3] == 0 || !masks.dtype().is_float() {
        return Err(Error::shape(
            OP,
            format!(
                "masks must be float [K, 1, Mh, M], got {:?} {}",
                d,
                masks.dtype()
            ),
        ));
    }
    let (k, mw) = (d[0], d[3]);
    if boxes.dims() != [k, 4] {
        return Err(Error::shape(
            OP,
            format!(
                "boxes must be [{k}, 4] to match masks {d:?}, got {:?}",
                boxes.dims()
            ),
        ));
    }
    let scale = (mw + 2 * padding) as f64 / mw as f64;
    let ib = expand_boxes_int(boxes, scale)?;
    let ib = Tensor::from_vec(ib.concat(), &[k, 4])?;
    let _guard = no_grad();
    // the op reads the integer boxes on the host and uploads their taps
    // (nothing when the output is empty)
    if k * img_hw[0] * img_hw[1] > 0 {
        count_uploads(1);
    }
    paste_masks(masks, &ib, img_hw, padding)
}
