//! Box regression targets and their inverse, exactly as torchvision's
//! `BoxCoder` (torchvision/models/detection/_utils.py): the host slice
//! versions share their math with the engine ops `box_encode` /
//! `box_decode` (engine/src/ops/detection), which the tensor versions call;
//! plus
//! `clip_boxes_to_image` and `remove_small_boxes` (torchvision/ops/boxes.py).
//!
//! Boxes are (x1, y1, x2, y2), stored flat row-major ([N, 4] = `4 N` values),
//! in f32 or f64; each function computes in the dtype it is given, in
//! torchvision's operation order, so f64 results agree with torchvision's
//! float64 ones to the last bits of `ln` / `exp`. Widths are `x2 - x1` (no
//! "+ 1") and centres `x1 + 0.5 w`.
//!
//! Decoding is deliberately not differentiable: torchvision decodes only
//! detached values (the RPN decodes `pred_bbox_deltas.detach()` into
//! proposals; the ROI heads decode only in `postprocess_detections`), and
//! both box-regression losses are computed on *encoded* targets
//! (`encode` of the matched gt boxes against anchors / proposals), so no
//! gradient ever flows through a decode.

use engine::ops::detection::{box_decode, box_encode, decode_boxes, encode_boxes};
use engine::{Element, Error, Float, Result, Tensor};

/// `ln(1000 / 16)`: torchvision's default `bbox_xform_clip`, the largest
/// dw / dh (after dividing by the weight) passed to `exp` when decoding.
pub fn default_bbox_xform_clip() -> f64 {
    (1000.0f64 / 16.0).ln()
}

/// Encodes boxes as (dx, dy, dw, dh) relative to reference boxes, with
/// per-coordinate weights: the RPN uses (1, 1, 1, 1), the ROI box head
/// (10, 10, 5, 5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxCoder {
    /// (wx, wy, ww, wh)
    pub weights: [f64; 4],
    /// Upper clamp of dw / dh in [`BoxCoder::decode`].
    pub bbox_xform_clip: f64,
}

/// Number of rows of a flat [N, 4] box slice, or an error naming `what`.
fn rows4<T>(op: &'static str, what: &str, boxes: &[T]) -> Result<usize> {
    if !boxes.len().is_multiple_of(4) {
        return Err(Error::shape(
            op,
            format!(
                "{what} must be flat [N, 4] rows of (x1, y1, x2, y2), got {} values (not a multiple of 4)",
                boxes.len()
            ),
        ));
    }
    Ok(boxes.len() / 4)
}

