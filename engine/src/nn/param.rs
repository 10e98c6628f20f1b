//! Named trainable parameters and non-trainable buffers.
//!
//! A `Param` is a shared cell holding a leaf tensor that requires grad.
//! Layers read it on every forward; optimizers replace its value (keeping
//! the same gradient slot); checkpoints find it by its torchvision-style name.
//!
//! An f32 param read in bf16 or f16 (a mixed-precision forward) keeps the
//! rounded copy it was cast to, and later forwards read that copy instead
//! of casting again, as long as it equals the value rounded: `set` drops
//! it, and an optimizer step that writes the value in place takes it out
//! first ([`Param::take_copy`]) and gives it back only when the same
//! launch rewrote it ([`Param::keep_copy`]; the GPU's SGD and LARS
//! kernels do). Anything else that writes a param's storage in place must
//! go through `set`.
//!
//! A frozen param (PyTorch's `requires_grad_(False)`) reads as a detached
//! value: the ops that read it record no gradient for it, and where nothing
//! before them needs one (a frozen stem and first stage) no backward at all.

use crate::ops::copy::record_cast;
use crate::{DType, Device, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

#[derive(Clone)]
pub struct Param {
    inner: Arc<ParamInner>,
}

struct ParamInner {
    name: String,
    value: RwLock<Tensor>,
    /// BN weights/biases and linear biases are usually excluded from weight decay.
    no_weight_decay: bool,
    /// The f32 value rounded to bf16 or f16, as [`Param::get_as`] last
    /// cast it (module doc). Locked after `value`, never before it.
    copy: Mutex<Option<Tensor>>,
    /// Read detached (module doc).
    frozen: AtomicBool,
}

impl Param {
    pub fn new(name: impl Into<String>, value: Tensor, no_weight_decay: bool) -> Result<Param> {
        Ok(Param {
            inner: Arc::new(ParamInner {
                name: name.into(),
                value: RwLock::new(value.detach().requires_grad_()?),
                no_weight_decay,
                copy: Mutex::new(None),
                frozen: AtomicBool::new(false),
            }),
        })
    }
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    pub fn no_weight_decay(&self) -> bool {
        self.inner.no_weight_decay
    }
    /// The current value: a leaf whose gradient accumulates into this
    /// param, or, frozen, the value detached.
    pub fn get(&self) -> Tensor {
        let value = self.inner.value.read().unwrap();
        if self.is_frozen() {
            value.detach()
        } else {
            value.clone()
        }
    }
    /// Freezes the param (no gradient, module doc) or thaws it; either way
    /// its gradient so far is dropped.
    pub fn set_frozen(&self, frozen: bool) {
        let value = self.inner.value.read().unwrap();
        value.set_grad(None);
        self.inner.frozen.store(frozen, Ordering::Relaxed);
    }
    pub fn is_frozen(&self) -> bool {
        self.inner.frozen.load(Ordering::Relaxed)
    }
    pub fn dims(&self) -> Vec<usize> {
        self.get().dims().to_vec()
    }
    /// The value in `dtype` for a forward: `get().to_dtype(dtype)`, whose
    /// gradient is cast back into this param's slot. An f32 param read in
    /// bf16 or f16 is cast once and the copy reused until the value changes
    /// (module doc), so a training step's forward runs no weight casts
    /// after the first step.
    pub fn get_as(&self, dtype: DType) -> Result<Tensor> {
        let frozen = self.is_frozen();
        let value = self.inner.value.read().unwrap();
        if value.dtype() != DType::F32 || !matches!(dtype, DType::BF16 | DType::F16) {
            return if frozen {
                value.detach().to_dtype(dtype)
            } else {
                value.to_dtype(dtype)
            };
        }
        let mut copy = self.inner.copy.lock().unwrap();
        let kept = match &*copy {
            Some(c) if c.dtype() == dtype && c.device() == value.device() => c.clone(),
            _ => {
                // kept across steps: not among a step's tensors
                let c = crate::cuda::lasting(|| value.detach().to_dtype(dtype))?;
                // a cast recorded into a CUDA graph has not run yet (and
                // never will if the recording is abandoned): not kept
                if !crate::cuda::graph::capturing(value.device())? {
                    *copy = Some(c.clone());
                }
                c
            }
        };
        Ok(if frozen {
            kept
        } else {
            record_cast(kept, &value)
        })
    }
    /// Takes the rounded copy out (module doc): for a step that writes the
    /// value in place, which gives it back with [`Param::keep_copy`] once
    /// its launch also rewrites the copy.
    pub(crate) fn take_copy(&self) -> Option<Tensor> {
        self.inner.copy.lock().unwrap().take()
    }
    /// Gives back a copy taken by [`Param::take_copy`], now the value
    /// rounded again.
    pub(crate) fn keep_copy(&self, copy: Tensor) {
        *self.inner.copy.lock().unwrap() = Some(copy);
    }
    /// Replaces the value (same shape expected; the gradient slot is kept).
    pub fn set(&self, value: Tensor) -> Result<()> {
        let mut v = self.inner.value.write().unwrap();
        if value.dims() != v.dims() || value.dtype() != v.dtype() {
            return Err(crate::Error::shape(
                "Param::set",
                format!(
                    "{}: new value {:?} {} does not match {:?} {}",
                    self.inner.name,
                    value.dims(),
                    value.dtype(),
                    v.dims(),
                    v.dtype()
                ),
            ));
        }
        *v = v.with_same_grad_slot(value);
        *self.inner.copy.lock().unwrap() = None;
        Ok(())
    }
    pub fn device(&self) -> Device {
        self.get().device()
    }
    /// The value and the gradient (if any) copied to `device`, without
    /// changing anything: [`Param::set_moved`] installs them.
    pub fn copied_to(&self, device: Device) -> Result<(Tensor, Option<Tensor>)> {
        let v = self.get();
        let g = v.grad().map(|g| g.to_device(device)).transpose()?;
        Ok((v.detach().to_device(device)?, g))
    }
    /// Installs what [`Param::copied_to`] returned: the same param (name,
    /// gradient slot) now on the new device. Unlike `set`, the device may
    /// change.
    pub fn set_moved(&self, (value, grad): (Tensor, Option<Tensor>)) -> Result<()> {
        self.set(value)?;
        self.set_grad(grad);
        Ok(())
    }
    /// Moves the value (and gradient) to `device`, keeping the gradient slot.
    pub fn to_device(&self, device: Device) -> Result<()> {
        let moved = self.copied_to(device)?;
        self.set_moved(moved)
    }
    pub fn grad(&self) -> Option<Tensor> {
        self.get().grad()
    }
    pub fn set_grad(&self, g: Option<Tensor>) {
        self.get().set_grad(g)
    }
    pub fn zero_grad(&self) {
        self.set_grad(None)
    }
}

/// A named non-trainable tensor (BN running statistics).
#[derive(Clone)]
pub struct Buffer {
    inner: Arc<(String, RwLock<Tensor>)>,
}

impl Buffer {
    pub fn new(name: impl Into<String>, value: Tensor) -> Buffer {
        Buffer {
            inner: Arc::new((name.into(), RwLock::new(value.detach()))),
        }
    }
    pub fn name(&self) -> &str {
        &self.inner.0
    }
    pub fn get(&self) -> Tensor {
        self.inner.1.read().unwrap().clone()
    }
    /// Moves the value to `device`.
    pub fn to_device(&self, device: Device) -> Result<()> {
        let moved = self.get().to_device(device)?;
        self.set(moved)
    }
    /// Replaces the value (same shape and dtype); while a CUDA graph is
    /// being recorded on the buffer's GPU, copies it into the current
    /// storage instead, which the recorded work keeps reading.
    pub fn set(&self, value: Tensor) -> Result<()> {
        let mut v = self.inner.1.write().unwrap();
        if value.dims() != v.dims() || value.dtype() != v.dtype() {
            return Err(crate::Error::shape(
                "Buffer::set",
                format!(
                    "{}: new value {:?} {} does not match {:?} {}",
                    self.inner.0,
                    value.dims(),
                    value.dtype(),
                    v.dims(),
                    v.dtype()
                ),
            ));
        }
        // while a CUDA graph is captured, the graph keeps reading the
        // storage it recorded: the new value goes there
        if value.device() == v.device() && crate::cuda::graph::capturing(v.device())? {
            return crate::cuda::tensor::overwrite(&v, &value);
        }
        *v = value.detach();
        Ok(())
    }
}

/// `prefix.name`, or just `name` at the top level.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{Optimizer, Sgd};
    use crate::Rng;

    fn param(rng: &mut Rng) -> Param {
        Param::new(
            "w",
            Tensor::randn(&[5, 7], 0.0, 1.0, DType::F32, rng),
            false,
        )
        .unwrap()
    }

    fn same_storage(a: &Tensor, b: &Tensor) -> bool {
        Arc::ptr_eq(a.storage(), b.storage())
    }

    /// The values in f32 (exact for bf16 and f16).
    fn vals(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap()
    }

    /// The param's value cast now, as an uncached forward would.
    fn cast_now(p: &Param, dtype: DType) -> Vec<f32> {
        vals(&p.get().to_dtype(dtype).unwrap())
    }

    #[test]
    fn a_kept_copy_is_read_until_the_value_changes() {
        let mut rng = Rng::new(3);
        let p = param(&mut rng);
        for dtype in [DType::BF16, DType::F16] {
            let a = p.get_as(dtype).unwrap();
            assert_eq!((a.dtype(), vals(&a)), (dtype, cast_now(&p, dtype)));
            // read again: the same copy, no second cast
            assert!(same_storage(&a, &p.get_as(dtype).unwrap()));
        }
        // f32 is the value itself; f64 an ordinary cast, nothing kept
        assert!(same_storage(&p.get_as(DType::F32).unwrap(), &p.get()));
        let d = p.get_as(DType::F64).unwrap();
        assert!(!same_storage(&d, &p.get_as(DType::F64).unwrap()));
        // a new value drops the copy
        let kept = p.get_as(DType::BF16).unwrap();
        p.set(Tensor::randn(&[5, 7], 0.0, 1.0, DType::F32, &mut rng))
            .unwrap();
        let fresh = p.get_as(DType::BF16).unwrap();
        assert!(!same_storage(&kept, &fresh));
        assert_eq!(vals(&fresh), cast_now(&p, DType::BF16));
        // a copy taken out for an in-place step is gone until given back
        let taken = p.take_copy().unwrap();
        assert!(!same_storage(&taken, &p.get_as(DType::BF16).unwrap()));
    }

    #[test]
    fn the_gradient_of_a_kept_copy_reaches_the_param_in_f32() {
        let mut rng = Rng::new(4);
        let p = param(&mut rng);
        let x = Tensor::randn(&[3, 5], 0.0, 1.0, DType::BF16, &mut rng);
        let grad_of = |w: Tensor| {
            p.zero_grad();
            let y = x.matmul(&w).unwrap().to_dtype(DType::F32).unwrap();
            y.sum_all().unwrap().backward().unwrap();
            let g = p.grad().unwrap();
            assert_eq!(g.dtype(), DType::F32);
            g.to_vec::<f32>().unwrap()
        };
        // the first forward casts, the second reads the kept copy, the
        // third casts without keeping anything: one gradient
        let first = grad_of(p.get_as(DType::BF16).unwrap());
        assert_eq!(grad_of(p.get_as(DType::BF16).unwrap()), first);
        assert_eq!(grad_of(p.get().to_dtype(DType::BF16).unwrap()), first);
    }

    #[test]
    fn an_optimizer_step_leaves_no_stale_copy() {
        let mut rng = Rng::new(5);
        let p = param(&mut rng);
        let mut sgd = Sgd::new(0.1, 0.9, 1e-4);
        for _ in 0..3 {
            let before = vals(&p.get_as(DType::BF16).unwrap());
            p.set_grad(Some(Tensor::randn(&[5, 7], 0.0, 1.0, DType::F32, &mut rng)));
            sgd.step(std::slice::from_ref(&p)).unwrap();
            let after = vals(&p.get_as(DType::BF16).unwrap());
            assert_ne!(before, after);
            assert_eq!(after, cast_now(&p, DType::BF16));
        }
    }

    #[test]
    fn a_frozen_param_gets_no_gradient_until_thawed() {
        let mut rng = Rng::new(5);
        let p = param(&mut rng);
        let x = Tensor::randn(&[7, 3], 0.0, 1.0, DType::F32, &mut rng)
            .requires_grad_()
            .unwrap();
        let backward = |w: Tensor| w.matmul(&x).unwrap().sum_all().unwrap().backward().unwrap();
        backward(p.get());
        assert!(p.grad().is_some());
        // freezing drops the gradient; reads are detached, in any dtype
        p.set_frozen(true);
        assert!(p.is_frozen() && p.grad().is_none());
        for dtype in [DType::F32, DType::BF16, DType::F64] {
            assert!(!p.get_as(dtype).unwrap().requires_grad());
        }
        backward(p.get());
        assert!(p.grad().is_none() && x.grad().is_some());
        // thawed: a leaf of the same slot again
        p.set_frozen(false);
        backward(p.get_as(DType::BF16).unwrap().to_dtype(DType::F32).unwrap());
        assert_eq!(p.grad().unwrap().dims(), [5, 7]);
    }
}
