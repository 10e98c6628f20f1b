//! BatchNorm on the GPU (batchnorm.cu), plain and fused with ReLU or with
//! residual-add + ReLU, training and eval, forward and backward, with the
//! CPU op's contract (engine/src/ops/batchnorm.rs): functional running
//! statistics (training returns NEW running tensors: the old ones are copied
//! into fresh buffers that the kernel updates), the same autograd inputs
//! [x, weight, bias, (residual)] and gradients.
//!
//! x is [N, C, H, W] (channels-last on the GPU: [M = N*H*W, C]) or [N, C]
//! (row-major: [M = N, C]). The kernels keep statistics and parameters in
//! f32; parameters stored as f16/bf16 (which the CPU op accepts when x has
//! that dtype) are converted, and their gradients and running statistics
//! converted back.

use super::cast;
use crate::autograd::record;
use crate::cuda::launch::{empty_like, on_device, same_gpu, traced_sync};
use crate::cuda::launch::{kdtype, kerr};
use crate::cuda::runtime::Gpu;
use crate::cuda::tensor::{alloc, is_dense, ptr, to_default_layout, DeviceStorage};
use crate::layout::Layout;
use crate::ops::{BatchNormArgs, BatchNormOutput};
use crate::{DType, Device, Error, Result, Tensor};
use kernels::device::{bn_workspace_floats, BnBackward, BnForward};

/// The CPU op's name for each fusion.
fn op_name(residual: bool, relu: bool) -> &'static str {
    match (residual, relu) {
        (true, _) => "batch_norm_add_relu",
        (false, true) => "batch_norm_relu",
        (false, false) => "batch_norm",
    }
}

/// [M, C] of x, after the CPU op's checks (plus the GPU's dtypes and rank
/// limit).
fn check(
    op: &'static str,
    x: &Tensor,
    residual: Option<&Tensor>,
    a: &BatchNormArgs,
) -> Result<(usize, usize)> {
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
    let d = crate::ops::batchnorm::check_args(op, x, residual, a)?;
    Ok((d.n * d.s, d.c))
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

/// [relu](batch_norm(x) [+ residual]): `residual` given means the add+ReLU
/// variant (relu is then implied).
pub fn batch_norm(
    x: &Tensor,
    residual: Option<&Tensor>,
    a: &BatchNormArgs,
    relu: bool,
) -> Result<BatchNormOutput> {
    let op = op_name(residual.is_some(), relu);
    let ran = if a.training {
        "cuda:bn_fwd_stats+bn_fwd_finalize+bn_fwd_apply"
    } else {
        "cuda:bn_eval_prepare+bn_fwd_apply"
    };
    crate::trace::op(op, "forward", ran, &[x, a.weight, a.bias], || {
        let (m, c) = check(op, x, residual, a)?;
        let mut all: Vec<&Tensor> = vec![x, a.weight, a.bias, a.running_mean, a.running_var];
        all.extend(residual);
        let g = same_gpu(op, &all)?;
        let dt = kdtype(op, x.dtype())?;
        let fused = residual.is_some() || relu;

        let xd = to_default_layout(x)?;
        let res = residual.map(to_default_layout).transpose()?;
        let weight = f32_param(a.weight)?;
        let bias = f32_param(a.bias)?;
        let (rm_old, rv_old) = (f32_param(a.running_mean)?, f32_param(a.running_var)?);
        let y = empty_like(&xd, x.dtype())?;
        let (mean_s, _) = f32_vec(g, c)?;
        let (invstd_s, _) = f32_vec(g, c)?;
        let ws = alloc(
            g,
            DType::F32,
            bn_workspace_floats(m, c, &g.kernels.gpu()).map_err(kerr(op))?,
        )?;
        // training updates copies: the CPU op returns new running tensors
        let running = if a.training {
            let (rm_s, rm) = f32_vec(g, c)?;
            let (rv_s, rv) = f32_vec(g, c)?;
            g.copy(rm_s.ptr(), ptr(&rm_old)?, c * 4)?;
            g.copy(rv_s.ptr(), ptr(&rv_old)?, c * 4)?;
            Some((rm, rv))
        } else {
            None
        };
        let (rm_ptr, rv_ptr) = match &running {
            Some((rm, rv)) => (ptr(rm)?, ptr(rv)?),
            None => (ptr(&rm_old)?, ptr(&rv_old)?),
        };
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
            momentum: a.momentum as f32,
            eps: a.eps as f32,
            relu: fused,
            training: a.training,
        };
        g.bind()?;
        // SAFETY: xd, res, y are dense [M, C] of x's dtype; weight, bias,
        // running and mean/invstd are f32 [C]; ws is sized by
        // bn_workspace_floats(m, c).
        unsafe { g.kernels.bn_forward(&g.stream, dt, &args) }.map_err(kerr(op))?;
        traced_sync(g)?;
        let running = match running {
            Some((rm, rv)) => Some((
                as_dtype(rm, a.running_mean.dtype())?,
                as_dtype(rv, a.running_var.dtype())?,
            )),
            None => None,
        };

        let mut inputs: Vec<&Tensor> = vec![x, a.weight, a.bias];
        inputs.extend(residual);
        let needs: Vec<bool> = inputs.iter().map(|t| t.requires_grad()).collect();
        if !needs.iter().any(|&b| b) {
            return Ok(BatchNormOutput { out: y, running });
        }
        let saved = Saved {
            g,
            x: xd.detach(),
            out: fused.then(|| y.detach()),
            mean: mean_s,
            invstd: invstd_s,
            weight,
            w_dtype: a.weight.dtype(),
            training: a.training,
            m,
            c,
            need_x: needs[0],
            need_w: needs[1],
            need_b: needs[2],
            need_r: needs.get(3).copied().unwrap_or(false),
            add_relu: residual.is_some(),
            op,
            device: x.device(),
        };
        let out = record(y, op, &inputs, move |dy| saved.backward(dy));
        Ok(BatchNormOutput { out, running })
    })
}

