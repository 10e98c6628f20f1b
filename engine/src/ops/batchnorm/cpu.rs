//! Batch normalisation on the CPU.
//!
//! x is viewed as [N, C, S] (S = product of the spatial dims), so each (n, c)
//! plane of S elements is contiguous. Per-channel reductions run over blocks
//! of channels in parallel and accumulate in f64; elementwise passes run over
//! planes in parallel. Every partial sum is combined in a fixed order, so
//! results do not depend on thread scheduling.

use super::{BatchNormArgs, BatchNormOps, BnGeom, Fuse, Needs};
use crate::backend::{Cpu, Saved};
use crate::ops::elementwise::cpu::{relu, relu_grad};
use crate::ops::{par_chunks, par_filled};
use crate::{dispatch_float, DType, Element, Float, Result, Tensor};
use rayon::prelude::*;

/// Elements per parallel task: big enough to amortise rayon, small enough
/// to spread a [64, 512, 4, 4] tensor over the cores.
const GRAIN: usize = 1 << 14;
/// f64 accumulator lanes: independent chains let LLVM vectorise the sums.
const LANES: usize = 8;

#[inline(always)]
fn f64_of<T: Float>(v: T) -> f64 {
    Element::to_f64(v)
}

/// Per-channel (Σp, Σp·q) with q = x - center[c] and p = q (no `dy`: the
/// shifted moments of x) or p = dy (the gradient sums). Channel blocks run
/// in parallel; within a block, samples are visited in order, so the sums
/// are reproducible.
fn channel_moments<T: Float>(
    d: &BnGeom,
    x: &[T],
    dy: Option<&[T]>,
    center: &[f64],
) -> Vec<[f64; 2]> {
    let block = (GRAIN / d.s.max(1) / d.n.max(1)).clamp(1, d.c.max(1));
    let n_blocks = d.c.div_ceil(block);
    let run = |b: usize| {
        let (c0, c1) = (b * block, ((b + 1) * block).min(d.c));
        let mut acc = vec![[0.0f64; 2]; c1 - c0];
        for n in 0..d.n {
            let (st, en) = ((n * d.c + c0) * d.s, (n * d.c + c1) * d.s);
            if d.s == 1 {
                // [N, C]: one row segment, channel = column (vectorises over c)
                let ctr = &center[c0..c1];
                match dy {
                    None => moments_row::<T, false>(&mut acc, &x[st..en], &x[st..en], ctr),
                    Some(g) => moments_row::<T, true>(&mut acc, &x[st..en], &g[st..en], ctr),
                }
                continue;
            }
            for (i, a) in acc.iter_mut().enumerate() {
                let r = st + i * d.s..st + (i + 1) * d.s;
                let r = match dy {
                    None => moments_plane::<T, false>(&x[r.clone()], &x[r], center[c0 + i]),
                    Some(g) => moments_plane::<T, true>(&x[r.clone()], &g[r], center[c0 + i]),
                };
                a[0] += r[0];
                a[1] += r[1];
            }
        }
        acc
    };
    let parts: Vec<Vec<[f64; 2]>> = if n_blocks > 1 && d.n * d.c * d.s > GRAIN {
        (0..n_blocks).into_par_iter().map(run).collect()
    } else {
        (0..n_blocks).map(run).collect()
    };
    parts.concat()
}

/// (p, p·q) for one element, q = x - center, p = dy if DY else q.
#[inline(always)]
fn moment_terms<T: Float, const DY: bool>(x: T, dy: T, center: f64) -> (f64, f64) {
    let q = f64_of(x) - center;
    let p = if DY { f64_of(dy) } else { q };
    (p, p * q)
}

/// Sums over one plane in f64 lanes (independent chains); f32 planes take
/// the AVX2 path where the CPU has it (`avx2::moments_plane_f32`, the same
/// bits), since LLVM leaves this loop scalar.
fn moments_plane<T: Float, const DY: bool>(x: &[T], dy: &[T], center: f64) -> [f64; 2] {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == DType::F32 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: T is f32 (its DTYPE says so), so the slices are f32
        // slices; the CPU has AVX2 (checked).
        return unsafe {
            let (x, dy) = (crate::ops::as_f32(x), crate::ops::as_f32(dy));
            avx2::moments_plane_f32::<DY>(x, &dy[..x.len()], center)
        };
    }
    moments_plane_scalar::<T, DY>(x, dy, center)
}

