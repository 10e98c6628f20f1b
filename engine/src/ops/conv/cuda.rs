//! Convolutions on the GPU through cuDNN (cuda::dnn), and the 1x1
//! stride-1 ones as cuBLASLt GEMMs (cuda::blas; which ones and how: see
//! `gemm.rs`).
//!
//! Everything stays channels-last: x, y, dx are NHWC and the weight and dw
//! KRSC, which is exactly the GPU default layout of those logical shapes,
//! so tensors in the default layout are passed to cuDNN as they are. A
//! transposed convolution's forward is cuDNN's backward-data of the
//! matching convolution.
//!
//! A GEMM follows the convolutions' precision and search switches, not
//! the matmul ones: TF32 only when `dnn::set_tf32` allows it, and a new
//! problem's algorithm timed when `dnn::set_benchmark` is on and
//! `dnn::set_deterministic` is off (on one stream cuBLAS gives the same
//! bits run to run for a given algorithm, but timing may pick another one
//! in another run; the heuristic's first choice is repeatable).

use super::gemm::{at, gemm_plan, pointwise_route, Direction, GemmPlan, Operand, Pointwise};
use super::{check_acc, Conv2dGeom, ConvOps};
use crate::autograd::accumulate;
use crate::backend::{unsupported, Cuda};
use crate::cuda::blas::{self, Activation, GemmParams, Options};
use crate::cuda::dnn::{self, ConvShape};
use crate::cuda::launch::traced_sync;
use crate::cuda::runtime::Gpu;
use crate::cuda::tensor::{contiguous, empty, gpu_of, ptr, to_default_layout, zeros};
use crate::layout::Layout;
use crate::{DType, Result, Tensor};

