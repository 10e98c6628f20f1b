//! What every GPU primitive shares: the kernels' dtype, error mapping,
//! operand placement (one GPU, dense layouts), output allocation and the
//! raw (no autograd) cast.

use super::runtime::Gpu;
use super::tensor::{alloc, copy_to_strides, gpu_of, is_dense, ptr, to_default_layout};
use crate::layout::Layout;
use crate::{DType, Device, Error, Result, Tensor};

/// The kernels' dtype for a float tensor dtype.
pub(crate) fn kdtype(op: &'static str, d: DType) -> Result<kernels::device::Dtype> {
    match d {
        DType::F32 => Ok(kernels::device::Dtype::F32),
        DType::F16 => Ok(kernels::device::Dtype::F16),
        DType::BF16 => Ok(kernels::device::Dtype::Bf16),
        other => Err(Error::dtype(op, "f32, f16 or bf16 on the GPU", other)),
    }
}

/// Maps a kernels-crate error (launch, compile, shape) into the engine's.
pub(crate) fn kerr(op: &'static str) -> impl FnOnce(kernels::Error) -> Error {
    move |e| Error::arg(op, e.to_string())
}

/// The GPU every tensor of `ts` lives on, or a clear error when they are on
/// different devices.
pub(crate) fn same_gpu(op: &'static str, ts: &[&Tensor]) -> Result<&'static Gpu> {
    crate::backend::same_device(op, ts)?;
    gpu_of(ts[0])
}

/// Waits for the queued kernels when tracing, so the traced time is the
/// GPU's time and not the launch's.
pub(crate) fn traced_sync(g: &Gpu) -> Result<()> {
    if crate::trace::enabled() {
        g.synchronize()?;
    }
    Ok(())
}

/// `x` itself when its elements are a dense run from `ptr(x)`, else a copy
/// in the GPU default layout.
pub(crate) fn dense(x: &Tensor) -> Result<Tensor> {
    if is_dense(x.layout()) {
        Ok(x.clone())
    } else {
        to_default_layout(x)
    }
}

/// `t` with exactly the (dense) strides of `like` (a copy unless it has
/// them already and is dense); same shape required.
pub(crate) fn with_strides_of(op: &'static str, t: &Tensor, like: &Tensor) -> Result<Tensor> {
    if t.dims() != like.dims() {
        return Err(Error::shape(
            op,
            format!(
                "gradient {:?} for an output of shape {:?}",
                t.dims(),
                like.dims()
            ),
        ));
    }
    let same = t
        .dims()
        .iter()
        .zip(t.strides().iter().zip(like.strides()))
        .all(|(&d, (a, b))| d == 1 || a == b);
    if same && is_dense(t.layout()) {
        Ok(t.clone())
    } else {
        copy_to_strides(t, like.strides())
    }
}

/// A GPU tensor of `dtype` and `x`'s shape and strides (x dense), with
/// fresh storage.
pub(crate) fn empty_like(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let g = gpu_of(x)?;
    let s = alloc(g, dtype, x.numel())?;
    Ok(Tensor::from_device_parts(
        s,
        Layout {
            shape: x.dims().to_vec(),
            strides: x.strides().to_vec(),
            offset: 0,
        },
    ))
}

/// A host tensor moved to `dev` (gradients seeded on the host), else itself.
pub(crate) fn on_device(t: &Tensor, dev: Device) -> Result<Tensor> {
    if t.device() == dev {
        Ok(t.clone())
    } else {
        t.to_device(dev)
    }
}

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