/// `moments_plane` as plain Rust (any T; LLVM keeps it scalar).
fn moments_plane_scalar<T: Float, const DY: bool>(x: &[T], dy: &[T], center: f64) -> [f64; 2] {
    let (mut s1, mut s2) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (xc, gc) = (x.chunks_exact(LANES), dy.chunks_exact(LANES));
    let (xr, gr) = (xc.remainder(), gc.remainder());
    for (xs, gs) in xc.zip(gc) {
        for j in 0..LANES {
            let (p, pq) = moment_terms::<T, DY>(xs[j], gs[j], center);
            s1[j] += p;
            s2[j] += pq;
        }
    }
    let (mut t1, mut t2) = (0.0, 0.0);
    for (&x, &g) in xr.iter().zip(gr) {
        let (p, pq) = moment_terms::<T, DY>(x, g, center);
        t1 += p;
        t2 += pq;
    }
    [s1.iter().sum::<f64>() + t1, s2.iter().sum::<f64>() + t2]
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// `moments_plane` for f32 with AVX2: the LANES = 8 f64 chains held in
    /// two 4-wide registers, each lane fed the same elements in the same
    /// order with the same operations (convert, subtract, multiply, add;
    /// no FMA), then combined as the scalar code combines them. The same
    /// bits as the scalar loop (the unit test below compares them).
    ///
    /// # Safety
    /// The CPU must support AVX2; `dy.len() >= x.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn moments_plane_f32<const DY: bool>(
        x: &[f32],
        dy: &[f32],
        center: f64,
    ) -> [f64; 2] {
        debug_assert!(dy.len() >= x.len());
        let n = x.len() / LANES * LANES;
        let c = _mm256_set1_pd(center);
        let [mut s1a, mut s1b, mut s2a, mut s2b] = [_mm256_setzero_pd(); 4];
        // both halves of the 8 f32 values at s[i..], widened to f64
        macro_rules! wide {
            ($s:expr, $i:expr) => {{
                // SAFETY: i + 8 <= n <= the slice's length.
                let v = unsafe { _mm256_loadu_ps($s.as_ptr().add($i)) };
                (
                    _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                    _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
                )
            }};
        }
        for i in (0..n).step_by(LANES) {
            let (xa, xb) = wide!(x, i);
            let (qa, qb) = (_mm256_sub_pd(xa, c), _mm256_sub_pd(xb, c));
            let (pa, pb) = if DY { wide!(dy, i) } else { (qa, qb) };
            s1a = _mm256_add_pd(s1a, pa);
            s1b = _mm256_add_pd(s1b, pb);
            s2a = _mm256_add_pd(s2a, _mm256_mul_pd(pa, qa));
            s2b = _mm256_add_pd(s2b, _mm256_mul_pd(pb, qb));
        }
        let (mut s1, mut s2) = ([0.0f64; LANES], [0.0f64; LANES]);
        // SAFETY: each array holds 8 f64, two stores of 4 each.
        unsafe {
            _mm256_storeu_pd(s1.as_mut_ptr(), s1a);
            _mm256_storeu_pd(s1.as_mut_ptr().add(4), s1b);
            _mm256_storeu_pd(s2.as_mut_ptr(), s2a);
            _mm256_storeu_pd(s2.as_mut_ptr().add(4), s2b);
        }
        let (mut t1, mut t2) = (0.0, 0.0);
        for (&x, &g) in x[n..].iter().zip(&dy[n..]) {
            let q = x as f64 - center;
            let p = if DY { g as f64 } else { q };
            t1 += p;
            t2 += p * q;
        }
        [s1.iter().sum::<f64>() + t1, s2.iter().sum::<f64>() + t2]
    }
}

/// Adds one [N, C] row segment into per-channel accumulators.
fn moments_row<T: Float, const DY: bool>(acc: &mut [[f64; 2]], x: &[T], dy: &[T], center: &[f64]) {
    for (((a, &x), &g), &c) in acc.iter_mut().zip(x).zip(dy).zip(center) {
        let (p, pq) = moment_terms::<T, DY>(x, g, c);
        a[0] += p;
        a[1] += pq;
    }
}

