//! Ground-truth to prediction matching, exactly as torchvision's `Matcher`
//! (torchvision/models/detection/_utils.py): the RPN uses (0.7, 0.3, with
//! low-quality matches), the ROI heads (0.5, 0.5, without).

use engine::{DType, Element, Error, Float, Result, Tensor};

/// The best quality of a prediction is below `low_threshold`: background.
pub const BELOW_LOW_THRESHOLD: i64 = -1;
/// The best quality is in [low_threshold, high_threshold): ignored.
pub const BETWEEN_THRESHOLDS: i64 = -2;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matcher {
    pub high_threshold: f64,
    pub low_threshold: f64,
    pub allow_low_quality_matches: bool,
}

/// Index of the first maximum of `vals` (the first NaN if any), and that
/// value: torch's `max(dim)` on the CPU.
#[inline]
fn first_max<T: Float>(vals: impl Iterator<Item = T>) -> (usize, T) {
    let mut best: Option<(usize, T)> = None;
    for (i, v) in vals.enumerate() {
        match best {
            None => best = Some((i, v)),
            Some((_, b)) if b.is_nan() => break,
            Some((_, b)) => {
                if v.is_nan() || v > b {
                    best = Some((i, v));
                }
            }
        }
    }
    best.expect("first_max is only called on non-empty rows and columns")
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
        Matcher {
            high_threshold: 0.7,
            low_threshold: 0.3,
            allow_low_quality_matches: true,
        }
    }

    /// The ROI heads' matcher: IoU >= 0.5 foreground, else background.
    pub fn roi_heads_default() -> Matcher {
        Matcher {
            high_threshold: 0.5,
            low_threshold: 0.5,
            allow_low_quality_matches: false,
        }
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
        let high = <T as Element>::from_f64(self.high_threshold);
        let low = <T as Element>::from_f64(self.low_threshold);
        let at = |g: usize, p: usize| quality[g * num_pred + p];
        let all_matches: Vec<usize> = (0..num_pred)
            .map(|p| first_max((0..num_gt).map(|g| at(g, p))).0)
            .collect();
        let mut matches: Vec<i64> = (0..num_pred)
            .map(|p| {
                let m = all_matches[p];
                let q = at(m, p);
                if q < low {
                    BELOW_LOW_THRESHOLD
                } else if q < high {
                    BETWEEN_THRESHOLDS
                } else {
                    m as i64
                }
            })
            .collect();
        if self.allow_low_quality_matches {
            for g in 0..num_gt {
                let row = &quality[g * num_pred..(g + 1) * num_pred];
                let (_, best) = first_max(row.iter().copied());
                for (p, &q) in row.iter().enumerate() {
                    if q == best {
                        matches[p] = all_matches[p] as i64;
                    }
                }
            }
        }
        Ok(matches)
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
        if num_gt == 0 && quality.is_empty() {
            return Ok(vec![BELOW_LOW_THRESHOLD; num_pred]);
        }
        if num_pred == 0 && quality.is_empty() {
            return Ok(Vec::new());
        }
        self.matches(quality, num_gt, num_pred)
    }

    /// [`Matcher::matches`] on a [G, P] f32 or f64 tensor.
    pub fn matches_tensor(&self, quality: &Tensor) -> Result<Vec<i64>> {
        const OP: &str = "Matcher::matches_tensor";
        if quality.rank() != 2 {
            return Err(Error::shape(
                OP,
                format!("quality must be [G, P], got shape {:?}", quality.dims()),
            ));
        }
        let (g, p) = (quality.dims()[0], quality.dims()[1]);
        match quality.dtype() {
            DType::F64 => self.matches(&quality.float_data::<f64>()?, g, p),
            DType::F32 => self.matches(&quality.float_data::<f32>()?, g, p),
            d => Err(Error::dtype(OP, "f32 or f64", d)),
        }
    }
}
