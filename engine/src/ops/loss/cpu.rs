//! Softmax and the losses on the CPU: rows in parallel, loss sums in f64 in
//! a fixed order.

use super::{target_rows, LossOps, Pointwise, SoftmaxGeom, XentGeom};
use crate::backend::{Cpu, Saved};
use crate::ops::par_chunks;
use crate::{dispatch_float, Element, Float, Result, Tensor};
use num_traits::Zero;
use rayon::prelude::*;

const GRAIN: usize = 1 << 15;

/// Runs `f(outer_index, block)` over blocks of `out` of `block` elements, in
/// parallel when there is enough work.
fn for_each_block<T: Send>(out: &mut [T], block: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if out.is_empty() || block == 0 {
        return;
    }
    if out.len() <= GRAIN || out.len() == block {
        out.chunks_mut(block).enumerate().for_each(|(i, b)| f(i, b));
    } else {
        out.par_chunks_mut(block)
            .enumerate()
            .for_each(|(i, b)| f(i, b));
    }
}

/// log(sum(exp(row))) with max subtraction; `row(k)` reads element k of d.
#[inline]
fn logsumexp<T: Float>(d: usize, row: impl Fn(usize) -> T) -> T {
    let m = (0..d).map(&row).fold(T::neg_infinity(), T::max);
    if m == T::neg_infinity() {
        return m;
    }
    let s: T = (0..d).map(|k| (row(k) - m).exp()).sum();
    m + s.ln()
}

fn softmax_fwd<T: Float>(x: &[T], (_, d, inner): (usize, usize, usize), log: bool) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    for_each_block(&mut out, d * inner, |o, blk| {
        let xb = &x[o * d * inner..(o + 1) * d * inner];
        for i in 0..inner {
            let lse = logsumexp(d, |k| xb[k * inner + i]);
            for k in 0..d {
                let lp = xb[k * inner + i] - lse;
                blk[k * inner + i] = if log { lp } else { lp.exp() };
            }
        }
    });
    out
}

/// log_softmax: dx = g - exp(y) * Σg; softmax: dx = y * (g - Σ g*y).
fn softmax_bwd<T: Float>(
    y: &[T],
    g: &[T],
    (_, d, inner): (usize, usize, usize),
    log: bool,
) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    for_each_block(&mut dx, d * inner, |o, blk| {
        let base = o * d * inner;
        let (yb, gb) = (&y[base..base + d * inner], &g[base..base + d * inner]);
        for i in 0..inner {
            let at = |k: usize| k * inner + i;
            if log {
                let s: T = (0..d).map(|k| gb[at(k)]).sum();
                (0..d).for_each(|k| blk[at(k)] = gb[at(k)] - yb[at(k)].exp() * s);
            } else {
                let s: T = (0..d).map(|k| gb[at(k)] * yb[at(k)]).sum();
                (0..d).for_each(|k| blk[at(k)] = yb[at(k)] * (gb[at(k)] - s));
            }
        }
    });
    dx
}
/// What the cross-entropy backward needs: the logits, each row's class
/// (None: ignored) and log-sum-exp, and the number of rows counted.
struct XentSaved {
    x: Tensor,
    rows: Vec<Option<usize>>,
    lse: Vec<f64>,
    valid: usize,
}

impl Pointwise {
    /// The loss of one element.
    fn f(self, x: f64, t: f64) -> f64 {
        match self {
            // max(x,0) - x*t + log(1 + exp(-|x|)) never overflows.
            Pointwise::BceWithLogits => x.max(0.0) - x * t + (-x.abs()).exp().ln_1p(),
            // beta = 0 is plain L1 (the quadratic branch |d| < 0 never applies).
            Pointwise::SmoothL1 { beta } => {
                let d = (x - t).abs();
                if d < beta {
                    0.5 * d * d / beta
                } else {
                    d - 0.5 * beta
                }
            }
        }
    }

    /// Its derivative in x.
    fn df(self, x: f64, t: f64) -> f64 {
        match self {
            Pointwise::BceWithLogits => 1.0 / (1.0 + (-x).exp()) - t,
            Pointwise::SmoothL1 { beta } => {
                let d = x - t;
                if d.abs() < beta {
                    d / beta
                } else {
                    sign(d)
                }
            }
        }
    }
}

impl LossOps for Cpu {
    fn softmax(&self, x: &Tensor, g: &SoftmaxGeom) -> Result<Tensor> {
        crate::trace::kernel("softmax");
        let dtype = x.dtype();
        let split = (g.outer, g.size, g.inner);
        dispatch_float!(g.name(), dtype, T => {
            let y = softmax_fwd(&x.float_data::<T>()?, split, g.log);
            Ok(Tensor::from_compute(y, x.dims(), dtype))
        })
    }

    fn softmax_backward(&self, y: &Tensor, dy: &Tensor, g: &SoftmaxGeom) -> Result<Tensor> {
        crate::trace::kernel("softmax");
        let dtype = y.dtype();
        let split = (g.outer, g.size, g.inner);
        dispatch_float!(g.name(), dtype, T => {
            let dx = softmax_bwd(&y.float_data::<T>()?, &dy.float_data::<T>()?, split, g.log);
            Ok(Tensor::from_compute(dx, y.dims(), dtype))
        })
    }