/// Per-channel coefficients of `affine_pass`: o = (x - m)·k + b + a·e.
#[derive(Clone, Copy)]
struct Affine<T> {
    m: T,
    k: T,
    b: T,
    a: T,
}

#[inline(always)]
fn affine<T: Float, const E: bool, const RELU: bool>(x: T, e: T, c: &Affine<T>) -> T {
    let v = (x - c.m) * c.k + c.b;
    let v = if E { v + c.a * e } else { v };
    if RELU {
        relu(v)
    } else {
        v
    }
}

/// The `e` operand of `affine_pass`.
#[derive(Clone, Copy)]
enum Extra<'a, T> {
    None,
    Slice(&'a [T]),
    /// `out` already holds e (dx overwrites the masked dy' it came from).
    InPlace,
}

/// The one elementwise pass of both directions: forward is
/// relu?((x - mean)·scale + bias (+ residual)), backward is
/// dx = (x - mean)·k + b + a·dy'. Planes (or [N, C] rows) are written in
/// parallel.
fn affine_pass<T: Float>(
    d: &BnGeom,
    out: &mut [T],
    x: &[T],
    e: Extra<T>,
    coef: &[Affine<T>],
    relu: bool,
) {
    fn plane<T: Float, const E: bool, const RELU: bool>(
        o: &mut [T],
        x: &[T],
        e: &[T],
        c: &Affine<T>,
    ) {
        for ((o, &x), &e) in o.iter_mut().zip(x).zip(e) {
            *o = affine::<T, E, RELU>(x, e, c);
        }
    }
    fn row<T: Float, const E: bool, const RELU: bool>(
        o: &mut [T],
        x: &[T],
        e: &[T],
        c: &[Affine<T>],
    ) {
        for (((o, &x), &e), c) in o.iter_mut().zip(x).zip(e).zip(c) {
            *o = affine::<T, E, RELU>(x, e, c);
        }
    }
    fn plane_in_place<T: Float>(o: &mut [T], x: &[T], c: &Affine<T>) {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = affine::<T, true, false>(x, *o, c);
        }
    }
    fn row_in_place<T: Float>(o: &mut [T], x: &[T], c: &[Affine<T>]) {
        for ((o, &x), c) in o.iter_mut().zip(x).zip(c) {
            *o = affine::<T, true, false>(x, *o, c);
        }
    }
    if out.is_empty() {
        return;
    }
    // [N, C] inputs go row by row (channel = column); others plane by plane
    let seg = if d.s == 1 { d.c } else { d.s };
    let segs_per_task = (GRAIN / seg).max(1);
    let task = |t: usize, chunk: &mut [T]| {
        for (j, o) in chunk.chunks_mut(seg).enumerate() {
            let st = (t * segs_per_task + j) * seg;
            let xs = &x[st..st + seg];
            let es = match e {
                Extra::Slice(e) => &e[st..st + seg],
                _ => xs,
            };
            let has_e = matches!(e, Extra::Slice(_));
            if d.s == 1 {
                match (e, has_e, relu) {
                    (Extra::InPlace, ..) => row_in_place(o, xs, coef),
                    (_, false, false) => row::<T, false, false>(o, xs, es, coef),
                    (_, false, true) => row::<T, false, true>(o, xs, es, coef),
                    (_, true, false) => row::<T, true, false>(o, xs, es, coef),
                    (_, true, true) => row::<T, true, true>(o, xs, es, coef),
                }
            } else {
                let c = &coef[(st / seg) % d.c];
                match (e, has_e, relu) {
                    (Extra::InPlace, ..) => plane_in_place(o, xs, c),
                    (_, false, false) => plane::<T, false, false>(o, xs, es, c),
                    (_, false, true) => plane::<T, false, true>(o, xs, es, c),
                    (_, true, false) => plane::<T, true, false>(o, xs, es, c),
                    (_, true, true) => plane::<T, true, true>(o, xs, es, c),
                }
            }
        }
    };
    if out.len() <= GRAIN {
        task(0, out);
    } else {
        out.par_chunks_mut(segs_per_task * seg)
            .enumerate()
            .for_each(|(t, c)| task(t, c));
    }
}

/// What the CPU backward needs: x, the output (for the ReLU mask) and the
/// per-channel statistics and weight.
struct CpuSaved {
    x: Tensor,
    out: Option<Tensor>,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    weight: Vec<f64>,
    w_dtype: DType,
}

