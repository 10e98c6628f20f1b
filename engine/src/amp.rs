//! Mixed precision: which dtype a run computes in, and dynamic loss scaling.
//!
//! Parameters stay f32 ("master weights"); layers cast them to the compute
//! dtype on each forward and the cast's backward hands the master an f32
//! gradient. bf16 has f32's exponent range and needs nothing more. f16
//! gradients underflow, so the loss is multiplied by a large scale before
//! backward and the gradients divided by it before the step; a step whose
//! gradients overflowed is skipped and the scale lowered (PyTorch's
//! `torch.amp.GradScaler` semantics).
//!
//! On a GPU the same happens on the device: the casts are GPU casts
//! (`Tensor::to_dtype`), and the unscale + all-finite check of every
//! gradient is one kernel per gradient (`unscale_check_f32`) raising one
//! int flag per GPU, read back once per step: the step's only sync.

use crate::nn::Param;
use crate::optim::Optimizer;
use crate::{dispatch_float, no_grad, DType, Device, Error, Float, Result, Tensor};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

impl Precision {
    /// The dtype activations and weight copies are computed in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
    /// Only f16 has too narrow an exponent for raw gradients.
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }
    /// A fresh scaler when this precision needs one.
    pub fn scaler(self) -> Option<LossScaler> {
        self.needs_loss_scaling().then(LossScaler::default)
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Precision> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            _ => Err(Error::arg(
                "precision",
                format!("unknown precision {s:?}; expected f32, bf16 or f16"),
            )),
        }
    }
}

/// Dynamic loss scale. Defaults are GradScaler's: scale 2^16, x2 after 2000
/// consecutive finite steps, x0.5 on an overflow.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: usize,
    /// Consecutive steps with finite gradients since the last scale change
    /// (GradScaler's growth tracker); save it with `scale` to resume exactly.
    pub clean_steps: usize,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new(65536.0)
    }
}

impl LossScaler {
    pub fn new(init_scale: f64) -> LossScaler {
        LossScaler {
            scale: init_scale,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            clean_steps: 0,
        }
    }

    /// `loss * scale`, in f32 when the loss is f16/bf16 (a scaled f16 loss
    /// would overflow at the default scale). Call `backward()` on this.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        let loss = match loss.dtype() {
            DType::F16 | DType::BF16 => loss.to_dtype(DType::F32)?,
            _ => loss.clone(),
        };
        loss.scale(self.scale)
    }

    /// Backpropagates `loss * scale` (`scale_loss(loss)?.backward()`). On
    /// a GPU the scale is the backward's seed instead of a multiply: the
    /// same f32 gradient (`1 * scale`), one op fewer.
    pub fn backward(&self, loss: &Tensor) -> Result<()> {
        if loss.device() == Device::Cpu {
            return self.scale_loss(loss)?.backward();
        }
        let loss = loss.to_dtype(DType::F32)?;
        let seed = Tensor::full(loss.dims(), self.scale, DType::F32).to_device(loss.device())?;
        loss.backward_with(seed)
    }

    /// Divides every gradient by the scale in place; returns true when all
    /// of them are finite (false: skip this step). Gradients are unscaled
    /// even when one overflowed, as GradScaler does.
    pub fn unscale_and_check(&mut self, params: &[Param]) -> Result<bool> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(Error::arg(
                "LossScaler",
                format!("scale must be finite and > 0, got {}", self.scale),
            ));
        }
        let _ng = no_grad();
        let inv = 1.0 / self.scale;
        let mut finite = true;
        let mut on_gpu = Vec::new();
        for p in params {
            let Some(g) = p.grad() else { continue };
            if g.device() != Device::Cpu {
                on_gpu.push((p.clone(), g));
                continue;
            }
            let (unscaled, ok) =
                dispatch_float!("LossScaler::unscale", g.dtype(), T => unscale::<T>(&g, inv)?);
            finite &= ok;
            p.set_grad(Some(unscaled));
        }
        if !on_gpu.is_empty() {
            finite &= gpu::unscale_and_check(&on_gpu, inv as f32)?;
        }
        Ok(finite)
    }

    /// Adjusts the scale after a step: back off on overflow, grow after
    /// `growth_interval` clean steps in a row (never to infinity).
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.clean_steps = 0;
            return;
        }
        self.clean_steps += 1;
        if self.clean_steps >= self.growth_interval {
            let grown = self.scale * self.growth_factor;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.clean_steps = 0;
        }
    }
}

fn unscale<T: Float>(g: &Tensor, inv: f64) -> Result<(Tensor, bool)> {
    let inv = T::from_f64(inv);
    let v: Vec<T> = g.float_data::<T>()?.iter().map(|&x| x * inv).collect();
    let finite = v.iter().all(|x| x.is_finite());
    Ok((Tensor::from_compute(v, g.dims(), g.dtype()), finite))
}

/// One optimizer step with optional loss scaling: unscales the gradients,
/// steps only when they are all finite and updates the scale. Returns
/// whether the optimizer stepped. The caller still zeroes the gradients.
pub fn amp_step(
    opt: &mut dyn Optimizer,
    scaler: Option<&mut LossScaler>,
    params: &[Param],
) -> Result<bool> {
    let Some(scaler) = scaler else {
        opt.step(params)?;
        return Ok(true);
    };
    let finite = scaler.unscale_and_check(params)?;
    if finite {
        opt.step(params)?;
    }
    scaler.update(!finite);
    Ok(finite)
}

