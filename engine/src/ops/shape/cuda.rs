//! The copies of the shape ops on the GPU (copy.cu `strided_assign`): cat
//! writes each input, whatever its layout, straight into its slice of an
//! output in the GPU default layout (channels-last for 4-D), and narrow's
//! backward writes the gradient into its slice of a zeroed tensor. Any
//! dtype (elements are moved as raw bits).

use super::ShapeOps;
use crate::backend::Cuda;
use crate::cuda::launch::{kerr, same_gpu, traced_sync};
use crate::cuda::tensor::{empty, gpu_of, ptr, zeros};
use crate::layout::Layout;
use crate::{Result, Tensor};
use kernels::device::StridedPair;

/// The view of `out` covering `len` elements from `start` along `dim`.
fn slice(out: &Tensor, dim: usize, start: usize, len: usize) -> Tensor {
    let mut l: Layout = out.layout().clone();
    l.offset += start * l.strides[dim];
    l.shape[dim] = len;
    out.view(l)
}

/// Writes `src` into `dst` (a view of a fresh output; same shape and
/// dtype), element for element.
fn assign(op: &'static str, src: &Tensor, dst: &Tensor) -> Result<()> {
    let g = same_gpu(op, &[src, dst])?;
    // the destination's dims outermost first, both sides' strides alike
    let mut order: Vec<usize> = (0..dst.rank()).collect();
    order.sort_by(|&a, &b| dst.strides()[b].cmp(&dst.strides()[a]));
    let pick = |v: &[usize]| order.iter().map(|&d| v[d]).collect::<Vec<_>>();
    let view = StridedPair::new(
        &pick(dst.dims()),
        &pick(src.strides()),
        &pick(dst.strides()),
    )
    .map_err(kerr(op))?;
    g.bind()?;
    // SAFETY: src's and dst's strides address only elements of their own
    // layouts; dst is a slice of a dense output, so its elements are
    // distinct.
    unsafe {
        g.kernels.strided_assign(
            &g.stream,
            src.dtype().size_in_bytes(),
            ptr(src)?,
            ptr(dst)?,
            dst.numel(),
            &view,
        )
    }
    .map_err(kerr(op))
}

impl ShapeOps for Cuda {
    fn cat(&self, tensors: &[Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
        crate::trace::kernel("strided_assign");
        let g = gpu_of(&tensors[0])?;
        let out = empty(g, shape, tensors[0].dtype())?;
        let mut start = 0;
        for t in tensors {
            let len = t.dims()[dim];
            assign("cat", t, &slice(&out, dim, start, len))?;
            start += len;
        }
        traced_sync(g)?;
        Ok(out)
    }

    fn narrow_backward(
        &self,
        dy: &Tensor,
        shape: &[usize],
        dim: usize,
        start: usize,
    ) -> Result<Tensor> {
        crate::trace::kernel("strided_assign");
        let g = gpu_of(dy)?;
        let out = zeros(g, shape, dy.dtype())?;
        assign("narrow", dy, &slice(&out, dim, start, dy.dims()[dim]))?;
        traced_sync(g)?;
        Ok(out)
    }
}
