//! 2-D max / average / adaptive average pooling over NHWC (pool.cu): the
//! output size rule, the window operands and the launchers.

use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::error::{Error, Result};
use crate::launch::{self, to_i32};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("pool",
    typed ["maxpool_fwd", "maxpool_bwd", "avgpool_fwd", "avgpool_bwd",
           "adaptive_avgpool_fwd", "adaptive_avgpool_bwd"]
    untyped []);

/// Output size of a pooling window along one axis (floor mode), or an error
/// with PyTorch's conditions (kernel, stride >= 1, padding <= kernel / 2).
pub fn pool_out(size: usize, kernel: usize, stride: usize, pad: usize) -> Result<usize> {
    if kernel == 0 || stride == 0 {
        return Err(Error::Shape(format!(
            "pool kernel {kernel} and stride {stride} must be >= 1"
        )));
    }
    if pad > kernel / 2 {
        return Err(Error::Shape(format!(
            "pool padding {pad} must be at most half the kernel {kernel}"
        )));
    }
    let padded = size + 2 * pad;
    if padded < kernel {
        return Err(Error::Shape(format!(
            "pool input {size} (+2*{pad} padding) is smaller than the kernel {kernel}"
        )));
    }
    Ok((padded - kernel) / stride + 1)
}

/// Which averaging windows [`KernelLibrary::avgpool`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvgMode {
    /// Sliding windows of `PoolDims`' kernel/stride/padding;
    /// `count_include_pad` divides by the padded window, else by the
    /// in-bounds count.
    Window { count_include_pad: bool },
    /// PyTorch's adaptive bins (which may differ in size and overlap);
    /// kernel/stride/padding are ignored.
    Adaptive,
}

/// A 2-D pooling window over NHWC x [N, H, W, C] -> y [N, OH, OW, C]
/// (pool.cu's PoolShape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolDims {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub oh: usize,
    pub ow: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl PoolDims {
    /// The 12 int32 kernel arguments in pool.cu's order
    /// (N, H, W, C, OH, OW, KH, KW, SH, SW, PH, PW).
    pub fn args(&self) -> Result<[i32; 12]> {
        let v = [
            self.n,
            self.h,
            self.w,
            self.c,
            self.oh,
            self.ow,
            self.kernel[0],
            self.kernel[1],
            self.stride[0],
            self.stride[1],
            self.padding[0],
            self.padding[1],
        ];
        let mut out = [0i32; 12];
        for (o, &d) in out.iter_mut().zip(&v) {
            *o = to_i32("pool dim", d)?;
        }
        Ok(out)
    }
    pub fn input_len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    pub fn output_len(&self) -> usize {
        self.n * self.oh * self.ow * self.c
    }
}

impl KernelLibrary {
    /// Max pooling forward: y and argmax (int32 h*W + w) [N, OH, OW, C].
    ///
    /// # Safety
    /// x: `d.input_len()` elements of `dtype`; y: `d.output_len()`;
    /// argmax: `d.output_len()` int32.
    pub unsafe fn maxpool_fwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        x: DevPtr,
        y: DevPtr,
        argmax: DevPtr,
        d: &PoolDims,
    ) -> Result<()> {
        let a = d.args()?;
        let Some(shape) = launch::elementwise(d.output_len(), 1, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("maxpool_fwd_{}", dtype.suffix());
        let f = self.function(&name)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&y).arg(&argmax);
        for v in &a {
            b.arg(v);
        }
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// Max pooling backward (a gather: dx fully overwritten).
    ///
    /// # Safety
    /// dy, argmax: `d.output_len()` elements; dx: `d.input_len()`.
    pub unsafe fn maxpool_bwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        dy: DevPtr,
        argmax: DevPtr,
        dx: DevPtr,
        d: &PoolDims,
    ) -> Result<()> {
        let a = d.args()?;
        let Some(shape) = launch::elementwise(d.input_len(), 1, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("maxpool_bwd_{}", dtype.suffix());
        let f = self.function(&name)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&dy).arg(&argmax).arg(&dx);
        for v in &a {
            b.arg(v);
        }
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// Average pooling forward (backward = false: x -> y) or backward
    /// (backward = true: dy -> dx, a gather that overwrites dx).
    ///
    /// # Safety
    /// src/dst: `d.input_len()` / `d.output_len()` elements of `dtype`
    /// (swapped for backward).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn avgpool(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        backward: bool,
        src: DevPtr,
        dst: DevPtr,
        d: &PoolDims,
        mode: AvgMode,
    ) -> Result<()> {
        let a = d.args()?;
        let (dir, threads) = if backward {
            ("bwd", d.input_len())
        } else {
            ("fwd", d.output_len())
        };
        let Some(shape) = launch::elementwise(threads, 1, &self.gpu()) else {
            return Ok(());
        };
        let kind = match mode {
            AvgMode::Window { .. } => "avgpool",
            AvgMode::Adaptive => "adaptive_avgpool",
        };
        let name = format!("{kind}_{dir}_{}", dtype.suffix());
        let f = self.function(&name)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(&dst);
        for v in &a {
            b.arg(v);
        }
        let include;
        if let AvgMode::Window { count_include_pad } = mode {
            include = count_include_pad as i32;
            b.arg(&include);
        }
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_args_follow_pool_cu_order() {
        let d = PoolDims {
            n: 2,
            h: 112,
            w: 110,
            c: 64,
            oh: 56,
            ow: 55,
            kernel: [3, 2],
            stride: [2, 1],
            padding: [1, 0],
        };
        assert_eq!(
            d.args().unwrap(),
            [2, 112, 110, 64, 56, 55, 3, 2, 2, 1, 1, 0]
        );
        assert_eq!(d.input_len(), 2 * 112 * 110 * 64);
        assert_eq!(d.output_len(), 2 * 56 * 55 * 64);
        let huge = PoolDims { c: 1 << 31, ..d };
        assert!(huge.args().is_err());
    }

    #[test]
    fn pool_out_follows_pytorch() {
        // ResNet stem max pool: 112 -> 56 with k3 s2 p1
        assert_eq!(pool_out(112, 3, 2, 1).unwrap(), 56);
        assert_eq!(pool_out(7, 7, 1, 0).unwrap(), 1);
        assert!(pool_out(112, 3, 2, 2).is_err());
        assert!(pool_out(2, 5, 1, 1).is_err());
        assert!(pool_out(8, 0, 1, 0).is_err());
    }
}
