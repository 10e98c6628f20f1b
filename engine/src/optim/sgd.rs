//! Stochastic gradient descent with momentum, exactly `torch.optim.SGD`,
//! one in-place `OptimOps::sgd_step_many` per device over its params (on
//! the host a per-param loop, on a GPU one multi-tensor launch; its fused
//! kernel rounds the decay term once less: `fmaf`).

use super::{check_hyper, lr_and_momentum_state, with_grads, MomentumState, Optimizer};
use crate::nn::Param;
use crate::ops::optim::{OptimOps, SgdHyper, SgdItem};
use crate::{no_grad, on_backend, Device, Error, Result, Tensor};

/// Per element, with `g` the gradient and `p` the parameter:
///
/// ```text
/// d = g + weight_decay * p                      (decay skipped for no_weight_decay
///                                                params when exclude_no_wd)
/// buf = d                                       on a param's first step,
/// buf = momentum * buf + (1 - dampening) * d    afterwards
/// d = nesterov ? d + momentum * buf : buf       (when momentum != 0)
/// p = p - lr * d
/// ```
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Skip weight decay for params marked `no_weight_decay` (BN affine and
    /// biases). PyTorch's default is false: decay applies to everything.
    pub exclude_no_wd: bool,
    state: MomentumState,
    /// Per GPU, the learning rate its steps read on the device (in place of
    /// the one in their table; see [`Sgd::stage_lr`]) and the value last
    /// written there.
    lr_on: Vec<(Device, f32, Tensor)>,
}

impl Sgd {
    /// Plain momentum SGD (dampening 0, no Nesterov, decay on every param).
    pub fn new(lr: f64, momentum: f64, weight_decay: f64) -> Sgd {
        Sgd {
            lr,
            momentum,
            dampening: 0.0,
            nesterov: false,
            weight_decay,
            exclude_no_wd: false,
            state: MomentumState::default(),
            lr_on: Vec::new(),
        }
    }
    pub fn with_nesterov(mut self, nesterov: bool) -> Sgd {
        self.nesterov = nesterov;
        self
    }
    pub fn with_exclude_no_wd(mut self, exclude: bool) -> Sgd {
        self.exclude_no_wd = exclude;
        self
    }

    /// Makes the one-value f32 tensor that the steps on GPU `device` read
    /// their learning rate from hold `lr` (a queued write into the same
    /// tensor, created on first use; None on the CPU). [`Optimizer::step`]
    /// does it itself. A CUDA graph's recorded step reads that tensor when
    /// replayed, so whoever replays one stages each step's rate first; a
    /// rate not staged before a capture is an error, never recorded.
    pub fn stage_lr(&mut self, device: Device) -> Result<Option<Tensor>> {
        if device == Device::Cpu {
            return Ok(None);
        }
        let v = self.lr as f32;
        let at = self.lr_on.iter().position(|(d, _, _)| *d == device);
        if let Some(k) = at {
            if self.lr_on[k].1.to_bits() == v.to_bits() {
                return Ok(Some(self.lr_on[k].2.clone()));
            }
        }
        if crate::cuda::graph::capturing(device)? {
            return Err(Error::arg(
                "sgd",
                format!("the learning rate {v} is not on {device} yet: stage it (Sgd::stage_lr) before capturing the step"),
            ));
        }
        match at {
            Some(k) => {
                crate::cuda::tensor::write_bytes(&self.lr_on[k].2, &v.to_ne_bytes())?;
                self.lr_on[k].1 = v;
                Ok(Some(self.lr_on[k].2.clone()))
            }
            None => {
                let t = Tensor::from_vec(vec![v], &[1])?.to_device(device)?;
                self.lr_on.push((device, v, t.clone()));
                Ok(Some(t))
            }
        }
    }

    fn check(&self) -> Result<()> {
        check_hyper("sgd", "lr", self.lr)?;
        check_hyper("sgd", "momentum", self.momentum)?;
        check_hyper("sgd", "dampening", self.dampening)?;
        check_hyper("sgd", "weight_decay", self.weight_decay)?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::arg(
                "sgd",
                format!(
                    "Nesterov momentum needs momentum > 0 and dampening 0, got momentum {} dampening {}",
                    self.momentum, self.dampening
                ),
            ));
        }
        Ok(())
    }

    /// The settings of `p`'s step: decay excluded per param.
    fn hyper(&self, p: &Param) -> SgdHyper {
        SgdHyper {
            lr: self.lr,
            momentum: self.momentum,
            dampening: self.dampening,
            weight_decay: if self.exclude_no_wd && p.no_weight_decay() {
                0.0
            } else {
                self.weight_decay
            },
            nesterov: self.nesterov,
        }
    }

    /// [`Optimizer::step`], or, with `found`, the step the device skips
    /// when that one-value f32 flag where the gradients are is not 0 (a
    /// loss-scaled step's overflow, `OptimOps::unscale_found`): nothing is
    /// read back on a GPU. Needs dampening 0 (`SgdItem::skip_if`).
    pub fn step_unless(&mut self, params: &[Param], found: Option<&Tensor>) -> Result<()> {
        self.check()?;
        let _ng = no_grad();
        let stepped = with_grads("sgd", params)?;
        // one sgd_step_many per device, devices in order of first appearance
        let mut devices: Vec<Device> = Vec::new();
        for (_, g) in &stepped {
            if !devices.contains(&g.device()) {
                devices.push(g.device());
            }
        }
        for device in devices {
            let (ps, gs): (Vec<&Param>, Vec<&Tensor>) = stepped
                .iter()
                .filter(|(_, g)| g.device() == device)
                .map(|(p, g)| (p, g))
                .unzip();
            let hypers: Vec<SgdHyper> = ps.iter().map(|p| self.hyper(p)).collect();
            let lr_at = self.stage_lr(device)?;
            // the buffers leave the state for the step and come back after
            // it, also when it fails (a param stepped keeps its new momentum)
            let use_momentum = self.momentum != 0.0;
            let mut bufs = if use_momentum {
                self.state.take_all("sgd", &ps)?
            } else {
                ps.iter().map(|_| None).collect()
            };
            let mut items: Vec<SgdItem<'_>> = ps
                .iter()
                .zip(&gs)
                .zip(bufs.iter_mut())
                .zip(&hypers)
                .map(|(((p, g), m), h)| SgdItem {
                    p,
                    g,
                    m,
                    h: *h,
                    lr_at: lr_at.as_ref(),
                    skip_if: found,
                })
                .collect();
            let r = on_backend!(device, b => b.sgd_step_many(&mut items));
            drop(items);
            if use_momentum {
                self.state.put_all(&ps, bufs);
            }
            r?;
        }
        Ok(())
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &[Param]) -> Result<()> {
        self.step_unless(params, None)
    }
    lr_and_momentum_state!("sgd");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn hyper_excludes_decay_per_param() {
        let sgd = Sgd::new(0.1, 0.9, 5e-4)
            .with_nesterov(true)
            .with_exclude_no_wd(true);
        let w = Param::new("w", Tensor::zeros(&[2], DType::F32), false).unwrap();
        let b = Param::new("b", Tensor::zeros(&[2], DType::F32), true).unwrap();
        let h = sgd.hyper(&w);
        assert_eq!((h.lr, h.momentum, h.weight_decay), (0.1, 0.9, 5e-4));
        assert!(h.nesterov);
        assert_eq!(sgd.hyper(&b).weight_decay, 0.0);
    }
}
