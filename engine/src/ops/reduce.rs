//! Sum and mean over dims, and `sum_to` (the adjoint of broadcasting).

use crate::autograd::record;
use crate::layout::Layout;
use crate::{dispatch_float, Error, Float, Result, Tensor};
use rayon::prelude::*;

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

fn sum_kernel<T: Float>(x: &Tensor, keep_shape: &[usize]) -> Result<Vec<T>> {
    let xd = x.float_data::<T>()?;
    let n_out: usize = keep_shape.iter().product();
    if n_out == 1 {
        // Per-chunk partial sums keep f32 error small on big tensors; they are
        // combined in index order so the result never depends on scheduling
        // (runs must be bit-reproducible).
        let partials: Vec<T> = xd
            .par_chunks(1 << 14)
            .map(|c| c.iter().copied().sum::<T>())
            .collect();
        return Ok(vec![partials.into_iter().sum()]);
    }
    let mut out = vec![T::zero(); n_out];
    let out_layout = Layout::contiguous(keep_shape).broadcast_to(x.dims())?;
    let mut k = 0;
    out_layout.for_each_index(|o| {
        out[o] += xd[k];
        k += 1;
    });
    Ok(out)
}

impl Tensor {
    /// Sum over `dims`; reduced dims are kept with size 1 when `keepdim`.
    pub fn sum_dims(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        if self.device() != crate::Device::Cpu {
            return crate::cuda::ops::reduce::sum_dims(self, dims, keepdim);
        }
        crate::trace::op("sum", "forward", "cpu:reduce", &[self], || {
            let dims = check_dims("sum", self, dims)?;
            let keep_shape: Vec<usize> = (0..self.rank())
                .map(|i| if dims.contains(&i) { 1 } else { self.dims()[i] })
                .collect();
            let out_shape: Vec<usize> = if keepdim {
                keep_shape.clone()
            } else {
                (0..self.rank())
                    .filter(|i| !dims.contains(i))
                    .map(|i| self.dims()[i])
                    .collect()
            };
            let out = dispatch_float!("sum", self.dtype(), T => {
                Tensor::from_compute(sum_kernel::<T>(self, &keep_shape)?, &out_shape, self.dtype())
            });
            let in_shape = self.dims().to_vec();
            Ok(record(out, "sum", &[self], move |g| {
                Ok(vec![Some(
                    g.reshape(&keep_shape)?.expand(&in_shape)?.contiguous(),
                )])
            }))
        })
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
