//! The optimizer and loss-scaling primitives: an SGD step of many params
//! (one launch on a GPU) or of one, a LARS step of one param, the unscale +
//! all-finite pass and the scale update of dynamic loss scaling, and the
//! all-finite check of a model's tensors. Unlike
//! every other op family these write IN PLACE and record no graph: a step
//! updates the param (`Param::set` on the host, whose storage is immutable;
//! the param's own storage on a GPU when it is f32), its momentum buffer and
//! the gradient slots. `crate::optim` and `crate::amp` call them through
//! `on_backend!`.

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

use crate::backend::{unsupported, BackendInfo};
use crate::nn::Param;
use crate::{Error, Result, Tensor};

/// The settings of one param's SGD step (`crate::optim::Sgd` documents the
/// update). The host computes in the param's compute type (f64 for f64,
/// else f32), the GPU kernel in f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdHyper {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    /// 0 for params excluded from decay.
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// One param's part of [`OptimOps::sgd_step_many`]: the arguments of one
/// [`OptimOps::sgd_step`].
pub struct SgdItem<'a> {
    pub p: &'a Param,
    /// `p`'s gradient (same shape, dtype and device).
    pub g: &'a Tensor,
    /// `p`'s momentum (None before its first step, and always None without
    /// momentum).
    pub m: &'a mut Option<Tensor>,
    pub h: SgdHyper,
    /// The learning rate as a one-value f32 tensor on `p`'s device, read
    /// when the step runs, in place of `h.lr` (a GPU step captured once in
    /// a CUDA graph and replayed with each step's rate).
    pub lr_at: Option<&'a Tensor>,
    /// A one-value f32 flag on `p`'s device, read when the step runs: when
    /// it is not 0 the step is skipped, `p` and `m` keep their values (a
    /// loss-scaled step whose gradients overflowed, decided on the device:
    /// [`OptimOps::unscale_found`]). Needs an f32 param and dampening 0: a
    /// GPU creates the momentum of a param's first step zeroed, so that a
    /// skipped first step leaves zeros, which the next step reads as the
    /// host reads a missing buffer only when dampening is 0.
    pub skip_if: Option<&'a Tensor>,
}

/// Checks that `t` (the tensor an item reads its `what` from) is one f32
/// value on `device`.
pub(crate) fn check_scalar_at(
    op: &'static str,
    what: &str,
    t: &Tensor,
    device: crate::Device,
) -> Result<()> {
    if t.numel() != 1 || t.dtype() != crate::DType::F32 || t.device() != device {
        return Err(Error::arg(
            op,
            format!(
                "the {what} tensor must be one f32 on {device}, got {:?} {} on {}",
                t.dims(),
                t.dtype(),
                t.device()
            ),
        ));
    }
    Ok(())
}

/// Checks an item that may be skipped ([`SgdItem::skip_if`]): the flag's
/// form, an f32 param and dampening 0.
pub(crate) fn check_skippable(op: &'static str, it: &SgdItem<'_>) -> Result<()> {
    let Some(flag) = it.skip_if else {
        return Ok(());
    };
    check_scalar_at(op, "skip flag", flag, it.p.device())?;
    let dtype = it.p.get().dtype();
    if dtype != crate::DType::F32 || it.h.dampening != 0.0 {
        return Err(Error::arg(
            op,
            format!(
                "{}: a step the device may skip needs an f32 parameter and dampening 0, got {dtype} and dampening {}",
                it.p.name(),
                it.h.dampening
            ),
        ));
    }
    Ok(())
}

/// [`OptimOps::sgd_step`] on each item in order: the step of many params
/// on a backend with no multi-tensor form (the CPU's). An item's `lr_at`
/// and `skip_if` are read here (on a GPU that waits for them).
pub(crate) fn sgd_step_each<B: OptimOps + ?Sized>(b: &B, items: &mut [SgdItem<'_>]) -> Result<()> {
    for it in items.iter_mut() {
        check_skippable("sgd", it)?;
        if let Some(flag) = it.skip_if {
            if flag.to_vec_f64()?[0] != 0.0 {
                continue;
            }
        }
        let mut h = it.h;
        if let Some(t) = it.lr_at {
            check_scalar_at("sgd", "learning rate", t, it.p.device())?;
            h.lr = t.to_vec_f64()?[0];
        }
        b.sgd_step(it.p, it.g, it.m, &h)?;
    }
    Ok(())
}

/// The settings of dynamic loss scaling's update
/// ([`OptimOps::update_scale`]; `crate::amp::LossScaler` documents them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleHyper {
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: usize,
}

/// The loss scaler's state where the gradients are, as
/// [`OptimOps::update_scale`] keeps it: an f32 tensor of these values.
pub const SCALE_STATE: [&str; 3] = ["scale", "clean_steps", "skipped_steps"];

/// Checks that `state` is a scale state ([`SCALE_STATE`]) on `device`.
pub(crate) fn check_scale_state(
    op: &'static str,
    state: &Tensor,
    device: crate::Device,
) -> Result<()> {
    if state.dims() != [SCALE_STATE.len()]
        || state.dtype() != crate::DType::F32
        || state.device() != device
    {
        return Err(Error::arg(
            op,
            format!(
                "the scale state must be f32 [{}] on {device}, got {} {:?} on {}",
                SCALE_STATE.len(),
                state.dtype(),
                state.dims(),
                state.device()
            ),
        ));
    }
    Ok(())
}

