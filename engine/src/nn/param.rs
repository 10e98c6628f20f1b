//! Named trainable parameters and non-trainable buffers.
//!
//! A `Param` is a shared cell holding a leaf tensor that requires grad.
//! Layers read it on every forward; optimizers replace its value (keeping
//! the same gradient slot); checkpoints find it by its torchvision-style name.

use crate::{Device, Result, Tensor};
use std::sync::{Arc, RwLock};

#[derive(Clone)]
pub struct Param {
    inner: Arc<ParamInner>,
}

struct ParamInner {
    name: String,
    value: RwLock<Tensor>,
    /// BN weights/biases and linear biases are usually excluded from weight decay.
    no_weight_decay: bool,
}

impl Param {
    pub fn new(name: impl Into<String>, value: Tensor, no_weight_decay: bool) -> Result<Param> {
        Ok(Param {
            inner: Arc::new(ParamInner {
                name: name.into(),
                value: RwLock::new(value.detach().requires_grad_()?),
                no_weight_decay,
            }),
        })
    }
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    pub fn no_weight_decay(&self) -> bool {
        self.inner.no_weight_decay
    }
    /// The current value: a leaf whose gradient accumulates into this param.
    pub fn get(&self) -> Tensor {
        self.inner.value.read().unwrap().clone()
    }
    pub fn dims(&self) -> Vec<usize> {
        self.get().dims().to_vec()
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
