//! GPU implementations of the Tensor ops. Each public function here takes
//! and returns GPU tensors, computes the forward on the device and records
//! its backward (itself built from GPU ops) on the autograd tape; the op in
//! `crate::ops` dispatches here when its input is on a GPU.
//!
//! Conventions (cuda::tensor): 4-D tensors are channels-last; outputs get
//! the default layout; inputs with another layout are copied into it first.

pub mod batchnorm;
pub mod detection;
pub mod elementwise;
pub mod loss;
pub mod matmul;
pub mod optim;
pub mod reduce;

use super::launch::{kdtype, kerr};
use super::tensor::{alloc, gpu_of, is_dense, ptr};
use crate::layout::Layout;
use crate::{DType, Result, Tensor};

/// `x` converted to `dtype` with x's layout (no autograd: Tensor::to_dtype
/// records it). f32/f16/bf16 convert on the GPU; other pairs go through the
/// host.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        return Ok(x.detach());
    }
    let (Ok(from), Ok(to)) = (kdtype("cast", x.dtype()), kdtype("cast", dtype)) else {
        let host = super::tensor::download(x)?.to_dtype(dtype)?;
        return host.to_device(x.device());
    };
    let x = if is_dense(x.layout()) {
        x.clone()
    } else {
        super::tensor::to_default_layout(x)?
    };
    let g = gpu_of(&x)?;
    let s = alloc(g, dtype, x.numel())?;
    g.bind()?;
    // SAFETY: x is dense (numel consecutive elements from ptr), s holds numel.
    unsafe {
        g.kernels
            .cast(&g.stream, from, to, ptr(&x)?, s.ptr(), x.numel())
    }
    .map_err(kerr("cast"))?;
    Ok(Tensor::from_device_parts(
        s,
        Layout {
            shape: x.dims().to_vec(),
            strides: x.strides().to_vec(),
            offset: 0,
        },
    ))
}