impl BatchNormOps for Cpu {
    fn batch_norm(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        a: &BatchNormArgs,
        d: &BnGeom,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>, Saved)> {
        crate::trace::kernel("batchnorm");
        let m = (d.n * d.s) as f64;
        let weight = a.weight.to_vec_f64()?;
        let bias = a.bias.to_vec_f64()?;
        let out_dtype = x.dtype();
        let (out, mean, invstd, running) = dispatch_float!(d.fuse.name(), out_dtype, T => {
            let xd = x.float_data::<T>()?;
            let (mean, var, running) = if d.training {
                // One pass over x: moments shifted by a sample of each channel
                // (its first element) are free of the E[x²]-E[x]² cancellation.
                let shift: Vec<f64> = (0..d.c).map(|c| f64_of(xd[c * d.s])).collect();
                let sums = channel_moments(d, &xd, None, &shift);
                let (mut mean, mut var) = (vec![0.0; d.c], vec![0.0; d.c]);
                for c in 0..d.c {
                    let mu = sums[c][0] / m;
                    mean[c] = shift[c] + mu;
                    var[c] = (sums[c][1] / m - mu * mu).max(0.0);
                }
                let (rm, rv) = (a.running_mean.to_vec_f64()?, a.running_var.to_vec_f64()?);
                let mo = d.momentum;
                let new_rm: Vec<f64> = (0..d.c).map(|c| (1.0 - mo) * rm[c] + mo * mean[c]).collect();
                let new_rv: Vec<f64> =
                    (0..d.c).map(|c| (1.0 - mo) * rv[c] + mo * var[c] * m / (m - 1.0)).collect();
                let running = (
                    Tensor::from_compute(new_rm, &[d.c], a.running_mean.dtype()),
                    Tensor::from_compute(new_rv, &[d.c], a.running_var.dtype()),
                );
                (mean, var, Some(running))
            } else {
                (a.running_mean.to_vec_f64()?, a.running_var.to_vec_f64()?, None)
            };
            let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + d.eps).sqrt()).collect();
            // (x - mean) * scale + bias in T: subtracting first keeps precision
            // when |mean| >> std (folding the mean into the shift would not).
            let coef: Vec<Affine<T>> = (0..d.c)
                .map(|c| Affine {
                    m: T::from_f64(mean[c]),
                    k: T::from_f64(weight[c] * invstd[c]),
                    b: T::from_f64(bias[c]),
                    a: T::from_f64(1.0),
                })
                .collect();
            let res = residual.map(|r| r.float_data::<T>()).transpose()?;
            let extra = res.as_deref().map_or(Extra::None, Extra::Slice);
            let mut out = par_filled(xd.len(), T::from_f64(0.0));
            affine_pass(d, &mut out, &xd, extra, &coef, d.fuse != Fuse::None);
            (Tensor::from_compute(out, x.dims(), out_dtype), mean, invstd, running)
        });
        let saved = CpuSaved {
            x: x.detach(),
            out: (d.fuse != Fuse::None).then(|| out.detach()),
            mean,
            invstd,
            weight,
            w_dtype: a.weight.dtype(),
        };
        Ok((out, running, Box::new(saved)))
    }

    fn batch_norm_backward(
        &self,
        dy: &Tensor,
        saved: &Saved,
        d: &BnGeom,
        needs: Needs,
    ) -> Result<Vec<Option<Tensor>>> {
        crate::trace::kernel("batchnorm");
        let s: &CpuSaved = saved
            .downcast_ref()
            .expect("the CPU batch_norm saves CpuSaved");
        dispatch_float!(d.fuse.name(), s.x.dtype(), T => backward::<T>(s, dy, d, needs))
    }
}

