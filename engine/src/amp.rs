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
//! (`Tensor::to_dtype`), and the unscale + all-finite check rewrites the
//! gradients in place (`OptimOps::unscale_and_check_finite`), with one host
//! sync per step.

use crate::nn::Param;
use crate::ops::optim::OptimOps;
use crate::optim::Optimizer;
use crate::{no_grad, on_backend, DType, Device, Error, Result, Tensor};
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
/// consecutive finite steps, x0.5 on an overflow. Unlike GradScaler, a run
/// whose gradients overflow `max_skipped` steps in a row stops with an
/// error (`amp_step`): by then the scale has halved that many times (2^16
/// falls below 2^-33 after 50) and the overflow is the model's, not the
/// scale's.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: usize,
    /// Consecutive steps with finite gradients since the last scale change
    /// (GradScaler's growth tracker); save it with `scale` to resume exactly.
    pub clean_steps: usize,
    /// Consecutive skipped (overflowed) steps so far; saved with `scale`.
    pub skipped_steps: usize,
    /// The most consecutive skipped steps a run may take (`DEFAULT_MAX_SKIPPED`).
    pub max_skipped: usize,
}

/// `LossScaler::max_skipped`'s default: 50 overflowed steps in a row.
pub const DEFAULT_MAX_SKIPPED: usize = 50;

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
            skipped_steps: 0,
            max_skipped: DEFAULT_MAX_SKIPPED,
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
        let grads = params.iter().filter_map(|p| Some((p.clone(), p.grad()?)));
        // one primitive call per backend: the GPU's syncs once
        let (host, gpu): (Vec<_>, Vec<_>) = grads.partition(|(_, g)| g.device() == Device::Cpu);
        let mut finite = true;
        for grads in [host, gpu] {
            if let Some((_, g)) = grads.first() {
                finite &= on_backend!(g.device(), b => b.unscale_and_check_finite(&grads, inv))?;
            }
        }
        Ok(finite)
    }

    /// Adjusts the scale after a step: back off on overflow, grow after
    /// `growth_interval` clean steps in a row (never to infinity).
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.clean_steps = 0;
            self.skipped_steps += 1;
            return;
        }
        self.skipped_steps = 0;
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

/// One optimizer step with optional loss scaling: unscales the gradients,
/// steps only when they are all finite and updates the scale. Returns
/// whether the optimizer stepped; fails once `max_skipped` steps in a row
/// overflowed. The caller still zeroes the gradients.
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
    if scaler.skipped_steps >= scaler.max_skipped.max(1) {
        return Err(Error::arg(
            "f16 loss scaling",
            format!(
                "the gradients overflowed {} steps in a row (loss scale now {:e}): the run cannot recover; lower the learning rate or train in bf16 or f32",
                scaler.skipped_steps, scaler.scale
            ),
        ));
    }
    Ok(finite)
}