    fn cross_entropy(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        g: &XentGeom,
    ) -> Result<(Tensor, Saved)> {
        const OP: &str = "cross_entropy";
        crate::trace::kernel("softmax_xent");
        let (n, c, eps) = (g.n, g.c, g.label_smoothing);
        let dtype = logits.dtype();
        let rows = target_rows(&targets.to_vec::<i64>()?, c, g.ignore_index)?;
        let valid = rows.iter().filter(|r| r.is_some()).count();
        let (loss, lse) = dispatch_float!(OP, dtype, T => {
            let xd = logits.float_data::<T>()?;
            // per row: (log-sum-exp, loss contribution); summed in row order
            let per_row: Vec<(f64, f64)> = (0..n)
                .into_par_iter()
                .with_min_len((GRAIN / c.max(1)).max(1))
                .map(|i| {
                    let row = &xd[i * c..(i + 1) * c];
                    let lse = Element::to_f64(logsumexp(c, |k| row[k]));
                    let Some(t) = rows[i] else { return (lse, 0.0) };
                    let nll = lse - Element::to_f64(row[t]);
                    let smooth = if eps > 0.0 {
                        lse - row.iter().map(|&v| Element::to_f64(v)).sum::<f64>() / c as f64
                    } else {
                        0.0
                    };
                    (lse, (1.0 - eps) * nll + eps * smooth)
                })
                .collect();
            let loss = per_row.iter().map(|r| r.1).sum::<f64>() / valid as f64;
            (loss, per_row.into_iter().map(|r| r.0).collect::<Vec<f64>>())
        });
        let saved = XentSaved {
            x: logits.detach(),
            rows,
            lse,
            valid,
        };
        Ok((
            Tensor::from_compute(vec![loss], &[], dtype),
            Box::new(saved),
        ))
    }

    fn cross_entropy_backward(
        &self,
        dloss: &Tensor,
        saved: &Saved,
        g: &XentGeom,
    ) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        crate::trace::kernel("softmax_xent");
        let s: &XentSaved = saved
            .downcast_ref()
            .expect("the CPU cross_entropy saves XentSaved");
        let (n, c, eps) = (g.n, g.c, g.label_smoothing);
        // d/dx_ic = g/|V| * (softmax_ic - (1-eps)[c == t_i] - eps/C) on valid rows
        let scale = dloss.item()? / s.valid as f64;
        let dtype = s.x.dtype();
        dispatch_float!(OP, dtype, T => {
            let xd = s.x.float_data::<T>()?;
            let mut dx = vec![T::zero(); n * c];
            for_each_block(&mut dx, c, |i, o| {
                let Some(t) = s.rows[i] else { return };
                let row = &xd[i * c..(i + 1) * c];
                for (k, (v, &x)) in o.iter_mut().zip(row).enumerate() {
                    let p = (Element::to_f64(x) - s.lse[i]).exp();
                    let hot = if k == t { 1.0 - eps } else { 0.0 };
                    *v = T::from_f64(scale * (p - hot - eps / c as f64));
                }
            });
            Ok(Tensor::from_compute(dx, &[n, c], dtype))
        })
    }

    fn pointwise_loss(&self, x: &Tensor, t: &Tensor, kind: Pointwise) -> Result<Tensor> {
        crate::trace::kernel("pointwise_loss");
        let dtype = x.dtype();
        let loss = dispatch_float!(kind.name(), dtype, T => {
            let (xd, td) = (x.float_data::<T>()?, t.float_data::<T>()?);
            let partials: Vec<f64> = xd
                .par_chunks(GRAIN)
                .zip(td.par_chunks(GRAIN))
                .map(|(xs, ts)| {
                    xs.iter()
                        .zip(ts)
                        .map(|(&a, &b)| kind.f(Element::to_f64(a), Element::to_f64(b)))
                        .sum()
                })
                .collect();
            partials.iter().sum::<f64>() / x.numel() as f64
        });
        Ok(Tensor::from_compute(vec![loss], &[], dtype))
    }

    fn pointwise_loss_backward(
        &self,
        x: &Tensor,
        t: &Tensor,
        dloss: &Tensor,
        kind: Pointwise,
    ) -> Result<Tensor> {
        crate::trace::kernel("pointwise_loss");
        let (n, dtype) = (x.numel(), x.dtype());
        let scale = dloss.item()? / n as f64;
        dispatch_float!(kind.name(), dtype, T => {
            let (xd, td) = (x.float_data::<T>()?, t.float_data::<T>()?);
            let mut dx = vec![T::zero(); n];
            par_chunks(&mut dx, |st, o| {
                for (i, v) in o.iter_mut().enumerate() {
                    let (a, b) = (Element::to_f64(xd[st + i]), Element::to_f64(td[st + i]));
                    *v = T::from_f64(scale * kind.df(a, b));
                }
            });
            Ok(Tensor::from_compute(dx, x.dims(), dtype))
        })
    }
}

/// sign with sign(0) = 0, as PyTorch's L1 gradient.
fn sign(d: f64) -> f64 {
    if d > 0.0 {
        1.0
    } else if d < 0.0 {
        -1.0
    } else {
        0.0
    }
}
