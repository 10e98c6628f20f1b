//! One convolution through cuDNN's graph (backend) API: the descriptors,
//! the engine configurations cuDNN's heuristics propose, and the execution
//! plans built from them. This is the API cuDNN's C++ frontend wraps for
//! PyTorch; it reaches engines the legacy calls of `dnn.rs` do not offer.
//!
//! A problem (direction, shape, dtype, beta, operand alignments) becomes
//! an operation graph of one convolution operation:
//! - x, w, y are tensor descriptors with logical dims [n, c, h, w],
//!   [k, c/groups, r, s], [n, k, oh, ow] and channels-last strides
//!   (`dnn::nhwc_strides`: NHWC and KRSC in memory), unique ids
//!   [`UID_X`], [`UID_W`], [`UID_Y`] whichever direction reads or writes
//!   them, and byte alignments of the call's pointers (part of the key:
//!   an engine may need 16-byte aligned operands);
//! - the convolution descriptor: f32 compute, cross-correlation, the
//!   shape's paddings, strides and dilations (groups are implied by c and
//!   the filter's c/groups);
//! - the operation: output = conv + beta * output (alpha 1).
//!
//! [`plans`] asks the heuristics (mode INSTANT, then FALLBACK when those
//! give no usable plan) for engine configurations and keeps those whose
//! plan finalises, that fit the workspace cap and that pass
//! [`Numerics::accepts`]: never DOWN_CONVERT_INPUTS or
//! REDUCED_PRECISION_REDUCTION (f16/bf16 data accumulate in f32, as the
//! legacy path promises), no TENSOR_CORE engine for strict f32 (TF32),
//! and no NONDETERMINISTIC one under `dnn::set_deterministic`.
//! PyTorch's cuDNN v8 path filters the same notes, except that it allows
//! reduced-precision reduction. Engines cuDNN compiles at run time come
//! last, only when no other gives a plan, unless `dnn::Rtc::Any` (as
//! PyTorch leaves them out unless asked for).
//!
//! Every descriptor is owned by a [`Desc`] (destroyed on drop), and a plan
//! keeps alive every descriptor it was built from.

use super::dnn::{nhwc_strides, ConvShape, Direction, Rtc};
use crate::{Error, Result};
use cudarc::cudnn::sys;
use std::ffi::c_void;

use sys::cudnnBackendAttributeName_t as A;
use sys::cudnnBackendAttributeType_t as T;
use sys::cudnnBackendDescriptorType_t as D;

const OP: &str = "conv2d (cuDNN graph API)";

/// The unique ids of the three tensors in every operation graph and
/// variant pack.
pub const UID_X: i64 = 1;
pub const UID_W: i64 = 2;
pub const UID_Y: i64 = 3;

/// At most this many engine configurations are taken from one heuristics
/// query (cuDNN lists them best first).
pub const MAX_CONFIGS: usize = 64;

/// The graph API's entry points with their status as a plain `u32`:
/// cudarc declares it as a Rust enum, and a code a newer cuDNN returns
/// that the binding does not list (cuDNN 9 keeps adding NOT_SUPPORTED_*
/// codes, which plans that do not finalise return) would be undefined
/// behaviour to read through it.
struct Fns {
    create: unsafe extern "C" fn(u32, *mut sys::cudnnBackendDescriptor_t) -> u32,
    destroy: unsafe extern "C" fn(sys::cudnnBackendDescriptor_t) -> u32,
    set: unsafe extern "C" fn(sys::cudnnBackendDescriptor_t, u32, u32, i64, *const c_void) -> u32,
    get: unsafe extern "C" fn(
        sys::cudnnBackendDescriptor_t,
        u32,
        u32,
        i64,
        *mut i64,
        *mut c_void,
    ) -> u32,
    finalize: unsafe extern "C" fn(sys::cudnnBackendDescriptor_t) -> u32,
    execute: unsafe extern "C" fn(
        sys::cudnnHandle_t,
        sys::cudnnBackendDescriptor_t,
        sys::cudnnBackendDescriptor_t,
    ) -> u32,
    error_string: unsafe extern "C" fn(u32) -> *const std::ffi::c_char,
}

