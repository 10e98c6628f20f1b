//! BatchNorm on the GPU, with the CPU backend's contract: functional running
//! statistics (training returns NEW running tensors: the kernels read the
//! old ones and write the new ones to fresh buffers, no copy, the inputs
//! never written) and the same gradients.
//!
//! x is [N, C, H, W] (channels-last on the GPU: [M = N*H*W, C]) or [N, C]
//! (row-major: [M = N, C]). batchnorm.cu runs every case; training on
//! [N, C] without a residual (the projector's BatchNorm1d+ReLU) runs
//! bn1d_relu.cu instead: one launch per direction. The kernels keep
//! statistics and parameters in f32; parameters stored as f16/bf16 (which
//! the CPU op accepts when x has that dtype) are converted, and their
//! gradients and running statistics converted back.
//!
//! Tensor passes per layer (reads and writes of [M, C] data): training
//! forward 2 (stats: x; apply: x [+ residual], y), backward 2 (reduce and
//! dx); BN+ReLU's backward recomputes the ReLU mask from x with the saved
//! mean, scale and bias (bit for bit y's mask) instead of reading y, so only
//! add+ReLU saves and reads the forward output (its mask needs the
//! residual, which is not saved). bn1d_relu.cu does the same in one launch
//! per direction.

use super::{BatchNormArgs, BatchNormOps, BnGeom, Fuse, Needs};
use crate::backend::{Cuda, Saved};
use crate::cuda::launch::cast;
use crate::cuda::launch::{empty_like, kdtype, kerr, traced_sync};
use crate::cuda::runtime::Gpu;
use crate::cuda::storage::DeviceStorage;
use crate::cuda::tensor::{alloc, gpu_of, is_dense, ptr, to_default_layout};
use crate::layout::Layout;
use crate::{DType, Error, Result, Tensor};
use kernels::device::{
    bn_bwd_workspace_floats, bn_fwd_workspace_floats, Bn1dBackward, Bn1dForward, BnBackward,
    BnForward,
};

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

/// f32 workspace of `floats` (bn_fwd_workspace_floats /
/// bn_bwd_workspace_floats) for batchnorm.cu.
fn workspace(
    op: &'static str,
    g: &'static Gpu,
    floats: kernels::Result<usize>,
) -> Result<DeviceStorage> {
    alloc(g, DType::F32, floats.map_err(kerr(op))?)
}

