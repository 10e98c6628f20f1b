//! Indexing on the GPU (index.cu) over row-major copies: index_select moves
//! raw elements of any dtype, its backward adds with f32 atomics, and sort /
//! top-k run a bitonic sort per row. Outputs are row-major (a 4-D result
//! is not in the channels-last default layout; ops that need it copy).

use super::IndexOps;
use crate::backend::Cuda;
use crate::cuda::launch::{cast, kdtype, kerr, traced_sync};
use crate::cuda::tensor::{alloc, contiguous, gpu_of, ptr, storage_of};
use crate::layout::Layout;
use crate::{DType, Result, Tensor};
use kernels::device::{sort_padded_len, IndexDims};

/// `x` itself when row-major, else a row-major copy.
fn row_major(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() {
        Ok(x.clone())
    } else {
        contiguous(x)
    }
}

/// A new row-major GPU tensor on `x`'s GPU.
fn empty_row_major(x: &Tensor, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let s = alloc(gpu_of(x)?, dtype, shape.iter().product())?;
    Ok(Tensor::from_device_parts(s, Layout::contiguous(shape)))
}

fn index_dims(shape: &[usize], dim: usize, m: usize) -> IndexDims {
    IndexDims {
        outer: shape[..dim].iter().product(),
        size: shape[dim],
        inner: shape[dim + 1..].iter().product(),
        m,
    }
}

impl IndexOps for Cuda {
    fn index_select(&self, x: &Tensor, dim: usize, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_select";
        crate::trace::kernel("index_select");
        let g = gpu_of(x)?;
        let xd = row_major(x)?;
        let index = row_major(index)?;
        let d = index_dims(x.dims(), dim, index.numel());
        let mut shape = x.dims().to_vec();
        shape[dim] = d.m;
        let y = empty_row_major(x, &shape, x.dtype())?;
        g.bind()?;
        // SAFETY: xd row-major [outer, size, inner], index m i64 (dense), y
        // row-major [outer, m, inner]; elements of the dtype's size.
        unsafe {
            g.kernels.index_select(
                &g.stream,
                x.dtype().size_in_bytes(),
                ptr(&xd)?,
                ptr(&index)?,
                ptr(&y)?,
                &d,
            )
        }
        .map_err(kerr(OP))?;
        traced_sync(g)?;
        Ok(y)
    }

    /// Adds with f32 atomics: with repeated indices dx is NOT bitwise
    /// deterministic; it matches the CPU op to f32 rounding.
    fn index_select_backward(
        &self,
        dy: &Tensor,
        dim: usize,
        index: &Tensor,
        shape: &[usize],
    ) -> Result<Tensor> {
        const OP: &str = "index_select";
        crate::trace::kernel("index_add");
        let g = gpu_of(dy)?;
        let dtype = dy.dtype();
        let dt = kdtype(OP, dtype)?;
        let dyd = row_major(dy)?;
        let index = row_major(index)?;
        let d = index_dims(shape, dim, index.numel());
        let acc = empty_row_major(dy, shape, DType::F32)?;
        storage_of(&acc)?.block().memset(0)?;
        g.bind()?;
        // SAFETY: dyd row-major [outer, m, inner] of dt, index m i64, acc
        // f32 row-major [outer, size, inner], zeroed.
        unsafe {
            g.kernels
                .index_add(&g.stream, dt, ptr(&dyd)?, ptr(&index)?, ptr(&acc)?, &d)
        }
        .map_err(kerr(OP))?;
        let dx = if dtype == DType::F32 {
            acc
        } else {
            cast(&acc, dtype)?
        };
        traced_sync(g)?;
        Ok(dx)
    }

    fn topk(&self, x: &Tensor, k: usize, descending: bool) -> Result<(Tensor, Tensor)> {
        const OP: &str = "topk";
        crate::trace::kernel(if k == 1 { "top1" } else { "bitonic_sort" });
        let g = gpu_of(x)?;
        let dt = kdtype(OP, x.dtype())?;
        let n = x.dims()[x.rank() - 1];
        let rows = x.numel().checked_div(n).unwrap_or(0);
        let p2 = sort_padded_len(n).map_err(kerr(OP))?;
        let xd = row_major(x)?;
        let mut shape = x.dims().to_vec();
        *shape.last_mut().expect("rank >= 1") = k;
        let values = empty_row_major(x, &shape, x.dtype())?;
        let indices = empty_row_major(x, &shape, DType::I64)?;
        g.bind()?;
        let queued = if k == 1 {
            // SAFETY: xd row-major [rows, n] of dt; values [rows] of dt,
            // indices [rows] i64.
            unsafe {
                g.kernels.top1_rows(
                    &g.stream,
                    dt,
                    ptr(&xd)?,
                    ptr(&values)?,
                    ptr(&indices)?,
                    rows,
                    n,
                    descending,
                )
            }
        } else {
            // scratch: f32 keys and int32 positions (no tensor dtype: raw
            // blocks; freed once queued, as the allocator orders reuse)
            let keys = g.alloc(rows * p2 * 4)?;
            let pos = g.alloc(rows * p2 * 4)?;
            // SAFETY: xd row-major [rows, n] of dt; keys/pos rows*p2 4-byte
            // elements each; values [rows, k] of dt, indices [rows, k] i64;
            // k <= n (checked by the front-end).
            unsafe {
                g.kernels.sort_rows(
                    &g.stream,
                    dt,
                    ptr(&xd)?,
                    keys.ptr(),
                    pos.ptr(),
                    ptr(&values)?,
                    ptr(&indices)?,
                    rows,
                    n,
                    k,
                    descending,
                )
            }
        };
        queued.map_err(kerr(OP))?;
        traced_sync(g)?;
        Ok((values, indices))
    }
}