/// [`Fns`] from the loaded libcudnn, looked up once; an error when it
/// lacks one of them.
fn fns() -> Result<&'static Fns> {
    static FNS: std::sync::OnceLock<std::result::Result<Fns, String>> = std::sync::OnceLock::new();
    FNS.get_or_init(|| {
        // SAFETY: only looks names up; each signature is cudnn_graph.h's
        // with the status (a C enum, 32 bits) as u32.
        unsafe {
            if !sys::is_culib_present() {
                return Err("libcudnn is not loadable".into());
            }
            let lib = sys::culib();
            let missing = |e: libloading::Error| {
                format!("the loaded libcudnn lacks a graph API entry point: {e}")
            };
            Ok(Fns {
                create: *lib.get(b"cudnnBackendCreateDescriptor").map_err(missing)?,
                destroy: *lib.get(b"cudnnBackendDestroyDescriptor").map_err(missing)?,
                set: *lib.get(b"cudnnBackendSetAttribute").map_err(missing)?,
                get: *lib.get(b"cudnnBackendGetAttribute").map_err(missing)?,
                finalize: *lib.get(b"cudnnBackendFinalize").map_err(missing)?,
                execute: *lib.get(b"cudnnBackendExecute").map_err(missing)?,
                error_string: *lib.get(b"cudnnGetErrorString").map_err(missing)?,
            })
        }
    })
    .as_ref()
    .map_err(|e| Error::arg(OP, e.clone()))
}

/// Whether the loaded libcudnn has the graph API (cuDNN 9 does; without
/// it only the legacy calls are used), or why not.
pub fn available() -> Result<()> {
    fns().map(|_| ())
}

/// cuDNN's name for status `s` (any value).
fn status_name(f: &Fns, s: u32) -> String {
    // SAFETY: cudnnGetErrorString returns a static string for any value.
    let p = unsafe { (f.error_string)(s) };
    if p.is_null() {
        return format!("status {s}");
    }
    // SAFETY: a NUL-terminated static string.
    let name = unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy();
    format!("{name} ({s})")
}

fn check(f: &Fns, what: &str, detail: impl std::fmt::Display, s: u32) -> Result<()> {
    if s == 0 {
        return Ok(());
    }
    Err(Error::arg(
        OP,
        format!("{what} failed for {detail}: {}", status_name(f, s)),
    ))
}

// ---------------------------------------------------------------------------
// Descriptors

/// One backend descriptor, destroyed on drop.
pub struct Desc {
    raw: sys::cudnnBackendDescriptor_t,
    kind: D,
    fns: &'static Fns,
}

// SAFETY: a descriptor is plain host memory owned by this value; the
// cuDNN state that holds plans is only used under dnn's lock.
unsafe impl Send for Desc {}
unsafe impl Sync for Desc {}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnBackendCreateDescriptor, destroyed once.
        let _ = unsafe { (self.fns.destroy)(self.raw) };
    }
}

impl Desc {
    pub fn new(kind: D) -> Result<Desc> {
        let fns = fns()?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: writes one descriptor handle.
        let s = unsafe { (fns.create)(kind as u32, &mut raw) };
        check(fns, "cudnnBackendCreateDescriptor", format!("{kind:?}"), s)?;
        Ok(Desc { raw, kind, fns })
    }

    /// Sets `attr` to `n` elements of `ty` read from `values`.
    ///
    /// # Safety
    /// `values` points at `n` elements of the C type `ty` names.
    unsafe fn set_raw(&self, attr: A, ty: T, n: usize, values: *const c_void) -> Result<()> {
        // SAFETY: the caller's contract; self is live.
        let s = unsafe { (self.fns.set)(self.raw, attr as u32, ty as u32, n as i64, values) };
        let detail = format!("{attr:?} ({ty:?} x{n}) of {:?}", self.kind);
        check(self.fns, "cudnnBackendSetAttribute", detail, s)
    }

    pub fn set_i64s(&self, attr: A, v: &[i64]) -> Result<()> {
        // SAFETY: v holds v.len() i64s.
        unsafe { self.set_raw(attr, T::CUDNN_TYPE_INT64, v.len(), v.as_ptr().cast()) }
    }

