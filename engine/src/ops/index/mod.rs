//! Indexing ops: `index_select` along any dim (differentiable w.r.t. the
//! input: its backward adds each gradient slice back at its index), and
//! `sort` / `argsort` / `topk` along the last dim (values and i64
//! indices; not differentiable: select with the indices for a gradient).
//! The checks, trace and autograd of each op, over the [`IndexOps`]
//! primitives of the backends (`cpu.rs`, `cuda.rs`).

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

use crate::autograd::record;
use crate::backend::{unsupported, BackendInfo};
use crate::ops::GradSpec;
use crate::{on_backend, DType, Device, Error, Float, Result, Tensor};
use std::cmp::Ordering;

/// The indexing primitives a backend implements. Index tensors are i64 on
/// the backend's device.
pub trait IndexOps: BackendInfo {
    /// `x` at `index` [m] along `dim`: x's shape with dims[dim] = m.
    fn index_select(&self, x: &Tensor, dim: usize, index: &Tensor) -> Result<Tensor> {
        let _ = (x, dim, index);
        Err(unsupported(self, "index_select"))
    }
    /// Zeros of `shape` with `dy` (shape with dims[dim] = m) added at the
    /// slices `index` [m] along `dim` (repeated indices add up).
    fn index_select_backward(
        &self,
        dy: &Tensor,
        dim: usize,
        index: &Tensor,
        shape: &[usize],
    ) -> Result<Tensor> {
        let _ = (dy, dim, index, shape);
        Err(unsupported(self, "index_select_backward"))
    }
    /// The first `k` of each last-dim row of `x` in [`sort_order`]: values
    /// (x's dtype) and i64 indices, both x's shape with the last dim = k.
    fn topk(&self, x: &Tensor, k: usize, descending: bool) -> Result<(Tensor, Tensor)> {
        let _ = (x, k, descending);
        Err(unsupported(self, "topk"))
    }
}

/// The order of a sort: descending puts NaN first then larger values,
/// ascending puts smaller values first and NaN last (NaN counts as the
/// largest, as torch.sort); equal values (-0 == +0) keep their index order
/// (a stable sort).
pub(crate) fn compare<T: Float>(a: T, b: T, descending: bool) -> Ordering {
    let o = match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    };
    if descending {
        o.reverse()
    } else {
        o
    }
}

/// The indices of `v` in sort order (see [`compare`]; ties by lower
/// index): torch's `v.sort(stable=True, descending)`.
pub(crate) fn sort_order<T: Float>(v: &[T], descending: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| compare(v[i], v[j], descending));
    order
}

/// The error for the first of `index` outside [0, size), if any.
pub(crate) fn out_of_range(op: &'static str, index: &[i64], size: usize) -> Option<Error> {
    let (j, &v) = index
        .iter()
        .enumerate()
        .find(|(_, &v)| v < 0 || v as u64 >= size as u64)?;
    Some(Error::arg(
        op,
        format!("index {v} (position {j}) is out of range for a dim of size {size}"),
    ))
}

/// Checks `index` is a 1-D i64 tensor and returns it on `dev`, its values
/// checked to lie in [0, size) wherever they are on the host: a host index
/// before it is uploaded, a GPU index once it is downloaded for a CPU
/// tensor. A GPU index for a GPU tensor is not read back (that would wait
/// for the stream): the kernels never read or write out of bounds, they
/// select zeros for an index out of range (and add nothing for it in the
/// backward), and no error is raised.
fn checked_index(op: &'static str, index: &Tensor, size: usize, dev: Device) -> Result<Tensor> {
    if index.rank() != 1 {
        return Err(Error::shape(
            op,
            format!("index must be 1-D [m], got shape {:?}", index.dims()),
        ));
    }
    if index.dtype() != DType::I64 {
        return Err(Error::dtype(op, "an i64 index", index.dtype()));
    }
    let check = |host: &Tensor| match out_of_range(op, &host.data::<i64>()?, size) {
        Some(e) => Err(e),
        None => Ok(()),
    };
    if index.device() == Device::Cpu {
        check(index)?;
    }
    let moved = index.detach().to_device(dev)?;
    if dev == Device::Cpu && index.device() != Device::Cpu {
        check(&moved)?;
    }
    Ok(moved)
}

