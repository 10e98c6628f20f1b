//! Elementwise ops on the GPU (elementwise.cu): add (same shape, or a
//! trailing-dims operand broadcast over rows: the bias add), ReLU and
//! scaling by a scalar, each with the CPU op's autograd.
//!
//! Dense operands are read in their physical order, so an add of two
//! channels-last tensors never copies; operands whose layouts differ are
//! first copied to the GPU default layout. Also the helpers the other op
//! files share (one GPU for all operands, output allocation, trace timing).

use crate::autograd::record;
use crate::cuda::launch::{
    dense, empty_like, kdtype, kerr, on_device, same_gpu, traced_sync, with_strides_of,
};
use crate::cuda::runtime::Gpu;
use crate::cuda::tensor::{alloc, gpu_of, ptr};
use crate::layout::{broadcast_shapes, Layout};
use crate::{Error, Result, Tensor};
use kernels::device::Binary;

/// out = a (op) b for same-shape operands, no autograd; the output takes
/// a's (dense) strides.
pub(crate) fn binary_same_shape(
    name: &'static str,
    op: Binary,
    a: &Tensor,
    b: &Tensor,
) -> Result<Tensor> {
    let g = same_gpu(name, &[a, b])?;
    let dt = kdtype(name, a.dtype())?;
    let a = dense(a)?;
    let b = with_strides_of(name, b, &a)?;
    let out = empty_like(&a, a.dtype())?;
    g.bind()?;
    // SAFETY: a, b, out are dense with a.numel() elements of a's dtype.
    unsafe {
        g.kernels
            .binary(&g.stream, dt, op, ptr(&a)?, ptr(&b)?, ptr(&out)?, a.numel())
    }
    .map_err(kerr(name))?;
    Ok(out)
}

/// The row length when `small` broadcasts to `shape` as a suffix (leading
/// dims missing or 1, the rest equal): out[i] = big[i] + small[i % inner]
/// over row-major data. None for any other broadcast.
pub fn trailing_broadcast(small: &[usize], shape: &[usize]) -> Option<usize> {
    let first = small.iter().position(|&d| d != 1).unwrap_or(small.len());
    let suffix = &small[first..];
    if suffix.len() > shape.len() || small.len() > shape.len() {
        return None;
    }
    (shape[shape.len() - suffix.len()..] == *suffix).then(|| suffix.iter().product())
}

/// `a + b` with the CPU op's broadcasting rules for the cases the GPU
/// supports: equal shapes, or one operand broadcast as trailing dims.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    crate::trace::op("add", "forward", "cuda:add", &[a, b], || {
        crate::ops::same_dtype("add", &[a, b])?;
        let g = same_gpu("add", &[a, b])?;
        let shape = broadcast_shapes("add", a.dims(), b.dims())?;
        let out = if a.dims() == b.dims() {
            binary_same_shape("add", Binary::Add, a, b)?
        } else {
            add_broadcast(g, a, b, &shape)?
        };
        traced_sync(g)?;
        let (sa, sb) = (a.dims().to_vec(), b.dims().to_vec());
        let (need_a, need_b) = (a.requires_grad(), b.requires_grad());
        Ok(record(out, "add", &[a, b], move |g| {
            let ga = need_a.then(|| g.sum_to(&sa)).transpose()?;
            let gb = need_b.then(|| g.sum_to(&sb)).transpose()?;
            Ok(vec![ga, gb])
        }))
    })
}

