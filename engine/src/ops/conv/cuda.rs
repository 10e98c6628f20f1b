//! Convolutions on the GPU through cuDNN (cuda::dnn).
//!
//! Everything stays channels-last: x, y, dx are NHWC and the weight and dw
//! KRSC, which is exactly the GPU default layout of those logical shapes,
//! so tensors in the default layout are passed to cuDNN as they are. A
//! transposed convolution's forward is cuDNN's backward-data of the
//! matching convolution.

use super::{Conv2dGeom, ConvOps};
use crate::backend::{unsupported, Cuda};
use crate::cuda::dnn::{self, ConvShape};
use crate::cuda::launch::traced_sync;
use crate::cuda::runtime::Gpu;
use crate::cuda::tensor::{empty, gpu_of, ptr, to_default_layout, zeros};
use crate::{DType, Result, Tensor};

/// One of dnn's convolutions: (gpu, shape, dtype, in a, in b, out).
type DnnConv = unsafe fn(&'static Gpu, &ConvShape, DType, u64, u64, u64) -> Result<&'static str>;

/// `f` on `a` and `b` into a new output of `dims` (zeros when the
/// convolution is empty), plus `bias` per channel.
fn run(
    f: DnnConv,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    g: &Conv2dGeom,
    dims: [usize; 4],
) -> Result<Tensor> {
    let dtype = a.dtype();
    dnn::data_type(dtype)?;
    let s = ConvShape::new(g.x_dims(), g.w_dims(), g.p)?;
    if s.y_dims() != g.y_dims() {
        // A transposed convolution whose output_padding reaches the stride:
        // cuDNN's matching convolution has more outputs than its input.
        return Err(unsupported(
            &Cuda,
            "conv_transpose2d with output_padding >= stride",
        ));
    }
    let gpu = gpu_of(a)?;
    let out = if s.is_empty() {
        zeros(gpu, &dims, dtype)?
    } else {
        let (a, b) = (to_default_layout(a)?, to_default_layout(b)?);
        let out = empty(gpu, &dims, dtype)?;
        // SAFETY: a, b and out are live tensors on gpu in the GPU default
        // layout (NHWC / KRSC, dense) with the dims `f` reads and writes
        // for `s` (the front-end checked the operands' shapes and dtypes
        // against `g`, and `s` matches `g`); out is new, used by nothing
        // else.
        let algo = unsafe { f(gpu, &s, dtype, ptr(&a)?, ptr(&b)?, ptr(&out)?) }?;
        crate::trace::kernel(algo);
        out
    };
    if let Some(bias) = bias {
        let bias = to_default_layout(bias)?;
        // SAFETY: bias is a dense [dims[1]] tensor (checked by the
        // front-end), out an NHWC tensor of `dims`, both dtype, on gpu.
        unsafe { dnn::add_bias(gpu, dtype, dims, ptr(&bias)?, ptr(&out)?) }?;
    }
    traced_sync(gpu)?;
    Ok(out)
}

impl ConvOps for Cuda {
    fn conv2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        g: &Conv2dGeom,
    ) -> Result<Tensor> {
        run(dnn::conv_forward, x, w, bias, g, g.y_dims())
    }

    fn conv2d_backward_data(&self, dy: &Tensor, w: &Tensor, g: &Conv2dGeom) -> Result<Tensor> {
        run(dnn::conv_backward_data, w, dy, None, g, g.x_dims())
    }

    fn conv2d_backward_filter(&self, x: &Tensor, dy: &Tensor, g: &Conv2dGeom) -> Result<Tensor> {
        run(dnn::conv_backward_filter, x, dy, None, g, g.w_dims())
    }

    /// cuDNN 9's cudnnConvolutionBackwardBias refuses bf16 (measured on
    /// the H100: CUDNN_STATUS_NOT_SUPPORTED), so this is our own
    /// per-channel sum.
    fn conv2d_bias_grad(&self, dy: &Tensor) -> Result<Tensor> {
        dy.detach().sum_dims(&[0, 2, 3], false)
    }

    fn conv_transpose2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        g: &Conv2dGeom,
    ) -> Result<Tensor> {
        run(dnn::conv_backward_data, w, x, bias, g, g.x_dims())
    }
}
