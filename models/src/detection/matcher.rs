//! Ground-truth to prediction matching, exactly as torchvision's `Matcher`
//! (torchvision/models/detection/_utils.py): the RPN uses (0.7, 0.3, with
//! low-quality matches), the ROI heads (0.5, 0.5, without). The matching
//! itself is the engine op `match_boxes`, on the quality matrix's device.

use engine::ops::detection::{match_boxes, MatchRule};
use engine::{Error, Float, Result, Tensor};

pub use engine::ops::detection::{BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matcher {
    pub high_threshold: f64,
    pub low_threshold: f64,
    pub allow_low_quality_matches: bool,
}

impl From<MatchRule> for Matcher {
    fn from(r: MatchRule) -> Matcher {
        Matcher {
            high_threshold: r.high_threshold,
            low_threshold: r.low_threshold,
            allow_low_quality_matches: r.allow_low_quality_matches,
        }
    }
}

impl Matcher {
    /// Errors unless `low_threshold <= high_threshold` (torchvision asserts it;
    /// NaN thresholds are refused too).
    pub fn new(
        high_threshold: f64,
        low_threshold: f64,
        allow_low_quality_matches: bool,
    ) -> Result<Matcher> {
        if low_threshold.is_nan() || high_threshold.is_nan() || low_threshold > high_threshold {
            return Err(Error::arg(
                "Matcher::new",
                format!(
                    "low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})"
                ),
            ));
        }
        Ok(Matcher {
            high_threshold,
            low_threshold,
            allow_low_quality_matches,
        })
    }

    /// The RPN's matcher: IoU >= 0.7 foreground, < 0.3 background, plus
    /// each gt's best anchors.
    pub fn rpn_default() -> Matcher {
        Matcher::from(MatchRule::RPN)
    }

    /// The ROI heads' matcher: IoU >= 0.5 foreground, else background.
    pub fn roi_heads_default() -> Matcher {
        Matcher::from(MatchRule::ROI_HEADS)
    }

    /// torchvision's `Matcher.__call__` on the row-major [G, P] quality
    /// (IoU) matrix `quality` of G gt boxes against P predictions. For each
    /// prediction p, m = the first gt with the highest quality (a NaN counts
    /// as highest), q = that quality; the result is m if q >= high,
    /// [`BETWEEN_THRESHOLDS`] if low <= q < high, [`BELOW_LOW_THRESHOLD`] if
    /// q < low (a NaN q keeps m). Thresholds are compared in `T`.
    ///
    /// With `allow_low_quality_matches`, afterwards, for every gt g and every
    /// prediction p whose quality with g equals g's highest quality over all
    /// predictions (ties included; a NaN highest matches nothing), p gets
    /// back its own best gt m (not necessarily g).
    ///
    /// An empty matrix (G = 0 or P = 0) is an error, as in torchvision; use
    /// [`Matcher::match_or_background`] for images without gt boxes.
    pub fn matches<T: Float>(
        &self,
        quality: &[T],
        num_gt: usize,
        num_pred: usize,
    ) -> Result<Vec<i64>> {
        const OP: &str = "Matcher::matches";
        if quality.len() != num_gt * num_pred {
            return Err(Error::shape(
                OP,
                format!(
                    "quality must be [G, P] = [{num_gt}, {num_pred}] ({} values), got {} values",
                    num_gt * num_pred,
                    quality.len()
                ),
            ));
        }
        if num_gt == 0 {
            return Err(Error::arg(
                OP,
                "no ground-truth boxes for this image (use match_or_background for background images)",
            ));
        }
        if num_pred == 0 {
            return Err(Error::arg(OP, "no proposal boxes for this image"));
        }
        self.match_host(quality, num_gt, num_pred)
    }

    /// The engine op's thresholds.
    pub fn rule(&self) -> MatchRule {
        MatchRule {
            high_threshold: self.high_threshold,
            low_threshold: self.low_threshold,
            allow_low_quality_matches: self.allow_low_quality_matches,
        }
    }

    /// `match_boxes` on a host [G, P] matrix.
    fn match_host<T: Float>(
        &self,
        quality: &[T],
        num_gt: usize,
        num_pred: usize,
    ) -> Result<Vec<i64>> {
        let q = Tensor::from_vec(quality.to_vec(), &[num_gt, num_pred])?;
        match_boxes(&q, self.rule(), None)?.0.to_vec::<i64>()
    }

    /// As [`Matcher::matches`], except that an image without gt boxes
    /// (G = 0) gives [`BELOW_LOW_THRESHOLD`] for all `num_pred` predictions:
    /// what torchvision's RPN and ROI heads do for a background image (every
    /// anchor / proposal labelled background, never calling the matcher).
    /// No predictions (P = 0) gives an empty vector.
    pub fn match_or_background<T: Float>(
        &self,
        quality: &[T],
        num_gt: usize,
        num_pred: usize,
    ) -> Result<Vec<i64>> {
        if quality.is_empty() && (num_gt == 0 || num_pred == 0) {
            return self.match_host::<T>(&[], num_gt, num_pred);
        }
        self.matches(quality, num_gt, num_pred)
    }

    /// [`Matcher::matches`] on a [G, P] float tensor.
    pub fn matches_tensor(&self, quality: &Tensor) -> Result<Vec<i64>> {
        const OP: &str = "Matcher::matches_tensor";
        if quality.rank() != 2 || quality.dims().contains(&0) {
            return Err(Error::shape(
                OP,
                format!(
                    "quality must be a non-empty [G, P], got shape {:?}",
                    quality.dims()
                ),
            ));
        }
        match_boxes(quality, self.rule(), None)?.0.to_vec::<i64>()
    }
}
