//! Pooling on the GPU over channels-last [N, C, H, W] tensors (pool.cu,
//! reduce.cu's gap kernels), with the CPU ops' semantics and autograd:
//! max pooling (first maximum in window order, NaN propagates), average
//! pooling (count_include_pad as PyTorch) and adaptive average pooling
//! (global: gap_fwd/gap_bwd; evenly dividing bins: average pooling).

use super::elementwise::{on_device, traced_sync};
use super::{kdtype, kerr};
use crate::autograd::record;
use crate::cuda::runtime::DeviceBlock;
use crate::cuda::tensor::{empty, gpu_of, ptr, to_default_layout};
use crate::{Error, Result, Tensor};
use kernels::device::{AvgMode, PoolDims};

/// [N, C, H, W] of a pooling input, or the CPU op's error.
fn nchw(op: &'static str, x: &Tensor) -> Result<[usize; 4]> {
    match *x.dims() {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(Error::shape(
            op,
            format!(
                "input [N, C, H, W] must have 4 dims, got shape {:?}",
                x.dims()
            ),
        )),
    }
}

/// The pool.cu shape of a window op, checked as the CPU op checks it.
fn window(
    op: &'static str,
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<PoolDims> {
    let [n, c, h, w] = nchw(op, x)?;
    if h == 0 || w == 0 {
        return Err(Error::shape(
            op,
            format!("input {:?} has an empty plane", x.dims()),
        ));
    }
    let out = |i: usize, size: usize| {
        kernels::launch::pool_out(size, kernel[i], stride[i], padding[i])
            .map_err(|e| Error::arg(op, format!("{e} (input {:?})", x.dims())))
    };
    Ok(PoolDims {
        n,
        h,
        w,
        c,
        oh: out(0, h)?,
        ow: out(1, w)?,
        kernel,
        stride,
        padding,
    })
}

/// Max over each window; padding acts as -inf; backward routes each
/// gradient to its window's first maximum.
pub fn max_pool2d(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Tensor> {
    const OP: &str = "max_pool2d";
    crate::trace::op(OP, "forward", "cuda:maxpool_fwd", &[x], || {
        let d = window(OP, x, kernel, stride, padding)?;
        let g = gpu_of(x)?;
        let dt = kdtype(OP, x.dtype())?;
        let xd = to_default_layout(x)?;
        let y = empty(g, &[d.n, d.c, d.oh, d.ow], x.dtype())?;
        let argmax: DeviceBlock = g.alloc(d.output_len() * 4)?;
        g.bind()?;
        // SAFETY: xd is NHWC [N, H, W, C], y NHWC [N, OH, OW, C], argmax
        // holds output_len int32.
        unsafe {
            g.kernels
                .maxpool_fwd(&g.stream, dt, ptr(&xd)?, ptr(&y)?, argmax.ptr(), &d)
        }
        .map_err(kerr(OP))?;
        traced_sync(g)?;
        let (dtype, dev) = (x.dtype(), x.device());
        Ok(record(y, OP, &[x], move |dy| {
            let dy = to_default_layout(&on_device(dy, dev)?)?;
            let dx = empty(g, &[d.n, d.c, d.h, d.w], dtype)?;
            g.bind()?;
            // SAFETY: dy NHWC [N, OH, OW, C] like argmax; dx NHWC input-sized.
            unsafe {
                g.kernels
                    .maxpool_bwd(&g.stream, dt, ptr(&dy)?, argmax.ptr(), ptr(&dx)?, &d)
            }
            .map_err(kerr(OP))?;
            Ok(vec![Some(dx)])
        }))
    })
}

/// Window means through avgpool_fwd/avgpool_bwd.
fn avg_pool(op: &'static str, x: &Tensor, d: PoolDims, mode: AvgMode) -> Result<Tensor> {
    let ran = match mode {
        AvgMode::Window { .. } => "cuda:avgpool_fwd",
        AvgMode::Adaptive => "cuda:adaptive_avgpool_fwd",
    };
    crate::trace::op(op, "forward", ran, &[x], || {
        let g = gpu_of(x)?;
        let dt = kdtype(op, x.dtype())?;
        let xd = to_default_layout(x)?;
        let y = empty(g, &[d.n, d.c, d.oh, d.ow], x.dtype())?;
        g.bind()?;
        // SAFETY: xd NHWC input-sized, y NHWC output-sized.
        unsafe {
            g.kernels
                .avgpool(&g.stream, dt, false, ptr(&xd)?, ptr(&y)?, &d, mode)
        }
        .map_err(kerr(op))?;
        traced_sync(g)?;
        let (dtype, dev) = (x.dtype(), x.device());
        Ok(record(y, op, &[x], move |dy| {
            let dy = to_default_layout(&on_device(dy, dev)?)?;
            let dx = empty(g, &[d.n, d.c, d.h, d.w], dtype)?;
            g.bind()?;
            // SAFETY: dy NHWC output-sized, dx NHWC input-sized.
            unsafe {
                g.kernels
                    .avgpool(&g.stream, dt, true, ptr(&dy)?, ptr(&dx)?, &d, mode)
            }
            .map_err(kerr(op))?;
            Ok(vec![Some(dx)])
        }))
    })
}

/// Mean over each window; `count_include_pad` divides by the full window
/// (clipped to the padded extent), else by the in-bounds count.
pub fn avg_pool2d(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    count_include_pad: bool,
) -> Result<Tensor> {
    let d = window("avg_pool2d", x, kernel, stride, padding)?;
    avg_pool("avg_pool2d", x, d, AvgMode::Window { count_include_pad })
}

/// The pooling window equal to PyTorch's adaptive bins when every bin has
/// the same size (`size` divisible by `out`): kernel = stride = size / out.
pub fn adaptive_window(size: usize, out: usize) -> Option<usize> {
    (out > 0 && size.is_multiple_of(out)).then(|| size / out)
}

/// Mean over PyTorch's adaptive bins: global average pooling for [1, 1],
/// plain windows when the bins divide the input, else the adaptive kernel.
pub fn adaptive_avg_pool2d(x: &Tensor, out: [usize; 2]) -> Result<Tensor> {
    const OP: &str = "adaptive_avg_pool2d";
    let [n, c, h, w] = nchw(OP, x)?;
    if out.contains(&0) || h == 0 || w == 0 {
        return Err(Error::arg(
            OP,
            format!("output size {out:?} and input size [{h}, {w}] must be >= 1"),
        ));
    }
    if out != [1, 1] {
        let d = PoolDims {
            n,
            h,
            w,
            c,
            oh: out[0],
            ow: out[1],
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
        };
        // bins of one size are plain windows (kernel = stride = size / out)
        return match (adaptive_window(h, out[0]), adaptive_window(w, out[1])) {
            (Some(kh), Some(kw)) => {
                let d = PoolDims {
                    kernel: [kh, kw],
                    stride: [kh, kw],
                    ..d
                };
                avg_pool(
                    OP,
                    x,
                    d,
                    AvgMode::Window {
                        count_include_pad: false,
                    },
                )
            }
            _ => avg_pool(OP, x, d, AvgMode::Adaptive),
        };
    }
    crate::trace::op(OP, "forward", "cuda:gap_fwd", &[x], || {
        let g = gpu_of(x)?;
        let dt = kdtype(OP, x.dtype())?;
        let xd = to_default_layout(x)?;
        // [N, C, 1, 1] channels-last is [N, C] row-major
        let y = empty(g, &[n, c, 1, 1], x.dtype())?;
        g.bind()?;
        // SAFETY: xd NHWC = [N, HW, C]; y holds N*C elements.
        unsafe {
            g.kernels
                .gap_fwd(&g.stream, dt, ptr(&xd)?, ptr(&y)?, n, h * w, c)
        }
        .map_err(kerr(OP))?;
        traced_sync(g)?;
        let (dtype, dev) = (x.dtype(), x.device());
        Ok(record(y, OP, &[x], move |dy| {
            let dy = to_default_layout(&on_device(dy, dev)?)?;
            let dx = empty(g, &[n, c, h, w], dtype)?;
            g.bind()?;
            // SAFETY: dy holds N*C elements ([N, C]); dx NHWC [N, HW, C].
            unsafe {
                g.kernels
                    .gap_bwd(&g.stream, dt, ptr(&dy)?, ptr(&dx)?, n, h * w, c)
            }
            .map_err(kerr(OP))?;
            Ok(vec![Some(dx)])
        }))
    })
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
