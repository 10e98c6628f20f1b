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
//! sync per step ([`amp_step`]). [`ScaleOnDevice`] goes further for SGD:
//! the scale, the skip and the scale update all stay on the device, and the
//! host learns what happened from the step's one read (the trainer's, and
//! so a CUDA graph can hold the step).

use crate::nn::Param;
use crate::ops::optim::{OptimOps, ScaleHyper, SCALE_STATE};
use crate::optim::{Optimizer, Sgd};
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

    /// The settings of [`update`](Self::update).
    pub fn hyper(&self) -> ScaleHyper {
        ScaleHyper {
            growth_factor: self.growth_factor,
            backoff_factor: self.backoff_factor,
            growth_interval: self.growth_interval,
        }
    }

    /// The error of a run that overflowed `max_skipped` steps in a row.
    fn check_skipped(&self) -> Result<()> {
        if self.skipped_steps < self.max_skipped.max(1) {
            return Ok(());
        }
        Err(Error::arg(
            "f16 loss scaling",
            format!(
                "the gradients overflowed {} steps in a row (loss scale now {:e}): the run cannot recover; lower the learning rate or train in bf16 or f32",
                self.skipped_steps, self.scale
            ),
        ))
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
    scaler.check_skipped()?;
    Ok(finite)
}

/// A [`LossScaler`]'s state kept where the gradients are (an f32 tensor of
/// [`SCALE_STATE`]: scale, clean steps, skipped steps), so that an SGD step
/// scales, unscales, skips and updates the scale there with nothing read
/// back: [`queue_step`](Self::queue_step) queues it and returns what to
/// read, [`absorb`](Self::absorb) takes the read values back into the host
/// scaler. The host scaler stays the state a checkpoint saves; between
/// steps both hold the same values. A CUDA graph records the step once and
/// each replay reads and rewrites the same state tensor.
///
/// The arithmetic is the host's ([`amp_step`]: the same scaled loss,
/// unscaled gradients, skipped steps and scales) except that the scale
/// update runs in f32 (GradScaler's `_amp_update_scale_`), so a scale never
/// grows past f32's range, and the skip needs dampening 0
/// (`SgdItem::skip_if`).
#[derive(Default)]
pub struct ScaleOnDevice {
    /// The state tensor, its device, and the values it holds as of the
    /// last write or read back.
    at: Option<(Device, Tensor, [f32; 3])>,
}

impl ScaleOnDevice {
    /// Values [`queue_step`](Self::queue_step)'s tensor holds: the
    /// overflow flag, then the [`SCALE_STATE`].
    pub const READ_LEN: usize = 1 + SCALE_STATE.len();

    /// `s`'s values as the device holds them.
    fn values(s: &LossScaler) -> [f32; 3] {
        [s.scale as f32, s.clean_steps as f32, s.skipped_steps as f32]
    }

    /// The state tensor on `device` holding `s`'s values: made on first
    /// use, rewritten when `s` moved since the last step (a restored
    /// checkpoint), else as it is. A needed write while a CUDA graph is
    /// being recorded is an error, never recorded: stage before capturing.
    pub fn stage(&mut self, s: &LossScaler, device: Device) -> Result<Tensor> {
        if !(s.scale.is_finite() && s.scale > 0.0 && (s.scale as f32).is_finite()) {
            return Err(Error::arg(
                "LossScaler",
                format!("scale must be finite in f32 and > 0, got {}", s.scale),
            ));
        }
        let want = Self::values(s);
        let bits = |v: [f32; 3]| v.map(f32::to_bits);
        if let Some((d, t, held)) = &self.at {
            if *d == device && bits(*held) == bits(want) {
                return Ok(t.clone());
            }
        }
        if device != Device::Cpu && crate::cuda::graph::capturing(device)? {
            return Err(Error::arg(
                "LossScaler",
                format!("the loss scale is not on {device} yet: stage it (ScaleOnDevice::stage) before capturing the step"),
            ));
        }
        let t = match self.at.take() {
            Some((d, t, _)) if d == device && device != Device::Cpu => {
                let bytes: Vec<u8> = want.iter().flat_map(|v| v.to_ne_bytes()).collect();
                crate::cuda::tensor::write_bytes(&t, &bytes)?;
                t
            }
            _ => Tensor::from_vec(want.to_vec(), &[SCALE_STATE.len()])?.to_device(device)?,
        };
        self.at = Some((device, t.clone(), want));
        Ok(t)
    }

