//! BatchNorm on the GPU, with the CPU backend's contract: functional running
//! statistics (training returns NEW running tensors: the old ones are
//! copied into fresh buffers that the kernel updates) and the same
//! gradients.
//!
//! x is [N, C, H, W] (channels-last on the GPU: [M = N*H*W, C]) or [N, C]
//! (row-major: [M = N, C]). batchnorm.cu runs every case; training on
//! [N, C] without a residual (the projector's BatchNorm1d+ReLU) runs
//! bn1d_relu.cu instead: one launch per direction. The kernels keep
//! statistics and parameters in f32; parameters stored as f16/bf16 (which
//! the CPU op accepts when x has that dtype) are converted, and their
//! gradients and running statistics converted back.

use super::{BatchNormArgs, BatchNormOps, BnGeom, Fuse, Needs};
use crate::backend::{Cuda, Saved};
use crate::cuda::launch::cast;
use crate::cuda::launch::{empty_like, kdtype, kerr, traced_sync};
use crate::cuda::runtime::Gpu;
use crate::cuda::storage::DeviceStorage;
use crate::cuda::tensor::{alloc, block_of, gpu_of, is_dense, ptr, to_default_layout};
use crate::layout::Layout;
use crate::{DType, Error, Result, Tensor};
use kernels::device::{bn_workspace_floats, Bn1dBackward, Bn1dForward, BnBackward, BnForward};

/// [M, C] of x: the GPU takes float [N, C] and [N, C, H, W] only.
fn rows(op: &'static str, x: &Tensor, g: &BnGeom) -> Result<(usize, usize)> {
    kdtype(op, x.dtype())?;
    if x.rank() != 2 && x.rank() != 4 {
        return Err(Error::shape(
            op,
            format!(
                "on the GPU, x must be [N, C] or [N, C, H, W], got {:?} ({})",
                x.dims(),
                x.dtype()
            ),
        ));
    }
    Ok((g.n * g.s, g.c))
}

/// Whether bn1d_relu.cu runs this batch norm (both directions): training
/// over [N, C] without a residual. It has no eval mode and no residual.
fn one_launch(g: &BnGeom) -> bool {
    g.s == 1 && g.training && g.fuse != Fuse::AddRelu
}

/// A [C] parameter as a dense f32 GPU tensor.
fn f32_param(t: &Tensor) -> Result<Tensor> {
    let t = if t.dtype() == DType::F32 {
        t.detach()
    } else {
        cast(t, DType::F32)?
    };
    if is_dense(t.layout()) {
        Ok(t)
    } else {
        to_default_layout(&t)
    }
}

/// A fresh f32 [C] tensor over new storage.
fn f32_vec(g: &'static Gpu, c: usize) -> Result<(DeviceStorage, Tensor)> {
    let s = alloc(g, DType::F32, c)?;
    let t = Tensor::from_device_parts(s.clone(), Layout::contiguous(&[c]));
    Ok((s, t))
}

/// An f32 [C] result in `dtype` (the parameter's).
fn as_dtype(t: Tensor, dtype: DType) -> Result<Tensor> {
    if dtype == DType::F32 {
        Ok(t)
    } else {
        cast(&t, dtype)
    }
}

/// f32 workspace for batchnorm.cu over [M, C].
fn workspace(op: &'static str, g: &'static Gpu, m: usize, c: usize) -> Result<DeviceStorage> {
    let floats = bn_workspace_floats(m, c, &g.kernels.gpu()).map_err(kerr(op))?;
    alloc(g, DType::F32, floats)
}

/// What the GPU backward needs: x, the output (ReLU mask), the f32
/// statistics and weight.
struct GpuSaved {
    x: Tensor,
    out: Option<Tensor>,
    mean: DeviceStorage,
    invstd: DeviceStorage,
    weight: Tensor,
    w_dtype: DType,
}

