//! Matrix products on the `gemm` crate, and `linear` (x W^T + b, PyTorch's
//! layout). Transposed operands are passed to gemm as strides, never copied.

use crate::autograd::record;
use crate::{dispatch_float, Error, Float, Result, Tensor};
use std::borrow::Cow;

/// A matrix operand: data plus row and column strides.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// `dst = beta_dst * dst + a @ b` for row-major contiguous `dst` [m, n].
/// `accumulate` keeps what dst holds (beta_dst = 1), else overwrites.
/// `threads`: 1 when the caller already runs in parallel.
pub fn gemm<T: Float>(dst: &mut [T], a: MatRef<T>, b: MatRef<T>, accumulate: bool, threads: usize) {
    assert!(dst.len() == a.rows * b.cols, "gemm operand shapes");
    gemm_strided(dst, b.cols, a, b, accumulate, threads)
}

/// `gemm` into an [m, n] block of a bigger row-major matrix: row `i` of the
/// result is `dst[i * dst_row_stride..][..n]` (e.g. a tile of columns).
pub fn gemm_strided<T: Float>(
    dst: &mut [T],
    dst_row_stride: usize,
    a: MatRef<T>,
    b: MatRef<T>,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        b.rows == k && dst_row_stride >= n && dst.len() >= (m - 1) * dst_row_stride + n,
        "gemm operand shapes"
    );
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride).take(m) {
                row[..n].fill(T::zero());
            }
        }
        return;
    }
    let par = if threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    // Safety: the asserts above and the strides of MatRef (built from valid
    // views) keep every access inside the three slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// The last two dims of `t` as a strided matrix per batch index, without
/// copying when the dtype already is `T`.
struct BatchedMat<'a, T: Clone> {
    data: Cow<'a, [T]>,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
    batch_stride: usize,
    offset: usize,
}

impl<'a, T: Float> BatchedMat<'a, T> {
    fn new(t: &'a Tensor) -> Result<Self> {
        let r = t.rank();
        let (rows, cols) = (t.dims()[r - 2], t.dims()[r - 1]);
        // A view over the raw storage works when batch dims are collapsible.
        if t.dtype() == T::DTYPE && r <= 3 {
            let l = t.layout();
            let data = T::slice(t.storage()).expect("dtype checked");
            return Ok(BatchedMat {
                data: Cow::Borrowed(data),
                rows,
                cols,
                row_stride: l.strides[r - 2],
                col_stride: l.strides[r - 1],
                batch_stride: if r == 3 { l.strides[0] } else { 0 },
                offset: l.offset,
            });
        }
        Ok(BatchedMat {
            data: t.float_data::<T>()?,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
            batch_stride: rows * cols,
            offset: 0,
        })
    }
    fn get(&self, b: usize) -> MatRef<'_, T> {
        MatRef {
            data: &self.data[self.offset + b * self.batch_stride..],
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }
}

fn matmul_kernel<T: Float>(a: &Tensor, b: &Tensor, batch: usize) -> Result<Vec<T>> {
    let (am, bm) = (BatchedMat::<T>::new(a)?, BatchedMat::<T>::new(b)?);
    let (m, n) = (am.rows, bm.cols);
    let mut out = vec![T::zero(); batch * m * n];
    for (i, dst) in out.chunks_mut((m * n).max(1)).enumerate().take(batch) {
        gemm(dst, am.get(i), bm.get(i), false, 0);
    }
    Ok(out)
}

impl Tensor {
    /// [m,k]@[k,n] or batched [B,m,k]@[B,k,n]; a 2-D right operand is shared
    /// by every batch entry, and [..., k] inputs with more leading dims are
    /// flattened into the batch.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        if self.device() != crate::Device::Cpu {
            return crate::cuda::ops::matmul::matmul(self, rhs);
        }
        crate::trace::op("matmul", "forward", "cpu:gemm", &[self, rhs], || {
            super::same_dtype("matmul", &[self, rhs])?;
            let (ra, rb) = (self.rank(), rhs.rank());
            if ra < 2 || rb < 2 {
                return Err(Error::shape(
                    "matmul",
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
                    "matmul",
                    format!("inner dims differ: {:?} @ {:?}", self.dims(), rhs.dims()),
                ));
            }
            let batch_a: Vec<usize> = self.dims()[..ra - 2].to_vec();
            // [.., m, k] @ [k, n]: fold the batch into m (one big GEMM).
            if rb == 2 && ra > 2 {
                let flat = self.reshape(&[batch_a.iter().product::<usize>() * m, k])?;
                let mut shape = batch_a.clone();
                shape.extend([m, n]);
                return flat.matmul(rhs)?.reshape(&shape);
            }
            if self.dims()[..ra - 2] != rhs.dims()[..rb - 2] {
                return Err(Error::shape(
                    "matmul",
                    format!("batch dims differ: {:?} @ {:?}", self.dims(), rhs.dims()),
                ));
            }
            let batch: usize = batch_a.iter().product();
            let (a3, b3) = if ra > 3 {
                (self.reshape(&[batch, m, k])?, rhs.reshape(&[batch, k, n])?)
            } else {
                (self.clone(), rhs.clone())
            };
            let mut shape = batch_a;
            shape.extend([m, n]);
            let out = dispatch_float!("matmul", self.dtype(), T => {
                Tensor::from_compute(matmul_kernel::<T>(&a3, &b3, batch)?, &shape, self.dtype())
            });
            let (a, b) = (self.detach(), rhs.detach());
            let (need_a, need_b) = (self.requires_grad(), rhs.requires_grad());
            Ok(record(out, "matmul", &[self, rhs], move |g| {
                let t = |x: &Tensor| x.transpose(x.rank() - 2, x.rank() - 1);
                let ga = need_a.then(|| g.matmul(&t(&b)?)).transpose()?;
                let gb = need_b.then(|| t(&a)?.matmul(g)).transpose()?;
                Ok(vec![ga, gb])
            }))
        })
    }

    /// `x @ weight^T + bias` with weight [out, in] (PyTorch's nn.Linear).
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        if self.device() != crate::Device::Cpu {
            return crate::cuda::ops::matmul::linear(self, weight, bias);
        }
        super::expect_rank("linear", "weight", weight, 2)?;
        let y = self.matmul(&weight.transpose(0, 1)?)?;
        match bias {
            Some(b) => {
                super::expect_rank("linear", "bias", b, 1)?;
                y.add(b)
            }
            None => Ok(y),
        }
    }
}
