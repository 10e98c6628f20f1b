//! Softmax cross-entropy on the GPU (softmax_xent.cu): PyTorch's
//! F.cross_entropy(reduction="mean") with label smoothing and an ignore
//! index, as the CPU backend — including its errors (a target out of range,
//! every row ignored), which cost one small device-to-host read per
//! forward. Softmax / log_softmax over any dim (one warp per row) and the
//! mean BCE-with-logits and smooth-L1 with their backward run loss.cu:
//! none of them reads anything back to the host.

use super::{target_rows, LossOps, Pointwise, SoftmaxGeom, XentGeom};
use crate::backend::{Cuda, Saved};
use crate::cuda::launch::cast;
use crate::cuda::launch::{
    dense, empty_like, kdtype, kerr, on_device, same_gpu, traced_sync, with_strides_of,
};
use crate::cuda::runtime::Gpu;
use crate::cuda::storage::DeviceStorage;
use crate::cuda::tensor::{alloc, contiguous, download, empty, gpu_of, ptr};
use crate::layout::Layout;
use crate::{DType, Error, Result, Tensor};
use kernels::device::{PointwiseLoss, SoftmaxDims, Xent};
use kernels::families::reduce::SUM_MAX_PARTIALS;

/// Floats of the stats block: [mean loss, valid rows, bad-target flag (as
/// int32 bits)], read back with one download.
const STATS_FLOATS: usize = 3;

/// What the backward needs: the kernels' operands, and the buffers they
/// point to, kept alive.
struct XentSaved {
    g: &'static Gpu,
    a: Xent,
    _x: Tensor,
    _t: Tensor,
    _lse: DeviceStorage,
    _stats: DeviceStorage,
}

/// `t` itself when row-major, else a row-major copy (the softmax kernels
/// read [outer, size, inner] row-major).
fn row_major(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() {
        Ok(t.clone())
    } else {
        contiguous(t)
    }
}

fn softmax_dims(g: &SoftmaxGeom) -> SoftmaxDims {
    SoftmaxDims {
        outer: g.outer,
        size: g.size,
        inner: g.inner,
        log: g.log,
    }
}

/// The softmax forward (dy None) or backward of `x` (the output y for the
/// backward), into a new row-major tensor.
fn softmax_run(x: &Tensor, dy: Option<&Tensor>, geom: &SoftmaxGeom) -> Result<Tensor> {
    let op = geom.name();
    let g = match dy {
        Some(dy) => same_gpu(op, &[x, dy])?,
        None => gpu_of(x)?,
    };
    let dt = kdtype(op, x.dtype())?;
    let x = row_major(x)?;
    let dy = dy.map(row_major).transpose()?;
    let s = alloc(g, x.dtype(), x.numel())?;
    g.bind()?;
    // SAFETY: x, dy and s hold outer*size*inner elements of x's dtype,
    // row-major.
    unsafe {
        g.kernels.softmax(
            &g.stream,
            dt,
            &softmax_dims(geom),
            ptr(&x)?,
            dy.as_ref().map(ptr).transpose()?,
            s.ptr(),
        )
    }
    .map_err(kerr(op))?;
    traced_sync(g)?;
    Ok(Tensor::from_device_parts(s, Layout::contiguous(x.dims())))
}

fn pointwise_kind(kind: Pointwise) -> PointwiseLoss {
    match kind {
        Pointwise::BceWithLogits => PointwiseLoss::BceWithLogits,
        Pointwise::SmoothL1 { beta } => PointwiseLoss::SmoothL1 { beta: beta as f32 },
    }
}

/// x dense and t in x's element order (same strides).
fn pair(op: &'static str, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
    let x = dense(x)?;
    let t = with_strides_of(op, t, &x)?;
    Ok((x, t))
}

impl LossOps for Cuda {
    fn softmax(&self, x: &Tensor, g: &SoftmaxGeom) -> Result<Tensor> {
        crate::trace::kernel("softmax_fwd");
        softmax_run(x, None, g)
    }

    fn softmax_backward(&self, y: &Tensor, dy: &Tensor, g: &SoftmaxGeom) -> Result<Tensor> {
        crate::trace::kernel("softmax_bwd");
        softmax_run(y, Some(dy), g)
    }

    /// The sum (f32 partials per block, finished in double), times 1/n in
    /// f32, rounded to x's dtype: no host read.
    fn pointwise_loss(&self, x: &Tensor, t: &Tensor, kind: Pointwise) -> Result<Tensor> {
        let op = kind.name();
        crate::trace::kernel("pointwise_loss_partial+sum_finalize");
        let g = same_gpu(op, &[x, t])?;
        let dt = kdtype(op, x.dtype())?;
        let (xd, td) = pair(op, x, t)?;
        let n = xd.numel();
        let partials = alloc(g, DType::F32, SUM_MAX_PARTIALS as usize)?;
        let sum = alloc(g, DType::F32, 1)?;
        g.bind()?;
        // SAFETY: xd and td hold n elements of x's dtype in one order;
        // partials SUM_MAX_PARTIALS f32, sum one f32 (scaled in place).
        unsafe {
            g.kernels.pointwise_loss_sum(
                &g.stream,
                dt,
                pointwise_kind(kind),
                ptr(&xd)?,
                ptr(&td)?,
                n,
                partials.ptr(),
                sum.ptr(),
            )
        }
        .map_err(kerr(op))?;
        // SAFETY: sum is one f32, scaled in place.
        unsafe {
            g.kernels.scale(
                &g.stream,
                kernels::device::Dtype::F32,
                sum.ptr(),
                sum.ptr(),
                (1.0 / n as f64) as f32,
                1,
            )
        }
        .map_err(kerr(op))?;
        let mean = Tensor::from_device_parts(sum, Layout::contiguous(&[]));
        let out = cast(&mean, x.dtype())?;
        traced_sync(g)?;
        Ok(out)
    }