impl BatchNormOps for Cuda {
    fn batch_norm(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        a: &BatchNormArgs,
        geom: &BnGeom,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>, Saved)> {
        let op = geom.fuse.name();
        let (m, c) = rows(op, x, geom)?;
        let g = gpu_of(x)?;
        let dt = kdtype(op, x.dtype())?;
        let fused = geom.fuse != Fuse::None;

        let xd = to_default_layout(x)?;
        let res = residual.map(to_default_layout).transpose()?;
        let weight = f32_param(a.weight)?;
        let bias = f32_param(a.bias)?;
        let (rm_old, rv_old) = (f32_param(a.running_mean)?, f32_param(a.running_var)?);
        let y = empty_like(&xd, x.dtype())?;
        let (mean_s, _) = f32_vec(g, c)?;
        let (invstd_s, _) = f32_vec(g, c)?;
        // training updates copies: the op returns new running tensors
        let running = if geom.training {
            let (rm_s, rm) = f32_vec(g, c)?;
            let (rv_s, rv) = f32_vec(g, c)?;
            let (rm_src, rm_at) = block_of(&rm_old)?;
            rm_s.block().copy_from(0, rm_src, rm_at, c * 4)?;
            let (rv_src, rv_at) = block_of(&rv_old)?;
            rv_s.block().copy_from(0, rv_src, rv_at, c * 4)?;
            Some((rm, rv))
        } else {
            None
        };
        let (rm_ptr, rv_ptr) = match &running {
            Some((rm, rv)) => (ptr(rm)?, ptr(rv)?),
            None => (ptr(&rm_old)?, ptr(&rv_old)?),
        };
        if one_launch(geom) {
            crate::trace::kernel("bn1d_relu_fwd");
            // x and y dense row-major [N, C] (xd, y: a 2-D tensor's default
            // layout), f32 [C] parameters, running statistics updated in
            // place (our fresh copies), mean/invstd the batch mean and
            // rsqrt(biased var + eps) as batchnorm.cu saves them; the
            // unbiased variance (N > 1: checked, training) feeds running_var.
            let args = Bn1dForward {
                x: ptr(&xd)?,
                y: ptr(&y)?,
                weight: ptr(&weight)?,
                bias: ptr(&bias)?,
                running_mean: rm_ptr,
                running_var: rv_ptr,
                mean: mean_s.ptr(),
                invstd: invstd_s.ptr(),
                n: m,
                c,
                momentum: geom.momentum as f32,
                eps: geom.eps as f32,
                relu: fused,
            };
            g.bind()?;
            // SAFETY: every pointer is a live allocation of this GPU with
            // the size and dtype the kernel reads or writes (above).
            unsafe { g.kernels.bn1d_relu_forward(&g.stream, dt, &args) }.map_err(kerr(op))?;
        } else {
            crate::trace::kernel(if geom.training {
                "bn_fwd_stats+bn_fwd_finalize+bn_fwd_apply"
            } else {
                "bn_eval_prepare+bn_fwd_apply"
            });
            let ws = workspace(op, g, m, c)?;
            let args = BnForward {
                x: ptr(&xd)?,
                residual: res.as_ref().map(ptr).transpose()?.unwrap_or(0),
                weight: ptr(&weight)?,
                bias: ptr(&bias)?,
                running_mean: rm_ptr,
                running_var: rv_ptr,
                y: ptr(&y)?,
                mean: mean_s.ptr(),
                invstd: invstd_s.ptr(),
                workspace: ws.ptr(),
                m,
                c,
                momentum: geom.momentum as f32,
                eps: geom.eps as f32,
                relu: fused,
                training: geom.training,
            };
            g.bind()?;
            // SAFETY: xd, res, y are dense [M, C] of x's dtype; weight, bias,
            // running and mean/invstd are f32 [C]; ws is sized by
            // bn_workspace_floats(m, c).
            unsafe { g.kernels.bn_forward(&g.stream, dt, &args) }.map_err(kerr(op))?;
        }
        traced_sync(g)?;
        let running = match running {
            Some((rm, rv)) => Some((
                as_dtype(rm, a.running_mean.dtype())?,
                as_dtype(rv, a.running_var.dtype())?,
            )),
            None => None,
        };
        let saved = GpuSaved {
            x: xd.detach(),
            out: fused.then(|| y.detach()),
            mean: mean_s,
            invstd: invstd_s,
            weight,
            w_dtype: a.weight.dtype(),
        };
        Ok((y, running, Box::new(saved)))
    }

