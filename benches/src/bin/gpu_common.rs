//! What the GPU-check binaries share (docs/GPU_CHECK.md, "slmlp binaries"):
//! the `--out DIR --budget-s N` interface, the deadline, the result.json
//! writer, the relative-error measure, and GPU timing.
//!
//! Exit codes every bundle binary uses: 0 pass, 1 checks failed, 3 no
//! usable GPU (gpu_check.sh logs it as skipped under --cpu-smoke and as a
//! failure on a real GPU run), anything else crashed.
//!
//! Included with `mod gpu_common;` by each binary in benches/src/bin (the
//! package sets `autobins = false`, so this file is not a binary itself)
//! and with `#[path]` by benches/cuda_ops.rs.

#![allow(dead_code)] // each binary uses a different part of it

use engine::cuda::Gpu;
use engine::{DType, Device, Rng, Tensor};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const EXIT_PASS: i32 = 0;
pub const EXIT_FAIL: i32 = 1;
pub const EXIT_CRASH: i32 = 2;
pub const EXIT_NO_GPU: i32 = 3;

/// The bundle interface: `BIN --out DIR --budget-s N [extra]`.
pub struct Args {
    pub out: PathBuf,
    pub budget_s: f64,
    /// Everything after the two required flags, as `--name value` pairs or
    /// bare flags, in order.
    pub extra: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()`; on a usage error prints it and exits 2.
    pub fn parse(bin: &str, usage_extra: &str) -> Args {
        match Self::try_parse(std::env::args().skip(1).collect()) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{bin}: {e}");
                eprintln!("usage: {bin} --out DIR --budget-s N{usage_extra}");
                std::process::exit(EXIT_CRASH);
            }
        }
    }

    pub fn try_parse(argv: Vec<String>) -> Result<Args, String> {
        let (mut out, mut budget, mut extra) = (None, None, Vec::new());
        let mut it = argv.into_iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--out" => out = Some(PathBuf::from(it.next().ok_or("--out needs a folder")?)),
                "--budget-s" => {
                    let v = it.next().ok_or("--budget-s needs seconds")?;
                    let s: f64 = v
                        .parse()
                        .map_err(|_| format!("--budget-s needs seconds, got {v:?}"))?;
                    if !(s > 0.0 && s.is_finite()) {
                        return Err(format!("--budget-s must be > 0, got {v}"));
                    }
                    budget = Some(s);
                }
                _ => extra.push(a),
            }
        }
        Ok(Args {
            out: out.ok_or("--out DIR is required")?,
            budget_s: budget.ok_or("--budget-s N is required")?,
            extra,
        })
    }

    /// The value after `--name` among the extra arguments.
    pub fn value(&self, name: &str) -> Option<&str> {
        let i = self.extra.iter().position(|a| a == name)?;
        self.extra.get(i + 1).map(|s| s.as_str())
    }

    pub fn flag(&self, name: &str) -> bool {
        self.extra.iter().any(|a| a == name)
    }
}

/// The time a binary has: it stops starting new work once `left()` runs
/// under what the next item needs, so gpu_check.sh never has to kill it.
pub struct Deadline {
    start: Instant,
    end: Instant,
}

impl Deadline {
    /// `budget_s` minus a margin for writing the results and exiting
    /// (10% of the budget, at least 2 s, at most 10 s).
    pub fn new(budget_s: f64) -> Deadline {
        let margin = (budget_s * 0.1).clamp(2.0, 10.0).min(budget_s * 0.5);
        let start = Instant::now();
        Deadline {
            start,
            end: start + Duration::from_secs_f64(budget_s - margin),
        }
    }
    pub fn left(&self) -> f64 {
        self.end
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
    }
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// What a binary writes to DIR/result.json (the schema gpu_report.py reads).
#[derive(Default)]
pub struct Report {
    pub failures: Vec<String>,
    pub summary: Vec<Value>,
    pub rows: Vec<Value>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn figure(&mut self, figure: &str, value: impl Into<Value>, unit: &str, reference: &str) {
        self.summary
            .push(json!({"figure": figure, "value": value.into(), "unit": unit, "ref": reference}));
    }

    /// Writes DIR/result.json; `status` overrides pass/fail (e.g. "no-gpu").
    pub fn write(&self, out: &PathBuf, status: Option<&str>) {
        let status = status.unwrap_or(if self.failures.is_empty() {
            "pass"
        } else {
            "fail"
        });
        let v = json!({
            "status": status, "failures": self.failures, "summary": self.summary,
            "rows": self.rows, "notes": self.notes,
        });
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(out)?;
            let tmp = out.join("result.json.tmp");
            std::fs::write(&tmp, serde_json::to_string_pretty(&v).unwrap_or_default())?;
            std::fs::rename(tmp, out.join("result.json"))
        };
        if let Err(e) = write() {
            eprintln!("could not write {}/result.json: {e}", out.display());
        }
    }

    /// Writes what was gathered so far, with status "incomplete": a binary
    /// stopped at its stage's timeout (a hang, searches that ran long)
    /// then still leaves the rows it measured. The final [`Report::write`]
    /// replaces it.
    pub fn write_so_far(&self, out: &PathBuf) {
        self.write(out, Some("incomplete"));
    }

    /// Summary figures of the algorithm searches this process made
    /// (`engine::profile::searches`): how many per library, and the host
    /// time they took (spent in the first call of each problem). A 1x1
    /// convolution's route search includes the library searches it
    /// started, so its time is not added to theirs.
    pub fn search_figures(&mut self) {
        let searches = engine::profile::searches();
        for lib in ["cudnn", "cublasLt", "conv route"] {
            let (n, ms) = searches
                .iter()
                .filter(|s| s.lib == lib)
                .fold((0u64, 0.0), |(n, ms), s| (n + 1, ms + s.ms));
            if n > 0 {
                self.figure(&format!("{lib} searches"), n, "problems", "");
                self.figure(
                    &format!("{lib} search time"),
                    sig(ms * 1e-3),
                    "s",
                    "host time, first calls",
                );
            }
        }
    }
}

/// The bundle carries NVRTC 13.0.88 and the CUDA headers the kernels compile
/// with; its first stage unpacks them to `$TMPDIR/slmlp-gpu-nvrtc/nvidia/cu13/
/// {lib,include}` (scripts/build-gpu-bundle.sh). Point kernels::Toolchain
/// there (or at `<exe dir>/nvrtc` if that has them) unless the caller chose a
/// home; call first thing in main, before any thread starts. Children (the
/// `slmlp` runs) inherit it. Without unpacked headers nothing is set and the
/// Toolchain searches as usual. Returns the folder used, if any.
pub fn use_bundled_nvrtc() -> Option<PathBuf> {
    const HOME: &str = "SLMLP_NVRTC_HOME";
    if std::env::var_os(HOME).is_some_and(|v| !v.is_empty()) {
        return None;
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("nvrtc")));
    let unpacked = std::env::temp_dir().join("slmlp-gpu-nvrtc");
    let dir = beside
        .into_iter()
        .chain([unpacked])
        .find(|d| d.join("nvidia/cu13/include/cuda_bf16.h").is_file())?;
    // edition 2021: a safe fn; no other thread exists yet
    std::env::set_var(HOME, &dir);
    Some(dir)
}