    fn pointwise_loss_backward(
        &self,
        x: &Tensor,
        t: &Tensor,
        dloss: &Tensor,
        kind: Pointwise,
    ) -> Result<Tensor> {
        let op = kind.name();
        crate::trace::kernel("pointwise_loss_bwd");
        let dl = on_device(dloss, x.device())?;
        let g = same_gpu(op, &[x, t, &dl])?;
        let dt = kdtype(op, x.dtype())?;
        let (xd, td) = pair(op, x, t)?;
        // the kernel reads the loss gradient from the device as f32
        let dl = cast(&dense(&dl)?, DType::F32)?;
        let dx = empty_like(&xd, x.dtype())?;
        g.bind()?;
        // SAFETY: xd, td, dx hold numel elements of x's dtype in one order;
        // dl one f32.
        unsafe {
            g.kernels.pointwise_loss_backward(
                &g.stream,
                dt,
                pointwise_kind(kind),
                ptr(&xd)?,
                ptr(&td)?,
                ptr(&dl)?,
                xd.numel(),
                ptr(&dx)?,
            )
        }
        .map_err(kerr(op))?;
        traced_sync(g)?;
        Ok(dx)
    }

    fn cross_entropy(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        geom: &XentGeom,
    ) -> Result<(Tensor, Saved)> {
        const OP: &str = "cross_entropy";
        crate::trace::kernel("xent_fwd+xent_finalize");
        let (n, c) = (geom.n, geom.c);
        let dtype = logits.dtype();
        let dt = kdtype(OP, dtype)?;
        let g = gpu_of(logits)?;
        // host targets are checked on the host, as the CPU backend checks
        // them, before they go up: the forward then reads nothing back.
        // Device targets are checked by the kernel, whose flag is read back
        // here (not while a CUDA graph is captured: whoever replays one
        // checks the targets before each replay, as models::train does)
        let on_host = targets.device() == crate::Device::Cpu;
        if on_host {
            target_rows(&targets.to_vec::<i64>()?, c, geom.ignore_index)?;
        }
        let read_back = !on_host && !g.capturing();
        let tgt = on_device(targets, logits.device())?;
        // row-major rows: a 2-D tensor's GPU default layout
        let x = if logits.is_contiguous() {
            logits.detach()
        } else {
            contiguous(logits)?
        };
        let t = dense(&tgt)?;
        let row_loss = alloc(g, DType::F32, n)?;
        let lse = alloc(g, DType::F32, n)?;
        let stats = alloc(g, DType::F32, STATS_FLOATS)?;
        // row_loss is only read by xent_finalize, queued before it drops
        let bad = stats.ptr() + 8;
        stats.block().memset_at(8, 4, 0)?;
        let a = Xent {
            logits: ptr(&x)?,
            targets: ptr(&t)?,
            n,
            v: c,
            label_smoothing: geom.label_smoothing as f32,
            ignore_index: geom.ignore_index,
            row_loss: row_loss.ptr(),
            lse: lse.ptr(),
            stats: stats.ptr(),
            bad_target: bad,
        };
        g.bind()?;
        // SAFETY: x is [N, C] row-major, t N i64; row_loss/lse N floats;
        // stats 3 floats with the zeroed int flag in the third.
        unsafe { g.kernels.xent_forward(&g.stream, dt, &a) }.map_err(kerr(OP))?;
        let mut back = [0u8; STATS_FLOATS * 4];
        if read_back {
            stats.block().download_at(0, &mut back)?;
        }
        let valid = f32::from_le_bytes(back[4..8].try_into().expect("4 bytes"));
        let bad_flag = i32::from_le_bytes(back[8..12].try_into().expect("4 bytes"));
        if read_back && (bad_flag != 0 || valid == 0.0) {
            // the host names the first offending row, as the CPU backend does
            target_rows(&download(&t)?.to_vec::<i64>()?, c, geom.ignore_index)?;
            return Err(Error::arg(
                OP,
                format!("the GPU flagged the targets (bad {bad_flag}, valid rows {valid}) but the host finds them valid"),
            ));
        }
        let loss32 = Tensor::from_device_parts(
            stats.clone(),
            Layout {
                shape: vec![],
                strides: vec![],
                offset: 0,
            },
        );
        let out = cast(&loss32, dtype)?;
        traced_sync(g)?;
        let saved = XentSaved {
            g,
            a,
            _x: x,
            _t: t,
            _lse: lse,
            _stats: stats,
        };
        Ok((out, Box::new(saved)))
    }

    fn cross_entropy_backward(
        &self,
        dloss: &Tensor,
        saved: &Saved,
        geom: &XentGeom,
    ) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        crate::trace::kernel("xent_bwd");
        let s: &XentSaved = saved
            .downcast_ref()
            .ok_or_else(|| Error::Autograd(format!("{OP}: saved state is not the GPU's")))?;
        let g = s.g;
        let dtype = dloss.dtype();
        let dt = kdtype(OP, dtype)?;
        // the kernel reads the loss gradient from the device as f32: no host sync
        let dl = if dtype == DType::F32 {
            dense(dloss)?
        } else {
            cast(&dense(dloss)?, DType::F32)?
        };
        let dx = empty(g, &[geom.n, geom.c], dtype)?;
        g.bind()?;
        // SAFETY: as the forward (s keeps its buffers alive); dl one f32,
        // dx [N, C] of the logits' dtype (dloss has it: checked).
        unsafe {
            g.kernels
                .xent_backward(&g.stream, dt, &s.a, ptr(&dl)?, ptr(&dx)?)
        }
        .map_err(kerr(OP))?;
        Ok(dx)
    }
}
