//! Softmax, log-softmax and the losses (cross-entropy, BCE-with-logits,
//! smooth-L1), each with a direct backward. Losses are means returned as 0-d
//! tensors; targets never get a gradient.

use super::par_chunks;
use crate::autograd::record;
use crate::{dispatch_float, DType, Element, Error, Float, Result, Tensor};
use num_traits::Zero;
use rayon::prelude::*;

const GRAIN: usize = 1 << 15;

/// (outer, size, inner) of `dims` split around `dim`.
fn split_dims(op: &'static str, dims: &[usize], dim: usize) -> Result<(usize, usize, usize)> {
    if dim >= dims.len() {
        return Err(Error::shape(
            op,
            format!("dim {dim} out of range for shape {dims:?}"),
        ));
    }
    Ok((
        dims[..dim].iter().product(),
        dims[dim],
        dims[dim + 1..].iter().product(),
    ))
}

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

fn softmax_impl(x: &Tensor, dim: usize, log: bool) -> Result<Tensor> {
    crate::trace::op(
        if log { "log_softmax" } else { "softmax" },
        "forward",
        "cpu:softmax",
        &[x],
        || {
            let op = if log { "log_softmax" } else { "softmax" };
            let split = split_dims(op, x.dims(), dim)?;
            let dtype = x.dtype();
            let out = dispatch_float!(op, dtype, T => {
                Tensor::from_compute(softmax_fwd(&x.float_data::<T>()?, split, log), x.dims(), dtype)
            });
            let y = out.detach();
            Ok(record(out, op, &[x], move |g| {
                let gx = dispatch_float!(op, dtype, T => {
                    let dx = softmax_bwd(&y.float_data::<T>()?, &g.float_data::<T>()?, split, log);
                    Tensor::from_compute(dx, y.dims(), dtype)
                });
                Ok(vec![Some(gx)])
            }))
        },
    )
}

/// A prediction/target pair for the elementwise losses: same shape, same
/// float dtype, not empty.
fn check_pair(op: &'static str, x: &Tensor, t: &Tensor) -> Result<()> {
    if !x.dtype().is_float() {
        return Err(Error::dtype(
            op,
            "a float dtype (f64, f32, f16, bf16) for the prediction",
            x.dtype(),
        ));
    }
    if t.dtype() != x.dtype() {
        return Err(Error::dtype(
            op,
            format!("{} for the target (like the prediction)", x.dtype()),
            t.dtype(),
        ));
    }
    if x.dims() != t.dims() {
        return Err(Error::shape(
            op,
            format!("prediction {:?} and target {:?} differ", x.dims(), t.dims()),
        ));
    }
    if x.numel() == 0 {
        return Err(Error::arg(
            op,
            format!("empty input {:?}: the mean is undefined", x.dims()),
        ));
    }
    Ok(())
}

/// Mean over all elements of `f(x, t)` (accumulated in f64, in a fixed
/// order), with the gradient `g * df/dx(x, t) / numel` w.r.t. x only.
fn elementwise_loss(
    op: &'static str,
    x: &Tensor,
    t: &Tensor,
    f: impl Fn(f64, f64) -> f64 + Sync,
    df: impl Fn(f64, f64) -> f64 + Send + Sync + 'static,
) -> Result<Tensor> {
    crate::trace::op(op, "forward", "cpu:pointwise_loss", &[x, t], || {
        check_pair(op, x, t)?;
        let dtype = x.dtype();
        let n = x.numel();
        let loss = dispatch_float!(op, dtype, T => {
            let (xd, td) = (x.float_data::<T>()?, t.float_data::<T>()?);
            let partials: Vec<f64> = xd
                .par_chunks(GRAIN)
                .zip(td.par_chunks(GRAIN))
                .map(|(xs, ts)| {
                    xs.iter().zip(ts).map(|(&a, &b)| f(Element::to_f64(a), Element::to_f64(b))).sum()
                })
                .collect();
            partials.iter().sum::<f64>() / n as f64
        });
        let out = Tensor::from_compute(vec![loss], &[], dtype);
        let (xs, ts) = (x.detach(), t.detach());
        Ok(record(out, op, &[x, t], move |g| {
            let scale = g.item()? / n as f64;
            let gx = dispatch_float!(op, dtype, T => {
                let (xd, td) = (xs.float_data::<T>()?, ts.float_data::<T>()?);
                let mut dx = vec![T::zero(); n];
                par_chunks(&mut dx, |st, o| {
                    for (i, v) in o.iter_mut().enumerate() {
                        let (a, b) = (Element::to_f64(xd[st + i]), Element::to_f64(td[st + i]));
                        *v = T::from_f64(scale * df(a, b));
                    }
                });
                Tensor::from_compute(dx, xs.dims(), dtype)
            });
            Ok(vec![Some(gx), None])
        }))
    })
}

/// The argument checks of cross_entropy, shared with the GPU op: logits
/// [N, C] of a float dtype, i64 targets [N], label smoothing in [0, 1].
pub(crate) fn check_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    label_smoothing: f64,
) -> Result<(usize, usize)> {
    const OP: &str = "cross_entropy";
    if !logits.dtype().is_float() {
        return Err(Error::dtype(
            OP,
            "a float dtype (f64, f32, f16, bf16) for the logits",
            logits.dtype(),
        ));
    }
    super::expect_rank(OP, "logits", logits, 2)?;
    let (n, c) = (logits.dims()[0], logits.dims()[1]);
    if targets.dtype() != DType::I64 {
        return Err(Error::dtype(
            OP,
            "i64 class indices for targets",
            targets.dtype(),
        ));
    }
    if targets.dims() != [n] {
        return Err(Error::shape(
            OP,
            format!(
                "targets must be [{n}] for logits {:?}, got {:?}",
                logits.dims(),
                targets.dims()
            ),
        ));
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::arg(
            OP,
            format!("label_smoothing must be in [0, 1], got {label_smoothing}"),
        ));
    }
    Ok((n, c))
}

