//! The copies of the shape ops on the CPU, for every dtype.

use super::ShapeOps;
use crate::backend::Cpu;
use crate::dispatch_any;
use crate::layout::Layout;
use crate::{Element, Result, Tensor};

/// Writes `src` (row-major) into the elements of `dst` that `region` views.
fn scatter<T: Element>(dst: &mut [T], region: &Layout, src: &[T]) {
    let mut k = 0;
    region.for_each_index(|i| {
        dst[i] = src[k];
        k += 1;
    });
}

/// The part of a contiguous `shape` tensor that starts at `start` along
/// `dim` and is `len` long there.
fn region(shape: &[usize], dim: usize, start: usize, len: usize) -> Layout {
    let mut region = Layout::contiguous(shape);
    region.offset = start * region.strides[dim];
    region.shape[dim] = len;
    region
}

impl ShapeOps for Cpu {
    fn cat(&self, tensors: &[Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
        crate::trace::kernel("copy");
        dispatch_any!(tensors[0].dtype(), T => {
            let mut out = vec![T::from_f64(0.0); shape.iter().product()];
            let mut start = 0;
            for t in tensors {
                let len = t.dims()[dim];
                scatter(&mut out, &region(shape, dim, start, len), &t.data::<T>()?);
                start += len;
            }
            Tensor::from_storage(<T as Element>::into_storage(out), shape)
        })
    }

    fn narrow_backward(
        &self,
        dy: &Tensor,
        shape: &[usize],
        dim: usize,
        start: usize,
    ) -> Result<Tensor> {
        let r = region(shape, dim, start, dy.dims()[dim]);
        dispatch_any!(dy.dtype(), T => {
            let mut out = vec![T::from_f64(0.0); shape.iter().product()];
            scatter(&mut out, &r, &dy.data::<T>()?);
            Tensor::from_vec(out, shape)
        })
    }
}
