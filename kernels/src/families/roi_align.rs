//! RoIAlign forward and backward over NHWC feature maps (roi_align.cu).

use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::error::Result;
use crate::launch::{self, to_i32};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("roi_align",
    typed ["roi_align_fwd", "roi_align_bwd"]
    untyped []);

/// A RoIAlign over NHWC x [N, H, W, C] and boxes [K, 5] -> [K, PH, PW, C]
/// (roi_align.cu's RoiShape).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiAlignDims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub ph: usize,
    pub pw: usize,
    pub spatial_scale: f32,
    /// <= 0: adaptive (ceil(bin size) samples a side).
    pub sampling_ratio: i32,
    pub aligned: bool,
}

impl RoiAlignDims {
    /// The 7 int32 shape arguments in roi_align.cu's order (N, C, H, W, K,
    /// PH, PW), checked to fit, with the element counts the kernels index.
    pub fn args(&self) -> Result<[i32; 7]> {
        let v = [self.n, self.c, self.h, self.w, self.k, self.ph, self.pw];
        let mut out = [0i32; 7];
        for (o, &d) in out.iter_mut().zip(&v) {
            *o = to_i32("roi_align dim", d)?;
        }
        // the kernels' pixel offsets (y*W + x) are int32
        to_i32("roi_align H*W", self.h * self.w)?;
        Ok(out)
    }
    pub fn input_len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    pub fn output_len(&self) -> usize {
        self.k * self.ph * self.pw * self.c
    }
}

impl KernelLibrary {
    /// RoIAlign forward: y [K, PH, PW, C] (dtype) from x [N, H, W, C] and
    /// boxes [K, 5] (dtype).
    ///
    /// # Safety
    /// x: `d.input_len()` elements of `dtype`; boxes: 5*K; y: `d.output_len()`.
    pub unsafe fn roi_align_fwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        x: DevPtr,
        boxes: DevPtr,
        y: DevPtr,
        d: &RoiAlignDims,
    ) -> Result<()> {
        self.roi_align(stream, "roi_align_fwd", dtype, x, boxes, y, d)
    }

    /// RoIAlign backward: atomically adds dy's contributions into the f32
    /// dx [N, H, W, C], which the caller must have zeroed. Summation order
    /// varies between runs (atomics), so dx is not bitwise deterministic.
    ///
    /// # Safety
    /// dy: `d.output_len()` elements of `dtype`; boxes: 5*K of `dtype`;
    /// dx: `d.input_len()` f32.
    pub unsafe fn roi_align_bwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        dy: DevPtr,
        boxes: DevPtr,
        dx: DevPtr,
        d: &RoiAlignDims,
    ) -> Result<()> {
        self.roi_align(stream, "roi_align_bwd", dtype, dy, boxes, dx, d)
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn roi_align(
        &self,
        stream: &CudaStream,
        kernel: &str,
        dtype: Dtype,
        src: DevPtr,
        boxes: DevPtr,
        dst: DevPtr,
        d: &RoiAlignDims,
    ) -> Result<()> {
        let a = d.args()?;
        let Some(shape) = launch::elementwise(d.output_len(), 1, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("{kernel}_{}", dtype.suffix());
        let f = self.function(&name)?;
        let aligned = d.aligned as i32;
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(&boxes).arg(&dst);
        for v in &a {
            b.arg(v);
        }
        b.arg(&d.spatial_scale).arg(&d.sampling_ratio).arg(&aligned);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roi_align_args_follow_roi_align_cu_order() {
        let d = RoiAlignDims {
            n: 2,
            c: 256,
            h: 50,
            w: 68,
            k: 300,
            ph: 7,
            pw: 6,
            spatial_scale: 0.0625,
            sampling_ratio: 2,
            aligned: true,
        };
        assert_eq!(d.args().unwrap(), [2, 256, 50, 68, 300, 7, 6]);
        assert_eq!(d.input_len(), 2 * 50 * 68 * 256);
        assert_eq!(d.output_len(), 300 * 7 * 6 * 256);
        assert!(RoiAlignDims { c: 1 << 31, ..d }.args().is_err());
        assert!(RoiAlignDims {
            h: 1 << 16,
            w: 1 << 16,
            ..d
        }
        .args()
        .is_err());
    }
}
