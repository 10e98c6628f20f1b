//! The profiler: where a training step's time goes, op by op, against the
//! machine's ceiling — a roofline table and its JSON.
//!
//! It hooks the same per-op point as the audit trace (`trace::op`): while a
//! profile runs ([`start`] .. [`stop`]), every op the engine executes,
//! forward and backward, is timed and aggregated per (op, phase, what ran
//! it, dtype, input and output shapes) into calls, time, FLOPs and bytes
//! ([`cost`] says what each formula counts).
//!
//! Timing. On the CPU ops are synchronous, so an op's wall time is exact.
//! On a GPU each op gets a pair of timing-enabled CUDA events recorded on
//! the stream it is queued on, before and after it; they are read only
//! when the profile is collected ([`stop`]), so profiling adds no
//! synchronisation to the step. An op's event time is the stream's time
//! between the two events: when the host queues work more slowly than the
//! GPU runs it, the gaps the GPU waits for the host are included.
//!
//! Times are exclusive: an op that runs other traced ops (a backward that
//! calls `add`, ...) is charged its own time minus theirs, so the rows add
//! up to the time spent in ops.
//!
//! On CUDA it also records, per convolution and GEMM call, the algorithm
//! that ran (cuDNN's algorithm, cuBLASLt's configuration; [`algo_used`])
//! and, for every algorithm search the process made (cuDNN Find with its
//! per-candidate timings, or a heuristic), what was searched, what was
//! chosen and how long the search took ([`search`]; searches happen on an
//! op's first call, usually in the warm-up steps before a profile starts,
//! so these are kept for the whole process, at most [`MAX_SEARCHES`]).

use crate::{DType, Device, Error, Result, Tensor};
use cudarc::driver::CudaEvent;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Op instances one profile times at most; later ones are counted in
/// `dropped` (a bound on the profile's memory: two events or a float each).
pub const MAX_OPS: usize = 4_000_000;
/// Algorithm searches kept for the process.
pub const MAX_SEARCHES: usize = 4096;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static SESSION_ID: AtomicU64 = AtomicU64::new(0);
static SESSION: Mutex<Option<Session>> = Mutex::new(None);
static SEARCHES: Mutex<Vec<Search>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---- ceilings ----

/// What "100 %" means: the peak FLOP/s and the copy bandwidth the table
/// compares each row against, and where those numbers come from.
#[derive(Clone, Debug, PartialEq)]
pub struct Ceiling {
    pub flops_per_s: f64,
    /// Bytes moved per second by a large copy (read + write counted).
    pub bytes_per_s: f64,
    pub source: String,
}

impl Ceiling {
    pub fn new(flops_per_s: f64, bytes_per_s: f64, source: impl Into<String>) -> Result<Ceiling> {
        for (what, v) in [
            ("peak FLOP/s", flops_per_s),
            ("copy bandwidth", bytes_per_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::arg(
                    "profile",
                    format!("the ceiling's {what} must be a positive number, got {v}"),
                ));
            }
        }
        Ok(Ceiling {
            flops_per_s,
            bytes_per_s,
            source: source.into(),
        })
    }

    /// NVIDIA datasheet numbers (SXM parts, dense, no sparsity) for `card`
    /// ("h100" or "h200") and the compute dtype: BF16/F16 tensor cores
    /// 989.4 TFLOP/s, TF32 494.7, FP32 (no tensor cores) 66.9; HBM3 3.35
    /// TB/s (H100 SXM5 80 GB), HBM3e 4.8 TB/s (H200 SXM 141 GB). Datasheet
    /// peaks, not measured ones: pass measured numbers when you have them.
    pub fn gpu_datasheet(card: &str, dtype: DType, tf32: bool) -> Result<Ceiling> {
        let (name, bw) = match card.to_ascii_lowercase().as_str() {
            "h100" => ("H100 SXM5", 3.35e12),
            "h200" => ("H200 SXM", 4.8e12),
            other => {
                return Err(Error::arg(
                    "profile",
                    format!("no datasheet numbers for card {other:?} (h100, h200); pass the peaks"),
                ))
            }
        };
        let (flops, what) = match dtype {
            DType::BF16 | DType::F16 => (989.4e12, "dense BF16/FP16 tensor"),
            DType::F32 if tf32 => (494.7e12, "dense TF32 tensor"),
            _ => (66.9e12, "FP32 (no tensor cores)"),
        };
        Ceiling::new(
            flops,
            bw,
            format!(
                "{name} datasheet (not measured): {:.1} TFLOP/s {what}, {:.2} TB/s HBM",
                flops / 1e12,
                bw / 1e12
            ),
        )
    }
}

/// Independent FMA chains, enough to cover latency x ports: the loop is
/// bound by FMA throughput only: docs/PERF.md's "Ceiling", which
/// benches/cpu_kernels.rs also prints.
#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::x86_64::*;

    /// FLOPs per loop iteration of each kernel.
    pub const AVX512_FLOPS: f64 = (16 * 16 * 2) as f64;
    pub const AVX2_FLOPS: f64 = (12 * 8 * 2) as f64;

    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(iters: u64) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); 16];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        let mut out = [0.0f32; 16];
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, r| _mm512_add_ps(s, *r));
        // SAFETY: out holds 16 f32
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(iters: u64) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        let mut out = [0.0f32; 8];
        let s = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, r| _mm256_add_ps(s, *r));
        // SAFETY: out holds 8 f32
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }
}

/// One thread's FMA throughput loop: (FLOPs done, ISA name).
fn fma_loop(iters: u64) -> (f64, &'static str) {
    use std::hint::black_box;
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature (checked above).
            black_box(unsafe { fma::avx512(black_box(iters)) });
            return (iters as f64 * fma::AVX512_FLOPS, "avx512f");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features (checked above).
            black_box(unsafe { fma::avx2(black_box(iters)) });
            return (iters as f64 * fma::AVX2_FLOPS, "avx2+fma");
        }
    }
    let mut acc = [[1.0f32; 8]; 8];
    for _ in 0..black_box(iters) {
        for r in acc.iter_mut() {
            for v in r.iter_mut() {
                *v = v.mul_add(0.999_999, 1e-7);
            }
        }
    }
    black_box(acc);
    (iters as f64 * 128.0, "scalar")
}

/// The host's f32 FMA peak in FLOP/s: the FMA loop on every rayon thread
/// at once, best of 3 (docs/PERF.md's "Ceiling" method); also the ISA used.
pub fn measure_cpu_fma_peak() -> (f64, &'static str) {
    let iters = 20_000_000;
    let mut best = 0.0f64;
    let mut isa = "";
    for _ in 0..3 {
        let t = Instant::now();
        let per_thread = rayon::broadcast(|_| fma_loop(iters));
        let secs = t.elapsed().as_secs_f64();
        isa = per_thread[0].1;
        best = best.max(per_thread.iter().map(|p| p.0).sum::<f64>() / secs.max(1e-9));
    }
    (best, isa)
}

