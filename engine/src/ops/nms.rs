//! Box IoU and non-maximum suppression, exactly as torchvision.ops
//! (`box_iou`, `nms`, `batched_nms` on the CPU). Boxes are (x1, y1, x2, y2)
//! with x2 >= x1, y2 >= y1; areas are (x2 - x1) * (y2 - y1), no +1.
//! None of these ops is differentiable.

use super::same_dtype;
use crate::{dispatch_float, Element, Error, Float, Result, Tensor};
use rayon::prelude::*;
use std::cmp::Ordering;

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
    if !boxes.dtype().is_float() {
        return Err(Error::dtype(
            op,
            "a float dtype (f64, f32, f16, bf16)",
            boxes.dtype(),
        ));
    }
    Ok(boxes.dims()[0])
}

/// Checks `scores` is [K] with `boxes`' dtype.
fn check_scores(op: &'static str, boxes: &Tensor, scores: &Tensor, k: usize) -> Result<()> {
    if scores.dims() != [k] {
        return Err(Error::shape(
            op,
            format!(
                "scores must be [K] = [{k}] (one per box), got shape {:?}",
                scores.dims()
            ),
        ));
    }
    same_dtype(op, &[boxes, scores])
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

fn rows<T: Float>(flat: &[T]) -> Vec<[T; 4]> {
    flat.chunks_exact(4)
        .map(|r| [r[0], r[1], r[2], r[3]])
        .collect()
}

/// Indices sorted by decreasing score, ties in index order, NaN first:
/// torch's `scores.sort(stable=True, descending=True)`, which
/// torchvision's CPU nms kernel uses. The GPU nms visits boxes in this
/// order too (cuda::ops::detection).
pub(crate) fn order_desc<T: Float>(scores: &[T]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&i, &j| {
        let (a, b) = (scores[i], scores[j]);
        match (a.is_nan(), b.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            _ => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
        }
    });
    order
}

/// Greedy NMS over `boxes` (already offset, for batched_nms' trick).
///
/// Same decisions as torchvision's kernel, which compares each kept box
/// with every later unsuppressed one; here the unsuppressed candidates are
/// compacted after each kept box, so suppressed boxes are never touched
/// again, and long candidate lists are tested in parallel (each test is
/// independent, so the result does not depend on the thread count).
fn nms_impl<T: Float>(boxes: &[[T; 4]], scores: &[T], iou_threshold: f64) -> Vec<usize> {
    const PAR_MIN: usize = 8192;
    let order = order_desc(scores);
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

/// The kept indices as an i64 [n] tensor (what the trace logs).
fn index_tensor(keep: Vec<usize>) -> Tensor {
    let n = keep.len();
    Tensor::from_vec(keep.into_iter().map(|i| i as i64).collect::<Vec<_>>(), &[n])
        .expect("a [n] vector of n indices")
}

fn from_index_tensor(t: Tensor) -> Vec<usize> {
    t.to_vec_f64().into_iter().map(|v| v as usize).collect()
}

/// `torchvision.ops.box_iou`: the [N, M] matrix of IoU between `a` [N, 4]
/// and `b` [M, 4] (x1, y1, x2, y2), inter / (area_a + area_b - inter) with
/// the intersection's sides clamped at 0. Same float dtype in and out
/// (f16/bf16 computed in f32); 0/0 (two empty boxes) gives NaN, as torch.
/// Not differentiable.
pub fn box_iou(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "box_iou";
    crate::trace::op(OP, "forward", "cpu:box_iou", &[a, b], || {
        let n = boxes_k(OP, "first boxes", a)?;
        let m = boxes_k(OP, "second boxes", b)?;
        same_dtype(OP, &[a, b])?;
        let dtype = a.dtype();
        Ok(dispatch_float!(OP, dtype, T => {
            let out = iou_matrix::<T>(&rows(&a.float_data::<T>()?), &rows(&b.float_data::<T>()?));
            Tensor::from_compute(out, &[n, m], dtype)
        }))
    })
}

/// `torchvision.ops.nms`: greedy non-maximum suppression. Visits boxes in
/// order of decreasing score (ties by lower index first, NaN scores first),
/// keeps a box unless it was suppressed, and suppresses every later box
/// whose IoU with it is > `iou_threshold`. Returns the kept indices in
/// visiting order. `boxes` [K, 4] (x1, y1, x2, y2) and `scores` [K] share a
/// float dtype; f16/bf16 are computed in f32.
pub fn nms(boxes: &Tensor, scores: &Tensor, iou_threshold: f64) -> Result<Vec<usize>> {
    const OP: &str = "nms";
    if boxes.device() != crate::Device::Cpu {
        let k = boxes_k(OP, "boxes", boxes)?;
        check_scores(OP, boxes, scores, k)?;
        return crate::cuda::ops::detection::nms(boxes, scores, iou_threshold);
    }
    let keep = crate::trace::op(OP, "forward", "cpu:nms", &[boxes, scores], || {
        let k = boxes_k(OP, "boxes", boxes)?;
        check_scores(OP, boxes, scores, k)?;
        Ok(index_tensor(dispatch_float!(OP, boxes.dtype(), T => {
            nms_impl::<T>(&rows::<T>(&boxes.float_data::<T>()?), &scores.float_data::<T>()?, iou_threshold)
        })))
    })?;
    Ok(from_index_tensor(keep))
}

/// `torchvision.ops.batched_nms` on the CPU: NMS within each category
/// `idxs[i]`, boxes of different categories never suppress each other;
/// kept indices in order of decreasing score.
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
    let keep = crate::trace::op(OP, "forward", "cpu:nms", &[boxes, scores], || {
        let k = boxes_k(OP, "boxes", boxes)?;
        check_scores(OP, boxes, scores, k)?;
        if idxs.len() != k {
            return Err(Error::shape(
                OP,
                format!("idxs has {} categories for {k} boxes", idxs.len()),
            ));
        }
        Ok(index_tensor(dispatch_float!(OP, boxes.dtype(), T => {
            let (b, s) = (rows::<T>(&boxes.float_data::<T>()?), scores.float_data::<T>()?);
            if k == 0 {
                Vec::new()
            } else if 4 * k > 4000 {
                per_category::<T>(&b, &s, idxs, iou_threshold)
            } else {
                coordinate_trick::<T>(&b, &s, idxs, iou_threshold)
            }
        })))
    })?;
    Ok(from_index_tensor(keep))
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
    order_desc(&ks).into_iter().map(|r| keep[r]).collect()
}
