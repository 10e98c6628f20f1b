//! `matmul` and `linear` on the GPU (cuBLASLt, see cuda::blas), with the
//! CPU ops' semantics and autograd (engine/src/ops/matmul.rs):
//! - matmul: [m,k]@[k,n]; [..B, m, k]@[..B, k, n] with equal batch dims;
//!   [..., m, k]@[k, n] folds the batch into m (one big GEMM);
//! - linear: x @ weight^T + bias with weight [out, in], the bias added by
//!   cuBLASLt's BIAS epilogue; backward dx = dy W, dW = dy^T x and
//!   db = ones^T dy (column sums as a GEMM, exact in its f32 accumulator).
//!
//! Transposed views (`w.t()`, the last two dims permuted) are read in
//! place through a transpose flag; other layouts (e.g. channels-last 4-D)
//! are copied row-major first. Outputs get the GPU default layout.

use crate::autograd::record;
use crate::cuda::blas::{self, Activation, GemmParams, Matrix};
use crate::cuda::runtime::Gpu;
use crate::cuda::tensor::{
    alloc, contiguous, empty, gpu_of, has_default_layout, ptr, to_default_layout, zeros,
};
use crate::layout::Layout;
use crate::{DType, Error, Result, Tensor};
use std::sync::Mutex;

/// The GPU all of `ts` live on, after the dtype checks (one float dtype
/// cuBLASLt handles).
fn gpu_for(op: &'static str, ts: &[&Tensor]) -> Result<&'static Gpu> {
    crate::ops::same_dtype(op, ts)?;
    crate::cuda::launch::kdtype(op, ts[0].dtype())?;
    let dev = ts[0].device();
    if let Some(t) = ts.iter().find(|t| t.device() != dev) {
        return Err(Error::arg(
            op,
            format!(
                "operands live on different devices ({dev} and {}): move them with to_device",
                t.device()
            ),
        ));
    }
    gpu_of(ts[0])
}

fn t(x: &Tensor) -> Result<Tensor> {
    x.transpose(x.rank() - 2, x.rank() - 1)
}

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

/// `a @ b (+ bias)` without autograd: a [..B, m, k], b [..B, k, n] (same
/// batch dims, or both 2-D) -> [..B, m, n] in the default layout. `bias`
/// ([n]) is only taken for 2-D products. Traced as `name` / `phase`.
fn product(
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    name: &'static str,
    phase: &str,
) -> Result<Tensor> {
    let g = gpu_of(a)?;
    let dtype = a.dtype();
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k, n) = (a.dims()[ra - 2], a.dims()[ra - 1], b.dims()[rb - 1]);
    if b.dims()[rb - 2] != k || a.dims()[..ra - 2] != b.dims()[..rb - 2] {
        return Err(Error::shape(
            name,
            format!("cannot multiply {:?} by {:?}", a.dims(), b.dims()),
        ));
    }
    if bias.is_some() && ra != 2 {
        return Err(Error::shape(name, "a fused bias needs a 2-D product"));
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
                product(&col, &row, None, name, phase)
            }
        };
    }
    let (a_keep, am, batch_a) = operand(a)?;
    let (b_keep, bm, batch_b) = operand(b)?;
    let batch = numel / (m * n);
    if batch_a != batch || batch_b != batch {
        return Err(Error::shape(
            name,
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
        bias: bias_ptr,
        act: Activation::None,
    };
    let out = Tensor::from_device_parts(out_buf, Layout::contiguous(&shape));
    let ran = if crate::trace::enabled() {
        format!("cublasLt:{}", blas::describe(g, &params)?)
    } else {
        "cublasLt".to_string()
    };
    let out = crate::trace::op(name, phase, &ran, &[a, b], || {
        blas::gemm(g, &params)?;
        if crate::trace::enabled() {
            g.synchronize()?;
        }
        Ok(out)
    })?;
    // the operands (maybe copies) may be released now: the allocator only
    // reuses their blocks for work queued after this GEMM
    drop((a_keep, b_keep, bias_keep));
    to_default_layout(&out)
}

/// `x` reshaped the way the CPU op does it (a copy first when needed),
/// recording the same autograd nodes, but returning the copy's error
/// instead of panicking.
fn reshape(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    x.try_contiguous()?.reshape(shape)
}

/// `y` in the GPU default layout (a copy for a row-major 4-D view), the
/// gradient passing through unchanged.
fn with_default_layout(y: Tensor) -> Result<Tensor> {
    if has_default_layout(&y) {
        return Ok(y);
    }
    let out = to_default_layout(&y)?;
    Ok(record(out, "contiguous", &[&y], |g| {
        Ok(vec![Some(g.clone())])
    }))
}

/// The last dim of `x` kept, the others flattened: [rows, cols], no
/// autograd. 2-D tensors keep their strides (transposed views stay views).
fn flat2(x: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let x = x.detach();
    if x.rank() == 2 {
        return Ok(x);
    }
    let c = if x.is_contiguous() {
        x
    } else {
        contiguous(&x)?
    };
    c.reshape(&[rows, cols])
}

/// GPU `Tensor::matmul`: [m,k]@[k,n] or batched [..B,m,k]@[..B,k,n]; a
/// 2-D right operand with a batched left one folds the batch into m.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    gpu_for("matmul", &[a, b])?;
    let (ra, rb) = (a.rank(), b.rank());
    if ra < 2 || rb < 2 {
        return Err(Error::shape(
            "matmul",
            format!(
                "operands need >= 2 dims, got {:?} and {:?}",
                a.dims(),
                b.dims()
            ),
        ));
    }
    let (m, k) = (a.dims()[ra - 2], a.dims()[ra - 1]);
    let (k2, n) = (b.dims()[rb - 2], b.dims()[rb - 1]);
    if k != k2 {
        return Err(Error::shape(
            "matmul",
            format!("inner dims differ: {:?} @ {:?}", a.dims(), b.dims()),
        ));
    }
    let lead = &a.dims()[..ra - 2];
    if rb == 2 && ra > 2 {
        // as on the CPU: [.., m, k] -> [B*m, k], one GEMM, reshape back
        let flat = reshape(a, &[lead.iter().product::<usize>() * m, k])?;
        let mut shape = lead.to_vec();
        shape.extend([m, n]);
        return with_default_layout(reshape(&flat.matmul(b)?, &shape)?);
    }
    if a.dims()[..ra - 2] != b.dims()[..rb - 2] {
        return Err(Error::shape(
            "matmul",
            format!("batch dims differ: {:?} @ {:?}", a.dims(), b.dims()),
        ));
    }
    let (ad, bd) = (a.detach(), b.detach());
    let out = product(&ad, &bd, None, "matmul", "forward")?;
    let (need_a, need_b) = (a.requires_grad(), b.requires_grad());
    Ok(record(out, "matmul", &[a, b], move |g| {
        let ga = need_a
            .then(|| product(g, &t(&bd)?, None, "matmul", "backward"))
            .transpose()?;
        let gb = need_b
            .then(|| product(&t(&ad)?, g, None, "matmul", "backward"))
            .transpose()?;
        Ok(vec![ga, gb])
    }))
}