/// The host's copy bandwidth: the best of 5 parallel copies (rayon, as the
/// CPU ops are) of a 64 MiB buffer, counting the bytes read and written
/// (STREAM's convention for copy).
pub fn measure_cpu_copy_bandwidth() -> f64 {
    use rayon::prelude::*;
    const N: usize = 16 << 20; // f32 elements: 64 MiB
    let src: Vec<f32> = (0..N).map(|i| i as f32).collect();
    let mut dst = vec![0f32; N];
    let chunk = (N / rayon::current_num_threads().max(1) / 4).max(1 << 16);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    (2 * N * std::mem::size_of::<f32>()) as f64 / best.max(1e-9)
}

// ---- FLOP and byte formulas ----

/// One tensor an op reads or writes, as the formulas see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operand {
    pub dims: Vec<usize>,
    pub dtype: DType,
}

impl Operand {
    pub fn new(dims: &[usize], dtype: DType) -> Operand {
        Operand {
            dims: dims.to_vec(),
            dtype,
        }
    }
    fn of(t: &Tensor) -> Operand {
        Operand::new(t.dims(), t.dtype())
    }
    pub fn numel(&self) -> f64 {
        self.dims.iter().map(|&d| d as f64).product()
    }
    pub fn bytes(&self) -> f64 {
        self.numel() * self.dtype.size_in_bytes() as f64
    }
}

/// What one call of an op costs.
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    /// Floating-point operations (2 per multiply-add); None for the ops
    /// counted by bytes, or when the shapes the trace sees do not determine
    /// the count (see `formula`).
    pub flops: Option<f64>,
    /// Bytes of the tensors the op's trace line lists: inputs + outputs.
    pub bytes: f64,
    /// What `flops` and `bytes` count.
    pub formula: &'static str,
}

/// The cost of one call of `op` in `phase` ("forward" / "backward") from
/// the shapes the trace sees: the forward's inputs and outputs; a
/// backward's incoming gradient (`inputs`, one tensor) and the gradients
/// it produces, by input position (`outputs`, None where an input needs
/// none). Formulas:
///
/// - conv2d: 2·N·K·(C/groups)·R·S·P·Q per direction (x [N,C,H,W], weight
///   [K,C/groups,R,S], y [N,K,P,Q]), i.e. 2·numel(y)·numel(w)/K, counting
///   taps over zero padding and no bias add. The backward counts the
///   data gradient and the weight gradient each when produced (the bias
///   gradient, a reduction, adds none); without the weight gradient the
///   filter size is not visible and the FLOPs are unknown.
/// - conv_transpose2d (weight [Cin,Cout/groups,R,S]): the data gradient of
///   a convolution, 2·numel(x)·numel(w)/Cin per direction; the backward
///   needs the data gradient's shape.
/// - matmul: 2·m·n·k per batch entry (2·numel(y)·k); linear: 2·numel(y)·in
///   (bias add not counted); a backward counts 2·numel(dy)·k per operand
///   gradient produced.
/// - every other op (elementwise, BatchNorm, pooling, casts, copies,
///   losses, reductions): no FLOPs; bytes only.
///
/// Bytes are always the sum of the listed tensors: a lower bound of the
/// traffic (im2col buffers, re-reads and a backward's saved activations,
/// which its trace line does not list, are not counted).
pub fn cost(op: &str, phase: &str, inputs: &[Operand], outputs: &[Option<Operand>]) -> Cost {
    let bytes = inputs.iter().map(Operand::bytes).sum::<f64>()
        + outputs.iter().flatten().map(Operand::bytes).sum::<f64>();
    let out = |i: usize| outputs.get(i).and_then(Option::as_ref);
    let backward = phase == "backward";
    let (flops, formula) = match (op, backward) {
        ("conv2d", false) => match (inputs.get(1), out(0)) {
            (Some(w), Some(y)) if w.dims.len() == 4 && w.dims[0] > 0 => (
                Some(2.0 * y.numel() * w.numel() / w.dims[0] as f64),
                "2*N*K*(C/groups)*R*S*P*Q (taps over padding counted, bias add not)",
            ),
            _ => (None, "conv2d: shapes not recognised"),
        },
        ("conv2d", true) => {
            let dy = inputs.first();
            match (dy, out(0), out(1)) {
                (Some(dy), dx, Some(dw)) if dw.dims.len() == 4 && dw.dims[0] > 0 => {
                    let per = 2.0 * dy.numel() * dw.numel() / dw.dims[0] as f64;
                    let n = 1.0 + dx.is_some() as u8 as f64;
                    (
                        Some(per * n),
                        "2*N*K*(C/groups)*R*S*P*Q for the weight gradient, again for the data gradient when produced",
                    )
                }
                (Some(_), None, None) => (Some(0.0), "bias gradient only: a reduction, no FLOPs counted"),
                _ => (None, "data gradient without the weight gradient: filter size not visible, FLOPs unknown"),
            }
        }
        ("conv_transpose2d", false) => match (inputs.first(), inputs.get(1)) {
            (Some(x), Some(w)) if w.dims.len() == 4 && w.dims[0] > 0 => (
                Some(2.0 * x.numel() * w.numel() / w.dims[0] as f64),
                "2*N*Cin*(Cout/groups)*R*S*H*W (x [N,Cin,H,W]), bias add not counted",
            ),
            _ => (None, "conv_transpose2d: shapes not recognised"),
        },
        ("conv_transpose2d", true) => {
            match (out(0), out(1)) {
                (Some(dx), dw) if dx.dims.len() == 4 && dx.dims[1] > 0 => {
                    // dx has x's shape; the weight gradient's size is what the
                    // forward's weight had: Cin*(Cout/groups)*R*S. Without the
                    // weight gradient the kernel size is not visible.
                    match dw {
                    Some(dw) => (
                        Some(2.0 * 2.0 * dx.numel() * dw.numel() / dx.dims[1] as f64),
                        "2*N*Cin*(Cout/groups)*R*S*H*W for each of the data and weight gradients",
                    ),
                    None => (None, "data gradient without the weight gradient: FLOPs unknown"),
                }
                }
                (None, Some(_)) => (
                    None,
                    "weight gradient without the data gradient: FLOPs unknown",
                ),
                _ => (
                    Some(0.0),
                    "bias gradient only: a reduction, no FLOPs counted",
                ),
            }
        }
        ("matmul", false) => match (inputs.first(), out(0)) {
            (Some(a), Some(y)) if !a.dims.is_empty() => (
                Some(2.0 * y.numel() * *a.dims.last().unwrap() as f64),
                "2*m*n*k per batch entry",
            ),
            _ => (None, "matmul: shapes not recognised"),
        },
        ("matmul", true) => {
            // da [.., m, k] (last dim k) or db [.., k, n] (second-to-last)
            let k = out(0)
                .and_then(|a| a.dims.last().copied())
                .or_else(|| out(1).and_then(|b| b.dims.iter().rev().nth(1).copied()));
            let grads = out(0).is_some() as u8 + out(1).is_some() as u8;
            match (inputs.first(), k) {
                (Some(dy), Some(k)) => (
                    Some(2.0 * dy.numel() * k as f64 * grads as f64),
                    "2*m*n*k per operand gradient produced",
                ),
                _ => (Some(0.0), "no operand gradient produced"),
            }
        }
        ("linear", false) => match (inputs.get(1), out(0)) {
            (Some(w), Some(y)) if w.dims.len() == 2 => (
                Some(2.0 * y.numel() * w.dims[1] as f64),
                "2*rows*out*in (bias add not counted)",
            ),
            _ => (None, "linear: shapes not recognised"),
        },
        ("linear", true) => {
            let k = out(1)
                .and_then(|w| w.dims.get(1).copied())
                .or_else(|| out(0).and_then(|x| x.dims.last().copied()));
            let grads = out(0).is_some() as u8 + out(1).is_some() as u8;
            match (inputs.first(), k) {
                (Some(dy), Some(k)) => (
                    Some(2.0 * dy.numel() * k as f64 * grads as f64),
                    "2*rows*out*in per gradient produced (input, weight); the bias gradient is a reduction",
                ),
                _ => (Some(0.0), "bias gradient only: a reduction, no FLOPs counted"),
            }
        }
        _ => (None, "memory-bound: bytes of inputs + outputs"),
    };
    Cost {
        flops,
        bytes,
        formula,
    }
}

