//! Matrix products on cuBLASLt.
//!
//! Our tensors are row-major; cuBLASLt is column-major. A row-major [r, c]
//! matrix with row stride `ld` is, byte for byte, a column-major [c, r]
//! matrix with leading dimension `ld`, i.e. its transpose. So for the
//! row-major product D = A B we ask cuBLASLt for D^T = B^T A^T: its "A" is
//! our B, its "B" is our A, its m is our n and its n is our m
//! ([`lt_problem`], unit-tested without a GPU). An operand that is a
//! transposed view of a row-major matrix (`w.t()`) becomes a transpose flag
//! instead of a copy.
//!
//! Per GPU there is one cuBLASLt handle and one 32 MiB workspace (Hopper
//! kernels want >= 32 MiB), created on first use. The algorithm is chosen
//! once per problem ([`AlgoKey`]: shape, dtype, transposes, leading dims,
//! batch, epilogue, pointer alignment) and cached, so a training step pays
//! for the choice only on its first iteration. Like cuda::dnn's
//! `cudnn.benchmark`, the choice is timed: cuBLASLt's heuristic lists its
//! top [`TOP_CANDIDATES`], each runs once and then [`TIMED_RUNS`] times
//! between CUDA events on the stream, on the real inputs but into a
//! scratch output (the caller's output is written once, by the real call),
//! and the fastest is kept; candidates that fail are skipped. With timing
//! off ([`set_benchmark`], or [`Options::timed`] for a convolution run as
//! a GEMM), after [`SEARCH_LIMIT`] timed problems, or when timing fails,
//! the heuristic's first result is taken untimed. Every choice is recorded
//! in engine::profile (`slmlp profile` lists it with the candidates'
//! times). Everything is queued on the GPU's one stream.

use super::math_mode;
use super::runtime::{DeviceBlock, Gpu};
use crate::{DType, Error, Result};
use cudarc::cublaslt::sys;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Workspace handed to cuBLASLt (NVIDIA recommends 32 MiB on Hopper).
pub const WORKSPACE_BYTES: usize = 32 << 20;

// ---- problem description (pure) ----

/// One row-major matrix operand X of logical shape [rows, cols], per batch
/// entry. Stored as X itself (element (i, j) at `ptr + (i*ld + j)*size`)
/// or, when `transposed`, as the row-major matrix X^T [cols, rows]
/// (element (i, j) at `ptr + (j*ld + i)*size`). Batch entry `b` starts
/// `b * batch_stride` elements after `ptr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matrix {
    pub ptr: u64,
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub transposed: bool,
    pub batch_stride: usize,
}

impl Matrix {
    /// A dense row-major [rows, cols] matrix (batch entries back to back).
    pub fn row_major(ptr: u64, rows: usize, cols: usize) -> Matrix {
        Matrix {
            ptr,
            rows,
            cols,
            ld: cols.max(1),
            transposed: false,
            batch_stride: rows * cols,
        }
    }

    /// How cuBLASLt can read a strided view of shape [..batch, rows, cols]
    /// in place, and the batch count: None when it cannot (the view must be
    /// copied first). The matrix needs one unit-stride dim (row-major, or
    /// transposed when the rows are the unit-stride dim); the batch dims
    /// must collapse into one stride (size-1 dims ignored), and a broadcast
    /// batch (stride 0) is refused.
    pub fn from_strides(ptr: u64, dims: &[usize], strides: &[usize]) -> Option<(Matrix, usize)> {
        let r = dims.len();
        if r < 2 || strides.len() != r {
            return None;
        }
        let (rows, cols) = (dims[r - 2], dims[r - 1]);
        let (rs, cs) = (strides[r - 2], strides[r - 1]);
        let (transposed, ld) = if (cols <= 1 || cs == 1) && (rows <= 1 || rs >= cols) {
            (false, if rows <= 1 { cols.max(1) } else { rs.max(1) })
        } else if (rows <= 1 || rs == 1) && (cols <= 1 || cs >= rows) {
            (true, if cols <= 1 { rows.max(1) } else { cs.max(1) })
        } else {
            return None;
        };
        let mut batch = 1usize;
        let mut batch_stride = 0usize;
        // innermost batch dim first: each outer dim must step over the inner ones
        for d in (0..r - 2).rev() {
            if dims[d] == 1 {
                continue;
            }
            if batch == 1 {
                batch_stride = strides[d];
            } else if strides[d] != batch_stride * batch {
                return None;
            }
            batch *= dims[d];
        }
        if batch > 1 && batch_stride == 0 {
            return None;
        }
        Some((
            Matrix {
                ptr,
                rows,
                cols,
                ld,
                transposed,
                batch_stride: if batch > 1 { batch_stride } else { 0 },
            },
            batch,
        ))
    }
}

/// What runs after the product, fused into the GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    None,
    Relu,
    /// cuBLASLt's GELU (tanh approximation).
    Gelu,
}

/// `D = alpha * A B + beta * D (+ bias per column of D) (then act)`,
/// `batch` times; A [m, k], B [k, n], D [m, n] (D row-major, never
/// transposed); bias (when given) holds n elements of `dtype`, contiguous.
/// All four share `dtype` (f32, f16 or bf16); accumulation is f32. With
/// beta 0, D is only written.
#[derive(Clone, Copy, Debug)]
pub struct GemmParams {
    pub dtype: DType,
    pub a: Matrix,
    pub b: Matrix,
    pub d: Matrix,
    pub batch: usize,
    pub alpha: f32,
    pub beta: f32,
    pub bias: Option<u64>,
    pub act: Activation,
}

/// One operand in cuBLASLt's column-major terms: `trans` is its op, and
/// rows x cols / ld describe it as stored (before the op).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LtOperand {
    pub trans: bool,
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
    pub batch_stride: i64,
}

/// The GEMM cuBLASLt computes: D' [m, n] = op(A') [m, k] op(B') [k, n],
/// column-major, with A' = our B, B' = our A and D' = our D^T.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LtProblem {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub a: LtOperand,
    pub b: LtOperand,
    pub d: LtOperand,
    pub batch: i32,
}

fn lt_operand(x: &Matrix) -> LtOperand {
    // row-major X [r, c] = column-major [c, r]: already transposed for
    // cuBLASLt, so a non-transposed X needs op N and a transposed one op T
    let (rows, cols) = if x.transposed {
        (x.rows, x.cols)
    } else {
        (x.cols, x.rows)
    };
    LtOperand {
        trans: x.transposed,
        rows: rows as u64,
        cols: cols as u64,
        ld: x.ld as i64,
        batch_stride: x.batch_stride as i64,
    }
}

