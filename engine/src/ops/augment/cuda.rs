//! The op on the GPU (augment.cu): the crops and statistics go up in one
//! small host-to-device copy, one launch writes the NHWC output.

use super::{AugmentOps, CropJob, INV_255};
use crate::backend::Cuda;
use crate::cuda::launch::{kdtype, kerr, traced_sync};
use crate::cuda::tensor::{alloc, empty, gpu_of, ptr};
use crate::{DType, Result, Tensor};
use kernels::device::CropTable;

impl AugmentOps for Cuda {
    fn crop_resize_normalize(&self, pixels: &Tensor, job: &CropJob<'_>) -> Result<Tensor> {
        const OP: &str = "crop_resize_normalize";
        crate::trace::kernel("crop_resize");
        let b = job.batch;
        let g = gpu_of(pixels)?;
        let dt = kdtype(OP, b.dtype)?;
        let t = CropTable::new(&b.crops, b.channels, b.size, &b.mean, &job.inv_std)
            .map_err(kerr(OP))?;
        let table = alloc(g, DType::U8, t.bytes.len())?;
        table.block().upload_queued_at(0, &t.bytes)?;
        // a 1-D tensor's default layout is dense; a strided view is copied
        let pixels = crate::cuda::tensor::to_default_layout(pixels)?;
        let out = empty(g, &[b.crops.len(), b.channels, b.size, b.size], b.dtype)?;
        g.bind()?;
        // SAFETY: the op checked every crop against the pixels; out is a
        // fresh dense NHWC tensor of the table's B, size and C; table holds
        // t.bytes.
        unsafe {
            g.kernels.crop_resize(
                &g.stream,
                dt,
                &t,
                table.ptr(),
                INV_255,
                ptr(&pixels)?,
                ptr(&out)?,
            )
        }
        .map_err(kerr(OP))?;
        traced_sync(g)?;
        Ok(out)
    }
}
