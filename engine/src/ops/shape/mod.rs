//! Views (reshape, permute, narrow, expand: no copy) and concatenation;
//! the copies (cat, narrow's backward) are [`ShapeOps`] primitives of the
//! backends (`cpu.rs`, `cuda.rs`).

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

use super::GradSpec;
use crate::autograd::record;
use crate::backend::{same_device, unsupported, BackendInfo};
use crate::layout::Layout;
use crate::{on_backend, Error, Result, Tensor};

/// The copying primitives of the shape ops a backend implements.
pub trait ShapeOps: BackendInfo {
    /// `tensors` (one dtype, equal but for `dim`) joined along `dim` into
    /// a tensor of `shape`.
    fn cat(&self, tensors: &[Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
        let _ = (tensors, dim, shape);
        Err(unsupported(self, "cat"))
    }
    /// The adjoint of `narrow`: a zero tensor of `shape` with `dy` at
    /// `start..` along `dim`.
    fn narrow_backward(
        &self,
        dy: &Tensor,
        shape: &[usize],
        dim: usize,
        start: usize,
    ) -> Result<Tensor> {
        let _ = (dy, shape, dim, start);
        Err(unsupported(self, "narrow_backward"))
    }
}

impl Tensor {
    /// Same elements, new shape (a view when contiguous, else a copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {:?} ({} elements) to {shape:?} ({n} elements)",
                    self.dims(),
                    self.numel()
                ),
            ));
        }
        if self.dims() == shape {
            return Ok(self.clone());
        }
        let src = self.contiguous()?;
        let mut layout = Layout::contiguous(shape);
        layout.offset = src.layout().offset;
        let in_shape = self.dims().to_vec();
        Ok(record(src.view(layout), "reshape", &[&src], move |g| {
            Ok(vec![Some(g.reshape(&in_shape)?)])
        }))
    }

    /// Merges dims `start..` into one: [N, C, H, W].flatten(1) = [N, C*H*W].
    pub fn flatten(&self, start: usize) -> Result<Tensor> {
        if start > self.rank() {
            return Err(Error::shape(
                "flatten",
                format!("start dim {start} > rank of {:?}", self.dims()),
            ));
        }
        let mut shape = self.dims()[..start].to_vec();
        shape.push(self.dims()[start..].iter().product());
        self.reshape(&shape)
    }

    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::shape(
                "unsqueeze",
                format!("dim {dim} out of range for {:?}", self.dims()),
            ));
        }
        let mut shape = self.dims().to_vec();
        shape.insert(dim, 1);
        self.reshape(&shape)
    }

    /// Reorders dims: `out.dims()[i] = self.dims()[perm[i]]` (a view).
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.rank()];
        if perm.len() != self.rank()
            || perm
                .iter()
                .any(|&p| p >= self.rank() || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::shape(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the dims of {:?}",
                    self.dims()
                ),
            ));
        }
        let l = self.layout();
        let layout = Layout {
            shape: perm.iter().map(|&p| l.shape[p]).collect(),
            strides: perm.iter().map(|&p| l.strides[p]).collect(),
            offset: l.offset,
        };
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(record(self.view(layout), "permute", &[self], move |g| {
            Ok(vec![Some(g.permute(&inverse)?)])
        }))
    }

    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        if a >= perm.len() || b >= perm.len() {
            return Err(Error::shape(
                "transpose",
                format!("dims ({a}, {b}) out of range for {:?}", self.dims()),
            ));
        }
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Elements `start..start+len` along `dim` (a view).
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let size = self.dim(dim)?;
        if start + len > size {
            return Err(Error::shape(
                "narrow",
                format!(
                    "range {start}..{} exceeds size {size} of dim {dim} in {:?}",
                    start + len,
                    self.dims()
                ),
            ));
        }
        let mut layout = self.layout().clone();
        layout.offset += start * layout.strides[dim];
        layout.shape[dim] = len;
        let in_shape = self.dims().to_vec();
        let y = self.view(layout);
        let spec = GradSpec::of(&y);
        Ok(record(y, "narrow", &[self], move |g| {
            spec.check("narrow", g)?;
            let dx = on_backend!(g.device(), b => b.narrow_backward(g, &in_shape, dim, start))?;
            Ok(vec![Some(dx)])
        }))
    }

    /// Broadcasts size-1 (or missing leading) dims to `shape` (a view with
    /// stride 0; ops that read it gather the data).
    pub fn expand(&self, shape: &[usize]) -> Result<Tensor> {
        let layout = self.layout().broadcast_to(shape)?;
        let in_shape = self.dims().to_vec();
        Ok(record(self.view(layout), "expand", &[self], move |g| {
            Ok(vec![Some(g.sum_to(&in_shape)?)])
        }))
    }

    /// Concatenates along `dim`; all tensors share dtype, device and the
    /// other dims.
    pub fn cat(tensors: &[Tensor], dim: usize) -> Result<Tensor> {
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let first = tensors
            .first()
            .ok_or_else(|| Error::arg("cat", "needs at least one tensor"))?;
        let dev = same_device("cat", &refs)?;
        on_backend!(dev, b => crate::trace::op("cat", "forward", b.name(), &refs, || {
            if dim >= first.rank() {
                return Err(Error::shape(
                    "cat",
                    format!("dim {dim} out of range for {:?}", first.dims()),
                ));
            }
            for t in tensors {
                let same_other = t.rank() == first.rank()
                    && (0..t.rank()).all(|i| i == dim || t.dims()[i] == first.dims()[i]);
                if !same_other {
                    return Err(Error::shape(
                        "cat",
                        format!(
                            "shapes {:?} and {:?} differ outside dim {dim}",
                            first.dims(),
                            t.dims()
                        ),
                    ));
                }
                if t.dtype() != first.dtype() {
                    return Err(Error::dtype("cat", first.dtype().name(), t.dtype()));
                }
            }
            let sizes: Vec<usize> = tensors.iter().map(|t| t.dims()[dim]).collect();
            let mut shape = first.dims().to_vec();
            shape[dim] = sizes.iter().sum();
            let out = b.cat(tensors, dim, &shape)?;
            let spec = GradSpec::of(&out);
            Ok(record(out, "cat", &refs, move |g| {
                spec.check("cat", g)?;
                let mut start = 0;
                let mut grads = Vec::with_capacity(sizes.len());
                for &s in &sizes {
                    grads.push(Some(g.narrow(dim, start, s)?.contiguous()?));
                    start += s;
                }
                Ok(grads)
            }))
        }))
    }

    /// Stacks same-shape tensors along a new dim.
    pub fn stack(tensors: &[Tensor], dim: usize) -> Result<Tensor> {
        let expanded = tensors
            .iter()
            .map(|t| t.unsqueeze(dim))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&expanded, dim)
    }
}