    /// An attribute of a C enum type (`ty`), given as its value.
    pub fn set_enum(&self, attr: A, ty: T, v: u32) -> Result<()> {
        // SAFETY: C enums are 32-bit; one value.
        unsafe { self.set_raw(attr, ty, 1, (&v as *const u32).cast()) }
    }

    pub fn set_f32(&self, attr: A, v: f32) -> Result<()> {
        // SAFETY: one float.
        unsafe { self.set_raw(attr, T::CUDNN_TYPE_FLOAT, 1, (&v as *const f32).cast()) }
    }

    pub fn set_descs(&self, attr: A, v: &[&Desc]) -> Result<()> {
        let raw: Vec<sys::cudnnBackendDescriptor_t> = v.iter().map(|d| d.raw).collect();
        // SAFETY: raw holds raw.len() live descriptors.
        unsafe {
            self.set_raw(
                attr,
                T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
                raw.len(),
                raw.as_ptr().cast(),
            )
        }
    }

    pub fn set_handle(&self, attr: A, h: sys::cudnnHandle_t) -> Result<()> {
        // SAFETY: one handle.
        unsafe {
            self.set_raw(
                attr,
                T::CUDNN_TYPE_HANDLE,
                1,
                (&h as *const sys::cudnnHandle_t).cast(),
            )
        }
    }

    pub fn set_ptrs(&self, attr: A, v: &[*mut c_void]) -> Result<()> {
        // SAFETY: v holds v.len() pointers.
        unsafe { self.set_raw(attr, T::CUDNN_TYPE_VOID_PTR, v.len(), v.as_ptr().cast()) }
    }

    pub fn finalize(&self) -> Result<()> {
        // SAFETY: self is live.
        let s = unsafe { (self.fns.finalize)(self.raw) };
        check(
            self.fns,
            "cudnnBackendFinalize",
            format!("{:?}", self.kind),
            s,
        )
    }

    /// Reads up to `max` elements of `attr` into `out` (room for `max`
    /// elements of `ty`); returns how many cuDNN has.
    ///
    /// # Safety
    /// `out` has room for `max` elements of the C type `ty` names (null
    /// when `max` is 0).
    unsafe fn get_raw(&self, attr: A, ty: T, max: usize, out: *mut c_void) -> Result<usize> {
        let mut n: i64 = 0;
        // SAFETY: the caller's contract; self is live.
        let s =
            unsafe { (self.fns.get)(self.raw, attr as u32, ty as u32, max as i64, &mut n, out) };
        let detail = format!("{attr:?} of {:?}", self.kind);
        check(self.fns, "cudnnBackendGetAttribute", detail, s)?;
        Ok(n.max(0) as usize)
    }

    pub fn get_i64(&self, attr: A) -> Result<i64> {
        let mut v: i64 = 0;
        // SAFETY: room for one i64.
        unsafe { self.get_raw(attr, T::CUDNN_TYPE_INT64, 1, (&mut v as *mut i64).cast()) }?;
        Ok(v)
    }

    /// Up to `max` values of an enum-typed attribute, as raw values (read
    /// through Rust enums, a value the binding does not list would be
    /// undefined behaviour).
    pub fn get_enums(&self, attr: A, ty: T, max: usize) -> Result<Vec<u32>> {
        let mut v = vec![0u32; max];
        // SAFETY: room for `max` 32-bit enums.
        let n = unsafe { self.get_raw(attr, ty, max, v.as_mut_ptr().cast()) }?;
        v.truncate(n.min(max));
        Ok(v)
    }