    /// Backpropagates `loss * scale` (in f32, as [`LossScaler::scale_loss`]
    /// does), the scale read from the staged state where `loss` is.
    pub fn backward(&mut self, s: &LossScaler, loss: &Tensor) -> Result<()> {
        let state = self.stage(s, loss.device())?;
        let scale = state.narrow(0, 0, 1)?.reshape(loss.dims())?;
        loss.to_dtype(DType::F32)?.mul(&scale)?.backward()
    }

    /// The optimizer step of a loss-scaled backward, queued: unscales the
    /// gradients by the device's scale, steps `opt` unless one overflowed
    /// (decided on the device) and updates the scale there. Returns an f32
    /// `[4]` tensor to read with the step's other values: the overflow flag
    /// (1: skipped) then the new [`SCALE_STATE`]; give those values to
    /// [`absorb`](Self::absorb). The gradients are all on `device`.
    pub fn queue_step(
        &mut self,
        s: &LossScaler,
        opt: &mut Sgd,
        params: &[Param],
        device: Device,
    ) -> Result<Tensor> {
        let mut state = self.stage(s, device)?;
        let _ng = no_grad();
        let grads: Vec<(Param, Tensor)> = params
            .iter()
            .filter_map(|p| Some((p.clone(), p.grad()?)))
            .collect();
        if let Some((p, g)) = grads.iter().find(|(_, g)| g.device() != device) {
            return Err(Error::arg(
                "LossScaler",
                format!("{}'s gradient is on {}, not {device}", p.name(), g.device()),
            ));
        }
        let found = if grads.is_empty() {
            Tensor::from_vec(vec![0.0f32], &[1])?.to_device(device)?
        } else {
            on_backend!(device, b => b.unscale_found(&grads, &state))?
        };
        opt.step_unless(params, Some(&found))?;
        on_backend!(device, b => b.update_scale(&mut state, &found, &s.hyper()))?;
        if let Some(at) = self.at.as_mut() {
            // the updated state (a new tensor on the host, the same one on a
            // GPU); its values reach `at.2` with the step's read (absorb)
            at.1 = state.clone();
        }
        Tensor::cat(&[found, state], 0)
    }

