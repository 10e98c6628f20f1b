//! Detection ops, exactly as torchvision.ops: RoIAlign (He et al., Mask
//! R-CNN; differentiable w.r.t. the feature map) over one feature map or
//! over FPN levels (`MultiScaleRoIAlign`), box IoU, non-maximum suppression,
//! the box coder's encode / decode and Mask R-CNN's mask paste
//! (`paste_masks_in_image`; not differentiable). Boxes are (x1, y1, x2, y2) with
//! x2 >= x1, y2 >= y1; areas are (x2 - x1) * (y2 - y1), no +1. The checks,
//! trace and autograd of each op, over the [`DetectionOps`] primitives of
//! the backends (`cpu.rs`, `cuda.rs`).

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

pub use cpu::{decode_boxes, encode_boxes};

// anchor / proposal matching and balanced sampling (matching/)
mod matching;
pub use matching::{
    match_boxes, sample_balanced, sample_key, BalancedSample, MatchRule, BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS, MATCH_MAX_ELEMENTS, MATCH_MAX_GT, SAMPLE_MAX_N,
};
mod proposals;
pub use proposals::{
    filter_proposals, ProposalGeom, Proposals, MAX_PROPOSAL_CANDIDATES, MAX_PROPOSAL_K,
    MAX_PROPOSAL_LEVELS, MAX_PROPOSAL_MASK_WORDS, MAX_PROPOSAL_SEGMENT,
};

use super::{expect_rank, same_dtype};
use crate::autograd::record;
use crate::backend::{same_device, unsupported, BackendInfo};
use crate::ops::GradSpec;
use crate::{dispatch_float, on_backend, DType, Device, Element, Error, Float, Result, Tensor};

/// Bilinear samples one box may take (bins x grid): far beyond any real
/// feature map (a 14x14 output of a 1024x1024 map samples ~1e6).
const MAX_SAMPLES_PER_ROI: f64 = (1u64 << 28) as f64;

/// The validated arguments of one RoIAlign.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoiGeom {
    /// Input [N, C, H, W].
    pub nchw: [usize; 4],
    /// Boxes K.
    pub k: usize,
    /// Pooled output [ph, pw].
    pub out: [usize; 2],
    pub spatial_scale: f64,
    pub sampling_ratio: i64,
    pub aligned: bool,
}

/// The detection primitives a backend implements. Boxes live on the
/// backend's device, in the input's dtype.
pub trait DetectionOps: BackendInfo {
    /// The [N, M] IoU of boxes a [N, 4] and b [M, 4].
    fn box_iou(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let _ = (a, b);
        Err(unsupported(self, "box_iou"))
    }
    /// The kept indices of `nms` over boxes [K, 4] and scores [K].
    fn nms(&self, boxes: &Tensor, scores: &Tensor, iou_threshold: f64) -> Result<Vec<usize>> {
        let _ = (boxes, scores, iou_threshold);
        Err(unsupported(self, "nms"))
    }
    /// The kept indices of `batched_nms` (`idxs` has K categories).
    fn batched_nms(
        &self,
        boxes: &Tensor,
        scores: &Tensor,
        idxs: &[i64],
        iou_threshold: f64,
    ) -> Result<Vec<usize>> {
        let _ = (boxes, scores, idxs, iou_threshold);
        Err(unsupported(self, "batched_nms"))
    }
    /// RoIAlign of box k from `xs[levels[k]]` with `geoms[levels[k]]`
    /// (every geometry has the K of all boxes [K, 5]): [K, C, ph, pw] in
    /// the boxes' order.
    fn multiscale_roi_align(
        &self,
        xs: &[Tensor],
        boxes: &Tensor,
        levels: &[usize],
        geoms: &[RoiGeom],
    ) -> Result<Tensor> {
        let _ = (xs, boxes, levels, geoms);
        Err(unsupported(self, "multiscale_roi_align"))
    }
    /// The gradient w.r.t. every level's input of the output gradient dy.
    fn multiscale_roi_align_backward(
        &self,
        dy: &Tensor,
        boxes: &Tensor,
        levels: &[usize],
        geoms: &[RoiGeom],
    ) -> Result<Vec<Tensor>> {
        let _ = (dy, boxes, levels, geoms);
        Err(unsupported(self, "multiscale_roi_align_backward"))
    }
    /// [`box_encode`] of two [N, 4] box sets.
    fn box_encode(
        &self,
        reference: &Tensor,
        proposals: &Tensor,
        weights: [f64; 4],
    ) -> Result<Tensor> {
        let _ = (reference, proposals, weights);
        Err(unsupported(self, "box_encode"))
    }
    /// [`paste_masks`] of masks [K, 1, Mh, Mw] with the checked boxes
    /// (one per mask): [K, 1, H, W] in the masks' dtype on their device.
    fn paste_masks(&self, masks: &Tensor, boxes: &[PasteBox], g: &PasteGeom) -> Result<Tensor> {
        let _ = (masks, boxes, g);
        Err(unsupported(self, "paste_masks"))
    }
    /// [`box_decode`] of rel_codes [N, 4 K] against boxes [N, 4].
    fn box_decode(
        &self,
        rel_codes: &Tensor,
        boxes: &Tensor,
        weights: [f64; 4],
        bbox_xform_clip: f64,
    ) -> Result<Tensor> {
        let _ = (rel_codes, boxes, weights, bbox_xform_clip);
        Err(unsupported(self, "box_decode"))
    }
    /// [`match_boxes`] of a checked float quality [G, N] and gt_labels
    /// (None, or i64 [G] on the same device): (matches, labels) [N] i64.
    fn match_boxes(
        &self,
        quality: &Tensor,
        rule: MatchRule,
        gt_labels: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let _ = (quality, rule, gt_labels);
        Err(unsupported(self, "match_boxes"))
    }
    /// [`sample_balanced`] of checked i64 labels [N] with `target` =
    /// int(batch * fraction) <= the batch.
    fn sample_balanced(
        &self,
        labels: &Tensor,
        batch_size_per_image: usize,
        target: usize,
        seed: u64,
    ) -> Result<BalancedSample> {
        let _ = (labels, batch_size_per_image, target, seed);
        Err(unsupported(self, "sample_balanced"))
    }
    /// [`filter_proposals`] of the checked `g`: boxes [B, K, 4] and
    /// logits [B, K] (f32 or f64) on the backend's device.
    fn filter_proposals(
        &self,
        boxes: &Tensor,
        logits: &Tensor,
        g: &ProposalGeom,
    ) -> Result<Proposals> {
        let _ = (boxes, logits, g);
        Err(unsupported(self, "filter_proposals"))
    }
}

