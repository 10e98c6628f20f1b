//! Views (reshape, permute, narrow, expand: no copy) and concatenation.

use crate::autograd::record;
use crate::layout::Layout;
use crate::{Element, Error, Result, Tensor};
use half::{bf16, f16};

/// Runs `$body` with `$T` = the element type stored for `$dtype`.
macro_rules! dispatch_any {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F16 => {
                type $T = f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = bf16;
                $body
            }
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::DType::U8 => {
                type $T = u8;
                $body
            }
        }
    };
}

/// Writes `src` (row-major) into the elements of `dst` that `region` views.
fn scatter<T: Element>(dst: &mut [T], region: &Layout, src: &[T]) {
    let mut k = 0;
    region.for_each_index(|i| {
        dst[i] = src[k];
        k += 1;
    });
}

/// `region` of a contiguous `shape` tensor filled from `src`, zeros elsewhere:
/// the adjoint of `narrow`.
fn embed(src: &Tensor, shape: &[usize], dim: usize, start: usize) -> Result<Tensor> {
    let mut region = Layout::contiguous(shape);
    region.offset = start * region.strides[dim];
    region.shape[dim] = src.dims()[dim];
    dispatch_any!(src.dtype(), T => {
        let mut out = vec![T::from_f64(0.0); shape.iter().product()];
        scatter(&mut out, &region, &src.data::<T>()?);
        Tensor::from_vec(out, shape)
    })
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
        let src = self.contiguous();
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
        Ok(record(self.view(layout), "narrow", &[self], move |g| {
            Ok(vec![Some(embed(g, &in_shape, dim, start)?)])
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

    /// Concatenates along `dim`; all tensors share dtype and the other dims.
    pub fn cat(tensors: &[Tensor], dim: usize) -> Result<Tensor> {
        crate::trace::op(
            "cat",
            "forward",
            "cpu:copy",
            &tensors.iter().collect::<Vec<_>>(),
            || {
                let first = tensors
                    .first()
                    .ok_or_else(|| Error::arg("cat", "needs at least one tensor"))?;
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
                let out = dispatch_any!(first.dtype(), T => {
                    let mut out = vec![T::from_f64(0.0); shape.iter().product()];
                    let mut start = 0;
                    for t in tensors {
                        let mut region = Layout::contiguous(&shape);
                        region.offset = start * region.strides[dim];
                        region.shape[dim] = t.dims()[dim];
                        scatter(&mut out, &region, &t.data::<T>()?);
                        start += t.dims()[dim];
                    }
                    Tensor::from_storage(<T as Element>::into_storage(out), &shape)?
                });
                let refs: Vec<&Tensor> = tensors.iter().collect();
                Ok(record(out, "cat", &refs, move |g| {
                    let mut start = 0;
                    let mut grads = Vec::with_capacity(sizes.len());
                    for &s in &sizes {
                        grads.push(Some(g.narrow(dim, start, s)?.contiguous()));
                        start += s;
                    }
                    Ok(grads)
                }))
            },
        )
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
