//! The `Module` trait every layer implements, and the parameter-free layers.

use crate::nn::{Buffer, Param};
use crate::{Result, Tensor};

/// A layer: a forward function plus the named state it owns.
///
/// Forward takes `&self` so a model can be shared across threads; layers
/// whose behaviour depends on train/eval mode keep the flag in an atomic.
pub trait Module: Send + Sync {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// The sub-modules a container is made of, in a stable order. A
    /// container lists them here and inherits `params`, `buffers` and
    /// `set_training`; a leaf layer keeps the default (none) and implements
    /// those three itself.
    fn children(&self) -> Vec<&dyn Module> {
        vec![]
    }
    /// Trainable parameters, in a stable order (optimizers and checkpoints
    /// rely on it being the same on every call).
    fn params(&self) -> Vec<Param> {
        self.children().iter().flat_map(|m| m.params()).collect()
    }
    /// Non-trainable state saved in checkpoints (BN running statistics).
    fn buffers(&self) -> Vec<Buffer> {
        self.children().iter().flat_map(|m| m.buffers()).collect()
    }
    /// Train mode (the default) or eval mode; containers forward it to children.
    fn set_training(&self, training: bool) {
        self.children()
            .iter()
            .for_each(|m| m.set_training(training))
    }
}

impl<M: Module + ?Sized> Module for Box<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }
    fn children(&self) -> Vec<&dyn Module> {
        (**self).children()
    }
    fn params(&self) -> Vec<Param> {
        (**self).params()
    }
    fn buffers(&self) -> Vec<Buffer> {
        (**self).buffers()
    }
    fn set_training(&self, training: bool) {
        (**self).set_training(training)
    }
}

impl<M: Module + ?Sized> Module for std::sync::Arc<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }
    fn children(&self) -> Vec<&dyn Module> {
        (**self).children()
    }
    fn params(&self) -> Vec<Param> {
        (**self).params()
    }
    fn buffers(&self) -> Vec<Buffer> {
        (**self).buffers()
    }
    fn set_training(&self, training: bool) {
        (**self).set_training(training)
    }
}

/// Elementwise `max(x, 0)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Relu;

impl Module for Relu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.relu()
    }
}

/// Merges all dims from `start_dim` on into one (PyTorch's `nn.Flatten`,
/// whose default `start_dim` is 1: [N, C, H, W] -> [N, C*H*W]).
#[derive(Clone, Copy, Debug)]
pub struct Flatten {
    pub start_dim: usize,
}

impl Default for Flatten {
    fn default() -> Self {
        Flatten { start_dim: 1 }
    }
}

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.flatten(self.start_dim)
    }
}

/// `weight` in the compute dtype of `x`: fp32 master weights are cast to the
/// bf16/f16 activations' dtype on every forward. The cast records a backward
/// that casts the gradient back, so the master still gets an f32 gradient.
pub(crate) fn cast_like(weight: &Tensor, x: &Tensor) -> Result<Tensor> {
    // a no-op (no copy, no graph node) when the dtypes already match
    weight.to_dtype(x.dtype())
}