/// Checks `boxes` is [K, 4] with a float dtype; returns K.
fn boxes_k(op: &'static str, what: &str, boxes: &Tensor) -> Result<usize> {
    if boxes.rank() != 2 || boxes.dims()[1] != 4 {
        return Err(Error::shape(
            op,
            format!(
                "{what} must be [K, 4] rows of (x1, y1, x2, y2), got shape {:?}",
                boxes.dims()
            ),
        ));
    }
    float_dtype(op, boxes)?;
    Ok(boxes.dims()[0])
}

fn float_dtype(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::dtype(
            op,
            "a float dtype (f64, f32, f16, bf16)",
            t.dtype(),
        ))
    }
}

/// Checks `boxes` [K, 4] and `scores` [K] share a float dtype and a device.
fn check_boxes_scores(op: &'static str, boxes: &Tensor, scores: &Tensor) -> Result<Device> {
    let k = boxes_k(op, "boxes", boxes)?;
    if scores.dims() != [k] {
        return Err(Error::shape(
            op,
            format!(
                "scores must be [K] = [{k}] (one per box), got shape {:?}",
                scores.dims()
            ),
        ));
    }
    same_dtype(op, &[boxes, scores])?;
    same_device(op, &[boxes, scores])
}

/// The kept indices as an i64 [n] host tensor (what the trace logs).
fn index_tensor(keep: Vec<usize>) -> Tensor {
    let n = keep.len();
    Tensor::from_vec(keep.into_iter().map(|i| i as i64).collect::<Vec<_>>(), &[n])
        .expect("a [n] vector of n indices")
}

fn from_index_tensor(t: Tensor) -> Result<Vec<usize>> {
    Ok(t.to_vec_f64()?.into_iter().map(|v| v as usize).collect())
}

/// Checks that `boxes` is [K, 5] rows of (batch_index, x1, y1, x2, y2) in
/// `x`'s float dtype; returns K.
fn rois_k(op: &'static str, x: &Tensor, boxes: &Tensor) -> Result<usize> {
    if boxes.rank() != 2 || boxes.dims()[1] != 5 {
        return Err(Error::shape(
            op,
            format!(
                "boxes must be [K, 5] rows of (batch_index, x1, y1, x2, y2), got shape {:?}",
                boxes.dims()
            ),
        ));
    }
    same_dtype(op, &[x, boxes])?;
    float_dtype(op, x)?;
    Ok(boxes.dims()[0])
}

