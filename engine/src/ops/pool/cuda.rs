//! Pooling on the GPU over channels-last [N, C, H, W] tensors (pool.cu,
//! reduce.cu's gap kernels): global average pooling through gap_fwd/gap_bwd,
//! adaptive bins of one size as plain windows, uneven bins through the
//! adaptive kernel.

use super::{PoolGeom, PoolOps, Windows};
use crate::backend::{Cuda, Saved};
use crate::cuda::launch::{kdtype, kerr, traced_sync};
use crate::cuda::runtime::DeviceBlock;
use crate::cuda::tensor::{empty, gpu_of, ptr, to_default_layout};
use crate::{Error, Result, Tensor};
use kernels::device::{AvgMode, PoolDims};

/// The window of PyTorch's adaptive bins when every bin has the same size
/// (`size` divisible by `out`): kernel = stride = size / out.
fn adaptive_window(size: usize, out: usize) -> Option<usize> {
    (out > 0 && size.is_multiple_of(out)).then(|| size / out)
}

/// pool.cu's shape and averaging mode for a geometry.
fn dims(g: &PoolGeom) -> (PoolDims, AvgMode) {
    let d = |kernel, stride, padding| PoolDims {
        n: g.n,
        h: g.h,
        w: g.w,
        c: g.c,
        oh: g.oh,
        ow: g.ow,
        kernel,
        stride,
        padding,
    };
    match g.windows {
        Windows::Sliding {
            kernel,
            stride,
            padding,
            count_include_pad,
        } => (
            d(kernel, stride, padding),
            AvgMode::Window { count_include_pad },
        ),
        Windows::Adaptive => match (adaptive_window(g.h, g.oh), adaptive_window(g.w, g.ow)) {
            (Some(kh), Some(kw)) => (
                d([kh, kw], [kh, kw], [0, 0]),
                AvgMode::Window {
                    count_include_pad: false,
                },
            ),
            _ => (d([1, 1], [1, 1], [0, 0]), AvgMode::Adaptive),
        },
    }
}

/// Whether the pooling averages each whole plane (reduce.cu's gap kernels).
fn is_global(g: &PoolGeom) -> bool {
    g.windows == Windows::Adaptive && g.oh == 1 && g.ow == 1
}

/// The `forward` or backward (`bwd`) of an averaging pool: `src` has the
/// shape of the input (forward) or output (backward).
fn avg(src: &Tensor, g: &PoolGeom, bwd: bool) -> Result<Tensor> {
    const OP: &str = "avg_pool2d";
    let gpu = gpu_of(src)?;
    let dt = kdtype(OP, src.dtype())?;
    let src = to_default_layout(src)?;
    let shape = if bwd {
        [g.n, g.c, g.h, g.w]
    } else {
        [g.n, g.c, g.oh, g.ow]
    };
    let dst = empty(gpu, &shape, src.dtype())?;
    gpu.bind()?;
    if is_global(g) {
        crate::trace::kernel(if bwd { "gap_bwd" } else { "gap_fwd" });
        let (n, hw, c) = (g.n, g.h * g.w, g.c);
        // SAFETY: the NHWC [N, HW, C] side holds n*hw*c elements, the
        // pooled [N, C] side n*c; both dense in the default layout.
        unsafe {
            if bwd {
                gpu.kernels
                    .gap_bwd(&gpu.stream, dt, ptr(&src)?, ptr(&dst)?, n, hw, c)
            } else {
                gpu.kernels
                    .gap_fwd(&gpu.stream, dt, ptr(&src)?, ptr(&dst)?, n, hw, c)
            }
        }
        .map_err(kerr(OP))?;
    } else {
        let (d, mode) = dims(g);
        crate::trace::kernel(match (mode, bwd) {
            (AvgMode::Adaptive, false) => "adaptive_avgpool_fwd",
            (AvgMode::Adaptive, true) => "adaptive_avgpool_bwd",
            (_, false) => "avgpool_fwd",
            (_, true) => "avgpool_bwd",
        });
        // SAFETY: src and dst are dense NHWC tensors of the shapes pool.cu
        // reads and writes for `d` in this direction.
        unsafe {
            gpu.kernels
                .avgpool(&gpu.stream, dt, bwd, ptr(&src)?, ptr(&dst)?, &d, mode)
        }
        .map_err(kerr(OP))?;
    }
    traced_sync(gpu)?;
    Ok(dst)
}

impl PoolOps for Cuda {
    fn max_pool2d(&self, x: &Tensor, g: &PoolGeom) -> Result<(Tensor, Saved)> {
        const OP: &str = "max_pool2d";
        crate::trace::kernel("maxpool_fwd");
        let (d, _) = dims(g);
        let gpu = gpu_of(x)?;
        let dt = kdtype(OP, x.dtype())?;
        let xd = to_default_layout(x)?;
        let y = empty(gpu, &[g.n, g.c, g.oh, g.ow], x.dtype())?;
        let argmax: DeviceBlock = gpu.alloc(d.output_len() * 4)?;
        gpu.bind()?;
        // SAFETY: xd is NHWC [N, H, W, C], y NHWC [N, OH, OW, C], argmax
        // holds output_len int32.
        unsafe {
            gpu.kernels
                .maxpool_fwd(&gpu.stream, dt, ptr(&xd)?, ptr(&y)?, argmax.ptr(), &d)
        }
        .map_err(kerr(OP))?;
        traced_sync(gpu)?;
        Ok((y, Box::new(argmax)))
    }

    fn max_pool2d_backward(&self, dy: &Tensor, saved: &Saved, g: &PoolGeom) -> Result<Tensor> {
        const OP: &str = "max_pool2d";
        crate::trace::kernel("maxpool_bwd");
        let argmax: &DeviceBlock = saved
            .downcast_ref()
            .ok_or_else(|| Error::Autograd(format!("{OP}: saved argmax is not a GPU buffer")))?;
        let (d, _) = dims(g);
        let gpu = gpu_of(dy)?;
        let dt = kdtype(OP, dy.dtype())?;
        let dy = to_default_layout(dy)?;
        let dx = empty(gpu, &[g.n, g.c, g.h, g.w], dy.dtype())?;
        gpu.bind()?;
        // SAFETY: dy NHWC [N, OH, OW, C] like argmax (the front-end checked
        // its shape and dtype); dx NHWC input-sized.
        unsafe {
            gpu.kernels
                .maxpool_bwd(&gpu.stream, dt, ptr(&dy)?, argmax.ptr(), ptr(&dx)?, &d)
        }
        .map_err(kerr(OP))?;
        Ok(dx)
    }

    fn avg_pool2d(&self, x: &Tensor, g: &PoolGeom) -> Result<Tensor> {
        avg(x, g, false)
    }

    fn avg_pool2d_backward(&self, dy: &Tensor, g: &PoolGeom) -> Result<Tensor> {
        avg(dy, g, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_adaptive_bins_are_plain_windows() {
        assert_eq!(adaptive_window(7, 1), Some(7));
        assert_eq!(adaptive_window(14, 7), Some(2));
        assert_eq!(adaptive_window(7, 2), None);
        assert_eq!(adaptive_window(7, 0), None);
    }
}
