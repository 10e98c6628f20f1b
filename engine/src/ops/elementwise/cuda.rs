//! Elementwise ops on the GPU (elementwise.cu): every unary op (ReLU,
//! scaling, neg as scaling by -1, exp, log, sqrt, sigmoid, tanh, add_scalar,
//! powf, step), ReLU's backward, and add, sub, mul and div with any NumPy
//! broadcast.
//!
//! Same-shape binary ops on dense operands of one layout are read in their
//! physical order (an add of two channels-last tensors never copies);
//! anything else (a broadcast, operands of different layouts) runs the
//! strided kernel `binary_bcast`, which reads each operand through its own
//! strides into an output in the GPU default layout, also without copies.

use super::{BinOp, ElementwiseOps, UnOp};
use crate::backend::Cuda;
use crate::cuda::launch::{
    dense, empty_like, kdtype, kerr, same_gpu, traced_sync, with_strides_of,
};
use crate::cuda::runtime::Gpu;
use crate::cuda::tensor::{alloc, contiguous, empty, gpu_of, is_dense, ptr};
use crate::layout::Layout;
use crate::{Result, Tensor};
use kernels::device::{BcastView, Binary, DevPtr, Dtype, Unary};

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

/// Whether `a` and `b` can run the same-shape kernel: equal shapes, `a`
/// dense and `b` with a's strides (else the strided kernel reads them).
fn same_layout(a: &Tensor, b: &Tensor) -> bool {
    a.dims() == b.dims()
        && is_dense(a.layout())
        && is_dense(b.layout())
        && a.dims()
            .iter()
            .zip(a.strides().iter().zip(b.strides()))
            .all(|(&d, (x, y))| d == 1 || x == y)
}

/// `a (op) b` broadcast to `shape` (`name` is the op for errors): the
/// same-shape kernel, the bias add of a trailing-dims operand, or the
/// strided kernel.
fn binary(
    name: &'static str,
    op: Binary,
    a: &Tensor,
    b: &Tensor,
    shape: &[usize],
) -> Result<Tensor> {
    let g = same_gpu(name, &[a, b])?;
    let out = if same_layout(a, b) {
        binary_same_shape(name, op, a, b)?
    } else if op == Binary::Add && a.dims() != b.dims() {
        match bias_operands(a, b, shape) {
            Some((big, small, inner)) => add_bias(name, g, big, small, shape, inner)?,
            None => binary_strided(name, g, op, a, b, shape)?,
        }
    } else {
        binary_strided(name, g, op, a, b, shape)?
    };
    traced_sync(g)?;
    Ok(out)
}

/// (full-shape operand, trailing operand, row length) when one operand
/// broadcasts to `shape` as trailing dims over the other, row-major one
/// (the bias add of a linear layer).
fn bias_operands<'t>(
    a: &'t Tensor,
    b: &'t Tensor,
    shape: &[usize],
) -> Option<(&'t Tensor, &'t Tensor, usize)> {
    // addition commutes: put the full-shape operand first
    let (big, small) = if a.dims() == shape { (a, b) } else { (b, a) };
    (big.dims() == shape && big.is_contiguous())
        .then(|| trailing_broadcast(small.dims(), shape))
        .flatten()
        .map(|inner| (big, small, inner))
}

/// `a (op) b` through `binary_bcast`: each operand read through its own
/// (broadcast) strides, the output in the GPU default layout.
fn binary_strided(
    name: &'static str,
    g: &'static Gpu,
    op: Binary,
    a: &Tensor,
    b: &Tensor,
    shape: &[usize],
) -> Result<Tensor> {
    let dt = kdtype(name, a.dtype())?;
    let la = a.layout().broadcast_to(shape)?;
    let lb = b.layout().broadcast_to(shape)?;
    let out = empty(g, shape, a.dtype())?;
    // the output's dims outermost first (NHWC for 4-D), the operands'
    // strides permuted alike
    let order = physical_order(out.strides());
    let pick = |v: &[usize]| order.iter().map(|&d| v[d]).collect::<Vec<_>>();
    let view =
        BcastView::new(&pick(shape), &pick(&la.strides), &pick(&lb.strides)).map_err(kerr(name))?;
    g.bind()?;
    // SAFETY: ptr(a)/ptr(b) are the operands' first elements and their
    // broadcast strides address only elements of their layouts; out is a
    // fresh dense buffer of shape's numel elements.
    unsafe {
        g.kernels.binary_bcast(
            &g.stream,
            dt,
            op,
            ptr(a)?,
            ptr(b)?,
            ptr(&out)?,
            out.numel(),
            &view,
        )
    }
    .map_err(kerr(name))?;
    Ok(out)
}

/// Dims ordered outermost first by stride (stable: ties keep their order).
fn physical_order(strides: &[usize]) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..strides.len()).collect();
    perm.sort_by(|&x, &y| strides[y].cmp(&strides[x]));
    perm
}