/// Checks the feature map `x` and RoIAlign's settings; returns the
/// geometry of `k` boxes pooled from it.
fn roi_geom(
    op: &'static str,
    x: &Tensor,
    k: usize,
    out: [usize; 2],
    spatial_scale: f64,
    sampling_ratio: i64,
    aligned: bool,
) -> Result<RoiGeom> {
    expect_rank(op, "input [N, C, H, W]", x, 4)?;
    let d = x.dims();
    let nchw = [d[0], d[1], d[2], d[3]];
    if out.contains(&0) {
        return Err(Error::arg(
            op,
            format!("output size {out:?} must be >= 1 in both dims"),
        ));
    }
    if nchw[2] == 0 || nchw[3] == 0 {
        return Err(Error::shape(
            op,
            format!("input {:?} has an empty plane", x.dims()),
        ));
    }
    if !(spatial_scale.is_finite() && spatial_scale > 0.0) {
        return Err(Error::arg(
            op,
            format!("spatial_scale must be finite and > 0, got {spatial_scale}"),
        ));
    }
    Ok(RoiGeom {
        nchw,
        k,
        out,
        spatial_scale,
        sampling_ratio,
        aligned,
    })
}

/// Checks box `k`'s host row (batch_index, x1, y1, x2, y2) against the
/// geometry it is pooled with, or returns a clear error.
fn check_roi(op: &'static str, k: usize, row: &[f64], g: &RoiGeom) -> Result<()> {
    let b = row[0];
    let n = g.nchw[0];
    if b.fract() != 0.0 || b < 0.0 || b >= n as f64 {
        return Err(Error::arg(
            op,
            format!(
                "box {k}: batch index {b} is not an integer in [0, {n}) (input batch size {n})"
            ),
        ));
    }
    if row[1..].iter().any(|v| !v.is_finite()) {
        return Err(Error::arg(
            op,
            format!("box {k}: coordinates {:?} must be finite", &row[1..]),
        ));
    }
    // a sample table this large means a corrupt box or sampling ratio,
    // not a feature map (torchvision would grind through it)
    let grid = |size: f64, bins: usize| {
        if g.sampling_ratio > 0 {
            g.sampling_ratio as f64
        } else {
            (size * g.spatial_scale / bins as f64).ceil().max(1.0)
        }
    };
    let per_roi = (g.out[0] * g.out[1]) as f64
        * grid(row[4] - row[2], g.out[0])
        * grid(row[3] - row[1], g.out[1]);
    if per_roi > MAX_SAMPLES_PER_ROI {
        return Err(Error::arg(
            op,
            format!(
                "box {k} {:?} at spatial_scale {} with sampling_ratio {} needs {per_roi:.3e} \
                 samples (more than {MAX_SAMPLES_PER_ROI:e})",
                &row[1..],
                g.spatial_scale,
                g.sampling_ratio
            ),
        ));
    }
    Ok(())
}

/// The gradient of a RoIAlign output: the input's dtype and device, the
/// output's shape [K, C, ph, pw].
fn check_grad(op: &'static str, dy: &Tensor, x: (DType, Device), g: &RoiGeom) -> Result<()> {
    let shape = [g.k, g.nchw[1], g.out[0], g.out[1]];
    GradSpec::new(x.0, x.1, &shape).check(op, dy)
}

/// torchvision's `LevelMapper` (torchvision/ops/poolers.py): which FPN
/// level pools a box, from its size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelMapper {
    /// The finest and coarsest levels (-log2 of their spatial scales).
    pub k_min: i64,
    pub k_max: i64,
    /// The box size mapped to `canonical_level` (224).
    pub canonical_scale: f64,
    /// 4
    pub canonical_level: f64,
    /// 1e-6
    pub eps: f64,
}

impl LevelMapper {
    /// torchvision's mapper (canonical scale 224, level 4, eps 1e-6) over
    /// levels `k_min..=k_max`.
    pub fn new(k_min: i64, k_max: i64) -> LevelMapper {
        LevelMapper {
            k_min,
            k_max,
            canonical_scale: 224.0,
            canonical_level: 4.0,
            eps: 1e-6,
        }
    }

