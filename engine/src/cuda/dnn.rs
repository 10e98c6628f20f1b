//! cuDNN convolutions: forward, backward-data and backward-filter over raw
//! device pointers, plus the bias add and bias gradient of a conv layer.
//!
//! Layout: every tensor is NHWC in memory (our GPU 4-D convention, see
//! cuda::tensor) and every filter KRSC ([Cout, kh, kw, Cin/groups] in
//! memory, logical [Cout, Cin/groups, kh, kw]), for every dtype, so nothing
//! is ever transposed around a conv.
//!
//! Precision: f32, f16 and bf16 data all accumulate in f32. f16/bf16 use
//! tensor cores. f32 uses plain FMA kernels unless [`set_tf32`] allows TF32:
//! on Ampere and later cuDNN's DEFAULT_MATH may silently pick TF32 kernels
//! (10-bit mantissa), which would break the 1e-5 parity of f32 with the CPU,
//! so strict f32 asks for CUDNN_FMA_MATH and only accepts algorithms that
//! report it.
//!
//! Algorithm choice is PyTorch's `cudnn.benchmark`: the first call for a
//! key (shape, dtype, math, direction, beta, operand alignments, API)
//! times the candidates on the real inputs and a scratch output and
//! caches the fastest that fits the workspace budget. Two APIs offer
//! candidates ([`Api`], `SLMLP_CUDNN_API`, default auto):
//! - the legacy (v7-style) calls: cudnnFind*AlgorithmEx times every
//!   algorithm; if Find fails, [`FIND_LIMIT`] keys were already timed or
//!   [`set_benchmark`] turned the timing off, the heuristic
//!   cudnnGet*Algorithm_v7 list is used instead;
//! - the graph (backend) API (`dnn_graph`, what cuDNN's frontend builds on
//!   for PyTorch): the heuristics' top [`GRAPH_CANDIDATES`] execution
//!   plans, timed here with CUDA events, as is the legacy winner, so the
//!   two compare alike; engines compiled at run time only when no other
//!   gives a plan ([`Rtc`], `SLMLP_CUDNN_RTC`).
//!
//! With [`set_deterministic`] (`--deterministic`) only algorithms cuDNN
//! reports as deterministic (the perf results' determinism flag, the
//! engines' NONDETERMINISTIC note) are candidates, so repeated runs give
//! the same bits (PyTorch's `cudnn.deterministic = True`). Workspaces come
//! from the caching allocator on every call (with one stream, a freed block
//! is only reused by later work, and the allocator keeps it warm). Every
//! choice, with the timings, is recorded in engine::profile.
//!
//! cudarc 0.19's raw cuDNN bindings (sys) cover both APIs; cuDNN 9 ships
//! both. One handle per GPU, created on first use and bound to the GPU's one
//! stream; it is not thread-safe, so every call holds its lock.

use super::blas::TIMED_RUNS;
use super::dnn_graph::{self as graph, Numerics, Plan, Problem};
use super::runtime::Gpu;
use crate::layout::Conv2dParams;
use crate::setting::Switch;
use crate::{DType, Error, Result};
use cudarc::cudnn::result::CudnnError;
use cudarc::cudnn::sys;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

const OP: &str = "conv2d (cuDNN)";

// ---------------------------------------------------------------------------
// Precision switches and dtype mapping

static TF32: AtomicBool = AtomicBool::new(false);

/// Allows (true) or forbids (false, the default) TF32 tensor-core kernels
/// for f32 convolutions. Takes effect on the next call (the algorithm cache
/// is keyed by math type).
pub fn set_tf32(on: bool) {
    TF32.store(on, Ordering::Relaxed);
}

/// Whether f32 convolutions may use TF32.
pub fn tf32() -> bool {
    TF32.load(Ordering::Relaxed)
}

static DETERMINISTIC: AtomicBool = AtomicBool::new(false);

/// Restricts (true) convolutions to algorithms cuDNN reports deterministic,
/// or allows the fastest of any (false, the default). Takes effect on the
/// next call (the algorithm cache is keyed by it).
pub fn set_deterministic(on: bool) {
    DETERMINISTIC.store(on, Ordering::Relaxed);
}

/// Whether only deterministic convolution algorithms are used.
pub fn deterministic() -> bool {
    DETERMINISTIC.load(Ordering::Relaxed)
}

static BENCHMARK: AtomicBool = AtomicBool::new(true);

/// Times the candidates of each new key with cudnnFind (true, the default:
/// PyTorch's `cudnn.benchmark = True`) or takes cuDNN's heuristic choice
/// without timing (false: PyTorch's default, which torchvision's detection
/// references keep because the mask head sees a new batch size almost
/// every iteration). Applies to keys not chosen yet.
pub fn set_benchmark(on: bool) {
    BENCHMARK.store(on, Ordering::Relaxed);
}

/// Whether new convolution keys are timed (see [`set_benchmark`]; the 1x1
/// convolutions run as cuBLASLt GEMMs follow it too).
pub fn benchmark() -> bool {
    BENCHMARK.load(Ordering::Relaxed)
}

/// How many algorithm keys a GPU times with cudnnFind before it takes
/// cuDNN's heuristic choice (Get_v7, no timing) for new ones: a model with
/// fixed shapes (a ResNet-50 step has about 70 keys) never reaches it, and
/// a detector fed images of ever new sizes (about 200 keys per size) stops
/// paying a search per image after a few sizes.
pub const FIND_LIMIT: usize = 1024;

/// Which of cuDNN's two APIs runs a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// Timed (benchmark mode): the faster of the legacy Find winner and
    /// the graph API's top [`GRAPH_CANDIDATES`] plans, timed alike.
    /// Untimed: the legacy heuristic, as with [`Api::Legacy`].
    Auto,
    /// The legacy (v7-style) calls only.
    Legacy,
    /// The graph (backend) API only (`dnn_graph`): its timed plans, or
    /// its heuristics' first usable plan when not timing.
    Graph,
}

impl Api {
    /// "auto", "legacy" or "graph" (`SLMLP_CUDNN_API`).
    pub fn parse(v: &str) -> Result<Api> {
        API.parse(v).map_err(|msg| Error::arg(OP, msg))
    }
}

/// `SLMLP_CUDNN_API`, default auto.
static API: Switch<Api> = Switch::new(
    "SLMLP_CUDNN_API",
    &[
        ("auto", Api::Auto),
        ("legacy", Api::Legacy),
        ("graph", Api::Graph),
    ],
);

/// Chooses the cuDNN API for keys not chosen yet (overrides
/// `SLMLP_CUDNN_API`; the cache is keyed by it).
pub fn set_api(api: Api) {
    API.set(api);
}

/// The cuDNN API new keys use: [`set_api`]'s, else `SLMLP_CUDNN_API`'s,
/// else [`Api::Auto`]; an error for an unknown `SLMLP_CUDNN_API`.
pub fn api() -> Result<Api> {
    API.get().map_err(|e| Error::arg(OP, e))
}

/// Whether the graph API may build plans from engines cuDNN compiles at
/// run time (behaviour note RUNTIME_COMPILATION). Finalising such a plan
/// compiles a kernel for the shape, which takes 0.1-2 s per plan and
/// would make the first step of a ResNet-50 (about 70 keys) spend minutes
/// searching; PyTorch's cuDNN path leaves them out by default since
/// late 2025.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rtc {
    /// Only when no engine built in to cuDNN gives a usable plan (the
    /// default), so that a shape only those serve still runs.
    Fallback,
    /// As any other engine, in the heuristics' order.
    Any,
}

/// `SLMLP_CUDNN_RTC`, default fallback.
static RTC: Switch<Rtc> = Switch::new(
    "SLMLP_CUDNN_RTC",
    &[("fallback", Rtc::Fallback), ("any", Rtc::Any)],
);

/// Whether runtime-compiled engines compete, for keys not chosen yet
/// (overrides `SLMLP_CUDNN_RTC`; the cache is keyed by it).
pub fn set_rtc(rtc: Rtc) {
    RTC.set(rtc);
}

/// [`set_rtc`]'s choice, else `SLMLP_CUDNN_RTC`'s, else [`Rtc::Fallback`];
/// an error for an unknown `SLMLP_CUDNN_RTC`.
pub fn rtc() -> Result<Rtc> {
    RTC.get().map_err(|e| Error::arg(OP, e))
}

/// Sets [`Rtc`] until dropped, then restores it: for a check that runs
/// the runtime-compiled engines on purpose.
pub fn scoped_rtc(rtc: Rtc) -> crate::setting::Scoped<Rtc> {
    RTC.scoped(rtc)
}

/// How long a search may spend building the graph API's plans once it
/// has one (see `dnn_graph::plans`).
pub const GRAPH_SEARCH_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// Sets the API and the benchmark mode until dropped, then restores both:
/// for a check that runs one route on purpose (the GPU parity cases).
pub struct Scoped {
    _api: crate::setting::Scoped<Api>,
    benchmark: bool,
}

/// See [`Scoped`].
pub fn scoped(api: Api, benchmark: bool) -> Scoped {
    let prev = Scoped {
        _api: API.scoped(api),
        benchmark: BENCHMARK.load(Ordering::Relaxed),
    };
    set_benchmark(benchmark);
    prev
}

impl Drop for Scoped {
    fn drop(&mut self) {
        set_benchmark(self.benchmark);
    }
}

/// How many of the graph API's plans (in its heuristics' order) a timed
/// search runs; each runs once and then [`TIMED_RUNS`] times.
pub const GRAPH_CANDIDATES: usize = 8;

/// cudnnDeterminism_t's CUDNN_DETERMINISTIC in the perf results.
const CUDNN_DETERMINISTIC: u32 = 1;