/// `big + small` over row-major data, `small` repeating every `inner`
/// elements (`add_bcast`).
fn add_bias(
    name: &'static str,
    g: &'static Gpu,
    big: &Tensor,
    small: &Tensor,
    shape: &[usize],
    inner: usize,
) -> Result<Tensor> {
    let dt = kdtype(name, big.dtype())?;
    // row-major data (4-D GPU tensors are channels-last by default)
    let row_major = |t: &Tensor| {
        if t.is_contiguous() {
            Ok(t.clone())
        } else {
            contiguous(t)
        }
    };
    let (big, small) = (row_major(big)?, row_major(small)?);
    let s = alloc(g, big.dtype(), big.numel())?;
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

/// out = f(x) over x's dense elements through one kernel launch (`name`
/// for errors); the output keeps x's (dense) layout. `launch` gets the
/// dtype, the input and output pointers and the element count.
fn dense_map(
    name: &'static str,
    x: &Tensor,
    launch: impl FnOnce(&Gpu, Dtype, DevPtr, DevPtr, usize) -> kernels::Result<()>,
) -> Result<Tensor> {
    let g = gpu_of(x)?;
    let dt = kdtype(name, x.dtype())?;
    let xd = dense(x)?;
    let out = empty_like(&xd, x.dtype())?;
    g.bind()?;
    launch(g, dt, ptr(&xd)?, ptr(&out)?, xd.numel()).map_err(kerr(name))?;
    traced_sync(g)?;
    Ok(out)
}

/// max(x, 0) (NaN stays NaN).
fn relu(x: &Tensor) -> Result<Tensor> {
    // SAFETY: dense_map passes dense input and output of n elements.
    dense_map("relu", x, |g, dt, x, out, n| unsafe {
        g.kernels.relu_fwd(&g.stream, dt, x, out, n)
    })
}

/// x * s (f32 math, rounded once into x's dtype); `name` is the op for
/// errors.
fn scale(name: &'static str, x: &Tensor, s: f64) -> Result<Tensor> {
    // SAFETY: dense_map passes dense input and output of n elements.
    dense_map(name, x, |g, dt, x, out, n| unsafe {
        g.kernels.scale(&g.stream, dt, x, out, s as f32, n)
    })
}

/// f(x) for one of `unary_<t>`'s maps (f32 math, rounded once into x's
/// dtype).
fn map(name: &'static str, x: &Tensor, op: Unary) -> Result<Tensor> {
    // SAFETY: dense_map passes dense input and output of n elements.
    dense_map(name, x, |g, dt, x, out, n| unsafe {
        g.kernels.unary(&g.stream, dt, op, x, out, n)
    })
}

impl ElementwiseOps for Cuda {
    fn unary(&self, op: UnOp, x: &Tensor) -> Result<Tensor> {
        let name = op.name();
        let kernel = match op {
            UnOp::Relu => {
                crate::trace::kernel("relu_fwd");
                return relu(x);
            }
            UnOp::Scale(s) => {
                crate::trace::kernel("scale");
                return scale(name, x, s);
            }
            UnOp::Neg => {
                crate::trace::kernel("scale");
                return scale(name, x, -1.0);
            }
            UnOp::Exp => Unary::Exp,
            UnOp::Log => Unary::Log,
            UnOp::Sqrt => Unary::Sqrt,
            UnOp::Sigmoid => Unary::Sigmoid,
            UnOp::Tanh => Unary::Tanh,
            // the CPU rounds the scalar to the compute type (f32) too
            UnOp::AddScalar(s) => Unary::AddScalar(s as f32),
            UnOp::Powf(p) => Unary::Pow(p as f32),
            UnOp::Step => Unary::Step,
        };
        crate::trace::kernel("unary");
        map(name, x, kernel)
    }

    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        crate::trace::kernel("relu_bwd");
        // y > 0 exactly where x > 0 (NaN: both give a zero gradient)
        let dx = binary_same_shape("relu", Binary::ReluBwd, y, dy)?;
        traced_sync(gpu_of(y)?)?;
        Ok(dx)
    }

    fn binary(&self, op: BinOp, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let kernel = match op {
            BinOp::Add => Binary::Add,
            BinOp::Sub => Binary::Sub,
            BinOp::Mul => Binary::Mul,
            BinOp::Div => Binary::Div,
        };
        crate::trace::kernel(op.name());
        binary(op.name(), kernel, a, b, shape)
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

    #[test]
    fn physical_order_lists_dims_outermost_first() {
        // channels-last [N, C, H, W]: N, H, W, C
        let s = crate::layout::gpu_strides(&[2, 3, 4, 5]);
        assert_eq!(physical_order(&s), vec![0, 2, 3, 1]);
        assert_eq!(physical_order(&[20, 5, 1]), vec![0, 1, 2]);
        // size-1 dims (equal strides) keep their logical order
        assert_eq!(physical_order(&[3, 3, 1]), vec![0, 1, 2]);
    }
}