    /// The level index of each box of the flat [N, 4] `boxes`, computed in
    /// `T` as torchvision: clamp(floor(canonical_level + log2(sqrt(area) /
    /// canonical_scale) + eps), k_min, k_max) - k_min, area = (x2 - x1)
    /// (y2 - y1). Errors on a box whose level is NaN (negative area or
    /// non-finite coordinates), which torchvision would turn into an
    /// arbitrary integer.
    pub fn levels<T: Float>(&self, boxes: &[T]) -> Result<Vec<usize>> {
        let lvl0 = <T as Element>::from_f64(self.canonical_level);
        let s0 = <T as Element>::from_f64(self.canonical_scale);
        let eps = <T as Element>::from_f64(self.eps);
        let (lo, hi) = (
            <T as Element>::from_f64(self.k_min as f64),
            <T as Element>::from_f64(self.k_max as f64),
        );
        boxes
            .chunks_exact(4)
            .enumerate()
            .map(|(i, b)| {
                let s = ((b[2] - b[0]) * (b[3] - b[1])).sqrt();
                let l = (lvl0 + (s / s0).log2() + eps).floor();
                if l.is_nan() {
                    return Err(Error::arg(
                        "multiscale_roi_align",
                        format!(
                            "box {i} ({:?}) has no level: its area is negative or not finite",
                            b.iter().map(|v| Element::to_f64(*v)).collect::<Vec<_>>()
                        ),
                    ));
                }
                // torch.clamp: in range after the NaN check
                let l = if l < lo {
                    lo
                } else if l > hi {
                    hi
                } else {
                    l
                };
                Ok((Element::to_f64(l) as i64 - self.k_min) as usize)
            })
            .collect()
    }
}

/// Checks the FPN levels of [`multiscale_roi_align`]: at least one, rank 4
/// with one batch size, channel count, dtype and device, one scale each,
/// and as many as the mapper's levels. Returns the device.
fn check_levels(
    op: &'static str,
    features: &[Tensor],
    scales: &[f64],
    mapper: &LevelMapper,
) -> Result<Device> {
    let Some(first) = features.first() else {
        return Err(Error::arg(op, "got no feature map"));
    };
    if scales.len() != features.len() {
        return Err(Error::arg(
            op,
            format!(
                "got {} scales for {} feature maps",
                scales.len(),
                features.len()
            ),
        ));
    }
    if mapper.k_max - mapper.k_min + 1 != features.len() as i64 {
        return Err(Error::arg(
            op,
            format!(
                "levels {}..={} of the level mapper for {} feature maps",
                mapper.k_min,
                mapper.k_max,
                features.len()
            ),
        ));
    }
    for (l, f) in features.iter().enumerate() {
        expect_rank(op, "feature maps [N, C, H, W]", f, 4)?;
        if f.dims()[..2] != first.dims()[..2] {
            return Err(Error::shape(
                op,
                format!(
                    "feature map {l} is {:?} but feature map 0 is {:?}: N and C must agree",
                    f.dims(),
                    first.dims()
                ),
            ));
        }
    }
    let refs: Vec<&Tensor> = features.iter().collect();
    same_dtype(op, &refs)?;
    same_device(op, &refs)
}

impl Tensor {
    /// RoIAlign of `self` [N, C, H, W] over `boxes` [K, 5] = rows of
    /// (batch_index, x1, y1, x2, y2) in input-image coordinates, same float
    /// dtype; returns [K, C, ph, pw] with `output_size` = [ph, pw].
    ///
    /// Exactly `torchvision.ops.roi_align`: each box is scaled by
    /// `spatial_scale` (and shifted by -0.5 when `aligned`; otherwise its
    /// width and height are raised to at least 1), split into ph x pw bins,
    /// and each bin is the mean of a grid of `sampling_ratio` x
    /// `sampling_ratio` bilinear samples at the sub-cell centres
    /// (`sampling_ratio <= 0`: ceil(bin height) x ceil(bin width) per box).
    /// A sample outside [-1, H] x [-1, W] counts as 0; one in (-1, 0]
    /// clamps to the border. Differentiable w.r.t. `self` (scatter-add of
    /// the same weights); `boxes` (moved to `self`'s device when elsewhere)
    /// get no gradient, as in torchvision. f16/bf16 are computed in f32 and
    /// rounded back. On a GPU the backward adds with atomics: not bitwise
    /// deterministic, equal to the CPU's to f32 rounding.
    pub fn roi_align(
        &self,
        boxes: &Tensor,
        output_size: [usize; 2],
        spatial_scale: f64,
        sampling_ratio: i64,
        aligned: bool,
    ) -> Result<Tensor> {
        const OP: &str = "roi_align";
        let k = rois_k(OP, self, boxes)?;
        let g = roi_geom(
            OP,
            self,
            k,
            output_size,
            spatial_scale,
            sampling_ratio,
            aligned,
        )?;
        // the checks read the (few) boxes on the host
        let host = boxes.to_device(Device::Cpu)?.to_vec_f64()?;
        for (k, row) in host.chunks_exact(5).enumerate() {
            check_roi(OP, k, row, &g)?;
        }
        let dev = self.device();
        let rois = boxes.detach().to_device(dev)?;
        // one level: the multi-level primitive with every box on it
        let levels = vec![0; k];
        let geoms = [g];
        on_backend!(dev, b => crate::trace::op(OP, "forward", b.name(), &[self, boxes], || {
            let y = b.multiscale_roi_align(std::slice::from_ref(self), &rois, &levels, &geoms)?;
            let xs = (self.dtype(), dev);
            Ok(record(y, OP, &[self], move |dy| {
                check_grad(OP, dy, xs, &geoms[0])?;
                let mut dx = b.multiscale_roi_align_backward(dy, &rois, &levels, &geoms)?;
                Ok(vec![Some(dx.remove(0))])
            }))
        }))
    }
}