/// cuDNN's storage type for a tensor dtype (f32, f16, bf16 only).
pub fn data_type(dtype: DType) -> Result<sys::cudnnDataType_t> {
    match dtype {
        DType::F32 => Ok(sys::cudnnDataType_t::CUDNN_DATA_FLOAT),
        DType::F16 => Ok(sys::cudnnDataType_t::CUDNN_DATA_HALF),
        DType::BF16 => Ok(sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16),
        other => Err(Error::dtype(OP, "f32, f16 or bf16 on the GPU", other)),
    }
}

/// The accumulation type: f32 for every supported dtype (f16/bf16 as
/// cuDNN's "pseudo half" configs, which round once at the end).
pub fn compute_type(dtype: DType) -> Result<sys::cudnnDataType_t> {
    data_type(dtype).map(|_| sys::cudnnDataType_t::CUDNN_DATA_FLOAT)
}

/// The math type requested on the convolution descriptor.
pub fn math_type(dtype: DType, tf32: bool) -> Result<sys::cudnnMathType_t> {
    use sys::cudnnMathType_t::*;
    Ok(match dtype {
        DType::F16 | DType::BF16 => CUDNN_TENSOR_OP_MATH,
        // DEFAULT_MATH lets cuDNN use TF32 on Ampere+; FMA_MATH forbids it.
        DType::F32 if tf32 => CUDNN_DEFAULT_MATH,
        DType::F32 => CUDNN_FMA_MATH,
        other => return Err(Error::dtype(OP, "f32, f16 or bf16 on the GPU", other)),
    })
}

/// Whether an algorithm reporting math type `reported` may run for a
/// descriptor that asked for `requested`: strict f32 (FMA) must stay FMA;
/// any other request accepts whatever cuDNN found (tensor-op requests may
/// legitimately come back as default math for small shapes).
pub fn math_accepted(requested: sys::cudnnMathType_t, reported: sys::cudnnMathType_t) -> bool {
    use sys::cudnnMathType_t::*;
    requested != CUDNN_FMA_MATH || reported == CUDNN_FMA_MATH
}

fn math_from_raw(raw: u32) -> Option<sys::cudnnMathType_t> {
    use sys::cudnnMathType_t::*;
    Some(match raw {
        0 => CUDNN_DEFAULT_MATH,
        1 => CUDNN_TENSOR_OP_MATH,
        2 => CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION,
        3 => CUDNN_FMA_MATH,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Shapes

/// The geometry of one 2-D convolution: input [n, c, h, w], filter
/// [k, c/groups, r, s], output [n, k, oh, ow] (logical NCHW dims; memory is
/// NHWC / KRSC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub r: usize,
    pub s: usize,
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

/// cuDNN's legacy descriptors hold at most 2^31 - 1 elements per tensor.
const MAX_ELEMS: usize = i32::MAX as usize;

impl ConvShape {
    /// The shape of `x` [n, c, h, w] convolved with a filter [k, c/groups,
    /// r, s] under `p` (`Conv2dParams::output_hw`, which errors on bad
    /// geometry), or an error on a size cuDNN cannot address.
    pub fn new(x: [usize; 4], filter: [usize; 4], p: Conv2dParams) -> Result<ConvShape> {
        let [n, c, h, w] = x;
        let [k, _, r, s] = filter;
        let [oh, ow] = p.output_hw(OP, x, filter)?;
        let shape = ConvShape {
            n,
            c,
            h,
            w,
            k,
            r,
            s,
            stride: p.stride,
            padding: p.padding,
            dilation: p.dilation,
            groups: p.groups,
            oh,
            ow,
        };
        for (what, dims) in [
            ("input", shape.x_dims()),
            ("weight", shape.w_dims()),
            ("output", shape.y_dims()),
        ] {
            let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if numel.is_none_or(|e| e > MAX_ELEMS) {
                return Err(Error::arg(
                    OP,
                    format!("{what} {dims:?} has more than 2^31 - 1 elements, cuDNN's limit per tensor; split the batch"),
                ));
            }
        }
        let params = [p.stride, p.padding, p.dilation].concat();
        if params.iter().chain(&[p.groups]).any(|&v| v > MAX_ELEMS) {
            return Err(Error::arg(
                OP,
                format!("{p:?} does not fit cuDNN's int parameters"),
            ));
        }
        Ok(shape)
    }

    /// Input dims [n, c, h, w].
    pub fn x_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    /// Filter dims [k, c/groups, r, s].
    pub fn w_dims(&self) -> [usize; 4] {
        [self.k, self.c / self.groups, self.r, self.s]
    }
    /// Output dims [n, k, oh, ow].
    pub fn y_dims(&self) -> [usize; 4] {
        [self.n, self.k, self.oh, self.ow]
    }
    /// Whether any of input, filter or output is empty (cuDNN rejects
    /// zero-sized descriptors; the caller handles these without it).
    pub fn is_empty(&self) -> bool {
        [self.x_dims(), self.w_dims(), self.y_dims()]
            .iter()
            .any(|d| d.contains(&0))
    }
}

/// Element strides of an NHWC tensor with logical dims [n, c, h, w], in
/// logical order: what cuDNN's CUDNN_TENSOR_NHWC format implies, and what
/// our GPU tensors must have for a pointer to be passed as is.
pub fn nhwc_strides([_, c, h, w]: [usize; 4]) -> [usize; 4] {
    [h * w * c, 1, w * c, c]
}

fn c_dims(dims: [usize; 4]) -> Result<[c_int; 4]> {
    let mut out = [0; 4];
    for (o, &d) in out.iter_mut().zip(&dims) {
        *o = c_int::try_from(d)
            .map_err(|_| Error::arg(OP, format!("dims {dims:?} do not fit cuDNN's int")))?;
    }
    Ok(out)
}

fn c_int_of(v: usize) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| Error::arg(OP, format!("{v} does not fit cuDNN's int")))
}

// ---------------------------------------------------------------------------
// Algorithms and their cache

/// Which of the three convolution computations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// y = conv(x, w)
    Forward,
    /// dx from dy and w
    BackwardData,
    /// dw from x and dy
    BackwardFilter,
}

/// A cuDNN algorithm of one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    Fwd(sys::cudnnConvolutionFwdAlgo_t),
    BwdData(sys::cudnnConvolutionBwdDataAlgo_t),
    BwdFilter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

impl Algo {
    /// The algorithm numbered `raw` in `dir`'s enum; None for the COUNT
    /// sentinel and values this binding does not know.
    pub fn from_raw(dir: Direction, raw: u32) -> Option<Algo> {
        use sys::cudnnConvolutionBwdDataAlgo_t as D;
        use sys::cudnnConvolutionBwdFilterAlgo_t as F;
        use sys::cudnnConvolutionFwdAlgo_t as Y;
        Some(match dir {
            Direction::Forward => Algo::Fwd(match raw {
                0 => Y::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                1 => Y::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                2 => Y::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
                3 => Y::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
                4 => Y::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
                5 => Y::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
                6 => Y::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
                7 => Y::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
                _ => return None,
            }),
            Direction::BackwardData => Algo::BwdData(match raw {
                0 => D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
                1 => D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                2 => D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
                3 => D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
                4 => D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
                5 => D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
                _ => return None,
            }),
            Direction::BackwardFilter => Algo::BwdFilter(match raw {
                0 => F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
                1 => F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
                2 => F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
                3 => F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
                4 => F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
                5 => F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
                6 => F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
                _ => return None,
            }),
        })
    }

    /// cuDNN's number for the algorithm in its direction's enum.
    pub fn id(&self) -> u32 {
        match *self {
            Algo::Fwd(a) => a as u32,
            Algo::BwdData(a) => a as u32,
            Algo::BwdFilter(a) => a as u32,
        }
    }

    /// Short name for the trace, e.g. "fwd_implicit_precomp_gemm".
    pub fn name(&self) -> &'static str {
        use sys::cudnnConvolutionBwdDataAlgo_t as D;
        use sys::cudnnConvolutionBwdFilterAlgo_t as F;
        use sys::cudnnConvolutionFwdAlgo_t as Y;
        match self {
            Algo::Fwd(a) => match a {
                Y::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM => "fwd_implicit_gemm",
                Y::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM => "fwd_implicit_precomp_gemm",
                Y::CUDNN_CONVOLUTION_FWD_ALGO_GEMM => "fwd_gemm",
                Y::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT => "fwd_direct",
                Y::CUDNN_CONVOLUTION_FWD_ALGO_FFT => "fwd_fft",
                Y::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING => "fwd_fft_tiling",
                Y::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD => "fwd_winograd",
                Y::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED => "fwd_winograd_nonfused",
                Y::CUDNN_CONVOLUTION_FWD_ALGO_COUNT => "fwd_invalid",
            },
            Algo::BwdData(a) => match a {
                D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 => "bwd_data_0",
                D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1 => "bwd_data_1",
                D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT => "bwd_data_fft",
                D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING => "bwd_data_fft_tiling",
                D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD => "bwd_data_winograd",
                D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED => {
                    "bwd_data_winograd_nonfused"
                }
                D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT => "bwd_data_invalid",
            },
            Algo::BwdFilter(a) => match a {
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 => "bwd_filter_0",
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 => "bwd_filter_1",
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT => "bwd_filter_fft",
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3 => "bwd_filter_3",
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD => "bwd_filter_winograd",
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED => {
                    "bwd_filter_winograd_nonfused"
                }
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING => "bwd_filter_fft_tiling",
                F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT => "bwd_filter_invalid",
            },
        }
    }
}

/// What the algorithm cache is keyed by: everything that changes which
/// kernels are valid or fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AlgoKey {
    pub shape: ConvShape,
    pub data: sys::cudnnDataType_t,
    pub math: sys::cudnnMathType_t,
    pub dir: Direction,
    /// Only deterministic algorithms (`set_deterministic`).
    pub deterministic: bool,
}

