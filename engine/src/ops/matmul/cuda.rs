//! `matmul` and `linear` on the GPU (cuBLASLt, see cuda::blas): batched
//! products, `linear`'s bias added by cuBLASLt's BIAS epilogue, and its
//! bias gradient as ones^T dy (column sums as a GEMM, exact in its f32
//! accumulator).
//!
//! Transposed views (`w.t()`, the last two dims permuted) are read in
//! place through a transpose flag; other layouts (e.g. channels-last 4-D)
//! are copied row-major first. Outputs get the GPU default layout.

use super::{t, MatmulOps};
use crate::backend::Cuda;
use crate::cuda::blas::{self, Activation, GemmParams, Matrix};
use crate::cuda::launch::{kdtype, traced_sync};
use crate::cuda::runtime::Gpu;
use crate::cuda::tensor::{alloc, contiguous, empty, gpu_of, ptr, to_default_layout, zeros};
use crate::layout::Layout;
use crate::{DType, Error, Result, Tensor};
use std::sync::Mutex;

/// `x` as cuBLASLt reads it (a transpose flag for transposed views) and
/// its batch count, or a row-major copy when its layout cannot be read in
/// place; the returned tensor keeps the buffer alive.
fn operand(x: &Tensor) -> Result<(Tensor, Matrix, usize)> {
    if let Some((m, batch)) = Matrix::from_strides(ptr(x)?, x.dims(), x.strides()) {
        return Ok((x.clone(), m, batch));
    }
    let c = contiguous(x)?;
    let (m, batch) = Matrix::from_strides(ptr(&c)?, c.dims(), c.strides()).ok_or_else(|| {
        Error::arg(
            "matmul",
            format!("row-major copy of {:?} is not a readable matrix", x.dims()),
        )
    })?;
    Ok((c, m, batch))
}

/// A contiguous bias cuBLASLt can read (16-byte aligned, unit stride).
fn bias_operand(b: &Tensor) -> Result<Tensor> {
    if b.is_contiguous() && ptr(b)? % 16 == 0 {
        Ok(b.clone())
    } else {
        contiguous(b)
    }
}

/// A GPU tensor of `len` ones of `dtype` (a view of a cached buffer that
/// grows by powers of two: column sums run as GEMMs against it).
fn ones(g: &'static Gpu, dtype: DType, len: usize) -> Result<Tensor> {
    static ONES: Mutex<Vec<(usize, DType, Tensor)>> = Mutex::new(Vec::new());
    let mut all = ONES.lock().unwrap();
    let at = all
        .iter()
        .position(|(o, d, _)| *o == g.ordinal && *d == dtype);
    if let Some(i) = at {
        if all[i].2.numel() >= len {
            return all[i].2.narrow(0, 0, len);
        }
        all.swap_remove(i);
    }
    let cap = len.next_power_of_two().max(1024);
    let buf = Tensor::ones(&[cap], dtype).to_device(g.device())?;
    let view = buf.narrow(0, 0, len)?;
    all.push((g.ordinal, dtype, buf));
    Ok(view)
}

/// `a @ b (+ bias)`: a [..B, m, k], b [..B, k, n] (same batch dims, or
/// both 2-D) -> [..B, m, n] in the default layout. `bias` ([n]) is only
/// taken for 2-D products; `op` names the errors.
fn product(op: &'static str, a: &Tensor, b: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dtype = a.dtype();
    kdtype(op, dtype)?;
    let g = gpu_of(a)?;
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k, n) = (a.dims()[ra - 2], a.dims()[ra - 1], b.dims()[rb - 1]);
    if b.dims()[rb - 2] != k || a.dims()[..ra - 2] != b.dims()[..rb - 2] {
        return Err(Error::shape(
            op,
            format!("cannot multiply {:?} by {:?}", a.dims(), b.dims()),
        ));
    }
    if bias.is_some() && ra != 2 {
        return Err(Error::shape(op, "a fused bias needs a 2-D product"));
    }
    let mut shape = a.dims()[..ra - 2].to_vec();
    shape.extend([m, n]);
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return empty(g, &shape, dtype);
    }
    if k == 0 {
        // An empty sum: zeros, plus the bias broadcast down the rows
        // (ones[m,1] @ bias[1,n]).
        return match bias {
            None => zeros(g, &shape, dtype),
            Some(bias) => {
                let col = ones(g, dtype, m)?.reshape(&[m, 1])?;
                let row = bias_operand(bias)?.reshape(&[1, n])?;
                product(op, &col, &row, None)
            }
        };
    }
    let (a_keep, am, batch_a) = operand(a)?;
    let (b_keep, bm, batch_b) = operand(b)?;
    let batch = numel / (m * n);
    if batch_a != batch || batch_b != batch {
        return Err(Error::shape(
            op,
            format!("batch counts differ: {:?} by {:?}", a.dims(), b.dims()),
        ));
    }
    let bias_keep = bias.map(bias_operand).transpose()?;
    let bias_ptr = bias_keep.as_ref().map(ptr).transpose()?;
    let out_buf = alloc(g, dtype, numel)?;
    let params = GemmParams {
        dtype,
        a: am,
        b: bm,
        d: Matrix::row_major(out_buf.ptr(), m, n),
        batch,
        alpha: 1.0,
        beta: 0.0,
        bias: bias_ptr,
        act: Activation::None,
    };
    let out = Tensor::from_device_parts(out_buf, Layout::contiguous(&shape));
    // SAFETY: a_keep, b_keep, bias_keep and out hold every element their
    // matrices describe, on g; they live until the GEMM is queued.
    let algo = unsafe { blas::gemm(g, &params)? };
    crate::trace::kernel(algo);
    traced_sync(g)?;
    // the operands (maybe copies) may be released now: the allocator only
    // reuses their blocks for work queued after this GEMM
    drop((a_keep, b_keep, bias_keep));
    to_default_layout(&out)
}

impl MatmulOps for Cuda {
    fn matmul(&self, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
        to_default_layout(&product("matmul", a, b, None)?.reshape(shape)?)
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, out: &[usize]) -> Result<Tensor> {
        to_default_layout(&product("linear", x, &t(w)?, b)?.reshape(out)?)
    }

    fn linear_bias_backward(&self, dy: &Tensor) -> Result<Tensor> {
        // column sums as a GEMM: ones[1, rows] @ dy
        let rows = dy.dims()[0];
        let ones_row = ones(gpu_of(dy)?, dy.dtype(), rows)?.reshape(&[1, rows])?;
        product("linear", &ones_row, dy, None)?.reshape(&[dy.dims()[1]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The checks that run before any GPU work, so no GPU is needed.

    #[test]
    fn dtypes_cublaslt_cannot_take_are_refused_first() {
        let a = Tensor::zeros(&[2, 3], DType::F64);
        let b = Tensor::zeros(&[3, 4], DType::F64);
        let e = Cuda.matmul(&a, &b, &[2, 4]).unwrap_err().to_string();
        assert!(e.contains("f32, f16 or bf16 on the GPU"), "{e}");
    }

    #[test]
    fn host_tensors_get_a_clear_error_not_a_panic() {
        let a = Tensor::zeros(&[2, 3], DType::F32);
        let b = Tensor::zeros(&[3, 4], DType::F32);
        let e = Cuda.matmul(&a, &b, &[2, 4]).unwrap_err().to_string();
        assert!(e.contains("host tensor"), "{e}");
        let w = Tensor::zeros(&[4, 3], DType::F32);
        let e = Cuda.linear(&a, &w, None, &[2, 4]).unwrap_err().to_string();
        assert!(e.contains("host tensor"), "{e}");
    }
}