/// `torch.clamp(x, min=lo, max=hi)`: NaN stays NaN.
#[inline]
fn clamp_nan<T: Float>(x: T, lo: T, hi: T) -> T {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

impl BoxCoder {
    /// A coder with the given weights and torchvision's default clip
    /// [`default_bbox_xform_clip`].
    pub fn new(weights: [f64; 4]) -> BoxCoder {
        BoxCoder {
            weights,
            bbox_xform_clip: default_bbox_xform_clip(),
        }
    }

    /// torchvision's `encode_boxes`: for each row i, the targets of
    /// `reference_boxes[i]` (the matched gt box) relative to `proposals[i]`
    /// (the anchor or proposal), both [N, 4] flat:
    /// with pw = px2 - px1, pcx = px1 + 0.5 pw (same for the gt: gw, gcx),
    /// dx = wx (gcx - pcx) / pw, dy = wy (gcy - pcy) / ph,
    /// dw = ww ln(gw / pw), dh = wh ln(gh / ph). Returns [N, 4] flat.
    /// Degenerate proposals give inf / NaN, as torchvision.
    pub fn encode<T: Float>(&self, reference_boxes: &[T], proposals: &[T]) -> Result<Vec<T>> {
        const OP: &str = "BoxCoder::encode";
        let n = rows4(OP, "reference_boxes", reference_boxes)?;
        let m = rows4(OP, "proposals", proposals)?;
        if n != m {
            return Err(Error::shape(
                OP,
                format!("reference_boxes has {n} rows but proposals has {m}; they pair row by row"),
            ));
        }
        Ok(encode_boxes(reference_boxes, proposals, self.weights))
    }

    /// torchvision's `decode_single`: `rel_codes` [N, 4 K] (K boxes per
    /// reference, e.g. one per class) applied to `boxes` [N, 4]; returns
    /// [N, 4 K] flat. Per (i, k), with w = x2 - x1, cx = x1 + 0.5 w of
    /// `boxes[i]`: dx = c0 / wx, dy = c1 / wy, dw = min(c2 / ww, clip),
    /// dh = min(c3 / wh, clip) (NaN stays NaN), pcx = dx w + cx,
    /// pcy = dy h + cy, pw = exp(dw) w, ph = exp(dh) h, and the box is
    /// (pcx - 0.5 pw, pcy - 0.5 ph, pcx + 0.5 pw, pcy + 0.5 ph).
    /// No gradient (see the module docs).
    pub fn decode<T: Float>(&self, rel_codes: &[T], boxes: &[T]) -> Result<Vec<T>> {
        const OP: &str = "BoxCoder::decode";
        let n = rows4(OP, "boxes", boxes)?;
        let per_box = rel_codes.len().checked_div(n).unwrap_or(0);
        let fits = if n == 0 {
            rel_codes.is_empty()
        } else {
            rel_codes.len().is_multiple_of(n) && per_box > 0 && per_box.is_multiple_of(4)
        };
        if !fits {
            return Err(Error::shape(
                OP,
                format!(
                    "rel_codes must be flat [N, 4 K] for the N = {n} boxes, got {} values",
                    rel_codes.len()
                ),
            ));
        }
        Ok(decode_boxes(
            rel_codes,
            boxes,
            self.weights,
            self.bbox_xform_clip,
        ))
    }

    /// [`BoxCoder::encode`] on [N, 4] tensors of one dtype (f32 or f64) and
    /// device: the engine op `box_encode` (CPU or GPU, f32 only on the GPU);
    /// returns a [N, 4] tensor of that dtype without gradient history.
    pub fn encode_tensor(&self, reference_boxes: &Tensor, proposals: &Tensor) -> Result<Tensor> {
        box_encode(reference_boxes, proposals, self.weights)
    }

    /// [`BoxCoder::decode`] on tensors: `rel_codes` [N, 4 K] and `boxes`
    /// [N, 4] of one dtype (f32 or f64) and device: the engine op
    /// `box_decode`; returns [N, 4 K] of that dtype, without gradient
    /// history (see the module docs).
    pub fn decode_tensor(&self, rel_codes: &Tensor, boxes: &Tensor) -> Result<Tensor> {
        box_decode(rel_codes, boxes, self.weights, self.bbox_xform_clip)
    }
}

/// `torchvision.ops.clip_boxes_to_image`: every x clamped to [0, width] and
/// every y to [0, height] (`size` = (height, width)); NaN stays NaN.
/// `boxes` is [N, 4] flat; returns [N, 4] flat.
pub fn clip_boxes_to_image<T: Float>(boxes: &[T], size: (usize, usize)) -> Result<Vec<T>> {
    rows4("clip_boxes_to_image", "boxes", boxes)?;
    let zero = T::zero();
    let h = <T as Element>::from_f64(size.0 as f64);
    let w = <T as Element>::from_f64(size.1 as f64);
    Ok(boxes
        .iter()
        .enumerate()
        .map(|(i, &v)| clamp_nan(v, zero, if i % 2 == 0 { w } else { h }))
        .collect())
}

/// `torchvision.ops.remove_small_boxes`: the indices, increasing, of the
/// boxes of [N, 4] flat `boxes` whose width x2 - x1 and height y2 - y1 are
/// both >= `min_size` (compared in `T`; a NaN side removes the box).
pub fn remove_small_boxes<T: Float>(boxes: &[T], min_size: f64) -> Result<Vec<usize>> {
    rows4("remove_small_boxes", "boxes", boxes)?;
    let m = <T as Element>::from_f64(min_size);
    Ok(boxes
        .chunks_exact(4)
        .enumerate()
        .filter(|(_, b)| b[2] - b[0] >= m && b[3] - b[1] >= m)
        .map(|(i, _)| i)
        .collect())
}
