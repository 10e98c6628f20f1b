//! Balanced positive / negative sampling of anchors (RPN) or proposals (ROI
//! heads), with torchvision's `BalancedPositiveNegativeSampler` counting
//! rule (torchvision/models/detection/_utils.py).
//!
//! torchvision picks the subsets with `torch.randperm`; we pick them with
//! `engine::Rng`, so *which* elements are chosen differs from torch's for
//! the same seed, while the eligibility (positives are labels >= 1,
//! negatives labels == 0, everything else never chosen) and the counts are
//! identical. Every subset of the given size is equally likely in both.

use engine::{Error, Result, Rng};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BalancedPositiveNegativeSampler {
    /// Elements selected per image (RPN 256, ROI heads 512).
    pub batch_size_per_image: usize,
    /// Target share of positives (RPN 0.5, ROI heads 0.25).
    pub positive_fraction: f64,
}

/// The selection for one image, as torchvision's masks: `positive[i]` /
/// `negative[i]` say whether element i was chosen as a positive / negative.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub positive: Vec<bool>,
    pub negative: Vec<bool>,
}

impl Sampled {
    /// Indices of the chosen positives, increasing.
    pub fn positive_indices(&self) -> Vec<usize> {
        mask_indices(&self.positive)
    }
    /// Indices of the chosen negatives, increasing.
    pub fn negative_indices(&self) -> Vec<usize> {
        mask_indices(&self.negative)
    }
}

fn mask_indices(mask: &[bool]) -> Vec<usize> {
    mask.iter()
        .enumerate()
        .filter(|(_, &m)| m)
        .map(|(i, _)| i)
        .collect()
}

/// Marks a uniformly random `k`-subset of `candidates` in `mask` (partial
/// Fisher-Yates: the first k slots after k swaps).
fn choose(candidates: &mut [usize], k: usize, rng: &mut Rng, mask: &mut [bool]) {
    let n = candidates.len();
    for i in 0..k {
        let j = i + rng.below(n - i);
        candidates.swap(i, j);
        mask[candidates[i]] = true;
    }
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

    /// Samples one image's `labels` (>= 1 positive, 0 negative, < 0 ignored,
    /// as the matcher-derived labels of the RPN and ROI heads): a uniformly
    /// random set of [`counts`](Self::counts) positives and negatives, drawn
    /// from `rng` (positives first, then negatives), returned as masks.
    pub fn sample(&self, labels: &[i64], rng: &mut Rng) -> Sampled {
        let mut positives: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] >= 1).collect();
        let mut negatives: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 0).collect();
        let (num_pos, num_neg) = self.counts(positives.len(), negatives.len());
        let mut positive = vec![false; labels.len()];
        let mut negative = vec![false; labels.len()];
        choose(&mut positives, num_pos, rng, &mut positive);
        choose(&mut negatives, num_neg, rng, &mut negative);
        Sampled { positive, negative }
    }
}
