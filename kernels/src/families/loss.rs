//! Softmax / log_softmax over one dim and the elementwise losses
//! (loss.cu); the loss sums finish with reduce.cu's `sum_finalize`.

use super::reduce::sum_partial;
use crate::error::Result;
use crate::launch;
use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("loss",
    typed ["softmax_fwd", "softmax_bwd", "pointwise_loss_partial", "pointwise_loss_bwd"]
    untyped []);

/// A softmax over the middle dim of a row-major [outer, size, inner]
/// tensor (log: log_softmax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftmaxDims {
    pub outer: usize,
    pub size: usize,
    pub inner: usize,
    pub log: bool,
}

/// The elementwise losses of loss.cu.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PointwiseLoss {
    /// max(x,0) - x*t + log1p(exp(-|x|))
    BceWithLogits,
    /// 0.5 d²/beta if |d| < beta else |d| - 0.5 beta, d = x - t
    SmoothL1 { beta: f32 },
}

impl PointwiseLoss {
    /// The kernels' (kind, beta).
    fn code(self) -> (i32, f32) {
        match self {
            PointwiseLoss::BceWithLogits => (0, 0.0),
            PointwiseLoss::SmoothL1 { beta } => (1, beta),
        }
    }
}

/// One warp per row of the softmax: the elementwise shape over 32 threads
/// a row. None when there is no row or the rows are empty.
fn softmax_shape(d: &SoftmaxDims, gpu: &launch::Gpu) -> Option<launch::LaunchShape> {
    if d.size == 0 {
        return None;
    }
    launch::elementwise(d.outer.checked_mul(d.inner)?.checked_mul(32)?, 1, gpu)
}

impl KernelLibrary {
    /// The softmax forward (`dy` = None: y = softmax(x)) or backward (dx
    /// from the output y and its gradient dy) over row-major data.
    ///
    /// # Safety
    /// x (y for the backward), dy and out: outer*size*inner elements of
    /// `dtype` each.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn softmax(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        d: &SoftmaxDims,
        x: DevPtr,
        dy: Option<DevPtr>,
        out: DevPtr,
    ) -> Result<()> {
        let Some(shape) = softmax_shape(d, &self.gpu()) else {
            return Ok(());
        };
        let (outer, size, inner) = (d.outer as i64, d.size as i64, d.inner as i64);
        let log = d.log as i32;
        let name = match dy {
            None => format!("softmax_fwd_{}", dtype.suffix()),
            Some(_) => format!("softmax_bwd_{}", dtype.suffix()),
        };
        let f = self.function(&name)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&x);
        if let Some(dy) = &dy {
            b.arg(dy);
        }
        b.arg(&out).arg(&outer).arg(&size).arg(&inner).arg(&log);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// out[0] (f32) = the sum of the elementwise loss over n elements:
    /// pointwise_loss_partial then sum_finalize (n == 0 writes 0).
    ///
    /// # Safety
    /// x, t: n elements of `dtype`; partials: `SUM_MAX_PARTIALS` f32;
    /// out: one f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn pointwise_loss_sum(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        kind: PointwiseLoss,
        x: DevPtr,
        t: DevPtr,
        n: usize,
        partials: DevPtr,
        out: DevPtr,
    ) -> Result<()> {
        let (code, beta) = kind.code();
        let count = match sum_partial(n, 1, &self.gpu()) {
            None => 0,
            Some(shape) => {
                let name = format!("pointwise_loss_partial_{}", dtype.suffix());
                let f = self.function(&name)?;
                let n = n as i64;
                let mut b = stream.launch_builder(&f);
                b.arg(&x).arg(&t).arg(&n).arg(&code).arg(&beta).arg(&partials);
                b.launch(config(shape)).map_err(driver(&name))?;
                shape.grid.0 as i32
            }
        };
        self.sum_finalize(stream, partials, count, out)
    }

    /// dx = (dloss[0] / n) * the loss's derivative in x, n elements.
    ///
    /// # Safety
    /// x, t, dx: n elements of `dtype`; dloss: one f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn pointwise_loss_backward(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        kind: PointwiseLoss,
        x: DevPtr,
        t: DevPtr,
        dloss: DevPtr,
        n: usize,
        dx: DevPtr,
    ) -> Result<()> {
        let Some(shape) = launch::elementwise(n, 1, &self.gpu()) else {
            return Ok(());
        };
        let (code, beta) = kind.code();
        let name = format!("pointwise_loss_bwd_{}", dtype.suffix());
        let f = self.function(&name)?;
        let n = n as i64;
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&t).arg(&dloss).arg(&n).arg(&code).arg(&beta).arg(&dx);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_runs_one_warp_per_row() {
        let g = launch::Gpu::H100;
        let d = SoftmaxDims { outer: 3, size: 1000, inner: 1, log: false };
        // 3 rows of 32 threads fit one block
        assert_eq!(softmax_shape(&d, &g).unwrap().grid.0, 1);
        let d = SoftmaxDims { outer: 100, size: 7, inner: 9, log: true };
        assert_eq!(softmax_shape(&d, &g).unwrap().grid.0, (900u32 * 32).div_ceil(256));
        assert!(softmax_shape(&SoftmaxDims { size: 0, ..d }, &g).is_none());
        assert!(softmax_shape(&SoftmaxDims { outer: 0, ..d }, &g).is_none());
    }
}