fn check_ld(what: &str, x: &Matrix) -> Result<()> {
    let need = if x.transposed { x.rows } else { x.cols }.max(1);
    if x.ld < need {
        return Err(Error::arg(
            "gemm",
            format!(
                "{what}: leading dim {} < {need} for a {}[{}, {}] operand",
                x.ld,
                if x.transposed { "transposed " } else { "" },
                x.rows,
                x.cols
            ),
        ));
    }
    Ok(())
}

/// Maps our row-major problem onto cuBLASLt's column-major one (see the
/// module doc), checking shapes, leading dims and sizes.
pub fn lt_problem(a: &Matrix, b: &Matrix, d: &Matrix, batch: usize) -> Result<LtProblem> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || d.rows != m || d.cols != n {
        return Err(Error::shape(
            "gemm",
            format!(
                "[{}, {}] @ [{}, {}] -> [{}, {}] does not chain",
                a.rows, a.cols, b.rows, b.cols, d.rows, d.cols
            ),
        ));
    }
    if d.transposed {
        return Err(Error::arg(
            "gemm",
            "the output must be row-major, not transposed",
        ));
    }
    if m == 0 || n == 0 || k == 0 || batch == 0 {
        return Err(Error::shape(
            "gemm",
            format!("empty problem m={m} n={n} k={k} batch={batch}: handle it before calling gemm"),
        ));
    }
    check_ld("A", a)?;
    check_ld("B", b)?;
    check_ld("D", d)?;
    let fits = |v: usize| i64::try_from(v).is_ok();
    if i32::try_from(batch).is_err()
        || ![
            m,
            n,
            k,
            a.ld,
            b.ld,
            d.ld,
            a.batch_stride,
            b.batch_stride,
            d.batch_stride,
        ]
        .into_iter()
        .all(fits)
    {
        return Err(Error::shape(
            "gemm",
            "a dimension or stride exceeds cuBLASLt's range",
        ));
    }
    Ok(LtProblem {
        m: n as u64,
        n: m as u64,
        k: k as u64,
        a: lt_operand(b),
        b: lt_operand(a),
        d: lt_operand(d),
        batch: batch as i32,
    })
}

/// The cuBLASLt epilogue for a bias (or not) and an activation.
pub fn epilogue(bias: bool, act: Activation) -> sys::cublasLtEpilogue_t {
    use sys::cublasLtEpilogue_t::*;
    match (bias, act) {
        (false, Activation::None) => CUBLASLT_EPILOGUE_DEFAULT,
        (false, Activation::Relu) => CUBLASLT_EPILOGUE_RELU,
        (false, Activation::Gelu) => CUBLASLT_EPILOGUE_GELU,
        (true, Activation::None) => CUBLASLT_EPILOGUE_BIAS,
        (true, Activation::Relu) => CUBLASLT_EPILOGUE_RELU_BIAS,
        (true, Activation::Gelu) => CUBLASLT_EPILOGUE_GELU_BIAS,
    }
}

/// Largest power of two (<= 256, cuBLASLt's default requirement) dividing
/// an address: what we promise the heuristic about a buffer's alignment.
pub fn alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        return 256;
    }
    (1u64 << ptr.trailing_zeros().min(8)) as u32
}

/// Everything the heuristic's choice depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AlgoKey {
    pub problem: LtProblem,
    pub dtype: DType,
    pub tf32: bool,
    pub epilogue: u32,
    pub align: [u32; 3],
}

/// The algorithm-cache key of a problem.
pub fn algo_key(p: &GemmParams, problem: &LtProblem, tf32: bool) -> AlgoKey {
    AlgoKey {
        problem: *problem,
        dtype: p.dtype,
        tf32: tf32 && p.dtype == DType::F32,
        epilogue: epilogue(p.bias.is_some(), p.act) as u32,
        // cuBLASLt's A is our B and its B our A
        align: [alignment(p.b.ptr), alignment(p.a.ptr), alignment(p.d.ptr)],
    }
}

fn types(dtype: DType, tf32: bool) -> Result<(sys::cudaDataType_t, sys::cublasComputeType_t)> {
    use sys::cublasComputeType_t::*;
    use sys::cudaDataType_t::*;
    match dtype {
        DType::F32 if tf32 => Ok((CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32)),
        DType::F32 => Ok((CUDA_R_32F, CUBLAS_COMPUTE_32F)),
        DType::F16 => Ok((CUDA_R_16F, CUBLAS_COMPUTE_32F)),
        DType::BF16 => Ok((CUDA_R_16BF, CUBLAS_COMPUTE_32F)),
        other => Err(Error::dtype("gemm", "f32, f16 or bf16 on the GPU", other)),
    }
}

// ---- timed selection (pure) ----

/// How many algorithms a new problem asks cuBLASLt's heuristic for (and
/// times, when timing is on).
pub const TOP_CANDIDATES: usize = 8;

/// Timed runs per candidate, after one untimed run (which also weeds out
/// the candidates that fail).
pub const TIMED_RUNS: usize = 3;

/// How many problems a GPU times before new ones take the heuristic's
/// first result without timing (cuda::dnn's `FIND_LIMIT` for cuBLASLt): a
/// model of fixed shapes never reaches it; a detector fed ever new sizes
/// stops paying for searches.
pub const SEARCH_LIMIT: usize = 1024;

static BENCHMARK: AtomicBool = AtomicBool::new(true);

/// Times the heuristic's top candidates of each new problem and keeps the
/// fastest (true, the default), or takes its first result untimed
/// (false). Applies to problems not chosen yet; convolutions run as GEMMs
/// follow cuda::dnn's switch instead.
pub fn set_benchmark(on: bool) {
    BENCHMARK.store(on, Ordering::Relaxed);
}

/// Whether new GEMM problems are timed (see [`set_benchmark`]).
pub fn benchmark() -> bool {
    BENCHMARK.load(Ordering::Relaxed)
}

/// One timed candidate: cuBLASLt's status for its runs (0: success) and
/// its mean time per run in ms (None when a run failed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub status: u32,
    pub ms: Option<f64>,
}

/// The heuristic's results worth running, by index: given each one's
/// (status, workspace bytes) in the heuristic's order, those with status
/// success (0) and a workspace within [`WORKSPACE_BYTES`].
pub fn usable(listed: &[(u32, usize)]) -> Vec<usize> {
    listed
        .iter()
        .enumerate()
        .filter(|(_, &(status, ws))| status == 0 && ws <= WORKSPACE_BYTES)
        .map(|(i, _)| i)
        .collect()
}