/// torchvision's `MultiScaleRoIAlign` (torchvision/ops/poolers.py) as one
/// op: `features` are the FPN levels [N, C, H_l, W_l] (finest first; one
/// float dtype and device), `boxes` [K, 5] rows of (batch_index, x1, y1,
/// x2, y2) in image coordinates in their dtype, `scales` each level's
/// spatial scale. Each box goes to the level of `mapper` (every box to
/// level 0 when there is one level, as torchvision, which then maps
/// nothing) and is pooled there exactly as [`Tensor::roi_align`] with
/// `output_size`, that level's scale, `sampling_ratio` and `aligned`;
/// returns [K, C, ph, pw] with row k the pooling of box k (torchvision's
/// order).
///
/// The front-end reads the boxes on the host (as `roi_align` does), checks
/// them and maps each to its level there, in the boxes' dtype (f32 for
/// f16 / bf16): a box with no level (negative area or NaN) is an error on
/// every device, and both backends get the same levels. Differentiable
/// w.r.t. every feature map (each gets the scatter of its own boxes; a
/// level no box maps to gets zeros); the boxes get no gradient. On a GPU
/// one launch pools all levels (at most `kernels::device::ROI_MAX_LEVELS`
/// of them) and the backward adds with f32 atomics, as `roi_align`'s.
pub fn multiscale_roi_align(
    features: &[Tensor],
    boxes: &Tensor,
    scales: &[f64],
    output_size: [usize; 2],
    sampling_ratio: i64,
    aligned: bool,
    mapper: &LevelMapper,
) -> Result<Tensor> {
    const OP: &str = "multiscale_roi_align";
    let dev = check_levels(OP, features, scales, mapper)?;
    let k = rois_k(OP, &features[0], boxes)?;
    let geoms = features
        .iter()
        .zip(scales)
        .map(|(x, &s)| roi_geom(OP, x, k, output_size, s, sampling_ratio, aligned))
        .collect::<Result<Vec<_>>>()?;
    let host = boxes.to_device(Device::Cpu)?.to_vec_f64()?;
    let levels = if features.len() == 1 {
        vec![0; k]
    } else {
        let coords = host.chunks_exact(5).flat_map(|r| &r[1..]);
        dispatch_float!(OP, boxes.dtype(), T => {
            let flat: Vec<T> = coords.map(|&v| <T as Element>::from_f64(v)).collect();
            mapper.levels::<T>(&flat)?
        })
    };
    for (i, row) in host.chunks_exact(5).enumerate() {
        check_roi(OP, i, row, &geoms[levels[i]])?;
    }
    let rois = boxes.detach().to_device(dev)?;
    let inputs: Vec<&Tensor> = features.iter().chain([boxes]).collect();
    on_backend!(dev, b => crate::trace::op(OP, "forward", b.name(), &inputs, || {
        let y = b.multiscale_roi_align(features, &rois, &levels, &geoms)?;
        let xs = (features[0].dtype(), dev);
        Ok(record(y, OP, &inputs[..features.len()], move |dy| {
            check_grad(OP, dy, xs, &geoms[0])?;
            let dxs = b.multiscale_roi_align_backward(dy, &rois, &levels, &geoms)?;
            Ok(dxs.into_iter().map(Some).collect())
        }))
    }))
}

/// Checks that `a` and `b` share a device and the dtype f32 or f64 (box
/// coding stays in f32 under autocast, as torchvision's); returns the
/// device.
fn coder_inputs(op: &'static str, a: &Tensor, b: &Tensor) -> Result<Device> {
    same_dtype(op, &[a, b])?;
    if !matches!(a.dtype(), DType::F32 | DType::F64) {
        return Err(Error::dtype(
            op,
            "f32 or f64 (box coding stays in f32 under autocast, as torchvision's)",
            a.dtype(),
        ));
    }
    same_device(op, &[a, b])
}

