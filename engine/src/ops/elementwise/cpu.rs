//! Elementwise ops on the CPU: parallel maps over row-major data, and
//! broadcasting binary ops by walking both operands' offsets.

use super::{BinOp, ElementwiseOps, UnOp};
use crate::backend::Cpu;
use crate::layout::Layout;
use crate::ops::{par_chunks, par_filled};
use crate::{dispatch_float, Float, Result, Tensor};
use num_traits::Zero;

/// ReLU as PyTorch's: NaN propagates, otherwise max(x, 0).
#[inline(always)]
pub(crate) fn relu<T: Float>(x: T) -> T {
    if x.is_nan() {
        x
    } else {
        x.max(T::zero())
    }
}

/// ReLU's input gradient from its output `y`, as torch's
/// threshold_backward: 0 where y <= 0, `dy` elsewhere (NaN included).
#[inline(always)]
pub(crate) fn relu_grad<T: Float>(y: T, dy: T) -> T {
    if y <= T::zero() {
        T::zero()
    } else {
        dy
    }
}

impl UnOp {
    #[inline(always)]
    fn apply<T: Float>(self, x: T) -> T {
        match self {
            // NaN propagates, as in PyTorch (max alone maps NaN to 0)
            UnOp::Relu => relu(x),
            UnOp::Neg => -x,
            UnOp::Exp => x.exp(),
            UnOp::Log => x.ln(),
            UnOp::Sqrt => x.sqrt(),
            UnOp::Sigmoid => T::one() / (T::one() + (-x).exp()),
            UnOp::Tanh => x.tanh(),
            UnOp::Scale(s) => x * T::from_f64(s),
            UnOp::AddScalar(s) => x + T::from_f64(s),
            UnOp::Powf(p) => x.powf(T::from_f64(p)),
            UnOp::Step => {
                if x > T::zero() {
                    T::one()
                } else {
                    T::zero()
                }
            }
        }
    }
}

impl BinOp {
    #[inline(always)]
    fn apply<T: Float>(self, a: T, b: T) -> T {
        match self {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
        }
    }
}

fn map(op: UnOp, x: &Tensor) -> Result<Tensor> {
    dispatch_float!(op.name(), x.dtype(), T => {
        let xd = x.float_data::<T>()?;
        let mut out = par_filled(xd.len(), T::zero());
        par_chunks(&mut out, |start, o| {
            for (i, v) in o.iter_mut().enumerate() {
                *v = op.apply(xd[start + i]);
            }
        });
        Ok(Tensor::from_compute(out, x.dims(), x.dtype()))
    })
}

fn binary(op: BinOp, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
    dispatch_float!(op.name(), a.dtype(), T => {
        let out = binary_forward::<T>(op, a, b, shape)?;
        Ok(Tensor::from_compute(out, shape, a.dtype()))
    })
}

/// Visits the storage offsets of `a` and `b` for every element of the
/// broadcast output, in row-major order.
fn broadcast_zip(la: &Layout, lb: &Layout, mut f: impl FnMut(usize, usize)) {
    let shape = &la.shape;
    let rank = shape.len();
    if la.numel() == 0 {
        return;
    }
    if rank == 0 {
        return f(la.offset, lb.offset);
    }
    let (inner, sa, sb) = (shape[rank - 1], la.strides[rank - 1], lb.strides[rank - 1]);
    let mut idx = vec![0usize; rank - 1];
    loop {
        let (mut oa, mut ob) = (la.offset, lb.offset);
        for (d, &i) in idx.iter().enumerate() {
            oa += i * la.strides[d];
            ob += i * lb.strides[d];
        }
        for j in 0..inner {
            f(oa + j * sa, ob + j * sb);
        }
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

fn binary_forward<T: Float>(op: BinOp, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Vec<T>> {
    let (ad, bd) = (a.float_data::<T>()?, b.float_data::<T>()?);
    let n: usize = shape.iter().product();
    let mut out = par_filled(n, T::zero());
    if a.dims() == b.dims() {
        par_chunks(&mut out, |start, o| {
            for (i, v) in o.iter_mut().enumerate() {
                *v = op.apply(ad[start + i], bd[start + i]);
            }
        });
    } else {
        let la = Layout::contiguous(a.dims()).broadcast_to(shape)?;
        let lb = Layout::contiguous(b.dims()).broadcast_to(shape)?;
        let mut k = 0;
        broadcast_zip(&la, &lb, |ia, ib| {
            out[k] = op.apply(ad[ia], bd[ib]);
            k += 1;
        });
    }
    Ok(out)
}

impl ElementwiseOps for Cpu {
    fn unary(&self, op: UnOp, x: &Tensor) -> Result<Tensor> {
        crate::trace::kernel("elementwise");
        map(op, x)
    }

    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        crate::trace::kernel("elementwise");
        dispatch_float!("relu_backward", y.dtype(), T => {
            let (yd, gd) = (y.float_data::<T>()?, dy.float_data::<T>()?);
            let mut out = par_filled(yd.len(), T::zero());
            par_chunks(&mut out, |start, o| {
                for (i, v) in o.iter_mut().enumerate() {
                    *v = relu_grad(yd[start + i], gd[start + i]);
                }
            });
            Ok(Tensor::from_compute(out, y.dims(), y.dtype()))
        })
    }

    fn binary(&self, op: BinOp, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
        crate::trace::kernel("elementwise");
        binary(op, a, b, shape)
    }
}
