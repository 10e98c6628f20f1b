//! Matrix products on the CPU with the `gemm` crate: transposed operands
//! are passed to gemm as strides, never copied.

use super::MatmulOps;
use crate::backend::Cpu;
use crate::ops::elementwise::{BinOp, ElementwiseOps};
use crate::ops::reduce::ReduceOps;
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
/// `threads`: 1 when the caller already runs in parallel. An error when
/// the slices are too short for the shapes and strides.
pub fn gemm<T: Float>(
    dst: &mut [T],
    a: MatRef<T>,
    b: MatRef<T>,
    accumulate: bool,
    threads: usize,
) -> Result<()> {
    if dst.len() != a.rows * b.cols {
        return Err(Error::shape(
            "gemm",
            format!(
                "output of {} elements for a [{}, {}] result",
                dst.len(),
                a.rows,
                b.cols
            ),
        ));
    }
    gemm_strided(dst, b.cols, a, b, accumulate, threads)
}

impl<T> MatRef<'_, T> {
    /// Whether every element lies inside `data` and each stride fits an
    /// isize (what gemm reads).
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(r, c)| r.checked_add(c));
        last.is_some_and(|l| l < self.data.len())
            && isize::try_from(self.row_stride).is_ok()
            && isize::try_from(self.col_stride).is_ok()
    }
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
) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let dst_fits = m == 0
        || n == 0
        || (dst_row_stride >= n
            && (m - 1)
                .checked_mul(dst_row_stride)
                .and_then(|o| o.checked_add(n))
                .is_some_and(|end| end <= dst.len() && isize::try_from(dst_row_stride).is_ok()));
    if b.rows != k || !dst_fits || !a.in_bounds() || !b.in_bounds() {
        return Err(Error::shape(
            "gemm",
            format!(
                "[{m}, {k}] (strides {}, {}; {} elements) @ [{}, {n}] (strides {}, {}; {} \
                 elements) into {} elements with row stride {dst_row_stride}",
                a.row_stride,
                a.col_stride,
                a.data.len(),
                b.rows,
                b.row_stride,
                b.col_stride,
                b.data.len(),
                dst.len()
            ),
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride).take(m) {
                row[..n].fill(T::zero());
            }
        }
        return Ok(());
    }
    let par = if threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    // SAFETY: checked above: every element of a, b and of the [m, n] block
    // of dst lies inside its slice, and every stride fits an isize.
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
    Ok(())
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
    fn get(&self, b: usize) -> Result<MatRef<'_, T>> {
        let start = self.offset + b * self.batch_stride;
        let data = self.data.get(start..).ok_or_else(|| {
            Error::shape("matmul", format!("batch entry {b} lies past the storage"))
        })?;
        Ok(MatRef {
            data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        })
    }
}

fn matmul_kernel<T: Float>(a: &Tensor, b: &Tensor, batch: usize) -> Result<Vec<T>> {
    let (am, bm) = (BatchedMat::<T>::new(a)?, BatchedMat::<T>::new(b)?);
    let (m, n) = (am.rows, bm.cols);
    let mut out = vec![T::zero(); batch * m * n];
    for (i, dst) in out.chunks_mut((m * n).max(1)).enumerate().take(batch) {
        gemm(dst, am.get(i)?, bm.get(i)?, false, 0)?;
    }
    Ok(out)
}

/// `a @ b` (a [..B, m, k], b [..B, k, n], equal batch dims) as `shape`.
fn product(a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k, n) = (a.dims()[ra - 2], a.dims()[ra - 1], b.dims()[rb - 1]);
    let batch: usize = a.dims()[..ra - 2].iter().product();
    // more than one batch dim: one, through a (copying) reshape
    let (a3, b3) = if ra > 3 {
        (
            a.detach().reshape(&[batch, m, k])?,
            b.detach().reshape(&[batch, k, n])?,
        )
    } else {
        (a.clone(), b.clone())
    };
    dispatch_float!("matmul", a.dtype(), T => {
        let out = matmul_kernel::<T>(&a3, &b3, batch)?;
        Ok(Tensor::from_compute(out, shape, a.dtype()))
    })
}

impl MatmulOps for Cpu {
    fn matmul(&self, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
        crate::trace::kernel("gemm");
        product(a, b, shape)
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, out: &[usize]) -> Result<Tensor> {
        // as x.matmul(w.t()) + bias: the product rounds before the bias add
        let y = product(x, &w.transpose(0, 1)?, &[x.dims()[0], w.dims()[0]])?;
        let y = match b {
            Some(b) => Cpu.binary(BinOp::Add, &y, b, y.dims())?,
            None => y,
        };
        crate::trace::kernel("gemm");
        y.reshape(out)
    }

    fn linear_bias_backward(&self, dy: &Tensor) -> Result<Tensor> {
        Cpu.sum(dy, &[0], false)
    }
}
