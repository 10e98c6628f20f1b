//! Detection ops on the CPU, computed exactly as torchvision's CPU kernels
//! (`torchvision/csrc/ops/cpu/roi_align_kernel.cpp`, `nms_kernel.cpp`):
//! same sample positions, boundary rules and order of floating-point
//! operations, so f64 results agree with torchvision to rounding.

use super::{DetectionOps, PasteBox, PasteGeom, RoiGeom};
use super::{ProposalGeom, Proposals};
use crate::backend::Cpu;
use crate::ops::index::sort_order;
use crate::ops::upsample::{linear_weights, Lerp};
use crate::{dispatch_float, Element, Float, Result, Tensor};
use rayon::prelude::*;

/// One box mapped onto the feature map: where its bins start, their size and
/// how many sample points each bin averages over.
struct Roi<T> {
    batch: usize,
    start_h: T,
    start_w: T,
    bin_h: T,
    bin_w: T,
    /// Sample rows/cols per bin; <= 0 means no samples (an empty or inverted
    /// box, aligned, adaptive grid), as torchvision's loops then run zero times.
    grid_h: i64,
    grid_w: i64,
}

impl<T: Float> Roi<T> {
    /// torchvision's per-roi preamble, operation for operation.
    fn new(b: &[T], g: &RoiGeom) -> Roi<T> {
        let scale = <T as Element>::from_f64(g.spatial_scale);
        let offset = <T as Element>::from_f64(if g.aligned { 0.5 } else { 0.0 });
        let start_w = b[1] * scale - offset;
        let start_h = b[2] * scale - offset;
        let end_w = b[3] * scale - offset;
        let end_h = b[4] * scale - offset;
        let (mut roi_w, mut roi_h) = (end_w - start_w, end_h - start_h);
        if !g.aligned {
            // legacy (Detectron) behaviour: malformed boxes become 1x1
            roi_w = roi_w.max(T::one());
            roi_h = roi_h.max(T::one());
        }
        let (ph, pw) = (T::from_usize(g.out[0]), T::from_usize(g.out[1]));
        let grid = |size: T, bins: T| -> i64 {
            if g.sampling_ratio > 0 {
                g.sampling_ratio
            } else {
                // the C++ truncates ceil(...) to int; it is already integral
                <T as Element>::to_f64((size / bins).ceil()) as i64
            }
        };
        Roi {
            // validated to be an integer in range before any Roi is built
            batch: <T as Element>::to_f64(b[0]) as usize,
            start_h,
            start_w,
            bin_h: roi_h / ph,
            bin_w: roi_w / pw,
            grid_h: grid(roi_h, ph),
            grid_w: grid(roi_w, pw),
        }
    }

    /// The divisor of a bin's sum: the sample count, at least 1.
    fn count(&self) -> T {
        T::from_usize((self.grid_h.max(0) * self.grid_w.max(0)).max(1) as usize)
    }

    /// Every sample point of every bin, in torchvision's (ph, pw, iy, ix)
    /// order (`pre_calc_for_bilinear_interpolate`).
    fn samples(&self, g: &RoiGeom) -> Vec<Sample<T>> {
        let (gh, gw) = (self.grid_h.max(0) as usize, self.grid_w.max(0) as usize);
        let mut out = Vec::with_capacity(g.out[0] * g.out[1] * gh * gw);
        let (tgh, tgw) = (T::from_usize(gh), T::from_usize(gw));
        let half = <T as Element>::from_f64(0.5);
        for ph in 0..g.out[0] {
            for pw in 0..g.out[1] {
                for iy in 0..gh {
                    let y = self.start_h
                        + T::from_usize(ph) * self.bin_h
                        + (T::from_usize(iy) + half) * self.bin_h / tgh;
                    for ix in 0..gw {
                        let x = self.start_w
                            + T::from_usize(pw) * self.bin_w
                            + (T::from_usize(ix) + half) * self.bin_w / tgw;
                        out.push(Sample::bilinear(y, x, g.nchw[2], g.nchw[3]));
                    }
                }
            }
        }
        out
    }
}

/// The four pixels a sample point reads and their bilinear weights.
#[derive(Clone, Copy)]
struct Sample<T> {
    /// Offsets into the (H, W) plane: (y_low, x_low), (y_low, x_high),
    /// (y_high, x_low), (y_high, x_high).
    pos: [usize; 4],
    w: [T; 4],
    /// False for points outside [-1, H] x [-1, W]: forward reads them with
    /// zero weights at pixel 0 (as torchvision), backward skips them.
    inside: bool,
}

