//! RoIAlign forward and backward over NHWC feature maps (roi_align.cu): one
//! map, or up to [`ROI_MAX_LEVELS`] FPN levels with a level per box.

use crate::error::{Error, Result};
use crate::launch::{self, to_i32};
use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, DeviceRepr, PushKernelArg};

pub const KERNEL: Kernel = kernel!("roi_align",
    typed ["roi_align_fwd", "roi_align_bwd"]
    untyped []);

/// The most maps one launch pools from (roi_align.cu's ROI_MAX_LEVELS).
pub const ROI_MAX_LEVELS: usize = 8;

/// One map RoIAlign pools from (or, backward, adds into): NHWC [N, h, w, C]
/// at `spatial_scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiLevel {
    pub map: DevPtr,
    pub h: usize,
    pub w: usize,
    pub spatial_scale: f32,
}

/// A RoIAlign of K boxes [K, 5] over maps of N images and C channels into
/// [K, PH, PW, C] (roi_align.cu's RoiShape less the per-level fields).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiAlignDims {
    pub n: usize,
    pub c: usize,
    pub k: usize,
    pub ph: usize,
    pub pw: usize,
    /// <= 0: adaptive (ceil(bin size) samples a side).
    pub sampling_ratio: i32,
    pub aligned: bool,
}

/// roi_align.cu's `RoiLevels`, passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RoiLevelsArg {
    map: [u64; ROI_MAX_LEVELS],
    h: [i32; ROI_MAX_LEVELS],
    w: [i32; ROI_MAX_LEVELS],
    scale: [f32; ROI_MAX_LEVELS],
}

// SAFETY: plain old data with the same C layout as roi_align.cu's struct.
unsafe impl DeviceRepr for RoiLevelsArg {}

impl RoiAlignDims {
    /// The 5 int32 shape arguments in roi_align.cu's order (N, C, K, PH,
    /// PW), checked to fit.
    pub fn args(&self) -> Result<[i32; 5]> {
        let v = [self.n, self.c, self.k, self.ph, self.pw];
        let mut out = [0i32; 5];
        for (o, &d) in out.iter_mut().zip(&v) {
            *o = to_i32("roi_align dim", d)?;
        }
        Ok(out)
    }
    pub fn output_len(&self) -> usize {
        self.k * self.ph * self.pw * self.c
    }
    /// The elements of a map of `h` x `w`.
    pub fn map_len(&self, h: usize, w: usize) -> usize {
        self.n * h * w * self.c
    }
}

/// The kernels' `RoiLevels` for 1..=ROI_MAX_LEVELS maps; unused slots
/// repeat map 0 (never selected: the host checks every level index).
fn levels_arg(maps: &[RoiLevel]) -> Result<RoiLevelsArg> {
    if maps.is_empty() || maps.len() > ROI_MAX_LEVELS {
        return Err(Error::Shape(format!(
            "roi_align pools from 1 to {ROI_MAX_LEVELS} maps, got {}",
            maps.len()
        )));
    }
    let mut a = RoiLevelsArg {
        map: [maps[0].map; ROI_MAX_LEVELS],
        h: [0; ROI_MAX_LEVELS],
        w: [0; ROI_MAX_LEVELS],
        scale: [maps[0].spatial_scale; ROI_MAX_LEVELS],
    };
    a.h = [to_i32("roi_align H", maps[0].h)?; ROI_MAX_LEVELS];
    a.w = [to_i32("roi_align W", maps[0].w)?; ROI_MAX_LEVELS];
    for (i, m) in maps.iter().enumerate() {
        a.map[i] = m.map;
        a.h[i] = to_i32("roi_align H", m.h)?;
        a.w[i] = to_i32("roi_align W", m.w)?;
        // the kernels' pixel offsets (y*W + x) are int32
        to_i32("roi_align H*W", m.h * m.w)?;
        a.scale[i] = m.spatial_scale;
    }
    Ok(a)
}

