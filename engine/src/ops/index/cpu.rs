//! Indexing on the CPU: index_select for every dtype, its backward (the
//! slices added in index order, deterministic), and sort / top-k (a stable
//! sort per row, parallel over rows).

use super::{out_of_range, sort_order, IndexOps};
use crate::backend::Cpu;
use crate::{dispatch_any, dispatch_float, Element, Result, Tensor};
use rayon::prelude::*;

/// `shape` seen as [outer, shape[dim], inner].
fn split(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    let outer = shape[..dim].iter().product();
    let inner = shape[dim + 1..].iter().product();
    (outer, shape[dim], inner)
}

/// The index values, each checked to lie in [0, size): the front-end
/// checks them too, but the primitive never reads or writes out of bounds
/// on its own word (an error, never a panic).
fn indices(op: &'static str, index: &Tensor, size: usize) -> Result<Vec<usize>> {
    let v = index.data::<i64>()?;
    if let Some(e) = out_of_range(op, &v, size) {
        return Err(e);
    }
    Ok(v.iter().map(|&i| i as usize).collect())
}

impl IndexOps for Cpu {
    fn index_select(&self, x: &Tensor, dim: usize, index: &Tensor) -> Result<Tensor> {
        crate::trace::kernel("index_select");
        let (outer, size, inner) = split(x.dims(), dim);
        let idx = indices("index_select", index, size)?;
        let mut shape = x.dims().to_vec();
        shape[dim] = idx.len();
        dispatch_any!(x.dtype(), T => {
            let src = x.data::<T>()?;
            let mut out = Vec::with_capacity(outer * idx.len() * inner);
            for o in 0..outer {
                for &i in &idx {
                    out.extend_from_slice(&src[(o * size + i) * inner..][..inner]);
                }
            }
            Tensor::from_storage(<T as Element>::into_storage(out), &shape)
        })
    }

    fn index_select_backward(
        &self,
        dy: &Tensor,
        dim: usize,
        index: &Tensor,
        shape: &[usize],
    ) -> Result<Tensor> {
        crate::trace::kernel("index_add");
        let (outer, size, inner) = split(shape, dim);
        let idx = indices("index_select_backward", index, size)?;
        let dtype = dy.dtype();
        Ok(dispatch_float!("index_select", dtype, T => {
            let g = dy.float_data::<T>()?;
            let mut dx = vec![<T as Element>::from_f64(0.0); outer * size * inner];
            for o in 0..outer {
                for (j, &i) in idx.iter().enumerate() {
                    let src = &g[(o * idx.len() + j) * inner..][..inner];
                    let dst = &mut dx[(o * size + i) * inner..][..inner];
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d += s;
                    }
                }
            }
            Tensor::from_compute(dx, shape, dtype)
        }))
    }

    fn topk(&self, x: &Tensor, k: usize, descending: bool) -> Result<(Tensor, Tensor)> {
        crate::trace::kernel("sort");
        let n = x.dims()[x.rank() - 1];
        let mut shape = x.dims().to_vec();
        *shape.last_mut().expect("rank >= 1") = k;
        let rows = x.numel().checked_div(n).unwrap_or(0);
        let mut idx = vec![0i64; rows * k];
        let values = dispatch_float!("topk", x.dtype(), T => {
            let v = x.float_data::<T>()?;
            if k > 0 {
                idx.par_chunks_mut(k).zip(v.par_chunks(n)).for_each(|(o, row)| {
                    for (d, i) in o.iter_mut().zip(sort_order(row, descending)) {
                        *d = i as i64;
                    }
                });
            }
            let picked: Vec<T> = idx
                .chunks(k.max(1))
                .zip(v.chunks(n.max(1)))
                .flat_map(|(o, row)| o.iter().map(|&i| row[i as usize]))
                .collect();
            Tensor::from_compute(picked, &shape, x.dtype())
        });
        Ok((values, Tensor::from_vec(idx, &shape)?))
    }
}
