//! Resizing on the GPU (upsample.cu) over channels-last tensors: the host
//! computes each axis's taps with the CPU backend's own functions
//! (`cpu::nearest_indices`, `cpu::linear_weights::<f32>`, the compute type
//! of f32/f16/bf16), uploads them with one small host-to-device copy, and
//! the kernels sample exactly the CPU's pixels. The backward gathers per
//! input pixel (deterministic, no atomics).

use super::cpu::{linear_weights, nearest_indices, Lerp};
use super::{Mode, Resize, UpsampleOps};
use crate::backend::Cuda;
use crate::cuda::launch::{kdtype, kerr, traced_sync};
use crate::cuda::tensor::{alloc, empty, gpu_of, ptr, to_default_layout};
use crate::{DType, Result, Tensor};
use kernels::device::{ResizeDims, ResizeTables, Tap};

/// The taps of one axis resized `input` -> `output`.
fn taps(mode: Mode, input: usize, output: usize) -> Vec<Tap> {
    match mode {
        Mode::Nearest { scale_factor } => nearest_indices(input, output, scale_factor)
            .into_iter()
            .map(|i| Tap {
                i0: i,
                i1: i,
                l0: 1.0,
                l1: 0.0,
            })
            .collect(),
        Mode::Bilinear { align_corners } => linear_weights::<f32>(input, output, align_corners)
            .into_iter()
            .map(tap)
            .collect(),
    }
}

/// The forward (src = x) or backward (src = dy) of resize `r`, into a new
/// tensor in the GPU default layout.
fn resize(src: &Tensor, r: &Resize, backward: bool) -> Result<Tensor> {
    let op = r.mode.op();
    let g = gpu_of(src)?;
    let dt = kdtype(op, src.dtype())?;
    let d = ResizeDims {
        n: r.n,
        c: r.c,
        h: r.h,
        w: r.w,
        oh: r.oh,
        ow: r.ow,
        nearest: matches!(r.mode, Mode::Nearest { .. }),
    };
    let t = ResizeTables::new(&d, &taps(r.mode, r.h, r.oh), &taps(r.mode, r.w, r.ow))
        .map_err(kerr(op))?;
    let tables = alloc(g, DType::U8, t.bytes.len())?;
    tables.block().upload_queued_at(0, &t.bytes)?;
    // NHWC: the 4-D GPU default layout, dense
    let src = to_default_layout(src)?;
    let shape = if backward {
        [r.n, r.c, r.h, r.w]
    } else {
        [r.n, r.c, r.oh, r.ow]
    };
    let out = empty(g, &shape, src.dtype())?;
    g.bind()?;
    // SAFETY: src and out are NHWC dense with the dims of d for this
    // direction; tables holds t.bytes, checked against d.
    unsafe {
        g.kernels.upsample(
            &g.stream,
            dt,
            &d,
            &t,
            tables.ptr(),
            backward,
            ptr(&src)?,
            ptr(&out)?,
        )
    }
    .map_err(kerr(op))?;
    traced_sync(g)?;
    Ok(out)
}

impl UpsampleOps for Cuda {
    fn upsample2d(&self, x: &Tensor, g: &Resize) -> Result<Tensor> {
        crate::trace::kernel("upsample_fwd");
        resize(x, g, false)
    }

    fn upsample2d_backward(&self, dy: &Tensor, g: &Resize) -> Result<Tensor> {
        crate::trace::kernel("upsample_bwd");
        resize(dy, g, true)
    }
}

/// A CPU interpolation tap in the kernels' form (the GPU computes in f32).
pub(crate) fn tap(l: Lerp<f32>) -> Tap {
    Tap {
        i0: l.i0,
        i1: l.i1,
        l0: l.l0,
        l1: l.l1,
    }
}