    /// Up to `max` descriptors of `kind` that `attr` lists (cuDNN fills
    /// descriptors the caller created). The count is asked first; if cuDNN
    /// does not answer it for `attr`, or answers 0 (libcudnn 9.26 does for
    /// an engine config's knob choices, which it then lists when offered
    /// room), `max` are offered.
    pub fn get_descs(&self, attr: A, kind: D, max: usize) -> Result<Vec<Desc>> {
        // SAFETY: max 0 with a null array only asks the count.
        let count = unsafe {
            self.get_raw(
                attr,
                T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
                0,
                std::ptr::null_mut(),
            )
        };
        let want = match count {
            Ok(c) if c > 0 => c.min(max),
            _ => max,
        };
        let mut descs = (0..want)
            .map(|_| Desc::new(kind))
            .collect::<Result<Vec<_>>>()?;
        let mut raw: Vec<sys::cudnnBackendDescriptor_t> = descs.iter().map(|d| d.raw).collect();
        // SAFETY: raw holds `want` live descriptors of the kind attr lists.
        let n = unsafe {
            self.get_raw(
                attr,
                T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
                want,
                raw.as_mut_ptr().cast(),
            )
        }?;
        descs.truncate(n.min(want));
        Ok(descs)
    }
}

// ---------------------------------------------------------------------------
// The problem and its operation graph

/// What a plan is built for: everything that changes which engines are
/// valid or fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Problem {
    pub dir: Direction,
    pub shape: ConvShape,
    pub data: sys::cudnnDataType_t,
    /// output = conv + beta * output; the bits of an f32.
    pub beta_bits: u32,
    /// Byte alignment of the x, w and y (or dx, dw, dy) pointers, at most
    /// 16 (see [`alignment`]).
    pub align: [u8; 3],
    /// Which engines are acceptable.
    pub numerics: Numerics,
}

/// The largest power of two (at most 16) that divides `ptr`: what cuDNN's
/// engines care about (PyTorch keys its plans by the same value).
pub fn alignment(ptr: u64) -> u8 {
    if ptr == 0 {
        return 16;
    }
    1u64.checked_shl(ptr.trailing_zeros())
        .map_or(16, |a| a.min(16)) as u8
}

/// The engines a problem accepts, by cuDNN's numerical notes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Numerics {
    /// Tensor-core engines allowed (false: strict f32, no TF32).
    pub tensor_cores: bool,
    pub deterministic: bool,
}

use sys::cudnnBackendNumericalNote_t as Note;
const NOTE_TENSOR_CORE: u32 = Note::CUDNN_NUMERICAL_NOTE_TENSOR_CORE as u32;
const NOTE_DOWN_CONVERT_INPUTS: u32 = Note::CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS as u32;
const NOTE_REDUCED_PRECISION_REDUCTION: u32 =
    Note::CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION as u32;
const NOTE_NONDETERMINISTIC: u32 = Note::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC as u32;

impl Numerics {
    /// Whether an engine with these numerical notes may run the problem.
    pub fn accepts(&self, notes: &[u32]) -> bool {
        notes.iter().all(|&n| match n {
            NOTE_DOWN_CONVERT_INPUTS | NOTE_REDUCED_PRECISION_REDUCTION => false,
            NOTE_TENSOR_CORE => self.tensor_cores,
            NOTE_NONDETERMINISTIC => !self.deterministic,
            _ => true,
        })
    }
}

fn i64s<const N: usize>(v: [usize; N]) -> Result<[i64; N]> {
    let mut out = [0i64; N];
    for (o, &x) in out.iter_mut().zip(&v) {
        *o = i64::try_from(x).map_err(|_| Error::arg(OP, format!("{v:?} does not fit an i64")))?;
    }
    Ok(out)
}

