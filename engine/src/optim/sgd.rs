//! Stochastic gradient descent with momentum, exactly `torch.optim.SGD`.

use super::{check_hyper, par_update, with_grads, MomentumState, OptFloat, Optimizer};
use crate::nn::Param;
use crate::{dispatch_float, no_grad, Error, Result, Tensor};

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

    fn update<T: OptFloat>(&mut self, p: &Param, grad: &Tensor) -> Result<()> {
        let value = p.get();
        let (w, g) = (value.float_data::<T>()?, grad.float_data::<T>()?);
        let wd = if self.exclude_no_wd && p.no_weight_decay() {
            0.0
        } else {
            self.weight_decay
        };
        let (wd, lr, m) = (
            T::from_f64(wd),
            T::from_f64(self.lr),
            T::from_f64(self.momentum),
        );
        let damp = T::from_f64(1.0 - self.dampening);
        let (use_momentum, nesterov) = (self.momentum != 0.0, self.nesterov);
        let prev = if use_momentum {
            self.state.take::<T>("sgd", p.name(), value.dims())?
        } else {
            None
        };
        let first = prev.is_none();
        let mut buf = match prev {
            Some(b) => b,
            None if use_momentum => vec![T::zero(); w.len()],
            None => Vec::new(),
        };
        let mut out = vec![T::zero(); w.len()];
        let k = Kernel { lr, wd, m, damp };
        // Flags as const generics: each variant is a branch-free loop that
        // vectorises.
        let kernel: KernelFn<T> = match (wd != T::zero(), use_momentum, first, nesterov) {
            (false, false, _, _) => Kernel::run::<false, false, false, false>,
            (true, false, _, _) => Kernel::run::<true, false, false, false>,
            (false, true, true, false) => Kernel::run::<false, true, true, false>,
            (false, true, true, true) => Kernel::run::<false, true, true, true>,
            (false, true, false, false) => Kernel::run::<false, true, false, false>,
            (false, true, false, true) => Kernel::run::<false, true, false, true>,
            (true, true, true, false) => Kernel::run::<true, true, true, false>,
            (true, true, true, true) => Kernel::run::<true, true, true, true>,
            (true, true, false, false) => Kernel::run::<true, true, false, false>,
            (true, true, false, true) => Kernel::run::<true, true, false, true>,
        };
        par_update(&mut out, &mut buf, |start, o, b| {
            kernel(
                &k,
                &w[start..start + o.len()],
                &g[start..start + o.len()],
                o,
                b,
            )
        });
        if use_momentum {
            self.state.put(p.name(), value.dims(), buf);
        }
        p.set(Tensor::from_compute(out, value.dims(), value.dtype()))
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &[Param]) -> Result<()> {
        self.check()?;
        let _ng = no_grad();
        for (p, g) in with_grads("sgd", params)? {
            dispatch_float!("sgd", g.dtype(), T => self.update::<T>(&p, &g)?);
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
        self.state = MomentumState::load("sgd", state)?;
        Ok(())
    }
}

type KernelFn<T> = fn(&Kernel<T>, &[T], &[T], &mut [T], &mut [T]);

struct Kernel<T> {
    lr: T,
    wd: T,
    m: T,
    damp: T,
}

impl<T: OptFloat> Kernel<T> {
    /// `out = w - lr * d` over one chunk; `b` is the momentum buffer chunk
    /// (empty without momentum).
    fn run<const DECAY: bool, const MOMENTUM: bool, const FIRST: bool, const NESTEROV: bool>(
        &self,
        w: &[T],
        g: &[T],
        out: &mut [T],
        b: &mut [T],
    ) {
        let d = |w: T, g: T| if DECAY { g + self.wd * w } else { g };
        if !MOMENTUM {
            for ((o, &w), &g) in out.iter_mut().zip(w).zip(g) {
                *o = w - self.lr * d(w, g);
            }
            return;
        }
        for (((o, &w), &g), b) in out.iter_mut().zip(w).zip(g).zip(b.iter_mut()) {
            let d = d(w, g);
            *b = if FIRST {
                d
            } else {
                self.m * *b + self.damp * d
            };
            let u = if NESTEROV { d + self.m * *b } else { *b };
            *o = w - self.lr * u;
        }
    }
}
