//! Elementwise ops on the GPU (elementwise.cu): add (same shape, or a
//! trailing-dims operand broadcast over rows: the bias add), sub (add of
//! the negation), ReLU and its backward, and scaling by a scalar (neg is
//! scaling by -1, exact in every dtype).
//!
//! Dense operands are read in their physical order, so an add of two
//! channels-last tensors never copies; operands whose layouts differ are
//! first copied to the GPU default layout.

use super::{BinOp, ElementwiseOps, UnOp};
use crate::backend::{unsupported, Cuda};
use crate::cuda::launch::{
    dense, empty_like, kdtype, kerr, same_gpu, traced_sync, with_strides_of,
};
use crate::cuda::runtime::Gpu;
use crate::cuda::tensor::{alloc, contiguous, gpu_of, ptr};
use crate::layout::Layout;
use crate::{Error, Result, Tensor};
use kernels::device::Binary;

/// out = a (op) b for same-shape operands; the output takes a's (dense)
/// strides.
fn binary_same_shape(name: &'static str, op: Binary, a: &Tensor, b: &Tensor) -> Result<Tensor> {
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
fn trailing_broadcast(small: &[usize], shape: &[usize]) -> Option<usize> {
    let first = small.iter().position(|&d| d != 1).unwrap_or(small.len());
    let suffix = &small[first..];
    if suffix.len() > shape.len() || small.len() > shape.len() {
        return None;
    }
    (shape[shape.len() - suffix.len()..] == *suffix).then(|| suffix.iter().product())
}

/// `a + b` broadcast to `shape`: equal shapes, or one operand broadcast as
/// trailing dims (`name` is the op for errors).
fn add(name: &'static str, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let g = same_gpu(name, &[a, b])?;
    let out = if a.dims() == b.dims() {
        binary_same_shape(name, Binary::Add, a, b)?
    } else {
        add_broadcast(name, g, a, b, shape)?
    };
    traced_sync(g)?;
    Ok(out)
}

fn add_broadcast(
    name: &'static str,
    g: &'static Gpu,
    a: &Tensor,
    b: &Tensor,
    shape: &[usize],
) -> Result<Tensor> {
    // addition commutes: put the full-shape operand first
    let (big, small) = if a.dims() == shape { (a, b) } else { (b, a) };
    let inner = (big.dims() == shape)
        .then(|| trailing_broadcast(small.dims(), shape))
        .flatten()
        .ok_or_else(|| {
            Error::shape(
                name,
                format!(
                    "on the GPU, {name} broadcasts only an operand of trailing dims (a bias) \
                     over the other; got {:?} and {:?} ({})",
                    a.dims(),
                    b.dims(),
                    a.dtype()
                ),
            )
        })?;
    let dt = kdtype(name, a.dtype())?;
    // row-major data (4-D GPU tensors are channels-last by default)
    let row_major = |t: &Tensor| {
        if t.is_contiguous() {
            Ok(t.clone())
        } else {
            contiguous(t)
        }
    };
    let (big, small) = (row_major(big)?, row_major(small)?);
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
    .map_err(kerr(name))?;
    Ok(Tensor::from_device_parts(s, Layout::contiguous(shape)))
}

/// max(x, 0).
fn relu(x: &Tensor) -> Result<Tensor> {
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
    Ok(out)
}

/// x * s (f32 math, rounded once into x's dtype); `name` is the op for
/// errors.
fn scale(name: &'static str, x: &Tensor, s: f64) -> Result<Tensor> {
    let g = gpu_of(x)?;
    let dt = kdtype(name, x.dtype())?;
    let xd = dense(x)?;
    let out = empty_like(&xd, x.dtype())?;
    g.bind()?;
    // SAFETY: xd and out are dense with numel elements.
    unsafe {
        g.kernels
            .scale(&g.stream, dt, ptr(&xd)?, ptr(&out)?, s as f32, xd.numel())
    }
    .map_err(kerr(name))?;
    traced_sync(g)?;
    Ok(out)
}

impl ElementwiseOps for Cuda {
    fn unary(&self, op: UnOp, x: &Tensor) -> Result<Tensor> {
        match op {
            UnOp::Relu => {
                crate::trace::kernel("relu_fwd");
                relu(x)
            }
            UnOp::Scale(s) => {
                crate::trace::kernel("scale");
                scale("scale", x, s)
            }
            UnOp::Neg => {
                crate::trace::kernel("scale");
                scale("neg", x, -1.0)
            }
            other => Err(unsupported(self, other.name())),
        }
    }

    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        crate::trace::kernel("relu_bwd");
        // y > 0 exactly where x > 0 (NaN: both give a zero gradient)
        let dx = binary_same_shape("relu", Binary::ReluBwd, y, dy)?;
        traced_sync(gpu_of(y)?)?;
        Ok(dx)
    }

    fn binary(&self, op: BinOp, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
        match op {
            BinOp::Add => {
                crate::trace::kernel("add");
                add("add", a, b, shape)
            }
            BinOp::Sub => {
                // -b is exact, so a + (-b) rounds once, like a - b
                crate::trace::kernel("scale+add");
                add("sub", a, &scale("sub", b, -1.0)?, shape)
            }
            BinOp::Mul | BinOp::Div => Err(unsupported(self, op.name())),
        }
    }
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