    /// Takes a queued step's read values (what [`queue_step`](Self::queue_step)'s tensor
    /// held) back into `s`: returns whether the step was taken, or the
    /// error once `max_skipped` steps in a row overflowed.
    pub fn absorb(&mut self, s: &mut LossScaler, read: &[f64]) -> Result<bool> {
        let [found, scale, clean, skipped] = read else {
            return Err(Error::arg(
                "LossScaler",
                format!(
                    "a scaled step reads {} values, got {}",
                    Self::READ_LEN,
                    read.len()
                ),
            ));
        };
        s.scale = *scale;
        s.clean_steps = *clean as usize;
        s.skipped_steps = *skipped as usize;
        if let Some(at) = self.at.as_mut() {
            at.2 = Self::values(s);
        }
        s.check_skipped()?;
        Ok(*found == 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::Optimizer;

    fn param(name: &str, v: &[f32], no_wd: bool) -> Param {
        Param::new(
            name,
            Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap(),
            no_wd,
        )
        .unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// Two runs of the same steps, one through `amp_step` (the host
    /// decides) and one through `ScaleOnDevice` (the device decides, the
    /// host reads afterwards), with overflows on the first step (no
    /// momentum yet), mid-run and twice in a row, and growth every 2 clean
    /// steps: the same params, momentum, skipped steps and scales, bit for
    /// bit.
    #[test]
    fn device_decided_steps_are_the_host_decided_ones() {
        let values = [[0.5f32, -1.0, 2.0], [0.25, 0.125, -0.5]];
        let run = |on_device: bool| {
            let ps = [param("w", &values[0], false), param("b", &values[1], true)];
            let mut opt = Sgd::new(0.1, 0.9, 1e-2)
                .with_nesterov(true)
                .with_exclude_no_wd(true);
            let mut s = LossScaler::new(8.0);
            s.growth_interval = 2;
            let mut dev = ScaleOnDevice::default();
            let mut log = Vec::new();
            for k in 0..8 {
                let overflow = [0, 3, 4].contains(&k);
                for (i, p) in ps.iter().enumerate() {
                    // what a backward of the scaled loss leaves
                    let g: Vec<f32> = (0..3)
                        .map(|j| {
                            let v = ((k * 7 + i * 3 + j) % 5) as f32 - 2.0;
                            if overflow && i == 1 && j == 2 {
                                f32::INFINITY
                            } else {
                                v * s.scale as f32
                            }
                        })
                        .collect();
                    p.set_grad(Some(Tensor::from_vec(g, &[3]).unwrap()));
                }
                let stepped = if on_device {
                    let read = dev.queue_step(&s, &mut opt, &ps, Device::Cpu).unwrap();
                    dev.absorb(&mut s, &read.to_vec_f64().unwrap()).unwrap()
                } else {
                    amp_step(&mut opt, Some(&mut s), &ps).unwrap()
                };
                assert_eq!(stepped, !overflow, "step {k}");
                log.push((s.scale, s.clean_steps, s.skipped_steps));
            }
            let state: Vec<Vec<u32>> = opt.state().iter().map(|(_, t)| bits(t)).collect();
            (
                ps.iter().map(|p| bits(&p.get())).collect::<Vec<_>>(),
                state,
                log,
            )
        };
        let (host, device) = (run(false), run(true));
        assert_eq!(host, device);
        // the scale backed off three times and grew twice: 8 / 8 * 4
        assert_eq!(host.2.last().unwrap().0, 4.0);
    }

    /// The CPU's `update_scale` is `LossScaler::update` in f32 over a long
    /// run of clean and overflowed steps, and a rewritten host scaler (a
    /// restored checkpoint) is staged again.
    #[test]
    fn the_scale_update_follows_the_host_rule_and_restaging_rewrites() {
        let mut s = LossScaler::new(1024.0);
        s.growth_interval = 3;
        let mut dev = ScaleOnDevice::default();
        let mut state = dev.stage(&s, Device::Cpu).unwrap();
        for k in 0..40u32 {
            let found = k.is_multiple_of(7) || k % 11 == 5;
            let flag = Tensor::from_vec(vec![f32::from(u8::from(found))], &[1]).unwrap();
            crate::backend::Cpu
                .update_scale(&mut state, &flag, &s.hyper())
                .unwrap();
            s.update(found);
            let want = [s.scale as f32, s.clean_steps as f32, s.skipped_steps as f32];
            assert_eq!(state.to_vec::<f32>().unwrap(), want, "step {k}");
        }
        let mut s = LossScaler::new(64.0);
        let first = dev.stage(&s, Device::Cpu).unwrap();
        assert_eq!(first.to_vec::<f32>().unwrap(), [64.0, 0.0, 0.0]);
        s.scale = 16.0;
        s.skipped_steps = 2;
        let again = dev.stage(&s, Device::Cpu).unwrap();
        assert_eq!(again.to_vec::<f32>().unwrap(), [16.0, 0.0, 2.0]);
        s.scale = 1e300;
        let e = dev.stage(&s, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("finite in f32"), "{e}");
    }

    /// The run stops with the host's error once `max_skipped` steps in a
    /// row overflowed, and a read of the wrong length is an error.
    #[test]
    fn absorb_stops_a_run_that_cannot_recover() {
        let mut s = LossScaler {
            max_skipped: 2,
            ..LossScaler::new(4.0)
        };
        let mut dev = ScaleOnDevice::default();
        assert!(!dev.absorb(&mut s, &[1.0, 2.0, 0.0, 1.0]).unwrap());
        let e = dev.absorb(&mut s, &[1.0, 1.0, 0.0, 2.0]).unwrap_err();
        assert!(e.to_string().contains("overflowed 2 steps in a row"), "{e}");
        assert!(dev.absorb(&mut s, &[0.0, 1.0]).is_err());
    }
}