// ---- algorithm records (CUDA hooks) ----

/// One candidate a search timed.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub algo: String,
    /// The library's status for it (0: success).
    pub status: u32,
    /// Its time as the library measured it (cuDNN Find), in ms.
    pub ms: f64,
    pub workspace: usize,
}

/// One algorithm search: what was searched, how, what was chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Search {
    /// "cudnn", "cublasLt", or "conv route" (the 1x1 convolutions' choice
    /// between the two, `ops::conv::Pointwise::Auto`).
    pub lib: &'static str,
    /// The problem (direction, shape, dtype, math).
    pub problem: String,
    /// "find" (timed on the device), "heuristic", ...
    pub method: String,
    pub chosen: String,
    pub workspace: usize,
    /// Host time the whole choice took (the search included), in ms.
    pub ms: f64,
    /// The timed candidates, fastest first (empty for a heuristic).
    pub candidates: Vec<Candidate>,
}

/// Records an algorithm search (CUDA libraries call this once per new
/// problem, profiling or not; the process keeps the first MAX_SEARCHES).
pub fn search(s: Search) {
    let mut v = lock(&SEARCHES);
    if v.len() < MAX_SEARCHES {
        v.push(s);
    }
}

/// The searches recorded so far.
pub fn searches() -> Vec<Search> {
    lock(&SEARCHES).clone()
}

/// Names the algorithm a convolution or GEMM call ran, for the op running
/// it, while profiling (`label` is only called then).
pub fn algo_used(label: impl FnOnce() -> String) {
    if !active() {
        return;
    }
    STACK.with(|s| {
        if let Some(top) = s.borrow_mut().last_mut() {
            top.algos.push(label());
        }
    });
}

// ---- the per-op hook ----

enum Start {
    Cpu(Instant),
    Cuda(usize, CudaEvent),
    Untimed,
}

enum Time {
    Cpu(f64),
    Cuda(CudaEvent, CudaEvent),
    Untimed,
}

struct Timed {
    row: usize,
    parent: Option<usize>,
    time: Time,
}

struct Frame {
    session: u64,
    /// Index into the session's `timed`; None past MAX_OPS.
    id: Option<usize>,
    start: Start,
    algos: Vec<String>,
}

thread_local! {
    static STACK: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    op: String,
    phase: String,
    ran: String,
    inputs: Vec<Operand>,
    outputs: Vec<Option<Operand>>,
}

struct RowAcc {
    key: Key,
    cost: Cost,
    calls: u64,
    algos: BTreeMap<String, u64>,
}

struct Session {
    id: u64,
    ceiling: Ceiling,
    started: Instant,
    timed: Vec<Option<Timed>>,
    rows: Vec<RowAcc>,
    index: HashMap<Key, usize>,
    devices: BTreeSet<usize>,
    dropped: u64,
    untimed: u64,
    errors: u64,
    memory: Option<Watch>,
}

/// Memory in use on the device of the first profiled op (see [`Memory`]).
struct Watch {
    device: Device,
    memory: Memory,
}

impl Watch {
    /// A sample on `device` (other devices are not watched): at an op's
    /// start, as a backward pass starts (`Sampled::Backward`), or at the
    /// end of the op named.
    fn sample(&mut self, device: Device, at: Sampled) {
        if device != self.device {
            return;
        }
        let Some((now, allocator_peak)) = bytes_in_use(device) else {
            return;
        };
        let m = &mut self.memory;
        // a GPU allocator's own peak above every sample so far was reached
        // since the last sample: inside the op that ends here, or before
        // the op (or backward) that starts here
        if let Some(p) = allocator_peak.filter(|p| *p > m.peak) {
            m.peak = p;
            m.peak_at = match at {
                Sampled::End(op, phase, dims) => format!("inside {op} {phase} {dims:?}"),
                Sampled::Begin => "before an op started".into(),
                Sampled::Backward => "before the backward started".into(),
            };
        }
        if now > m.peak {
            m.peak = now;
            m.peak_at = match at {
                Sampled::End(op, phase, dims) => format!("after {op} {phase} {dims:?}"),
                Sampled::Begin => "as an op started".into(),
                Sampled::Backward => "as the backward started".into(),
            };
        }
        if let Sampled::Backward = at {
            m.after_forward = m.after_forward.max(now);
        }
    }
}

/// Where a memory sample is taken.
enum Sampled<'a> {
    Begin,
    Backward,
    /// The end of this op (name, phase, its first input's dims).
    End(&'a str, &'a str, &'a [usize]),
}

/// Bytes in use on `device` now, and on a GPU the allocator's own peak
/// since the profile began: the GPU caching allocator's allocated bytes
/// (host bookkeeping, no synchronisation), or what the host's malloc has
/// handed out (`host_memory::bytes_in_use`; None where it cannot say).
fn bytes_in_use(device: Device) -> Option<(f64, Option<f64>)> {
    match device {
        Device::Cuda(i) => crate::cuda::gpu(i).ok().map(|g| {
            let st = g.memory_stats();
            (st.allocated as f64, Some(st.peak_allocated as f64))
        }),
        Device::Cpu => crate::host_memory::bytes_in_use().map(|b| (b as f64, None)),
    }
}

