//! Softmax cross-entropy on the GPU (softmax_xent.cu): PyTorch's
//! F.cross_entropy(reduction="mean") with label smoothing and an ignore
//! index, as the CPU backend — including its errors (a target out of range,
//! every row ignored), which cost one small device-to-host read per
//! forward. Softmax, BCE-with-logits and smooth-L1 have no GPU kernels.

use super::{target_rows, LossOps, XentGeom};
use crate::backend::{Cuda, Saved};
use crate::cuda::launch::cast;
use crate::cuda::launch::{dense, kdtype, kerr, on_device, traced_sync};
use crate::cuda::runtime::Gpu;
use crate::cuda::storage::DeviceStorage;
use crate::cuda::tensor::{alloc, contiguous, download, empty, gpu_of, ptr};
use crate::layout::Layout;
use crate::{DType, Error, Result, Tensor};
use kernels::device::Xent;

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

impl LossOps for Cuda {
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
        stats.block().download_at(0, &mut back)?;
        let valid = f32::from_le_bytes(back[4..8].try_into().expect("4 bytes"));
        let bad_flag = i32::from_le_bytes(back[8..12].try_into().expect("4 bytes"));
        if bad_flag != 0 || valid == 0.0 {
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
