//! Convolutions on the GPU through cuDNN (cuda::dnn), and the 1x1
//! stride-1 ones as cuBLASLt GEMMs (cuda::blas; which ones and how: see
//! `gemm.rs`) or on cuDNN, whichever was faster on the problem's first call
//! (`gemm::Pointwise`, [`auto_route`]).
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
use crate::{DType, Result, Tensor};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// One of dnn's convolutions: (gpu, shape, dtype, in a, in b, out, beta).
type DnnConv =
    unsafe fn(&'static Gpu, &ConvShape, DType, u64, u64, u64, f32) -> Result<&'static str>;

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

/// Direction `dir` of convolution `g` on its two `inputs`, each tagged
/// with the operand it is (cuDNN's `f` takes them in the order of
/// `dnn_args`), plus `bias`, into `out`: a 1x1 stride-1 one that a GEMM
/// reads in place on the route [`pointwise_route`] gives, any other on
/// cuDNN.
fn convolve(
    dir: Direction,
    f: DnnConv,
    g: &Conv2dGeom,
    inputs: [(Operand, &Tensor); 2],
    dnn_args: [&Tensor; 2],
    bias: Option<&Tensor>,
    out: Out,
) -> Result<Tensor> {
    let cudnn = |out| run(f, dnn_args[0], dnn_args[1], bias, g, out);
    let (a, b) = (inputs[0].1, inputs[1].1);
    let Some(plan) = gemm_plan(dir, g, [a.layout(), b.layout()]) else {
        return cudnn(out);
    };
    let gemm = |out| run_gemm(&plan, inputs, bias, out);
    let route = match pointwise_route()? {
        Pointwise::Auto => {
            let gpu = gpu_of(a)?;
            let key = RouteKey {
                gpu: gpu.ordinal,
                dir,
                geom: [g.n, g.h, g.w, g.cin, g.cout],
                dtype: a.dtype(),
                bias: bias.is_some(),
                onto: matches!(out, Out::Onto(_)),
                aligned: [ptr(a)? % 16 == 0, ptr(b)? % 16 == 0],
                api: dnn::api()?,
                rtc: dnn::rtc()?,
                tf32: dnn::tf32(),
            };
            auto_route(key, gpu, &out, &gemm, &cudnn)?
        }
        route => route,
    };
    match route {
        Pointwise::Cudnn => cudnn(out),
        _ => gemm(out),
    }
}

/// What [`Pointwise::Auto`]'s choice for a 1x1 stride-1 convolution
/// depends on: what both libraries key their own choices by (the operands'
/// addresses through their alignment, TF32 for f32), and the cuDNN API
/// and engines (`dnn::Rtc`) that compete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct RouteKey {
    gpu: usize,
    dir: Direction,
    /// n, h, w, cin, cout
    geom: [usize; 5],
    dtype: DType,
    bias: bool,
    /// added into a gradient (beta 1)
    onto: bool,
    /// each input's address a multiple of 16 bytes
    aligned: [bool; 2],
    api: dnn::Api,
    rtc: dnn::Rtc,
    tf32: bool,
}