/// torchvision's `BoxCoder.encode_single`
/// (torchvision/models/detection/_utils.py, `encode_boxes`): for each row
/// i, the regression targets of `reference[i]` (the matched gt box)
/// relative to `proposals[i]` (the anchor or proposal), both [N, 4] (x1,
/// y1, x2, y2): with pw = px2 - px1, pcx = px1 + 0.5 pw (the same for the
/// gt: gw, gcx), dx = wx (gcx - pcx) / pw, dy = wy (gcy - pcy) / ph, dw =
/// ww ln(gw / pw), dh = wh ln(gh / ph) with `weights` = (wx, wy, ww, wh).
/// Returns [N, 4] in the inputs' dtype, f32 or f64, computed in it in
/// torchvision's operation order; degenerate proposals give inf / NaN, as
/// torchvision. Not differentiable: the output has no gradient history
/// (torchvision encodes only targets).
pub fn box_encode(reference: &Tensor, proposals: &Tensor, weights: [f64; 4]) -> Result<Tensor> {
    const OP: &str = "box_encode";
    let n = boxes_k(OP, "reference boxes", reference)?;
    let m = boxes_k(OP, "proposals", proposals)?;
    if n != m {
        return Err(Error::shape(
            OP,
            format!("reference boxes have {n} rows but proposals {m}; they pair row by row"),
        ));
    }
    let dev = coder_inputs(OP, reference, proposals)?;
    on_backend!(dev, b => crate::trace::op(OP, "forward", b.name(), &[reference, proposals], || {
        b.box_encode(reference, proposals, weights)
    }))
}

/// torchvision's `BoxCoder.decode_single`: `rel_codes` [N, 4 K] (K codes
/// per box, e.g. one per class) applied to `boxes` [N, 4]; returns [N, 4 K].
/// Per (i, k), with w = x2 - x1, cx = x1 + 0.5 w of `boxes[i]`: dx = c0 /
/// wx, dy = c1 / wy, dw = min(c2 / ww, clip), dh = min(c3 / wh, clip) (NaN
/// stays NaN) with clip = `bbox_xform_clip`, pcx = dx w + cx, pcy = dy h +
/// cy, pw = exp(dw) w, ph = exp(dh) h, and the box is (pcx - 0.5 pw, pcy -
/// 0.5 ph, pcx + 0.5 pw, pcy + 0.5 ph). f32 or f64, computed in the
/// inputs' dtype (f32 stays f32, as torchvision's). Not differentiable:
/// the output has no gradient history (torchvision decodes only detached
/// values).
pub fn box_decode(
    rel_codes: &Tensor,
    boxes: &Tensor,
    weights: [f64; 4],
    bbox_xform_clip: f64,
) -> Result<Tensor> {
    const OP: &str = "box_decode";
    let n = boxes_k(OP, "boxes", boxes)?;
    if rel_codes.rank() != 2 || rel_codes.dims()[0] != n || !rel_codes.dims()[1].is_multiple_of(4) {
        return Err(Error::shape(
            OP,
            format!(
                "rel_codes must be [N, 4 K] with N = {n} (the boxes), got shape {:?}",
                rel_codes.dims()
            ),
        ));
    }
    let dev = coder_inputs(OP, rel_codes, boxes)?;
    on_backend!(dev, b => crate::trace::op(OP, "forward", b.name(), &[rel_codes, boxes], || {
        b.box_decode(rel_codes, boxes, weights, bbox_xform_clip)
    }))
}

/// `torchvision.ops.box_iou`: the [N, M] matrix of IoU between `a` [N, 4]
/// and `b` [M, 4] (x1, y1, x2, y2), inter / (area_a + area_b - inter) with
/// the intersection's sides clamped at 0. Same float dtype in and out
/// (f16/bf16 computed in f32); 0/0 (two empty boxes) gives NaN, as torch.
/// Not differentiable.
pub fn box_iou(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "box_iou";
    boxes_k(OP, "first boxes", a)?;
    boxes_k(OP, "second boxes", b)?;
    same_dtype(OP, &[a, b])?;
    let dev = same_device(OP, &[a, b])?;
    on_backend!(dev, be => crate::trace::op(OP, "forward", be.name(), &[a, b], || be.box_iou(a, b)))
}