/// Whether a new problem's `candidates` are timed, given whether timing
/// is on and how many problems this GPU has timed: Ok, or why not.
pub fn search_plan(
    timed: bool,
    searched: usize,
    candidates: usize,
) -> std::result::Result<(), String> {
    if !timed {
        Err("not timed: benchmark mode is off".into())
    } else if searched >= SEARCH_LIMIT {
        Err(format!("not timed: {SEARCH_LIMIT} problems were"))
    } else if candidates < 2 {
        Err("not timed: one candidate".into())
    } else {
        Ok(())
    }
}

/// The fastest candidate that ran (on a tie the heuristic's earlier one),
/// or None when none did.
pub fn fastest(timings: &[Timing]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, t) in timings.iter().enumerate() {
        if let Some(ms) = t.ms.filter(|ms| ms.is_finite()) {
            if best.is_none_or(|(_, b)| ms < b) {
                best = Some((i, ms));
            }
        }
    }
    best.map(|(i, _)| i)
}

/// Elements from a matrix's first element to one past its last, over its
/// `batch` entries: what a buffer holding it needs (the timing's scratch
/// output is this size).
pub fn span(m: &Matrix, batch: usize) -> usize {
    if m.rows == 0 || m.cols == 0 || batch == 0 {
        return 0;
    }
    // stored as [rows, cols] with row stride ld, or transposed
    let (outer, inner) = if m.transposed {
        (m.cols, m.rows)
    } else {
        (m.rows, m.cols)
    };
    (batch - 1)
        .saturating_mul(m.batch_stride)
        .saturating_add((outer - 1).saturating_mul(m.ld))
        .saturating_add(inner)
}

// ---- the library ----

fn lt_err(call: &str, p: &GemmParams, s: sys::cublasStatus_t) -> Error {
    Error::arg(
        "gemm",
        format!(
            "{call} failed with {s:?} for {} [{}, {}]{} @ [{}, {}]{} x{} (bias: {}, act: {:?})",
            p.dtype,
            p.a.rows,
            p.a.cols,
            if p.a.transposed { "^T" } else { "" },
            p.b.rows,
            p.b.cols,
            if p.b.transposed { "^T" } else { "" },
            p.batch,
            p.bias.is_some(),
            p.act
        ),
    )
}

fn check(call: &str, p: &GemmParams, s: sys::cublasStatus_t) -> Result<()> {
    match s {
        sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        s => Err(lt_err(call, p, s)),
    }
}

struct Handle(sys::cublasLtHandle_t);
// SAFETY: a cuBLASLt handle may be used from any thread; ours is only used
// under the per-GPU mutex.
unsafe impl Send for Handle {}

/// A chosen algorithm and its description for the trace (which names its
/// workspace need; made once per cache entry and kept for the process).
#[derive(Clone)]
struct Algo {
    algo: sys::cublasLtMatmulAlgo_t,
    describe: &'static str,
}

struct LtState {
    handle: Handle,
    workspace: DeviceBlock,
    algos: HashMap<AlgoKey, Algo>,
    /// Problems timed so far (see [`SEARCH_LIMIT`]).
    searched: usize,
}

/// The per-GPU states by ordinal (leaked: they live as long as the Gpu).
type States = Mutex<Vec<(usize, &'static Mutex<LtState>)>>;

fn state(g: &'static Gpu) -> Result<&'static Mutex<LtState>> {
    static STATES: States = Mutex::new(Vec::new());
    let mut all = STATES.lock().unwrap();
    if let Some((_, s)) = all.iter().find(|(o, _)| *o == g.ordinal) {
        return Ok(s);
    }
    g.bind()?;
    let mut handle = std::ptr::null_mut();
    // SAFETY: writes one handle.
    let s = unsafe { sys::cublasLtCreate(&mut handle) };
    if s != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Err(Error::DeviceUnavailable {
            device: g.device(),
            msg: format!("cublasLtCreate failed: {s:?}"),
        });
    }
    let workspace = match g.alloc_workspace(WORKSPACE_BYTES) {
        Ok(w) => w,
        Err(e) => {
            // SAFETY: created above, used by nobody.
            unsafe { sys::cublasLtDestroy(handle) };
            return Err(e);
        }
    };
    // Lives for the process, like the Gpu itself.
    let st: &'static Mutex<LtState> = Box::leak(Box::new(Mutex::new(LtState {
        handle: Handle(handle),
        workspace,
        algos: HashMap::new(),
        searched: 0,
    })));
    all.push((g.ordinal, st));
    Ok(st)
}

// RAII guards: every descriptor is destroyed on every path.

struct Layout(sys::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatrixLayoutCreate, destroyed once.
        unsafe { sys::cublasLtMatrixLayoutDestroy(self.0) };
    }
}

struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulDescCreate, destroyed once.
        unsafe { sys::cublasLtMatmulDescDestroy(self.0) };
    }
}

struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulPreferenceCreate, destroyed once.
        unsafe { sys::cublasLtMatmulPreferenceDestroy(self.0) };
    }
}

