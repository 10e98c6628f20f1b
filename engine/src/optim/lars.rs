//! LARS (You et al., "Large Batch Training of Convolutional Networks", 2017)
//! as used for large-batch SSL/supervised pretraining: SGD-momentum whose
//! per-layer step is rescaled by a trust ratio.

use super::{check_hyper, par_update, sum_sq, with_grads, MomentumState, OptFloat, Optimizer};
use crate::nn::Param;
use crate::{dispatch_float, no_grad, Result, Tensor};

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
/// when `exclude_no_wd` is set, as SimCLR/BYOL/Barlow Twins do.
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

    fn update<T: OptFloat>(&mut self, p: &Param, grad: &Tensor) -> Result<()> {
        let value = p.get();
        let (w, g) = (value.float_data::<T>()?, grad.float_data::<T>()?);
        let excluded = self.exclude_no_wd && p.no_weight_decay();
        let (wd, q) = if excluded {
            (0.0, 1.0)
        } else {
            let (wn, gn) = (sum_sq(&w).sqrt(), sum_sq(&g).sqrt());
            let denom = gn + self.weight_decay * wn;
            let q = if wn > 0.0 && denom > 0.0 {
                self.eta * wn / denom
            } else {
                1.0
            };
            (self.weight_decay, q)
        };
        let (wd, q) = (T::from_f64(wd), T::from_f64(q));
        let (lr, m) = (T::from_f64(self.lr), T::from_f64(self.momentum));
        let mut buf = self
            .state
            .take::<T>("lars", p.name(), value.dims())?
            .unwrap_or_else(|| vec![T::zero(); w.len()]);
        let mut out = vec![T::zero(); w.len()];
        par_update(&mut out, &mut buf, |start, o, b| {
            let (w, g) = (&w[start..start + o.len()], &g[start..start + o.len()]);
            for (((o, &w), &g), b) in o.iter_mut().zip(w).zip(g).zip(b.iter_mut()) {
                *b = m * *b + q * (g + wd * w);
                *o = w - lr * *b;
            }
        });
        self.state.put(p.name(), value.dims(), buf);
        p.set(Tensor::from_compute(out, value.dims(), value.dtype()))
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
            dispatch_float!("lars", g.dtype(), T => self.update::<T>(&p, &g)?);
        }
        Ok(())
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        self.state.to_tensors()
    }
    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()> {
        self.state = MomentumState::load("lars", state)?;
        Ok(())
    }
}
