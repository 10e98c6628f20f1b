//! GPU parity cases of matching and balanced sampling: every output is an
//! integer, so GPU and CPU must agree exactly (threshold 0).
//! match_boxes in f32, bf16, f16 and f64: G = 0, a single element, an
//! 800x1344 image's 268,569 anchors against 20 gt boxes (RPN rule), the ROI
//! heads' rule with gt labels, many gt rows; qualities on a 1/64 grid (ties
//! in rows and columns), zero rows, a gt whose best is below the low
//! threshold, NaN. sample_balanced: the RPN's 256 / 0.5 over 268,569 anchor
//! labels, the ROI heads' 512 / 0.25, a batch above the eligible count,
//! nothing eligible, one label, seed 0 and u64::MAX; and the two
//! composed as the RPN uses them (labels of a match sampled on the device).

use super::MatchRule;
use crate::parity::Case;
use crate::{DType, Device, Result, Rng, Tensor};

/// The number of cases [`cases`] adds (the detection family's case count
/// test adds it).
#[cfg(test)]
pub(crate) const CASES: usize = 4 * 6 + 7 + 1;

/// A [g, n] quality matrix like an IoU matrix: mostly 0 (anchors far from
/// a gt), the rest on a 1/64 grid in (0, 1] (ties); row 1 entirely below
/// 0.3 (a gt only matched through its low-quality best); about one entry
/// in 5000 NaN when `nan`.
fn quality(rng: &mut Rng, g: usize, n: usize, nan: bool) -> Vec<f64> {
    let mut q: Vec<f64> = (0..g * n)
        .map(|_| {
            let u = rng.uniform();
            if u < 0.7 {
                0.0
            } else {
                (rng.uniform() * 64.0).ceil() / 64.0
            }
        })
        .collect();
    if g > 1 {
        for v in &mut q[n..2 * n] {
            *v = (*v * 0.25 * 64.0).floor() / 64.0;
        }
    }
    if nan {
        for _ in 0..(g * n).div_ceil(5000) {
            let i = rng.below(g * n);
            q[i] = f64::NAN;
        }
    }
    q
}

/// Labels [n] like the matcher's: 1 to 90 (classes) with probability
/// `pos`, -1 with probability `ign`, else 0.
pub(super) fn labels(rng: &mut Rng, n: usize, pos: f64, ign: f64) -> Vec<i64> {
    (0..n)
        .map(|_| {
            let u = rng.uniform();
            if u < pos {
                1 + rng.below(90) as i64
            } else if u < pos + ign {
                -1
            } else {
                0
            }
        })
        .collect()
}

pub(crate) fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // (G, N, rule, with gt labels, NaN)
    let shapes: [(usize, usize, MatchRule, bool, bool); 6] = [
        (0, 1000, MatchRule::RPN, false, false),
        (1, 1, MatchRule::RPN, false, false),
        (20, 268_569, MatchRule::RPN, false, false),
        (7, 5000, MatchRule::RPN, false, true),
        (64, 3000, MatchRule::ROI_HEADS, true, true),
        (300, 700, MatchRule::RPN, true, false),
    ];
    for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
        for (g, n, rule, with_labels, nan) in shapes {
            let q = quality(rng, g, n, nan);
            let gl: Vec<i64> = (0..g).map(|_| 1 + rng.below(90) as i64).collect();
            out.push(Case {
                op: "match_boxes",
                dtype,
                label: format!(
                    "[{g},{n}] {}/{}/{}{}{}",
                    rule.high_threshold,
                    rule.low_threshold,
                    rule.allow_low_quality_matches as u8,
                    if with_labels { " gt_labels" } else { "" },
                    if nan { " nan" } else { "" }
                ),
                // integer outputs: identical
                threshold: Some(0.0),
                run: Box::new(move |dev: Device| -> Result<_> {
                    let qt = Tensor::from_vec(q.clone(), &[g, n])?
                        .to_dtype(dtype)?
                        .to_device(dev)?;
                    let glt = Tensor::from_vec(gl.clone(), &[g])?.to_device(dev)?;
                    let (m, l) = super::match_boxes(&qt, rule, with_labels.then_some(&glt))?;
                    Ok(vec![("matches".into(), m), ("labels".into(), l)])
                }),
            });
        }
    }
    // (N, positive / ignored probabilities, batch, fraction, seed)
    let samples: [(usize, f64, f64, usize, f64, u64); 7] = [
        (268_569, 0.0005, 0.02, 256, 0.5, rng.next_u64()),
        (268_569, 0.01, 0.05, 256, 0.5, 0),
        (2000, 0.1, 0.3, 512, 0.25, u64::MAX),
        (1000, 0.05, 0.1, 4000, 0.5, rng.next_u64()),
        (5000, 0.0, 1.0, 256, 0.5, rng.next_u64()),
        (1, 1.0, 0.0, 256, 0.5, rng.next_u64()),
        (70_000, 0.6, 0.0, 300, 0.9, rng.next_u64()),
    ];
    for (n, pos, ign, batch, frac, seed) in samples {
        let l = labels(rng, n, pos, ign);
        out.push(Case {
            op: "sample_balanced",
            dtype: DType::I64,
            label: format!("[{n}] pos {pos} ign {ign} batch {batch} x {frac} seed {seed:#x}"),
            // integer outputs: identical
            threshold: Some(0.0),
            run: Box::new(move |dev: Device| -> Result<_> {
                let lt = Tensor::from_vec(l.clone(), &[n])?.to_device(dev)?;
                let s = super::sample_balanced(&lt, batch, frac, seed)?;
                Ok(vec![
                    ("positive".into(), s.positive),
                    ("negative".into(), s.negative),
                    ("counts".into(), s.counts),
                ])
            }),
        });
    }
    let (g, n) = (12, 268_569);
    let q = quality(rng, g, n, false);
    let seed = rng.next_u64();
    out.push(Case {
        op: "sample_balanced",
        dtype: DType::F32,
        label: format!("the RPN labels of match_boxes on [{g},{n}] -> 256 x 0.5"),
        // integer outputs: identical
        threshold: Some(0.0),
        run: Box::new(move |dev: Device| -> Result<_> {
            let qt = Tensor::from_vec(q.clone(), &[g, n])?
                .to_dtype(DType::F32)?
                .to_device(dev)?;
            let (_, labels) = super::match_boxes(&qt, MatchRule::RPN, None)?;
            let s = super::sample_balanced(&labels, 256, 0.5, seed)?;
            Ok(vec![
                ("labels".into(), labels),
                ("positive".into(), s.positive),
                ("negative".into(), s.negative),
                ("counts".into(), s.counts),
            ])
        }),
    });
}
