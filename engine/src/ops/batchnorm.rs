//! Batch normalisation over channel dim 1 (statistics over every other dim),
//! plain and fused with ReLU / residual-add + ReLU.
//!
//! x is viewed as [N, C, S] (S = product of the spatial dims), so each (n, c)
//! plane of S elements is contiguous. Per-channel reductions run over blocks
//! of channels in parallel and accumulate in f64; elementwise passes run over
//! planes in parallel. Every partial sum is combined in a fixed order, so
//! results do not depend on thread scheduling.

use crate::autograd::record;
use crate::{dispatch_float, DType, Element, Error, Float, Result, Tensor};
use num_traits::Zero;
use rayon::prelude::*;

pub struct BatchNormArgs<'a> {
    pub weight: &'a Tensor,       // [C]
    pub bias: &'a Tensor,         // [C]
    pub running_mean: &'a Tensor, // [C], never requires grad
    pub running_var: &'a Tensor,  // [C]
    pub training: bool,
    /// PyTorch convention: new = (1-m)*old + m*batch_stat.
    pub momentum: f64,
    pub eps: f64,
}

pub struct BatchNormOutput {
    pub out: Tensor,
    /// Updated (running_mean, running_var) in training mode, None in eval.
    /// running_var uses the UNBIASED batch variance (n/(n-1)), normalisation
    /// the biased one — exactly PyTorch.
    pub running: Option<(Tensor, Tensor)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fuse {
    None,
    Relu,
    AddRelu,
}

impl Fuse {
    fn name(self) -> &'static str {
        match self {
            Fuse::None => "batch_norm",
            Fuse::Relu => "batch_norm_relu",
            Fuse::AddRelu => "batch_norm_add_relu",
        }
    }
}

/// x as [N, C, S].
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    s: usize,
}

/// Elements per parallel task: big enough to amortise rayon, small enough
/// to spread a [64, 512, 4, 4] tensor over the cores.
const GRAIN: usize = 1 << 14;
/// f64 accumulator lanes: independent chains let LLVM vectorise the sums.
const LANES: usize = 8;

#[inline(always)]
fn f64_of<T: Float>(v: T) -> f64 {
    Element::to_f64(v)
}

/// Per-channel sums of K quantities. `plane(c, start)` returns the sums over
/// the plane of channel c beginning at flat index `start` (S elements).
/// Channels are processed in blocks so that small planes (S = 1 for
/// [N, C] inputs) still read contiguous memory.
fn channel_reduce<const K: usize>(
    d: Dims,
    plane: impl Fn(usize, usize) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    let block = (GRAIN / d.s.max(1) / d.n.max(1)).clamp(1, d.c.max(1));
    let n_blocks = d.c.div_ceil(block);
    let run = |b: usize| {
        let (c0, c1) = (b * block, ((b + 1) * block).min(d.c));
        let mut acc = vec![[0.0f64; K]; c1 - c0];
        for n in 0..d.n {
            for (c, a) in (c0..c1).zip(acc.iter_mut()) {
                let r = plane(c, (n * d.c + c) * d.s);
                for k in 0..K {
                    a[k] += r[k];
                }
            }
        }
        acc
    };
    let parts: Vec<Vec<[f64; K]>> = if n_blocks > 1 && d.n * d.c * d.s > GRAIN {
        (0..n_blocks).into_par_iter().map(run).collect()
    } else {
        (0..n_blocks).map(run).collect()
    };
    parts.concat()
}

/// Fills `out` ([N, C, S] flat) plane by plane in parallel; `f(c, start, plane)`.
fn plane_map<T: Send>(out: &mut [T], d: Dims, f: impl Fn(usize, usize, &mut [T]) + Sync) {
    if out.is_empty() {
        return;
    }
    let per_task = (GRAIN / d.s).max(1);
    let task = |t: usize, chunk: &mut [T]| {
        for (j, p) in chunk.chunks_mut(d.s).enumerate() {
            let idx = t * per_task + j;
            f(idx % d.c, idx * d.s, p);
        }
    };
    if out.len() <= GRAIN {
        task(0, out);
    } else {
        out.par_chunks_mut(per_task * d.s)
            .enumerate()
            .for_each(|(t, c)| task(t, c));
    }
}

/// (Σ(x-k), Σ(x-k)²) over a plane. Shifting by a sample k of the channel
/// keeps the one-pass variance free of cancellation.
fn shifted_moments<T: Float>(x: &[T], k: f64) -> [f64; 2] {
    let (mut s1, mut s2) = ([0.0f64; LANES], [0.0f64; LANES]);
    let mut it = x.chunks_exact(LANES);
    for ch in &mut it {
        for j in 0..LANES {
            let v = f64_of(ch[j]) - k;
            s1[j] += v;
            s2[j] += v * v;
        }
    }
    let (mut t1, mut t2) = (0.0, 0.0);
    for &v in it.remainder() {
        let v = f64_of(v) - k;
        t1 += v;
        t2 += v * v;
    }
    [s1.iter().sum::<f64>() + t1, s2.iter().sum::<f64>() + t2]
}

