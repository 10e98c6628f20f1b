//! Max, average and adaptive-average pooling of [N, C, H, W] tensors
//! (PyTorch's floor mode, dilation 1): the checks, trace and autograd of
//! each op, over the [`PoolOps`] primitives of the backends (`cpu.rs`,
//! `cuda.rs`).

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

use super::conv::out_size;
use super::expect_rank;
use crate::autograd::record;
use crate::backend::{unsupported, BackendInfo, Saved};
use crate::ops::GradSpec;
use crate::{on_backend, DType, Device, Error, Result, Tensor};

/// Where each output's window lies: sliding windows, or PyTorch's adaptive
/// bins (`floor(i*In/Out) .. ceil((i+1)*In/Out)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Windows {
    Sliding {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        /// Averaging only: padded positions count in the divisor.
        count_include_pad: bool,
    },
    Adaptive,
}

/// The shape of one pooling: input [n, c, h, w] -> output [n, c, oh, ow].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub windows: Windows,
}

/// The pooling primitives a backend implements.
pub trait PoolOps: BackendInfo {
    /// The window maxima (first maximum in window order wins; NaN
    /// propagates) and what the backward needs to route gradients.
    fn max_pool2d(&self, x: &Tensor, g: &PoolGeom) -> Result<(Tensor, Saved)> {
        let _ = (x, g);
        Err(unsupported(self, "max_pool2d"))
    }
    /// Each gradient added to its window's maximum.
    fn max_pool2d_backward(&self, dy: &Tensor, saved: &Saved, g: &PoolGeom) -> Result<Tensor> {
        let _ = (dy, saved, g);
        Err(unsupported(self, "max_pool2d_backward"))
    }
    /// The window means.
    fn avg_pool2d(&self, x: &Tensor, g: &PoolGeom) -> Result<Tensor> {
        let _ = (x, g);
        Err(unsupported(self, "avg_pool2d"))
    }
    /// Each gradient spread evenly over its window.
    fn avg_pool2d_backward(&self, dy: &Tensor, g: &PoolGeom) -> Result<Tensor> {
        let _ = (dy, g);
        Err(unsupported(self, "avg_pool2d_backward"))
    }
}

/// [N, C, H, W] of a pooling input with a non-empty plane, or a clear error.
fn nchw(op: &'static str, x: &Tensor) -> Result<[usize; 4]> {
    expect_rank(op, "input [N, C, H, W]", x, 4)?;
    let d = x.dims();
    if d[2] == 0 || d[3] == 0 {
        return Err(Error::shape(
            op,
            format!("input {:?} has an empty plane", x.dims()),
        ));
    }
    Ok([d[0], d[1], d[2], d[3]])
}

/// Checks kernel/stride/padding as PyTorch does and returns the geometry.
fn sliding(op: &'static str, x: &Tensor, windows: Windows) -> Result<PoolGeom> {
    let [n, c, h, w] = nchw(op, x)?;
    let Windows::Sliding {
        kernel,
        stride,
        padding,
        ..
    } = windows
    else {
        unreachable!("sliding() is called with sliding windows");
    };
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
    Ok(PoolGeom {
        n,
        c,
        h,
        w,
        oh: out_size(op, h, kernel[0], stride[0], padding[0], 1)?,
        ow: out_size(op, w, kernel[1], stride[1], padding[1], 1)?,
        windows,
    })
}

/// The gradient of a pooling output: the input's dtype and device, the
/// output's shape.
fn check_grad(op: &'static str, dy: &Tensor, x: (DType, Device), g: &PoolGeom) -> Result<()> {
    GradSpec::new(x.0, x.1, &[g.n, g.c, g.oh, g.ow]).check(op, dy)
}

/// An averaging pool with its backward.
fn avg_pool(op: &'static str, x: &Tensor, g: PoolGeom) -> Result<Tensor> {
    on_backend!(x.device(), b => crate::trace::op(op, "forward", b.name(), &[x], || {
        let y = b.avg_pool2d(x, &g)?;
        let xs = (x.dtype(), x.device());
        Ok(record(y, op, &[x], move |dy| {
            check_grad(op, dy, xs, &g)?;
            Ok(vec![Some(b.avg_pool2d_backward(dy, &g)?)])
        }))
    }))
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
        const OP: &str = "max_pool2d";
        let windows = Windows::Sliding {
            kernel,
            stride,
            padding,
            count_include_pad: false,
        };
        let g = sliding(OP, self, windows)?;
        on_backend!(self.device(), b => crate::trace::op(OP, "forward", b.name(), &[self], || {
            let (y, saved) = b.max_pool2d(self, &g)?;
            let xs = (self.dtype(), self.device());
            Ok(record(y, OP, &[self], move |dy| {
                check_grad(OP, dy, xs, &g)?;
                Ok(vec![Some(b.max_pool2d_backward(dy, &saved, &g)?)])
            }))
        }))
    }

    /// Mean over each window; `count_include_pad` divides by the full
    /// window (padded zeros included, clipped to the padded extent), else
    /// by the in-bounds count.
    pub fn avg_pool2d(
        &self,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        count_include_pad: bool,
    ) -> Result<Tensor> {
        const OP: &str = "avg_pool2d";
        let windows = Windows::Sliding {
            kernel,
            stride,
            padding,
            count_include_pad,
        };
        avg_pool(OP, self, sliding(OP, self, windows)?)
    }

    /// Mean over PyTorch's adaptive bins: output `i` along a dim of size
    /// `In` averages `floor(i*In/Out) .. ceil((i+1)*In/Out)`.
    pub fn adaptive_avg_pool2d(&self, out: [usize; 2]) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d";
        let [n, c, h, w] = nchw(OP, self)?;
        if out.contains(&0) {
            return Err(Error::arg(OP, format!("output size {out:?} must be >= 1")));
        }
        let g = PoolGeom {
            n,
            c,
            h,
            w,
            oh: out[0],
            ow: out[1],
            windows: Windows::Adaptive,
        };
        avg_pool(OP, self, g)
    }
}