impl AlgoKey {
    pub fn new(dir: Direction, shape: &ConvShape, dtype: DType) -> Result<AlgoKey> {
        Ok(AlgoKey {
            shape: *shape,
            data: data_type(dtype)?,
            math: math_type(dtype, tf32())?,
            dir,
            deterministic: deterministic(),
        })
    }
}

/// The cached choice for a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chosen {
    pub algo: Algo,
    /// The math type the descriptor is set to when running it.
    pub math: sys::cudnnMathType_t,
    /// Workspace bytes it needs.
    pub workspace: usize,
}

/// One entry of cuDNN's perf results, mirrored with plain integers: the
/// sys structs hold Rust enums, and a value cuDNN writes that the binding
/// does not list (a newer algo or status) would be undefined behaviour to
/// read through them. Same C layout as cudnnConvolution*AlgoPerf_t.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Perf {
    pub algo: u32,
    pub status: u32,
    pub time: f32,
    pub memory: usize,
    pub determinism: u32,
    pub math_type: u32,
    pub reserved: [c_int; 3],
}

/// Room for every algorithm cuDNN can list (the enums have at most 8; a
/// few more in case an algorithm is listed once per math type).
const MAX_PERFS: usize = 16;

/// The usable candidates among `perfs` (cuDNN's order: fastest first for
/// Find, best guess first for Get_v7): status success, a known algorithm,
/// an accepted math type, at most `cap` workspace bytes and, when
/// `deterministic`, cuDNN's deterministic flag.
pub fn candidates(
    dir: Direction,
    perfs: &[Perf],
    requested: sys::cudnnMathType_t,
    cap: usize,
    deterministic: bool,
) -> Vec<Chosen> {
    perfs
        .iter()
        .filter(|p| p.status == 0 && p.memory <= cap)
        .filter(|p| !deterministic || p.determinism == CUDNN_DETERMINISTIC)
        .filter_map(|p| {
            let algo = Algo::from_raw(dir, p.algo)?;
            let math = math_from_raw(p.math_type)?;
            math_accepted(requested, math).then_some(Chosen {
                algo,
                math,
                workspace: p.memory,
            })
        })
        .collect()
}

/// Upper bound of the workspace an algorithm may use: half of what is free
/// (on the device plus cached in the allocator), at most 1 GiB, so that a
/// fast but memory-hungry algorithm cannot starve the activations.
pub fn workspace_cap(device_free: usize, cached_free: usize) -> usize {
    const LIMIT: usize = 1 << 30;
    (device_free.saturating_add(cached_free) / 2).min(LIMIT)
}

// ---------------------------------------------------------------------------
// Handle, errors and descriptors

fn cudnn_err(what: &str, detail: impl std::fmt::Display, e: CudnnError) -> Error {
    Error::arg(OP, format!("{what} failed for {detail}: {:?}", e.0))
}

/// Every cuDNN entry point used here: looked up once when the handle is
/// created so a library without one fails with a message, not cudarc's
/// panic on a missing symbol.
const SYMBOLS: [&str; 27] = [
    "cudnnCreate",
    "cudnnSetStream",
    "cudnnCreateTensorDescriptor",
    "cudnnSetTensor4dDescriptor",
    "cudnnDestroyTensorDescriptor",
    "cudnnCreateFilterDescriptor",
    "cudnnSetFilter4dDescriptor",
    "cudnnDestroyFilterDescriptor",
    "cudnnCreateConvolutionDescriptor",
    "cudnnSetConvolution2dDescriptor",
    "cudnnSetConvolutionGroupCount",
    "cudnnSetConvolutionMathType",
    "cudnnDestroyConvolutionDescriptor",
    "cudnnGetConvolution2dForwardOutputDim",
    "cudnnFindConvolutionForwardAlgorithmEx",
    "cudnnFindConvolutionBackwardDataAlgorithmEx",
    "cudnnFindConvolutionBackwardFilterAlgorithmEx",
    "cudnnGetConvolutionForwardAlgorithm_v7",
    "cudnnGetConvolutionBackwardDataAlgorithm_v7",
    "cudnnGetConvolutionBackwardFilterAlgorithm_v7",
    "cudnnGetConvolutionForwardWorkspaceSize",
    "cudnnGetConvolutionBackwardDataWorkspaceSize",
    "cudnnGetConvolutionBackwardFilterWorkspaceSize",
    "cudnnConvolutionForward",
    "cudnnConvolutionBackwardData",
    "cudnnConvolutionBackwardFilter",
    "cudnnAddTensor",
];

/// What a convolution's route is cached by: the algorithm key, the API
/// asked for and whether runtime-compiled engines compete, beta (the graph API fixes it in the plan) and the byte
/// alignments of x, w and y (`dnn_graph::alignment`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct RouteKey {
    algo: AlgoKey,
    api: Api,
    rtc: Rtc,
    beta_bits: u32,
    align: [u8; 3],
}

/// How a key's convolution runs.
#[derive(Clone)]
enum Route {
    Legacy(Chosen),
    Graph(Arc<Plan>),
}

/// One GPU's cuDNN state.
struct Dnn {
    handle: sys::cudnnHandle_t,
    routes: HashMap<RouteKey, Route>,
    /// Keys timed so far (see [`FIND_LIMIT`]).
    searched: usize,
}

// SAFETY: the handle is only used under the STATES lock, by one thread at
// a time, with the GPU's context bound (cuDNN handles may move between
// threads; they must not be used concurrently).
unsafe impl Send for Dnn {}

impl Dnn {
    fn open(g: &Gpu) -> Result<Dnn> {
        g.bind()?;
        // SAFETY: the probe that opened this Gpu found libcudnn; get() only
        // looks the names up.
        let lib = unsafe { sys::culib() };
        let missing: Vec<&str> = SYMBOLS
            .iter()
            .copied()
            .filter(|name| unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err())
            .collect();
        if !missing.is_empty() {
            return Err(Error::DeviceUnavailable {
                device: g.device(),
                msg: format!(
                    "the loaded libcudnn lacks {missing:?}; install cuDNN 9 (pip nvidia-cudnn-cu13) and put its lib folder on LD_LIBRARY_PATH"
                ),
            });
        }
        let mut handle: sys::cudnnHandle_t = std::ptr::null_mut();
        // SAFETY: writes one handle; the context is current.
        unsafe { sys::cudnnCreate(&mut handle) }
            .result()
            .map_err(|e| cudnn_err("cudnnCreate", g.device(), e))?;
        // SAFETY: both handles are live; cudarc's CUstream and cuDNN's
        // cudaStream_t are the same opaque pointer.
        let set =
            unsafe { sys::cudnnSetStream(handle, g.cu_stream() as sys::cudaStream_t) }.result();
        if let Err(e) = set {
            // SAFETY: created above, not used elsewhere.
            let _ = unsafe { sys::cudnnDestroy(handle) };
            return Err(cudnn_err("cudnnSetStream", g.device(), e));
        }
        Ok(Dnn {
            handle,
            routes: HashMap::new(),
            searched: 0,
        })
    }
}

static STATES: Mutex<Vec<(usize, Dnn)>> = Mutex::new(Vec::new());

/// Runs `f` with GPU `g`'s cuDNN state (created on first use), holding its
/// lock and with g's context bound.
fn with_dnn<R>(g: &'static Gpu, f: impl FnOnce(&mut Dnn) -> Result<R>) -> Result<R> {
    let mut states = STATES
        .lock()
        .map_err(|_| Error::arg(OP, "the cuDNN state lock is poisoned by an earlier panic"))?;
    g.bind()?;
    let i = match states.iter().position(|(o, _)| *o == g.ordinal) {
        Some(i) => i,
        None => {
            states.push((g.ordinal, Dnn::open(g)?));
            states.len() - 1
        }
    };
    f(&mut states[i].1)
}

/// A 4-D descriptor of logical dims `dims` for `data`: made by `create`
/// (named `names[0]`), owned by `wrap`'s value (whose Drop destroys it,
/// also when setting it fails) and set by `set` (`names[1]`), which gets
/// the raw descriptor and the dims as C ints.
fn desc4<T, D>(
    names: [&str; 2],
    data: sys::cudnnDataType_t,
    dims: [usize; 4],
    create: unsafe fn(*mut *mut T) -> sys::cudnnStatus_t,
    wrap: fn(*mut T) -> D,
    set: impl FnOnce(*mut T, [c_int; 4]) -> sys::cudnnStatus_t,
) -> Result<D> {
    let cd = c_dims(dims)?;
    let mut raw = std::ptr::null_mut();
    // SAFETY: writes one descriptor.
    unsafe { create(&mut raw) }
        .result()
        .map_err(|e| cudnn_err(names[0], format!("{dims:?}"), e))?;
    let d = wrap(raw);
    set(raw, cd)
        .result()
        .map_err(|e| cudnn_err(names[1], format!("{dims:?} {data:?}"), e))?;
    Ok(d)
}

struct TensorDesc(sys::cudnnTensorDescriptor_t);

impl TensorDesc {
    /// An NHWC tensor descriptor of logical dims [n, c, h, w].
    fn nhwc(data: sys::cudnnDataType_t, dims: [usize; 4]) -> Result<TensorDesc> {
        let names = [
            "cudnnCreateTensorDescriptor",
            "cudnnSetTensor4dDescriptor (NHWC)",
        ];
        let create = sys::cudnnCreateTensorDescriptor;
        desc4(names, data, dims, create, TensorDesc, |d, [n, c, h, w]| {
            let nhwc = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC;
            // SAFETY: d was just created and is live.
            unsafe { sys::cudnnSetTensor4dDescriptor(d, nhwc, data, n, c, h, w) }
        })
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateTensorDescriptor, destroyed once.
        let _ = unsafe { sys::cudnnDestroyTensorDescriptor(self.0) };
    }
}