/// (Σdy', Σdy'·(x-mean)) over a plane, dy' = dy masked by out > 0 when MASK
/// (`out` is ignored otherwise; pass any slice of the plane's length).
/// dy masked by y > 0 as a product with 0/1: LLVM turns a select here
/// into a mispredicted branch per element.
#[inline(always)]
fn masked<T: Float, const MASK: bool>(g: T, y: T) -> f64 {
    if MASK {
        f64_of(g) * ((y > T::zero()) as u8 as f64)
    } else {
        f64_of(g)
    }
}

fn grad_moments<T: Float, const MASK: bool>(x: &[T], dy: &[T], out: &[T], mean: f64) -> [f64; 2] {
    let (mut s1, mut s2) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (xc, gc, oc) = (
        x.chunks_exact(LANES),
        dy.chunks_exact(LANES),
        out.chunks_exact(LANES),
    );
    let (xr, gr, or) = (xc.remainder(), gc.remainder(), oc.remainder());
    for ((xs, gs), os) in xc.zip(gc).zip(oc) {
        for j in 0..LANES {
            let g = masked::<T, MASK>(gs[j], os[j]);
            s1[j] += g;
            s2[j] += g * (f64_of(xs[j]) - mean);
        }
    }
    let (mut t1, mut t2) = (0.0, 0.0);
    for ((&x, &g), &y) in xr.iter().zip(gr).zip(or) {
        let g = masked::<T, MASK>(g, y);
        t1 += g;
        t2 += g * (f64_of(x) - mean);
    }
    [s1.iter().sum::<f64>() + t1, s2.iter().sum::<f64>() + t2]
}

fn check_args(
    op: &'static str,
    x: &Tensor,
    residual: Option<&Tensor>,
    a: &BatchNormArgs,
) -> Result<Dims> {
    let xd = x.dtype();
    if !xd.is_float() {
        return Err(Error::dtype(
            op,
            "a float dtype (f64, f32, f16, bf16) for x",
            xd,
        ));
    }
    if x.rank() < 2 {
        return Err(Error::shape(
            op,
            format!(
                "x must be [N, C, ...] (at least 2 dims), got {:?}",
                x.dims()
            ),
        ));
    }
    let d = Dims {
        n: x.dims()[0],
        c: x.dims()[1],
        s: x.dims()[2..].iter().product(),
    };
    let param_ok =
        |t: DType| t == xd || (t == DType::F32 && matches!(xd, DType::F16 | DType::BF16));
    for (name, t) in [
        ("weight", a.weight),
        ("bias", a.bias),
        ("running_mean", a.running_mean),
        ("running_var", a.running_var),
    ] {
        if t.dims() != [d.c] {
            return Err(Error::shape(
                op,
                format!(
                    "{name} must be [{}] (x's channel dim 1 of {:?}), got {:?}",
                    d.c,
                    x.dims(),
                    t.dims()
                ),
            ));
        }
        if !param_ok(t.dtype()) {
            let expected = if xd == DType::F32 || xd == DType::F64 {
                format!("{xd} for {name} (like x)")
            } else {
                format!("{xd} or f32 for {name} (x is {xd})")
            };
            return Err(Error::dtype(op, expected, t.dtype()));
        }
    }
    if a.weight.dtype() != a.bias.dtype() {
        return Err(Error::dtype(
            op,
            format!("{} for bias (like weight)", a.weight.dtype()),
            a.bias.dtype(),
        ));
    }
    if let Some(r) = residual {
        if r.dims() != x.dims() {
            return Err(Error::shape(
                op,
                format!("residual {:?} must have x's shape {:?}", r.dims(), x.dims()),
            ));
        }
        if r.dtype() != xd {
            return Err(Error::dtype(
                op,
                format!("{xd} for residual (like x)"),
                r.dtype(),
            ));
        }
    }
    if !(a.eps.is_finite() && a.eps >= 0.0) {
        return Err(Error::arg(
            op,
            format!("eps must be finite and >= 0, got {}", a.eps),
        ));
    }
    if !a.momentum.is_finite() {
        return Err(Error::arg(
            op,
            format!("momentum must be finite, got {}", a.momentum),
        ));
    }
    if a.training && d.n * d.s <= 1 {
        return Err(Error::arg(
            op,
            format!(
                "training needs more than one value per channel, got input shape {:?}",
                x.dims()
            ),
        ));
    }
    Ok(d)
}