fn add_broadcast(g: &'static Gpu, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
    // addition commutes: put the full-shape operand first
    let (big, small) = if a.dims() == shape { (a, b) } else { (b, a) };
    let inner = (big.dims() == shape)
        .then(|| trailing_broadcast(small.dims(), shape))
        .flatten()
        .ok_or_else(|| {
            Error::shape(
                "add",
                format!(
                    "on the GPU, add broadcasts only an operand of trailing dims (a bias) over \
                     the other; got {:?} + {:?} ({})",
                    a.dims(),
                    b.dims(),
                    a.dtype()
                ),
            )
        })?;
    let dt = kdtype("add", a.dtype())?;
    // row-major data (4-D GPU tensors are channels-last by default)
    let big = if big.is_contiguous() {
        big.clone()
    } else {
        crate::cuda::tensor::contiguous(big)?
    };
    let small = if small.is_contiguous() {
        small.clone()
    } else {
        crate::cuda::tensor::contiguous(small)?
    };
    let s = alloc(g, a.dtype(), big.numel())?;
    g.bind()?;
    // SAFETY: big and s hold numel elements, small holds `inner` (its
    // non-1 dims are shape's trailing dims).
    unsafe {
        g.kernels.add_bcast(
            &g.stream,
            dt,
            ptr(&big)?,
            ptr(&small)?,
            s.ptr(),
            big.numel(),
            inner,
        )
    }
    .map_err(kerr("add"))?;
    Ok(Tensor::from_device_parts(s, Layout::contiguous(shape)))
}

/// max(x, 0); backward passes the gradient where the output is > 0.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    crate::trace::op("relu", "forward", "cuda:relu_fwd", &[x], || {
        let g = gpu_of(x)?;
        let dt = kdtype("relu", x.dtype())?;
        let xd = dense(x)?;
        let out = empty_like(&xd, x.dtype())?;
        g.bind()?;
        // SAFETY: xd and out are dense with numel elements.
        unsafe {
            g.kernels
                .relu_fwd(&g.stream, dt, ptr(&xd)?, ptr(&out)?, xd.numel())
        }
        .map_err(kerr("relu"))?;
        traced_sync(g)?;
        if !x.requires_grad() {
            return Ok(out);
        }
        // y > 0 exactly where x > 0 (NaN: both give a zero gradient), so
        // the output is what backward keeps.
        let y = out.detach();
        Ok(record(out, "relu", &[x], move |dy| {
            let dy = on_device(dy, y.device())?;
            let dx = crate::trace::op("relu_bwd", "backward", "cuda:relu_bwd", &[&dy], || {
                let g = gpu_of(&y)?;
                let dx = binary_same_shape("relu", Binary::ReluBwd, &y, &dy)?;
                traced_sync(g)?;
                Ok(dx)
            })?;
            Ok(vec![Some(dx)])
        }))
    })
}

/// x * s; backward scales the gradient by s.
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    crate::trace::op("scale", "forward", "cuda:scale", &[x], || {
        let out = scale_raw(x, s)?;
        Ok(record(out, "scale", &[x], move |g| {
            Ok(vec![Some(g.scale(s)?)])
        }))
    })
}

/// x * s with no autograd (f32 math, rounded once into x's dtype).
pub(crate) fn scale_raw(x: &Tensor, s: f64) -> Result<Tensor> {
    let g = gpu_of(x)?;
    let dt = kdtype("scale", x.dtype())?;
    let xd = dense(x)?;
    let out = empty_like(&xd, x.dtype())?;
    g.bind()?;
    // SAFETY: xd and out are dense with numel elements.
    unsafe {
        g.kernels
            .scale(&g.stream, dt, ptr(&xd)?, ptr(&out)?, s as f32, xd.numel())
    }
    .map_err(kerr("scale"))?;
    traced_sync(g)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_adds_broadcast_as_trailing_rows() {
        assert_eq!(trailing_broadcast(&[64], &[16, 64]), Some(64));
        assert_eq!(trailing_broadcast(&[1, 64], &[16, 64]), Some(64));
        assert_eq!(trailing_broadcast(&[4, 5], &[3, 4, 5]), Some(20));
        // a scalar-like operand repeats over everything
        assert_eq!(trailing_broadcast(&[1], &[3, 4]), Some(1));
        assert_eq!(trailing_broadcast(&[], &[3, 4]), Some(1));
        // a per-channel [C, 1, 1] operand is not a suffix broadcast
        assert_eq!(trailing_broadcast(&[8, 1, 1], &[2, 8, 4, 4]), None);
        assert_eq!(trailing_broadcast(&[16, 1], &[16, 64]), None);
        assert_eq!(trailing_broadcast(&[2, 16, 64], &[16, 64]), None);
    }
}