/// What the profiled steps held in memory, in bytes, on the device of the
/// first profiled op: the GPU caching allocator's allocated bytes, or on
/// the CPU the bytes glibc's malloc has handed out (heap chunks in use
/// plus mapped blocks, which includes the process's other allocations).
/// Sampled at every op's start and end, and as each backward pass starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Memory {
    /// "cuda allocator" or "host malloc".
    pub source: &'static str,
    /// In use when the first profiled op started: the weights, the
    /// optimizer's state and the inputs.
    pub start: f64,
    /// In use when a backward pass started, the largest over the steps:
    /// `start` plus what the forward left for the backward (the saved
    /// activations, the loss).
    pub after_forward: f64,
    /// The largest sample; on a GPU also the allocator's own peak since the
    /// first op (allocations inside an op, e.g. library workspaces).
    pub peak: f64,
    /// Where the largest sample was taken ("after conv2d backward [8, 64,
    /// 56, 56]": the op and its first input's dims), or on a GPU the op
    /// inside which the allocator's own peak was reached ("inside ...").
    pub peak_at: String,
    /// On a GPU: the cuDNN and cuBLASLt workspace bytes the allocator held
    /// at its peak (part of `peak` when that is the allocator's own).
    pub workspace_at_peak: Option<f64>,
}

/// Whether a profile is running (one relaxed atomic load).
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Starts a profile against `ceiling`; an error if one is running.
pub fn start(ceiling: Ceiling) -> Result<()> {
    let mut s = lock(&SESSION);
    if s.is_some() {
        return Err(Error::arg(
            "profile",
            "a profile is already running: stop it first",
        ));
    }
    let id = SESSION_ID.fetch_add(1, Ordering::Relaxed) + 1;
    *s = Some(Session {
        id,
        ceiling,
        started: Instant::now(),
        timed: Vec::new(),
        rows: Vec::new(),
        index: HashMap::new(),
        devices: BTreeSet::new(),
        dropped: 0,
        untimed: 0,
        errors: 0,
        memory: None,
    });
    ACTIVE.store(true, Ordering::Release);
    Ok(())
}

/// Called by autograd as a backward pass starts from a tensor on
/// `device`, while profiling: the memory the forward left ([`Memory`]).
pub(crate) fn backward_starts(device: Device) {
    let session = SESSION_ID.load(Ordering::Relaxed);
    if let Some(ses) = lock(&SESSION).as_mut().filter(|s| s.id == session) {
        ses.sample(device, Sampled::Backward);
    }
}

/// Called by `trace::op` before an op's body runs, while profiling.
pub(crate) fn begin(inputs: &[&Tensor]) {
    let session = SESSION_ID.load(Ordering::Relaxed);
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        // frames of an earlier profile (a panic left them) are stale
        if s.last().is_some_and(|f| f.session != session) {
            s.clear();
        }
    });
    let device = inputs.first().map(|t| t.device());
    let id = {
        let mut guard = lock(&SESSION);
        if let (Some(ses), Some(device)) = (guard.as_mut(), device) {
            if ses.id == session {
                ses.sample(device, Sampled::Begin);
            }
        }
        match guard.as_mut() {
            Some(ses) if ses.id == session && ses.timed.len() < MAX_OPS => {
                ses.timed.push(None);
                Some(ses.timed.len() - 1)
            }
            Some(ses) => {
                ses.dropped += 1;
                None
            }
            None => None,
        }
    };
    let start = match device {
        Some(Device::Cuda(i)) if id.is_some() => {
            match crate::cuda::gpu(i).and_then(|g| g.timing_event()) {
                Ok(e) => Start::Cuda(i, e),
                Err(_) => Start::Untimed,
            }
        }
        _ => Start::Cpu(Instant::now()),
    };
    STACK.with(|s| {
        s.borrow_mut().push(Frame {
            session,
            id,
            start,
            algos: Vec::new(),
        })
    });
}

/// Called by `trace::op` after the body: `ran` is what ran it (backend and
/// kernel), `outputs` the op's outputs by position (None: the op failed).
pub(crate) fn end(
    name: &str,
    phase: &str,
    ran: &str,
    inputs: &[&Tensor],
    outputs: Option<Vec<Option<&Tensor>>>,
) {
    // stop the clock first
    let Some(frame) = STACK.with(|s| s.borrow_mut().pop()) else {
        return;
    };
    let time = match frame.start {
        Start::Cpu(t) => Time::Cpu(t.elapsed().as_secs_f64()),
        Start::Cuda(i, a) => match crate::cuda::gpu(i).and_then(|g| g.timing_event()) {
            Ok(b) => Time::Cuda(a, b),
            Err(_) => Time::Untimed,
        },
        Start::Untimed => Time::Untimed,
    };
    let parent = STACK.with(|s| s.borrow().last().and_then(|f| f.id));
    let mut guard = lock(&SESSION);
    let Some(ses) = guard.as_mut().filter(|s| s.id == frame.session) else {
        return;
    };
    if let Some(t) = inputs.first() {
        ses.sample(t.device(), Sampled::End(name, phase, t.dims()));
    }
    let Some(id) = frame.id else {
        return;
    };
    let Some(outputs) = outputs else {
        ses.errors += 1;
        return;
    };
    if let Some(Device::Cuda(i)) = inputs.first().map(|t| t.device()) {
        ses.devices.insert(i);
    }
    if matches!(time, Time::Untimed) {
        ses.untimed += 1;
    }
    let key = Key {
        op: name.to_string(),
        phase: phase.to_string(),
        ran: ran.to_string(),
        inputs: inputs.iter().map(|t| Operand::of(t)).collect(),
        outputs: outputs.iter().map(|o| o.map(Operand::of)).collect(),
    };
    // an op whose every output shares an input's storage (a reshape, a
    // view's backward) moved no bytes
    let aliases = |o: &Tensor| {
        inputs
            .iter()
            .any(|i| std::sync::Arc::ptr_eq(i.storage(), o.storage()))
    };
    let view = outputs.iter().flatten().count() > 0 && outputs.iter().flatten().all(|o| aliases(o));
    let row = match ses.index.get(&key) {
        Some(&r) => r,
        None => {
            let mut c = cost(name, phase, &key.inputs, &key.outputs);
            if view && c.flops.is_none() {
                c.bytes = 0.0;
                c.formula = "a view: its outputs share its inputs' storage, no bytes moved";
            }
            ses.rows.push(RowAcc {
                key: key.clone(),
                cost: c,
                calls: 0,
                algos: BTreeMap::new(),
            });
            ses.index.insert(key, ses.rows.len() - 1);
            ses.rows.len() - 1
        }
    };
    let acc = &mut ses.rows[row];
    acc.calls += 1;
    for a in frame.algos {
        *acc.algos.entry(a).or_insert(0) += 1;
    }
    if let Some(slot) = ses.timed.get_mut(id) {
        *slot = Some(Timed { row, parent, time });
    }
}

impl Session {
    /// A memory sample on `device` (see [`Watch::sample`]), the watch
    /// started there by the first one.
    fn sample(&mut self, device: Device, at: Sampled) {
        if let Some(w) = self.watch(device) {
            w.sample(device, at);
        }
    }

