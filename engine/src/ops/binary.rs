//! Elementwise binary ops with NumPy broadcasting.

use super::{par_chunks, same_dtype};
use crate::autograd::record;
use crate::layout::{broadcast_shapes, Layout};
use crate::{dispatch_float, Float, Result, Tensor};

#[derive(Clone, Copy)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    fn name(self) -> &'static str {
        match self {
            BinOp::Add => "add",
            BinOp::Sub => "sub",
            BinOp::Mul => "mul",
            BinOp::Div => "div",
        }
    }
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
    let mut out = vec![T::zero(); n];
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

fn binary(op: BinOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    crate::trace::op(op.name(), "forward", "cpu:elementwise", &[a, b], || {
        same_dtype(op.name(), &[a, b])?;
        let shape = broadcast_shapes(op.name(), a.dims(), b.dims())?;
        let out = dispatch_float!(op.name(), a.dtype(), T => {
            Tensor::from_compute(binary_forward::<T>(op, a, b, &shape)?, &shape, a.dtype())
        });
        let (sa, sb) = (a.dims().to_vec(), b.dims().to_vec());
        let (need_a, need_b) = (a.requires_grad(), b.requires_grad());
        // Only mul/div need the operands in backward; add/sub save nothing.
        let saved = matches!(op, BinOp::Mul | BinOp::Div).then(|| (a.detach(), b.detach()));
        Ok(record(out, op.name(), &[a, b], move |g| {
            let (ga, gb) = match (op, saved) {
                (BinOp::Add, _) => (Some(g.clone()), Some(g.clone())),
                (BinOp::Sub, _) => (Some(g.clone()), Some(g.neg()?)),
                (BinOp::Mul, Some((a, b))) => (
                    need_a.then(|| g.mul(&b)).transpose()?,
                    need_b.then(|| g.mul(&a)).transpose()?,
                ),
                (BinOp::Div, Some((a, b))) => (
                    need_a.then(|| g.div(&b)).transpose()?,
                    need_b
                        .then(|| g.mul(&a)?.div(&b.mul(&b)?)?.neg())
                        .transpose()?,
                ),
                _ => unreachable!("mul/div always save their operands"),
            };
            let ga = match ga.filter(|_| need_a) {
                Some(x) => Some(x.sum_to(&sa)?),
                None => None,
            };
            let gb = match gb.filter(|_| need_b) {
                Some(x) => Some(x.sum_to(&sb)?),
                None => None,
            };
            Ok(vec![ga, gb])
        }))
    })
}

impl Tensor {
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        if self.device() != crate::Device::Cpu {
            return crate::cuda::ops::elementwise::add(self, other);
        }
        binary(BinOp::Add, self, other)
    }
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        binary(BinOp::Sub, self, other)
    }
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        binary(BinOp::Mul, self, other)
    }
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        binary(BinOp::Div, self, other)
    }
}