/// What the GPU backward needs: x, the f32 statistics and scale the
/// forward used, the f32 weight and bias, and the output (add+ReLU's mask)
/// for add+ReLU only: BN+ReLU recomputes its mask from x, mean, scale and
/// bias.
struct GpuSaved {
    x: Tensor,
    out: Option<Tensor>,
    mean: DeviceStorage,
    invstd: DeviceStorage,
    /// invstd * weight as the forward computed and applied it.
    scale: DeviceStorage,
    weight: Tensor,
    bias: Tensor,
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
        let (scale_s, _) = f32_vec(g, c)?;
        // training: the kernels read rm_old/rv_old and write the new running
        // statistics here (the op returns new tensors, its inputs untouched)
        let running = geom
            .training
            .then(|| -> Result<_> { Ok((f32_vec(g, c)?.1, f32_vec(g, c)?.1)) })
            .transpose()?;
        let (new_rm, new_rv) = match &running {
            Some((rm, rv)) => (ptr(rm)?, ptr(rv)?),
            None => (0, 0),
        };
        let (rm_ptr, rv_ptr) = (ptr(&rm_old)?, ptr(&rv_old)?);
        if one_launch(geom) {
            crate::trace::kernel("bn1d_relu_fwd");
            // x and y dense row-major [N, C] (xd, y: a 2-D tensor's default
            // layout), f32 [C] parameters, old running statistics read and
            // new ones written to fresh buffers, mean/invstd the batch mean
            // and rsqrt(biased var + eps) as batchnorm.cu saves them, scale
            // = invstd*weight; the unbiased variance (N > 1: checked,
            // training) feeds running_var.
            let args = Bn1dForward {
                x: ptr(&xd)?,
                y: ptr(&y)?,
                weight: ptr(&weight)?,
                bias: ptr(&bias)?,
                running_mean: rm_ptr,
                running_var: rv_ptr,
                new_running_mean: new_rm,
                new_running_var: new_rv,
                mean: mean_s.ptr(),
                invstd: invstd_s.ptr(),
                scale: scale_s.ptr(),
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
            // eval reads the running statistics and needs no workspace
            let ws = geom
                .training
                .then(|| workspace(op, g, bn_fwd_workspace_floats(m, c, &g.kernels.gpu())))
                .transpose()?;
            let args = BnForward {
                x: ptr(&xd)?,
                residual: res.as_ref().map(ptr).transpose()?.unwrap_or(0),
                weight: ptr(&weight)?,
                bias: ptr(&bias)?,
                running_mean: rm_ptr,
                running_var: rv_ptr,
                new_running_mean: new_rm,
                new_running_var: new_rv,
                y: ptr(&y)?,
                mean: mean_s.ptr(),
                invstd: invstd_s.ptr(),
                scale: scale_s.ptr(),
                workspace: ws.as_ref().map_or(0, |w| w.ptr()),
                m,
                c,
                momentum: geom.momentum as f32,
                eps: geom.eps as f32,
                relu: fused,
                training: geom.training,
            };
            g.bind()?;
            // SAFETY: xd, res, y are dense [M, C] of x's dtype; weight, bias,
            // the old and new running statistics and mean/invstd/scale are
            // f32 [C]; ws (training) is sized by bn_fwd_workspace_floats.
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
            out: (geom.fuse == Fuse::AddRelu).then(|| y.detach()),
            mean: mean_s,
            invstd: invstd_s,
            scale: scale_s,
            weight,
            bias,
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
        let relu = geom.fuse == Fuse::Relu;
        if one_launch(geom) {
            crate::trace::kernel("bn1d_relu_bwd");
            // dy' = relu ? (y > 0 ? dy : 0) : dy with y's mask recomputed
            // from x, mean, scale and bias (y is not read), then dweight =
            // Σdy'(x-mean)·invstd, dbias = Σdy' (each written when non-null)
            // and dx = a·dy' + k·(x-mean) + b with the training coefficients
            // the CPU backward uses. x, dy, dx dense row-major [N, C].
            let args = Bn1dBackward {
                x: ptr(&s.x)?,
                dy: ptr(&dy)?,
                mean: s.mean.ptr(),
                invstd: s.invstd.ptr(),
                weight: ptr(&s.weight)?,
                scale: s.scale.ptr(),
                bias: ptr(&s.bias)?,
                dx: opt(dx.as_ref())?,
                dweight: dwp,
                dbias: dbp,
                n: m,
                c,
                relu,
            };
            g.bind()?;
            // SAFETY: x, dy, dx are live dense [N, C] of x's dtype; mean,
            // invstd, scale, weight, bias, dweight, dbias f32 [C] (or 0).
            unsafe { g.kernels.bn1d_relu_backward(&g.stream, dt, &args) }.map_err(kerr(op))?;
        } else {
            crate::trace::kernel("bn_bwd_reduce+bn_bwd_finalize+bn_bwd_dx");
            let ws = workspace(op, g, bn_bwd_workspace_floats(m, c, &g.kernels.gpu()))?;
            let args = BnBackward {
                x: ptr(&s.x)?,
                dy: ptr(&dy)?,
                // add+ReLU only (BN+ReLU: relu, the mask recomputed)
                out: opt(s.out.as_ref())?,
                relu,
                dresidual: opt(dr.as_ref())?,
                mean: s.mean.ptr(),
                invstd: s.invstd.ptr(),
                scale: s.scale.ptr(),
                bias: ptr(&s.bias)?,
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
            // dtype; statistics, scale, weight, bias and the parameter
            // gradients f32 [C]; ws sized by bn_bwd_workspace_floats.
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
