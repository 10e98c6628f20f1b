//! Pooling on the CPU, parallel over the N*C planes of a row-major
//! [N, C, H, W] tensor.

use super::{PoolGeom, PoolOps, Windows};
use crate::backend::{Cpu, Saved};
use crate::ops::par_filled;
use crate::{dispatch_float, Float, Result, Tensor};
use rayon::prelude::*;

/// Planes per rayon task: enough work to pay for the task.
fn min_planes(plane_len: usize) -> usize {
    (4096 / plane_len.max(1)).max(1)
}

/// The window of one output position along one axis: input `lo..hi`, and
/// this axis' factor of the divisor (averaging pools only).
#[derive(Clone, Copy)]
struct Span {
    lo: usize,
    hi: usize,
    count: usize,
}

/// Sliding windows along an axis of `size`; `include_pad` counts padded
/// positions in the divisor (clipped to the padded extent, as PyTorch).
fn sliding(size: usize, out: usize, k: usize, s: usize, p: usize, include_pad: bool) -> Vec<Span> {
    (0..out)
        .map(|o| {
            let start = (o * s) as isize - p as isize;
            let padded_end = (start + k as isize).min((size + p) as isize);
            let (lo, hi) = (
                start.max(0) as usize,
                (start + k as isize).clamp(0, size as isize) as usize,
            );
            let count = if include_pad {
                (padded_end - start) as usize
            } else {
                hi.saturating_sub(lo)
            };
            Span {
                lo,
                hi: hi.max(lo),
                count,
            }
        })
        .collect()
}

/// PyTorch's adaptive bins: `floor(i*size/out) .. ceil((i+1)*size/out)`.
fn adaptive(size: usize, out: usize) -> Vec<Span> {
    (0..out)
        .map(|i| {
            let (lo, hi) = (i * size / out, ((i + 1) * size).div_ceil(out));
            Span {
                lo,
                hi,
                count: hi - lo,
            }
        })
        .collect()
}

/// Max over each window and the flat index of its first maximum in window
/// order (the last NaN, if any: PyTorch's rule). `sliding`: the kernel
/// width, stride and padding of sliding windows' columns; where the CPU has
/// AVX2, f32 rows of windows the padding does not clip take
/// `avx2::max_run_f32` (the same results; LLVM keeps the window loop
/// scalar and branchy, about 3 ns an element).
fn max_forward<T: Float>(
    x: &[T],
    hw: [usize; 2],
    rows: &[Span],
    cols: &[Span],
    sliding: Option<[usize; 3]>,
) -> (Vec<T>, Vec<usize>) {
    let (plane, ow) = (hw[0] * hw[1], cols.len());
    let oplane = rows.len() * ow;
    let planes = x.len() / plane.max(1);
    // whole vectors of unclipped windows a row; the rest one by one
    let run = sliding
        .filter(|_| vector_max(T::DTYPE, plane))
        .map_or(0..0, |ksp| unclipped(hw[1], ow, ksp));
    let run = run.start..run.start + run.len() / 8 * 8;
    let mut out = par_filled(planes * oplane, T::zero());
    let mut idx = par_filled(planes * oplane, 0usize);
    out.par_chunks_mut(oplane.max(1))
        .zip(idx.par_chunks_mut(oplane.max(1)))
        .zip(x.par_chunks(plane.max(1)))
        .with_min_len(min_planes(oplane))
        .for_each(|((o, ix), xp)| {
            for (r, (o, ix)) in rows.iter().zip(o.chunks_mut(ow).zip(ix.chunks_mut(ow))) {
                #[cfg(target_arch = "x86_64")]
                if let (Some([k, s, _]), false) = (sliding, run.is_empty()) {
                    // SAFETY: `vector_max` said T is f32, the CPU has AVX2
                    // and a plane's indices fit an i32; the run's windows
                    // lie inside the row (`unclipped`).
                    unsafe {
                        avx2::max_run_f32(
                            crate::ops::as_f32(xp),
                            hw[1],
                            [r.lo, r.hi],
                            [cols[run.start].lo, k, s],
                            crate::ops::as_f32_mut(&mut o[run.clone()]),
                            &mut ix[run.clone()],
                        );
                    }
                }
                for (ci, c) in cols.iter().enumerate() {
                    if !run.contains(&ci) {
                        (o[ci], ix[ci]) = max_window(xp, hw[1], r, c);
                    }
                }
            }
        });
    (out, idx)
}

