//! Sums on the CPU over row-major data, bit-reproducible: partial sums are
//! combined in index order, never in scheduling order.

use super::{keep_shape, ReduceOps};
use crate::backend::Cpu;
use crate::layout::Layout;
use crate::{dispatch_float, Float, Result, Tensor};
use rayon::prelude::*;

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

impl ReduceOps for Cpu {
    fn sum(&self, x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        crate::trace::kernel("reduce");
        let keep_shape = keep_shape(x.dims(), dims);
        let out_shape: Vec<usize> = if keepdim {
            keep_shape.clone()
        } else {
            (0..x.rank())
                .filter(|i| !dims.contains(i))
                .map(|i| x.dims()[i])
                .collect()
        };
        dispatch_float!("sum", x.dtype(), T => {
            let out = sum_kernel::<T>(x, &keep_shape)?;
            Ok(Tensor::from_compute(out, &out_shape, x.dtype()))
        })
    }

    fn sum_backward(&self, dy: &Tensor, keep: &[usize], input: &[usize]) -> Result<Tensor> {
        dy.reshape(keep)?.expand(input)?.contiguous()
    }
}