impl<T: Float> Sample<T> {
    /// torchvision's bilinear rule: points beyond one pixel outside the map
    /// are empty, points in (-1, 0] clamp to the border, and the last
    /// row/column interpolates with itself.
    fn bilinear(mut y: T, mut x: T, height: usize, width: usize) -> Sample<T> {
        let (h, w) = (T::from_usize(height), T::from_usize(width));
        if y < -T::one() || y > h || x < -T::one() || x > w {
            return Sample {
                pos: [0; 4],
                w: [T::zero(); 4],
                inside: false,
            };
        }
        if y <= T::zero() {
            y = T::zero();
        }
        if x <= T::zero() {
            x = T::zero();
        }
        let (y_low, y_high) = neighbours(&mut y, height);
        let (x_low, x_high) = neighbours(&mut x, width);
        let (ly, lx) = (y - T::from_usize(y_low), x - T::from_usize(x_low));
        let (hy, hx) = (T::one() - ly, T::one() - lx);
        Sample {
            pos: [
                y_low * width + x_low,
                y_low * width + x_high,
                y_high * width + x_low,
                y_high * width + x_high,
            ],
            w: [hy * hx, hy * lx, ly * hx, ly * lx],
            inside: true,
        }
    }
}

/// The pixels below and above a coordinate along an axis of `size`; the
/// last one interpolates with itself (the coordinate snaps to it).
fn neighbours<T: Float>(v: &mut T, size: usize) -> (usize, usize) {
    let low = <T as Element>::to_f64(*v) as usize;
    if low >= size - 1 {
        *v = T::from_usize(size - 1);
        (size - 1, size - 1)
    } else {
        (low, low + 1)
    }
}

/// Output [K, C, ph, pw]: box k pooled from `xs[levels[k]]` (the whole
/// [N, C, H, W] map of that level) with `geoms[levels[k]]`; parallel over
/// boxes, each writing its own block.
fn forward<T: Float>(xs: &[&[T]], boxes: &[T], levels: &[usize], geoms: &[RoiGeom]) -> Vec<T> {
    let c = geoms[0].nchw[1];
    let oplane = geoms[0].out[0] * geoms[0].out[1];
    let mut out = vec![T::zero(); levels.len() * c * oplane];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(c * oplane)
        .zip(boxes.par_chunks(5))
        .zip(levels.par_iter())
        .for_each(|((o, b), &l)| {
            let g = &geoms[l];
            let plane = g.nchw[2] * g.nchw[3];
            let roi = Roi::new(b, g);
            let samples = roi.samples(g);
            let per_bin = samples.len() / oplane;
            let count = roi.count();
            for (ch, oc) in o.chunks_mut(oplane).enumerate() {
                let xp = &xs[l][(roi.batch * c + ch) * plane..][..plane];
                for (ov, bin) in oc.iter_mut().zip(samples.chunks(per_bin.max(1))) {
                    let mut v = T::zero();
                    for s in bin {
                        v += s.w[0] * xp[s.pos[0]]
                            + s.w[1] * xp[s.pos[1]]
                            + s.w[2] * xp[s.pos[2]]
                            + s.w[3] * xp[s.pos[3]];
                    }
                    *ov = v / count;
                }
            }
        });
    out
}

/// Gradient w.r.t. the input [N, C, H, W] of geometry `g` from the boxes
/// `rois` = (row of dy, box) pooled from it. Parallel over contiguous runs
/// of channels of one image, never over boxes: every input element
/// receives its contributions in torchvision's order (box, bin, sample,
/// corner), so the result is deterministic and independent of the thread
/// count.
fn backward<T: Float>(dy: &[T], rois: &[(usize, Roi<T>)], g: &RoiGeom) -> Vec<T> {
    let [n, c, h, w] = g.nchw;
    let (plane, oplane) = (h * w, g.out[0] * g.out[1]);
    let mut dx = vec![T::zero(); n * c * plane];
    if dx.is_empty() || rois.is_empty() {
        return dx;
    }
    // a few channel runs per thread: each run rebuilds the sample tables of
    // its image's boxes once
    let run = c.div_ceil(4 * rayon::current_num_threads()).max(1);
    dx.par_chunks_mut(c * plane)
        .enumerate()
        .for_each(|(img, di)| {
            di.par_chunks_mut(run * plane)
                .enumerate()
                .for_each(|(r, d)| {
                    let c0 = r * run;
                    for (k, roi) in rois.iter().filter(|(_, roi)| roi.batch == img) {
                        let samples = roi.samples(g);
                        let per_bin = samples.len() / oplane;
                        // torchvision divides by the raw product here (no
                        // max(.., 1)); with samples present it is >= 1 anyway
                        let count = T::from_usize((roi.grid_h.max(0) * roi.grid_w.max(0)) as usize);
                        for (ch, dp) in d.chunks_mut(plane).enumerate() {
                            let gp = &dy[(k * c + c0 + ch) * oplane..][..oplane];
                            for (&gv, bin) in gp.iter().zip(samples.chunks(per_bin.max(1))) {
                                for s in bin.iter().filter(|s| s.inside) {
                                    for corner in 0..4 {
                                        dp[s.pos[corner]] += gv * s.w[corner] / count;
                                    }
                                }
                            }
                        }
                    }
                });
        });
    dx
}