struct FilterDesc(sys::cudnnFilterDescriptor_t);

impl FilterDesc {
    /// A KRSC filter descriptor of logical dims [k, c/groups, r, s].
    fn krsc(data: sys::cudnnDataType_t, dims: [usize; 4]) -> Result<FilterDesc> {
        let names = [
            "cudnnCreateFilterDescriptor",
            "cudnnSetFilter4dDescriptor (KRSC)",
        ];
        let create = sys::cudnnCreateFilterDescriptor;
        desc4(names, data, dims, create, FilterDesc, |d, [k, c, r, s]| {
            let nhwc = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC;
            // SAFETY: d was just created and is live. Note the argument
            // order: dtype before format.
            unsafe { sys::cudnnSetFilter4dDescriptor(d, data, nhwc, k, c, r, s) }
        })
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateFilterDescriptor, destroyed once.
        let _ = unsafe { sys::cudnnDestroyFilterDescriptor(self.0) };
    }
}

struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

impl ConvDesc {
    fn new(
        s: &ConvShape,
        compute: sys::cudnnDataType_t,
        math: sys::cudnnMathType_t,
    ) -> Result<ConvDesc> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: writes one descriptor.
        unsafe { sys::cudnnCreateConvolutionDescriptor(&mut raw) }
            .result()
            .map_err(|e| cudnn_err("cudnnCreateConvolutionDescriptor", s, e))?;
        let d = ConvDesc(raw);
        // SAFETY: d is live (for all three calls).
        unsafe {
            sys::cudnnSetConvolution2dDescriptor(
                d.0,
                c_int_of(s.padding[0])?,
                c_int_of(s.padding[1])?,
                c_int_of(s.stride[0])?,
                c_int_of(s.stride[1])?,
                c_int_of(s.dilation[0])?,
                c_int_of(s.dilation[1])?,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                compute,
            )
        }
        .result()
        .map_err(|e| cudnn_err("cudnnSetConvolution2dDescriptor", s, e))?;
        unsafe { sys::cudnnSetConvolutionGroupCount(d.0, c_int_of(s.groups)?) }
            .result()
            .map_err(|e| cudnn_err("cudnnSetConvolutionGroupCount", s, e))?;
        d.set_math(math, s)?;
        Ok(d)
    }

    fn set_math(&self, math: sys::cudnnMathType_t, s: &ConvShape) -> Result<()> {
        // SAFETY: self is live.
        unsafe { sys::cudnnSetConvolutionMathType(self.0, math) }
            .result()
            .map_err(|e| cudnn_err("cudnnSetConvolutionMathType", format!("{math:?}, {s:?}"), e))
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateConvolutionDescriptor, destroyed once.
        let _ = unsafe { sys::cudnnDestroyConvolutionDescriptor(self.0) };
    }
}

impl std::fmt::Display for ConvShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "x {:?} w {:?} -> y {:?}, stride {:?} padding {:?} dilation {:?} groups {}",
            self.x_dims(),
            self.w_dims(),
            self.y_dims(),
            self.stride,
            self.padding,
            self.dilation,
            self.groups
        )
    }
}

/// The four descriptors of one convolution.
struct Descs {
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    conv: ConvDesc,
}

impl Descs {
    fn new(key: &AlgoKey) -> Result<Descs> {
        let s = &key.shape;
        Ok(Descs {
            x: TensorDesc::nhwc(key.data, s.x_dims())?,
            w: FilterDesc::krsc(key.data, s.w_dims())?,
            y: TensorDesc::nhwc(key.data, s.y_dims())?,
            conv: ConvDesc::new(s, sys::cudnnDataType_t::CUDNN_DATA_FLOAT, key.math)?,
        })
    }

    /// cuDNN's own output size must match ours: a mismatch would mean the
    /// descriptors describe a different conv than the buffers hold.
    fn check_output(&self, s: &ConvShape) -> Result<()> {
        let mut d = [0 as c_int; 4];
        // SAFETY: descriptors are live; writes four ints.
        unsafe {
            sys::cudnnGetConvolution2dForwardOutputDim(
                self.conv.0,
                self.x.0,
                self.w.0,
                &mut d[0],
                &mut d[1],
                &mut d[2],
                &mut d[3],
            )
        }
        .result()
        .map_err(|e| cudnn_err("cudnnGetConvolution2dForwardOutputDim", s, e))?;
        let ours = c_dims(s.y_dims())?;
        if d != ours {
            return Err(Error::shape(
                OP,
                format!("cuDNN computes output {d:?} but the op expects {ours:?} for {s}"),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Choosing and running

/// Device pointers of one call: the two inputs in the order the direction
/// names them ([x, w] forward, [w, dy] backward-data, [x, dy]
/// backward-filter) and the output (y, dx or dw).
#[derive(Clone, Copy, Debug)]
struct Ptrs {
    a: u64,
    b: u64,
    out: u64,
}

fn vp(p: u64) -> *const c_void {
    p as usize as *const c_void
}
fn vpm(p: u64) -> *mut c_void {
    p as usize as *mut c_void
}

fn out_dims(key: &AlgoKey) -> [usize; 4] {
    match key.dir {
        Direction::Forward => key.shape.y_dims(),
        Direction::BackwardData => key.shape.x_dims(),
        Direction::BackwardFilter => key.shape.w_dims(),
    }
}

fn elem_bytes(data: sys::cudnnDataType_t) -> usize {
    if data == sys::cudnnDataType_t::CUDNN_DATA_FLOAT {
        4
    } else {
        2
    }
}

/// A workspace block of `bytes` (None for 0) and its address (0 for none).
fn workspace(g: &'static Gpu, bytes: usize) -> Result<(Option<super::DeviceBlock>, u64)> {
    if bytes == 0 {
        return Ok((None, 0));
    }
    let b = g.alloc_workspace(bytes)?;
    let p = b.ptr();
    Ok((Some(b), p))
}

/// The largest Find workspace we can get within the cap, trying smaller
/// sizes when the allocation fails.
fn find_workspace(g: &'static Gpu) -> (Option<super::DeviceBlock>, u64, usize) {
    let free = g.ctx.mem_get_info().map(|(f, _)| f).unwrap_or(0);
    let st = g.memory_stats();
    let cap = workspace_cap(free, st.reserved.saturating_sub(st.allocated));
    for bytes in [cap, cap / 8, cap / 64] {
        if bytes == 0 {
            break;
        }
        if let Ok((b, p)) = workspace(g, bytes) {
            return (b, p, bytes);
        }
    }
    (None, 0, 0)
}

fn workspace_size(
    h: sys::cudnnHandle_t,
    d: &Descs,
    algo: Algo,
) -> std::result::Result<usize, CudnnError> {
    let mut bytes = 0usize;
    // SAFETY: handle and descriptors are live; writes one size_t.
    unsafe {
        match algo {
            Algo::Fwd(a) => sys::cudnnGetConvolutionForwardWorkspaceSize(
                h, d.x.0, d.w.0, d.conv.0, d.y.0, a, &mut bytes,
            ),
            Algo::BwdData(a) => sys::cudnnGetConvolutionBackwardDataWorkspaceSize(
                h, d.w.0, d.y.0, d.conv.0, d.x.0, a, &mut bytes,
            ),
            Algo::BwdFilter(a) => sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                h, d.x.0, d.y.0, d.conv.0, d.w.0, a, &mut bytes,
            ),
        }
    }
    .result()?;
    Ok(bytes)
}

/// cudnnFind*AlgorithmEx: times the candidates on the real inputs, writing
/// into a scratch output.
fn find(
    g: &'static Gpu,
    h: sys::cudnnHandle_t,
    key: &AlgoKey,
    d: &Descs,
    p: Ptrs,
) -> Result<(Vec<Perf>, usize)> {
    let out_bytes = out_dims(key).iter().product::<usize>() * elem_bytes(key.data);
    let scratch = g.alloc(out_bytes)?;
    let (ws, ws_ptr, cap) = find_workspace(g);
    let mut perfs = [Perf::default(); MAX_PERFS];
    let mut n: c_int = 0;
    let req = MAX_PERFS as c_int;
    let out = vpm(scratch.ptr());
    // SAFETY: descriptors match the buffers (a, b: the caller's inputs;
    // scratch: the output's size; workspace: `cap` bytes or null with 0);
    // Perf has the perf structs' layout (tested) and room for `req`.
    let status = unsafe {
        match key.dir {
            Direction::Forward => sys::cudnnFindConvolutionForwardAlgorithmEx(
                h,
                d.x.0,
                vp(p.a),
                d.w.0,
                vp(p.b),
                d.conv.0,
                d.y.0,
                out,
                req,
                &mut n,
                perfs.as_mut_ptr().cast(),
                vpm(ws_ptr),
                cap,
            ),
            Direction::BackwardData => sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                h,
                d.w.0,
                vp(p.a),
                d.y.0,
                vp(p.b),
                d.conv.0,
                d.x.0,
                out,
                req,
                &mut n,
                perfs.as_mut_ptr().cast(),
                vpm(ws_ptr),
                cap,
            ),
            Direction::BackwardFilter => sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                h,
                d.x.0,
                vp(p.a),
                d.y.0,
                vp(p.b),
                d.conv.0,
                d.w.0,
                out,
                req,
                &mut n,
                perfs.as_mut_ptr().cast(),
                vpm(ws_ptr),
                cap,
            ),
        }
    }
    .result();
    drop(ws);
    drop(scratch);
    status.map_err(|e| cudnn_err("cudnnFind*AlgorithmEx", key.shape, e))?;
    let n = (n.max(0) as usize).min(MAX_PERFS);
    Ok((perfs[..n].to_vec(), cap))
}

/// cudnnGet*Algorithm_v7: cuDNN's heuristic ranking (no timing).
fn heuristic(h: sys::cudnnHandle_t, key: &AlgoKey, d: &Descs) -> Result<Vec<Perf>> {
    let mut perfs = [Perf::default(); MAX_PERFS];
    let mut n: c_int = 0;
    let req = MAX_PERFS as c_int;
    // SAFETY: descriptors are live; Perf has the perf structs' layout and
    // room for `req` entries.
    unsafe {
        match key.dir {
            Direction::Forward => sys::cudnnGetConvolutionForwardAlgorithm_v7(
                h,
                d.x.0,
                d.w.0,
                d.conv.0,
                d.y.0,
                req,
                &mut n,
                perfs.as_mut_ptr().cast(),
            ),
            Direction::BackwardData => sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                h,
                d.w.0,
                d.y.0,
                d.conv.0,
                d.x.0,
                req,
                &mut n,
                perfs.as_mut_ptr().cast(),
            ),
            Direction::BackwardFilter => sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                h,
                d.x.0,
                d.y.0,
                d.conv.0,
                d.w.0,
                req,
                &mut n,
                perfs.as_mut_ptr().cast(),
            ),
        }
    }
    .result()
    .map_err(|e| cudnn_err("cudnnGet*Algorithm_v7", key.shape, e))?;
    let n = (n.max(0) as usize).min(MAX_PERFS);
    Ok(perfs[..n].to_vec())
}