fn backward<T: Float>(
    s: &CpuSaved,
    g: &Tensor,
    d: &BnGeom,
    [need_x, need_w, need_b, need_r]: Needs,
) -> Result<Vec<Option<Tensor>>> {
    let m = (d.n * d.s) as f64;
    let xd = s.x.float_data::<T>()?;
    let gd = g.float_data::<T>()?;
    // dy' = dy masked by ReLU's backward (relu_grad), once: as its own loop it vectorises
    // (a select fused into the reductions becomes a branch per element),
    // and it is the residual's gradient as well.
    let masked: Option<Vec<T>> = match &s.out {
        None => None,
        Some(o) => {
            let od = o.float_data::<T>()?;
            let mut dm = par_filled(gd.len(), T::zero());
            par_chunks(&mut dm, |st, o| {
                let (gs, os) = (&gd[st..st + o.len()], &od[st..st + o.len()]);
                for ((o, &g), &y) in o.iter_mut().zip(gs).zip(os) {
                    *o = relu_grad(y, g);
                }
            });
            Some(dm)
        }
    };
    let (mean, invstd) = (&s.mean, &s.invstd);

    let need_sums = need_w || need_b || (d.training && need_x);
    let sums = if need_sums {
        channel_moments(d, &xd, Some(masked.as_deref().unwrap_or(&gd)), mean)
    } else {
        Vec::new()
    };
    let grad_w = need_w.then(|| {
        let v: Vec<f64> = (0..d.c).map(|c| sums[c][1] * invstd[c]).collect();
        Tensor::from_compute(v, &[d.c], s.w_dtype)
    });
    let grad_b = need_b.then(|| {
        let v: Vec<f64> = sums.iter().map(|s| s[0]).collect();
        Tensor::from_compute(v, &[d.c], s.w_dtype)
    });

    // The residual's gradient is dy' itself.
    let need_r = d.fuse == Fuse::AddRelu && need_r;
    let mut grad_r = None;
    let mut grad_x = None;
    if need_x {
        // dx = (w·invstd/M)·(M·dy' - Σdy' - xhat·Σ(dy'·xhat))
        //    = a·dy' + k·(x - mean) + b per channel; in eval k = b = 0.
        let coef: Vec<Affine<T>> = (0..d.c)
            .map(|c| {
                let a = s.weight[c] * invstd[c];
                let (k, b) = if d.training {
                    (
                        -a * invstd[c] * invstd[c] * sums[c][1] / m,
                        -a * sums[c][0] / m,
                    )
                } else {
                    (0.0, 0.0)
                };
                Affine {
                    m: T::from_f64(mean[c]),
                    k: T::from_f64(k),
                    b: T::from_f64(b),
                    a: T::from_f64(a),
                }
            })
            .collect();
        let dx = match masked {
            // no one else needs dy': overwrite it (saves a buffer)
            Some(mut dm) if !need_r => {
                affine_pass(d, &mut dm, &xd, Extra::InPlace, &coef, false);
                dm
            }
            other => {
                let mut dx = par_filled(xd.len(), T::zero());
                affine_pass(
                    d,
                    &mut dx,
                    &xd,
                    Extra::Slice(other.as_deref().unwrap_or(&gd)),
                    &coef,
                    false,
                );
                grad_r = other.filter(|_| need_r);
                dx
            }
        };
        grad_x = Some(Tensor::from_compute(dx, s.x.dims(), s.x.dtype()));
    } else if need_r {
        grad_r = masked;
    }

    let mut grads = vec![grad_x, grad_w, grad_b];
    if d.fuse == Fuse::AddRelu {
        grads.push(grad_r.map(|dr| Tensor::from_compute(dr, s.x.dims(), s.x.dtype())));
    }
    Ok(grads)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX2 sums equal the scalar ones bit for bit, at every length
    /// (tails included), with and without dy.
    #[test]
    fn avx2_moments_equal_the_scalar_loop_bitwise() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut rng = crate::Rng::new(3);
        for len in (0..40).chain([783, 784, 4096 + 5]) {
            let x: Vec<f32> = (0..len).map(|_| rng.normal() as f32 * 3.0 + 1.5).collect();
            let g: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
            let center = x.first().map_or(0.0, |&v| v as f64);
            // SAFETY: checked above that the CPU has AVX2.
            let (a, b) = unsafe {
                (
                    avx2::moments_plane_f32::<false>(&x, &g, center),
                    avx2::moments_plane_f32::<true>(&x, &g, center),
                )
            };
            let (sa, sb) = (
                moments_plane_scalar::<f32, false>(&x, &g, center),
                moments_plane_scalar::<f32, true>(&x, &g, center),
            );
            for (v, w) in a.iter().chain(&b).zip(sa.iter().chain(&sb)) {
                assert_eq!(v.to_bits(), w.to_bits(), "len {len}: {v} vs {w}");
            }
        }
    }
}