/// The boxes of level `l`: (row, box on that level's map).
fn level_rois<T: Float>(
    boxes: &[T],
    levels: &[usize],
    l: usize,
    g: &RoiGeom,
) -> Vec<(usize, Roi<T>)> {
    boxes
        .chunks_exact(5)
        .zip(levels)
        .enumerate()
        .filter(|(_, (_, &bl))| bl == l)
        .map(|(k, (b, _))| (k, Roi::new(b, g)))
        .collect()
}

/// torchvision's `encode_boxes` on flat [N, 4] row pairs (see
/// [`super::box_encode`]), computed in `T` in torchvision's operation
/// order: the CPU op and the models' host `BoxCoder::encode`.
pub fn encode_boxes<T: Float>(reference: &[T], proposals: &[T], weights: [f64; 4]) -> Vec<T> {
    let w = weights.map(<T as Element>::from_f64);
    let half = <T as Element>::from_f64(0.5);
    let mut out = Vec::with_capacity(reference.len());
    for (g, p) in reference.chunks_exact(4).zip(proposals.chunks_exact(4)) {
        let ex_w = p[2] - p[0];
        let ex_h = p[3] - p[1];
        let ex_cx = p[0] + half * ex_w;
        let ex_cy = p[1] + half * ex_h;
        let gt_w = g[2] - g[0];
        let gt_h = g[3] - g[1];
        let gt_cx = g[0] + half * gt_w;
        let gt_cy = g[1] + half * gt_h;
        out.push(w[0] * (gt_cx - ex_cx) / ex_w);
        out.push(w[1] * (gt_cy - ex_cy) / ex_h);
        out.push(w[2] * (gt_w / ex_w).ln());
        out.push(w[3] * (gt_h / ex_h).ln());
    }
    out
}

/// torchvision's `decode_single` of flat `rel_codes` [N, 4 K] against flat
/// `boxes` [N, 4] (see [`super::box_decode`]), computed in `T` in
/// torchvision's operation order: the CPU op and the models' host
/// `BoxCoder::decode`. `rel_codes.len()` must be a multiple of 4 N.
pub fn decode_boxes<T: Float>(
    rel_codes: &[T],
    boxes: &[T],
    weights: [f64; 4],
    bbox_xform_clip: f64,
) -> Vec<T> {
    let w = weights.map(<T as Element>::from_f64);
    let clip = <T as Element>::from_f64(bbox_xform_clip);
    let half = <T as Element>::from_f64(0.5);
    let per_box = rel_codes.len().checked_div(boxes.len() / 4).unwrap_or(0);
    let mut out = Vec::with_capacity(rel_codes.len());
    if per_box == 0 {
        return out;
    }
    for (b, codes) in boxes.chunks_exact(4).zip(rel_codes.chunks(per_box)) {
        let widths = b[2] - b[0];
        let heights = b[3] - b[1];
        let ctr_x = b[0] + half * widths;
        let ctr_y = b[1] + half * heights;
        for c in codes.chunks_exact(4) {
            let dx = c[0] / w[0];
            let dy = c[1] / w[1];
            let dw = c[2] / w[2];
            let dh = c[3] / w[3];
            // `if d > clip` keeps NaN, like torch.clamp(max=)
            let dw = if dw > clip { clip } else { dw };
            let dh = if dh > clip { clip } else { dh };
            let pred_ctr_x = dx * widths + ctr_x;
            let pred_ctr_y = dy * heights + ctr_y;
            let pred_w = dw.exp() * widths;
            let pred_h = dh.exp() * heights;
            let c_to_c_h = half * pred_h;
            let c_to_c_w = half * pred_w;
            out.push(pred_ctr_x - c_to_c_w);
            out.push(pred_ctr_y - c_to_c_h);
            out.push(pred_ctr_x + c_to_c_w);
            out.push(pred_ctr_y + c_to_c_h);
        }
    }
    out
}