/// The first candidate whose exact workspace size (asked with its own math
/// type set) cuDNN confirms and that fits `cap`.
fn confirm(
    h: sys::cudnnHandle_t,
    key: &AlgoKey,
    d: &Descs,
    cands: &[Chosen],
    cap: usize,
) -> Result<Option<Chosen>> {
    for c in cands {
        d.conv.set_math(c.math, &key.shape)?;
        if let Ok(bytes) = workspace_size(h, d, c.algo) {
            let workspace = bytes.max(c.workspace);
            if workspace <= cap {
                return Ok(Some(Chosen { workspace, ..*c }));
            }
        }
    }
    Ok(None)
}

impl Ptrs {
    /// The pointers in the graph API's tensor order: x, w, y for the
    /// forward, dx, w, dy for backward-data, x, dw, dy for backward-filter.
    fn xwy(&self, dir: Direction) -> [u64; 3] {
        match dir {
            Direction::Forward => [self.a, self.b, self.out],
            Direction::BackwardData => [self.out, self.a, self.b],
            Direction::BackwardFilter => [self.a, self.out, self.b],
        }
    }
}

/// Which APIs a new key's search asks (see [`Api`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Search {
    /// The legacy API: Find when timed, else Get_v7.
    legacy: bool,
    /// The graph API, for at most this many plans.
    graph_plans: Option<usize>,
}

impl Search {
    /// For `api`, with timing allowed (`timed`) or not and the graph API
    /// in the library (`has_graph`; a forced graph API without it is
    /// refused before this).
    fn new(api: Api, timed: bool, has_graph: bool) -> Search {
        let top = if timed { GRAPH_CANDIDATES } else { 1 };
        match api {
            Api::Legacy => Search {
                legacy: true,
                graph_plans: None,
            },
            Api::Auto => Search {
                legacy: true,
                graph_plans: (timed && has_graph).then_some(top),
            },
            Api::Graph => Search {
                legacy: false,
                graph_plans: Some(top),
            },
        }
    }
}

/// Runs legacy algorithm `c` for `key`: output = result + beta * output.
///
/// # Safety
/// `p` addresses buffers that match `d` (the pub fns' contracts) and
/// `ws` holds `c.workspace` bytes (0 when that is 0).
unsafe fn legacy_exec(
    h: sys::cudnnHandle_t,
    key: &AlgoKey,
    d: &Descs,
    c: &Chosen,
    p: Ptrs,
    beta: f32,
    ws: u64,
) -> Result<()> {
    d.conv.set_math(c.math, &key.shape)?;
    let alpha = 1.0f32;
    let (al, be) = (
        &alpha as *const f32 as *const c_void,
        &beta as *const f32 as *const c_void,
    );
    // SAFETY: the caller's contract; alpha/beta are f32 as cuDNN requires
    // for f32/f16/bf16 data.
    unsafe {
        match c.algo {
            Algo::Fwd(a) => sys::cudnnConvolutionForward(
                h,
                al,
                d.x.0,
                vp(p.a),
                d.w.0,
                vp(p.b),
                d.conv.0,
                a,
                vpm(ws),
                c.workspace,
                be,
                d.y.0,
                vpm(p.out),
            ),
            Algo::BwdData(a) => sys::cudnnConvolutionBackwardData(
                h,
                al,
                d.w.0,
                vp(p.a),
                d.y.0,
                vp(p.b),
                d.conv.0,
                a,
                vpm(ws),
                c.workspace,
                be,
                d.x.0,
                vpm(p.out),
            ),
            Algo::BwdFilter(a) => sys::cudnnConvolutionBackwardFilter(
                h,
                al,
                d.x.0,
                vp(p.a),
                d.y.0,
                vp(p.b),
                d.conv.0,
                a,
                vpm(ws),
                c.workspace,
                be,
                d.w.0,
                vpm(p.out),
            ),
        }
    }
    .result()
    .map_err(|e| cudnn_err(c.algo.name(), format!("{} {:?}", key.shape, key.data), e))
}

/// Mean GPU milliseconds of `f` over [`TIMED_RUNS`] runs between two
/// events, after one untimed run.
pub(crate) fn time_ms(g: &'static Gpu, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let start = g.timing_event()?;
    for _ in 0..TIMED_RUNS {
        f()?;
    }
    let end = g.timing_event()?;
    let ms = start
        .elapsed_ms(&end)
        .map_err(|e| g.err("cuEventElapsedTime (cuDNN timing)", e))?;
    Ok(f64::from(ms) / TIMED_RUNS as f64)
}

fn legacy_label(c: &Chosen) -> String {
    format!("{} (algo {})", c.algo.name(), c.algo.id())
}

fn plan_label(p: &Plan) -> String {
    format!("graph {}", p.name)
}

impl Dnn {
    /// The legacy API's choice for `key`: cudnnFind's fastest usable
    /// algorithm when `timed` (its listed timings are added to `cands`),
    /// else, or when Find fails, Get_v7's first. Returns it and how it
    /// was chosen.
    fn legacy(
        &mut self,
        g: &'static Gpu,
        key: &AlgoKey,
        d: &Descs,
        p: Ptrs,
        timed: std::result::Result<(), String>,
        cands: &mut Vec<crate::profile::Candidate>,
    ) -> Result<(Chosen, String)> {
        let searched =
            timed.and_then(|()| find(g, self.handle, key, d, p).map_err(|e| e.to_string()));
        if let Ok((perfs, _)) = &searched {
            cands.extend(perfs.iter().map(|p| {
                crate::profile::Candidate {
                    algo: Algo::from_raw(key.dir, p.algo)
                        .map_or(format!("algo {}", p.algo), |a| a.name().to_string())
                        + " (cudnnFind)",
                    status: p.status,
                    ms: p.time as f64,
                    workspace: p.memory,
                }
            }));
        }
        let (found, find_note) = match searched {
            Ok((perfs, cap)) => (
                confirm(
                    self.handle,
                    key,
                    d,
                    &candidates(key.dir, &perfs, key.math, cap, key.deterministic),
                    cap,
                )?,
                format!("Find listed {perfs:?}"),
            ),
            Err(note) => (None, note),
        };
        if let Some(c) = found {
            return Ok((c, "find".into()));
        }
        d.conv.set_math(key.math, &key.shape)?;
        let perfs = heuristic(self.handle, key, d)?;
        let cap = free_cap(g);
        let cands = candidates(key.dir, &perfs, key.math, cap, key.deterministic);
        let c = confirm(self.handle, key, d, &cands, cap)?.ok_or_else(|| {
            Error::arg(
                OP,
                format!(
                    "cuDNN has no {:?} algorithm for {} ({:?}, math {:?}{}) within a {cap}-byte workspace; Get_v7 listed {perfs:?}; {find_note}",
                    key.dir, key.shape, key.data, key.math,
                    if key.deterministic { ", deterministic only" } else { "" }
                ),
            )
        })?;
        Ok((c, format!("heuristic (Get_v7; {find_note})")))
    }

