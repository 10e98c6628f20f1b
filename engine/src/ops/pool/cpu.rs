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

fn max_forward<T: Float>(
    x: &[T],
    hw: [usize; 2],
    rows: &[Span],
    cols: &[Span],
) -> (Vec<T>, Vec<usize>) {
    let (plane, oplane) = (hw[0] * hw[1], rows.len() * cols.len());
    let planes = x.len() / plane.max(1);
    let mut out = par_filled(planes * oplane, T::zero());
    let mut idx = vec![0usize; planes * oplane];
    out.par_chunks_mut(oplane.max(1))
        .zip(idx.par_chunks_mut(oplane.max(1)))
        .zip(x.par_chunks(plane.max(1)))
        .with_min_len(min_planes(oplane))
        .for_each(|((o, ix), xp)| {
            let mut k = 0;
            for r in rows {
                for c in cols {
                    // First max in window order wins ties; NaN propagates (as PyTorch).
                    let (mut best, mut bi) = (T::neg_infinity(), r.lo * hw[1] + c.lo);
                    for y in r.lo..r.hi {
                        for (xx, &v) in xp[y * hw[1]..][c.lo..c.hi].iter().enumerate() {
                            if v > best || v.is_nan() {
                                best = v;
                                bi = y * hw[1] + c.lo + xx;
                            }
                        }
                    }
                    o[k] = best;
                    ix[k] = bi;
                    k += 1;
                }
            }
        });
    (out, idx)
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
            let (o, idx) = max_forward::<T>(&x.float_data::<T>()?, [g.h, g.w], &rows, &cols);
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