/// One of dnn's convolutions: (gpu, shape, dtype, in a, in b, out, beta).
type DnnConv =
    unsafe fn(&'static Gpu, &ConvShape, DType, u64, u64, u64, f32) -> Result<&'static str>;

/// [`gemm_plan`]'s GEMM when the 1x1 stride-1 convolutions run as GEMMs
/// ([`pointwise_route`]); None sends the call to cuDNN.
fn as_gemm(dir: Direction, g: &Conv2dGeom, inputs: [&Layout; 2]) -> Result<Option<GemmPlan>> {
    Ok(match pointwise_route()? {
        Pointwise::Gemm => gemm_plan(dir, g, inputs),
        Pointwise::Cudnn => None,
    })
}

/// Where a convolution's result goes: a new tensor, or added into a
/// gradient this op may write (`onto`, see [`writable`]).
enum Out {
    New([usize; 4]),
    Onto(Tensor),
}

/// Whether a result on `device` may be added into `acc` in place: a
/// tensor there in the GPU default layout that nothing else holds.
/// Otherwise the sum is computed out of place, as the autograd engine would.
fn writable(acc: &Tensor, device: crate::Device) -> bool {
    acc.device() == device && acc.layout().has_gpu_strides() && acc.is_sole_owner()
}

/// `f` on `a` and `b` into a new output of `dims` (zeros when the
/// convolution is empty), plus `bias` per channel; or added into the
/// tensor of [`Out::Onto`] (no bias then).
fn run(
    f: DnnConv,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    g: &Conv2dGeom,
    out: Out,
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
    let (out, beta) = match out {
        Out::New(dims) if s.is_empty() => (zeros(gpu, &dims, dtype)?, 0.0),
        Out::New(dims) => (empty(gpu, &dims, dtype)?, 0.0),
        Out::Onto(t) => (t, 1.0),
    };
    let dims: [usize; 4] = out.dims().try_into().expect("a 4-d output");
    if !s.is_empty() {
        let (a, b) = (to_default_layout(a)?, to_default_layout(b)?);
        // SAFETY: a, b and out are live tensors on gpu in the GPU default
        // layout (NHWC / KRSC, dense) with the dims `f` reads and writes
        // for `s` (the front-end checked the operands' shapes and dtypes
        // against `g`, and `s` matches `g`; an `Onto` output is a gradient
        // of the input the engine checked, and `writable`); out is used by
        // nothing else.
        let algo = unsafe { f(gpu, &s, dtype, ptr(&a)?, ptr(&b)?, ptr(&out)?, beta) }?;
        crate::trace::kernel(algo);
    }
    if let Some(bias) = bias {
        let bias = to_default_layout(bias)?;
        // SAFETY: bias is a dense [dims[1]] tensor (checked by the
        // front-end), out an NHWC tensor of `dims`, both dtype, on gpu.
        unsafe { dnn::add_bias(gpu, dtype, dims, ptr(&bias)?, ptr(&out)?) }?;
    }
    traced_sync(gpu)?;
    Ok(out)
}

/// `plan` on its two `inputs` (each tagged with the operand it is) into a
/// new output of `dims` in the default layout, with `bias` per output
/// channel added by cuBLASLt's BIAS epilogue; or added into the tensor of
/// [`Out::Onto`] (beta 1).
fn run_gemm(
    plan: &GemmPlan,
    inputs: [(Operand, &Tensor); 2],
    bias: Option<&Tensor>,
    out: Out,
) -> Result<Tensor> {
    let first = inputs[0].1;
    let dtype = first.dtype();
    dnn::data_type(dtype)?;
    let gpu = gpu_of(first)?;
    let tensor = |op: Operand| {
        inputs
            .iter()
            .find(|(o, _)| *o == op)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                crate::Error::arg(
                    "conv2d (cuBLASLt)",
                    format!("the plan reads {op:?}, not given"),
                )
            })
    };
    let (a, b) = (tensor(plan.a.0)?, tensor(plan.b.0)?);
    // cuBLASLt reads the bias contiguous and 16-byte aligned
    let bias = match bias {
        Some(b) if b.is_contiguous() && ptr(b)? % 16 == 0 => Some(b.clone()),
        Some(b) => Some(contiguous(b)?),
        None => None,
    };
    let (out, beta) = match out {
        Out::New(dims) => (empty(gpu, &dims, dtype)?, 0.0),
        Out::Onto(t) => (t, 1.0),
    };
    let params = GemmParams {
        dtype,
        a: at(plan.a.1, ptr(a)?),
        b: at(plan.b.1, ptr(b)?),
        d: at(plan.d, ptr(&out)?),
        batch: 1,
        alpha: 1.0,
        beta,
        bias: bias.as_ref().map(ptr).transpose()?,
        act: Activation::None,
    };
    // timed like cuDNN's Find, except under --deterministic: the timing may
    // pick another algorithm (other rounding) in another run
    let options = Options {
        tf32: dnn::tf32(),
        timed: dnn::benchmark() && !dnn::deterministic(),
    };
    // SAFETY: a and b are live GPU tensors in the default layout with the
    // dims gemm_plan checked, which the plan's matrices cover exactly (NHWC
    // / KRSC as row-major [rows, cols]); out is dense, of the plan's D
    // dims (new, or a `writable` gradient of that input), used by nothing
    // else; the bias, when given, is a
    // contiguous [n] tensor of dtype (the front-end checked its shape and
    // dtype); all live until the GEMM is queued, and the allocator only
    // hands their blocks to work queued after it.
    let algo = unsafe { blas::gemm_with(gpu, &params, options) }?;
    crate::trace::kernel(algo);
    traced_sync(gpu)?;
    drop(bias);
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
        if let Some(plan) = as_gemm(Direction::Forward, g, [x.layout(), w.layout()])? {
            return run_gemm(
                &plan,
                [(Operand::X, x), (Operand::W, w)],
                bias,
                Out::New(g.y_dims()),
            );
        }
        run(dnn::conv_forward, x, w, bias, g, Out::New(g.y_dims()))
    }

    /// Into `acc` with beta 1 (cuDNN's blend, cuBLASLt's C = D) when it is
    /// [`writable`]: the sum is rounded once, from f32.
    fn conv2d_backward_data(
        &self,
        dy: &Tensor,
        w: &Tensor,
        g: &Conv2dGeom,
        acc: Option<Tensor>,
    ) -> Result<Tensor> {
        check_acc(acc.as_ref(), dy, g)?;
        let (out, rest) = match acc {
            Some(a) if writable(&a, dy.device()) => (Out::Onto(a), None),
            a => (Out::New(g.x_dims()), a),
        };
        let dx = match as_gemm(Direction::BackwardData, g, [dy.layout(), w.layout()])? {
            Some(plan) => run_gemm(&plan, [(Operand::Dy, dy), (Operand::W, w)], None, out)?,
            None => run(dnn::conv_backward_data, w, dy, None, g, out)?,
        };
        accumulate(rest, dx)
    }

    fn conv2d_backward_filter(&self, x: &Tensor, dy: &Tensor, g: &Conv2dGeom) -> Result<Tensor> {
        if let Some(plan) = as_gemm(Direction::BackwardFilter, g, [x.layout(), dy.layout()])? {
            return run_gemm(
                &plan,
                [(Operand::X, x), (Operand::Dy, dy)],
                None,
                Out::New(g.w_dims()),
            );
        }
        run(
            dnn::conv_backward_filter,
            x,
            dy,
            None,
            g,
            Out::New(g.w_dims()),
        )
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
        // x plays the matching convolution's dy
        if let Some(plan) = as_gemm(Direction::BackwardData, g, [x.layout(), w.layout()])? {
            let out = Out::New(g.x_dims());
            return run_gemm(&plan, [(Operand::Dy, x), (Operand::W, w)], bias, out);
        }
        run(dnn::conv_backward_data, w, x, bias, g, Out::New(g.x_dims()))
    }
}