    /// The memory watch, started on `device` when there is none (a GPU's
    /// allocator peak is reset there); None while `device` cannot say what
    /// is in use.
    fn watch(&mut self, device: Device) -> Option<&mut Watch> {
        if self.memory.is_none() {
            if let Device::Cuda(i) = device {
                if let Ok(g) = crate::cuda::gpu(i) {
                    g.reset_peak_memory();
                }
            }
            let (now, _) = bytes_in_use(device)?;
            self.memory = Some(Watch {
                device,
                memory: Memory {
                    source: match device {
                        Device::Cuda(_) => "cuda allocator",
                        Device::Cpu => "host malloc",
                    },
                    start: now,
                    after_forward: now,
                    peak: now,
                    peak_at: "as the first op started".into(),
                    workspace_at_peak: None,
                },
            });
        }
        self.memory.as_mut()
    }
}

// ---- the collected profile ----

/// One aggregated row: every call of one op with one set of shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub op: String,
    pub phase: String,
    /// Backend and kernel ("cpu:im2col+gemm", "cuda:fwd_implicit_precomp_gemm").
    pub ran: String,
    pub dtype: String,
    pub inputs: Vec<Vec<usize>>,
    pub outputs: Vec<Option<Vec<usize>>>,
    pub calls: u64,
    /// Exclusive time over all calls (nested traced ops' time excluded).
    pub seconds: f64,
    /// Inclusive time over all calls.
    pub inclusive_seconds: f64,
    /// Per call.
    pub flops: Option<f64>,
    pub bytes: f64,
    pub formula: &'static str,
    /// Algorithm label -> calls (CUDA convolutions and GEMMs).
    pub algos: BTreeMap<String, u64>,
}

impl Row {
    pub fn total_flops(&self) -> Option<f64> {
        self.flops.map(|f| f * self.calls as f64)
    }
    pub fn total_bytes(&self) -> f64 {
        self.bytes * self.calls as f64
    }
    /// Compute-bound rows are the ones with FLOPs (> 0).
    pub fn is_compute(&self) -> bool {
        self.flops.is_some_and(|f| f > 0.0)
    }
    /// Achieved FLOP/s (compute rows) or bytes/s (the others).
    pub fn achieved(&self) -> Option<f64> {
        if self.seconds <= 0.0 || (self.bytes <= 0.0 && !self.is_compute()) {
            return None;
        }
        Some(match self.total_flops().filter(|&f| f > 0.0) {
            Some(f) => f / self.seconds,
            None => self.total_bytes() / self.seconds,
        })
    }
    /// Achieved as a percentage of the ceiling's FLOP/s or copy bandwidth.
    pub fn percent_of(&self, c: &Ceiling) -> Option<f64> {
        let peak = if self.is_compute() {
            c.flops_per_s
        } else {
            c.bytes_per_s
        };
        self.achieved().map(|a| 100.0 * a / peak)
    }
    /// "conv2d backward [cpu:im2col+gemm]"
    pub fn label(&self) -> String {
        format!("{} {} [{}]", self.op, self.phase, self.ran)
    }
    fn shapes(&self) -> String {
        let ins: Vec<String> = self.inputs.iter().map(|d| format!("{d:?}")).collect();
        let outs: Vec<String> = self
            .outputs
            .iter()
            .map(|o| o.as_ref().map_or("-".into(), |d| format!("{d:?}")))
            .collect();
        format!("{} -> {}", ins.join(" "), outs.join(" "))
    }
    fn to_json(&self, c: &Ceiling, steps: usize) -> Value {
        json!({
            "op": self.op, "phase": self.phase, "ran": self.ran, "dtype": self.dtype,
            "inputs": self.inputs, "outputs": self.outputs,
            "calls": self.calls,
            "calls_per_step": self.calls as f64 / steps as f64,
            "ms": self.seconds * 1e3,
            "ms_per_step": self.seconds * 1e3 / steps as f64,
            "inclusive_ms": self.inclusive_seconds * 1e3,
            "flops_per_call": self.flops, "bytes_per_call": self.bytes,
            "flops": self.total_flops(), "bytes": self.total_bytes(),
            "bound": if self.is_compute() { "compute" } else { "memory" },
            "achieved_per_s": self.achieved(),
            "percent_of_ceiling": self.percent_of(c),
            "formula": self.formula,
            "algos": self.algos,
        })
    }
}

/// Every shape of one (op, phase, ran) summed (`Profile::by_op`).
#[derive(Clone, Debug, PartialEq)]
pub struct OpTotal {
    pub op: String,
    pub phase: String,
    pub ran: String,
    pub calls: u64,
    pub seconds: f64,
    pub flops: Option<f64>,
    pub bytes: f64,
    compute: bool,
}

impl OpTotal {
    /// Achieved FLOP/s (compute ops) or bytes/s, and its % of `c`.
    pub fn achieved(&self, c: &Ceiling) -> Option<(f64, f64)> {
        if self.seconds <= 0.0 || (self.bytes <= 0.0 && self.flops.is_none()) {
            return None;
        }
        Some(match self.flops {
            Some(f) => (f / self.seconds, 100.0 * f / self.seconds / c.flops_per_s),
            None => (
                self.bytes / self.seconds,
                100.0 * self.bytes / self.seconds / c.bytes_per_s,
            ),
        })
    }
}

/// A collected profile.
#[derive(Clone, Debug)]
pub struct Profile {
    pub ceiling: Ceiling,
    /// "cpu wall clock" or "cuda events".
    pub timing: &'static str,
    pub steps: usize,
    /// Host time from `start` to `stop` (the GPU drained first).
    pub wall_seconds: f64,
    /// Time inside ops (top-level ops' inclusive time).
    pub op_seconds: f64,
    /// Sorted by exclusive time, largest first.
    pub rows: Vec<Row>,
    pub searches: Vec<Search>,
    /// Ops not timed: past MAX_OPS, or an event could not be recorded.
    pub dropped: u64,
    pub untimed: u64,
    /// Ops that returned an error (not in the rows).
    pub errors: u64,
    /// None when no op ran, or the host cannot say (not glibc).
    pub memory: Option<Memory>,
}

