//! Elementwise unary ops and ops with a scalar operand.

use super::par_chunks;
use crate::autograd::record;
use crate::{dispatch_float, Float, Result, Tensor};
use num_traits::Zero;

#[derive(Clone, Copy)]
enum UnOp {
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
    fn name(self) -> &'static str {
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
    #[inline(always)]
    fn apply<T: Float>(self, x: T) -> T {
        match self {
            UnOp::Relu => x.max(T::zero()),
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

fn map(op: UnOp, x: &Tensor) -> Result<Tensor> {
    dispatch_float!(op.name(), x.dtype(), T => {
        let xd = x.float_data::<T>()?;
        let mut out = vec![T::zero(); xd.len()];
        par_chunks(&mut out, |start, o| {
            for (i, v) in o.iter_mut().enumerate() {
                *v = op.apply(xd[start + i]);
            }
        });
        Ok(Tensor::from_compute(out, x.dims(), x.dtype()))
    })
}

fn unary(op: UnOp, x: &Tensor) -> Result<Tensor> {
    crate::trace::op(op.name(), "forward", "cpu:elementwise", &[x], || {
        let out = map(op, x)?;
        if !x.requires_grad() {
            return Ok(out);
        }
        let (xs, ys) = (x.detach(), out.detach());
        Ok(record(out, op.name(), &[x], move |g| {
            let gx = match op {
                UnOp::Relu => g.mul(&map(UnOp::Step, &xs)?)?,
                UnOp::Neg => g.neg()?,
                UnOp::Exp => g.mul(&ys)?,
                UnOp::Log => g.div(&xs)?,
                UnOp::Sqrt => g.div(&ys.scale(2.0)?)?,
                UnOp::Sigmoid => g.mul(&ys.mul(&ys.neg()?.add_scalar(1.0)?)?)?,
                UnOp::Tanh => g.mul(&ys.mul(&ys)?.neg()?.add_scalar(1.0)?)?,
                UnOp::Scale(s) => g.scale(s)?,
                UnOp::AddScalar(_) => g.clone(),
                UnOp::Powf(p) => g.mul(&xs.powf(p - 1.0)?.scale(p)?)?,
                UnOp::Step => g.zeros_like(),
            };
            Ok(vec![Some(gx)])
        }))
    })
}

impl Tensor {
    pub fn relu(&self) -> Result<Tensor> {
        if self.device() != crate::Device::Cpu {
            return crate::cuda::ops::elementwise::relu(self);
        }
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
        if self.device() != crate::Device::Cpu {
            return crate::cuda::ops::elementwise::scale(self, s);
        }
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
        map(UnOp::Step, self)
    }
}