fn layout(p: &GemmParams, ty: sys::cudaDataType_t, x: &LtOperand, batch: i32) -> Result<Layout> {
    use sys::cublasLtMatrixLayoutAttribute_t::*;
    let mut raw = std::ptr::null_mut();
    // SAFETY: writes one descriptor.
    check("cublasLtMatrixLayoutCreate", p, unsafe {
        sys::cublasLtMatrixLayoutCreate(&mut raw, ty, x.rows, x.cols, x.ld)
    })?;
    let l = Layout(raw);
    if batch > 1 {
        let count: i32 = batch;
        let stride: i64 = x.batch_stride;
        // SAFETY: the attribute types are int32_t and int64_t.
        check("cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)", p, unsafe {
            sys::cublasLtMatrixLayoutSetAttribute(
                l.0,
                CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                &count as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
        })?;
        check(
            "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)",
            p,
            unsafe {
                sys::cublasLtMatrixLayoutSetAttribute(
                    l.0,
                    CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    &stride as *const i64 as *const c_void,
                    std::mem::size_of::<i64>(),
                )
            },
        )?;
    }
    Ok(l)
}

/// Sets attribute `attr` of descriptor `h` to `v` through `set`
/// (cuBLASLt's `*SetAttribute` for that descriptor's type).
///
/// # Safety
///
/// `h` must be a live descriptor and `T` the attribute's C type.
unsafe fn set_attr<H, A: Copy + std::fmt::Debug, T>(
    p: &GemmParams,
    set: unsafe fn(H, A, *const c_void, usize) -> sys::cublasStatus_t,
    h: H,
    attr: A,
    v: &T,
) -> Result<()> {
    // SAFETY: the caller's contract; `v` is read for size_of::<T>() bytes.
    let s = unsafe {
        set(
            h,
            attr,
            v as *const T as *const c_void,
            std::mem::size_of::<T>(),
        )
    };
    match s {
        sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        s => Err(lt_err(&format!("SetAttribute({attr:?})"), p, s)),
    }
}

fn desc_attr<T>(
    p: &GemmParams,
    d: &Desc,
    attr: sys::cublasLtMatmulDescAttributes_t,
    v: &T,
) -> Result<()> {
    // SAFETY: `d` is live; callers pass the attribute's C type (int32_t for
    // the transposes, uint32_t for the epilogue, a pointer for the bias).
    unsafe { set_attr(p, sys::cublasLtMatmulDescSetAttribute, d.0, attr, v) }
}

fn pref_attr<T>(
    p: &GemmParams,
    pr: &Pref,
    attr: sys::cublasLtMatmulPreferenceAttributes_t,
    v: &T,
) -> Result<()> {
    // SAFETY: `pr` is live; callers pass the attribute's C type (uint64_t
    // workspace bytes, uint32_t alignments).
    unsafe { set_attr(p, sys::cublasLtMatmulPreferenceSetAttribute, pr.0, attr, v) }
}

/// The descriptors of one GEMM (C is D: same pointer and layout).
struct Prepared {
    desc: Desc,
    a: Layout,
    b: Layout,
    d: Layout,
}

fn prepare(p: &GemmParams, problem: &LtProblem, tf32: bool) -> Result<Prepared> {
    use sys::cublasLtMatmulDescAttributes_t::*;
    let (ty, compute) = types(p.dtype, tf32)?;
    if let Some(bias) = p.bias {
        if bias % 16 != 0 {
            return Err(Error::arg(
                "gemm",
                format!(
                    "bias pointer {bias:#x} is not 16-byte aligned: pass a fresh contiguous bias"
                ),
            ));
        }
    }
    let mut raw = std::ptr::null_mut();
    // SAFETY: writes one descriptor; the scale type (alpha, beta) is f32.
    check("cublasLtMatmulDescCreate", p, unsafe {
        sys::cublasLtMatmulDescCreate(&mut raw, compute, sys::cudaDataType_t::CUDA_R_32F)
    })?;
    let desc = Desc(raw);
    // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
    let op = |t: bool| -> i32 { i32::from(t) };
    desc_attr(p, &desc, CUBLASLT_MATMUL_DESC_TRANSA, &op(problem.a.trans))?;
    desc_attr(p, &desc, CUBLASLT_MATMUL_DESC_TRANSB, &op(problem.b.trans))?;
    let epi = epilogue(p.bias.is_some(), p.act) as u32;
    desc_attr(p, &desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi)?;
    if let Some(bias) = p.bias {
        let ptr = bias as *const c_void;
        desc_attr(p, &desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ptr)?;
    }
    Ok(Prepared {
        a: layout(p, ty, &problem.a, problem.batch)?,
        b: layout(p, ty, &problem.b, problem.batch)?,
        d: layout(p, ty, &problem.d, problem.batch)?,
        desc,
    })
}

fn config_attr<T: Default + Copy>(
    algo: &sys::cublasLtMatmulAlgo_t,
    attr: sys::cublasLtMatmulAlgoConfigAttributes_t,
) -> Option<T> {
    let mut v = T::default();
    let mut written = 0usize;
    // SAFETY: `v` has the attribute's size (int32_t / uint32_t).
    let s = unsafe {
        sys::cublasLtMatmulAlgoConfigGetAttribute(
            algo,
            attr,
            &mut v as *mut T as *mut c_void,
            std::mem::size_of::<T>(),
            &mut written,
        )
    };
    (s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then_some(v)
}

/// A readable name of `algo` for the trace and the profile: cuBLASLt's
/// algorithm id, tile, stages, split-K, its workspace and the operand ops.
fn algo_text(algo: &sys::cublasLtMatmulAlgo_t, workspace: usize, key: &AlgoKey) -> String {
    use sys::cublasLtMatmulAlgoConfigAttributes_t::*;
    let show = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
    let id = config_attr::<i32>(algo, CUBLASLT_ALGO_CONFIG_ID).map(|v| v as u32);
    let tile = config_attr::<u32>(algo, CUBLASLT_ALGO_CONFIG_TILE_ID);
    let stages = config_attr::<u32>(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID);
    let splitk = config_attr::<u32>(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM);
    let ops = format!(
        "{}{}",
        if key.problem.a.trans { 'T' } else { 'N' },
        if key.problem.b.trans { 'T' } else { 'N' }
    );
    format!(
        "cublasLt:algo{} tile{} stages{} splitk{} ws{} {ops}{}",
        show(id),
        show(tile),
        show(stages),
        show(splitk),
        workspace,
        if key.tf32 { " tf32" } else { "" }
    )
}

/// [`algo_text`] kept for the process: one per cached algorithm, like the
/// cache entry itself.
fn describe_algo(
    algo: &sys::cublasLtMatmulAlgo_t,
    workspace: usize,
    key: &AlgoKey,
) -> &'static str {
    Box::leak(algo_text(algo, workspace, key).into_boxed_str())
}

/// cuBLASLt's heuristic for the problem: up to [`TOP_CANDIDATES`]
/// algorithms, its best guess first.
fn heuristic(
    st: &LtState,
    p: &GemmParams,
    key: &AlgoKey,
    prep: &Prepared,
) -> Result<Vec<sys::cublasLtMatmulHeuristicResult_t>> {
    use sys::cublasLtMatmulPreferenceAttributes_t::*;
    let mut raw = std::ptr::null_mut();
    // SAFETY: writes one descriptor.
    check("cublasLtMatmulPreferenceCreate", p, unsafe {
        sys::cublasLtMatmulPreferenceCreate(&mut raw)
    })?;
    let pref = Pref(raw);
    let ws = WORKSPACE_BYTES as u64;
    pref_attr(p, &pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws)?;
    let [align_a, align_b, align_d] = key.align;
    pref_attr(
        p,
        &pref,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
        &align_a,
    )?;
    pref_attr(
        p,
        &pref,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        &align_b,
    )?;
    pref_attr(
        p,
        &pref,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
        &align_d,
    )?;
    pref_attr(
        p,
        &pref,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
        &align_d,
    )?;
    // SAFETY: plain C structs (the status 0 is CUBLAS_STATUS_SUCCESS);
    // cuBLASLt fills the first `count`.
    let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> = (0..TOP_CANDIDATES)
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    let mut count: i32 = 0;
    // SAFETY: every descriptor is live; room for the TOP_CANDIDATES results
    // requested.
    check("cublasLtMatmulAlgoGetHeuristic", p, unsafe {
        sys::cublasLtMatmulAlgoGetHeuristic(
            st.handle.0,
            prep.desc.0,
            prep.a.0,
            prep.b.0,
            prep.d.0,
            prep.d.0,
            pref.0,
            TOP_CANDIDATES as i32,
            results.as_mut_ptr(),
            &mut count,
        )
    })?;
    results.truncate(count.clamp(0, TOP_CANDIDATES as i32) as usize);
    Ok(results)
}

/// Queues one `D = alpha * A B + beta * D (+ bias) (then act)` with
/// `algo`, on the D at `d_ptr` (the caller's, or a scratch buffer of the
/// same size while timing); C is D.
///
/// # Safety
///
/// [`gemm`]'s contract for `p`, with `d_ptr` in place of `p.d.ptr`; `prep`
/// describes `p`.
unsafe fn matmul(
    g: &'static Gpu,
    st: &LtState,
    p: &GemmParams,
    prep: &Prepared,
    algo: &sys::cublasLtMatmulAlgo_t,
    d_ptr: u64,
) -> sys::cublasStatus_t {
    let (alpha, beta) = (p.alpha, p.beta);
    // SAFETY: the descriptors are live and match the buffers (the caller's
    // contract on the pointers); alpha/beta are f32 host scalars (the scale
    // type); the workspace block outlives the queued work (it is never
    // freed) and is only used by work on this one stream.
    unsafe {
        sys::cublasLtMatmul(
            st.handle.0,
            prep.desc.0,
            &alpha as *const f32 as *const c_void,
            p.b.ptr as *const c_void,
            prep.a.0,
            p.a.ptr as *const c_void,
            prep.b.0,
            &beta as *const f32 as *const c_void,
            d_ptr as *const c_void,
            prep.d.0,
            d_ptr as *mut c_void,
            prep.d.0,
            algo,
            st.workspace.ptr() as *mut c_void,
            WORKSPACE_BYTES,
            g.cu_stream() as sys::cudaStream_t,
        )
    }
}

/// Runs each candidate once untimed (a failure skips it) and then
/// [`TIMED_RUNS`] times between two CUDA events on the stream, all into a
/// scratch D of the output's size: the caller's output is written only by
/// the real call afterwards. Returns one [`Timing`] per candidate.
///
/// # Safety
///
/// [`gemm`]'s contract for `p` (its D is not touched); `prep` describes it.
unsafe fn time_candidates(
    g: &'static Gpu,
    st: &LtState,
    p: &GemmParams,
    prep: &Prepared,
    algos: &[sys::cublasLtMatmulHeuristicResult_t],
) -> Result<Vec<Timing>> {
    let bytes = span(&p.d, p.batch)
        .checked_mul(p.dtype.size_in_bytes())
        .ok_or_else(|| Error::arg("gemm", "the output's size overflows"))?;
    // fresh blocks are at least as aligned as the key's D alignment (<= 256)
    let scratch = g.alloc(bytes)?;
    if p.beta != 0.0 {
        // the timed GEMMs read it as C: zeros, not stale bits (NaN, subnormals)
        // SAFETY: scratch is a live block of `bytes` bytes on g.
        unsafe { g.memset(scratch.ptr(), 0, bytes) }?;
    }
    let mut timings = Vec::with_capacity(algos.len());
    for r in algos {
        // SAFETY: the caller's contract; scratch holds all of D.
        let s = unsafe { matmul(g, st, p, prep, &r.algo, scratch.ptr()) };
        if s != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            timings.push(Timing {
                status: s as u32,
                ms: None,
            });
            continue;
        }
        let start = g.timing_event()?;
        let mut status = sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS;
        for _ in 0..TIMED_RUNS {
            // SAFETY: as above.
            status = unsafe { matmul(g, st, p, prep, &r.algo, scratch.ptr()) };
            if status != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                break;
            }
        }
        let end = g.timing_event()?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| g.err("cuEventElapsedTime (cuBLASLt timing)", e))?;
        timings.push(Timing {
            status: status as u32,
            ms: (status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
                .then_some(f64::from(ms) / TIMED_RUNS as f64),
        });
    }
    // the events synchronised the stream: nothing queued still uses it
    drop(scratch);
    Ok(timings)
}

