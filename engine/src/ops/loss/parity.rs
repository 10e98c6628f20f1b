//! The losses' GPU parity cases: cross-entropy (small and ImageNet-sized
//! class counts, label smoothing, ignored rows); softmax and log_softmax
//! over the last dim (detector class scores, 1000 classes) and over a
//! middle dim of a channels-last NCHW tensor; BCE-with-logits (soft
//! targets, RPN objectness sizes) and smooth-L1 (beta 1/9 as the RPN's,
//! 1, and 0 = L1), each with its backward.
//!
//! Thresholds: the defaults. Every kernel computes in f32 (the loss sums in
//! f32 per thread and block, then double), so f32 agrees to ~1e-6 of the
//! largest value. bf16: inputs are the same bf16 values on both sides and
//! both round their f32 result to bf16 once, so outputs differ by at most
//! one bf16 step (2^-8 relative) where the f32 results straddle a rounding
//! boundary; softmax's backward reads the bf16-rounded forward output on
//! both sides alike, so the chain adds no further gap; 1e-2 holds.

use crate::parity::{autograd_with, dims, Case, DTYPES};
use crate::{Rng, Tensor};

/// Softmax / log_softmax cases and the elementwise losses.
fn softmax_and_pointwise(rng: &mut Rng, out: &mut Vec<Case>) {
    // (shape, dim)
    let softmaxes: [(&'static [usize], usize); 4] = [
        (&[8, 10], 1),
        (&[64, 1000], 1),
        (&[2, 5, 3, 4], 1),
        (&[3, 7, 91], 2),
    ];
    for dtype in DTYPES {
        for (shape, dim) in softmaxes {
            for log in [false, true] {
                let draw = move |rng: &mut Rng| {
                    vec![("x", Tensor::randn(shape, 0.0, 3.0, dtype, rng), true)]
                };
                let f = move |t: &[Tensor]| {
                    let y = if log {
                        t[0].log_softmax(dim)?
                    } else {
                        t[0].softmax(dim)?
                    };
                    Ok(vec![("y".into(), y)])
                };
                let op = if log { "log_softmax" } else { "softmax" };
                let label = format!("{} dim {dim}", dims(shape));
                out.push(autograd_with(op, dtype, label, rng.next_u64(), draw, f));
            }
        }
        // (shape, None: BCE-with-logits, Some(beta): smooth-L1)
        let pointwise: [(&'static [usize], Option<f64>); 6] = [
            (&[4, 3, 5, 7], None),
            (&[2, 4000], None),
            (&[128, 4], Some(1.0 / 9.0)),
            (&[37, 4], Some(1.0)),
            (&[37, 4], Some(0.0)),
            (&[2, 3, 5, 7], Some(0.5)),
        ];
        for (shape, beta) in pointwise {
            let draw = move |rng: &mut Rng| {
                let x = Tensor::randn(shape, 0.0, 2.0, dtype, rng);
                let t = Tensor::randn(shape, 0.0, 1.0, dtype, rng);
                // BCE's targets are probabilities: sigmoid of a normal
                let t = if beta.is_none() {
                    t.sigmoid().expect("host sigmoid")
                } else {
                    t
                };
                vec![("x", x, true), ("t", t, false)]
            };
            let f = move |t: &[Tensor]| {
                let loss = match beta {
                    None => t[0].bce_with_logits(&t[1])?,
                    Some(b) => t[0].smooth_l1(&t[1], b)?,
                };
                Ok(vec![("loss".into(), loss)])
            };
            let (op, label) = match beta {
                None => ("bce_with_logits", dims(shape)),
                Some(b) => ("smooth_l1", format!("{} beta {b:.3}", dims(shape))),
            };
            out.push(autograd_with(op, dtype, label, rng.next_u64(), draw, f));
        }
    }
}

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    softmax_and_pointwise(rng, out);
    // (N, classes, label smoothing, rows with the ignore index)
    let ce: [(usize, usize, f64, usize); 4] = [
        (8, 10, 0.0, 0),
        (64, 1000, 0.1, 0),
        (13, 7, 0.0, 3),
        (256, 1000, 0.0, 0),
    ];
    for dtype in DTYPES {
        for (n, k, ls, ignored) in ce {
            let draw = move |rng: &mut Rng| {
                let logits = Tensor::randn(&[n, k], 0.0, 2.0, dtype, rng);
                let mut tg: Vec<i64> = (0..n).map(|_| rng.below(k) as i64).collect();
                for t in tg.iter_mut().take(ignored) {
                    *t = -100;
                }
                rng.shuffle(&mut tg);
                let targets = Tensor::from_vec(tg, &[n]).expect("[N] targets");
                vec![("logits", logits, true), ("targets", targets, false)]
            };
            let ignore = (ignored > 0).then_some(-100);
            // targets on the device (checked by the kernel's flag, read
            // back) and on the host (checked there, nothing read back)
            for host in [false, true] {
                let label = format!(
                    "[{n},{k}] ls{ls}{}{}",
                    if ignored > 0 {
                        format!(" ignore {ignored}")
                    } else {
                        String::new()
                    },
                    if host { ", host targets" } else { "" }
                );
                let f = move |t: &[Tensor]| {
                    let targets = match host {
                        true => t[1].to_device(crate::Device::Cpu)?,
                        false => t[1].clone(),
                    };
                    Ok(vec![(
                        "loss".into(),
                        t[0].cross_entropy(&targets, ls, ignore)?,
                    )])
                };
                out.push(autograd_with(
                    "cross_entropy",
                    dtype,
                    label,
                    rng.next_u64(),
                    draw,
                    f,
                ));
            }
        }
    }
}