/// GPU `Tensor::linear`: `x @ weight^T + bias`, weight [out, in], x
/// [..., in] -> [..., out]. Autograd inputs: x, weight, then bias.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    crate::ops::expect_rank("linear", "weight", weight, 2)?;
    if let Some(b) = bias {
        crate::ops::expect_rank("linear", "bias", b, 1)?;
    }
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    gpu_for("linear", &inputs)?;
    let rx = x.rank();
    if rx < 2 {
        return Err(Error::shape(
            "linear",
            format!("input needs >= 2 dims, got {:?}", x.dims()),
        ));
    }
    let (n, k) = (weight.dims()[0], weight.dims()[1]);
    if x.dims()[rx - 1] != k {
        return Err(Error::shape(
            "linear",
            format!(
                "inner dims differ: input {:?} @ weight^T (weight {:?})",
                x.dims(),
                weight.dims()
            ),
        ));
    }
    if let Some(b) = bias {
        if b.dims()[0] != n {
            if b.dims()[0] == 1 {
                // a one-element bias broadcasts on the CPU too: same path
                return x.linear(weight, None)?.add(b);
            }
            return Err(Error::shape(
                "linear",
                format!("bias {:?} does not match {n} output features", b.dims()),
            ));
        }
    }
    let rows: usize = x.dims()[..rx - 1].iter().product();
    let x2 = flat2(x, rows, k)?;
    let wd = weight.detach();
    let bd = bias.map(Tensor::detach);
    let y2 = product(&x2, &t(&wd)?, bd.as_ref(), "linear", "forward")?;
    let mut shape = x.dims()[..rx - 1].to_vec();
    shape.push(n);
    let y = to_default_layout(&y2.reshape(&shape)?)?;
    let x_shape = x.dims().to_vec();
    let (need_x, need_w, need_b) = (
        x.requires_grad(),
        weight.requires_grad(),
        bias.is_some_and(Tensor::requires_grad),
    );
    let has_bias = bias.is_some();
    Ok(record(y, "linear", &inputs, move |g| {
        let dy = flat2(g, rows, n)?;
        let dx = need_x
            .then(|| -> Result<Tensor> {
                let dx = product(&dy, &wd, None, "linear", "backward")?;
                to_default_layout(&dx.reshape(&x_shape)?)
            })
            .transpose()?;
        let dw = need_w
            .then(|| product(&t(&dy)?, &x2, None, "linear", "backward"))
            .transpose()?;
        let mut grads = vec![dx, dw];
        if has_bias {
            let db = need_b
                .then(|| -> Result<Tensor> {
                    let g = gpu_of(&dy)?;
                    let ones_row = ones(g, dy.dtype(), rows)?.reshape(&[1, rows])?;
                    product(&ones_row, &dy, None, "linear", "backward")?.reshape(&[n])
                })
                .transpose()?;
            grads.push(db);
        }
        Ok(grads)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The checks that run before any GPU work, so no GPU is needed.

    #[test]
    fn dtypes_cublaslt_cannot_take_are_refused_first() {
        let a = Tensor::zeros(&[2, 3], DType::F64);
        let b = Tensor::zeros(&[3, 4], DType::F64);
        let e = matmul(&a, &b).unwrap_err().to_string();
        assert!(e.contains("f32, f16 or bf16 on the GPU"), "{e}");
        let b32 = Tensor::zeros(&[3, 4], DType::F32);
        let e = matmul(&Tensor::zeros(&[2, 3], DType::BF16), &b32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("like the first operand"), "{e}");
    }

    #[test]
    fn host_tensors_get_a_clear_error_not_a_panic() {
        let a = Tensor::zeros(&[2, 3], DType::F32);
        let b = Tensor::zeros(&[3, 4], DType::F32);
        let e = matmul(&a, &b).unwrap_err().to_string();
        assert!(e.contains("host tensor"), "{e}");
        let w = Tensor::zeros(&[4, 3], DType::F32);
        let e = linear(&a, &w, None).unwrap_err().to_string();
        assert!(e.contains("host tensor"), "{e}");
        let e = linear(&a, &Tensor::zeros(&[4], DType::F32), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("weight must have 2 dims"), "{e}");
    }
}