/// IoU of two (x1, y1, x2, y2) boxes given their areas, in torchvision's
/// operation order (the nms kernel and `box_iou` agree on it).
#[inline]
fn iou<T: Float>(a: [T; 4], area_a: T, b: [T; 4], area_b: T) -> T {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(T::zero());
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(T::zero());
    let inter = w * h;
    inter / (area_a + area_b - inter)
}

#[inline]
fn area<T: Float>(b: [T; 4]) -> T {
    (b[2] - b[0]) * (b[3] - b[1])
}

pub(super) fn rows<T: Float>(flat: &[T]) -> Vec<[T; 4]> {
    flat.chunks_exact(4)
        .map(|r| [r[0], r[1], r[2], r[3]])
        .collect()
}

/// Greedy NMS over `boxes` (already offset, for batched_nms' trick).
///
/// Same decisions as torchvision's kernel, which compares each kept box
/// with every later unsuppressed one; here the unsuppressed candidates are
/// compacted after each kept box, so suppressed boxes are never touched
/// again, and long candidate lists are tested in parallel (each test is
/// independent, so the result does not depend on the thread count).
pub(super) fn nms_impl<T: Float>(boxes: &[[T; 4]], scores: &[T], iou_threshold: f64) -> Vec<usize> {
    const PAR_MIN: usize = 8192;
    let order = sort_order(scores, true);
    // coordinates and areas in score order: the scans below read them sequentially
    let sorted: Vec<[T; 4]> = order.iter().map(|&i| boxes[i]).collect();
    let areas: Vec<T> = sorted.iter().map(|&b| area(b)).collect();
    let mut alive: Vec<u32> = (0..order.len() as u32).collect();
    let mut suppress = Vec::new();
    let mut keep = Vec::new();
    let mut next = 0;
    while next < alive.len() {
        let i = alive[next] as usize;
        keep.push(order[i]);
        let (bi, ai) = (sorted[i], areas[i]);
        let over = |&j: &u32| {
            let j = j as usize;
            // NaN IoU (two empty boxes) suppresses nothing, as in C++
            <T as Element>::to_f64(iou(bi, ai, sorted[j], areas[j])) > iou_threshold
        };
        let rest = &alive[next + 1..];
        let mut w = next + 1;
        if rest.len() >= PAR_MIN {
            suppress.clear();
            rest.par_iter().map(over).collect_into_vec(&mut suppress);
            for r in 0..suppress.len() {
                if !suppress[r] {
                    alive[w] = alive[next + 1 + r];
                    w += 1;
                }
            }
        } else {
            for r in next + 1..alive.len() {
                if !over(&alive[r]) {
                    alive[w] = alive[r];
                    w += 1;
                }
            }
        }
        alive.truncate(w);
        next += 1;
    }
    keep
}

/// Row-major [N, M] IoU of every pair; parallel over rows of `a`.
fn iou_matrix<T: Float>(a: &[[T; 4]], b: &[[T; 4]]) -> Vec<T> {
    let area_b: Vec<T> = b.iter().map(|&x| area(x)).collect();
    let mut out = vec![T::zero(); a.len() * b.len()];
    if !b.is_empty() {
        out.par_chunks_mut(b.len())
            .zip(a.par_iter())
            .for_each(|(o, &x)| {
                let ax = area(x);
                for ((v, &y), &ay) in o.iter_mut().zip(b).zip(&area_b) {
                    *v = iou(x, ax, y, ay);
                }
            });
    }
    out
}

/// torchvision's `_batched_nms_coordinate_trick`.
fn coordinate_trick<T: Float>(b: &[[T; 4]], s: &[T], idxs: &[i64], thr: f64) -> Vec<usize> {
    // torch's max propagates NaN
    let max = b.iter().flatten().fold(T::neg_infinity(), |m, &v| {
        if v.is_nan() || m.is_nan() {
            T::nan()
        } else {
            m.max(v)
        }
    });
    let shifted: Vec<[T; 4]> = b
        .iter()
        .zip(idxs)
        .map(|(r, &c)| {
            let off = <T as Element>::from_f64(c as f64) * (max + T::one());
            r.map(|v| v + off)
        })
        .collect();
    nms_impl(&shifted, s, thr)
}

