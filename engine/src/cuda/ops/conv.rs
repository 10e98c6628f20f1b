//! GPU 2-D convolution (`Tensor::conv2d` on a CUDA tensor) through cuDNN
//! (cuda::dnn), with the CPU op's semantics: PyTorch's `F.conv2d`
//! (cross-correlation, zero padding, groups, dilation), x [N, Cin, H, W],
//! weight [Cout, Cin/groups, kh, kw], optional bias [Cout], one shared
//! dtype, output [N, Cout, OH, OW] in the input's dtype.
//!
//! Everything stays channels-last: x, y, dx are NHWC and the weight and dw
//! KRSC, which is exactly the GPU default layout of those logical shapes,
//! so tensors in the default layout are passed to cuDNN as they are.
//!
//! Autograd matches the CPU op: inputs [x, weight, (bias)], gradients
//! [dx, dw, db], each computed only when its input requires grad; x is
//! saved only for dw and the weight only for dx.

use crate::autograd::record;
use crate::cuda::dnn::{self, ConvShape, Direction};
use crate::cuda::ops::cast;
use crate::cuda::runtime::Gpu;
use crate::cuda::tensor::{empty, gpu_of, ptr, to_default_layout, zeros};
use crate::ops::conv::Conv2dParams;
use crate::ops::{expect_rank, same_dtype};
use crate::{DType, Error, Result, Tensor};

const OP: &str = "conv2d";

fn dims4(t: &Tensor) -> [usize; 4] {
    let d = t.dims();
    [d[0], d[1], d[2], d[3]]
}

/// The checks of the CPU op (ranks, dtypes, bias shape; ConvShape checks
/// the geometry) plus the GPU ones: every operand on x's GPU, a dtype
/// cuDNN convolves.
fn check(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<ConvShape> {
    expect_rank(OP, "input [N, Cin, H, W]", x, 4)?;
    expect_rank(OP, "weight [Cout, Cin/groups, kh, kw]", weight, 4)?;
    let mut ts = vec![x, weight];
    ts.extend(bias);
    same_dtype(OP, &ts)?;
    for t in &ts[1..] {
        if t.device() != x.device() {
            return Err(Error::arg(
                OP,
                format!(
                    "all operands must be on {} like the input; got one on {} (move it with to_device)",
                    x.device(),
                    t.device()
                ),
            ));
        }
    }
    dnn::data_type(x.dtype())?;
    let s = ConvShape::new(dims4(x), dims4(weight), p).map_err(|e| match e {
        Error::Shape { msg, .. } => Error::shape(OP, msg),
        Error::InvalidArgument { msg, .. } => Error::arg(OP, msg),
        other => other,
    })?;
    if let Some(b) = bias {
        if b.dims() != [s.k] {
            return Err(Error::shape(
                OP,
                format!("bias must have shape [{}] (Cout), got {:?}", s.k, b.dims()),
            ));
        }
    }
    Ok(s)
}

/// Waits for the queued work when tracing, so the logged time is GPU time.
fn sync_if_traced(g: &Gpu) -> Result<()> {
    if crate::trace::enabled() {
        g.synchronize()?;
    }
    Ok(())
}

/// 2-D convolution of GPU tensors: `Tensor::conv2d`'s contract (see
/// crate::ops::conv) computed by cuDNN; the output is channels-last.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
) -> Result<Tensor> {
    let s = check(x, weight, bias, p)?;
    let dtype = x.dtype();
    let g = gpu_of(x)?;
    let xd = to_default_layout(x)?.detach();
    let wd = to_default_layout(weight)?.detach();
    let bd = bias
        .map(|b| to_default_layout(b).map(|b| b.detach()))
        .transpose()?;
    let algo = dnn::choose(g, Direction::Forward, &s, dtype, ptr(&xd)?, ptr(&wd)?)?;
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    crate::trace::op(OP, "forward", &format!("cudnn:{algo}"), &inputs, || {
        let y = if s.is_empty() {
            zeros(g, &s.y_dims(), dtype)?
        } else {
            let y = empty(g, &s.y_dims(), dtype)?;
            dnn::conv_forward(g, &s, dtype, ptr(&xd)?, ptr(&wd)?, ptr(&y)?)?;
            y
        };
        if let Some(b) = &bd {
            dnn::add_bias(g, dtype, s.y_dims(), ptr(b)?, ptr(&y)?)?;
        }
        sync_if_traced(g)?;
        let need_x = x.requires_grad();
        let need_w = weight.requires_grad();
        let need_b = bias.is_some_and(|b| b.requires_grad());
        let saved_x = need_w.then(|| xd.clone());
        let saved_w = need_x.then(|| wd.clone());
        let n_inputs = inputs.len();
        Ok(record(y, OP, &inputs, move |gy| {
            let mut grads = backward(&s, dtype, gy, saved_x, saved_w, need_b)?;
            grads.truncate(n_inputs);
            Ok(grads)
        }))
    })
}

/// [dx, dw, db] from dy (`gy`): dx when the weight was saved (x needs
/// grad), dw when x was saved, db when `need_b`.
fn backward(
    s: &ConvShape,
    dtype: DType,
    gy: &Tensor,
    saved_x: Option<Tensor>,
    saved_w: Option<Tensor>,
    need_b: bool,
) -> Result<Vec<Option<Tensor>>> {
    if gy.dims() != s.y_dims() {
        return Err(Error::shape(
            "conv2d backward",
            format!(
                "gradient of shape {:?} for an output of shape {:?}",
                gy.dims(),
                s.y_dims()
            ),
        ));
    }
    let g = gpu_of(gy)?;
    let gy = if gy.dtype() == dtype {
        gy.clone()
    } else {
        cast(gy, dtype)?
    };
    let dy = to_default_layout(&gy)?;
    let dy_ptr = ptr(&dy)?;
    let dx = saved_w
        .map(|w| -> Result<Tensor> {
            if s.is_empty() {
                return zeros(g, &s.x_dims(), dtype);
            }
            let algo = dnn::choose(g, Direction::BackwardData, s, dtype, ptr(&w)?, dy_ptr)?;
            crate::trace::op(
                "conv2d.backward_data",
                "backward",
                &format!("cudnn:{algo}"),
                &[&dy],
                || {
                    let dx = empty(g, &s.x_dims(), dtype)?;
                    dnn::conv_backward_data(g, s, dtype, ptr(&w)?, dy_ptr, ptr(&dx)?)?;
                    sync_if_traced(g)?;
                    Ok(dx)
                },
            )
        })
        .transpose()?;
    let dw = saved_x
        .map(|x| -> Result<Tensor> {
            if s.is_empty() {
                return zeros(g, &s.w_dims(), dtype);
            }
            let algo = dnn::choose(g, Direction::BackwardFilter, s, dtype, ptr(&x)?, dy_ptr)?;
            crate::trace::op(
                "conv2d.backward_filter",
                "backward",
                &format!("cudnn:{algo}"),
                &[&dy],
                || {
                    let dw = empty(g, &s.w_dims(), dtype)?;
                    dnn::conv_backward_filter(g, s, dtype, ptr(&x)?, dy_ptr, ptr(&dw)?)?;
                    sync_if_traced(g)?;
                    Ok(dw)
                },
            )
        })
        .transpose()?;
    // cuDNN 9's cudnnConvolutionBackwardBias refuses bf16 (measured on the
    // H100: CUDNN_STATUS_NOT_SUPPORTED), so db is our own per-channel sum.
    let db = need_b
        .then(|| dy.detach().sum_dims(&[0, 2, 3], false))
        .transpose()?;
    Ok(vec![dx, dw, db])
}
