//! Balanced positive / negative sampling of anchors (RPN) or proposals (ROI
//! heads), with torchvision's `BalancedPositiveNegativeSampler` counting
//! rule (torchvision/models/detection/_utils.py).
//!
//! torchvision picks the subsets with `torch.randperm`; we pick them with
//! the engine op `sample_balanced` (the eligible elements with the smallest
//! keys of a counter-based hash of a seed drawn from an `engine::Rng`), on
//! the labels' device, so *which* elements are chosen differs from torch's
//! for the same seed, while the eligibility (positives are labels >= 1,
//! negatives labels == 0, everything else never chosen) and the counts are
//! identical. Every subset of the given size is equally likely in both.

use engine::ops::detection::{sample_balanced, BalancedSample};
use engine::{Error, Result, Rng, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BalancedPositiveNegativeSampler {
    /// Elements selected per image (RPN 256, ROI heads 512).
    pub batch_size_per_image: usize,
    /// Target share of positives (RPN 0.5, ROI heads 0.25).
    pub positive_fraction: f64,
}

impl BalancedPositiveNegativeSampler {
    /// Errors unless `positive_fraction` is in [0, 1].
    pub fn new(batch_size_per_image: usize, positive_fraction: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&positive_fraction) {
            return Err(Error::arg(
                "BalancedPositiveNegativeSampler::new",
                format!("positive_fraction must be in [0, 1], got {positive_fraction}"),
            ));
        }
        Ok(BalancedPositiveNegativeSampler {
            batch_size_per_image,
            positive_fraction,
        })
    }

    /// torchvision's counts for an image with `num_positive` eligible
    /// positives and `num_negative` eligible negatives:
    /// num_pos = min(num_positive, int(batch_size_per_image * positive_fraction))
    /// (truncated), num_neg = min(num_negative, batch_size_per_image - num_pos).
    pub fn counts(&self, num_positive: usize, num_negative: usize) -> (usize, usize) {
        let target = (self.batch_size_per_image as f64 * self.positive_fraction) as usize;
        let num_pos = num_positive.min(target);
        let num_neg = num_negative.min(self.batch_size_per_image.saturating_sub(num_pos));
        (num_pos, num_neg)
    }

    /// Samples one image's `labels` [N] i64 (>= 1 positive, 0 negative, < 0
    /// ignored, as the matcher-derived labels of the RPN and ROI heads) on
    /// their device with a seed drawn from `rng`: a uniformly random set of
    /// [`counts`](Self::counts) positives and negatives (see
    /// `engine::ops::sample_balanced` for the layout).
    pub fn sample(&self, labels: &Tensor, rng: &mut Rng) -> Result<BalancedSample> {
        sample_balanced(
            labels,
            self.batch_size_per_image,
            self.positive_fraction,
            rng.next_u64(),
        )
    }

    /// [`Self::sample`] of host labels: the chosen positives and negatives,
    /// each in increasing index order.
    pub fn sample_host(&self, labels: &[i64], rng: &mut Rng) -> Result<(Vec<usize>, Vec<usize>)> {
        let s = self.sample(&Tensor::from_vec(labels.to_vec(), &[labels.len()])?, rng)?;
        let counts = s.counts.to_vec::<i64>()?;
        let first = |t: &Tensor, k: i64| -> Result<Vec<usize>> {
            let v = t.to_vec::<i64>()?;
            Ok(v.iter().take(k as usize).map(|&i| i as usize).collect())
        };
        Ok((
            first(&s.positive, counts[0])?,
            first(&s.negative, counts[1])?,
        ))
    }
}