/// Checks a scale state and the overflow flag it is updated from, and
/// that the step counts stay exact in f32.
pub(crate) fn check_scale_update(state: &Tensor, found: &Tensor, h: &ScaleHyper) -> Result<()> {
    const OP: &str = "update_scale";
    check_scale_state(OP, state, state.device())?;
    check_scalar_at(OP, "overflow flag", found, state.device())?;
    if h.growth_interval > 1 << 24 {
        return Err(Error::arg(
            OP,
            format!(
                "growth interval {} above 2^24 (the device counts steps in f32)",
                h.growth_interval
            ),
        ));
    }
    Ok(())
}

/// The settings of one param's LARS step (`crate::optim::Lars`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LarsHyper {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Trust coefficient.
    pub eta: f64,
    /// No decay and no adaptation for this param.
    pub excluded: bool,
}

/// The in-place optimizer primitives a backend implements. `g` is `p`'s
/// gradient (same shape, dtype and device, checked by the caller); `buf`
/// is `p`'s momentum, None before its first step, else in the param's
/// compute dtype (f64 for f64 params, else f32) on its device.
pub trait OptimOps: BackendInfo {
    /// One SGD step, written in place: `p` gets its new value and, when
    /// momentum is on, `m` its new momentum (created on the first step;
    /// left None without momentum). `p` and `m` are unchanged on error.
    fn sgd_step(&self, p: &Param, g: &Tensor, m: &mut Option<Tensor>, h: &SgdHyper) -> Result<()> {
        let _ = (p, g, m, h);
        Err(unsupported(self, "sgd_step"))
    }
    /// [`OptimOps::sgd_step`] of every item, the result of each exactly
    /// that of its own `sgd_step` (the items are distinct params). The GPU
    /// steps them in one launch (or two, when both f16 and bf16 params are
    /// present) of `sgd_multi_<t>`; the default is the per-param loop. On
    /// error the params of the items already stepped keep their new value
    /// and momentum; an item not stepped is unchanged (layout aside).
    fn sgd_step_many(&self, items: &mut [SgdItem<'_>]) -> Result<()> {
        sgd_step_each(self, items)
    }
    /// One LARS step, written in place like [`OptimOps::sgd_step`] (the
    /// momentum starts at zero).
    fn lars_step(
        &self,
        p: &Param,
        g: &Tensor,
        buf: &mut Option<Tensor>,
        h: &LarsHyper,
    ) -> Result<()> {
        let _ = (p, g, buf, h);
        Err(unsupported(self, "lars_step"))
    }
    /// Multiplies each gradient `grads[i].1` (the gradient of param
    /// `grads[i].0`) by `inv_scale`, writing the result in place into the
    /// param's gradient slot, and returns whether every result is finite.
    /// Every gradient is unscaled even when one overflowed; a gradient
    /// shared by two params is unscaled once.
    fn unscale_and_check_finite(&self, grads: &[(Param, Tensor)], inv_scale: f64) -> Result<bool> {
        let _ = (grads, inv_scale);
        Err(unsupported(self, "unscale_and_check_finite"))
    }
    /// [`unscale_and_check_finite`](OptimOps::unscale_and_check_finite)
    /// with the scale read where the gradients are, from the first value
    /// of `state` (a [`SCALE_STATE`] tensor), and the answer not read: an
    /// f32 [1] tensor, 1 when some unscaled value is not finite, else 0.
    /// The GPU queues it all (no host wait).
    fn unscale_found(&self, grads: &[(Param, Tensor)], state: &Tensor) -> Result<Tensor> {
        let _ = (grads, state);
        Err(unsupported(self, "unscale_found"))
    }
    /// The scale update after a loss-scaled step (`LossScaler::update`'s
    /// rule, in f32: PyTorch's `_amp_update_scale_`), from the step's
    /// overflow flag `found` ([`unscale_found`](OptimOps::unscale_found)):
    /// `state` ([`SCALE_STATE`]) is rewritten in place on a GPU (a CUDA
    /// graph's step updates the same tensor each replay), replaced on the
    /// host.
    fn update_scale(&self, state: &mut Tensor, found: &Tensor, h: &ScaleHyper) -> Result<()> {
        let _ = (state, found, h);
        Err(unsupported(self, "update_scale"))
    }
    /// Whether every element of every float tensor is finite (non-float
    /// tensors are skipped): the check after an optimizer step. The GPU
    /// runs reduce.cu's `all_finite_multi_<t>` once per dtype and syncs
    /// once.
    fn all_finite(&self, tensors: &[Tensor]) -> Result<bool> {
        let _ = tensors;
        Err(unsupported(self, "all_finite"))
    }
    /// [`all_finite`](OptimOps::all_finite) without reading the answer:
    /// an f32 [1] tensor on this backend's device, 1 when some element of
    /// some float tensor is not finite, else 0. The GPU queues it (one
    /// flag, no host wait), so a caller can read it with other values.
    fn non_finite_found(&self, tensors: &[Tensor]) -> Result<Tensor> {
        let _ = tensors;
        Err(unsupported(self, "non_finite_found"))
    }
}