/// Loss scaling of gradients on GPUs.
mod gpu {
    use crate::cuda::launch::kdtype;
    use crate::cuda::ops::cast;
    use crate::cuda::ops::optim::FiniteFlag;
    use crate::cuda::tensor::{self as ct, ptr, storage_of};
    use crate::nn::Param;
    use crate::{DType, Error, Result, Tensor};
    use std::collections::HashMap;

    /// What to do with one gradient, given which storage each one views.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Plan {
        /// Unscale it where it is.
        InPlace,
        /// Another param's gradient is the very same view and was unscaled
        /// in place already: nothing to do.
        Done,
        /// It shares storage with a different view: unscale a private copy
        /// so no element is divided twice (the host unscales every
        /// gradient into a new tensor; this keeps that result).
        Copy,
    }

    /// One gradient view: (storage base address, first element's address,
    /// elements).
    pub(super) type View = (u64, u64, usize);

    /// The plan for each gradient view, in order.
    pub(super) fn plan(views: &[View]) -> Vec<Plan> {
        let mut by_base: HashMap<u64, Vec<(u64, usize)>> = HashMap::new();
        for &(base, at, n) in views {
            let v = by_base.entry(base).or_default();
            if !v.contains(&(at, n)) {
                v.push((at, n));
            }
        }
        let mut done = Vec::new();
        views
            .iter()
            .map(|&(base, at, n)| {
                if by_base[&base].len() > 1 {
                    Plan::Copy
                } else if done.contains(&(at, n)) {
                    Plan::Done
                } else {
                    done.push((at, n));
                    Plan::InPlace
                }
            })
            .collect()
    }

    /// Unscales the GPU gradients of `grads` (param, its gradient) in place
    /// with `inv_scale` and returns whether all of them were finite after
    /// unscaling. f16/bf16 gradients go through an f32 copy (multiplied and
    /// checked in f32, then rounded back: the host's arithmetic).
    pub(super) fn unscale_and_check(grads: &[(Param, Tensor)], inv_scale: f32) -> Result<bool> {
        const OP: &str = "LossScaler::unscale";
        let mut views = Vec::with_capacity(grads.len());
        for (_, g) in grads {
            kdtype(OP, g.dtype())?;
            views.push((storage_of(g)?.ptr(), ptr(g)?, g.numel()));
        }
        let mut flags: Vec<FiniteFlag> = Vec::new();
        let mut unscaled_in_place = Vec::new();
        for (((p, g), how), view) in grads.iter().zip(plan(&views)).zip(&views) {
            // Done only counts when the earlier twin really was rewritten in
            // place (not when it went through a copy)
            if how == Plan::Done && unscaled_in_place.contains(view) {
                continue;
            }
            let gpu = ct::gpu_of(g)?;
            let flag = match flags.iter().position(|f| f.gpu().ordinal == gpu.ordinal) {
                Some(i) => &flags[i],
                None => {
                    flags.push(FiniteFlag::new(gpu)?);
                    flags.last().expect("just pushed")
                }
            };
            // the f32 buffer the kernel rewrites, and whether it is g itself
            let (work, in_place) = if g.dtype() != DType::F32 {
                (cast(g, DType::F32)?, false)
            } else if how != Plan::InPlace || !ct::is_dense(g.layout()) {
                (
                    ct::copy_to_strides(g, &ct::default_strides(g.dims()))?,
                    false,
                )
            } else {
                (g.clone(), true)
            };
            if !ct::is_dense(work.layout()) {
                return Err(Error::arg(
                    OP,
                    format!(
                        "{}: gradient {:?} is not dense after copying",
                        p.name(),
                        g.dims()
                    ),
                ));
            }
            // SAFETY: work is dense (numel f32 from ptr) on flag's GPU, and
            // is either a fresh buffer or a gradient no other gradient
            // views (plan).
            unsafe { flag.unscale_check_f32(ptr(&work)?, work.numel(), inv_scale)? };
            if g.dtype() != DType::F32 {
                p.set_grad(Some(cast(&work, g.dtype())?));
            } else if in_place {
                unscaled_in_place.push(*view);
            } else {
                p.set_grad(Some(work));
            }
        }
        let mut finite = true;
        for f in &flags {
            finite &= f.read()?;
        }
        Ok(finite)
    }
}

#[cfg(test)]
mod gpu_plan_tests {
    use super::gpu::{plan, Plan};

    #[test]
    fn shared_gradient_storage_is_never_unscaled_twice() {
        // distinct storages: all in place
        assert_eq!(
            plan(&[(0x1000, 0x1000, 10), (0x2000, 0x2000, 10)]),
            vec![Plan::InPlace, Plan::InPlace]
        );
        // the same view twice (one upstream gradient handed to two params)
        assert_eq!(
            plan(&[
                (0x1000, 0x1000, 10),
                (0x2000, 0x2000, 4),
                (0x1000, 0x1000, 10)
            ]),
            vec![Plan::InPlace, Plan::InPlace, Plan::Done]
        );
        // two different views of one storage: both copied, the storage untouched
        assert_eq!(
            plan(&[
                (0x1000, 0x1000, 10),
                (0x1000, 0x1010, 6),
                (0x3000, 0x3000, 1)
            ]),
            vec![Plan::Copy, Plan::Copy, Plan::InPlace]
        );
        assert!(plan(&[]).is_empty());
    }
}
