//! Sum and mean over dims, and `sum_to` (the adjoint of broadcasting): the
//! checks, trace and autograd, over the [`ReduceOps`] primitives of the
//! backends (`cpu.rs`, `cuda.rs`).

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

use super::GradSpec;
use crate::autograd::record;
use crate::backend::{unsupported, BackendInfo};
use crate::{on_backend, Error, Result, Tensor};

/// The reduction primitives a backend implements.
pub trait ReduceOps: BackendInfo {
    /// The sum over `dims` (sorted, deduplicated, in range); reduced dims
    /// are kept with size 1 when `keepdim`.
    fn sum(&self, x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let _ = (x, dims, keepdim);
        Err(unsupported(self, "sum"))
    }
    /// The gradient of a sum: `dy` (reshaped to `keep`, the input's shape
    /// with the reduced dims 1) broadcast back to the `input` shape.
    fn sum_backward(&self, dy: &Tensor, keep: &[usize], input: &[usize]) -> Result<Tensor> {
        let _ = (dy, keep, input);
        Err(unsupported(self, "sum_backward"))
    }
}

/// The shape of a sum over `dims` of a `shape` tensor with the reduced dims
/// kept (size 1).
fn keep_shape(shape: &[usize], dims: &[usize]) -> Vec<usize> {
    (0..shape.len())
        .map(|i| if dims.contains(&i) { 1 } else { shape[i] })
        .collect()
}

fn check_dims(op: &'static str, x: &Tensor, dims: &[usize]) -> Result<Vec<usize>> {
    let mut d = dims.to_vec();
    d.sort_unstable();
    d.dedup();
    if let Some(&bad) = d.iter().find(|&&i| i >= x.rank()) {
        return Err(Error::shape(
            op,
            format!("dim {bad} out of range for shape {:?}", x.dims()),
        ));
    }
    Ok(d)
}

impl Tensor {
    /// Sum over `dims`; reduced dims are kept with size 1 when `keepdim`.
    pub fn sum_dims(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let dims = check_dims("sum", self, dims)?;
        on_backend!(self.device(), b => crate::trace::op("sum", "forward", b.name(), &[self], || {
            let out = b.sum(self, &dims, keepdim)?;
            let keep_shape = keep_shape(self.dims(), &dims);
            let in_shape = self.dims().to_vec();
            let spec = GradSpec::of(&out);
            Ok(record(out, "sum", &[self], move |g| {
                spec.check("sum", g)?;
                Ok(vec![Some(b.sum_backward(g, &keep_shape, &in_shape)?)])
            }))
        }))
    }

    /// Sum of all elements, as a 0-d tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        let all: Vec<usize> = (0..self.rank()).collect();
        self.sum_dims(&all, false)
    }

    pub fn mean_dims(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let dims = check_dims("mean", self, dims)?;
        let count: usize = dims.iter().map(|&d| self.dims()[d]).product();
        self.sum_dims(&dims, keepdim)?
            .scale(1.0 / count.max(1) as f64)
    }

    pub fn mean_all(&self) -> Result<Tensor> {
        let all: Vec<usize> = (0..self.rank()).collect();
        self.mean_dims(&all, false)
    }

    /// Sums broadcast dims away so the result has `shape` (which must
    /// broadcast to this tensor's shape).
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.dims() == shape {
            return Ok(self.clone());
        }
        let lead = self.rank().checked_sub(shape.len()).ok_or_else(|| {
            Error::shape(
                "sum_to",
                format!("cannot reduce {:?} to {:?}", self.dims(), shape),
            )
        })?;
        let mut dims: Vec<usize> = (0..lead).collect();
        for (i, &s) in shape.iter().enumerate() {
            let d = self.dims()[lead + i];
            if s == 1 && d != 1 {
                dims.push(lead + i);
            } else if s != d {
                return Err(Error::shape(
                    "sum_to",
                    format!("cannot reduce {:?} to {:?}", self.dims(), shape),
                ));
            }
        }
        self.sum_dims(&dims, true)?.reshape(shape)
    }
}
