//! Stochastic gradient descent with momentum, exactly `torch.optim.SGD`.
//!
//! Params on the host run the vectorised loops below; params on a GPU run
//! one fused `sgd_step` kernel each (kernels/cuda/sgd.cu), which updates the
//! f32 value and the momentum buffer in place. f16/bf16 params on a GPU are
//! stepped through an f32 working copy whose rounding the same kernel writes
//! into the new value, as the host rounds its f32 result.

use super::{check_hyper, par_update, with_grads, MomentumState, OptFloat, Optimizer};
use crate::cuda::ops::optim::{SgdBuffers, SgdHyper};
use crate::nn::Param;
use crate::{dispatch_float, no_grad, DType, Device, Error, Result, Tensor};

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

    fn weight_decay_of(&self, p: &Param) -> f64 {
        if self.exclude_no_wd && p.no_weight_decay() {
            0.0
        } else {
            self.weight_decay
        }
    }

    /// The kernel's scalars for one param (f32, as the host's f32 loop).
    fn hyper(&self, p: &Param, first: bool) -> SgdHyper {
        SgdHyper {
            lr: self.lr as f32,
            momentum: self.momentum as f32,
            dampening: self.dampening as f32,
            weight_decay: self.weight_decay_of(p) as f32,
            nesterov: self.nesterov,
            first,
        }
    }

    /// The update of a param on a GPU: one `sgd_step_<t>` launch.
    fn update_gpu(&mut self, p: &Param, grad: &Tensor) -> Result<()> {
        use crate::cuda::launch::kdtype;
        use crate::cuda::ops::{cast, optim::sgd_step};
        use crate::cuda::tensor::{self as ct, alloc, ptr};
        const OP: &str = "sgd";
        let mut value = p.get();
        if !matches!(value.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::dtype(
                OP,
                format!("an f32, f16 or bf16 parameter on the GPU ({})", p.name()),
                value.dtype(),
            ));
        }
        // the kernel walks a flat buffer: a strided view is made dense once
        if !ct::is_dense(value.layout()) {
            p.set(ct::to_default_layout(&value)?)?;
            value = p.get();
        }
        let gpu = ct::gpu_of(&value)?;
        let low = value.dtype() != DType::F32;
        // f32: the param's own storage, stepped in place
        let master = if low {
            cast(&value, DType::F32)?
        } else {
            value.clone()
        };
        let grad = if grad.dtype() == DType::F32 {
            grad.clone()
        } else {
            cast(grad, DType::F32)?
        };
        // element i of every operand must be the same logical element
        let grad = if same_dense_layout(&grad, &master) {
            grad
        } else {
            ct::copy_to_strides(&grad, master.strides())?
        };
        let like_master = |dtype: DType| -> Result<Tensor> {
            let s = alloc(gpu, dtype, master.numel())?;
            Ok(Tensor::from_device_parts(
                s,
                crate::layout::Layout {
                    shape: master.dims().to_vec(),
                    strides: master.strides().to_vec(),
                    offset: 0,
                },
            ))
        };
        let use_momentum = self.momentum != 0.0;
        let prev = if use_momentum {
            self.state
                .take_device(OP, p.name(), value.dims(), value.device())?
        } else {
            None
        };
        let first = prev.is_none();
        let buf = match prev {
            Some(b) if same_dense_layout(&b, &master) => Some(b),
            Some(b) => Some(ct::copy_to_strides(&b, master.strides())?),
            // the kernel writes buf = d on a first step: no zeroing needed
            None if use_momentum => Some(like_master(DType::F32)?),
            None => None,
        };
        let copy = if low {
            Some(like_master(value.dtype())?)
        } else {
            None
        };
        let bufs = SgdBuffers {
            p: ptr(&master)?,
            g: ptr(&grad)?,
            buf: buf.as_ref().map(ptr).transpose()?.unwrap_or(0),
            copy: copy.as_ref().map(ptr).transpose()?.unwrap_or(0),
            n: master.numel(),
        };
        let copy_dtype = kdtype(OP, copy.as_ref().map_or(DType::F32, |c| c.dtype()))?;
        // SAFETY: master, grad, buf and copy are dense over the same layout
        // (numel elements each from their first element), live on `gpu`, and
        // are distinct buffers: master is the param's storage or a fresh
        // cast, grad and buf are separate allocations.
        unsafe { sgd_step(gpu, copy_dtype, &bufs, &self.hyper(p, first))? };
        if let Some(b) = buf {
            self.state.put_device(p.name(), b);
        }
        if let Some(c) = copy {
            p.set(c)?;
        }
        Ok(())
    }

    fn update<T: OptFloat>(&mut self, p: &Param, grad: &Tensor) -> Result<()> {
        let value = p.get();
        let (w, g) = (value.float_data::<T>()?, grad.float_data::<T>()?);
        let wd = self.weight_decay_of(p);
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
            if g.device() != Device::Cpu {
                self.update_gpu(&p, &g)?;
                continue;
            }
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

/// Whether two dense tensors of one shape put every element at the same
/// offset from their first element (size-1 dims have no say).
fn same_dense_layout(a: &Tensor, b: &Tensor) -> bool {
    crate::cuda::tensor::is_dense(a.layout())
        && crate::cuda::tensor::is_dense(b.layout())
        && a.dims() == b.dims()
        && a.dims()
            .iter()
            .zip(a.strides().iter().zip(b.strides()))
            .all(|(&d, (x, y))| d == 1 || x == y)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_layouts_match_only_with_the_same_strides() {
        let a =
            Tensor::from_vec((0..24).map(|x| x as f32).collect::<Vec<_>>(), &[2, 3, 4]).unwrap();
        let b = Tensor::zeros(&[2, 3, 4], DType::F32);
        assert!(same_dense_layout(&a, &b));
        // a permuted view is dense but orders elements differently
        let p = a.permute(&[0, 2, 1]).unwrap();
        let q = Tensor::zeros(&[2, 4, 3], DType::F32);
        assert!(!same_dense_layout(&p, &q));
        // size-1 dims may have any stride
        let r = Tensor::zeros(&[1, 5], DType::F32).permute(&[1, 0]).unwrap();
        let c = Tensor::zeros(&[5, 1], DType::F32);
        assert!(same_dense_layout(&r, &c));
        // a strided slice is not dense
        let s = a.narrow(2, 0, 2).unwrap();
        assert!(!same_dense_layout(
            &s,
            &Tensor::zeros(&[2, 3, 2], DType::F32)
        ));
    }

    #[test]
    fn hyper_is_the_f32_of_each_setting_with_decay_excluded_per_param() {
        let sgd = Sgd::new(0.1, 0.9, 5e-4)
            .with_nesterov(true)
            .with_exclude_no_wd(true);
        let w = Param::new("w", Tensor::zeros(&[2], DType::F32), false).unwrap();
        let b = Param::new("b", Tensor::zeros(&[2], DType::F32), true).unwrap();
        let h = sgd.hyper(&w, true);
        assert_eq!(
            (h.lr, h.momentum, h.weight_decay),
            (0.1f32, 0.9f32, 5e-4f32)
        );
        assert!(h.nesterov && h.first);
        assert_eq!(sgd.hyper(&b, false).weight_decay, 0.0);
        assert!(!sgd.hyper(&b, false).first);
    }
}
