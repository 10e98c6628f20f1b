//! Softmax cross-entropy on the GPU (softmax_xent.cu): PyTorch's
//! F.cross_entropy(reduction="mean") with label smoothing and an ignore
//! index, as the CPU op — including its errors (a target out of range, every
//! row ignored), which cost one small device-to-host read per forward.

use super::cast;
use crate::autograd::record;
use crate::cuda::launch::{dense, on_device, traced_sync};
use crate::cuda::launch::{kdtype, kerr};
use crate::cuda::tensor::{alloc, gpu_of, ptr};
use crate::layout::Layout;
use crate::{DType, Error, Result, Tensor};
use kernels::device::Xent;

/// Floats of the stats block: [mean loss, valid rows, bad-target flag (as
/// int32 bits)], read back with one download.
const STATS_FLOATS: usize = 3;

/// Mean cross-entropy of logits [N, C] (self) against i64 targets [N];
/// a 0-d tensor of the logits' dtype.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    label_smoothing: f64,
    ignore_index: Option<i64>,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    crate::trace::op(
        OP,
        "forward",
        "cuda:xent_fwd+xent_finalize",
        &[logits, targets],
        || {
            let dtype = logits.dtype();
            let dt = kdtype(OP, dtype)?;
            let (n, c) = crate::ops::loss::check_cross_entropy(logits, targets, label_smoothing)?;
            let g = gpu_of(logits)?;
            let tgt = on_device(targets, logits.device())?;
            // row-major rows: a 2-D tensor's GPU default layout
            let x = if logits.is_contiguous() {
                logits.detach()
            } else {
                crate::cuda::tensor::contiguous(logits)?
            };
            let t = dense(&tgt)?;
            let row_loss = alloc(g, DType::F32, n)?;
            let lse = alloc(g, DType::F32, n)?;
            let stats = alloc(g, DType::F32, STATS_FLOATS)?;
            // row_loss is only read by xent_finalize, queued before it drops
            let bad = stats.ptr() + 8;
            g.memset(bad, 0, 4)?;
            let a = Xent {
                logits: ptr(&x)?,
                targets: ptr(&t)?,
                n,
                v: c,
                label_smoothing: label_smoothing as f32,
                ignore_index,
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
            g.download(&mut back, stats.ptr())?;
            let valid = f32::from_le_bytes(back[4..8].try_into().expect("4 bytes"));
            let bad_flag = i32::from_le_bytes(back[8..12].try_into().expect("4 bytes"));
            if bad_flag != 0 {
                // the host names the first offending row, as the CPU op does
                let tv = crate::cuda::tensor::download(&t)?.to_vec::<i64>()?;
                let (i, v) = tv
                    .iter()
                    .enumerate()
                    .find(|&(_, &v)| Some(v) != ignore_index && !(0..c as i64).contains(&v))
                    .map(|(i, &v)| (i, v))
                    .unwrap_or((0, tv.first().copied().unwrap_or(0)));
                let ign = ignore_index.map_or(String::new(), |v| {
                    format!(" and is not the ignore index {v}")
                });
                return Err(Error::arg(
                    OP,
                    format!("target[{i}] = {v} is outside [0, {c}){ign}"),
                ));
            }
            if valid == 0.0 {
                return Err(Error::arg(
                    OP,
                    format!(
                        "every one of the {n} rows is ignored (ignore index {ignore_index:?}): \
                     the mean is undefined (PyTorch returns NaN)"
                    ),
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
            let dev = logits.device();
            Ok(record(out, OP, &[logits, targets], move |dloss| {
                // the kernel reads g from the device as f32: no host sync
                let dl = on_device(dloss, dev)?;
                let dl = if dl.dtype() == DType::F32 {
                    dense(&dl)?
                } else {
                    cast(&dense(&dl)?, DType::F32)?
                };
                let dx = crate::cuda::tensor::empty(g, &[n, c], dtype)?;
                g.bind()?;
                // keep x, t, lse, stats alive until the launch is queued (the
                // allocator orders reuse on the one stream)
                let _keep = (&x, &t);
                // SAFETY: as the forward; dl one f32, dx [N, C] of dtype.
                unsafe {
                    g.kernels
                        .xent_backward(&g.stream, dt, &a, ptr(&dl)?, ptr(&dx)?)
                }
                .map_err(kerr(OP))?;
                let _ = (&lse, &stats);
                Ok(vec![Some(dx), None])
            }))
        },
    )
}