/// Stops the profile and collects it: reads every op's events (the only
/// synchronisation profiling adds, once, here) and aggregates. `steps`:
/// how many training steps it covered (the per-step columns divide by it).
pub fn stop(steps: usize) -> Result<Profile> {
    ACTIVE.store(false, Ordering::Release);
    let ses = lock(&SESSION)
        .take()
        .ok_or_else(|| Error::arg("profile", "profile::stop without a running profile::start"))?;
    for &i in &ses.devices {
        crate::cuda::gpu(i)?.synchronize()?;
    }
    let wall_seconds = ses.started.elapsed().as_secs_f64();
    let mut totals = vec![0.0f64; ses.timed.len()];
    let mut any_cuda = false;
    let mut untimed = ses.untimed;
    for (i, t) in ses.timed.iter().enumerate() {
        totals[i] = match t.as_ref().map(|t| &t.time) {
            Some(Time::Cpu(s)) => *s,
            Some(Time::Cuda(a, b)) => {
                any_cuda = true;
                // the devices were drained above (an asynchronous error
                // surfaced there); a pair that cannot be read is untimed
                match a.elapsed_ms(b) {
                    Ok(ms) => ms.max(0.0) as f64 / 1e3,
                    Err(_) => {
                        untimed += 1;
                        0.0
                    }
                }
            }
            _ => 0.0,
        };
    }
    let mut children = vec![0.0f64; ses.timed.len()];
    let mut op_seconds = 0.0;
    for (i, t) in ses.timed.iter().enumerate() {
        if let Some(t) = t {
            match t.parent {
                Some(p) if p < children.len() => children[p] += totals[i],
                _ => op_seconds += totals[i],
            }
        }
    }
    let mut rows: Vec<Row> = ses
        .rows
        .into_iter()
        .map(|r| Row {
            dtype: r
                .key
                .inputs
                .first()
                .map_or("-", |o| o.dtype.name())
                .to_string(),
            inputs: r.key.inputs.iter().map(|o| o.dims.clone()).collect(),
            outputs: r
                .key
                .outputs
                .iter()
                .map(|o| o.as_ref().map(|o| o.dims.clone()))
                .collect(),
            op: r.key.op,
            phase: r.key.phase,
            ran: r.key.ran,
            calls: r.calls,
            seconds: 0.0,
            inclusive_seconds: 0.0,
            flops: r.cost.flops,
            bytes: r.cost.bytes,
            formula: r.cost.formula,
            algos: r.algos,
        })
        .collect();
    for (i, t) in ses.timed.iter().enumerate() {
        if let Some(t) = t {
            let row = &mut rows[t.row];
            row.inclusive_seconds += totals[i];
            row.seconds += (totals[i] - children[i]).max(0.0);
        }
    }
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let memory = ses.memory.map(|w| {
        let mut m = w.memory;
        if let Device::Cuda(i) = w.device {
            if let Ok(g) = crate::cuda::gpu(i) {
                let st = g.memory_stats();
                // samples name peaks inside and between ops: this one came
                // after the last sample
                if st.peak_allocated as f64 > m.peak {
                    m.peak = st.peak_allocated as f64;
                    m.peak_at = "after the last op (the allocator's own peak)".into();
                }
                m.workspace_at_peak = Some(st.workspace_at_peak as f64);
            }
        }
        m
    });
    Ok(Profile {
        ceiling: ses.ceiling,
        timing: if any_cuda {
            "cuda events"
        } else {
            "cpu wall clock"
        },
        steps: steps.max(1),
        wall_seconds,
        op_seconds,
        rows,
        searches: searches(),
        dropped: ses.dropped,
        untimed,
        errors: ses.errors,
        memory,
    })
}

fn si(v: f64, unit: &str) -> String {
    let (d, p) = match v.abs() {
        x if x >= 1e12 => (1e12, "T"),
        x if x >= 1e9 => (1e9, "G"),
        x if x >= 1e6 => (1e6, "M"),
        x if x >= 1e3 => (1e3, "k"),
        _ => (1.0, ""),
    };
    format!("{:.2} {p}{unit}", v / d)
}

impl Profile {
    /// Exclusive seconds of the rows whose op is `op` (any phase).
    pub fn seconds_of(&self, op: &str) -> f64 {
        self.rows
            .iter()
            .filter(|r| r.op == op)
            .map(|r| r.seconds)
            .sum()
    }
    /// Total FLOPs of the rows whose op is `op`; None if one is unknown.
    pub fn flops_of(&self, op: &str) -> Option<f64> {
        self.rows
            .iter()
            .filter(|r| r.op == op)
            .map(Row::total_flops)
            .sum()
    }

    /// The rows summed per (op, phase, what ran it), all shapes together,
    /// largest time first: (op, phase, ran, calls, seconds, FLOPs (None if
    /// one row's is unknown, or for memory-bound ops), bytes).
    pub fn by_op(&self) -> Vec<OpTotal> {
        let mut m: BTreeMap<(String, String, String), OpTotal> = BTreeMap::new();
        for r in &self.rows {
            let e = m
                .entry((r.op.clone(), r.phase.clone(), r.ran.clone()))
                .or_insert_with(|| OpTotal {
                    op: r.op.clone(),
                    phase: r.phase.clone(),
                    ran: r.ran.clone(),
                    calls: 0,
                    seconds: 0.0,
                    flops: Some(0.0),
                    bytes: 0.0,
                    compute: false,
                });
            e.calls += r.calls;
            e.seconds += r.seconds;
            e.bytes += r.total_bytes();
            e.flops = e.flops.zip(r.total_flops()).map(|(a, b)| a + b);
            e.compute |= r.is_compute();
        }
        let mut v: Vec<OpTotal> = m.into_values().collect();
        for t in &mut v {
            if !t.compute {
                t.flops = None;
            }
        }
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        v
    }