impl KernelLibrary {
    /// RoIAlign forward: y [K, PH, PW, C] (dtype) from `maps` (dtype) and
    /// boxes [K, 5] (dtype), box k pooled from map `levels[k]` (`levels`:
    /// K int32, or 0 to pool every box from map 0).
    ///
    /// # Safety
    /// every map: `d.map_len(h, w)` elements of `dtype`; boxes: 5*K of
    /// `dtype`; levels: 0 or K int32 in [0, maps.len()); y: `d.output_len()`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn roi_align_fwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        d: &RoiAlignDims,
        maps: &[RoiLevel],
        boxes: DevPtr,
        levels: DevPtr,
        y: DevPtr,
    ) -> Result<()> {
        self.roi_align(stream, "roi_align_fwd", dtype, d, maps, &[boxes, levels, y])
    }

    /// RoIAlign backward: atomically adds dy's contributions into the f32
    /// `dxs` (one per level, NHWC [N, h, w, C]), which the caller must have
    /// zeroed. Summation order varies between runs (atomics), so dx is not
    /// bitwise deterministic.
    ///
    /// # Safety
    /// dy: `d.output_len()` elements of `dtype`; boxes: 5*K of `dtype`;
    /// levels as [`Self::roi_align_fwd`]'s; every dx: `d.map_len(h, w)` f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn roi_align_bwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        d: &RoiAlignDims,
        dxs: &[RoiLevel],
        dy: DevPtr,
        boxes: DevPtr,
        levels: DevPtr,
    ) -> Result<()> {
        self.roi_align(stream, "roi_align_bwd", dtype, d, dxs, &[dy, boxes, levels])
    }

    unsafe fn roi_align(
        &self,
        stream: &CudaStream,
        kernel: &str,
        dtype: Dtype,
        d: &RoiAlignDims,
        maps: &[RoiLevel],
        ptrs: &[DevPtr; 3],
    ) -> Result<()> {
        let a = d.args()?;
        let maps = levels_arg(maps)?;
        let Some(shape) = launch::elementwise(d.output_len(), 1, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("{kernel}_{}", dtype.suffix());
        let f = self.function(&name)?;
        let aligned = d.aligned as i32;
        let mut b = stream.launch_builder(&f);
        for p in ptrs {
            b.arg(p);
        }
        for v in &a {
            b.arg(v);
        }
        b.arg(&d.sampling_ratio).arg(&aligned).arg(&maps);
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
            k: 300,
            ph: 7,
            pw: 6,
            sampling_ratio: 2,
            aligned: true,
        };
        assert_eq!(d.args().unwrap(), [2, 256, 300, 7, 6]);
        assert_eq!(d.map_len(50, 68), 2 * 50 * 68 * 256);
        assert_eq!(d.output_len(), 300 * 7 * 6 * 256);
        assert!(RoiAlignDims { c: 1 << 31, ..d }.args().is_err());
    }

    #[test]
    fn roi_levels_fill_the_kernel_struct() {
        let level = |i: u64| RoiLevel {
            map: 0x1000 * i,
            h: 10 * i as usize,
            w: 12 * i as usize,
            spatial_scale: 1.0 / i as f32,
        };
        let a = levels_arg(&[level(1), level(2)]).unwrap();
        assert_eq!(a.map[..3], [0x1000, 0x2000, 0x1000]);
        assert_eq!(a.h[..3], [10, 20, 10]);
        assert_eq!(a.w[..2], [12, 24]);
        assert_eq!(a.scale[..2], [1.0, 0.5]);
        assert_eq!(std::mem::size_of::<RoiLevelsArg>(), 8 * 8 + 3 * 4 * 8);
        assert!(levels_arg(&[]).is_err());
        assert!(levels_arg(&[level(1); ROI_MAX_LEVELS + 1]).is_err());
        let huge = RoiLevel {
            h: 1 << 16,
            w: 1 << 16,
            ..level(1)
        };
        assert!(levels_arg(&[huge]).is_err());
    }
}