fn batch_norm_impl(
    x: &Tensor,
    residual: Option<&Tensor>,
    a: &BatchNormArgs,
    fuse: Fuse,
) -> Result<BatchNormOutput> {
    let op = fuse.name();
    let d = check_args(op, x, residual, a)?;
    let m = (d.n * d.s) as f64;
    let weight = a.weight.to_vec_f64();
    let bias = a.bias.to_vec_f64();

    let out_dtype = x.dtype();
    let (out, mean, invstd, running) = dispatch_float!(op, out_dtype, T => {
        let xd = x.float_data::<T>()?;
        let (mean, var, running) = if a.training {
            // shift each channel by its first element (see shifted_moments)
            let shift: Vec<f64> = (0..d.c).map(|c| f64_of(xd[c * d.s])).collect();
            let sums = channel_reduce(d, |c, st| shifted_moments(&xd[st..st + d.s], shift[c]));
            let (mut mean, mut var) = (vec![0.0; d.c], vec![0.0; d.c]);
            for c in 0..d.c {
                let mu = sums[c][0] / m;
                mean[c] = shift[c] + mu;
                var[c] = (sums[c][1] / m - mu * mu).max(0.0);
            }
            let (rm, rv) = (a.running_mean.to_vec_f64(), a.running_var.to_vec_f64());
            let mo = a.momentum;
            let new_rm: Vec<f64> = (0..d.c).map(|c| (1.0 - mo) * rm[c] + mo * mean[c]).collect();
            let new_rv: Vec<f64> =
                (0..d.c).map(|c| (1.0 - mo) * rv[c] + mo * var[c] * m / (m - 1.0)).collect();
            let running = (
                Tensor::from_compute(new_rm, &[d.c], a.running_mean.dtype()),
                Tensor::from_compute(new_rv, &[d.c], a.running_var.dtype()),
            );
            (mean, var, Some(running))
        } else {
            (a.running_mean.to_vec_f64(), a.running_var.to_vec_f64(), None)
        };
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + a.eps).sqrt()).collect();
        // (x - mean) * scale + bias in T: subtracting first keeps precision
        // when |mean| >> std (folding the mean into the shift would not).
        let mean_t: Vec<T> = mean.iter().map(|&v| T::from_f64(v)).collect();
        let scale_t: Vec<T> = (0..d.c).map(|c| T::from_f64(weight[c] * invstd[c])).collect();
        let bias_t: Vec<T> = bias.iter().map(|&v| T::from_f64(v)).collect();
        let res = residual.map(|r| r.float_data::<T>()).transpose()?;
        let mut out = vec![T::zero(); x.numel()];
        plane_map(&mut out, d, |c, st, o| {
            let (mu, sc, b) = (mean_t[c], scale_t[c], bias_t[c]);
            let xs = &xd[st..st + o.len()];
            match (fuse, &res) {
                (Fuse::None, _) => o.iter_mut().zip(xs).for_each(|(o, &v)| *o = (v - mu) * sc + b),
                (Fuse::Relu, _) => {
                    o.iter_mut().zip(xs).for_each(|(o, &v)| *o = ((v - mu) * sc + b).max(T::zero()))
                }
                (Fuse::AddRelu, Some(r)) => {
                    let rs = &r[st..st + o.len()];
                    for ((o, &v), &rv) in o.iter_mut().zip(xs).zip(rs) {
                        *o = ((v - mu) * sc + b + rv).max(T::zero());
                    }
                }
                (Fuse::AddRelu, None) => unreachable!("add variant always has a residual"),
            }
        });
        (Tensor::from_compute(out, x.dims(), out_dtype), mean, invstd, running)
    });

    let mut inputs: Vec<&Tensor> = vec![x, a.weight, a.bias];
    inputs.extend(residual);
    let needs: Vec<bool> = inputs.iter().map(|t| t.requires_grad()).collect();
    if !needs.iter().any(|&b| b) {
        return Ok(BatchNormOutput { out, running });
    }
    let saved = Saved {
        x: x.detach(),
        out: (fuse != Fuse::None).then(|| out.detach()),
        mean,
        invstd,
        weight,
        w_dtype: a.weight.dtype(),
        training: a.training,
        d,
        need_x: needs[0],
        need_w: needs[1],
        need_b: needs[2],
        need_r: needs.get(3).copied().unwrap_or(false),
        fuse,
    };
    let out = record(out, op, &inputs, move |g| saved.backward(g));
    Ok(BatchNormOutput { out, running })
}

/// What backward needs: x, the output (for the ReLU mask) and per-channel stats.
struct Saved {
    x: Tensor,
    out: Option<Tensor>,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    weight: Vec<f64>,
    w_dtype: DType,
    training: bool,
    d: Dims,
    need_x: bool,
    need_w: bool,
    need_b: bool,
    need_r: bool,
    fuse: Fuse,
}

