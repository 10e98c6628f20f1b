//! Elementwise ops: unary maps, ops with a scalar operand, and binary ops
//! with NumPy broadcasting. The checks, trace and autograd of each op, over
//! the [`ElementwiseOps`] primitives of the backends (`cpu.rs`, `cuda.rs`).

pub(super) mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

use super::{same_dtype, GradSpec};
use crate::autograd::record;
use crate::backend::{same_device, unsupported, BackendInfo};
use crate::layout::broadcast_shapes;
use crate::{on_backend, Result, Tensor};

/// A unary elementwise op.
#[derive(Clone, Copy, Debug)]
pub enum UnOp {
    Relu,
    Neg,
    Exp,
    Log,
    Sqrt,
    Sigmoid,
    Tanh,
    Scale(f64),
    AddScalar(f64),
    Powf(f64),
    /// 1 where x > 0, else 0: ReLU's derivative (0 at the kink, as PyTorch).
    Step,
}

impl UnOp {
    pub fn name(self) -> &'static str {
        match self {
            UnOp::Relu => "relu",
            UnOp::Neg => "neg",
            UnOp::Exp => "exp",
            UnOp::Log => "log",
            UnOp::Sqrt => "sqrt",
            UnOp::Sigmoid => "sigmoid",
            UnOp::Tanh => "tanh",
            UnOp::Scale(_) => "scale",
            UnOp::AddScalar(_) => "add_scalar",
            UnOp::Powf(_) => "powf",
            UnOp::Step => "step",
        }
    }
}

/// A binary elementwise op.
#[derive(Clone, Copy, Debug)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    pub fn name(self) -> &'static str {
        match self {
            BinOp::Add => "add",
            BinOp::Sub => "sub",
            BinOp::Mul => "mul",
            BinOp::Div => "div",
        }
    }
}

/// The elementwise primitives a backend implements.
pub trait ElementwiseOps: BackendInfo {
    /// `op` applied to every element of `x`.
    fn unary(&self, op: UnOp, x: &Tensor) -> Result<Tensor> {
        let _ = x;
        Err(unsupported(self, op.name()))
    }
    /// ReLU's input gradient from its output `y`, as torch's threshold_backward:
    /// 0 where y <= 0, `dy` elsewhere (where y is NaN too).
    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let _ = (y, dy);
        Err(unsupported(self, "relu_backward"))
    }
    /// `a (op) b` broadcast to `shape` (one dtype, checked shapes).
    fn binary(&self, op: BinOp, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let _ = (a, b, shape);
        Err(unsupported(self, op.name()))
    }
}

fn unary(op: UnOp, x: &Tensor) -> Result<Tensor> {
    on_backend!(x.device(), b => crate::trace::op(op.name(), "forward", b.name(), &[x], || {
        let y = b.unary(op, x)?;
        if !x.requires_grad() {
            return Ok(y);
        }
        // what backward reads: the input of log and powf, else the output
        let kept = match op {
            UnOp::Log | UnOp::Powf(_) => Some(x.detach()),
            UnOp::Relu | UnOp::Exp | UnOp::Sqrt | UnOp::Sigmoid | UnOp::Tanh => Some(y.detach()),
            UnOp::Neg | UnOp::Scale(_) | UnOp::AddScalar(_) | UnOp::Step => None,
        };
        let spec = GradSpec::of(&y);
        Ok(record(y, op.name(), &[x], move |g| {
            spec.check(op.name(), g)?;
            let gx = match (op, &kept) {
                (UnOp::Relu, Some(y)) => b.relu_backward(y, g)?,
                (UnOp::Exp, Some(y)) => g.mul(y)?,
                (UnOp::Log, Some(x)) => g.div(x)?,
                (UnOp::Sqrt, Some(y)) => g.div(&y.scale(2.0)?)?,
                (UnOp::Sigmoid, Some(y)) => g.mul(&y.mul(&y.neg()?.add_scalar(1.0)?)?)?,
                (UnOp::Tanh, Some(y)) => g.mul(&y.mul(y)?.neg()?.add_scalar(1.0)?)?,
                (UnOp::Powf(p), Some(x)) => g.mul(&x.powf(p - 1.0)?.scale(p)?)?,
                (UnOp::Neg, _) => g.neg()?,
                (UnOp::Scale(s), _) => g.scale(s)?,
                (UnOp::AddScalar(_), _) => g.clone(),
                (UnOp::Step, _) => g.zeros_like(),
                _ => unreachable!("the ops that read a saved tensor keep it"),
            };
            Ok(vec![Some(gx)])
        }))
    }))
}

fn binary(op: BinOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dev = same_device(op.name(), &[a, b])?;
    on_backend!(dev, be => crate::trace::op(op.name(), "forward", be.name(), &[a, b], || {
        same_dtype(op.name(), &[a, b])?;
        let shape = broadcast_shapes(op.name(), a.dims(), b.dims())?;
        let out = be.binary(op, a, b, &shape)?;
        let (sa, sb) = (a.dims().to_vec(), b.dims().to_vec());
        let (need_a, need_b) = (a.requires_grad(), b.requires_grad());
        // Only mul/div need the operands in backward; add/sub save nothing.
        let saved = matches!(op, BinOp::Mul | BinOp::Div).then(|| (a.detach(), b.detach()));
        let spec = GradSpec::of(&out);
        Ok(record(out, op.name(), &[a, b], move |g| {
            spec.check(op.name(), g)?;
            let (ga, gb) = match (op, saved) {
                (BinOp::Add, _) => (Some(g.clone()), Some(g.clone())),
                (BinOp::Sub, _) => (Some(g.clone()), need_b.then(|| g.neg()).transpose()?),
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
    }))
}

impl Tensor {
    pub fn relu(&self) -> Result<Tensor> {
        unary(UnOp::Relu, self)
    }
    pub fn neg(&self) -> Result<Tensor> {
        unary(UnOp::Neg, self)
    }
    pub fn exp(&self) -> Result<Tensor> {
        unary(UnOp::Exp, self)
    }
    pub fn log(&self) -> Result<Tensor> {
        unary(UnOp::Log, self)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        unary(UnOp::Sqrt, self)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        unary(UnOp::Sigmoid, self)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        unary(UnOp::Tanh, self)
    }
    /// `x * s` for a scalar s.
    pub fn scale(&self, s: f64) -> Result<Tensor> {
        unary(UnOp::Scale(s), self)
    }
    pub fn add_scalar(&self, s: f64) -> Result<Tensor> {
        unary(UnOp::AddScalar(s), self)
    }
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        unary(UnOp::Powf(p), self)
    }
    /// 1.0 where x > 0, else 0.0 (no gradient).
    pub fn gt_zero_mask(&self) -> Result<Tensor> {
        on_backend!(self.device(), b => b.unary(UnOp::Step, self))
    }

    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
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