/// What backward needs: x, the output (ReLU mask), the f32 statistics.
struct Saved {
    g: &'static Gpu,
    x: Tensor,
    out: Option<Tensor>,
    mean: DeviceStorage,
    invstd: DeviceStorage,
    weight: Tensor,
    w_dtype: DType,
    training: bool,
    m: usize,
    c: usize,
    need_x: bool,
    need_w: bool,
    need_b: bool,
    need_r: bool,
    add_relu: bool,
    op: &'static str,
    device: Device,
}

impl Saved {
    fn backward(self, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (g, op, c) = (self.g, self.op, self.c);
        let dt = kdtype(op, self.x.dtype())?;
        if dy.dims() != self.x.dims() || dy.dtype() != self.x.dtype() {
            return Err(Error::shape(
                op,
                format!(
                    "gradient {:?} {} for an output {:?} {}",
                    dy.dims(),
                    dy.dtype(),
                    self.x.dims(),
                    self.x.dtype()
                ),
            ));
        }
        // x was saved in the default layout: dy must match it
        let dy = to_default_layout(&on_device(dy, self.device)?)?;
        let need_r = self.add_relu && self.need_r;
        let dx = self
            .need_x
            .then(|| empty_like(&self.x, self.x.dtype()))
            .transpose()?;
        let dr = need_r
            .then(|| empty_like(&self.x, self.x.dtype()))
            .transpose()?;
        let dw = self.need_w.then(|| f32_vec(g, c)).transpose()?;
        let db = self.need_b.then(|| f32_vec(g, c)).transpose()?;
        let ws = alloc(
            g,
            DType::F32,
            bn_workspace_floats(self.m, c, &g.kernels.gpu()).map_err(kerr(op))?,
        )?;
        let opt = |t: Option<&Tensor>| t.map(ptr).transpose().map(|p| p.unwrap_or(0));
        let args = BnBackward {
            x: ptr(&self.x)?,
            dy: ptr(&dy)?,
            out: opt(self.out.as_ref())?,
            dresidual: opt(dr.as_ref())?,
            mean: self.mean.ptr(),
            invstd: self.invstd.ptr(),
            weight: ptr(&self.weight)?,
            dx: opt(dx.as_ref())?,
            dweight: opt(dw.as_ref().map(|p| &p.1))?,
            dbias: opt(db.as_ref().map(|p| &p.1))?,
            workspace: ws.ptr(),
            m: self.m,
            c,
            training: self.training,
        };
        g.bind()?;
        // SAFETY: x, dy, out, dx, dr are dense [M, C] in one layout of x's
        // dtype; statistics, weight and the parameter gradients f32 [C];
        // ws sized by bn_workspace_floats.
        unsafe { g.kernels.bn_backward(&g.stream, dt, &args) }.map_err(kerr(op))?;
        traced_sync(g)?;
        let mut grads = vec![
            dx,
            dw.map(|p| as_dtype(p.1, self.w_dtype)).transpose()?,
            db.map(|p| as_dtype(p.1, self.w_dtype)).transpose()?,
        ];
        if self.add_relu {
            grads.push(dr);
        }
        Ok(grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_cpu_ops() {
        assert_eq!(op_name(false, false), "batch_norm");
        assert_eq!(op_name(false, true), "batch_norm_relu");
        assert_eq!(op_name(true, true), "batch_norm_add_relu");
    }

    #[test]
    fn rank_three_is_refused_with_the_shape() {
        let x = Tensor::zeros(&[2, 3, 4], DType::F32);
        let p = Tensor::zeros(&[3], DType::F32);
        let a = BatchNormArgs {
            weight: &p,
            bias: &p,
            running_mean: &p,
            running_var: &p,
            training: true,
            momentum: 0.1,
            eps: 1e-5,
        };
        let e = check("batch_norm", &x, None, &a).unwrap_err().to_string();
        assert!(e.contains("[2, 3, 4]"), "{e}");
        let x = Tensor::zeros(&[4, 3, 2, 2], DType::BF16);
        assert_eq!(check("batch_norm", &x, None, &a).unwrap(), (16, 3));
        let wrong = Tensor::zeros(&[3], DType::F16);
        let a = BatchNormArgs {
            weight: &wrong,
            ..a
        };
        assert!(check("batch_norm", &x, None, &a).is_err());
    }
}