impl Saved {
    fn backward(self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let op = self.fuse.name();
        let xdt = self.x.dtype();
        dispatch_float!(op, xdt, T => self.backward_t::<T>(g))
    }

    fn backward_t<T: Float>(self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let d = self.d;
        let m = (d.n * d.s) as f64;
        let xd = self.x.float_data::<T>()?;
        let gd = g.float_data::<T>()?;
        let od = self.out.as_ref().map(|o| o.float_data::<T>()).transpose()?;
        let masked = od.is_some();
        let od: &[T] = od.as_deref().unwrap_or(&[]);
        let (mean, invstd) = (&self.mean, &self.invstd);

        let need_sums = self.need_w || self.need_b || (self.training && self.need_x);
        let sums = if need_sums {
            channel_reduce(d, |c, st| {
                let r = st..st + d.s;
                if masked {
                    grad_moments::<T, true>(&xd[r.clone()], &gd[r.clone()], &od[r], mean[c])
                } else {
                    grad_moments::<T, false>(&xd[r.clone()], &gd[r.clone()], &gd[r], mean[c])
                }
            })
        } else {
            Vec::new()
        };
        let grad_w = self.need_w.then(|| {
            let v: Vec<f64> = (0..d.c).map(|c| sums[c][1] * invstd[c]).collect();
            Tensor::from_compute(v, &[d.c], self.w_dtype)
        });
        let grad_b = self.need_b.then(|| {
            let v: Vec<f64> = sums.iter().map(|s| s[0]).collect();
            Tensor::from_compute(v, &[d.c], self.w_dtype)
        });

        let grad_x = self.need_x.then(|| {
            // dx = a*dy' + k*(x - mean) + b, per channel; in eval k = b = 0.
            let coef: Vec<[T; 4]> = (0..d.c)
                .map(|c| {
                    let a = self.weight[c] * invstd[c];
                    let (k, b) = if self.training {
                        (
                            -a * invstd[c] * invstd[c] * sums[c][1] / m,
                            -a * sums[c][0] / m,
                        )
                    } else {
                        (0.0, 0.0)
                    };
                    [
                        T::from_f64(a),
                        T::from_f64(k),
                        T::from_f64(b),
                        T::from_f64(mean[c]),
                    ]
                })
                .collect();
            let mut dx = vec![T::zero(); xd.len()];
            plane_map(&mut dx, d, |c, st, o| {
                let [a, k, b, mu] = coef[c];
                let (xs, gs) = (&xd[st..st + o.len()], &gd[st..st + o.len()]);
                if masked {
                    let os = &od[st..st + o.len()];
                    for (((o, &x), &g), &y) in o.iter_mut().zip(xs).zip(gs).zip(os) {
                        let g = if y > T::zero() { g } else { T::zero() };
                        *o = a * g + k * (x - mu) + b;
                    }
                } else {
                    for ((o, &x), &g) in o.iter_mut().zip(xs).zip(gs) {
                        *o = a * g + k * (x - mu) + b;
                    }
                }
            });
            Tensor::from_compute(dx, self.x.dims(), self.x.dtype())
        });

        let mut grads = vec![grad_x, grad_w, grad_b];
        if self.fuse == Fuse::AddRelu {
            grads.push(self.need_r.then(|| {
                let mut dr = vec![T::zero(); gd.len()];
                super::par_chunks(&mut dr, |st, o| {
                    let (gs, os) = (&gd[st..st + o.len()], &od[st..st + o.len()]);
                    for ((o, &g), &y) in o.iter_mut().zip(gs).zip(os) {
                        *o = if y > T::zero() { g } else { T::zero() };
                    }
                });
                Tensor::from_compute(dr, self.x.dims(), self.x.dtype())
            }));
        }
        Ok(grads)
    }
}

impl Tensor {
    /// x is [N, C], [N, C, L] or [N, C, H, W]; statistics over every dim but 1.
    pub fn batch_norm(&self, a: &BatchNormArgs) -> Result<BatchNormOutput> {
        batch_norm_impl(self, None, a, Fuse::None)
    }

    /// relu(batch_norm(x)) in one pass (forward and backward), the contract
    /// the CUDA fused kernel will implement.
    pub fn batch_norm_relu(&self, a: &BatchNormArgs) -> Result<BatchNormOutput> {
        batch_norm_impl(self, None, a, Fuse::Relu)
    }

    /// relu(batch_norm(x) + residual), residual has x's shape and dtype.
    pub fn batch_norm_add_relu(
        &self,
        residual: &Tensor,
        a: &BatchNormArgs,
    ) -> Result<BatchNormOutput> {
        batch_norm_impl(self, Some(residual), a, Fuse::AddRelu)
    }
}
