//! Copies on the CPU: strided reads into fresh row-major buffers.

use super::{CopyOps, QueuedRead};
use crate::backend::Cpu;
use crate::layout::Layout;
use crate::{DType, Device, Result, Storage, Tensor};
use std::sync::Arc;

impl CopyOps for Cpu {
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        crate::trace::kernel("cast");
        let c = x.host_contiguous();
        let s = c.storage().cpu("cast")?.cast(dtype);
        Ok(Tensor::from_parts(
            Arc::new(Storage::Cpu(s)),
            Layout::contiguous(x.dims()),
        ))
    }

    fn contiguous(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.host_contiguous())
    }

    fn to_host(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.detach())
    }

    fn from_host(&self, x: &Tensor, _device: Device) -> Result<Tensor> {
        Ok(x.detach())
    }

    /// `x` itself when row-major (else a row-major copy): host storage is
    /// never written in place (an update makes a new tensor), so its
    /// values stay those of now.
    fn to_host_queued(&self, x: &Tensor) -> Result<QueuedRead> {
        Ok(QueuedRead::host(x.host_contiguous()))
    }
}