/// `torchvision.ops.nms`: greedy non-maximum suppression. Visits boxes in
/// order of decreasing score (ties by lower index first, NaN scores first),
/// keeps a box unless it was suppressed, and suppresses every later box
/// whose IoU with it is > `iou_threshold`. Returns the kept indices in
/// visiting order. `boxes` [K, 4] (x1, y1, x2, y2) and `scores` [K] share a
/// float dtype and a device; f16/bf16 are computed in f32.
pub fn nms(boxes: &Tensor, scores: &Tensor, iou_threshold: f64) -> Result<Vec<usize>> {
    const OP: &str = "nms";
    let dev = check_boxes_scores(OP, boxes, scores)?;
    let keep = on_backend!(dev, b => crate::trace::op(OP, "forward", b.name(), &[boxes, scores], || {
        Ok(index_tensor(b.nms(boxes, scores, iou_threshold)?))
    }))?;
    from_index_tensor(keep)
}

/// `torchvision.ops.batched_nms`: NMS within each category `idxs[i]`,
/// boxes of different categories never suppress each other; kept indices
/// in order of decreasing score.
///
/// As torchvision, up to 1000 boxes use the coordinate trick (every box is
/// shifted by `idxs[i] * (max coordinate + 1)`, computed in the boxes'
/// dtype, and one NMS runs over all of them), and more boxes run one NMS per
/// category and merge the kept indices by decreasing score (ties by lower
/// index; torch's unstable sort may order such ties differently). The two
/// can differ only by the rounding of the shifted coordinates.
pub fn batched_nms(
    boxes: &Tensor,
    scores: &Tensor,
    idxs: &[i64],
    iou_threshold: f64,
) -> Result<Vec<usize>> {
    const OP: &str = "batched_nms";
    let dev = check_boxes_scores(OP, boxes, scores)?;
    let k = boxes.dims()[0];
    if idxs.len() != k {
        return Err(Error::shape(
            OP,
            format!("idxs has {} categories for {k} boxes", idxs.len()),
        ));
    }
    let keep = on_backend!(dev, b => crate::trace::op(OP, "forward", b.name(), &[boxes, scores], || {
        Ok(index_tensor(b.batched_nms(boxes, scores, idxs, iou_threshold)?))
    }))?;
    from_index_tensor(keep)
}

/// The largest side (pixels) of a pasted box, of the padded mask and of
/// the image [`paste_masks`] accepts: a box beyond it is surely corrupt
/// (it would only exhaust memory), and every index stays inside the GPU
/// kernel's int32.
pub const MAX_PASTE_SIDE: usize = 1 << 16;

/// The shapes of one [`paste_masks`]: K masks of Mh x Mw, zero-padded by
/// `padding`, pasted into an image of `img` = [H, W].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasteGeom {
    pub k: usize,
    pub mh: usize,
    pub mw: usize,
    pub padding: usize,
    pub img: [usize; 2],
}

impl PasteGeom {
    /// The padded mask's [rows, cols]: what each box's resize samples.
    pub fn padded(&self) -> [usize; 2] {
        [self.mh + 2 * self.padding, self.mw + 2 * self.padding]
    }
}

/// One checked paste box: its padded mask is resized to `size` = [h, w]
/// and placed with its top-left pixel at (`top`, `left`) (the integer box's
/// y0 and x0, possibly outside the image); `rows` and `cols` are the image
/// rows / columns [start, end) it covers inside the image (both empty
/// when it covers none), so image pixel (y, x) there takes resized pixel
/// (y - top, x - left).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasteBox {
    pub top: i64,
    pub left: i64,
    pub size: [usize; 2],
    pub rows: [usize; 2],
    pub cols: [usize; 2],
}

impl PasteBox {
    /// Box `i` (x0, y0, x1, y1, inclusive integer corners) in an image of
    /// `img` = [H, W], as torchvision's `paste_mask_in_image`: h = max(y1 -
    /// y0 + 1, 1), w likewise; image rows max(y0, 0) .. min(y1 + 1, H),
    /// columns likewise. Errors on a side above [`MAX_PASTE_SIDE`].
    fn new(op: &'static str, i: usize, b: [i64; 4], img: [usize; 2]) -> Result<PasteBox> {
        // i128: i64 corners cannot overflow here
        let [x0, y0, x1, y1] = b.map(i128::from);
        let w = (x1 - x0 + 1).max(1);
        let h = (y1 - y0 + 1).max(1);
        if w > MAX_PASTE_SIDE as i128 || h > MAX_PASTE_SIDE as i128 {
            return Err(Error::arg(
                op,
                format!("box {i} expands to {w} x {h} pixels (more than {MAX_PASTE_SIDE} a side): {b:?}"),
            ));
        }
        let span = |lo: i128, hi: i128, n: usize| -> [usize; 2] {
            let (a, z) = (lo.max(0), (hi + 1).min(n as i128));
            if z <= a {
                [0, 0]
            } else {
                [a as usize, z as usize]
            }
        };
        let (mut rows, mut cols) = (span(y0, y1, img[0]), span(x0, x1, img[1]));
        if rows[0] == rows[1] || cols[0] == cols[1] {
            (rows, cols) = ([0, 0], [0, 0]);
        }
        Ok(PasteBox {
            top: b[1],
            left: b[0],
            size: [h as usize, w as usize],
            rows,
            cols,
        })
    }