/// Checks `dim` is a dim of `x`.
fn checked_dim(op: &'static str, x: &Tensor, dim: usize) -> Result<()> {
    if dim >= x.rank() {
        return Err(Error::arg(
            op,
            format!("dim {dim} out of range for shape {:?}", x.dims()),
        ));
    }
    Ok(())
}

impl Tensor {
    /// The slices of `self` at `index` (1-D i64, any device: moved to
    /// `self`'s) along `dim`: `self`'s shape with dims[dim] = index.len(),
    /// as `torch.index_select`. Every dtype. Differentiable w.r.t. `self`
    /// (float dtypes): the gradient adds each slice back at its index;
    /// on a GPU with atomics, so with repeated indices it is not bitwise
    /// deterministic (equal to the CPU's to f32 rounding). The index is
    /// checked to lie in [0, dims[dim]) wherever its values reach the host
    /// (a host index, or a GPU index for a host tensor): an error at this
    /// call. A GPU index for a GPU tensor is not read back (no wait for the
    /// stream): an index out of range there selects zeros (its gradient
    /// goes nowhere) and raises no error; the kernels never access memory
    /// out of bounds.
    pub fn index_select(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_select";
        checked_dim(OP, self, dim)?;
        let dev = self.device();
        let index = checked_index(OP, index, self.dims()[dim], dev)?;
        on_backend!(dev, b => crate::trace::op(OP, "forward", b.name(), &[self, &index], || {
            let y = b.index_select(self, dim, &index)?;
            let (shape, spec, index) = (self.dims().to_vec(), GradSpec::of(&y), index.clone());
            Ok(record(y, OP, &[self], move |dy| {
                spec.check(OP, dy)?;
                Ok(vec![Some(b.index_select_backward(dy, dim, &index, &shape)?)])
            }))
        }))
    }

    /// The `k` largest elements of each last-dim row (values, i64 indices),
    /// largest first: NaN above everything, equal values by lower index
    /// (torch.topk leaves ties unspecified; this is its stable-sort order).
    /// Float dtypes; not differentiable (index_select with the indices for
    /// a gradient). On a GPU rows may hold up to 2^26 elements
    /// (kernels::families::index::SORT_MAX_ROW).
    pub fn topk(&self, k: usize) -> Result<(Tensor, Tensor)> {
        self.sorted("topk", Some(k), true)
    }

    /// Each last-dim row sorted (values, i64 indices) as
    /// `torch.sort(stable=True)`: see [`Tensor::topk`] for the order
    /// (ascending: smaller first, NaN last).
    pub fn sort(&self, descending: bool) -> Result<(Tensor, Tensor)> {
        self.sorted("sort", None, descending)
    }

    /// The i64 indices of [`Tensor::sort`].
    pub fn argsort(&self, descending: bool) -> Result<Tensor> {
        Ok(self.sorted("argsort", None, descending)?.1)
    }

    fn sorted(
        &self,
        op: &'static str,
        k: Option<usize>,
        descending: bool,
    ) -> Result<(Tensor, Tensor)> {
        if self.rank() == 0 {
            return Err(Error::shape(op, "needs at least one dim, got a scalar"));
        }
        if !self.dtype().is_float() {
            return Err(Error::dtype(
                op,
                "a float dtype (f64, f32, f16, bf16)",
                self.dtype(),
            ));
        }
        let n = self.dims()[self.rank() - 1];
        let k = k.unwrap_or(n);
        if k > n {
            return Err(Error::arg(
                op,
                format!("k = {k} exceeds the last dim of shape {:?}", self.dims()),
            ));
        }
        let x = self.detach();
        on_backend!(self.device(), b => crate::trace::op(op, "forward", b.name(), &[self], || {
            b.topk(&x, k, descending)
        }))
    }
}