    /// The roofline table: the `top` rows by exclusive time, then one
    /// "other" line for the rest, then the totals.
    pub fn table(&self, top: usize) -> String {
        use std::fmt::Write;
        let steps = self.steps as f64;
        let c = &self.ceiling;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "profile of {} step(s), timing: {}; ceiling: {} FLOP/s, {} copy ({})",
            self.steps,
            self.timing,
            si(c.flops_per_s, ""),
            si(c.bytes_per_s, "B/s"),
            c.source
        );
        let _ = writeln!(
            s,
            "per step: {:.2} ms wall, {:.2} ms in ops ({:.1} %){}",
            self.wall_seconds * 1e3 / steps,
            self.op_seconds * 1e3 / steps,
            100.0 * self.op_seconds / self.wall_seconds.max(1e-12),
            if self.timing == "cuda events" {
                " (GPU time against host wall time)"
            } else {
                ""
            }
        );
        if let Some(m) = &self.memory {
            let mib = |b: f64| b / (1u64 << 20) as f64;
            let _ = writeln!(
                s,
                "memory ({}): {:.1} MiB at the start, {:.1} when the backward starts (+{:.1} left by the forward), peak {:.1} (+{:.1}) {}",
                m.source,
                mib(m.start),
                mib(m.after_forward),
                mib(m.after_forward - m.start),
                mib(m.peak),
                mib(m.peak - m.start),
                m.peak_at
            );
            if let Some(w) = m.workspace_at_peak {
                let _ = writeln!(
                    s,
                    "  cuDNN and cuBLASLt workspaces held at the allocator's peak: {:.1} MiB",
                    mib(w)
                );
            }
        }
        let _ = writeln!(
            s,
            "{:>3}  {:<58} {:>5} {:>10} {:>6} {:>11} {:>11} {:>13} {:>7}  shapes",
            "#",
            "op phase [ran] dtype",
            "calls",
            "ms/step",
            "%",
            "FLOP/step",
            "B/step",
            "achieved",
            "% peak"
        );
        let total: f64 = self.rows.iter().map(|r| r.seconds).sum();
        let line = |s: &mut String, i: String, r: &Row| {
            let label = format!("{} {}", r.label(), r.dtype);
            let _ = writeln!(
                s,
                "{i:>3}  {label:<58} {:>5} {:>10.3} {:>6.1} {:>11} {:>11} {:>13} {:>7}  {}",
                (r.calls as f64 / steps).round(),
                r.seconds * 1e3 / steps,
                100.0 * r.seconds / total.max(1e-12),
                r.total_flops()
                    .filter(|&f| f > 0.0)
                    .map_or("-".into(), |f| si(f / steps, "")),
                si(r.total_bytes() / steps, "B"),
                r.achieved().map_or("-".into(), |a| if r.is_compute() {
                    si(a, "FLOP/s")
                } else {
                    si(a, "B/s")
                }),
                r.percent_of(c).map_or("-".into(), |p| format!("{p:.1}")),
                r.shapes()
            );
        };
        for (i, r) in self.rows.iter().take(top).enumerate() {
            line(&mut s, (i + 1).to_string(), r);
        }
        let rest = &self.rows[top.min(self.rows.len())..];
        if !rest.is_empty() {
            let secs: f64 = rest.iter().map(|r| r.seconds).sum();
            let flops: f64 = rest.iter().filter_map(Row::total_flops).sum();
            let bytes: f64 = rest.iter().map(Row::total_bytes).sum();
            let calls: u64 = rest.iter().map(|r| r.calls).sum();
            let _ = writeln!(
                s,
                "{:>3}  {:<58} {:>5} {:>10.3} {:>6.1} {:>11} {:>11}",
                "",
                format!("other ({} rows)", rest.len()),
                (calls as f64 / steps).round(),
                secs * 1e3 / steps,
                100.0 * secs / total.max(1e-12),
                if flops > 0.0 {
                    si(flops / steps, "")
                } else {
                    "-".into()
                },
                si(bytes / steps, "B"),
            );
        }
        let flops: f64 = self.rows.iter().filter_map(Row::total_flops).sum();
        let compute_s: f64 = self
            .rows
            .iter()
            .filter(|r| r.is_compute())
            .map(|r| r.seconds)
            .sum();
        let _ = writeln!(
            s,
            "total: {} rows, {:.3} ms/step in ops; {} FLOP/step in {:.3} ms of compute-bound ops ({}, {:.1} % of peak)",
            self.rows.len(),
            total * 1e3 / steps,
            si(flops / steps, ""),
            compute_s * 1e3 / steps,
            si(flops / compute_s.max(1e-12), "FLOP/s"),
            100.0 * flops / compute_s.max(1e-12) / c.flops_per_s
        );
        let _ = writeln!(s, "by op (all shapes):");
        for t in self.by_op().iter().take(top) {
            let label = format!("{} {} [{}]", t.op, t.phase, t.ran);
            let _ = writeln!(
                s,
                "     {label:<58} {:>5} {:>10.3} {:>6.1} {:>11} {:>11} {:>13} {:>7}",
                (t.calls as f64 / steps).round(),
                t.seconds * 1e3 / steps,
                100.0 * t.seconds / total.max(1e-12),
                t.flops.map_or("-".into(), |f| si(f / steps, "")),
                si(t.bytes / steps, "B"),
                t.achieved(c)
                    .map_or("-".into(), |(a, _)| if t.flops.is_some() {
                        si(a, "FLOP/s")
                    } else {
                        si(a, "B/s")
                    }),
                t.achieved(c).map_or("-".into(), |(_, p)| format!("{p:.1}")),
            );
        }
        if self.dropped + self.untimed + self.errors > 0 {
            let _ = writeln!(
                s,
                "not timed: {} ops past the limit, {} without events, {} failed",
                self.dropped, self.untimed, self.errors
            );
        }
        let chosen: Vec<&Search> = self.searches.iter().collect();
        if !chosen.is_empty() {
            let _ = writeln!(s, "algorithm searches ({}):", chosen.len());
            for x in chosen.iter().take(top) {
                let _ = writeln!(
                    s,
                    "  {} {} {}: {} (ws {} B) in {:.2} ms{}",
                    x.lib,
                    x.method,
                    x.problem,
                    x.chosen,
                    x.workspace,
                    x.ms,
                    if x.candidates.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; timed: {}",
                            x.candidates
                                .iter()
                                .map(|c| format!("{} {:.3} ms", c.algo, c.ms))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
            }
            if chosen.len() > top {
                let _ = writeln!(s, "  ... {} more in the JSON", chosen.len() - top);
            }
        }
        s
    }