    /// The cached route for `key`, chosen (and cached) on first use: see
    /// [`Api`]. Every choice is recorded in engine::profile.
    fn choose(&mut self, g: &'static Gpu, key: &RouteKey, p: Ptrs) -> Result<Route> {
        if let Some(r) = self.routes.get(key) {
            return Ok(r.clone());
        }
        let ak = &key.algo;
        let d = Descs::new(ak)?;
        d.check_output(&ak.shape)?;
        let t0 = std::time::Instant::now();
        let timed = if !BENCHMARK.load(Ordering::Relaxed) {
            Err("not timed: benchmark mode is off".to_string())
        } else if self.searched < FIND_LIMIT {
            // a timed search waits for the GPU: a clear error while a CUDA
            // graph is recorded, not a timing failure cached as untimed
            g.no_wait_in_capture("a cuDNN search for a new convolution shape")?;
            self.searched += 1;
            Ok(())
        } else {
            Err(format!("not timed: {FIND_LIMIT} keys were"))
        };
        if key.api == Api::Graph {
            graph::available().map_err(|e| {
                Error::arg(
                    OP,
                    format!(
                        "the graph API was asked for (SLMLP_CUDNN_API=graph): {e}; install cuDNN 9"
                    ),
                )
            })?;
        }
        let mut cands = Vec::new();
        let search = Search::new(key.api, timed.is_ok(), graph::available().is_ok());
        let legacy = if search.legacy {
            self.legacy(g, ak, &d, p, timed.clone(), &mut cands)
        } else {
            Err(Error::arg(OP, "the legacy API was not asked for"))
        };
        let mut notes = Vec::new();
        let plans = if let Some(max) = search.graph_plans {
            let problem = Problem {
                dir: ak.dir,
                shape: ak.shape,
                data: ak.data,
                beta_bits: key.beta_bits,
                align: key.align,
                numerics: Numerics {
                    tensor_cores: ak.math != sys::cudnnMathType_t::CUDNN_FMA_MATH,
                    deterministic: ak.deterministic,
                },
            };
            let cap = free_cap(g);
            match graph::plans(
                self.handle,
                &problem,
                cap,
                max,
                GRAPH_SEARCH_BUDGET,
                key.rtc,
            ) {
                Ok((plans, listed)) => {
                    notes.push(format!("graph API: {listed:?}"));
                    plans
                }
                Err(e) => {
                    notes.push(format!("graph API: {e}"));
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let beta = f32::from_bits(key.beta_bits);
        let mut plans = plans.into_iter();
        let (route, method) = match (plans.next(), legacy, &timed) {
            (None, Ok((c, method)), _) => (Route::Legacy(c), method),
            (None, Err(e), _) if key.api != Api::Graph => return Err(e),
            (None, Err(_), _) => {
                return Err(Error::arg(
                    OP,
                    format!(
                        "the graph API has no usable plan for {:?} {} ({:?}); {}",
                        ak.dir,
                        ak.shape,
                        ak.data,
                        notes.join("; ")
                    ),
                ))
            }
            // untimed, so Api::Graph: its heuristics' first plan
            (Some(first), _, Err(note)) => (
                Route::Graph(Arc::new(first)),
                format!("heuristic (the graph API's first plan; {note})"),
            ),
            (Some(first), legacy, Ok(())) => {
                let plans = std::iter::once(first).chain(plans).collect();
                let legacy = legacy.ok().map(|(c, _)| c);
                self.time_routes(g, ak, &d, p, beta, legacy, plans, &mut cands)?
            }
        };
        let (chosen, workspace) = match &route {
            Route::Legacy(c) => (legacy_label(c), c.workspace),
            Route::Graph(plan) => (plan_label(plan), plan.workspace),
        };
        // fastest first, the failed ones last
        cands.sort_by(|a, b| a.ms.total_cmp(&b.ms));
        let mut method = method;
        if !notes.is_empty() {
            method += &format!("; {}", notes.join("; "));
        }
        crate::profile::search(crate::profile::Search {
            lib: "cudnn",
            problem: format!(
                "{:?} {} {:?} math {:?} beta {beta} align {:?} api {:?} rtc {:?}",
                ak.dir, ak.shape, ak.data, ak.math, key.align, key.api, key.rtc
            ),
            method,
            chosen,
            workspace,
            ms: t0.elapsed().as_secs_f64() * 1e3,
            candidates: cands,
        });
        self.routes.insert(*key, route.clone());
        Ok(route)
    }

    /// Times the graph API's `plans` and the `legacy` choice alike, into
    /// a scratch output; returns the fastest (the first plan if every
    /// timing failed) and how it was chosen, adding the timings to
    /// `cands`.
    #[allow(clippy::too_many_arguments)]
    fn time_routes(
        &self,
        g: &'static Gpu,
        key: &AlgoKey,
        d: &Descs,
        p: Ptrs,
        beta: f32,
        legacy: Option<Chosen>,
        plans: Vec<Plan>,
        cands: &mut Vec<crate::profile::Candidate>,
    ) -> Result<(Route, String)> {
        let out_bytes = out_dims(key).iter().product::<usize>() * elem_bytes(key.data);
        let scratch = g.alloc(out_bytes)?;
        if beta != 0.0 {
            // the timed runs read it: zeros, not stale bits (NaN, subnormals)
            // SAFETY: scratch is a live block of out_bytes bytes on g.
            unsafe { g.memset(scratch.ptr(), 0, out_bytes) }?;
        }
        let q = Ptrs {
            out: scratch.ptr(),
            ..p
        };
        let ws_bytes = plans
            .iter()
            .map(|p| p.workspace)
            .chain(legacy.map(|c| c.workspace))
            .max()
            .unwrap_or(0);
        let (ws, ws_ptr) = workspace(g, ws_bytes)?;
        let h = self.handle;
        let mut best: Option<(f64, Route)> = None;
        let mut consider = |ms: Result<f64>, route: Route, label: String, workspace: usize| {
            let ok = ms.as_ref().ok().copied();
            // a candidate that failed keeps its error in the profile
            let algo = match &ms {
                Ok(_) => label,
                Err(e) => format!("{label}: failed: {e}"),
            };
            cands.push(crate::profile::Candidate {
                algo,
                status: u32::from(ok.is_none()),
                ms: ok.unwrap_or(f64::NAN),
                workspace,
            });
            if let Some(ms) = ok {
                if best.as_ref().is_none_or(|(b, _)| ms < *b) {
                    best = Some((ms, route));
                }
            }
        };
        let plans: Vec<Arc<Plan>> = plans.into_iter().map(Arc::new).collect();
        for plan in &plans {
            // SAFETY: q addresses the caller's inputs and a scratch output
            // of the problem's size; ws holds the largest workspace.
            let ms = time_ms(g, || unsafe {
                graph::execute(h, plan, q.xwy(key.dir), ws_ptr)
            });
            consider(
                ms,
                Route::Graph(plan.clone()),
                plan_label(plan),
                plan.workspace,
            );
        }
        if let Some(c) = legacy {
            // SAFETY: as above.
            let ms = time_ms(g, || unsafe { legacy_exec(h, key, d, &c, q, beta, ws_ptr) });
            consider(
                ms,
                Route::Legacy(c),
                legacy_label(&c) + " (legacy, timed alike)",
                c.workspace,
            );
        }
        // the events synchronised the stream: nothing queued uses them now
        drop(ws);
        drop(scratch);
        let n = plans.len();
        Ok(match best {
            Some((_, route)) => (
                route,
                format!(
                    "timed ({n} graph API plan(s){}, {TIMED_RUNS} runs each)",
                    if legacy.is_some() {
                        " and the legacy choice"
                    } else {
                        ""
                    }
                ),
            ),
            None => (
                Route::Graph(plans[0].clone()),
                "graph API's first plan (every timed run failed)".into(),
            ),
        })
    }
}

/// The workspace cap of a search now (see [`workspace_cap`]).
fn free_cap(g: &'static Gpu) -> usize {
    let free = g.ctx.mem_get_info().map(|(f, _)| f).unwrap_or(0);
    let st = g.memory_stats();
    workspace_cap(free, st.reserved.saturating_sub(st.allocated))
}

/// Runs `dir` for `s` on `dtype` data: output = result + beta * output
/// (beta 0: the output is only written), by the route chosen for its key.
/// The searches write into a scratch output, so the output is read and
/// written once.
///
/// # Safety
/// `p` addresses the buffers `dir` reads and writes (see the pub fns).
unsafe fn run(
    g: &'static Gpu,
    dir: Direction,
    s: &ConvShape,
    dtype: DType,
    p: Ptrs,
    beta: f32,
) -> Result<&'static str> {
    if s.is_empty() {
        return Err(Error::arg(
            OP,
            format!("empty convolution {s} reached cuDNN; the op must handle it"),
        ));
    }
    let algo = AlgoKey::new(dir, s, dtype)?;
    let key = RouteKey {
        algo,
        api: api()?,
        rtc: rtc()?,
        beta_bits: beta.to_bits(),
        align: p.xwy(dir).map(graph::alignment),
    };
    with_dnn(g, |dnn| match dnn.choose(g, &key, p)? {
        Route::Legacy(c) => {
            crate::profile::algo_used(|| {
                format!("cudnn:{} (ws {} B)", legacy_label(&c), c.workspace)
            });
            let d = Descs::new(&algo)?;
            let (ws, ws_ptr) = workspace(g, c.workspace)?;
            // SAFETY: the caller's contract; ws holds c.workspace bytes.
            unsafe { legacy_exec(dnn.handle, &algo, &d, &c, p, beta, ws_ptr) }?;
            drop(ws);
            Ok(c.algo.name())
        }
        Route::Graph(plan) => {
            crate::profile::algo_used(|| {
                format!("cudnn:{} (ws {} B)", plan_label(&plan), plan.workspace)
            });
            let (ws, ws_ptr) = workspace(g, plan.workspace)?;
            // SAFETY: the caller's contract (the plan was built for this
            // key's shape, dtype, beta and alignments); ws holds its bytes.
            unsafe { graph::execute(dnn.handle, &plan, p.xwy(dir), ws_ptr) }?;
            drop(ws);
            Ok("cudnn_graph")
        }
    })
}

/// y = conv(x, w) + beta * y: x NHWC [n, c, h, w], w KRSC [k, c/groups,
/// r, s], y NHWC [n, k, oh, ow], all `dtype` (beta 0: y overwritten).
/// Returns the algorithm name.
///
/// # Safety
/// `x`, `w` and `y` address live device buffers on `g` holding at least
/// those dims' element counts of `dtype` (y initialised when beta is not
/// 0), and nothing else uses `y` until the GPU's stream has run the call.
pub unsafe fn conv_forward(
    g: &'static Gpu,
    s: &ConvShape,
    dtype: DType,
    x: u64,
    w: u64,
    y: u64,
    beta: f32,
) -> Result<&'static str> {
    let p = Ptrs { a: x, b: w, out: y };
    // SAFETY: the caller's contract.
    unsafe { run(g, Direction::Forward, s, dtype, p, beta) }
}

/// dx = the gradient of conv(x, w) w.r.t. x given dy (NHWC [n, k, oh, ow])
/// and w (KRSC), + beta * dx (NHWC [n, c, h, w]). Returns the algorithm
/// name.
///
/// # Safety
/// As [`conv_forward`], for `w`, `dy` and the output `dx`.
pub unsafe fn conv_backward_data(
    g: &'static Gpu,
    s: &ConvShape,
    dtype: DType,
    w: u64,
    dy: u64,
    dx: u64,
    beta: f32,
) -> Result<&'static str> {
    let p = Ptrs {
        a: w,
        b: dy,
        out: dx,
    };
    // SAFETY: the caller's contract.
    unsafe { run(g, Direction::BackwardData, s, dtype, p, beta) }
}

