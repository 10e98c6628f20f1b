//! Max, average and adaptive-average pooling of NCHW tensors (PyTorch's
//! floor mode, dilation 1), each parallel over the N*C planes.

use super::conv::out_size;
use super::expect_rank;
use crate::autograd::record;
use crate::{dispatch_float, Error, Float, Result, Tensor};
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

/// [N, C, H, W] of a pooling input, or a clear error.
fn nchw(op: &'static str, x: &Tensor) -> Result<[usize; 4]> {
    expect_rank(op, "input [N, C, H, W]", x, 4)?;
    let d = x.dims();
    Ok([d[0], d[1], d[2], d[3]])
}

/// Checks kernel/stride/padding as PyTorch does and returns the output size.
fn window_out(
    op: &'static str,
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<[usize; 2]> {
    let [_, _, h, w] = nchw(op, x)?;
    if h == 0 || w == 0 {
        return Err(Error::shape(
            op,
            format!("input {:?} has an empty plane", x.dims()),
        ));
    }
    if kernel.contains(&0) || stride.contains(&0) {
        return Err(Error::arg(
            op,
            format!("kernel {kernel:?} and stride {stride:?} must be >= 1"),
        ));
    }
    if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
        return Err(Error::arg(
            op,
            format!("padding {padding:?} must be at most half the kernel {kernel:?}"),
        ));
    }
    Ok([
        out_size(op, h, kernel[0], stride[0], padding[0], 1)?,
        out_size(op, w, kernel[1], stride[1], padding[1], 1)?,
    ])
}

fn max_forward<T: Float>(
    x: &[T],
    hw: [usize; 2],
    rows: &[Span],
    cols: &[Span],
) -> (Vec<T>, Vec<usize>) {
    let (plane, oplane) = (hw[0] * hw[1], rows.len() * cols.len());
    let planes = x.len() / plane.max(1);
    let mut out = vec![T::zero(); planes * oplane];
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
    let mut dx = vec![T::zero(); planes * plane];
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
    let mut out = vec![T::zero(); planes * oplane];
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
    let mut dx = vec![T::zero(); planes * plane];
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

/// Averaging pool over the given windows, with its backward.
fn avg_pool(op: &'static str, x: &Tensor, rows: Vec<Span>, cols: Vec<Span>) -> Result<Tensor> {
    crate::trace::op(op, "forward", "cpu:pool", &[x], || {
        let [n, c, h, w] = nchw(op, x)?;
        let (dtype, x_shape) = (x.dtype(), x.dims().to_vec());
        let shape = [n, c, rows.len(), cols.len()];
        let out = dispatch_float!(op, dtype, T => {
            Tensor::from_compute(avg_forward::<T>(&x.float_data::<T>()?, [h, w], &rows, &cols), &shape, dtype)
        });
        Ok(record(out, op, &[x], move |g| {
            let dx = dispatch_float!(op, dtype, T => {
                Tensor::from_compute(avg_backward::<T>(&g.float_data::<T>()?, [h, w], &rows, &cols), &x_shape, dtype)
            });
            Ok(vec![Some(dx)])
        }))
    })
}

impl Tensor {
    /// Max over each window; padding acts as -inf. Backward routes each
    /// gradient to its window's first maximum.
    pub fn max_pool2d(
        &self,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Result<Tensor> {
        if self.device() != crate::Device::Cpu {
            return crate::cuda::ops::pool::max_pool2d(self, kernel, stride, padding);
        }
        crate::trace::op("max_pool2d", "forward", "cpu:pool", &[self], || {
            const OP: &str = "max_pool2d";
            let [oh, ow] = window_out(OP, self, kernel, stride, padding)?;
            let [n, c, h, w] = nchw(OP, self)?;
            let rows = sliding(h, oh, kernel[0], stride[0], padding[0], false);
            let cols = sliding(w, ow, kernel[1], stride[1], padding[1], false);
            let (dtype, x_shape) = (self.dtype(), self.dims().to_vec());
            let (out, idx) = dispatch_float!(OP, dtype, T => {
                let (o, idx) = max_forward::<T>(&self.float_data::<T>()?, [h, w], &rows, &cols);
                (Tensor::from_compute(o, &[n, c, oh, ow], dtype), idx)
            });
            let need = self.requires_grad();
            let idx = need.then_some(idx);
            Ok(record(out, OP, &[self], move |g| {
                let idx = idx.expect("saved when the input requires grad");
                let dx = dispatch_float!(OP, dtype, T => {
                    Tensor::from_compute(max_backward::<T>(&g.float_data::<T>()?, &idx, h * w, oh * ow), &x_shape, dtype)
                });
                Ok(vec![Some(dx)])
            }))
        })
    }

    /// Mean over each window; `count_include_pad` divides by the full
    /// window (padded zeros included), else by the in-bounds count.
    pub fn avg_pool2d(
        &self,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        count_include_pad: bool,
    ) -> Result<Tensor> {
        if self.device() != crate::Device::Cpu {
            return crate::cuda::ops::pool::avg_pool2d(
                self,
                kernel,
                stride,
                padding,
                count_include_pad,
            );
        }
        const OP: &str = "avg_pool2d";
        let [oh, ow] = window_out(OP, self, kernel, stride, padding)?;
        let [_, _, h, w] = nchw(OP, self)?;
        let rows = sliding(h, oh, kernel[0], stride[0], padding[0], count_include_pad);
        let cols = sliding(w, ow, kernel[1], stride[1], padding[1], count_include_pad);
        avg_pool(OP, self, rows, cols)
    }

    /// Mean over PyTorch's adaptive bins: output `i` along a dim of size
    /// `In` averages `floor(i*In/Out) .. ceil((i+1)*In/Out)`.
    pub fn adaptive_avg_pool2d(&self, out: [usize; 2]) -> Result<Tensor> {
        if self.device() != crate::Device::Cpu {
            return crate::cuda::ops::pool::adaptive_avg_pool2d(self, out);
        }
        const OP: &str = "adaptive_avg_pool2d";
        let [_, _, h, w] = nchw(OP, self)?;
        if out.contains(&0) || h == 0 || w == 0 {
            return Err(Error::arg(
                OP,
                format!("output size {out:?} and input size [{h}, {w}] must be >= 1"),
            ));
        }
        avg_pool(OP, self, adaptive(h, out[0]), adaptive(w, out[1]))
    }
}
