//! The CPU (reference) matching and balanced sampling: the rules of
//! `super::match_boxes` and `super::sample_balanced`, directly.

use super::{sample_key, threshold_in, BalancedSample, MatchRule};
use super::{BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS};
use crate::{dispatch_float, Element, Float, Result, Tensor};

/// The matches of the row-major [g, n] `q` with thresholds already in T.
pub(crate) fn matches<T: Float>(
    q: &[T],
    g: usize,
    n: usize,
    high: T,
    low: T,
    allow_low_quality_matches: bool,
) -> Vec<i64> {
    if g == 0 {
        return vec![BELOW_LOW_THRESHOLD; n];
    }
    // every column's first maximum, a row at a time (a NaN, once met,
    // stays: the first NaN wins)
    let mut best: Vec<T> = q[..n].to_vec();
    let mut arg = vec![0usize; n];
    for r in 1..g {
        let row = &q[r * n..(r + 1) * n];
        for p in 0..n {
            let (b, v) = (best[p], row[p]);
            if !b.is_nan() && (v.is_nan() || v > b) {
                best[p] = v;
                arg[p] = r;
            }
        }
    }
    let mut m: Vec<i64> = (0..n)
        .map(|p| {
            let v = best[p];
            if v < low {
                BELOW_LOW_THRESHOLD
            } else if v < high {
                BETWEEN_THRESHOLDS
            } else {
                arg[p] as i64
            }
        })
        .collect();
    if allow_low_quality_matches {
        for r in 0..g {
            let row = &q[r * n..(r + 1) * n];
            let Some(top) = row_max(row) else { continue };
            for p in 0..n {
                if row[p] == top {
                    m[p] = arg[p] as i64;
                }
            }
        }
    }
    m
}

/// The value of a row's first maximum: NaN if it has one, else its
/// largest; None for an empty row.
pub(crate) fn row_max<T: Float>(row: &[T]) -> Option<T> {
    let mut it = row.iter().copied();
    let mut top = it.next()?;
    for v in it {
        if top.is_nan() {
            break;
        }
        if v.is_nan() || v > top {
            top = v;
        }
    }
    Some(top)
}

/// The labels of matches `m`: with `gt_labels` (ROI heads) the matched gt's
/// label, else (RPN) 1; 0 below the low threshold, -1 between.
pub(crate) fn labels_of(m: &[i64], gt_labels: Option<&[i64]>) -> Vec<i64> {
    m.iter()
        .map(|&j| {
            if j >= 0 {
                gt_labels.map_or(1, |l| l[j as usize])
            } else if j == BELOW_LOW_THRESHOLD {
                0
            } else {
                -1
            }
        })
        .collect()
}

/// `super::match_boxes` on checked host tensors.
pub(crate) fn match_boxes(
    quality: &Tensor,
    rule: MatchRule,
    gt_labels: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    crate::trace::kernel("match_boxes");
    let (g, n) = (quality.dims()[0], quality.dims()[1]);
    let dtype = quality.dtype();
    let m = dispatch_float!("match_boxes", dtype, T => {
        let q = quality.float_data::<T>()?;
        // f16 / bf16 widen exactly to f32; their thresholds, rounded to
        // the dtype, are exact in f32 too: the comparisons are the dtype's
        let high = <T as Element>::from_f64(threshold_in(dtype, rule.high_threshold));
        let low = <T as Element>::from_f64(threshold_in(dtype, rule.low_threshold));
        matches::<T>(&q, g, n, high, low, rule.allow_low_quality_matches)
    });
    let gl = gt_labels.map(|t| t.to_vec::<i64>()).transpose()?;
    let labels = labels_of(&m, gl.as_deref());
    Ok((Tensor::from_vec(m, &[n])?, Tensor::from_vec(labels, &[n])?))
}

/// The `want` elements of `labels` satisfying `eligible` with the smallest
/// keys under `seed` (all of them when fewer), in increasing index order.
pub(crate) fn choose(
    labels: &[i64],
    eligible: impl Fn(i64) -> bool,
    want: usize,
    seed: u64,
) -> Vec<i64> {
    let mut c: Vec<(u64, usize)> = labels
        .iter()
        .enumerate()
        .filter(|(_, &v)| eligible(v))
        .map(|(i, _)| (sample_key(seed, i as u64), i))
        .collect();
    if want < c.len() {
        if want > 0 {
            c.select_nth_unstable(want - 1);
        }
        c.truncate(want);
    }
    let mut idx: Vec<i64> = c.into_iter().map(|(_, i)| i as i64).collect();
    idx.sort_unstable();
    idx
}

/// `super::sample_balanced` on checked host labels, `target` the positive
/// target (<= the batch).
pub(crate) fn sample_balanced(
    labels: &Tensor,
    batch_size_per_image: usize,
    target: usize,
    seed: u64,
) -> Result<BalancedSample> {
    crate::trace::kernel("sample_balanced");
    let l = labels.data::<i64>()?;
    let n = l.len();
    let pos = choose(&l, |v| v >= 1, target, seed);
    let neg = choose(&l, |v| v == 0, batch_size_per_image - pos.len(), seed);
    let counts = vec![pos.len() as i64, neg.len() as i64];
    let padded = |mut v: Vec<i64>, len: usize| -> Result<Tensor> {
        v.resize(len, n as i64);
        Tensor::from_vec(v, &[len])
    };
    Ok(BalancedSample {
        positive: padded(pos, target.min(n))?,
        negative: padded(neg, batch_size_per_image.min(n))?,
        counts: Tensor::from_vec(counts, &[2])?,
    })
}