/// Opens GPU 0, or writes a "no-gpu" result.json, prints why and exits 3.
pub fn open_gpu_or_exit(bin: &str, out: &PathBuf) -> &'static Gpu {
    match engine::cuda::gpu(0) {
        Ok(g) => g,
        Err(e) => {
            let msg = format!("no GPU: {e}");
            println!("{bin}: {msg}");
            let r = Report {
                notes: vec![msg],
                ..Report::default()
            };
            r.write(out, Some("no-gpu"));
            std::process::exit(EXIT_NO_GPU);
        }
    }
}

/// One line: the Gpu's info and its allocator's counters.
pub fn gpu_line(g: &Gpu) -> String {
    let s = g.memory_stats();
    format!(
        "{} | allocator: {:.1} MiB allocated, {:.1} MiB reserved, peak {:.1} / {:.1} MiB, {} allocs, {} raw allocs, {} OOM retries, {} OOMs",
        g.info.summary(),
        s.allocated as f64 / MIB,
        s.reserved as f64 / MIB,
        s.peak_allocated as f64 / MIB,
        s.peak_reserved as f64 / MIB,
        s.num_allocs,
        s.num_raw_allocs,
        s.num_oom_retries,
        s.num_ooms
    )
}

pub const MIB: f64 = (1u64 << 20) as f64;