    /// The range of resized rows (`axis` 0) or columns (1) the image part
    /// takes: indices into the box's resize of that axis.
    pub fn taps_range(&self, axis: usize) -> std::ops::Range<usize> {
        let (span, origin) = if axis == 0 {
            (self.rows, self.top)
        } else {
            (self.cols, self.left)
        };
        if span[0] == span[1] {
            return 0..0;
        }
        // span[0] >= origin: the span starts at max(origin, 0)
        let s = (span[0] as i128 - origin as i128) as usize;
        s..s + (span[1] - span[0])
    }
}

/// torchvision's `paste_masks_in_image` (torchvision/models/detection/
/// roi_heads.py) after `expand_masks` / `expand_boxes`, as one op: `masks`
/// [K, 1, Mh, Mw] (float), `boxes` i64 [K, 4] the integer expanded boxes
/// (x0, y0, x1, y1, inclusive: `expand_boxes(..).to(torch.int64)`; on any
/// device, read on the host for the checks), `img_hw` = [H, W].
///
/// Returns [K, 1, H, W] in the masks' dtype on their device: pixel (y, x)
/// of plane k inside box k's in-image part is the value
/// `F.interpolate(padded, size=(h, w), mode="bilinear",
/// align_corners=False)` has at (y - y0, x - x0), where `padded` is mask k
/// zero-padded by `padding` on every side, h = max(y1 - y0 + 1, 1) and w =
/// max(x1 - x0 + 1, 1); every other pixel is 0 (a box entirely outside the
/// image pastes nothing, where torchvision's slicing misbehaves). Computed
/// directly, with `upsample_bilinear2d`'s own source taps and blend (no
/// padded or resized temporaries): equal bit for bit to that resize and a
/// copy. f16 / bf16 are computed in f32 and rounded once; f64 is CPU-only
/// (the GPU kernels are f32 / f16 / bf16). No gradient.
///
/// Errors: masks not float [K, 1, Mh, Mw] with Mh, Mw >= 1; boxes not i64
/// [K, 4]; a box side, a padded mask side or an image side above
/// [`MAX_PASTE_SIDE`].
pub fn paste_masks(
    masks: &Tensor,
    boxes: &Tensor,
    img_hw: [usize; 2],
    padding: usize,
) -> Result<Tensor> {
    const OP: &str = "paste_masks";
    let d = masks.dims();
    if d.len() != 4 || d[1] != 1 || d[2] == 0 || d[3] == 0 {
        return Err(Error::shape(
            OP,
            format!("masks must be [K, 1, Mh, Mw] with Mh, Mw >= 1, got {d:?}"),
        ));
    }
    float_dtype(OP, masks)?;
    let padded = [d[2], d[3]].map(|m| m.saturating_add(padding.saturating_mul(2)));
    if padded.iter().chain(&img_hw).any(|&s| s > MAX_PASTE_SIDE) {
        return Err(Error::arg(
            OP,
            format!(
                "masks {d:?} padded by {padding} into an image of {img_hw:?}: every side must be \
                 at most {MAX_PASTE_SIDE}"
            ),
        ));
    }
    let g = PasteGeom {
        k: d[0],
        mh: d[2],
        mw: d[3],
        padding,
        img: img_hw,
    };
    if boxes.dims() != [g.k, 4] {
        return Err(Error::shape(
            OP,
            format!(
                "boxes must be [{}, 4] (one (x0, y0, x1, y1) row per mask of {d:?}), got {:?}",
                g.k,
                boxes.dims()
            ),
        ));
    }
    if boxes.dtype() != DType::I64 {
        return Err(Error::dtype(
            OP,
            "i64 boxes (the integer expanded boxes)",
            boxes.dtype(),
        ));
    }
    let host = boxes.detach().to_device(Device::Cpu)?.to_vec::<i64>()?;
    let pb = host
        .chunks_exact(4)
        .enumerate()
        .map(|(i, b)| PasteBox::new(OP, i, [b[0], b[1], b[2], b[3]], img_hw))
        .collect::<Result<Vec<_>>>()?;
    let dev = masks.device();
    on_backend!(dev, b => crate::trace::op(OP, "forward", b.name(), &[masks, boxes], || {
        b.paste_masks(masks, &pb, &g)
    }))
}