/// The cached algorithm for `key`; on a miss, the fastest of the
/// heuristic's top candidates when `timed` (and [`SEARCH_LIMIT`] allows),
/// else its first. Every miss is recorded in engine::profile.
///
/// # Safety
///
/// [`gemm`]'s contract for `p`; `prep` describes it.
unsafe fn choose(
    g: &'static Gpu,
    st: &mut LtState,
    p: &GemmParams,
    key: &AlgoKey,
    prep: &Prepared,
    timed: bool,
) -> Result<Algo> {
    if let Some(a) = st.algos.get(key) {
        return Ok(a.clone());
    }
    let t0 = std::time::Instant::now();
    let all = heuristic(st, p, key, prep)?;
    let listed: Vec<(u32, usize)> = all
        .iter()
        .map(|r| (r.state as u32, r.workspaceSize))
        .collect();
    let usable: Vec<sys::cublasLtMatmulHeuristicResult_t> =
        usable(&listed).into_iter().map(|i| all[i]).collect();
    if usable.is_empty() {
        return Err(lt_err(
            &format!(
                "cublasLtMatmulAlgoGetHeuristic (no usable algorithm within {WORKSPACE_BYTES} B of workspace; (status, workspace) listed: {listed:?})"
            ),
            p,
            sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
        ));
    }
    let plan = search_plan(timed, st.searched, usable.len());
    let (pick, method, timings) = match plan {
        Err(note) => (0, format!("heuristic (first result; {note})"), Vec::new()),
        Ok(()) => {
            // timing waits for the GPU: a clear error while a CUDA graph is
            // recorded, not a timing failure cached as an untimed choice
            g.no_wait_in_capture("a cuBLASLt search for a new GEMM shape")?;
            st.searched += 1;
            // SAFETY: the caller's contract.
            match unsafe { time_candidates(g, st, p, prep, &usable) } {
                Ok(t) => match fastest(&t) {
                    Some(i) => (
                        i,
                        format!(
                            "timed (top {} of the heuristic, {TIMED_RUNS} runs each)",
                            usable.len()
                        ),
                        t,
                    ),
                    None => (
                        0,
                        "heuristic (first result; every timed candidate failed)".into(),
                        t,
                    ),
                },
                Err(e) => (
                    0,
                    format!("heuristic (first result; timing failed: {e})"),
                    Vec::new(),
                ),
            }
        }
    };
    let r = &usable[pick];
    let algo = Algo {
        algo: r.algo,
        describe: describe_algo(&r.algo, r.workspaceSize, key),
    };
    st.algos.insert(*key, algo.clone());
    let pr = &key.problem;
    let mut candidates: Vec<crate::profile::Candidate> = timings
        .iter()
        .zip(&usable)
        .map(|(t, r)| crate::profile::Candidate {
            algo: algo_text(&r.algo, r.workspaceSize, key),
            status: t.status,
            ms: t.ms.unwrap_or(f64::NAN),
            workspace: r.workspaceSize,
        })
        .collect();
    // fastest first, the failed ones last
    candidates.sort_by(|a, b| a.ms.total_cmp(&b.ms));
    crate::profile::search(crate::profile::Search {
        lib: "cublasLt",
        problem: format!(
            "m{} n{} k{} batch{} {}{} {}{}",
            pr.m,
            pr.n,
            pr.k,
            pr.batch,
            key.dtype,
            if key.tf32 { " tf32" } else { "" },
            if pr.a.trans { 'T' } else { 'N' },
            if pr.b.trans { 'T' } else { 'N' },
        ),
        method,
        chosen: algo.describe.to_string(),
        workspace: r.workspaceSize,
        ms: t0.elapsed().as_secs_f64() * 1e3,
        candidates,
    });
    Ok(algo)
}

