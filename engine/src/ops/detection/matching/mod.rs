//! Anchor / proposal matching and balanced sampling on the tensors' device,
//! for a Mask R-CNN training step without host reads: torchvision's
//! `Matcher` with the label rules of the RPN and of the ROI heads
//! ([`match_boxes`]), and its `BalancedPositiveNegativeSampler` with a
//! counter-based random subset ([`sample_balanced`]). The checks and trace
//! of both ops; the backends (`cpu.rs`, the reference; `cuda.rs`, over
//! kernels/src/families/matching.cu) implement the `match_boxes` and
//! `sample_balanced` primitives of [`super::DetectionOps`]. Neither op is
//! differentiable (integer outputs).

pub(super) mod cpu;
pub(super) mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

use super::{float_dtype, DetectionOps};
use crate::backend::same_device;
use crate::backend::BackendInfo;
use crate::trace::Traced;
use crate::{on_backend, DType, Error, Result, Tensor};

/// torchvision's Matcher thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatchRule {
    pub high_threshold: f64,
    pub low_threshold: f64,
    pub allow_low_quality_matches: bool,
}

impl MatchRule {
    /// The RPN's rule: IoU >= 0.7 foreground, < 0.3 background, plus each
    /// gt's best anchors.
    pub const RPN: MatchRule = MatchRule {
        high_threshold: 0.7,
        low_threshold: 0.3,
        allow_low_quality_matches: true,
    };
    /// The ROI heads' rule: IoU >= 0.5 foreground, else background.
    pub const ROI_HEADS: MatchRule = MatchRule {
        high_threshold: 0.5,
        low_threshold: 0.5,
        allow_low_quality_matches: false,
    };

    fn check(&self, op: &'static str) -> Result<()> {
        let (h, l) = (self.high_threshold, self.low_threshold);
        if h.is_nan() || l.is_nan() || l > h {
            return Err(Error::arg(
                op,
                format!("low_threshold ({l}) must be <= high_threshold ({h}), neither NaN"),
            ));
        }
        Ok(())
    }
}

/// The best quality of a prediction is below `low_threshold`: background.
pub const BELOW_LOW_THRESHOLD: i64 = -1;
/// The best quality is in [low_threshold, high_threshold): ignored.
pub const BETWEEN_THRESHOLDS: i64 = -2;

/// The most gt boxes (rows G) [`match_boxes`] takes.
pub const MATCH_MAX_GT: usize = 1 << 16;
/// The most quality elements G * N [`match_boxes`] takes (8 GiB of f32).
pub const MATCH_MAX_ELEMENTS: usize = 1 << 31;
/// The most labels N [`sample_balanced`] takes.
pub const SAMPLE_MAX_N: usize = 1 << 31;

/// One image's balanced sample, on labels' device.
#[derive(Clone, Debug)]
pub struct BalancedSample {
    /// [min(target, N)] i64: the chosen positives in increasing index order,
    /// then the sentinel N in the unused tail. target = int(batch * fraction).
    pub positive: Tensor,
    /// [min(batch_size_per_image, N)] i64: the chosen negatives, increasing, then N.
    pub negative: Tensor,
    /// [2] i64: (num_pos, num_neg) chosen, torchvision's counts:
    /// num_pos = min(#labels>=1, target), num_neg = min(#labels==0, batch - num_pos).
    pub counts: Tensor,
}

impl Traced for BalancedSample {
    fn outputs(&self) -> Vec<&Tensor> {
        vec![&self.positive, &self.negative, &self.counts]
    }
}