/// Whether the vector max pool can run: f32 planes whose indices fit an
/// i32, on a CPU with AVX2.
fn vector_max(dtype: crate::DType, plane: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        dtype == crate::DType::F32
            && plane <= i32::MAX as usize
            && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dtype, plane);
        false
    }
}

/// The maximum of one window and its flat index: the first maximum in
/// window order wins ties; NaN propagates, the last NaN winning (as PyTorch).
fn max_window<T: Float>(xp: &[T], w: usize, r: &Span, c: &Span) -> (T, usize) {
    let (mut best, mut bi) = (T::neg_infinity(), r.lo * w + c.lo);
    for y in r.lo..r.hi {
        for (xx, &v) in xp[y * w..][c.lo..c.hi].iter().enumerate() {
            if v > best || v.is_nan() {
                best = v;
                bi = y * w + c.lo + xx;
            }
        }
    }
    (best, bi)
}

/// The output columns of `ow` sliding windows (kernel width `k`, stride
/// `s`, padding `p`) over a row of `w` that the padding does not clip: the
/// window of column `o` starts at `o*s - p`.
fn unclipped(w: usize, ow: usize, [k, s, p]: [usize; 3]) -> std::ops::Range<usize> {
    if s == 0 || k == 0 || w + p < k {
        return 0..0;
    }
    let first = p.div_ceil(s);
    let end = ((w + p - k) / s + 1).min(ow);
    first..end.max(first)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::max_window`] for a run of `o.len()` (a multiple of 8)
    /// windows of one output row, over input rows `rows`, starting at input
    /// column `lo`, `s` apart, `k` wide, none clipped: 8 windows a vector,
    /// each window offset compared in window order (greater, or NaN, takes
    /// it), so with the same values and indices.
    ///
    /// # Safety
    /// The CPU has AVX2; every window lies inside `xp`'s rows of `w`; the
    /// indices fit an i32.
    #[target_feature(enable = "avx2")]
    pub unsafe fn max_run_f32(
        xp: &[f32],
        w: usize,
        rows: [usize; 2],
        [lo, k, s]: [usize; 3],
        o: &mut [f32],
        ix: &mut [usize],
    ) {
        debug_assert_eq!(o.len() % 8, 0);
        debug_assert!(rows[1] <= xp.len() / w.max(1) && lo + (o.len() - 1) * s + k <= w);
        let s32 = s as i32;
        let lanes = _mm256_setr_epi32(0, s32, 2 * s32, 3 * s32, 4 * s32, 5 * s32, 6 * s32, 7 * s32);
        for (j, (o, ix)) in o
            .chunks_exact_mut(8)
            .zip(ix.chunks_exact_mut(8))
            .enumerate()
        {
            let first = lo + j * 8 * s;
            let mut best = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut at = _mm256_add_epi32(_mm256_set1_epi32((rows[0] * w + first) as i32), lanes);
            for y in rows[0]..rows[1] {
                for dx in 0..k {
                    let start = y * w + first + dx;
                    // SAFETY: the 8 elements start + l*s lie in this row
                    // (the caller's promise).
                    let v = unsafe { _mm256_i32gather_ps::<4>(xp.as_ptr().add(start), lanes) };
                    let take = _mm256_or_ps(
                        _mm256_cmp_ps::<_CMP_GT_OQ>(v, best),
                        _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
                    );
                    best = _mm256_blendv_ps(best, v, take);
                    let here = _mm256_add_epi32(_mm256_set1_epi32(start as i32), lanes);
                    at = _mm256_castps_si256(_mm256_blendv_ps(
                        _mm256_castsi256_ps(at),
                        _mm256_castsi256_ps(here),
                        take,
                    ));
                }
            }
            let mut found = [0i32; 8];
            // SAFETY: `o` and `found` hold 8 elements each.
            unsafe {
                _mm256_storeu_ps(o.as_mut_ptr(), best);
                _mm256_storeu_si256(found.as_mut_ptr().cast(), at);
            }
            for (i, f) in ix.iter_mut().zip(found) {
                *i = f as usize;
            }
        }
    }
}

fn max_backward<T: Float>(dy: &[T], idx: &[usize], plane: usize, oplane: usize) -> Vec<T> {
    let planes = dy.len() / oplane.max(1);
    let mut dx = par_filled(planes * plane, T::zero());
    dx.par_chunks_mut(plane.max(1))
        .zip(
            dy.par_chunks(oplane.max(1))
                .zip(idx.par_chunks(oplane.max(1))),
        )
        .with_min_len(min_planes(oplane))
        .for_each(|(d, (g, ix))| {
            for (&i, &v) in ix.iter().zip(g) {
                d[i] += v;
            }
        });
    dx
}

/// Window means; `rows`/`cols` give each output's window and divisor.
fn avg_forward<T: Float>(x: &[T], hw: [usize; 2], rows: &[Span], cols: &[Span]) -> Vec<T> {
    let (plane, oplane) = (hw[0] * hw[1], rows.len() * cols.len());
    let planes = x.len() / plane.max(1);
    let mut out = par_filled(planes * oplane, T::zero());
    out.par_chunks_mut(oplane.max(1))
        .zip(x.par_chunks(plane.max(1)))
        .with_min_len(min_planes(oplane))
        .for_each(|(o, xp)| {
            let mut k = 0;
            for r in rows {
                for c in cols {
                    let mut s = T::zero();
                    for y in r.lo..r.hi {
                        s += xp[y * hw[1]..][c.lo..c.hi].iter().copied().sum::<T>();
                    }
                    o[k] = s / T::from_usize(r.count * c.count);
                    k += 1;
                }
            }
        });
    out
}

fn avg_backward<T: Float>(dy: &[T], hw: [usize; 2], rows: &[Span], cols: &[Span]) -> Vec<T> {
    let (plane, oplane) = (hw[0] * hw[1], rows.len() * cols.len());
    let planes = dy.len() / oplane.max(1);
    let mut dx = par_filled(planes * plane, T::zero());
    dx.par_chunks_mut(plane.max(1))
        .zip(dy.par_chunks(oplane.max(1)))
        .with_min_len(min_planes(oplane))
        .for_each(|(d, g)| {
            let mut k = 0;
            for r in rows {
                for c in cols {
                    let v = g[k] / T::from_usize(r.count * c.count);
                    k += 1;
                    for y in r.lo..r.hi {
                        d[y * hw[1]..][c.lo..c.hi].iter_mut().for_each(|e| *e += v);
                    }
                }
            }
        });
    dx
}

/// The windows of each output row and column.
fn spans(g: &PoolGeom) -> (Vec<Span>, Vec<Span>) {
    match g.windows {
        Windows::Sliding {
            kernel: k,
            stride: s,
            padding: p,
            count_include_pad: inc,
        } => (
            sliding(g.h, g.oh, k[0], s[0], p[0], inc),
            sliding(g.w, g.ow, k[1], s[1], p[1], inc),
        ),
        Windows::Adaptive => (adaptive(g.h, g.oh), adaptive(g.w, g.ow)),
    }
}

impl PoolOps for Cpu {
    fn max_pool2d(&self, x: &Tensor, g: &PoolGeom) -> Result<(Tensor, Saved)> {
        crate::trace::kernel("pool");
        let (rows, cols) = spans(g);
        let dtype = x.dtype();
        dispatch_float!("max_pool2d", dtype, T => {
            let sliding = match g.windows {
                Windows::Sliding { kernel, stride, padding, .. } => Some([kernel[1], stride[1], padding[1]]),
                Windows::Adaptive => None,
            };
            let (o, idx) = max_forward::<T>(&x.float_data::<T>()?, [g.h, g.w], &rows, &cols, sliding);
            let y = Tensor::from_compute(o, &[g.n, g.c, g.oh, g.ow], dtype);
            Ok((y, Box::new(idx)))
        })
    }

    fn max_pool2d_backward(&self, dy: &Tensor, saved: &Saved, g: &PoolGeom) -> Result<Tensor> {
        crate::trace::kernel("pool");
        let idx: &Vec<usize> = saved.downcast_ref().expect("max_pool2d saves its argmax");
        let dtype = dy.dtype();
        dispatch_float!("max_pool2d", dtype, T => {
            let dx = max_backward::<T>(&dy.float_data::<T>()?, idx, g.h * g.w, g.oh * g.ow);
            Ok(Tensor::from_compute(dx, &[g.n, g.c, g.h, g.w], dtype))
        })
    }

    fn avg_pool2d(&self, x: &Tensor, g: &PoolGeom) -> Result<Tensor> {
        crate::trace::kernel("pool");
        let (rows, cols) = spans(g);
        let dtype = x.dtype();
        dispatch_float!("avg_pool2d", dtype, T => {
            let y = avg_forward::<T>(&x.float_data::<T>()?, [g.h, g.w], &rows, &cols);
            Ok(Tensor::from_compute(y, &[g.n, g.c, g.oh, g.ow], dtype))
        })
    }

    fn avg_pool2d_backward(&self, dy: &Tensor, g: &PoolGeom) -> Result<Tensor> {
        crate::trace::kernel("pool");
        let (rows, cols) = spans(g);
        let dtype = dy.dtype();
        dispatch_float!("avg_pool2d", dtype, T => {
            let dx = avg_backward::<T>(&dy.float_data::<T>()?, [g.h, g.w], &rows, &cols);
            Ok(Tensor::from_compute(dx, &[g.n, g.c, g.h, g.w], dtype))
        })
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::{max_forward, sliding};
    use crate::Rng;

    /// The AVX2 runs of unclipped windows give what the window-by-window
    /// loop gives, bit for bit, values and indices, on values full of ties,
    /// -inf and NaNs (whose rules depend on the order of the comparisons),
    /// with runs of one or more vectors and a scalar tail.
    #[test]
    fn avx2_max_pool_matches_the_window_loop() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let picks = [f32::NEG_INFINITY, -1.0, 0.0, 1.0, 2.0, f32::NAN];
        let mut rng = Rng::new(12345);
        // (height, width, kernel, stride, padding), the same on both axes
        let cases = [
            (9, 40, 3, 2, 1),
            (8, 37, 3, 2, 1),
            (7, 33, 2, 2, 0),
            (6, 21, 3, 1, 1),
            (5, 35, 1, 2, 0),
            (4, 2, 3, 1, 1),
            (6, 52, 4, 3, 2),
            (3, 3, 3, 1, 0),
            (12, 112, 3, 2, 1),
        ];
        for (h, w, k, s, p) in cases {
            let x: Vec<f32> = (0..2 * h * w)
                .map(|_| picks[rng.below(picks.len())])
                .collect();
            let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let rows = sliding(h, oh, k, s, p, false);
            let cols = sliding(w, ow, k, s, p, false);
            let fast = max_forward(&x, [h, w], &rows, &cols, Some([k, s, p]));
            let plain = max_forward(&x, [h, w], &rows, &cols, None);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let what = format!("{h}x{w} k{k} s{s} p{p}");
            assert_eq!(bits(&fast.0), bits(&plain.0), "{what}: values");
            assert_eq!(fast.1, plain.1, "{what}: indices");
        }
    }
}