/// docs/DESIGN.md §2: max|a - b| / max(max|b|, tiny), b the CPU reference.
/// Infinite when any value of `a` is NaN (NaN never passes), when a NaN
/// sits in the reference too, or when the lengths differ.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    rel_err_masked(a, b, |_| true)
}

/// [`rel_err`] over the elements `keep` selects (the denominator still
/// spans every reference element).
pub fn rel_err_masked(a: &[f64], b: &[f64], keep: impl Fn(usize) -> bool) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let mut diff = 0.0f64;
    let mut scale = 0.0f64;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if x.is_nan() || y.is_nan() {
            return f64::INFINITY;
        }
        scale = scale.max(y.abs());
        if keep(i) {
            // inf - inf is NaN: an infinity must match exactly
            let d = if x == y { 0.0 } else { (x - y).abs() };
            diff = diff.max(if d.is_nan() { f64::INFINITY } else { d });
        }
    }
    diff / scale.max(1e-30)
}

/// The parity threshold for outputs of a dtype (docs/DESIGN.md §2; f16 has 3
/// more mantissa bits than bf16).
pub fn threshold(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::BF16 => 1e-2,
        DType::F16 => 5e-3,
        _ => 0.0,
    }
}

/// Medians and spread of repeated timings, in ms per call.
#[derive(Clone, Debug)]
pub struct Timing {
    pub ms_median: f64,
    pub ms_p10: f64,
    pub ms_p90: f64,
    pub ms_all: Vec<f64>,
    pub calls_per_rep: usize,
}