/// splitmix64's finalizer: a bijection of u64.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The random key [`sample_balanced`] gives element `i` under `seed`:
/// splitmix64 at counter i + 1 of the stream that starts at mix64(seed),
/// mix64(mix64(seed) + (i + 1) * 0x9e3779b97f4a7c15) (wrapping). The
/// counters of one seed are distinct mod 2^64 and mix64 is a bijection, so
/// the keys of one seed are distinct: no two elements ever tie. matching.cu
/// computes the same function.
#[inline]
pub fn sample_key(seed: u64, i: u64) -> u64 {
    mix64(mix64(seed).wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// `x` rounded to `dtype` (f16 / bf16 round to nearest even; f32 as `as`),
/// back in f64: the threshold a comparison in that dtype uses, as torch
/// casts a Python scalar to the tensor's dtype.
pub(crate) fn threshold_in(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F32 => x as f32 as f64,
        DType::F16 => half::f16::from_f64(x).to_f64(),
        DType::BF16 => half::bf16::from_f64(x).to_f64(),
        _ => x,
    }
}

/// torchvision `Matcher.__call__` on `quality` [G, N] (a float dtype; the
/// thresholds are rounded to it and every comparison is exact in it; G may
/// be 0) plus the label rule of the RPN (`gt_labels` None) or of the ROI
/// heads (`gt_labels` Some([G] i64 on quality's device)). Returns
/// (matches [N] i64, labels [N] i64) on quality's device.
///
/// matches: per column p, m = the FIRST row of the column's maximum (the
/// first NaN if the column has one: torch's CPU `max(dim)`), q its value;
/// q < low gives [`BELOW_LOW_THRESHOLD`], low <= q < high
/// [`BETWEEN_THRESHOLDS`], else m (a NaN q keeps m). With
/// `allow_low_quality_matches`, then, for every row g and every column p
/// whose q(g, p) equals the row's maximum (ties included; a row whose first
/// maximum is NaN matches nothing), p gets back m. G = 0: every match is
/// [`BELOW_LOW_THRESHOLD`].
///
/// labels, RPN (`assign_targets_to_anchors`): 1 where match >= 0, 0 for
/// [`BELOW_LOW_THRESHOLD`], -1 for [`BETWEEN_THRESHOLDS`]. ROI heads
/// (`assign_targets_to_proposals`): gt_labels[match] where match >= 0, 0,
/// -1 likewise. G = 0 gives all 0 (background) either way.
///
/// On a GPU: two launches (the rows' maxima, then one thread per column),
/// no host read; f64 runs there too. Errors: quality not a float [G, N],
/// gt_labels not i64 [G] on quality's device, NaN thresholds or high < low,
/// G above [`MATCH_MAX_GT`] or G N above [`MATCH_MAX_ELEMENTS`].
pub fn match_boxes(
    quality: &Tensor,
    rule: MatchRule,
    gt_labels: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "match_boxes";
    if quality.rank() != 2 {
        return Err(Error::shape(
            OP,
            format!(
                "quality must be [G, N] (gt x predictions), got shape {:?}",
                quality.dims()
            ),
        ));
    }
    float_dtype(OP, quality)?;
    let (g, n) = (quality.dims()[0], quality.dims()[1]);
    if g > MATCH_MAX_GT || g.checked_mul(n).is_none_or(|e| e > MATCH_MAX_ELEMENTS) {
        return Err(Error::arg(
            OP,
            format!(
                "quality [{g}, {n}] is too large: at most {MATCH_MAX_GT} gt rows and \
                 {MATCH_MAX_ELEMENTS} elements"
            ),
        ));
    }
    rule.check(OP)?;
    let mut inputs = vec![quality];
    if let Some(l) = gt_labels {
        if l.rank() != 1 || l.dims()[0] != g {
            return Err(Error::shape(
                OP,
                format!(
                    "gt_labels must be [G] = [{g}] (one per gt row), got shape {:?}",
                    l.dims()
                ),
            ));
        }
        if l.dtype() != DType::I64 {
            return Err(Error::dtype(OP, "i64 gt_labels", l.dtype()));
        }
        inputs.push(l);
    }
    let dev = same_device(OP, &inputs)?;
    let q = quality.detach();
    let gl = gt_labels.map(Tensor::detach);
    on_backend!(dev, b => crate::trace::op(OP, "forward", b.name(), &inputs, || {
        b.match_boxes(&q, rule, gl.as_ref())
    }))
}

/// torchvision's `BalancedPositiveNegativeSampler` on one image's `labels`
/// [N] i64 (>= 1 positive, 0 negative, < 0 ignored), without a host read.
///
/// Counts as torchvision: target = int(batch_size_per_image *
/// positive_fraction) (truncated, at most the batch), num_pos =
/// min(#labels >= 1, target), num_neg = min(#labels == 0,
/// batch_size_per_image - num_pos). Which ones: element i gets the key
/// [`sample_key`](seed, i) (distinct per element); the chosen positives are
/// the num_pos positives with the smallest keys, likewise the negatives. For
/// a random seed that is a uniformly random subset of the eligible ones,
/// as torch.randperm's (not torch's subset for any seed). The CPU and the
/// GPU choose identically.
///
/// On a GPU: a radix select of the keys and a compaction (integer kernels,
/// matching.cu), no host read; `counts` is the one value a caller reads.
/// Errors: labels not [N] i64, N above [`SAMPLE_MAX_N`], positive_fraction
/// outside [0, 1].
pub fn sample_balanced(
    labels: &Tensor,
    batch_size_per_image: usize,
    positive_fraction: f64,
    seed: u64,
) -> Result<BalancedSample> {
    const OP: &str = "sample_balanced";
    if labels.rank() != 1 {
        return Err(Error::shape(
            OP,
            format!("labels must be [N], got shape {:?}", labels.dims()),
        ));
    }
    if labels.dtype() != DType::I64 {
        return Err(Error::dtype(OP, "i64 labels", labels.dtype()));
    }
    let n = labels.dims()[0];
    if n > SAMPLE_MAX_N {
        return Err(Error::arg(
            OP,
            format!("{n} labels: at most {SAMPLE_MAX_N}"),
        ));
    }
    if !(0.0..=1.0).contains(&positive_fraction) {
        return Err(Error::arg(
            OP,
            format!("positive_fraction must be in [0, 1], got {positive_fraction}"),
        ));
    }
    // Python's int(batch * fraction); f64 rounding could exceed the batch
    // only for batches beyond 2^53
    let target =
        ((batch_size_per_image as f64 * positive_fraction) as usize).min(batch_size_per_image);
    let l = labels.detach();
    on_backend!(labels.device(), b => crate::trace::op(OP, "forward", b.name(), &[labels], || {
        b.sample_balanced(&l, batch_size_per_image, target, seed)
    }))
}
