//! Nearest and bilinear resizing of NCHW tensors, index for index as
//! PyTorch's CPU kernels of `F.interpolate` (modes "nearest" and
//! "bilinear"), each parallel over the N*C planes. Backward passes add the
//! upstream gradient onto the source pixels plane by plane in output order,
//! so they are deterministic.

use super::expect_rank;
use crate::autograd::record;
use crate::{dispatch_float, Error, Float, Result, Tensor};
use rayon::prelude::*;

/// Planes per rayon task: enough work to pay for the task.
fn min_planes(plane_len: usize) -> usize {
    (4096 / plane_len.max(1)).max(1)
}

/// [N, C, H, W] of the input and the checked output size.
fn check(op: &'static str, x: &Tensor, out_hw: [usize; 2]) -> Result<[usize; 4]> {
    expect_rank(op, "input [N, C, H, W]", x, 4)?;
    let &[n, c, h, w] = x.dims() else {
        unreachable!("rank checked above")
    };
    if h == 0 || w == 0 || out_hw.contains(&0) {
        return Err(Error::shape(
            op,
            format!(
                "input {:?} and output size {out_hw:?} must have non-empty planes",
                x.dims()
            ),
        ));
    }
    Ok([n, c, h, w])
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
fn nearest_indices(input: usize, output: usize, scale_factor: Option<f64>) -> Vec<usize> {
    (0..output)
        .map(|d| nearest_idx(d, input, output, scale_factor))
        .collect()
}

fn nearest_forward<T: Float>(x: &[T], hw: [usize; 2], rows: &[usize], cols: &[usize]) -> Vec<T> {
    let (plane, oplane) = (hw[0] * hw[1], rows.len() * cols.len());
    let planes = x.len() / plane;
    let mut out = vec![T::zero(); planes * oplane];
    out.par_chunks_mut(oplane)
        .zip(x.par_chunks(plane))
        .with_min_len(min_planes(oplane))
        .for_each(|(o, xp)| {
            for (orow, &r) in o.chunks_exact_mut(cols.len()).zip(rows) {
                let src = &xp[r * hw[1]..][..hw[1]];
                for (v, &c) in orow.iter_mut().zip(cols) {
                    *v = src[c];
                }
            }
        });
    out
}

fn nearest_backward<T: Float>(dy: &[T], hw: [usize; 2], rows: &[usize], cols: &[usize]) -> Vec<T> {
    let (plane, oplane) = (hw[0] * hw[1], rows.len() * cols.len());
    let planes = dy.len() / oplane;
    let mut dx = vec![T::zero(); planes * plane];
    dx.par_chunks_mut(plane)
        .zip(dy.par_chunks(oplane))
        .with_min_len(min_planes(oplane))
        .for_each(|(d, g)| {
            for (grow, &r) in g.chunks_exact(cols.len()).zip(rows) {
                let dst = &mut d[r * hw[1]..][..hw[1]];
                for (v, &c) in grow.iter().zip(cols) {
                    dst[c] += *v;
                }
            }
        });
    dx
}

/// One output index's two source indices and their weights along an axis.
#[derive(Clone, Copy)]
struct Lerp<T> {
    i0: usize,
    i1: usize,
    l0: T,
    l1: T,
}

/// PyTorch's `compute_source_index_and_lambda` for every output index, in
/// the tensor's compute type (as PyTorch's opmath type: f32 for f32 and the
/// half types, f64 for f64), except that the floor goes through f32 as
/// PyTorch's `floorf` does.
fn linear_weights<T: Float>(input: usize, output: usize, align_corners: bool) -> Vec<Lerp<T>> {
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
    let (plane, oplane, w) = (hw[0] * hw[1], rows.len() * cols.len(), hw[1]);
    let planes = x.len() / plane;
    let mut out = vec![T::zero(); planes * oplane];
    out.par_chunks_mut(oplane)
        .zip(x.par_chunks(plane))
        .with_min_len(min_planes(oplane))
        .for_each(|(o, xp)| {
            for (orow, r) in o.chunks_exact_mut(cols.len()).zip(rows) {
                let (x0, x1) = (&xp[r.i0 * w..][..w], &xp[r.i1 * w..][..w]);
                for (v, c) in orow.iter_mut().zip(cols) {
                    // Width first, then height: PyTorch's nesting.
                    let t0 = x0[c.i0] * c.l0 + x0[c.i1] * c.l1;
                    let t1 = x1[c.i0] * c.l0 + x1[c.i1] * c.l1;
                    *v = t0 * r.l0 + t1 * r.l1;
                }
            }
        });
    out
}

fn bilinear_backward<T: Float>(
    dy: &[T],
    hw: [usize; 2],
    rows: &[Lerp<T>],
    cols: &[Lerp<T>],
) -> Vec<T> {
    let (plane, oplane, w) = (hw[0] * hw[1], rows.len() * cols.len(), hw[1]);
    let planes = dy.len() / oplane;
    let mut dx = vec![T::zero(); planes * plane];
    dx.par_chunks_mut(plane)
        .zip(dy.par_chunks(oplane))
        .with_min_len(min_planes(oplane))
        .for_each(|(d, g)| {
            for (grow, r) in g.chunks_exact(cols.len()).zip(rows) {
                for (&v, c) in grow.iter().zip(cols) {
                    let (g0, g1) = (v * r.l0, v * r.l1);
                    d[r.i0 * w + c.i0] += g0 * c.l0;
                    d[r.i0 * w + c.i1] += g0 * c.l1;
                    d[r.i1 * w + c.i0] += g1 * c.l0;
                    d[r.i1 * w + c.i1] += g1 * c.l1;
                }
            }
        });
    dx
}

/// Nearest resize of `x` to `out_hw` with the source indices of PyTorch's
/// `nearest_idx` for the given scale factor (None: from the sizes).
fn upsample_nearest(x: &Tensor, out_hw: [usize; 2], scale_factor: Option<f64>) -> Result<Tensor> {
    const OP: &str = "upsample_nearest2d";
    crate::trace::op(OP, "forward", "cpu:upsample_nearest", &[x], || {
        let [n, c, h, w] = check(OP, x, out_hw)?;
        let rows = nearest_indices(h, out_hw[0], scale_factor);
        let cols = nearest_indices(w, out_hw[1], scale_factor);
        let (dtype, x_shape) = (x.dtype(), x.dims().to_vec());
        let out = dispatch_float!(OP, dtype, T => {
            let y = nearest_forward::<T>(&x.float_data::<T>()?, [h, w], &rows, &cols);
            Tensor::from_compute(y, &[n, c, out_hw[0], out_hw[1]], dtype)
        });
        Ok(record(out, OP, &[x], move |g| {
            let dx = dispatch_float!(OP, dtype, T => {
                let d = nearest_backward::<T>(&g.float_data::<T>()?, [h, w], &rows, &cols);
                Tensor::from_compute(d, &x_shape, dtype)
            });
            Ok(vec![Some(dx)])
        }))
    })
}

impl Tensor {
    /// Nearest-neighbour resize of x [N, C, H, W] to [N, C, out_h, out_w],
    /// exactly `F.interpolate(x, size=out_hw, mode="nearest")`: output
    /// (oy, ox) copies input (sy, sx) with, per axis,
    /// `s = d` when out == in, `s = d / 2` when out == 2*in, else
    /// `s = min(floor(f32(d) * (f32(in) / f32(out))), in - 1)` evaluated in
    /// f32 for every dtype (so non-integer ratios pick PyTorch's rows; for
    /// f64 this is PyTorch's f32 rule, which its own f64 forward leaves when
    /// out_h + out_w > 128, see `nearest_idx`).
    /// Backward: each input pixel gets the sum of the gradients of the
    /// outputs that copied it. f16/bf16 compute in f32.
    pub fn upsample_nearest2d(&self, out_hw: [usize; 2]) -> Result<Tensor> {
        upsample_nearest(self, out_hw, None)
    }

    /// Nearest upsampling by an integer factor (the FPN's top-down 2x):
    /// [N, C, H, W] -> [N, C, H*scale, W*scale], exactly
    /// `F.interpolate(x, scale_factor=scale, mode="nearest")`, i.e. the rule
    /// of `upsample_nearest2d` with `f32(1 / scale)` as the ratio.
    pub fn upsample_nearest2d_scale(&self, scale: usize) -> Result<Tensor> {
        const OP: &str = "upsample_nearest2d";
        if scale == 0 {
            return Err(Error::arg(OP, "scale factor must be >= 1, got 0"));
        }
        expect_rank(OP, "input [N, C, H, W]", self, 4)?;
        let d = self.dims();
        upsample_nearest(self, [d[2] * scale, d[3] * scale], Some(scale as f64))
    }

    /// Bilinear resize of x [N, C, H, W] to [N, C, out_h, out_w], exactly
    /// `F.interpolate(x, size=out_hw, mode="bilinear", align_corners=...)`.
    /// Per axis, output index d samples the input at
    /// `src = d * (in - 1)/(out - 1)` (align_corners; 0 when out == 1) or
    /// `src = max((d + 0.5) * in/out - 0.5, 0)`, between pixels
    /// `i0 = min(floor(src), in - 1)` and `i1 = min(i0 + 1, in - 1)` with
    /// weights `1 - l, l`, `l = clamp(src - i0, 0, 1)`; out == in copies.
    /// The weights are computed in the compute type (f32, or f64 for f64).
    /// Backward scatters the gradient with the same weights.
    pub fn upsample_bilinear2d(&self, out_hw: [usize; 2], align_corners: bool) -> Result<Tensor> {
        const OP: &str = "upsample_bilinear2d";
        crate::trace::op(OP, "forward", "cpu:upsample_bilinear", &[self], || {
            let [n, c, h, w] = check(OP, self, out_hw)?;
            let (dtype, x_shape) = (self.dtype(), self.dims().to_vec());
            let out = dispatch_float!(OP, dtype, T => {
                let (rows, cols) = (
                    linear_weights::<T>(h, out_hw[0], align_corners),
                    linear_weights::<T>(w, out_hw[1], align_corners),
                );
                let y = bilinear_forward::<T>(&self.float_data::<T>()?, [h, w], &rows, &cols);
                Tensor::from_compute(y, &[n, c, out_hw[0], out_hw[1]], dtype)
            });
            Ok(record(out, OP, &[self], move |g| {
                let dx = dispatch_float!(OP, dtype, T => {
                    let (rows, cols) = (
                        linear_weights::<T>(h, out_hw[0], align_corners),
                        linear_weights::<T>(w, out_hw[1], align_corners),
                    );
                    let d = bilinear_backward::<T>(&g.float_data::<T>()?, [h, w], &rows, &cols);
                    Tensor::from_compute(d, &x_shape, dtype)
                });
                Ok(vec![Some(dx)])
            }))
        })
    }
}