impl Tensor {
    pub fn log_softmax(&self, dim: usize) -> Result<Tensor> {
        softmax_impl(self, dim, true)
    }

    pub fn softmax(&self, dim: usize) -> Result<Tensor> {
        softmax_impl(self, dim, false)
    }

    /// logits [N, C] (self), targets i64 [N]; mean over non-ignored rows;
    /// PyTorch's F.cross_entropy semantics incl. label_smoothing and
    /// ignore_index. Error if a target is out of range (and not the ignore
    /// index), or if every row is ignored (PyTorch gives NaN).
    pub fn cross_entropy(
        &self,
        targets: &Tensor,
        label_smoothing: f64,
        ignore_index: Option<i64>,
    ) -> Result<Tensor> {
        if self.device() != crate::Device::Cpu {
            return crate::cuda::ops::loss::cross_entropy(
                self,
                targets,
                label_smoothing,
                ignore_index,
            );
        }
        crate::trace::op(
            "cross_entropy",
            "forward",
            "cpu:softmax_xent",
            &[self, targets],
            || {
                const OP: &str = "cross_entropy";
                let dtype = self.dtype();
                let (n, c) = check_cross_entropy(self, targets, label_smoothing)?;
                let tv = targets.to_vec::<i64>()?;
                // None for an ignored row, else the class.
                let mut rows: Vec<Option<usize>> = Vec::with_capacity(n);
                for (i, &t) in tv.iter().enumerate() {
                    if Some(t) == ignore_index {
                        rows.push(None);
                    } else if (0..c as i64).contains(&t) {
                        rows.push(Some(t as usize));
                    } else {
                        let ign = ignore_index.map_or(String::new(), |v| {
                            format!(" and is not the ignore index {v}")
                        });
                        return Err(Error::arg(
                            OP,
                            format!("target[{i}] = {t} is outside [0, {c}){ign}"),
                        ));
                    }
                }
                let valid = rows.iter().filter(|r| r.is_some()).count();
                if valid == 0 {
                    return Err(Error::arg(
                        OP,
                        format!(
                    "every one of the {n} rows is ignored (ignore index {ignore_index:?}): \
                     the mean is undefined (PyTorch returns NaN)"
                ),
                    ));
                }
                let eps = label_smoothing;
                let (loss, lse) = dispatch_float!(OP, dtype, T => {
                    let xd = self.float_data::<T>()?;
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
                let out = Tensor::from_compute(vec![loss], &[], dtype);
                let xs = self.detach();
                Ok(record(out, OP, &[self, targets], move |g| {
                    // d/dx_ic = g/|V| * (softmax_ic - (1-eps)[c == t_i] - eps/C) on valid rows
                    let scale = g.item()? / valid as f64;
                    let gx = dispatch_float!(OP, dtype, T => {
                        let xd = xs.float_data::<T>()?;
                        let mut dx = vec![T::zero(); n * c];
                        for_each_block(&mut dx, c, |i, o| {
                            let Some(t) = rows[i] else { return };
                            let row = &xd[i * c..(i + 1) * c];
                            for (k, (v, &x)) in o.iter_mut().zip(row).enumerate() {
                                let p = (Element::to_f64(x) - lse[i]).exp();
                                let hot = if k == t { 1.0 - eps } else { 0.0 };
                                *v = T::from_f64(scale * (p - hot - eps / c as f64));
                            }
                        });
                        Tensor::from_compute(dx, &[n, c], dtype)
                    });
                    Ok(vec![Some(gx), None])
                }))
            },
        )
    }

    /// Mean over all elements of BCE-with-logits (numerically stable form),
    /// targets float, same shape.
    pub fn bce_with_logits(&self, targets: &Tensor) -> Result<Tensor> {
        // max(x,0) - x*t + log(1 + exp(-|x|)) never overflows.
        let f = |x: f64, t: f64| x.max(0.0) - x * t + (-x.abs()).exp().ln_1p();
        let df = |x: f64, t: f64| 1.0 / (1.0 + (-x).exp()) - t;
        elementwise_loss("bce_with_logits", self, targets, f, df)
    }

    /// Mean smooth-L1 (PyTorch: 0.5 d^2/beta if |d|<beta else |d|-0.5 beta;
    /// beta=0 is plain L1), target same shape.
    pub fn smooth_l1(&self, target: &Tensor, beta: f64) -> Result<Tensor> {
        if !(beta.is_finite() && beta >= 0.0) {
            return Err(Error::arg(
                "smooth_l1",
                format!("beta must be finite and >= 0, got {beta}"),
            ));
        }
        // beta = 0 is plain L1 (the quadratic branch |d| < 0 never applies).
        let f = move |x: f64, t: f64| {
            let d = (x - t).abs();
            if d < beta {
                0.5 * d * d / beta
            } else {
                d - 0.5 * beta
            }
        };
        let df = move |x: f64, t: f64| {
            let d = x - t;
            if d.abs() < beta {
                d / beta
            } else {
                sign(d)
            }
        };
        elementwise_loss("smooth_l1", self, target, f, df)
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