fn plan(g: &'static Gpu, p: &GemmParams, tf32: bool) -> Result<(AlgoKey, LtProblem, bool)> {
    let problem = lt_problem(&p.a, &p.b, &p.d, p.batch)?;
    let tf32 = tf32 && p.dtype == DType::F32;
    types(p.dtype, tf32)?;
    g.bind()?;
    Ok((algo_key(p, &problem, tf32), problem, tf32))
}

/// How one GEMM call may be run: its TF32 policy and whether a new
/// problem's algorithm may be chosen by timing the candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// f32 products may use TF32 tensor cores.
    pub tf32: bool,
    /// A new problem times the heuristic's top candidates (see
    /// [`set_benchmark`] and [`SEARCH_LIMIT`]).
    pub timed: bool,
}

impl Options {
    /// The GEMM defaults: math_mode's TF32 switch and [`benchmark`].
    pub fn global() -> Options {
        Options {
            tf32: math_mode::tf32(),
            timed: benchmark(),
        }
    }
}

/// Queues `D = alpha * A B + beta * D (+ bias) (then act)` on `g`'s stream (see
/// [`GemmParams`]) with the global [`Options`]; returns a description of
/// the algorithm used, for the trace.
///
/// # Safety
///
/// `p.a`, `p.b` and `p.d` (and `p.bias`, when given) must address live
/// buffers on `g`, each holding every element its matrix describes
/// (rows, cols, ld and batch stride, `p.batch` times; n bias elements) in
/// `p.dtype`, and stay allocated until the queued GEMM has run (work
/// queued later on the same stream may reuse them).
pub unsafe fn gemm(g: &'static Gpu, p: &GemmParams) -> Result<&'static str> {
    // SAFETY: the caller's contract.
    unsafe { gemm_with(g, p, Options::global()) }
}

/// [`gemm`] with explicit [`Options`] (a convolution run as a GEMM takes
/// the convolutions' TF32 and benchmark switches).
///
/// # Safety
///
/// As [`gemm`].
pub unsafe fn gemm_with(g: &'static Gpu, p: &GemmParams, o: Options) -> Result<&'static str> {
    let (key, problem, tf32) = plan(g, p, o.tf32)?;
    let st = state(g)?;
    let mut st = st.lock().unwrap();
    let prep = prepare(p, &problem, tf32)?;
    // SAFETY: the caller's contract; prep describes p.
    let algo = unsafe { choose(g, &mut st, p, &key, &prep, o.timed) }?;
    crate::profile::algo_used(|| algo.describe.to_string());
    // SAFETY: the caller's contract; prep describes p; the real output is
    // written here, once.
    check("cublasLtMatmul", p, unsafe {
        matmul(g, &st, p, &prep, &algo.algo, p.d.ptr)
    })?;
    Ok(algo.describe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Device, Tensor};

    fn params(a: Matrix, b: Matrix, d: Matrix, batch: usize) -> GemmParams {
        GemmParams {
            dtype: DType::F32,
            a,
            b,
            d,
            batch,
            alpha: 1.0,
            beta: 0.0,
            bias: None,
            act: Activation::None,
        }
    }

    #[test]
    fn plain_row_major_product_swaps_operands() {
        // A [2,3] @ B [3,4] -> D [2,4], all row-major
        let a = Matrix::row_major(0x1000, 2, 3);
        let b = Matrix::row_major(0x2000, 3, 4);
        let d = Matrix::row_major(0x3000, 2, 4);
        let p = lt_problem(&a, &b, &d, 1).unwrap();
        assert_eq!((p.m, p.n, p.k), (4, 2, 3));
        // cuBLASLt's A is our B seen column-major: [4, 3], ld 4, op N
        assert_eq!(
            p.a,
            LtOperand {
                trans: false,
                rows: 4,
                cols: 3,
                ld: 4,
                batch_stride: 12
            }
        );
        // its B is our A: column-major [3, 2], ld 3, op N
        assert_eq!(
            p.b,
            LtOperand {
                trans: false,
                rows: 3,
                cols: 2,
                ld: 3,
                batch_stride: 6
            }
        );
        assert_eq!(
            p.d,
            LtOperand {
                trans: false,
                rows: 4,
                cols: 2,
                ld: 4,
                batch_stride: 8
            }
        );
        assert_eq!(p.batch, 1);
    }

    #[test]
    fn transposed_views_become_transpose_flags() {
        // x [5,3] @ w.t() where w is row-major [4,3]: B = w^T [3,4], stored as w
        let w_t = Tensor::zeros(&[4, 3], DType::F32).transpose(0, 1).unwrap();
        let (b, batch) = Matrix::from_strides(0x2000, w_t.dims(), w_t.strides()).unwrap();
        assert_eq!(batch, 1);
        assert_eq!((b.rows, b.cols, b.ld, b.transposed), (3, 4, 3, true));
        let a = Matrix::row_major(0x1000, 5, 3);
        let d = Matrix::row_major(0x3000, 5, 4);
        let p = lt_problem(&a, &b, &d, 1).unwrap();
        assert_eq!((p.m, p.n, p.k), (4, 5, 3));
        // w row-major [4,3] is column-major [3,4] ld 3; op T gives [4,3]
        assert_eq!(
            p.a,
            LtOperand {
                trans: true,
                rows: 3,
                cols: 4,
                ld: 3,
                batch_stride: 0
            }
        );
        assert!(!p.b.trans);

        // dW = dy^T x: dy row-major [5,4], dy.t() is [4,5] transposed
        let dy_t = Tensor::zeros(&[5, 4], DType::F32).transpose(0, 1).unwrap();
        let (a, _) = Matrix::from_strides(0x1000, dy_t.dims(), dy_t.strides()).unwrap();
        assert_eq!((a.rows, a.cols, a.ld, a.transposed), (4, 5, 4, true));
        let p = lt_problem(
            &a,
            &Matrix::row_major(0, 5, 3),
            &Matrix::row_major(0, 4, 3),
            1,
        )
        .unwrap();
        assert_eq!((p.m, p.n, p.k), (3, 4, 5));
        // dy row-major [5,4] = column-major [4,5] ld 4; op T gives [5,4]... as cuBLASLt's B
        assert_eq!(
            p.b,
            LtOperand {
                trans: true,
                rows: 4,
                cols: 5,
                ld: 4,
                batch_stride: 0
            }
        );
    }

    #[test]
    fn batched_views_collapse_their_batch_dims() {
        // [2,3,4,5] row-major: batch 6, stride 20
        let t = Tensor::zeros(&[2, 3, 4, 5], DType::F32);
        let dims = t.dims();
        let strides = crate::layout::contiguous_strides(dims);
        let (m, batch) = Matrix::from_strides(0, dims, &strides).unwrap();
        assert_eq!(batch, 6);
        assert_eq!(
            (m.rows, m.cols, m.ld, m.batch_stride, m.transposed),
            (4, 5, 5, 20, false)
        );
        // permute of the last two dims of [6,4,5]: transposed, same batch stride
        let (m, batch) = Matrix::from_strides(0, &[6, 5, 4], &[20, 1, 5]).unwrap();
        assert_eq!(batch, 6);
        assert_eq!(
            (m.rows, m.cols, m.ld, m.batch_stride, m.transposed),
            (5, 4, 5, 20, true)
        );
        // a GPU channels-last 4-D tensor [2,3,4,5] (strides [60,1,15,3]):
        // the matrix has no unit-stride dim: must be copied
        assert!(Matrix::from_strides(0, &[2, 3, 4, 5], &[60, 1, 15, 3]).is_none());
        // batch dims that do not collapse: must be copied
        assert!(Matrix::from_strides(0, &[2, 3, 4, 5], &[100, 20, 5, 1]).is_none());
        // a broadcast batch is refused, a size-1 batch dim is ignored
        assert!(Matrix::from_strides(0, &[3, 4, 5], &[0, 5, 1]).is_none());
        let (m, batch) = Matrix::from_strides(0, &[1, 4, 5], &[999, 5, 1]).unwrap();
        assert_eq!((batch, m.batch_stride), (1, 0));
        // a narrowed view keeps its row stride as ld
        let (m, _) = Matrix::from_strides(0, &[4, 3], &[8, 1]).unwrap();
        assert_eq!((m.ld, m.transposed), (8, false));
        // overlapping rows (stride < cols) cannot be read in place
        assert!(Matrix::from_strides(0, &[4, 3], &[2, 1]).is_none());

        let a = Matrix {
            batch_stride: 20,
            ..Matrix::row_major(0, 4, 5)
        };
        let b = Matrix::row_major(0, 5, 2);
        let d = Matrix::row_major(0, 4, 2);
        let p = lt_problem(&a, &b, &d, 6).unwrap();
        assert_eq!(p.batch, 6);
        assert_eq!(
            (p.a.batch_stride, p.b.batch_stride, p.d.batch_stride),
            (10, 20, 8)
        );
    }

    #[test]
    fn inconsistent_problems_are_refused() {
        let a = Matrix::row_major(0, 2, 3);
        let d = Matrix::row_major(0, 2, 4);
        let e = lt_problem(&a, &Matrix::row_major(0, 5, 4), &d, 1).unwrap_err();
        assert!(e.to_string().contains("does not chain"), "{e}");
        let bad_ld = Matrix {
            ld: 2,
            ..Matrix::row_major(0, 3, 4)
        };
        let e = lt_problem(&a, &bad_ld, &d, 1).unwrap_err();
        assert!(e.to_string().contains("leading dim"), "{e}");
        let e = lt_problem(
            &Matrix::row_major(0, 2, 0),
            &Matrix::row_major(0, 0, 4),
            &d,
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn epilogue_follows_bias_and_activation() {
        use sys::cublasLtEpilogue_t::*;
        assert_eq!(epilogue(false, Activation::None), CUBLASLT_EPILOGUE_DEFAULT);
        assert_eq!(epilogue(true, Activation::None), CUBLASLT_EPILOGUE_BIAS);
        assert_eq!(epilogue(false, Activation::Relu), CUBLASLT_EPILOGUE_RELU);
        assert_eq!(
            epilogue(true, Activation::Relu),
            CUBLASLT_EPILOGUE_RELU_BIAS
        );
        assert_eq!(epilogue(false, Activation::Gelu), CUBLASLT_EPILOGUE_GELU);
        assert_eq!(
            epilogue(true, Activation::Gelu),
            CUBLASLT_EPILOGUE_GELU_BIAS
        );
        // the values cuBLASLt's header gives them
        assert_eq!(CUBLASLT_EPILOGUE_BIAS as u32, 4);
        assert_eq!(CUBLASLT_EPILOGUE_GELU_BIAS as u32, 36);
    }

    #[test]
    fn cache_key_tells_problems_apart() {
        let a = Matrix::row_major(0x1000, 2, 3);
        let b = Matrix::row_major(0x2000, 3, 4);
        let d = Matrix::row_major(0x3000, 2, 4);
        let p = params(a, b, d, 1);
        let prob = lt_problem(&a, &b, &d, 1).unwrap();
        let key = algo_key(&p, &prob, false);
        // other buffers with the same alignment: same algorithm
        let p2 = params(Matrix { ptr: 0x9000, ..a }, b, d, 1);
        assert_eq!(algo_key(&p2, &prob, false), key);
        // a misaligned view, a bias, another dtype, TF32: different keys
        let p3 = params(Matrix { ptr: 0x1004, ..a }, b, d, 1);
        let k3 = algo_key(&p3, &prob, false);
        assert_ne!(k3, key);
        assert_eq!(k3.align, [256, 4, 256]);
        assert_ne!(
            algo_key(
                &GemmParams {
                    bias: Some(0x4000),
                    ..p
                },
                &prob,
                false
            ),
            key
        );
        assert_ne!(
            algo_key(
                &GemmParams {
                    dtype: DType::BF16,
                    ..p
                },
                &prob,
                false
            ),
            key
        );
        assert_ne!(algo_key(&p, &prob, true), key);
        // TF32 only matters for f32
        let bf = GemmParams {
            dtype: DType::BF16,
            ..p
        };
        assert_eq!(algo_key(&bf, &prob, true), algo_key(&bf, &prob, false));
        // another shape
        let bt = Matrix::row_major(0x2000, 3, 5);
        let dt = Matrix::row_major(0x3000, 2, 5);
        let prob2 = lt_problem(&a, &bt, &dt, 1).unwrap();
        assert_ne!(algo_key(&params(a, bt, dt, 1), &prob2, false), key);
    }

    #[test]
    fn usable_candidates_succeed_within_the_workspace() {
        let listed = [
            (0, 0),
            (15, 0), // CUBLAS_STATUS_NOT_SUPPORTED
            (0, WORKSPACE_BYTES),
            (0, WORKSPACE_BYTES + 1),
            (0, 4096),
        ];
        assert_eq!(usable(&listed), vec![0, 2, 4]);
        assert!(usable(&[]).is_empty());
        assert!(usable(&[(7, 0)]).is_empty());
    }

    #[test]
    fn timing_follows_the_switch_the_limit_and_the_candidate_count() {
        assert_eq!(search_plan(true, 0, 8), Ok(()));
        assert_eq!(search_plan(true, SEARCH_LIMIT - 1, 2), Ok(()));
        let off = search_plan(false, 0, 8).unwrap_err();
        assert!(off.contains("benchmark mode is off"), "{off}");
        let full = search_plan(true, SEARCH_LIMIT, 8).unwrap_err();
        assert!(full.contains(&SEARCH_LIMIT.to_string()), "{full}");
        // one candidate: nothing to choose between
        assert!(search_plan(true, 0, 1).is_err());
        assert!(search_plan(true, 0, 0).is_err());
        // the process-wide switch defaults on, like cudnn.benchmark here
        assert!(benchmark());
    }

    #[test]
    fn fastest_skips_failures_and_keeps_the_heuristic_order_on_ties() {
        let t = |ms: Option<f64>| Timing {
            status: if ms.is_some() { 0 } else { 15 },
            ms,
        };
        assert_eq!(
            fastest(&[t(Some(0.3)), t(Some(0.1)), t(Some(0.2))]),
            Some(1)
        );
        // a failed candidate is never chosen, however it would compare
        assert_eq!(fastest(&[t(None), t(Some(0.5)), t(None)]), Some(1));
        // a tie: the heuristic's earlier candidate
        assert_eq!(fastest(&[t(Some(0.2)), t(Some(0.2))]), Some(0));
        // a non-finite time is no measurement
        assert_eq!(fastest(&[t(Some(f64::NAN)), t(Some(0.9))]), Some(1));
        assert_eq!(fastest(&[t(None), t(None)]), None);
        assert_eq!(fastest(&[]), None);
    }

    #[test]
    fn span_covers_every_element_a_matrix_addresses() {
        // dense [4, 5]: 20 elements; padded rows (ld 8): 3*8 + 5
        assert_eq!(span(&Matrix::row_major(0, 4, 5), 1), 20);
        let padded = Matrix {
            ld: 8,
            ..Matrix::row_major(0, 4, 5)
        };
        assert_eq!(span(&padded, 1), 29);
        // transposed [4, 5] stored as [5, 4] with ld 6: 4*6 + 4
        let t = Matrix {
            ld: 6,
            transposed: true,
            ..Matrix::row_major(0, 4, 5)
        };
        assert_eq!(span(&t, 1), 28);
        // batched: (batch - 1) strides on top of one entry
        let b = Matrix {
            batch_stride: 32,
            ..Matrix::row_major(0, 4, 5)
        };
        assert_eq!(span(&b, 3), 2 * 32 + 20);
        assert_eq!(span(&Matrix::row_major(0, 0, 5), 1), 0);
        assert_eq!(span(&Matrix::row_major(0, 4, 5), 0), 0);
        // a conv's output D [N*H*W, Cout]: exactly its elements
        let d = Matrix::row_major(0, 2 * 56 * 56, 256);
        assert_eq!(span(&d, 1), 2 * 56 * 56 * 256);
    }

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_256() {
        assert_eq!(alignment(0x1000), 256);
        assert_eq!(alignment(0x1002), 2);
        assert_eq!(alignment(0x1010), 16);
        assert_eq!(alignment(0x1080), 128);
    }

    #[test]
    fn host_matmul_still_runs_on_the_cpu() {
        // The GPU dispatch must not catch host tensors (with or without a GPU).
        let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        let b = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2]).unwrap();
        let y = a.matmul(&b).unwrap();
        assert_eq!(y.device(), Device::Cpu);
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![4.0, 5.0, 10.0, 11.0]);
        let w = Tensor::from_vec(vec![1.0f32, 1.0, 1.0], &[1, 3]).unwrap();
        let bias = Tensor::from_vec(vec![0.5f32], &[1]).unwrap();
        let z = a.linear(&w, Some(&bias)).unwrap();
        assert_eq!(z.device(), Device::Cpu);
        assert_eq!(z.to_vec::<f32>().unwrap(), vec![6.5, 15.5]);
    }
}