/// torchvision's `_batched_nms_vanilla`.
fn per_category<T: Float>(b: &[[T; 4]], s: &[T], idxs: &[i64], thr: f64) -> Vec<usize> {
    let mut cats: Vec<i64> = idxs.to_vec();
    cats.sort_unstable();
    cats.dedup();
    let mut kept = vec![false; b.len()];
    for c in cats {
        let members: Vec<usize> = (0..b.len()).filter(|&i| idxs[i] == c).collect();
        let cb: Vec<[T; 4]> = members.iter().map(|&i| b[i]).collect();
        let cs: Vec<T> = members.iter().map(|&i| s[i]).collect();
        for j in nms_impl(&cb, &cs, thr) {
            kept[members[j]] = true;
        }
    }
    let keep: Vec<usize> = (0..b.len()).filter(|&i| kept[i]).collect();
    let ks: Vec<T> = keep.iter().map(|&i| s[i]).collect();
    sort_order(&ks, true).into_iter().map(|r| keep[r]).collect()
}

/// The row (`axis` 0) or column (1) taps of box `b`'s in-image part: the
/// bilinear taps (align_corners = false) of its resize of the padded mask
/// to `b.size`, computed by `upsample_bilinear2d`'s own function, for the
/// resized indices `b.taps_range(axis)`. The GPU's tables are these.
pub(super) fn paste_taps<T: Float>(b: &PasteBox, g: &PasteGeom, axis: usize) -> Vec<Lerp<T>> {
    let r = b.taps_range(axis);
    if r.is_empty() {
        return Vec::new();
    }
    let mut t = linear_weights::<T>(g.padded()[axis], b.size[axis], false);
    t.truncate(r.end);
    t.drain(..r.start);
    t
}

/// `paste_masks` of the masks `m` [K, Mh, Mw] (compute type), one plane of
/// the image per box in parallel: every pixel of the box's in-image part is
/// `upsample_bilinear2d`'s blend of the padded mask (0 in the padding) at
/// the box's taps, every other pixel 0.
fn paste<T: Float>(m: &[T], boxes: &[PasteBox], g: &PasteGeom) -> Vec<T> {
    let [ih, iw] = g.img;
    let (mh, mw, p) = (g.mh, g.mw, g.padding);
    let plane = ih * iw;
    let mut out = vec![T::zero(); g.k * plane];
    if plane == 0 {
        return out;
    }
    out.par_chunks_mut(plane)
        .zip(boxes.par_iter())
        .enumerate()
        .for_each(|(k, (o, b))| {
            let (rows, cols) = (paste_taps::<T>(b, g, 0), paste_taps::<T>(b, g, 1));
            let src = &m[k * mh * mw..][..mh * mw];
            // pixel (i, j) of the padded mask
            let at = |i: usize, j: usize| {
                if (p..p + mh).contains(&i) && (p..p + mw).contains(&j) {
                    src[(i - p) * mw + (j - p)]
                } else {
                    T::zero()
                }
            };
            for (y, r) in (b.rows[0]..b.rows[1]).zip(&rows) {
                let orow = &mut o[y * iw..][b.cols[0]..b.cols[1]];
                for (v, c) in orow.iter_mut().zip(&cols) {
                    let px = [
                        at(r.i0, c.i0),
                        at(r.i0, c.i1),
                        at(r.i1, c.i0),
                        at(r.i1, c.i1),
                    ];
                    *v = Lerp::blend(r, c, px);
                }
            }
        });
    out
}

impl DetectionOps for Cpu {
    fn paste_masks(&self, masks: &Tensor, boxes: &[PasteBox], g: &PasteGeom) -> Result<Tensor> {
        crate::trace::kernel("paste_masks");
        let dtype = masks.dtype();
        Ok(dispatch_float!("paste_masks", dtype, T => {
            let y = paste::<T>(&masks.float_data::<T>()?, boxes, g);
            Tensor::from_compute(y, &[g.k, 1, g.img[0], g.img[1]], dtype)
        }))
    }

    fn multiscale_roi_align(
        &self,
        xs: &[Tensor],
        boxes: &Tensor,
        levels: &[usize],
        geoms: &[RoiGeom],
    ) -> Result<Tensor> {
        crate::trace::kernel("roi_align");
        let dtype = xs[0].dtype();
        let g = &geoms[0];
        let shape = [g.k, g.nchw[1], g.out[0], g.out[1]];
        Ok(dispatch_float!("roi_align", dtype, T => {
            let data = xs.iter().map(|x| x.float_data::<T>()).collect::<Result<Vec<_>>>()?;
            let maps: Vec<&[T]> = data.iter().map(|d| &**d).collect();
            let y = forward::<T>(&maps, &boxes.float_data::<T>()?, levels, geoms);
            Tensor::from_compute(y, &shape, dtype)
        }))
    }

