//! Matrix products and `linear` (x W^T + b, PyTorch's layout): the checks,
//! trace and autograd of each op, written once over the [`MatmulOps`]
//! primitives of the backends (`cpu.rs`: the `gemm` crate; `cuda.rs`:
//! cuBLASLt).

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

pub use cpu::{gemm, gemm_strided, MatRef};

use super::{expect_rank, same_dtype, GradSpec};
use crate::autograd::record;
use crate::backend::{same_device, unsupported, BackendInfo};
use crate::{on_backend, Error, Result, Tensor};

/// The matrix-product primitives a backend implements. Outputs have the
/// backend's default layout.
pub trait MatmulOps: BackendInfo {
    /// `a @ b` for a [..B, m, k] and b [..B, k, n] (equal batch dims, one
    /// dtype) as a tensor of `shape` (B*m*n elements).
    fn matmul(&self, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let _ = (a, b, shape);
        Err(unsupported(self, "matmul"))
    }
    /// `x @ w^T + b` for x [rows, k], w [n, k] and bias `b` [n], as a
    /// tensor of shape `out` (rows*n elements).
    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, out: &[usize]) -> Result<Tensor> {
        let _ = (x, w, b, out);
        Err(unsupported(self, "linear"))
    }
    /// The bias gradient of `linear`: the column sums [n] of dy [rows, n].
    fn linear_bias_backward(&self, dy: &Tensor) -> Result<Tensor> {
        let _ = dy;
        Err(unsupported(self, "linear_bias_backward"))
    }
}

/// The last two dims swapped (a view).
fn t(x: &Tensor) -> Result<Tensor> {
    x.transpose(x.rank() - 2, x.rank() - 1)
}

impl Tensor {
    /// [m,k]@[k,n] or batched [B,m,k]@[B,k,n]; a 2-D right operand is shared
    /// by every batch entry, and [..., k] inputs with more leading dims are
    /// flattened into the batch.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        let dev = same_device(OP, &[self, rhs])?;
        on_backend!(dev, be => crate::trace::op(OP, "forward", be.name(), &[self, rhs], || {
            same_dtype(OP, &[self, rhs])?;
            let (ra, rb) = (self.rank(), rhs.rank());
            if ra < 2 || rb < 2 {
                return Err(Error::shape(
                    OP,
                    format!(
                        "operands need >= 2 dims, got {:?} and {:?}",
                        self.dims(),
                        rhs.dims()
                    ),
                ));
            }
            let (m, k) = (self.dims()[ra - 2], self.dims()[ra - 1]);
            let (k2, n) = (rhs.dims()[rb - 2], rhs.dims()[rb - 1]);
            if k != k2 {
                return Err(Error::shape(
                    OP,
                    format!("inner dims differ: {:?} @ {:?}", self.dims(), rhs.dims()),
                ));
            }
            let lead = &self.dims()[..ra - 2];
            // [.., m, k] @ [k, n]: the batch folds into m (one big GEMM)
            let fold = rb == 2 && ra > 2;
            if !fold && lead != &rhs.dims()[..rb - 2] {
                return Err(Error::shape(
                    OP,
                    format!("batch dims differ: {:?} @ {:?}", self.dims(), rhs.dims()),
                ));
            }
            let mut shape = lead.to_vec();
            shape.extend([m, n]);
            let a = if fold {
                self.detach().reshape(&[lead.iter().product::<usize>() * m, k])?
            } else {
                self.detach()
            };
            let b = rhs.detach();
            let y = be.matmul(&a, &b, &shape)?;
            let (need_a, need_b) = (self.requires_grad(), rhs.requires_grad());
            let (a_shape, b_shape) = (self.dims().to_vec(), rhs.dims().to_vec());
            let spec = GradSpec::of(&y);
            Ok(record(y, OP, &[self, rhs], move |g| {
                spec.check(OP, g)?;
                let g = if fold { g.reshape(&[a.dims()[0], n])? } else { g.clone() };
                let ga = need_a.then(|| be.matmul(&g, &t(&b)?, &a_shape)).transpose()?;
                let gb = need_b.then(|| be.matmul(&t(&a)?, &g, &b_shape)).transpose()?;
                Ok(vec![ga, gb])
            }))
        }))
    }

    /// `x @ weight^T + bias` with weight [out, in] (PyTorch's nn.Linear):
    /// x [..., in] -> [..., out]. Autograd inputs: x, weight, then bias.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "linear";
        expect_rank(OP, "weight", weight, 2)?;
        if let Some(b) = bias {
            expect_rank(OP, "bias", b, 1)?;
        }
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        let dev = same_device(OP, &inputs)?;
        same_dtype(OP, &inputs)?;
        let rx = self.rank();
        if rx < 2 {
            return Err(Error::shape(
                OP,
                format!("input needs >= 2 dims, got {:?}", self.dims()),
            ));
        }
        let (n, k) = (weight.dims()[0], weight.dims()[1]);
        if self.dims()[rx - 1] != k {
            return Err(Error::shape(
                OP,
                format!(
                    "inner dims differ: input {:?} @ weight^T (weight {:?})",
                    self.dims(),
                    weight.dims()
                ),
            ));
        }
        if let Some(b) = bias.filter(|b| b.dims()[0] != n) {
            if b.dims()[0] == 1 {
                // a one-element bias broadcasts
                return self.linear(weight, None)?.add(b);
            }
            return Err(Error::shape(
                OP,
                format!("bias {:?} does not match {n} output features", b.dims()),
            ));
        }
        let rows: usize = self.dims()[..rx - 1].iter().product();
        let mut shape = self.dims()[..rx - 1].to_vec();
        shape.push(n);
        on_backend!(dev, be => crate::trace::op(OP, "forward", be.name(), &inputs, || {
            let x2 = self.detach().reshape(&[rows, k])?;
            let w = weight.detach();
            let y = be.linear(&x2, &w, bias.map(Tensor::detach).as_ref(), &shape)?;
            let x_shape = self.dims().to_vec();
            let (need_x, need_w) = (self.requires_grad(), weight.requires_grad());
            let need_b = bias.map(Tensor::requires_grad);
            let spec = GradSpec::of(&y);
            Ok(record(y, OP, &inputs, move |g| {
                spec.check(OP, g)?;
                let dy = g.reshape(&[rows, n])?;
                let dx = need_x.then(|| be.matmul(&dy, &w, &x_shape)).transpose()?;
                let dw = need_w.then(|| be.matmul(&t(&dy)?, &x2, &[n, k])).transpose()?;
                let mut grads = vec![dx, dw];
                if let Some(need_b) = need_b {
                    grads.push(need_b.then(|| be.linear_bias_backward(&dy)).transpose()?);
                }
                Ok(grads)
            }))
        }))
    }
}
