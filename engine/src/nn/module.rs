//! The `Module` trait every layer implements, and the parameter-free layers.

use crate::nn::{Buffer, Param, StatSync};
use crate::{Device, Result, Tensor};
use std::sync::Arc;

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
    /// Makes every BatchNorm layer normalise with the statistics of the
    /// whole data-parallel batch in training (`sync`, SyncBatchNorm), or of
    /// this rank's batch again (`None`); containers forward it to children.
    fn set_batch_norm_sync(&self, sync: Option<Arc<dyn StatSync>>) {
        self.children()
            .iter()
            .for_each(|m| m.set_batch_norm_sync(sync.clone()))
    }
    /// Moves every param (keeping its gradient slot, so optimizers and
    /// checkpoints still find it) and every buffer to `device`. All copies
    /// are made before anything is replaced, so an error (no GPU, out of
    /// memory) leaves the model where it was. A model is built and
    /// initialised on the host (deterministic) and then moved.
    fn to_device(&self, device: Device) -> Result<()> {
        move_to_device(&self.params(), &self.buffers(), device)
    }
    /// Where the params live: the first param's device (the host for a
    /// model without params).
    fn device(&self) -> Device {
        self.params().first().map_or(Device::Cpu, |p| p.device())
    }
}

/// [`Module::to_device`] for any set of params and buffers: every copy is
/// made before anything is replaced, so an error leaves them where they were.
pub fn move_to_device(params: &[Param], buffers: &[Buffer], device: Device) -> Result<()> {
    let moved_p = params
        .iter()
        .map(|p| p.copied_to(device))
        .collect::<Result<Vec<_>>>()?;
    let moved_b = buffers
        .iter()
        .map(|b| b.get().to_device(device))
        .collect::<Result<Vec<_>>>()?;
    for (p, m) in params.iter().zip(moved_p) {
        p.set_moved(m)?;
    }
    for (b, m) in buffers.iter().zip(moved_b) {
        b.set(m)?;
    }
    Ok(())
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
    fn set_batch_norm_sync(&self, sync: Option<Arc<dyn StatSync>>) {
        (**self).set_batch_norm_sync(sync)
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
    fn set_batch_norm_sync(&self, sync: Option<Arc<dyn StatSync>>) {
        (**self).set_batch_norm_sync(sync)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Buffer, Param};
    use crate::DType;

    struct Tiny {
        w: Param,
        b: Buffer,
    }
    impl Module for Tiny {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            Ok(x.clone())
        }
        fn params(&self) -> Vec<Param> {
            vec![self.w.clone()]
        }
        fn buffers(&self) -> Vec<Buffer> {
            vec![self.b.clone()]
        }
    }

    fn tiny() -> Tiny {
        Tiny {
            w: Param::new(
                "w",
                Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap(),
                false,
            )
            .unwrap(),
            b: Buffer::new("b", Tensor::zeros(&[3], DType::F32)),
        }
    }

    #[test]
    fn to_device_cpu_keeps_values_and_gradient_slot() {
        let m = tiny();
        m.w.set_grad(Some(Tensor::from_vec(vec![0.5f32, -1.0], &[2]).unwrap()));
        m.to_device(Device::Cpu).unwrap();
        assert_eq!(m.device(), Device::Cpu);
        assert_eq!(m.w.get().to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
        assert!(m.w.get().requires_grad(), "still a leaf");
        assert_eq!(
            m.w.grad().unwrap().to_vec::<f32>().unwrap(),
            vec![0.5, -1.0]
        );
        // the slot is the param's: a gradient set now is seen through it
        m.w.set_grad(None);
        assert!(m.w.grad().is_none());
    }

    #[test]
    fn to_device_cuda_moves_the_module_or_is_the_probe_error_and_changes_nothing() {
        let m = tiny();
        if crate::cuda::probe(0).is_ok() {
            eprintln!("a GPU is present: checking the round trip instead of the no-GPU error");
            m.to_device(Device::Cuda(0)).unwrap();
            assert_eq!(m.device(), Device::Cuda(0));
            m.to_device(Device::Cpu).unwrap();
            assert_eq!(m.w.get().to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
            return;
        }
        let e = m.to_device(Device::Cuda(0)).unwrap_err().to_string();
        assert!(e.contains("cuda:0"), "{e}");
        assert_eq!(m.device(), Device::Cpu);
        assert_eq!(m.w.get().to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
        assert_eq!(m.b.get().device(), Device::Cpu);
    }
}
