//! Detection ops, exactly as torchvision.ops: RoIAlign (He et al., Mask
//! R-CNN; differentiable w.r.t. the feature map), box IoU and non-maximum
//! suppression (not differentiable). Boxes are (x1, y1, x2, y2) with
//! x2 >= x1, y2 >= y1; areas are (x2 - x1) * (y2 - y1), no +1. The checks,
//! trace and autograd of each op, over the [`DetectionOps`] primitives of
//! the backends (`cpu.rs`, `cuda.rs`).

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

use super::{expect_rank, same_dtype};
use crate::autograd::record;
use crate::backend::{same_device, unsupported, BackendInfo};
use crate::ops::GradSpec;
use crate::{on_backend, DType, Device, Error, Result, Tensor};

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
    /// RoIAlign of x [N, C, H, W] over boxes [K, 5]: [K, C, ph, pw].
    fn roi_align(&self, x: &Tensor, boxes: &Tensor, g: &RoiGeom) -> Result<Tensor> {
        let _ = (x, boxes, g);
        Err(unsupported(self, "roi_align"))
    }
    /// The gradient w.r.t. x [N, C, H, W] of the output gradient dy.
    fn roi_align_backward(&self, dy: &Tensor, boxes: &Tensor, g: &RoiGeom) -> Result<Tensor> {
        let _ = (dy, boxes, g);
        Err(unsupported(self, "roi_align_backward"))
    }
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

/// Checks RoIAlign's arguments (`boxes` on the host) and returns the
/// geometry or a clear error.
fn roi_geom(
    x: &Tensor,
    boxes: &Tensor,
    out: [usize; 2],
    spatial_scale: f64,
    sampling_ratio: i64,
    aligned: bool,
) -> Result<RoiGeom> {
    const OP: &str = "roi_align";
    expect_rank(OP, "input [N, C, H, W]", x, 4)?;
    let d = x.dims();
    let nchw = [d[0], d[1], d[2], d[3]];
    if boxes.rank() != 2 || boxes.dims()[1] != 5 {
        return Err(Error::shape(
            OP,
            format!(
                "boxes must be [K, 5] rows of (batch_index, x1, y1, x2, y2), got shape {:?}",
                boxes.dims()
            ),
        ));
    }
    same_dtype(OP, &[x, boxes])?;
    float_dtype(OP, x)?;
    if out.contains(&0) {
        return Err(Error::arg(
            OP,
            format!("output size {out:?} must be >= 1 in both dims"),
        ));
    }
    if nchw[2] == 0 || nchw[3] == 0 {
        return Err(Error::shape(
            OP,
            format!("input {:?} has an empty plane", x.dims()),
        ));
    }
    if !(spatial_scale.is_finite() && spatial_scale > 0.0) {
        return Err(Error::arg(
            OP,
            format!("spatial_scale must be finite and > 0, got {spatial_scale}"),
        ));
    }
    for (k, row) in boxes.to_vec_f64()?.chunks_exact(5).enumerate() {
        let b = row[0];
        if b.fract() != 0.0 || b < 0.0 || b >= nchw[0] as f64 {
            return Err(Error::arg(
                OP,
                format!(
                    "box {k}: batch index {b} is not an integer in [0, {}) (input batch size {})",
                    nchw[0], nchw[0]
                ),
            ));
        }
        if row[1..].iter().any(|v| !v.is_finite()) {
            return Err(Error::arg(
                OP,
                format!("box {k}: coordinates {:?} must be finite", &row[1..]),
            ));
        }
        // a sample table this large means a corrupt box or sampling ratio,
        // not a feature map (torchvision would grind through it)
        let grid = |size: f64, bins: usize| {
            if sampling_ratio > 0 {
                sampling_ratio as f64
            } else {
                (size * spatial_scale / bins as f64).ceil().max(1.0)
            }
        };
        let per_roi = (out[0] * out[1]) as f64
            * grid(row[4] - row[2], out[0])
            * grid(row[3] - row[1], out[1]);
        if per_roi > MAX_SAMPLES_PER_ROI {
            return Err(Error::arg(
                OP,
                format!(
                    "box {k} {:?} at spatial_scale {spatial_scale} with sampling_ratio \
                     {sampling_ratio} needs {per_roi:.3e} samples (more than {MAX_SAMPLES_PER_ROI:e})",
                    &row[1..]
                ),
            ));
        }
    }
    Ok(RoiGeom {
        nchw,
        k: boxes.dims()[0],
        out,
        spatial_scale,
        sampling_ratio,
        aligned,
    })
}

/// The gradient of a RoIAlign output: the input's dtype and device, the
/// output's shape [K, C, ph, pw].
fn check_grad(dy: &Tensor, x: (DType, Device), g: &RoiGeom) -> Result<()> {
    let shape = [g.k, g.nchw[1], g.out[0], g.out[1]];
    GradSpec::new(x.0, x.1, &shape).check("roi_align", dy)
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
        // the checks read the (few) boxes on the host
        let g = roi_geom(
            self,
            &boxes.to_device(Device::Cpu)?,
            output_size,
            spatial_scale,
            sampling_ratio,
            aligned,
        )?;
        let dev = self.device();
        let rois = boxes.detach().to_device(dev)?;
        on_backend!(dev, b => crate::trace::op(OP, "forward", b.name(), &[self, boxes], || {
            let y = b.roi_align(self, &rois, &g)?;
            let xs = (self.dtype(), dev);
            Ok(record(y, OP, &[self], move |dy| {
                check_grad(dy, xs, &g)?;
                Ok(vec![Some(b.roi_align_backward(dy, &rois, &g)?)])
            }))
        }))
    }
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