impl Timing {
    pub fn json(&self) -> Value {
        json!({"ms_median": self.ms_median, "ms_p10": self.ms_p10, "ms_p90": self.ms_p90,
               "reps": self.ms_all.len(), "calls_per_rep": self.calls_per_rep, "ms_all": self.ms_all})
    }
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// How many calls one timed repeat batches so that a repeat lasts about
/// `target_ms`, given one call's rough time: host-clock timing around a
/// synchronised batch then carries well under 1% of launch/sync overhead.
pub fn calls_per_rep(one_call_ms: f64, target_ms: f64) -> usize {
    if one_call_ms.is_nan() || one_call_ms <= 0.0 {
        return 1;
    }
    ((target_ms / one_call_ms).ceil() as usize).clamp(1, 200)
}

/// Times `f(i)` on the GPU's stream (METHOD.md): `warmup` calls, then
/// repeats of a batch of calls between two `synchronize()`s, until
/// `max_reps` repeats or `max_s` seconds (at least `min_reps`); per-call ms
/// = batch time / calls. `f` gets a running call index to rotate inputs.
pub fn time_gpu(
    g: &Gpu,
    warmup: usize,
    min_reps: usize,
    max_reps: usize,
    max_s: f64,
    mut f: impl FnMut(usize) -> engine::Result<()>,
) -> engine::Result<Timing> {
    time_runs(
        g,
        warmup.max(1),
        None,
        (min_reps, max_reps, max_s),
        |call| match call {
            Some(i) => f(i),
            None => Ok(()),
        },
    )
}

/// Like [`time_gpu`] for calls that each leave work in flight behind them
/// (an overlapped training step reads the previous one back): every timed
/// repeat is `calls` calls `f(Some(i))`, then `f(None)` (the drain: take
/// what the last one left), between two `synchronize()`s; per-call ms =
/// repeat time / calls.
pub fn time_gpu_runs(
    g: &Gpu,
    (warmup, calls): (usize, usize),
    reps: (usize, usize, f64),
    f: impl FnMut(Option<usize>) -> engine::Result<()>,
) -> engine::Result<Timing> {
    time_runs(g, warmup, Some(calls), reps, f)
}

/// [`time_gpu`] and [`time_gpu_runs`]: `warmup` calls and a drain, then
/// repeats of `calls` calls and a drain (`calls` from the warm-up's time
/// when not given).
fn time_runs(
    g: &Gpu,
    warmup: usize,
    calls: Option<usize>,
    (min_reps, max_reps, max_s): (usize, usize, f64),
    mut f: impl FnMut(Option<usize>) -> engine::Result<()>,
) -> engine::Result<Timing> {
    let mut i = 0usize;
    let t = Instant::now();
    for _ in 0..warmup {
        f(Some(i))?;
        i += 1;
    }
    f(None)?;
    g.synchronize()?;
    let one = t.elapsed().as_secs_f64() * 1e3 / warmup.max(1) as f64;
    let calls = calls.unwrap_or_else(|| calls_per_rep(one, 2.0)).max(1);
    repeat(
        g,
        (min_reps, max_reps, max_s),
        calls,
        || Ok(()),
        |()| {
            for _ in 0..calls {
                f(Some(i))?;
                i += 1;
            }
            f(None)
        },
    )
}

/// Like [`time_gpu`] for calls that need an untimed setup each (a
/// backward needs a fresh forward): each repeat makes `calls` items with
/// `prep` (not timed), synchronises, then times `run` over them between
/// two `synchronize()`s. At most `max_calls` items live at once (memory).
pub fn time_prepared<T>(
    g: &Gpu,
    min_reps: usize,
    max_reps: usize,
    max_s: f64,
    max_calls: usize,
    mut prep: impl FnMut(usize) -> engine::Result<T>,
    mut run: impl FnMut(T) -> engine::Result<()>,
) -> engine::Result<Timing> {
    let mut i = 0usize;
    let mut one = 0.0;
    for _ in 0..2 {
        let item = prep(i)?;
        i += 1;
        g.synchronize()?;
        let t = Instant::now();
        run(item)?;
        g.synchronize()?;
        one = t.elapsed().as_secs_f64() * 1e3;
    }
    let calls = calls_per_rep(one, 2.0).min(max_calls.max(1));
    repeat(
        g,
        (min_reps, max_reps, max_s),
        calls,
        || {
            let items = (i..i + calls).map(&mut prep).collect();
            i += calls;
            items
        },
        |items: Vec<T>| items.into_iter().try_for_each(&mut run),
    )
}

/// The repeats of [`time_gpu`] and [`time_prepared`]: until `max_reps`
/// repeats or `max_s` seconds (at least `min_reps`), `prep` (not timed),
/// then `batch` (the repeat's `calls` calls) between two `synchronize()`s.
fn repeat<T>(
    g: &Gpu,
    (min_reps, max_reps, max_s): (usize, usize, f64),
    calls: usize,
    mut prep: impl FnMut() -> engine::Result<T>,
    mut batch: impl FnMut(T) -> engine::Result<()>,
) -> engine::Result<Timing> {
    let mut all = Vec::new();
    let started = Instant::now();
    while all.len() < max_reps && (all.len() < min_reps || started.elapsed().as_secs_f64() < max_s)
    {
        let items = prep()?;
        g.synchronize()?;
        let t0 = Instant::now();
        batch(items)?;
        g.synchronize()?;
        all.push(t0.elapsed().as_secs_f64() * 1e3 / calls as f64);
    }
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    Ok(Timing {
        ms_median: percentile(&sorted, 0.5),
        ms_p10: percentile(&sorted, 0.1),
        ms_p90: percentile(&sorted, 0.9),
        ms_all: all,
        calls_per_rep: calls,
    })
}

/// H100 L2 (50 MB): inputs rotate among enough sets to exceed 4x of it, as
/// torch_baselines.py's `rotation`.
pub const L2_BYTES: usize = 50 << 20;

/// Input sets to rotate among so their bytes exceed 4x L2 (torch_baselines.py).
pub fn rotation(set_bytes: usize, cap: usize) -> usize {
    let target = 4 * L2_BYTES;
    if set_bytes >= target {
        return 1;
    }
    (target.div_ceil(set_bytes.max(1))).clamp(2, cap)
}

/// Random normal values repeated from a pool (`pool` values, a different
/// start per `salt`): big benchmark inputs without drawing 10^8 normals.
/// Never zeros: the pool excludes values whose bf16 rounds to 0.
pub struct Pool {
    values: Vec<f32>,
}

impl Pool {
    pub fn new(len: usize, seed: u64) -> Pool {
        let mut rng = Rng::new(seed);
        let values = (0..len)
            .map(|_| loop {
                let v = rng.normal() as f32;
                if v.abs() > 1e-3 {
                    break v;
                }
            })
            .collect();
        Pool { values }
    }