    /// The whole profile as JSON (every row, every search).
    pub fn to_json(&self) -> Value {
        let c = &self.ceiling;
        json!({
            "timing": self.timing,
            "steps": self.steps,
            "ceiling": {"flops_per_s": c.flops_per_s, "bytes_per_s": c.bytes_per_s, "source": c.source},
            "wall_ms_per_step": self.wall_seconds * 1e3 / self.steps as f64,
            "op_ms_per_step": self.op_seconds * 1e3 / self.steps as f64,
            "dropped": self.dropped, "untimed": self.untimed, "errors": self.errors,
            "memory_bytes": self.memory.as_ref().map(|m| json!({
                "source": m.source, "start": m.start, "after_forward": m.after_forward,
                "peak": m.peak, "peak_at": m.peak_at, "workspace_at_peak": m.workspace_at_peak,
            })),
            "rows": self.rows.iter().map(|r| r.to_json(c, self.steps)).collect::<Vec<_>>(),
            "by_op": self.by_op().iter().map(|t| json!({
                "op": t.op, "phase": t.phase, "ran": t.ran, "calls": t.calls,
                "ms_per_step": t.seconds * 1e3 / self.steps as f64,
                "flops": t.flops, "bytes": t.bytes,
                "achieved_per_s": t.achieved(c).map(|a| a.0),
                "percent_of_ceiling": t.achieved(c).map(|a| a.1),
            })).collect::<Vec<_>>(),
            "searches": self.searches.iter().map(|x| json!({
                "lib": x.lib, "problem": x.problem, "method": x.method, "chosen": x.chosen,
                "workspace": x.workspace, "ms": x.ms,
                "candidates": x.candidates.iter().map(|c| json!({
                    "algo": c.algo, "status": c.status, "ms": c.ms, "workspace": c.workspace,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(d: &[usize]) -> Operand {
        Operand::new(d, DType::F32)
    }

    #[test]
    fn conv_flops_are_hand_counts() {
        // x [2,3,8,8], w [4,3,3,3], stride 1 pad 1: y [2,4,8,8]
        // 2 * N*K*C*R*S*P*Q = 2 * 2*4*3*3*3*8*8 = 27648
        let c = cost(
            "conv2d",
            "forward",
            &[op(&[2, 3, 8, 8]), op(&[4, 3, 3, 3])],
            &[Some(op(&[2, 4, 8, 8]))],
        );
        assert_eq!(c.flops, Some(27648.0));
        // bytes: (384 + 108 + 512) elements * 4
        assert_eq!(c.bytes, (384 + 108 + 512) as f64 * 4.0);
        // grouped, strided: x [1,8,9,9], w [6,4,3,3] groups 2, stride 2 -> y [1,6,4,4]
        // 2 * 1*6*(8/2)*3*3*4*4 = 6912
        let g = cost(
            "conv2d",
            "forward",
            &[op(&[1, 8, 9, 9]), op(&[6, 4, 3, 3])],
            &[Some(op(&[1, 6, 4, 4]))],
        );
        assert_eq!(g.flops, Some(6912.0));
        // backward with both gradients: twice the forward; weight only: once
        let dy = [op(&[2, 4, 8, 8])];
        let both = cost(
            "conv2d",
            "backward",
            &dy,
            &[Some(op(&[2, 3, 8, 8])), Some(op(&[4, 3, 3, 3]))],
        );
        assert_eq!(both.flops, Some(2.0 * 27648.0));
        let w_only = cost(
            "conv2d",
            "backward",
            &dy,
            &[None, Some(op(&[4, 3, 3, 3])), Some(op(&[4]))],
        );
        assert_eq!(w_only.flops, Some(27648.0));
        let x_only = cost("conv2d", "backward", &dy, &[Some(op(&[2, 3, 8, 8])), None]);
        assert_eq!(x_only.flops, None, "the filter size is not visible");
        let bias_only = cost("conv2d", "backward", &dy, &[None, None, Some(op(&[4]))]);
        assert_eq!(bias_only.flops, Some(0.0));
    }

    #[test]
    fn conv_transpose_flops_are_hand_counts() {
        // x [1,4,5,5], w [4,3,2,2] (Cin 4, Cout 3), stride 2 -> y [1,3,10,10]
        // every input pixel, in-channel, out-channel, tap: 2 * 1*4*5*5 * 3*2*2 = 2400
        let c = cost(
            "conv_transpose2d",
            "forward",
            &[op(&[1, 4, 5, 5]), op(&[4, 3, 2, 2])],
            &[Some(op(&[1, 3, 10, 10]))],
        );
        assert_eq!(c.flops, Some(2400.0));
        let b = cost(
            "conv_transpose2d",
            "backward",
            &[op(&[1, 3, 10, 10])],
            &[Some(op(&[1, 4, 5, 5])), Some(op(&[4, 3, 2, 2]))],
        );
        assert_eq!(b.flops, Some(4800.0));
    }

    #[test]
    fn gemm_flops_are_hand_counts() {
        // [5,7] @ [7,3]: 2*5*3*7 = 210; batched [2,5,7] @ [2,7,3]: 420
        let m = cost(
            "matmul",
            "forward",
            &[op(&[5, 7]), op(&[7, 3])],
            &[Some(op(&[5, 3]))],
        );
        assert_eq!(m.flops, Some(210.0));
        let b = cost(
            "matmul",
            "forward",
            &[op(&[2, 5, 7]), op(&[2, 7, 3])],
            &[Some(op(&[2, 5, 3]))],
        );
        assert_eq!(b.flops, Some(420.0));
        // backward: da = dy b^T and db = a^T dy, 210 each
        let dy = [op(&[5, 3])];
        let both = cost(
            "matmul",
            "backward",
            &dy,
            &[Some(op(&[5, 7])), Some(op(&[7, 3]))],
        );
        assert_eq!(both.flops, Some(420.0));
        let only_b = cost("matmul", "backward", &dy, &[None, Some(op(&[7, 3]))]);
        assert_eq!(only_b.flops, Some(210.0));
        // linear: x [8,16], w [4,16], b [4] -> y [8,4]: 2*8*4*16 = 1024
        let l = cost(
            "linear",
            "forward",
            &[op(&[8, 16]), op(&[4, 16]), op(&[4])],
            &[Some(op(&[8, 4]))],
        );
        assert_eq!(l.flops, Some(1024.0));
        let lb = cost(
            "linear",
            "backward",
            &[op(&[8, 4])],
            &[Some(op(&[8, 16])), Some(op(&[4, 16])), Some(op(&[4]))],
        );
        assert_eq!(lb.flops, Some(2048.0));
    }

    #[test]
    fn memory_ops_count_bytes_of_inputs_and_outputs() {
        // relu of [2,3] f32 -> [2,3]: 6*4 + 6*4 bytes, no FLOPs
        let r = cost("relu", "forward", &[op(&[2, 3])], &[Some(op(&[2, 3]))]);
        assert_eq!((r.flops, r.bytes), (None, 48.0));
        // a bf16 -> f32 cast of 10 elements: 20 + 40 bytes
        let c = cost(
            "cast",
            "forward",
            &[Operand::new(&[10], DType::BF16)],
            &[Some(op(&[10]))],
        );
        assert_eq!(c.bytes, 60.0);
        // BN forward: x, weight, bias in; y out (the trace's listing)
        let bn = cost(
            "batch_norm_relu",
            "forward",
            &[op(&[2, 4, 3, 3]), op(&[4]), op(&[4])],
            &[Some(op(&[2, 4, 3, 3]))],
        );
        assert_eq!(bn.bytes, (72 + 4 + 4 + 72) as f64 * 4.0);
        // a backward's absent gradients move nothing
        let g = cost("add", "backward", &[op(&[4])], &[None, Some(op(&[4]))]);
        assert_eq!(g.bytes, 32.0);
    }

    #[test]
    fn rows_report_against_the_ceiling() {
        let c = Ceiling::new(100e9, 10e9, "test").unwrap();
        let mut r = Row {
            op: "conv2d".into(),
            phase: "forward".into(),
            ran: "cpu".into(),
            dtype: "f32".into(),
            inputs: vec![],
            outputs: vec![],
            calls: 4,
            seconds: 2.0,
            inclusive_seconds: 2.0,
            flops: Some(25e9),
            bytes: 1e9,
            formula: "",
            algos: BTreeMap::new(),
        };
        // 100 GFLOP in 2 s: 50 GFLOP/s, 50 % of 100
        assert_eq!(r.achieved(), Some(50e9));
        assert_eq!(r.percent_of(&c), Some(50.0));
        r.flops = None;
        // 4 GB in 2 s: 2 GB/s, 20 % of 10
        assert_eq!(r.achieved(), Some(2e9));
        assert_eq!(r.percent_of(&c), Some(20.0));
        assert!(Ceiling::new(0.0, 1.0, "x").is_err());
        assert!(Ceiling::new(1.0, f64::NAN, "x").is_err());
    }

    #[test]
    fn datasheet_ceilings_are_labelled() {
        let h = Ceiling::gpu_datasheet("H200", DType::BF16, false).unwrap();
        assert_eq!((h.flops_per_s, h.bytes_per_s), (989.4e12, 4.8e12));
        assert!(h.source.contains("datasheet (not measured)"));
        let f = Ceiling::gpu_datasheet("h100", DType::F32, false).unwrap();
        assert_eq!((f.flops_per_s, f.bytes_per_s), (66.9e12, 3.35e12));
        assert!(Ceiling::gpu_datasheet("a100", DType::F32, false).is_err());
    }
}