fn tensor(uid: i64, data: sys::cudnnDataType_t, dims: [usize; 4], align: u8) -> Result<Desc> {
    let t = Desc::new(D::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
    t.set_enum(
        A::CUDNN_ATTR_TENSOR_DATA_TYPE,
        T::CUDNN_TYPE_DATA_TYPE,
        data as u32,
    )?;
    t.set_i64s(A::CUDNN_ATTR_TENSOR_DIMENSIONS, &i64s(dims)?)?;
    t.set_i64s(A::CUDNN_ATTR_TENSOR_STRIDES, &i64s(nhwc_strides(dims))?)?;
    t.set_i64s(A::CUDNN_ATTR_TENSOR_UNIQUE_ID, &[uid])?;
    t.set_i64s(A::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, &[i64::from(align)])?;
    t.finalize()?;
    Ok(t)
}

/// The finalised descriptors of a problem's one operation, before any
/// handle is involved: x, w, y, the convolution and the operation.
pub struct Operation {
    pub tensors: [Desc; 3],
    pub conv: Desc,
    pub op: Desc,
}

/// Builds and finalises `p`'s descriptors.
pub fn operation(p: &Problem) -> Result<Operation> {
    let s = &p.shape;
    let x = tensor(UID_X, p.data, s.x_dims(), p.align[0])?;
    let w = tensor(UID_W, p.data, s.w_dims(), p.align[1])?;
    let y = tensor(UID_Y, p.data, s.y_dims(), p.align[2])?;
    let conv = Desc::new(D::CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR)?;
    let float = sys::cudnnDataType_t::CUDNN_DATA_FLOAT as u32;
    conv.set_enum(
        A::CUDNN_ATTR_CONVOLUTION_COMP_TYPE,
        T::CUDNN_TYPE_DATA_TYPE,
        float,
    )?;
    let xcorr = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION as u32;
    conv.set_enum(
        A::CUDNN_ATTR_CONVOLUTION_CONV_MODE,
        T::CUDNN_TYPE_CONVOLUTION_MODE,
        xcorr,
    )?;
    conv.set_i64s(A::CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, &[2])?;
    conv.set_i64s(A::CUDNN_ATTR_CONVOLUTION_DILATIONS, &i64s(s.dilation)?)?;
    conv.set_i64s(A::CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, &i64s(s.stride)?)?;
    conv.set_i64s(A::CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, &i64s(s.padding)?)?;
    conv.set_i64s(A::CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, &i64s(s.padding)?)?;
    conv.finalize()?;
    // (kind, alpha, beta, conv, [attribute, tensor] x 3)
    let (kind, alpha, beta, cd, slots) = match p.dir {
        Direction::Forward => (
            D::CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
            A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
            A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA,
            A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
            [
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
            ],
        ),
        Direction::BackwardData => (
            D::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
            A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
            A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA,
            A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
            [
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
            ],
        ),
        Direction::BackwardFilter => (
            D::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
            A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
            A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA,
            A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
            [
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
            ],
        ),
    };
    let op = Desc::new(kind)?;
    op.set_f32(alpha, 1.0)?;
    op.set_f32(beta, f32::from_bits(p.beta_bits))?;
    op.set_descs(cd, &[&conv])?;
    for (attr, t) in slots.into_iter().zip([&x, &w, &y]) {
        op.set_descs(attr, &[t])?;
    }
    op.finalize()?;
    Ok(Operation {
        tensors: [x, w, y],
        conv,
        op,
    })
}

// ---------------------------------------------------------------------------
// Plans

/// One execution plan and everything it was built from.
pub struct Plan {
    pub plan: Desc,
    pub workspace: usize,
    /// The engine and its knobs, as cuDNN's frontend tags plans
    /// ("eng<global index>_k<knob>=<value>...").
    pub name: String,
    // kept alive for the plan (never read again)
    _config: Desc,
    _graph: std::sync::Arc<Graph>,
}

/// A problem's operation graph, bound to a cuDNN handle.
pub struct Graph {
    pub graph: Desc,
    _op: Operation,
}

/// `p`'s operation graph on handle `h`.
pub fn graph(h: sys::cudnnHandle_t, p: &Problem) -> Result<std::sync::Arc<Graph>> {
    let op = operation(p)?;
    let graph = Desc::new(D::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
    graph.set_handle(A::CUDNN_ATTR_OPERATIONGRAPH_HANDLE, h)?;
    graph.set_descs(A::CUDNN_ATTR_OPERATIONGRAPH_OPS, &[&op.op])?;
    graph.finalize()?;
    Ok(std::sync::Arc::new(Graph { graph, _op: op }))
}

/// "eng<index>_k<type>=<value>..." for an engine configuration.
fn config_name(engine: &Desc, config: &Desc) -> String {
    let index = engine
        .get_i64(A::CUDNN_ATTR_ENGINE_GLOBAL_INDEX)
        .unwrap_or(-1);
    let mut name = format!("eng{index}");
    if let Ok(knobs) = config.get_descs(
        A::CUDNN_ATTR_ENGINECFG_KNOB_CHOICES,
        D::CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR,
        64,
    ) {
        for k in knobs {
            let ty = k.get_enums(
                A::CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE,
                T::CUDNN_TYPE_KNOB_TYPE,
                1,
            );
            let v = k.get_i64(A::CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE);
            if let (Ok(ty), Ok(v)) = (ty, v) {
                if let Some(ty) = ty.first() {
                    name += &format!("_k{ty}={v}");
                }
            }
        }
    }
    name
}

/// Why the engine configurations cuDNN listed were not all usable, for the
/// error and the profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listed {
    pub configs: usize,
    pub not_finalized: usize,
    pub rejected_numerics: usize,
    pub over_workspace: usize,
    /// Configurations skipped because their engine is compiled at run time
    /// (tried only if no other gave a plan, unless `dnn::Rtc::Any`).
    pub runtime_compiled: usize,
    /// Plans were still to be built when the search's time budget ran out.
    pub out_of_time: bool,
    /// The first errors met (heuristics or plans that did not finalise).
    pub errors: Vec<String>,
}

impl Listed {
    fn error(&mut self, e: Error) {
        if self.errors.len() < 3 {
            self.errors.push(e.to_string());
        }
    }
}

/// The heuristics' engine configurations for graph `g` in `mode`; none
/// (the error kept in `listed`) when the list cannot be had.
fn heuristics(g: &Graph, mode: sys::cudnnBackendHeurMode_t, listed: &mut Listed) -> Vec<Desc> {
    let list = Desc::new(D::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR).and_then(|heur| {
        heur.set_descs(A::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &[&g.graph])?;
        heur.set_enum(
            A::CUDNN_ATTR_ENGINEHEUR_MODE,
            T::CUDNN_TYPE_HEUR_MODE,
            mode as u32,
        )?;
        heur.finalize()?;
        heur.get_descs(
            A::CUDNN_ATTR_ENGINEHEUR_RESULTS,
            D::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR,
            MAX_CONFIGS,
        )
    });
    match list {
        Ok(configs) => {
            listed.configs += configs.len();
            configs
        }
        Err(e) => {
            listed.error(e);
            Vec::new()
        }
    }
}

/// Whether cuDNN compiles `engine`'s kernel at run time (behaviour note
/// RUNTIME_COMPILATION); an engine whose notes cannot be read counts as
/// built in.
fn runtime_compiled(engine: &Desc) -> bool {
    const RTC: u32 =
        sys::cudnnBackendBehaviorNote_t::CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION as u32;
    engine
        .get_enums(
            A::CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE,
            T::CUDNN_TYPE_BEHAVIOR_NOTE,
            8,
        )
        .is_ok_and(|notes| notes.contains(&RTC))
}

/// The passes of [`plans`] over the heuristics' lists: (mode, which
/// engines: `None` any, `Some(rtc)` only those that are, or are not,
/// compiled at run time). It stops after the first pass that gives a plan.
fn passes(rtc: Rtc) -> &'static [(usize, Option<bool>)] {
    match rtc {
        Rtc::Any => &[(0, None), (1, None)],
        Rtc::Fallback => &[
            (0, Some(false)),
            (1, Some(false)),
            (0, Some(true)),
            (1, Some(true)),
        ],
    }
}