    /// A host tensor of `shape` and `dtype` filled from the pool, moved to `device`.
    pub fn tensor(
        &self,
        shape: &[usize],
        dtype: DType,
        salt: usize,
        device: Device,
    ) -> engine::Result<Tensor> {
        let n: usize = shape.iter().product();
        let p = self.values.len();
        let start = (salt.wrapping_mul(7919)) % p;
        let t = match dtype {
            DType::BF16 => {
                let v: Vec<half::bf16> = (0..n)
                    .map(|i| half::bf16::from_f32(self.values[(start + i) % p]))
                    .collect();
                Tensor::from_vec(v, shape)?
            }
            DType::F16 => {
                let v: Vec<half::f16> = (0..n)
                    .map(|i| half::f16::from_f32(self.values[(start + i) % p]))
                    .collect();
                Tensor::from_vec(v, shape)?
            }
            _ => {
                let v: Vec<f32> = (0..n).map(|i| self.values[(start + i) % p]).collect();
                Tensor::from_vec(v, shape)?.to_dtype(dtype)?
            }
        };
        t.to_device(device)
    }
}

/// One big random 1-D device buffer that benchmark inputs are views of:
/// uploading 10^8-element tensors one by one (host permute to
/// channels-last included) would take seconds of GPU time per tensor. A 4-D view is made
/// channels-last ([N,H,W,C] row-major permuted to logical NCHW: strides
/// [HWC,1,WC,C], the GPU's default layout); every view starts on a
/// 64-element boundary.
pub struct DevicePool {
    t: Tensor,
    len: usize,
}

impl DevicePool {
    pub fn new(len: usize, dtype: DType, seed: u64) -> engine::Result<DevicePool> {
        let host = Pool::new(1 << 22, seed);
        Ok(DevicePool {
            t: host.tensor(&[len], dtype, 0, Device::Cuda(0))?,
            len,
        })
    }

    pub fn dtype(&self) -> DType {
        self.t.dtype()
    }

