//! Copies on the GPU (copy.cu's cast and strided copy kernels) and between
//! host and GPU memory (cuda::tensor's upload/download, which apply and
//! undo the channels-last convention of 4-D tensors).

use super::{CopyOps, QueuedRead};
use crate::backend::Cuda;
use crate::cuda::tensor::{contiguous, download, download_queued, upload};
use crate::{DType, Device, Error, Result, Tensor};

impl CopyOps for Cuda {
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        crate::trace::kernel("cast");
        crate::cuda::launch::cast(x, dtype)
    }

    fn contiguous(&self, x: &Tensor) -> Result<Tensor> {
        crate::trace::kernel("strided_copy");
        contiguous(x)
    }

    fn to_host(&self, x: &Tensor) -> Result<Tensor> {
        download(x)
    }

    fn to_host_queued(&self, x: &Tensor) -> Result<QueuedRead> {
        Ok(QueuedRead::gpu(download_queued(x)?, x.dtype(), x.dims()))
    }

    fn from_host(&self, x: &Tensor, device: Device) -> Result<Tensor> {
        match device {
            Device::Cuda(i) => upload(x, i),
            Device::Cpu => Err(Error::arg("to_device", "the CUDA backend uploads to a GPU")),
        }
    }
}
