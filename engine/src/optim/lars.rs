//! LARS (You et al., "Large Batch Training of Convolutional Networks", 2017)
//! as used for large-batch SSL/supervised pretraining: SGD-momentum whose
//! per-layer step is rescaled by a trust ratio.

use super::{check_hyper, lr_and_momentum_state, with_grads, MomentumState, Optimizer};
use crate::nn::Param;
use crate::ops::optim::{LarsHyper, OptimOps};
use crate::{no_grad, on_backend, Result, Tensor};

/// Per parameter tensor `w` with gradient `g`:
///
/// ```text
/// adapted params:  q = eta * ||w|| / (||g|| + weight_decay * ||w||)
///                      (q = 1 when ||w|| = 0 or the denominator is 0)
///                  d = q * (g + weight_decay * w)
/// excluded params: d = g          (no decay, no adaptation)
/// buf = momentum * buf + d        (buf starts at zero)
/// w = w - lr * buf
/// ```
///
/// Excluded params are those marked `no_weight_decay` (BN affine, biases)
/// when `exclude_no_wd` is set, as SimCLR/BYOL/Barlow Twins do. Runs on
/// the host only (`OptimOps::lars_step`).
pub struct Lars {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Trust coefficient.
    pub eta: f64,
    pub exclude_no_wd: bool,
    state: MomentumState,
}

impl Lars {
    /// eta 0.001, excluding `no_weight_decay` params.
    pub fn new(lr: f64, momentum: f64, weight_decay: f64) -> Lars {
        Lars {
            lr,
            momentum,
            weight_decay,
            eta: 0.001,
            exclude_no_wd: true,
            state: MomentumState::default(),
        }
    }
    pub fn with_eta(mut self, eta: f64) -> Lars {
        self.eta = eta;
        self
    }
    pub fn with_exclude_no_wd(mut self, exclude: bool) -> Lars {
        self.exclude_no_wd = exclude;
        self
    }
}

impl Optimizer for Lars {
    fn step(&mut self, params: &[Param]) -> Result<()> {
        for (what, v) in [
            ("lr", self.lr),
            ("momentum", self.momentum),
            ("weight_decay", self.weight_decay),
            ("eta", self.eta),
        ] {
            check_hyper("lars", what, v)?;
        }
        let _ng = no_grad();
        for (p, g) in with_grads("lars", params)? {
            let h = LarsHyper {
                lr: self.lr,
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                eta: self.eta,
                excluded: self.exclude_no_wd && p.no_weight_decay(),
            };
            self.state.step(
                "lars",
                &p,
                |buf| on_backend!(g.device(), b => b.lars_step(&p, &g, buf, &h)),
            )?;
        }
        Ok(())
    }
    lr_and_momentum_state!("lars");
}