    /// A view of `shape` (no grad); `salt` picks where it starts.
    pub fn take(&self, shape: &[usize], salt: usize) -> engine::Result<Tensor> {
        let n: usize = shape.iter().product();
        if n > self.len {
            return Err(engine::Error::arg(
                "DevicePool::take",
                format!("{shape:?} needs {n} elements, the pool has {}", self.len),
            ));
        }
        let room = (self.len - n) / 64 + 1;
        let start = (salt.wrapping_mul(40_503).wrapping_add(17) % room) * 64;
        let flat = self.t.narrow(0, start, n)?;
        let v = if shape.len() == 4 {
            let [b, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
            flat.reshape(&[b, h, w, c])?.permute(&[0, 3, 1, 2])?
        } else {
            flat.reshape(shape)?
        };
        Ok(v.detach())
    }
}

/// One distinct conv of torchvision's ResNet-50 (v1.5: the stride on the
/// 3x3) at 224 px, with how many layers share it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvShape {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
    pub count: usize,
    /// false for the stem: the image needs no gradient.
    pub input_grad_needed: bool,
}

impl ConvShape {
    /// torch_baselines.py's tag: `3x3_64-64_s1_56x56` (input size).
    pub fn tag(&self) -> String {
        format!(
            "{k}x{k}_{}-{}_s{}_{}x{}",
            self.cin,
            self.cout,
            self.stride,
            self.h,
            self.w,
            k = self.k
        )
    }
    /// Whether the engine runs it as a GEMM (1x1, stride 1, no padding:
    /// `engine::ops::conv::Pointwise`).
    pub fn pointwise(&self) -> bool {
        (self.k, self.stride, self.pad) == (1, 1, 0)
    }
    pub fn flops(&self, batch: usize) -> f64 {
        2.0 * (batch * self.ho * self.wo * self.cout * self.cin * self.k * self.k) as f64
    }
}

/// The 23 distinct conv shapes of ResNet-50 at 224 px (53 convs), in the
/// order the network runs them, as torch_baselines.py's `resnet50_convs`.
pub fn resnet50_convs() -> Vec<ConvShape> {
    let mut v: Vec<ConvShape> = Vec::new();
    let mut push = |cin, cout, k, stride, pad, h: usize, grad| {
        let ho = (h + 2 * pad - k) / stride + 1;
        if let Some(c) = v
            .iter_mut()
            .find(|c| (c.cin, c.cout, c.k, c.stride, c.pad, c.h) == (cin, cout, k, stride, pad, h))
        {
            c.count += 1;
            return;
        }
        v.push(ConvShape {
            cin,
            cout,
            k,
            stride,
            pad,
            h,
            w: h,
            ho,
            wo: ho,
            count: 1,
            input_grad_needed: grad,
        });
    };
    push(3, 64, 7, 2, 3, 224, false);
    let (mut cin, mut h) = (64, 56);
    for (stage, (width, blocks)) in [(64, 3), (128, 4), (256, 6), (512, 3)]
        .into_iter()
        .enumerate()
    {
        let out = width * 4;
        for b in 0..blocks {
            let stride = if b == 0 && stage > 0 { 2 } else { 1 };
            let ho = h / stride;
            push(cin, width, 1, 1, 0, h, true);
            push(width, width, 3, stride, 1, h, true);
            push(width, out, 1, 1, 0, ho, true);
            if b == 0 {
                push(cin, out, 1, stride, 0, h, true);
            }
            cin = out;
            h = ho;
        }
    }
    v
}

/// Training-mode batch-norm arguments with PyTorch's defaults (momentum
/// 0.1, eps 1e-5), as the benches time them.
pub fn bn_train_args<'a>(
    weight: &'a Tensor,
    bias: &'a Tensor,
    running_mean: &'a Tensor,
    running_var: &'a Tensor,
) -> engine::ops::BatchNormArgs<'a> {
    engine::ops::BatchNormArgs {
        weight,
        bias,
        running_mean,
        running_var,
        training: true,
        momentum: 0.1,
        eps: 1e-5,
    }
}

/// Minimum bytes of BN(+add)+ReLU over E bf16 elements, as
/// torch_baselines.py's `bn_bytes`: fwd reads x (+r) and writes y; bwd reads
/// x and dy and a 1-bit ReLU mask and writes dx (+dr).
pub fn bn_bytes(e: usize, residual: bool, fwd: bool) -> usize {
    if fwd {
        (if residual { 3 } else { 2 }) * e * 2
    } else {
        (if residual { 4 } else { 3 }) * e * 2 + e.div_ceil(8)
    }
}

/// The BN shapes (H, W, C) of torch_baselines.py, batch 256.
pub const BN_SHAPES: [(usize, usize, usize); 5] = [
    (56, 56, 64),
    (56, 56, 256),
    (28, 28, 512),
    (14, 14, 1024),
    (7, 7, 2048),
];
pub const BN_BATCH: usize = 256;

/// `{:.3e}` without the noise: "1.2e-6", "inf".
pub fn sci(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2e}")
    } else {
        format!("{v}")
    }
}