/// dw = the gradient of conv(x, w) w.r.t. w given x and dy, + beta * dw
/// (KRSC [k, c/groups, r, s]). Returns the algorithm name.
///
/// # Safety
/// As [`conv_forward`], for `x`, `dy` and the output `dw`.
pub unsafe fn conv_backward_filter(
    g: &'static Gpu,
    s: &ConvShape,
    dtype: DType,
    x: u64,
    dy: u64,
    dw: u64,
    beta: f32,
) -> Result<&'static str> {
    let p = Ptrs {
        a: x,
        b: dy,
        out: dw,
    };
    // SAFETY: the caller's contract.
    unsafe { run(g, Direction::BackwardFilter, s, dtype, p, beta) }
}

/// y[n, k, i, j] += bias[k] for NHWC y of logical dims `y_dims` (bias
/// dense [k]).
///
/// # Safety
/// `bias` addresses `y_dims[1]` elements and `y` an NHWC buffer of
/// `y_dims`, both `dtype`, live on `g`; nothing else uses `y` until the
/// GPU's stream has run the call.
pub unsafe fn add_bias(
    g: &'static Gpu,
    dtype: DType,
    y_dims: [usize; 4],
    bias: u64,
    y: u64,
) -> Result<()> {
    if y_dims.contains(&0) {
        return Ok(());
    }
    let data = data_type(dtype)?;
    with_dnn(g, |dnn| {
        let b = TensorDesc::nhwc(data, [1, y_dims[1], 1, 1])?;
        let yd = TensorDesc::nhwc(data, y_dims)?;
        let one = 1.0f32;
        let al = &one as *const f32 as *const c_void;
        // SAFETY: descriptors match the buffers (the caller's contract);
        // C = 1*A + 1*C.
        unsafe { sys::cudnnAddTensor(dnn.handle, al, b.0, vp(bias), al, yd.0, vpm(y)) }
            .result()
            .map_err(|e| cudnn_err("cudnnAddTensor (bias)", format!("y {y_dims:?} {dtype}"), e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::out_size;
    use std::mem::{align_of, offset_of, size_of};

    fn params(stride: usize, padding: usize, dilation: usize, groups: usize) -> Conv2dParams {
        Conv2dParams {
            stride: [stride, stride],
            padding: [padding, padding],
            dilation: [dilation, dilation],
            groups,
        }
    }

    #[test]
    fn output_sizes_match_the_cpu_out_size() {
        for h in [1usize, 5, 7, 8, 56, 224] {
            for k in [1usize, 3, 5, 7] {
                for st in [1usize, 2, 3] {
                    for pad in [0usize, 1, 3] {
                        for dil in [1usize, 2] {
                            let p = params(st, pad, dil, 1);
                            let ours = ConvShape::new([2, 4, h, h + 1], [8, 4, k, k], p);
                            let oh = out_size("t", h, k, st, pad, dil);
                            let ow = out_size("t", h + 1, k, st, pad, dil);
                            match (ours, oh, ow) {
                                (Ok(s), Ok(oh), Ok(ow)) => {
                                    assert_eq!((s.oh, s.ow), (oh, ow));
                                    // the formula itself, independently
                                    let span = dil * (k - 1) + 1;
                                    assert_eq!(s.oh, (h + 2 * pad - span) / st + 1);
                                    assert_eq!(s.y_dims(), [2, 8, oh, ow]);
                                }
                                (Err(_), Err(_), _) | (Err(_), _, Err(_)) => {}
                                other => panic!(
                                    "disagree at h {h} k {k} s {st} p {pad} d {dil}: {other:?}"
                                ),
                            }
                        }
                    }
                }
            }
        }
        // ResNet-50 stem: 224 -> 112 with 7x7/2 pad 3
        let s = ConvShape::new([1, 3, 224, 224], [64, 3, 7, 7], params(2, 3, 1, 1)).unwrap();
        assert_eq!((s.oh, s.ow), (112, 112));
    }

    #[test]
    fn shape_rejects_bad_geometry() {
        let p = Conv2dParams::default();
        assert!(ConvShape::new([1, 6, 8, 8], [4, 3, 3, 3], params(1, 0, 1, 2)).is_ok());
        assert!(ConvShape::new([1, 6, 8, 8], [4, 6, 3, 3], params(1, 0, 1, 2)).is_err());
        assert!(ConvShape::new([1, 6, 8, 8], [5, 3, 3, 3], params(1, 0, 1, 2)).is_err());
        assert!(ConvShape::new([1, 4, 2, 2], [4, 4, 3, 3], p).is_err());
        assert!(ConvShape::new([1, 4, 8, 8], [4, 4, 3, 3], params(0, 0, 1, 1)).is_err());
        assert!(ConvShape::new([1, 4, 8, 8], [4, 4, 3, 3], params(1, 0, 0, 1)).is_err());
        assert!(ConvShape::new([1, 4, 8, 8], [4, 4, 0, 3], p).is_err());
        // 2^31 elements in one tensor is past cuDNN's limit
        assert!(ConvShape::new([1 << 15, 64, 32, 32], [64, 64, 1, 1], p).is_err());
        assert!(ConvShape::new([1 << 14, 64, 32, 32], [64, 64, 1, 1], p).is_ok());
        let s = ConvShape::new([0, 4, 8, 8], [4, 4, 3, 3], p).unwrap();
        assert!(s.is_empty());
        assert!(!ConvShape::new([1, 4, 8, 8], [4, 4, 3, 3], p)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn grouped_filter_dims_hold_channels_per_group() {
        let s = ConvShape::new([2, 32, 14, 14], [64, 1, 3, 3], params(1, 1, 1, 32)).unwrap();
        assert_eq!(s.w_dims(), [64, 1, 3, 3]);
        assert_eq!(s.x_dims(), [2, 32, 14, 14]);
        assert_eq!(s.y_dims(), [2, 64, 14, 14]);
    }

    #[test]
    fn nhwc_strides_are_the_gpu_tensor_convention() {
        for dims in [
            [2usize, 3, 5, 7],
            [1, 64, 56, 56],
            [8, 1, 1, 1],
            [256, 3, 7, 7],
        ] {
            let ours = nhwc_strides(dims);
            assert_eq!(ours.to_vec(), crate::layout::gpu_strides(&dims));
            // element (n, c, h, w) sits at ((n*H + h)*W + w)*C + c
            let [_, c, h, w] = dims;
            let (ni, ci, hi, wi) = (dims[0] - 1, c - 1, h - 1, w - 1);
            let at = ni * ours[0] + ci * ours[1] + hi * ours[2] + wi * ours[3];
            assert_eq!(at, ((ni * h + hi) * w + wi) * c + ci);
            assert_eq!(at + 1, dims.iter().product::<usize>());
        }
    }

    #[test]
    fn cache_keys_distinguish_direction_dtype_math_and_shape() {
        let p = Conv2dParams::default();
        let s1 = ConvShape::new([4, 16, 8, 8], [32, 16, 3, 3], p).unwrap();
        let s2 = ConvShape::new([4, 16, 8, 8], [32, 16, 3, 3], params(2, 0, 1, 1)).unwrap();
        let s3 = ConvShape::new([4, 16, 8, 8], [32, 16, 3, 3], params(1, 1, 1, 1)).unwrap();
        let mut keys = std::collections::HashSet::new();
        for s in [&s1, &s2, &s3] {
            for dir in [
                Direction::Forward,
                Direction::BackwardData,
                Direction::BackwardFilter,
            ] {
                for dt in [DType::F32, DType::F16, DType::BF16] {
                    assert!(keys.insert(AlgoKey::new(dir, s, dt).unwrap()));
                }
            }
        }
        assert_eq!(keys.len(), 27);
        // the same inputs give the same key
        assert!(keys.contains(&AlgoKey::new(Direction::Forward, &s1, DType::F32).unwrap()));
        // f32 with TF32 allowed is another key (another math type)
        let strict = AlgoKey::new(Direction::Forward, &s1, DType::F32).unwrap();
        let tf = AlgoKey {
            math: math_type(DType::F32, true).unwrap(),
            ..strict
        };
        assert_ne!(strict, tf);
        assert!(!keys.contains(&tf));
        // deterministic-only is another key
        assert_ne!(
            strict,
            AlgoKey {
                deterministic: true,
                ..strict
            }
        );
    }

    #[test]
    fn the_api_switch_parses_and_scopes() {
        assert_eq!(Api::parse("auto").unwrap(), Api::Auto);
        assert_eq!(Api::parse("legacy").unwrap(), Api::Legacy);
        assert_eq!(Api::parse("graph").unwrap(), Api::Graph);
        for bad in ["", "Graph", "v8", "graph "] {
            let e = Api::parse(bad).unwrap_err().to_string();
            assert!(e.contains("SLMLP_CUDNN_API"), "{e}");
        }
        let before = (api().unwrap(), benchmark());
        {
            let _g = scoped(Api::Graph, false);
            assert_eq!((api().unwrap(), benchmark()), (Api::Graph, false));
            {
                let _l = scoped(Api::Legacy, true);
                assert_eq!((api().unwrap(), benchmark()), (Api::Legacy, true));
            }
            assert_eq!((api().unwrap(), benchmark()), (Api::Graph, false));
        }
        assert_eq!((api().unwrap(), benchmark()), before);
    }

    #[test]
    fn searches_ask_the_apis_the_switch_names() {
        let s = |legacy, graph_plans| Search {
            legacy,
            graph_plans,
        };
        let top = Some(GRAPH_CANDIDATES);
        // (api, timed, has_graph) -> search
        let table = [
            (Api::Auto, true, true, s(true, top)),
            // untimed auto is the legacy heuristic, as before the graph API
            (Api::Auto, false, true, s(true, None)),
            (Api::Auto, true, false, s(true, None)),
            (Api::Legacy, true, true, s(true, None)),
            (Api::Legacy, false, true, s(true, None)),
            (Api::Graph, true, true, s(false, top)),
            // untimed graph: its heuristics' first usable plan
            (Api::Graph, false, true, s(false, Some(1))),
        ];
        for (api, timed, has_graph, want) in table {
            assert_eq!(
                Search::new(api, timed, has_graph),
                want,
                "{api:?} timed {timed} has_graph {has_graph}"
            );
        }
    }

    #[test]
    fn graph_pointers_are_x_w_y_whichever_the_direction() {
        // the legacy calls' order: forward (x, w -> y), backward-data
        // (w, dy -> dx), backward-filter (x, dy -> dw)
        let p = Ptrs { a: 1, b: 2, out: 3 };
        assert_eq!(p.xwy(Direction::Forward), [1, 2, 3]);
        assert_eq!(p.xwy(Direction::BackwardData), [3, 1, 2]);
        assert_eq!(p.xwy(Direction::BackwardFilter), [1, 3, 2]);
    }

    #[test]
    fn dtypes_map_to_cudnn_data_and_math_types() {
        use sys::cudnnDataType_t::*;
        use sys::cudnnMathType_t::*;
        assert_eq!(data_type(DType::F32).unwrap(), CUDNN_DATA_FLOAT);
        assert_eq!(data_type(DType::F16).unwrap(), CUDNN_DATA_HALF);
        assert_eq!(data_type(DType::BF16).unwrap(), CUDNN_DATA_BFLOAT16);
        assert!(data_type(DType::F64).is_err());
        assert!(data_type(DType::I64).is_err());
        for d in [DType::F32, DType::F16, DType::BF16] {
            assert_eq!(compute_type(d).unwrap(), CUDNN_DATA_FLOAT);
        }
        assert_eq!(math_type(DType::F32, false).unwrap(), CUDNN_FMA_MATH);
        assert_eq!(math_type(DType::F32, true).unwrap(), CUDNN_DEFAULT_MATH);
        for tf in [false, true] {
            assert_eq!(math_type(DType::F16, tf).unwrap(), CUDNN_TENSOR_OP_MATH);
            assert_eq!(math_type(DType::BF16, tf).unwrap(), CUDNN_TENSOR_OP_MATH);
        }
        assert!(math_type(DType::U8, false).is_err());
        // the C enum values cuDNN 9 expects
        assert_eq!(CUDNN_DATA_FLOAT as u32, 0);
        assert_eq!(CUDNN_DATA_HALF as u32, 2);
        assert_eq!(CUDNN_DATA_BFLOAT16 as u32, 9);
        assert_eq!(CUDNN_FMA_MATH as u32, 3);
        assert_eq!(sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC as u32, 1);
        assert_eq!(
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION as u32,
            1
        );
        assert_eq!(elem_bytes(CUDNN_DATA_FLOAT), 4);
        assert_eq!(elem_bytes(CUDNN_DATA_BFLOAT16), 2);
    }

    #[test]
    fn perf_mirror_has_the_c_layout() {
        macro_rules! same_layout {
            ($t:ty) => {
                assert_eq!(size_of::<Perf>(), size_of::<$t>());
                assert_eq!(align_of::<Perf>(), align_of::<$t>());
                assert_eq!(offset_of!(Perf, status), offset_of!($t, status));
                assert_eq!(offset_of!(Perf, time), offset_of!($t, time));
                assert_eq!(offset_of!(Perf, memory), offset_of!($t, memory));
                assert_eq!(offset_of!(Perf, determinism), offset_of!($t, determinism));
                assert_eq!(offset_of!(Perf, math_type), offset_of!($t, mathType));
                assert_eq!(offset_of!(Perf, reserved), offset_of!($t, reserved));
            };
        }
        same_layout!(sys::cudnnConvolutionFwdAlgoPerf_t);
        same_layout!(sys::cudnnConvolutionBwdDataAlgoPerf_t);
        same_layout!(sys::cudnnConvolutionBwdFilterAlgoPerf_t);
        // cudnn.h on x86-64: 4 + 4 + 4 (+4 pad) + 8 + 4 + 4 + 12 (+4 pad)
        assert_eq!(size_of::<Perf>(), 48);
        assert_eq!(offset_of!(Perf, memory), 16);
    }

    #[test]
    fn algo_numbers_and_names_round_trip() {
        let counts = [
            (
                Direction::Forward,
                sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as u32,
            ),
            (
                Direction::BackwardData,
                sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT as u32,
            ),
            (
                Direction::BackwardFilter,
                sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT
                    as u32,
            ),
        ];
        let mut names = std::collections::HashSet::new();
        for (dir, count) in counts {
            for raw in 0..count {
                let a = Algo::from_raw(dir, raw).unwrap();
                let back = match a {
                    Algo::Fwd(x) => x as u32,
                    Algo::BwdData(x) => x as u32,
                    Algo::BwdFilter(x) => x as u32,
                };
                assert_eq!(back, raw);
                assert!(!a.name().ends_with("invalid"));
                assert!(names.insert(a.name()));
            }
            assert!(Algo::from_raw(dir, count).is_none());
            assert!(Algo::from_raw(dir, 1000).is_none());
        }
        assert_eq!(names.len(), 8 + 6 + 7);
    }

    #[test]
    fn candidates_filter_status_math_and_workspace() {
        use sys::cudnnMathType_t::*;
        let perf = |algo, status, memory, math: sys::cudnnMathType_t| Perf {
            algo,
            status,
            time: 1.0,
            memory,
            math_type: math as u32,
            ..Perf::default()
        };
        let perfs = [
            perf(1, 0, 100, CUDNN_TENSOR_OP_MATH), // TF32-capable: refused for strict f32
            perf(6, 3000, 0, CUDNN_FMA_MATH),      // not supported
            perf(7, 0, 1 << 20, CUDNN_FMA_MATH),   // too much workspace
            perf(42, 0, 0, CUDNN_FMA_MATH),        // unknown algo
            perf(0, 0, 0, CUDNN_FMA_MATH),
            perf(2, 0, 10, CUDNN_FMA_MATH),
        ];
        let strict = candidates(Direction::Forward, &perfs, CUDNN_FMA_MATH, 1000, false);
        let got: Vec<u32> = strict
            .iter()
            .map(|c| match c.algo {
                Algo::Fwd(a) => a as u32,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(got, vec![0, 2]);
        assert_eq!(strict[1].workspace, 10);
        assert!(strict.iter().all(|c| c.math == CUDNN_FMA_MATH));
        // tensor-op requests keep cuDNN's order, any math type
        let half = candidates(
            Direction::Forward,
            &perfs,
            CUDNN_TENSOR_OP_MATH,
            1000,
            false,
        );
        assert_eq!(half.len(), 3);
        assert_eq!(half[0].math, CUDNN_TENSOR_OP_MATH);
        // a bigger cap admits algo 7; bwd-filter has no algo 7
        assert_eq!(
            candidates(Direction::Forward, &perfs, CUDNN_FMA_MATH, 1 << 20, false).len(),
            3
        );
        assert_eq!(
            candidates(
                Direction::BackwardFilter,
                &perfs,
                CUDNN_FMA_MATH,
                1 << 20,
                false
            )
            .len(),
            2
        );
        // unknown math type values are skipped, not transmuted
        let odd = [Perf {
            math_type: 9,
            ..perfs[4]
        }];
        assert!(candidates(Direction::Forward, &odd, CUDNN_DEFAULT_MATH, 1000, false).is_empty());
        // deterministic only: algorithms cuDNN flags non-deterministic drop out
        let flagged = [
            Perf {
                determinism: CUDNN_DETERMINISTIC,
                ..perfs[4]
            },
            perfs[5],
        ];
        let det = candidates(Direction::Forward, &flagged, CUDNN_FMA_MATH, 1000, true);
        assert_eq!(det.len(), 1);
        assert_eq!(det[0].workspace, 0);
        assert_eq!(
            candidates(Direction::Forward, &flagged, CUDNN_FMA_MATH, 1000, false).len(),
            2
        );
    }

    #[test]
    fn workspace_cap_is_half_of_free_at_most_a_gib() {
        assert_eq!(workspace_cap(0, 0), 0);
        assert_eq!(workspace_cap(100 << 20, 0), 50 << 20);
        assert_eq!(workspace_cap(100 << 20, 100 << 20), 100 << 20);
        assert_eq!(workspace_cap(80 << 30, 0), 1 << 30);
        assert_eq!(workspace_cap(usize::MAX, usize::MAX), 1 << 30);
    }

    #[test]
    fn tf32_switch_defaults_off() {
        assert!(!tf32());
    }
}
