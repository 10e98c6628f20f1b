//! Nearest and bilinear resizing on the CPU, index for index as PyTorch's
//! CPU kernels, each parallel over the N*C planes. Backward passes add the
//! upstream gradient onto the source pixels plane by plane in output order,
//! so they are deterministic.

use super::{Mode, Resize, UpsampleOps};
use crate::backend::Cpu;
use crate::{dispatch_float, Float, Result, Tensor};
use rayon::prelude::*;

/// Planes per rayon task: enough work to pay for the task.
fn min_planes(plane_len: usize) -> usize {
    (4096 / plane_len.max(1)).max(1)
}

/// One `dst_plane`-element plane per `src_plane`-element plane of `src`,
/// each zeroed and then filled by `f(dst, src)`, in parallel.
fn map_planes<T: Float>(
    src: &[T],
    src_plane: usize,
    dst_plane: usize,
    f: impl Fn(&mut [T], &[T]) + Sync,
) -> Vec<T> {
    let planes = src.len() / src_plane;
    let mut out = vec![T::zero(); planes * dst_plane];
    out.par_chunks_mut(dst_plane)
        .zip(src.par_chunks(src_plane))
        .with_min_len(min_planes(src_plane.max(dst_plane)))
        .for_each(|(d, s)| f(d, s));
    out
}

/// PyTorch's `nearest_idx` (aten/src/ATen/native/UpSample.h): the source
/// index of output index `dst` along an axis resized `input` -> `output`.
/// Same size copies, exactly 2x halves; otherwise, in f32 whatever the
/// tensor dtype, `min(floor(f32(dst) * scale), input - 1)` with
/// `scale = f32(1 / scale_factor)` when a positive scale factor was given,
/// else `f32(input) / f32(output)`. The f32 rounding is reproduced, not
/// computed exactly: 14 -> 46 picks row 6 for output 23 where exact
/// arithmetic gives 7.
///
/// This is every PyTorch CPU path for f32/f16/bf16 and PyTorch's f64
/// backward. PyTorch's f64 *forward* differs when it takes its generic
/// kernel (channels-first and out_h + out_w > 128): that one computes the
/// ratio in f64 (45 -> 129 then picks row 15 for output 43, not 14). We
/// keep the f32 rule for f64 too, so forward and backward agree.
fn nearest_idx(dst: usize, input: usize, output: usize, scale_factor: Option<f64>) -> usize {
    if output == input {
        dst
    } else if output == 2 * input {
        dst >> 1
    } else {
        let scale = match scale_factor {
            Some(s) if s > 0.0 => (1.0 / s) as f32,
            _ => input as f32 / output as f32,
        };
        ((dst as f32 * scale).floor() as usize).min(input - 1)
    }
}

/// Source indices of every output index along one axis.
pub(super) fn nearest_indices(
    input: usize,
    output: usize,
    scale_factor: Option<f64>,
) -> Vec<usize> {
    (0..output)
        .map(|d| nearest_idx(d, input, output, scale_factor))
        .collect()
}

fn nearest_forward<T: Float>(x: &[T], hw: [usize; 2], rows: &[usize], cols: &[usize]) -> Vec<T> {
    map_planes(x, hw[0] * hw[1], rows.len() * cols.len(), |o, xp| {
        for (orow, &r) in o.chunks_exact_mut(cols.len()).zip(rows) {
            let src = &xp[r * hw[1]..][..hw[1]];
            for (v, &c) in orow.iter_mut().zip(cols) {
                *v = src[c];
            }
        }
    })
}

fn nearest_backward<T: Float>(dy: &[T], hw: [usize; 2], rows: &[usize], cols: &[usize]) -> Vec<T> {
    map_planes(dy, rows.len() * cols.len(), hw[0] * hw[1], |d, g| {
        for (grow, &r) in g.chunks_exact(cols.len()).zip(rows) {
            let dst = &mut d[r * hw[1]..][..hw[1]];
            for (v, &c) in grow.iter().zip(cols) {
                dst[c] += *v;
            }
        }
    })
}

/// One output index's two source indices and their weights along an axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Lerp<T> {
    pub(crate) i0: usize,
    pub(crate) i1: usize,
    pub(crate) l0: T,
    pub(crate) l1: T,
}

impl<T: Float> Lerp<T> {
    /// The bilinear value at row taps `r` and column taps `c` of the four
    /// source pixels `v` = [(r.i0, c.i0), (r.i0, c.i1), (r.i1, c.i0),
    /// (r.i1, c.i1)]: width first, then height (PyTorch's nesting), every
    /// product and sum rounded in `T`.
    #[inline]
    pub(crate) fn blend(r: &Lerp<T>, c: &Lerp<T>, v: [T; 4]) -> T {
        let t0 = v[0] * c.l0 + v[1] * c.l1;
        let t1 = v[2] * c.l0 + v[3] * c.l1;
        t0 * r.l0 + t1 * r.l1
    }
}