/// Up to `max` plans for `p` from the heuristics' engine configurations
/// (INSTANT mode, then FALLBACK when INSTANT gives none), in the
/// heuristics' order: those that finalise, pass `p.numerics` and need at
/// most `cap` workspace bytes. Engines compiled at run time are tried as
/// `rtc` says: with the others, or only once neither mode's other engines
/// gave a plan. Once one plan is built, no more are after `budget`.
pub fn plans(
    h: sys::cudnnHandle_t,
    p: &Problem,
    cap: usize,
    max: usize,
    budget: std::time::Duration,
    rtc: Rtc,
) -> Result<(Vec<Plan>, Listed)> {
    let t0 = std::time::Instant::now();
    let g = graph(h, p)?;
    let mut listed = Listed::default();
    let mut out = Vec::new();
    let modes = [
        sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_INSTANT,
        sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_FALLBACK,
    ];
    // each mode's list, asked for once, when a pass first needs it; a
    // configuration moves into the plan built from it
    let mut lists: [Option<Vec<Option<Desc>>>; 2] = [None, None];
    for &(mode, wanted) in passes(rtc) {
        let configs = lists[mode].get_or_insert_with(|| {
            heuristics(&g, modes[mode], &mut listed)
                .into_iter()
                .map(Some)
                .collect()
        });
        for slot in configs.iter_mut() {
            let Some(config) = slot.as_ref() else {
                continue;
            };
            if out.len() >= max {
                break;
            }
            if !out.is_empty() && t0.elapsed() > budget {
                listed.out_of_time = true;
                break;
            }
            let engine = match config.get_descs(
                A::CUDNN_ATTR_ENGINECFG_ENGINE,
                D::CUDNN_BACKEND_ENGINE_DESCRIPTOR,
                1,
            ) {
                Ok(mut e) if e.len() == 1 => e.remove(0),
                other => {
                    // counted once, in the pass that takes any engine or
                    // the built-in ones
                    if wanted != Some(true) {
                        listed.not_finalized += 1;
                        if let Err(e) = other {
                            listed.error(e);
                        }
                    }
                    continue;
                }
            };
            let compiled = runtime_compiled(&engine);
            if let Some(want) = wanted {
                if compiled != want {
                    listed.runtime_compiled += usize::from(compiled);
                    continue;
                }
            }
            // an engine whose notes cannot be read is not trusted
            let notes = engine.get_enums(
                A::CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
                T::CUDNN_TYPE_NUMERICAL_NOTE,
                32,
            );
            if !notes.is_ok_and(|n| p.numerics.accepts(&n)) {
                listed.rejected_numerics += 1;
                continue;
            }
            let plan = Desc::new(D::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
            let built = plan
                .set_handle(A::CUDNN_ATTR_EXECUTION_PLAN_HANDLE, h)
                .and_then(|_| plan.set_descs(A::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &[config]))
                .and_then(|_| plan.finalize())
                .and_then(|_| plan.get_i64(A::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE));
            let workspace = match built {
                Ok(ws) => ws.max(0) as usize,
                Err(e) => {
                    listed.not_finalized += 1;
                    listed.error(e);
                    continue;
                }
            };
            if workspace > cap {
                listed.over_workspace += 1;
                continue;
            }
            let mut name = config_name(&engine, config);
            if compiled {
                name += "_rtc";
            }
            out.push(Plan {
                name,
                plan,
                workspace,
                _config: slot.take().expect("the configuration just used"),
                _graph: g.clone(),
            });
        }
        if !out.is_empty() {
            break;
        }
    }
    Ok((out, listed))
}

/// Runs `plan` on handle `h` with x, w, y (or dx, dw, dy) at `ptrs` and
/// `workspace` (at least the plan's bytes; 0 when it needs none).
///
/// # Safety
/// The pointers address live device buffers that match the plan's
/// problem (the sizes and dtype of its tensors; the output initialised
/// when its beta is not 0), on the GPU the handle's stream belongs to.
pub unsafe fn execute(
    h: sys::cudnnHandle_t,
    plan: &Plan,
    ptrs: [u64; 3],
    workspace: u64,
) -> Result<()> {
    let pack = Desc::new(D::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
    let data: Vec<*mut c_void> = ptrs.iter().map(|&p| p as usize as *mut c_void).collect();
    pack.set_i64s(
        A::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
        &[UID_X, UID_W, UID_Y],
    )?;
    pack.set_ptrs(A::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, &data)?;
    pack.set_ptrs(
        A::CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
        &[workspace as usize as *mut c_void],
    )?;
    pack.finalize()?;
    // SAFETY: the caller's contract; plan and pack are finalised.
    let s = unsafe { (pack.fns.execute)(h, plan.plan.raw, pack.raw) };
    check(pack.fns, "cudnnBackendExecute", &plan.name, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_16() {
        assert_eq!(alignment(0x1000), 16);
        assert_eq!(alignment(0x1008), 8);
        assert_eq!(alignment(0x1002), 2);
        assert_eq!(alignment(0x1001), 1);
        assert_eq!(alignment(0x1010), 16);
        assert_eq!(alignment(0), 16);
    }

    #[test]
    fn numerics_filter_the_notes_pytorch_filters_and_reduced_precision() {
        let strict = Numerics {
            tensor_cores: false,
            deterministic: true,
        };
        let loose = Numerics {
            tensor_cores: true,
            deterministic: false,
        };
        for n in [strict, loose] {
            assert!(n.accepts(&[]));
            assert!(n.accepts(&[5, 6]), "Winograd notes are fine");
            assert!(!n.accepts(&[NOTE_DOWN_CONVERT_INPUTS]));
            assert!(!n.accepts(&[NOTE_REDUCED_PRECISION_REDUCTION]));
        }
        assert!(!strict.accepts(&[NOTE_TENSOR_CORE]));
        assert!(loose.accepts(&[NOTE_TENSOR_CORE]));
        assert!(!strict.accepts(&[NOTE_NONDETERMINISTIC]));
        assert!(loose.accepts(&[NOTE_NONDETERMINISTIC, NOTE_TENSOR_CORE]));
    }

    /// Every direction's descriptors finalise in a real libcudnn (no GPU
    /// or handle is needed up to the operation): run where cuDNN 9 is on
    /// LD_LIBRARY_PATH, e.g. `LD_LIBRARY_PATH=<site-packages>/nvidia/cudnn/lib
    /// cargo test -p engine dnn_graph -- --ignored`.
    #[test]
    #[ignore = "needs libcudnn.so.9 on LD_LIBRARY_PATH"]
    fn operations_finalize_in_libcudnn() {
        use crate::layout::Conv2dParams;
        // SAFETY: only tries to open the library.
        assert!(
            unsafe { sys::is_culib_present() },
            "libcudnn is not on LD_LIBRARY_PATH"
        );
        let p = |stride, padding, dilation, groups| Conv2dParams {
            stride: [stride; 2],
            padding: [padding; 2],
            dilation: [dilation; 2],
            groups,
        };
        let shapes = [
            ConvShape::new([2, 64, 56, 56], [64, 64, 3, 3], p(1, 1, 1, 1)).unwrap(),
            ConvShape::new([2, 3, 224, 224], [64, 3, 7, 7], p(2, 3, 1, 1)).unwrap(),
            ConvShape::new([3, 12, 9, 7], [20, 3, 3, 3], p(2, 1, 2, 4)).unwrap(),
        ];
        let datas = [
            sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            sys::cudnnDataType_t::CUDNN_DATA_HALF,
            sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        ];
        for shape in shapes {
            for data in datas {
                for dir in [
                    Direction::Forward,
                    Direction::BackwardData,
                    Direction::BackwardFilter,
                ] {
                    for beta in [0.0f32, 1.0] {
                        let problem = Problem {
                            dir,
                            shape,
                            data,
                            beta_bits: beta.to_bits(),
                            align: [16, 16, 8],
                            numerics: Numerics {
                                tensor_cores: true,
                                deterministic: false,
                            },
                        };
                        if let Err(e) = operation(&problem) {
                            panic!("{problem:?}: {e}");
                        }
                    }
                }
            }
        }
        // an output size that does not follow from the geometry is refused
        let mut wrong = shapes[0];
        wrong.oh += 1;
        let problem = Problem {
            dir: Direction::Forward,
            shape: wrong,
            data: datas[0],
            beta_bits: 0,
            align: [16; 3],
            numerics: Numerics {
                tensor_cores: false,
                deterministic: false,
            },
        };
        assert!(operation(&problem).is_err());
        // a descriptor with a missing attribute does not finalise
        let t = Desc::new(D::CUDNN_BACKEND_TENSOR_DESCRIPTOR).unwrap();
        t.set_i64s(A::CUDNN_ATTR_TENSOR_DIMENSIONS, &[1, 2, 3, 4])
            .unwrap();
        // (named by cuDNN, its status read as a plain integer)
        let e = t.finalize().unwrap_err().to_string();
        assert!(e.contains("CUDNN_STATUS_"), "{e}");
    }
}