/// [`Pointwise::Auto`]'s route for `key`: cached, else, when searches are
/// timed (`dnn::benchmark`, not `dnn::deterministic`), the faster of
/// `gemm` and `cudnn` on this call's inputs into a scratch output (each
/// after one untimed run, in which its library makes its own choice),
/// recorded in engine::profile as a "conv route" search; else the GEMM.
fn auto_route(
    key: RouteKey,
    gpu: &'static Gpu,
    out: &Out,
    gemm: &dyn Fn(Out) -> Result<Tensor>,
    cudnn: &dyn Fn(Out) -> Result<Tensor>,
) -> Result<Pointwise> {
    static CHOSEN: LazyLock<Mutex<HashMap<RouteKey, Pointwise>>> = LazyLock::new(Default::default);
    let chosen = || CHOSEN.lock().unwrap_or_else(|e| e.into_inner());
    {
        let chosen = chosen();
        if let Some(route) = chosen.get(&key) {
            return Ok(*route);
        }
        if !dnn::benchmark() || dnn::deterministic() || chosen.len() >= dnn::FIND_LIMIT {
            return Ok(Pointwise::Gemm);
        }
    }
    gpu.no_wait_in_capture("choosing between cuBLASLt and cuDNN for a new 1x1 convolution")?;
    let t0 = std::time::Instant::now();
    // the timed runs' output: new ones, or added into a scratch (zeros,
    // not stale bits) in place of the gradient
    let fresh: Box<dyn Fn() -> Out> = match out {
        Out::New(dims) => {
            let dims = *dims;
            Box::new(move || Out::New(dims))
        }
        Out::Onto(acc) => {
            let scratch = zeros(gpu, acc.dims(), acc.dtype())?;
            Box::new(move || Out::Onto(scratch.clone()))
        }
    };
    let timed: Vec<(Pointwise, &str, Result<f64>)> = vec![
        (
            Pointwise::Gemm,
            "cuBLASLt GEMM",
            dnn::time_ms(gpu, || gemm(fresh()).map(drop)),
        ),
        (
            Pointwise::Cudnn,
            "cuDNN",
            dnn::time_ms(gpu, || cudnn(fresh()).map(drop)),
        ),
    ];
    let best = timed
        .iter()
        .filter_map(|(route, _, ms)| ms.as_ref().ok().map(|ms| (*route, *ms)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let mut candidates: Vec<crate::profile::Candidate> = timed
        .into_iter()
        .map(|(_, name, ms)| crate::profile::Candidate {
            algo: match &ms {
                Ok(_) => name.to_string(),
                Err(e) => format!("{name}: failed: {e}"),
            },
            status: u32::from(ms.is_err()),
            ms: ms.unwrap_or(f64::NAN),
            workspace: 0,
        })
        .collect();
    candidates.sort_by(|a, b| a.ms.total_cmp(&b.ms));
    // both failed: the GEMM runs and reports its own error, nothing cached
    let route = best.map_or(Pointwise::Gemm, |(route, _)| route);
    crate::profile::search(crate::profile::Search {
        lib: "conv route",
        problem: format!(
            "{:?} 1x1 n{} {}x{} {}->{} {:?}{}{}{} aligned {:?} cuDNN API {:?} rtc {:?}",
            key.dir,
            key.geom[0],
            key.geom[1],
            key.geom[2],
            key.geom[3],
            key.geom[4],
            key.dtype,
            if key.bias { " +bias" } else { "" },
            if key.onto { " beta 1" } else { "" },
            if key.tf32 { " tf32" } else { "" },
            key.aligned,
            key.api,
            key.rtc
        ),
        method: "timed: cuBLASLt's and cuDNN's choices".into(),
        chosen: format!("{route:?}"),
        workspace: 0,
        ms: t0.elapsed().as_secs_f64() * 1e3,
        candidates,
    });
    if best.is_some() {
        chosen().insert(key, route);
    }
    Ok(route)
}

impl ConvOps for Cuda {
    fn conv2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        g: &Conv2dGeom,
    ) -> Result<Tensor> {
        let inputs = [(Operand::X, x), (Operand::W, w)];
        let out = Out::New(g.y_dims());
        convolve(
            Direction::Forward,
            dnn::conv_forward,
            g,
            inputs,
            [x, w],
            bias,
            out,
        )
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
        let inputs = [(Operand::Dy, dy), (Operand::W, w)];
        let f = dnn::conv_backward_data;
        let dx = convolve(Direction::BackwardData, f, g, inputs, [w, dy], None, out)?;
        accumulate(rest, dx)
    }

    fn conv2d_backward_filter(&self, x: &Tensor, dy: &Tensor, g: &Conv2dGeom) -> Result<Tensor> {
        let inputs = [(Operand::X, x), (Operand::Dy, dy)];
        let (f, out) = (dnn::conv_backward_filter, Out::New(g.w_dims()));
        convolve(Direction::BackwardFilter, f, g, inputs, [x, dy], None, out)
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
        let inputs = [(Operand::Dy, x), (Operand::W, w)];
        let (f, out) = (dnn::conv_backward_data, Out::New(g.x_dims()));
        convolve(Direction::BackwardData, f, g, inputs, [w, x], bias, out)
    }
}