/// PyTorch's `compute_source_index_and_lambda` for every output index, in
/// the tensor's compute type (as PyTorch's opmath type: f32 for f32 and the
/// half types, f64 for f64), except that the floor goes through f32 as
/// PyTorch's `floorf` does.
pub(crate) fn linear_weights<T: Float>(
    input: usize,
    output: usize,
    align_corners: bool,
) -> Vec<Lerp<T>> {
    let half = T::from_f64(0.5);
    let scale = if align_corners {
        if output > 1 {
            T::from_usize(input - 1) / T::from_usize(output - 1)
        } else {
            T::zero()
        }
    } else {
        T::from_usize(input) / T::from_usize(output)
    };
    (0..output)
        .map(|d| {
            if input == output {
                return Lerp {
                    i0: d,
                    i1: d,
                    l0: T::one(),
                    l1: T::zero(),
                };
            }
            let dt = T::from_usize(d);
            let src = if align_corners {
                scale * dt
            } else {
                (scale * (dt + half) - half).max(T::zero())
            };
            let i0 = ((src.to_f64() as f32).floor() as usize).min(input - 1);
            let l1 = (src - T::from_usize(i0)).max(T::zero()).min(T::one());
            Lerp {
                i0,
                i1: i0 + usize::from(i0 < input - 1),
                l0: T::one() - l1,
                l1,
            }
        })
        .collect()
}

fn bilinear_forward<T: Float>(
    x: &[T],
    hw: [usize; 2],
    rows: &[Lerp<T>],
    cols: &[Lerp<T>],
) -> Vec<T> {
    let w = hw[1];
    map_planes(x, hw[0] * w, rows.len() * cols.len(), |o, xp| {
        for (orow, r) in o.chunks_exact_mut(cols.len()).zip(rows) {
            let (x0, x1) = (&xp[r.i0 * w..][..w], &xp[r.i1 * w..][..w]);
            for (v, c) in orow.iter_mut().zip(cols) {
                *v = Lerp::blend(r, c, [x0[c.i0], x0[c.i1], x1[c.i0], x1[c.i1]]);
            }
        }
    })
}

fn bilinear_backward<T: Float>(
    dy: &[T],
    hw: [usize; 2],
    rows: &[Lerp<T>],
    cols: &[Lerp<T>],
) -> Vec<T> {
    let w = hw[1];
    map_planes(dy, rows.len() * cols.len(), hw[0] * w, |d, g| {
        for (grow, r) in g.chunks_exact(cols.len()).zip(rows) {
            for (&v, c) in grow.iter().zip(cols) {
                let (g0, g1) = (v * r.l0, v * r.l1);
                d[r.i0 * w + c.i0] += g0 * c.l0;
                d[r.i0 * w + c.i1] += g0 * c.l1;
                d[r.i1 * w + c.i0] += g1 * c.l0;
                d[r.i1 * w + c.i1] += g1 * c.l1;
            }
        }
    })
}

/// The forward (`src` = x) or the backward (`src` = dy) of resize `g`.
fn resize(src: &Tensor, g: &Resize, backward: bool) -> Result<Tensor> {
    let (dtype, hw) = (src.dtype(), [g.h, g.w]);
    let shape = if backward {
        [g.n, g.c, g.h, g.w]
    } else {
        [g.n, g.c, g.oh, g.ow]
    };
    Ok(dispatch_float!(g.mode.op(), dtype, T => {
        let s = src.float_data::<T>()?;
        let v = match g.mode {
            Mode::Nearest { scale_factor } => {
                crate::trace::kernel("upsample_nearest");
                let rows = nearest_indices(g.h, g.oh, scale_factor);
                let cols = nearest_indices(g.w, g.ow, scale_factor);
                if backward {
                    nearest_backward::<T>(&s, hw, &rows, &cols)
                } else {
                    nearest_forward::<T>(&s, hw, &rows, &cols)
                }
            }
            Mode::Bilinear { align_corners } => {
                crate::trace::kernel("upsample_bilinear");
                let rows = linear_weights::<T>(g.h, g.oh, align_corners);
                let cols = linear_weights::<T>(g.w, g.ow, align_corners);
                if backward {
                    bilinear_backward::<T>(&s, hw, &rows, &cols)
                } else {
                    bilinear_forward::<T>(&s, hw, &rows, &cols)
                }
            }
        };
        Tensor::from_compute(v, &shape, dtype)
    }))
}

impl UpsampleOps for Cpu {
    fn upsample2d(&self, x: &Tensor, g: &Resize) -> Result<Tensor> {
        resize(x, g, false)
    }

    fn upsample2d_backward(&self, dy: &Tensor, g: &Resize) -> Result<Tensor> {
        resize(dy, g, true)
    }
}