    fn multiscale_roi_align_backward(
        &self,
        dy: &Tensor,
        boxes: &Tensor,
        levels: &[usize],
        geoms: &[RoiGeom],
    ) -> Result<Vec<Tensor>> {
        crate::trace::kernel("roi_align");
        let dtype = dy.dtype();
        Ok(dispatch_float!("roi_align", dtype, T => {
            let (dy, boxes) = (dy.float_data::<T>()?, boxes.float_data::<T>()?);
            geoms
                .iter()
                .enumerate()
                .map(|(l, g)| {
                    let dx = backward::<T>(&dy, &level_rois(&boxes, levels, l, g), g);
                    Tensor::from_compute(dx, &g.nchw, dtype)
                })
                .collect()
        }))
    }

    fn box_encode(
        &self,
        reference: &Tensor,
        proposals: &Tensor,
        weights: [f64; 4],
    ) -> Result<Tensor> {
        crate::trace::kernel("box_encode");
        let dtype = reference.dtype();
        Ok(dispatch_float!("box_encode", dtype, T => {
            let out = encode_boxes::<T>(&reference.float_data::<T>()?, &proposals.float_data::<T>()?, weights);
            Tensor::from_compute(out, reference.dims(), dtype)
        }))
    }

    fn box_decode(
        &self,
        rel_codes: &Tensor,
        boxes: &Tensor,
        weights: [f64; 4],
        bbox_xform_clip: f64,
    ) -> Result<Tensor> {
        crate::trace::kernel("box_decode");
        let dtype = rel_codes.dtype();
        Ok(dispatch_float!("box_decode", dtype, T => {
            let out = decode_boxes::<T>(
                &rel_codes.float_data::<T>()?,
                &boxes.float_data::<T>()?,
                weights,
                bbox_xform_clip,
            );
            Tensor::from_compute(out, rel_codes.dims(), dtype)
        }))
    }

    fn box_iou(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        crate::trace::kernel("box_iou");
        let dtype = a.dtype();
        let (n, m) = (a.dims()[0], b.dims()[0]);
        Ok(dispatch_float!("box_iou", dtype, T => {
            let out = iou_matrix::<T>(&rows(&a.float_data::<T>()?), &rows(&b.float_data::<T>()?));
            Tensor::from_compute(out, &[n, m], dtype)
        }))
    }

    fn nms(&self, boxes: &Tensor, scores: &Tensor, iou_threshold: f64) -> Result<Vec<usize>> {
        crate::trace::kernel("nms");
        Ok(dispatch_float!("nms", boxes.dtype(), T => {
            nms_impl::<T>(&rows(&boxes.float_data::<T>()?), &scores.float_data::<T>()?, iou_threshold)
        }))
    }

    fn batched_nms(
        &self,
        boxes: &Tensor,
        scores: &Tensor,
        idxs: &[i64],
        iou_threshold: f64,
    ) -> Result<Vec<usize>> {
        crate::trace::kernel("nms");
        Ok(dispatch_float!("batched_nms", boxes.dtype(), T => {
            let (b, s) = (rows::<T>(&boxes.float_data::<T>()?), scores.float_data::<T>()?);
            if b.is_empty() {
                Vec::new()
            } else if 4 * b.len() > 4000 {
                per_category::<T>(&b, &s, idxs, iou_threshold)
            } else {
                coordinate_trick::<T>(&b, &s, idxs, iou_threshold)
            }
        }))
    }

    // matching / sampling (matching/cpu.rs)
    fn match_boxes(
        &self,
        quality: &Tensor,
        rule: super::MatchRule,
        gt_labels: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        super::matching::cpu::match_boxes(quality, rule, gt_labels)
    }

    fn sample_balanced(
        &self,
        labels: &Tensor,
        batch_size_per_image: usize,
        target: usize,
        seed: u64,
    ) -> Result<super::BalancedSample> {
        super::matching::cpu::sample_balanced(labels, batch_size_per_image, target, seed)
    }

    fn filter_proposals(
        &self,
        boxes: &Tensor,
        logits: &Tensor,
        g: &ProposalGeom,
    ) -> Result<Proposals> {
        super::proposals::cpu(boxes, logits, g)
    }
}