/// Rounds to 4 significant digits for the JSON (like torch_baselines' sig).
pub fn sig(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let d = 4 - 1 - v.abs().log10().floor() as i32;
    let m = 10f64.powi(d);
    (v * m).round() / m
}

/// The message of a caught panic (a check reports it and goes on).
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    #[allow(unused_imports)]
    // cuda_ops.rs (harness = false) compiles this module without its tests
    use super::*;

    #[test]
    fn rel_err_is_max_abs_over_max_ref_and_nan_fails() {
        assert_eq!(rel_err(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_err(&[1.0, 4.1], &[1.0, 4.0]) - 0.025).abs() < 1e-12);
        assert_eq!(rel_err(&[f64::NAN, 1.0], &[0.0, 1.0]), f64::INFINITY);
        assert_eq!(rel_err(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(rel_err(&[f64::INFINITY], &[f64::INFINITY]), 0.0);
        assert_eq!(rel_err(&[f64::INFINITY], &[1.0]), f64::INFINITY);
        // masked: the flipped element is left out, the scale still counts it
        assert_eq!(rel_err_masked(&[0.0, 9.0], &[1.0, 4.0], |i| i == 0), 0.25);
    }

    #[test]
    fn args_parse_and_reject() {
        let a = Args::try_parse(vec![
            "--out".into(),
            "/x".into(),
            "--budget-s".into(),
            "12".into(),
            "--quick".into(),
        ])
        .unwrap();
        assert_eq!(a.budget_s, 12.0);
        assert!(a.flag("--quick"));
        assert!(Args::try_parse(vec!["--out".into(), "/x".into()]).is_err());
        assert!(Args::try_parse(vec![
            "--out".into(),
            "/x".into(),
            "--budget-s".into(),
            "-1".into()
        ])
        .is_err());
    }

    #[test]
    fn rotation_matches_torch_baselines() {
        // 3 bf16 tensors of 256x7x7x2048: 154 MB < 200 MiB -> 2 sets
        assert_eq!(rotation(3 * 256 * 7 * 7 * 2048 * 2, 8), 2);
        assert_eq!(rotation(4 << 30, 8), 1);
        assert_eq!(rotation(1 << 20, 8), 8);
    }

    #[test]
    fn resnet50_conv_shapes_match_torchvision() {
        let v = resnet50_convs();
        assert_eq!(v.len(), 23);
        assert_eq!(v.iter().map(|c| c.count).sum::<usize>(), 53);
        assert_eq!(v[0].tag(), "7x7_3-64_s2_224x224");
        assert_eq!((v[0].ho, v[0].input_grad_needed), (112, false));
        // layer1's conv3 and its downsample share a shape: 3 + 1
        let c = v.iter().find(|c| c.tag() == "1x1_64-256_s1_56x56").unwrap();
        assert_eq!(c.count, 4);
        let c = v
            .iter()
            .find(|c| c.tag() == "3x3_128-128_s2_56x56")
            .unwrap();
        assert_eq!((c.ho, c.count), (28, 1));
        assert_eq!(
            v.iter()
                .find(|c| c.tag() == "3x3_256-256_s1_14x14")
                .unwrap()
                .count,
            5
        );
        assert!(v.iter().any(|c| c.tag() == "1x1_1024-2048_s2_14x14"));
    }

    #[test]
    fn bn_bytes_match_torch_baselines() {
        assert_eq!(bn_bytes(8, false, true), 32);
        assert_eq!(bn_bytes(8, true, true), 48);
        assert_eq!(bn_bytes(9, false, false), 54 + 2);
        assert_eq!(bn_bytes(9, true, false), 72 + 2);
    }

    #[test]
    fn batching_and_percentiles() {
        assert_eq!(calls_per_rep(0.1, 2.0), 20);
        assert_eq!(calls_per_rep(10.0, 2.0), 1);
        assert_eq!(calls_per_rep(0.0, 2.0), 1);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
        assert_eq!(sig(123456.0), 123500.0);
    }
}
