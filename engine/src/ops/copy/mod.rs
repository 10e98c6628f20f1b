//! Copies: dtype casts, contiguous copies and moves between devices, with
//! their autograd, over the [`CopyOps`] primitives of the backends.

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

use crate::autograd::record;
use crate::backend::{unsupported, BackendInfo};
use crate::{on_backend, DType, Device, Result, Tensor};

/// The copy primitives a backend implements. None records autograd.
pub trait CopyOps: BackendInfo {
    /// `x`'s values as `dtype` (f32 -> f16/bf16 rounds to nearest even;
    /// float -> int truncates toward zero).
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        let _ = (x, dtype);
        Err(unsupported(self, "cast"))
    }
    /// A row-major copy of `x`.
    fn contiguous(&self, x: &Tensor) -> Result<Tensor> {
        let _ = x;
        Err(unsupported(self, "contiguous"))
    }
    /// `x` (on this backend) as a host tensor.
    fn to_host(&self, x: &Tensor) -> Result<Tensor> {
        let _ = x;
        Err(unsupported(self, "to_host"))
    }
    /// Host tensor `x` copied to `device` of this backend.
    fn from_host(&self, x: &Tensor, device: Device) -> Result<Tensor> {
        let _ = (x, device);
        Err(unsupported(self, "from_host"))
    }
    /// `x`'s values as they are now, for the host: queued after the work
    /// that writes them, waited for only by [`QueuedRead::wait`].
    fn to_host_queued(&self, x: &Tensor) -> Result<QueuedRead> {
        let _ = x;
        Err(unsupported(self, "to_host_queued"))
    }
}

/// A tensor's values on their way to the host ([`Tensor::queue_to_host`]).
pub struct QueuedRead(Pending);

enum Pending {
    /// The values on the host (a CPU tensor's, row-major).
    Host(Tensor),
    /// A GPU download, and the dtype and dims of its values.
    Gpu(crate::cuda::queued_read::QueuedDownload, DType, Vec<usize>),
}

impl QueuedRead {
    pub(crate) fn host(t: Tensor) -> QueuedRead {
        QueuedRead(Pending::Host(t))
    }

    pub(crate) fn gpu(
        read: crate::cuda::queued_read::QueuedDownload,
        dtype: DType,
        dims: &[usize],
    ) -> QueuedRead {
        QueuedRead(Pending::Gpu(read, dtype, dims.to_vec()))
    }

    /// The values as a row-major host tensor, once they have arrived (the
    /// host waits for the work queued before the read, no further).
    pub fn wait(self) -> Result<Tensor> {
        match self.0 {
            Pending::Host(t) => Ok(t),
            Pending::Gpu(read, dtype, dims) => {
                crate::cuda::tensor::host_tensor(dtype, &dims, &read.wait()?)
            }
        }
    }
}

/// `out` (the float `input` cast to another dtype) recorded as the cast of
/// `input`: its gradient is cast back to `input`'s dtype.
pub(crate) fn record_cast(out: Tensor, input: &Tensor) -> Tensor {
    let src = input.dtype();
    record(out, "cast", &[input], move |g| {
        Ok(vec![Some(g.to_dtype(src)?)])
    })
}

impl Tensor {
    /// Cast to another dtype; the gradient is cast back.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        on_backend!(self.device(), b => crate::trace::op("cast", "forward", b.name(), &[self], || {
            let out = b.cast(self, dtype)?;
            if !dtype.is_float() {
                return Ok(out);
            }
            Ok(record_cast(out, self))
        }))
    }

    /// A contiguous tensor with the same values (no copy when already so);
    /// a failing copy (a GPU out of memory) is the error.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let out = on_backend!(self.device(), b => b.contiguous(self))?;
        Ok(record(out, "contiguous", &[self], |g| {
            Ok(vec![Some(g.clone())])
        }))
    }

    /// Queues a read of this tensor's values as they are once the work
    /// queued so far has run: later work (a step queued behind it, an
    /// in-place update) does not change them. On a GPU the host waits only
    /// in [`QueuedRead::wait`] (reads over 64 KiB wait here); on the CPU
    /// the values are there at once (host storage is never written in
    /// place). No autograd.
    pub fn queue_to_host(&self) -> Result<QueuedRead> {
        on_backend!(self.device(), b => b.to_host_queued(self))
    }

    /// A copy on `device` (the same tensor when already there), through the
    /// host between two GPUs. Gradients flow back to the source device. 4-D
    /// tensors are stored channels-last on a GPU (cuda::tensor). No GPU: the
    /// probe's error, naming what is missing.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        let from = self.device();
        if device == from {
            return Ok(self.clone());
        }
        let host = on_backend!(from, b => b.to_host(self))?;
        let out = on_backend!(device, b => b.from_host(&host, device))?;
        if !self.requires_grad() || !self.dtype().is_float() {
            return Ok(out);
        }
        Ok(record(out, "to_device", &[self], move |g| {
            Ok(vec![Some(g.to_device(from)?)])
        }))
    }
}