    fn batch_norm_backward(
        &self,
        dy: &Tensor,
        saved: &Saved,
        geom: &BnGeom,
        [need_x, need_w, need_b, need_r]: Needs,
    ) -> Result<Vec<Option<Tensor>>> {
        let op = geom.fuse.name();
        let s: &GpuSaved = saved
            .downcast_ref()
            .ok_or_else(|| Error::Autograd(format!("{op}: saved state is not the GPU's")))?;
        let g = gpu_of(&s.x)?;
        let (m, c) = (geom.n * geom.s, geom.c);
        let dt = kdtype(op, s.x.dtype())?;
        // x was saved in the default layout: dy must match it
        let dy = to_default_layout(dy)?;
        let need_r = geom.fuse == Fuse::AddRelu && need_r;
        // bn1d_relu_bwd always writes dx
        let need_dx = need_x || one_launch(geom);
        let dx = need_dx.then(|| empty_like(&s.x, s.x.dtype())).transpose()?;
        let dr = need_r.then(|| empty_like(&s.x, s.x.dtype())).transpose()?;
        let dw = need_w.then(|| f32_vec(g, c)).transpose()?;
        let db = need_b.then(|| f32_vec(g, c)).transpose()?;
        let opt = |t: Option<&Tensor>| t.map(ptr).transpose().map(|p| p.unwrap_or(0));
        let (dwp, dbp) = (
            opt(dw.as_ref().map(|p| &p.1))?,
            opt(db.as_ref().map(|p| &p.1))?,
        );
        if one_launch(geom) {
            crate::trace::kernel("bn1d_relu_bwd");
            // dy' = relu ? (y > 0 ? dy : 0) : dy, then dweight =
            // Σdy'(x-mean)·invstd, dbias = Σdy' (each written when non-null)
            // and dx = a·dy' + k·(x-mean) + b with the training coefficients
            // the CPU backward uses; y is read only when relu (0 otherwise).
            // x, y, dy, dx dense row-major [N, C].
            let args = Bn1dBackward {
                x: ptr(&s.x)?,
                y: opt(s.out.as_ref())?,
                dy: ptr(&dy)?,
                mean: s.mean.ptr(),
                invstd: s.invstd.ptr(),
                weight: ptr(&s.weight)?,
                dx: opt(dx.as_ref())?,
                dweight: dwp,
                dbias: dbp,
                n: m,
                c,
                relu: geom.fuse == Fuse::Relu,
            };
            g.bind()?;
            // SAFETY: x, y, dy, dx are live dense [N, C] of x's dtype;
            // mean, invstd, weight, dweight, dbias f32 [C] (or 0).
            unsafe { g.kernels.bn1d_relu_backward(&g.stream, dt, &args) }.map_err(kerr(op))?;
        } else {
            crate::trace::kernel("bn_bwd_reduce+bn_bwd_finalize+bn_bwd_dx");
            let ws = workspace(op, g, m, c)?;
            let args = BnBackward {
                x: ptr(&s.x)?,
                dy: ptr(&dy)?,
                out: opt(s.out.as_ref())?,
                dresidual: opt(dr.as_ref())?,
                mean: s.mean.ptr(),
                invstd: s.invstd.ptr(),
                weight: ptr(&s.weight)?,
                dx: opt(dx.as_ref())?,
                dweight: dwp,
                dbias: dbp,
                workspace: ws.ptr(),
                m,
                c,
                training: geom.training,
            };
            g.bind()?;
            // SAFETY: x, dy, out, dx, dr are dense [M, C] in one layout of x's
            // dtype; statistics, weight and the parameter gradients f32 [C];
            // ws sized by bn_workspace_floats.
            unsafe { g.kernels.bn_backward(&g.stream, dt, &args) }.map_err(kerr(op))?;
        }
        traced_sync(g)?;
        let mut grads = vec![
            dx.filter(|_| need_x),
            dw.map(|p| as_dtype(p.1, s.w_dtype)).transpose()?,
            db.map(|p| as_dtype(p.1, s.w_dtype)).transpose()?,
        ];
        if geom.fuse == Fuse::AddRelu {
            grads.push(dr);
        }
        Ok(grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(s: usize, fuse: Fuse, training: bool) -> BnGeom {
        BnGeom {
            n: 4,
            c: 3,
            s,
            fuse,
            training,
            momentum: 0.1,
            eps: 1e-5,
        }
    }

    #[test]
    fn bn1d_runs_training_over_rows_without_a_residual() {
        assert!(one_launch(&geom(1, Fuse::Relu, true)));
        assert!(one_launch(&geom(1, Fuse::None, true)));
        assert!(!one_launch(&geom(1, Fuse::Relu, false)));
        assert!(!one_launch(&geom(1, Fuse::AddRelu, true)));
        assert!(!one_launch(&geom(4, Fuse::Relu, true)));
    }

    #[test]
    fn rank_three_is_refused_with_the_shape() {
        let x = Tensor::zeros(&[2, 3, 4], DType::F32);
        let e = rows("batch_norm", &x, &geom(4, Fuse::None, true));
        assert!(e.unwrap_err().to_string().contains("[2, 3, 4]"));
        let x = Tensor::zeros(&[4, 3, 2, 2], DType::BF16);
        assert_eq!(
            rows("batch_norm", &x, &geom(4, Fuse::None, true)).unwrap(),
            (16, 3)
        );
    }
}
