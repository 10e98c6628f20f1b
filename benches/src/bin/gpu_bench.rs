//! slmlp-gpu-bench: our CUDA hot paths, timed on the keys of
//! tools/gpu/torch_baselines.py so gpu_report.py sets them side by side.
//!
//! Timing (METHOD.md): warm-up calls (kernel compile, cuDNN/cuBLASLt plan
//! choice stay out), then the median of repeats, each a batch of calls
//! (~2 ms of work) between two `Gpu::synchronize()`s on the host clock: the
//! stream is the only one, so this is what CUDA events around the batch
//! would read, plus one sync latency (~10 µs) spread over the batch. A
//! backward is timed over prepared forwards (made untimed before each
//! repeat), as torch_baselines.py's `autograd.grad` with the forward
//! outside. Inputs are views of one random device buffer (never zeros),
//! rotated among enough sets to exceed 4x L2 like the PyTorch side.
//!
//! Sections, in this order, while the budget lasts (`--sections` picks):
//! - `copy`: 1 GiB device-to-device copy; GB/s counts read + written: the
//!   memory ceiling the BN figures are shown against (key copy/d2d);
//! - `gemm`: bf16 matmul 8192^3 (the matrix ceiling) and the batch-256
//!   projector / classifier shapes (keys gemm/square, gemm/proj/*, gemm/fc/*);
//! - `bn`: batch_norm_relu and batch_norm_add_relu, N=256, bf16 activations
//!   with f32 parameters, training mode, fwd and bwd, at the five ResNet
//!   shapes (keys bn_relu/<variant>/<HxWxC>/eager/<fwd|bwd>, and the same
//!   figure under .../compile/... to set it against torch.compile);
//! - `conv`: the 23 ResNet-50 conv shapes at batch 256, 224 px, bf16:
//!   fwd, bwd_data (not for the stem), bwd_weight (keys conv/<tag>/<dir>);
//! - `train`: ResNet-50 training steps, batch 256 (keys resnet50_train/*),
//!   one with cuDNN's legacy API only (`eager_legacy_cudnn`: the others
//!   also time the graph API's plans, `cuda::dnn::Api`), one replaying the
//!   step recorded as a CUDA graph (`graph`), the ordinary and the graph
//!   step overlapped (`eager_overlapped`, `graph_overlapped`: each queued
//!   before the last one is read back), the last one fed by the
//!   device-mode loader (data loading included);
//! - `maskrcnn` (only when asked for): one Mask R-CNN R50-FPN training
//!   iteration, batch 4 at 800x1333, bf16 autocast (key
//!   maskrcnn_train/r50_fpn).
//!
//! `slmlp-gpu-bench --out DIR --budget-s N [--sections copy,gemm,bn,conv]`
//! Exit 0 all measured, 1 a measurement failed (an op errored), 3 no GPU.

mod gpu_common;

use engine::cuda::{AllocatorStats, Gpu};
use engine::ops::conv::{scoped_pointwise, Pointwise};
use engine::ops::Conv2dParams;
use engine::{DType, Device, Result, Rng, Tensor};
use gpu_common::*;
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};

const BIN: &str = "slmlp-gpu-bench";
/// Per-measurement limits: warm-up calls, repeats, seconds of repeats.
const WARMUP: usize = 3;
const MIN_REPS: usize = 10;
const MAX_REPS: usize = 100;
const MAX_S: f64 = 0.3;
/// Prepared forwards alive at once for a backward measurement.
const MAX_PREPARED: usize = 16;

/// The Mask R-CNN iteration of torch_baselines.py's `maskrcnn_train`:
/// images, objects per image.
const MR_BATCH: usize = 4;
const MR_HW: (usize, usize) = (800, 1333);
const MR_OBJECTS: usize = 4;

/// [`time_prepared`] with this binary's repeat settings: a backward timed
/// after an untimed forward.
fn time_backward<T>(
    g: &Gpu,
    prep: impl FnMut(usize) -> Result<T>,
    run: impl FnMut(T) -> Result<()>,
) -> Result<Timing> {
    time_prepared(g, MIN_REPS, MAX_REPS, MAX_S, MAX_PREPARED, prep, run)
}

struct Bench<'a> {
    g: &'static Gpu,
    dl: &'a Deadline,
    /// where result.json goes, rewritten after every measurement
    out: &'a std::path::PathBuf,
    pool: DevicePool,
    report: Report,
    copy_gbps: Option<f64>,
    gemm_tflops: Option<f64>,
}

impl Bench<'_> {
    /// Runs one measurement; an error or panic is a failure and the run
    /// goes on. `need_s` is the least budget worth starting it with.
    fn attempt(
        &mut self,
        what: &str,
        need_s: f64,
        f: impl FnOnce(&mut Self) -> Result<Value>,
    ) -> bool {
        if self.dl.left() < need_s {
            self.report.notes.push(format!(
                "{what}: not measured (budget: {:.0} s left)",
                self.dl.left()
            ));
            return false;
        }
        let result = catch_unwind(AssertUnwindSafe(|| f(self)));
        // what the row left cached (its tensors are gone now, also when it
        // failed) must not starve the next one
        self.g.empty_cache();
        let measured = match result {
            Ok(Ok(row)) => {
                println!("{what}: {}", brief(&row));
                self.report.rows.push(row);
                true
            }
            Ok(Err(e)) => {
                let msg = format!("{what}: {e}");
                println!("FAIL {msg}");
                self.report.failures.push(msg);
                false
            }
            Err(p) => {
                let msg = format!("{what}: panicked: {}", panic_text(&*p));
                println!("FAIL {msg}");
                self.report.failures.push(msg);
                false
            }
        };
        self.report.write_so_far(self.out);
        measured
    }
}

fn brief(row: &Value) -> String {
    let mut parts = vec![format!(
        "{:.4} ms",
        row["ms_median"].as_f64().unwrap_or(f64::NAN)
    )];
    for (k, unit) in [
        ("GBps", "GB/s"),
        ("TFLOPs", "TFLOP/s"),
        ("pct_of_copy", "% of copy"),
        ("pct_of_gemm", "% of GEMM"),
    ] {
        if let Some(v) = row[k].as_f64() {
            parts.push(format!("{v} {unit}"));
        }
    }
    parts.join(", ")
}

fn merge(mut row: Value, t: &Timing) -> Value {
    if let (Some(o), Value::Object(tm)) = (row.as_object_mut(), t.json()) {
        o.extend(tm);
    }
    row
}

/// `row` with its memory columns, measured as torch_baselines.py measures
/// PyTorch's (`max_memory_allocated` of the timed steps, after a first step
/// whose peak is reported apart): GiB allocated and reserved at the peak,
/// and the cuDNN / cuBLASLt workspace bytes held at it.
fn with_peaks(mut row: Value, first: &AllocatorStats, timed: &AllocatorStats) -> Value {
    let gib = |b: usize| json!(sig(b as f64 / (1u64 << 30) as f64));
    if let Some(o) = row.as_object_mut() {
        o.insert("peak_gib".into(), gib(timed.peak_allocated));
        o.insert("peak_reserved_gib".into(), gib(timed.peak_reserved));
        o.insert("peak_workspace_gib".into(), gib(timed.workspace_at_peak));
        o.insert("peak_gib_first_step".into(), gib(first.peak_allocated));
    }
    row
}

fn pct(a: f64, of: Option<f64>) -> Value {
    match of {
        Some(c) if c > 0.0 => json!(sig(100.0 * a / c)),
        _ => Value::Null,
    }
}

// ---- copy ----------------------------------------------------------------------

fn copy(b: &mut Bench) {
    const BYTES: usize = 1 << 30;
    b.attempt("copy/d2d 1 GiB", 5.0, |b| {
        let g = b.g;
        let src = g.alloc(BYTES)?;
        let dst = g.alloc(BYTES)?;
        // fill the source from the random pool (never time zeros)
        let pool = b.pool.take(&[b.pool_len()], 0)?;
        let ((pool_block, pool_at), pool_bytes) = (engine::cuda::tensor::block_of(&pool)?, b.pool_len() * 2);
        let mut off = 0;
        while off < BYTES {
            let n = pool_bytes.min(BYTES - off);
            src.copy_from(off, pool_block, pool_at, n)?;
            off += n;
        }
        let t = time_gpu(g, WARMUP, MIN_REPS, MAX_REPS, MAX_S, |_| dst.copy_from(0, &src, 0, BYTES))?;
        let moved = 2 * BYTES;
        let gbps = moved as f64 / (t.ms_median * 1e-3) / 1e9;
        b.copy_gbps = Some(gbps);
        Ok(merge(
            json!({"key": "copy/d2d", "name": "d2d copy 1 GiB (cuMemcpyDtoDAsync)", "buffer_bytes": BYTES,
                   "bytes": moved, "GBps": sig(gbps)}),
            &t,
        ))
    });
}

impl Bench<'_> {
    fn pool_len(&self) -> usize {
        POOL_LEN
    }
}

/// 256 Mi bf16 elements (512 MiB): holds the biggest input (256x256x56x56).
const POOL_LEN: usize = 1 << 28;

// ---- gemm ----------------------------------------------------------------------

/// (key, name, A shape, B shape, transpose A?, transpose B?, [M, N, K]).
type GemmCase = (
    &'static str,
    String,
    [usize; 2],
    [usize; 2],
    bool,
    bool,
    [usize; 3],
);

/// The gemm section's cases: Linear y = x W^T, dX = dY W, dW = dY^T X, as
/// torch_baselines.py's gemm section.
fn gemm_cases(square_only: bool) -> Vec<GemmCase> {
    let (s, bt, d, k) = (8192, 256, 2048, 1000);
    let mut v = vec![(
        "gemm/square",
        format!("{s}x{s}x{s}"),
        [s, s],
        [s, s],
        false,
        false,
        [s, s, s],
    )];
    if square_only {
        return v;
    }
    // (A, B, transpose A, transpose B): transposes are views, as in the model
    v.push((
        "gemm/proj/fwd",
        format!("projector fwd X[{bt},{d}] W^T[{d},{d}]"),
        [bt, d],
        [d, d],
        false,
        true,
        [bt, d, d],
    ));
    v.push((
        "gemm/proj/bwd_data",
        format!("projector bwd-data dY[{bt},{d}] W[{d},{d}]"),
        [bt, d],
        [d, d],
        false,
        false,
        [bt, d, d],
    ));
    v.push((
        "gemm/proj/bwd_weight",
        format!("projector bwd-weight dY^T[{d},{bt}] X[{bt},{d}]"),
        [bt, d],
        [bt, d],
        true,
        false,
        [d, d, bt],
    ));
    v.push((
        "gemm/fc/fwd",
        format!("classifier fwd X[{bt},{d}] W^T[{d},{k}]"),
        [bt, d],
        [k, d],
        false,
        true,
        [bt, k, d],
    ));
    v.push((
        "gemm/fc/bwd_data",
        format!("classifier bwd-data dY[{bt},{k}] W[{k},{d}]"),
        [bt, k],
        [k, d],
        false,
        false,
        [bt, d, k],
    ));
    v.push((
        "gemm/fc/bwd_weight",
        format!("classifier bwd-weight dY^T[{k},{bt}] X[{bt},{d}]"),
        [bt, k],
        [bt, d],
        true,
        false,
        [k, d, bt],
    ));
    v
}

fn gemm(b: &mut Bench, square_only: bool, skip_square: bool) {
    for (key, name, sa, sb, ta, tb, [m, n, kd]) in gemm_cases(square_only) {
        if skip_square && key == "gemm/square" {
            continue;
        }
        b.attempt(key, 3.0, |b| {
            let set_bytes = 2 * (m * kd + kd * n + m * n);
            let k = rotation(set_bytes, 32);
            let mut sets = Vec::new();
            for i in 0..k {
                let a = b.pool.take(&sa, 2 * i)?;
                let bb = b.pool.take(&sb, 2 * i + 1)?;
                let a = if ta { a.permute(&[1, 0])? } else { a };
                let bb = if tb { bb.permute(&[1, 0])? } else { bb };
                sets.push((a, bb));
            }
            let _ng = engine::no_grad();
            let t = time_gpu(b.g, WARMUP, MIN_REPS, MAX_REPS, MAX_S, |i| {
                let (a, bb) = &sets[i % k];
                a.matmul(bb).map(drop)
            })?;
            let flops = 2.0 * (m * n * kd) as f64;
            let tf = flops / (t.ms_median * 1e-3) / 1e12;
            if key == "gemm/square" {
                b.gemm_tflops = Some(tf);
            }
            let of_square = if key == "gemm/square" { Value::Null } else { pct(tf, b.gemm_tflops) };
            Ok(merge(
                json!({"key": key, "name": name, "M": m, "N": n, "K": kd, "dtype": "bf16", "rotated_sets": k,
                       "flops": flops, "TFLOPs": sig(tf), "pct_of_gemm": of_square}),
                &t,
            ))
        });
    }
}

// ---- bn_relu -------------------------------------------------------------------

struct BnSet {
    x: Tensor,
    r: Option<Tensor>,
    dy: Tensor,
}

fn bn(b: &mut Bench) {
    let n = BN_BATCH;
    for (h, w, c) in BN_SHAPES {
        for residual in [false, true] {
            let variant = if residual { "bn_add_relu" } else { "bn_relu" };
            let shape = format!("{h}x{w}x{c}");
            let e = n * h * w * c;
            let k = rotation(if residual { 4 } else { 3 } * e * 2, 8);
            let sets: Result<Vec<BnSet>> = (0..k)
                .map(|i| {
                    Ok(BnSet {
                        x: b.pool.take(&[n, c, h, w], 3 * i)?.requires_grad_()?,
                        r: if residual {
                            Some(b.pool.take(&[n, c, h, w], 3 * i + 1)?.requires_grad_()?)
                        } else {
                            None
                        },
                        dy: b.pool.take(&[n, c, h, w], 3 * i + 2)?,
                    })
                })
                .collect();
            let params: Result<[Tensor; 4]> = (|| {
                let host = Pool::new(4096, 11);
                Ok([
                    host.tensor(&[c], DType::F32, 1, Device::Cuda(0))?
                        .requires_grad_()?,
                    host.tensor(&[c], DType::F32, 2, Device::Cuda(0))?
                        .requires_grad_()?,
                    host.tensor(&[c], DType::F32, 3, Device::Cuda(0))?,
                    Tensor::ones(&[c], DType::F32).to_device(Device::Cuda(0))?,
                ])
            })();
            let (sets, [wt, bias, rm, rv]) = match (sets, params) {
                (Ok(s), Ok(p)) => (s, p),
                (Err(e), _) | (_, Err(e)) => {
                    let msg = format!("bn_relu/{variant}/{shape}: inputs: {e}");
                    println!("FAIL {msg}");
                    b.report.failures.push(msg);
                    continue;
                }
            };
            let args = bn_train_args(&wt, &bias, &rm, &rv);
            let fwd = |s: &BnSet| -> Result<Tensor> {
                Ok(match &s.r {
                    Some(r) => s.x.batch_norm_add_relu(r, &args)?.out,
                    None => s.x.batch_norm_relu(&args)?.out,
                })
            };
            for direction in ["fwd", "bwd"] {
                let key = format!("bn_relu/{variant}/{shape}/eager/{direction}");
                let ok = b.attempt(&key, 3.0, |b| {
                    let t = if direction == "fwd" {
                        time_gpu(b.g, WARMUP, MIN_REPS, MAX_REPS, MAX_S, |i| fwd(&sets[i % k]).map(drop))?
                    } else {
                        time_backward(
                            b.g,
                            |i| Ok((i % k, fwd(&sets[i % k])?)),
                            |(j, y)| {
                                y.backward_with(sets[j].dy.clone())?;
                                // drop the grads: the next backward writes fresh ones, as autograd.grad
                                for t in [Some(&sets[j].x), sets[j].r.as_ref(), Some(&wt), Some(&bias)].into_iter().flatten() {
                                    t.set_grad(None);
                                }
                                Ok(())
                            },
                        )?
                    };
                    let nb = bn_bytes(e, residual, direction == "fwd");
                    let gbps = nb as f64 / (t.ms_median * 1e-3) / 1e9;
                    Ok(merge(
                        json!({"key": key, "name": format!("{variant} {direction} N={n} {shape}"), "variant": variant,
                               "shape_nhwc": [n, h, w, c], "direction": direction, "dtype": "bf16 act, f32 params",
                               "bytes": nb, "GBps": sig(gbps), "pct_of_copy": pct(gbps, b.copy_gbps), "rotated_sets": k}),
                        &t,
                    ))
                });
                // the same figure against torch.compile's row
                if ok {
                    if let Some(mut row) = b.report.rows.last().cloned() {
                        row["key"] =
                            json!(format!("bn_relu/{variant}/{shape}/compile/{direction}"));
                        row["note"] =
                            json!("the eager measurement, keyed to join torch.compile's row");
                        b.report.rows.push(row);
                    }
                }
            }
        }
    }
}

// ---- conv_layers ---------------------------------------------------------------

/// The ResNet-50 convolutions at batch 256, each direction timed alone:
/// every shape on the default routes (`Pointwise::Auto`, keys
/// `conv/<shape>/<dir>`), or the 1x1 stride-1 shapes with their route
/// forced (`conv/<shape>/<dir>/gemm`, `.../cudnn`), to show what each
/// gains.
fn conv(b: &mut Bench, route: Pointwise) {
    const N: usize = 256;
    let _route = scoped_pointwise(route);
    let (key_suffix, lib) = match route {
        Pointwise::Auto => ("", ""),
        Pointwise::Gemm => ("/gemm", " (cuBLASLt)"),
        Pointwise::Cudnn => ("/cudnn", " (cuDNN)"),
    };
    for s in resnet50_convs() {
        if route != Pointwise::Auto && !s.pointwise() {
            continue;
        }
        let tag = s.tag();
        let flops = s.flops(N);
        let set_bytes =
            2 * (N * s.cin * s.h * s.w + s.cout * s.cin * s.k * s.k + N * s.cout * s.ho * s.wo);
        let k = rotation(set_bytes, 8);
        let p = Conv2dParams {
            stride: [s.stride, s.stride],
            padding: [s.pad, s.pad],
            ..Conv2dParams::default()
        };
        let mut dirs = vec!["fwd"];
        if s.input_grad_needed {
            dirs.push("bwd_data");
        }
        dirs.push("bwd_weight");
        for dir in dirs {
            let key = format!("conv/{tag}/{dir}{key_suffix}");
            b.attempt(&key, 2.0, |b| {
                let mut sets = Vec::new();
                for i in 0..k {
                    let x = b.pool.take(&[N, s.cin, s.h, s.w], 3 * i)?;
                    // unit-variance weights: outputs of O(sqrt(fan-in)) are
                    // harmless in bf16 and cost the same time
                    let w = b.pool.take(&[s.cout, s.cin, s.k, s.k], 3 * i + 1)?;
                    let dy = b.pool.take(&[N, s.cout, s.ho, s.wo], 3 * i + 2)?;
                    let (x, w) = match dir {
                        "bwd_data" => (x.requires_grad_()?, w),
                        "bwd_weight" => (x, w.requires_grad_()?),
                        _ => (x, w),
                    };
                    sets.push((x, w, dy));
                }
                let t = if dir == "fwd" {
                    let _ng = engine::no_grad();
                    time_gpu(b.g, WARMUP.max(2), MIN_REPS, MAX_REPS, MAX_S, |i| {
                        let (x, w, _) = &sets[i % k];
                        x.conv2d(w, None, p).map(drop)
                    })?
                } else {
                    time_backward(
                        b.g,
                        |i| {
                            let (x, w, _) = &sets[i % k];
                            Ok((i % k, x.conv2d(w, None, p)?))
                        },
                        |(j, y)| {
                            let (x, w, dy) = &sets[j];
                            y.backward_with(dy.clone())?;
                            x.set_grad(None);
                            w.set_grad(None);
                            Ok(())
                        },
                    )?
                };
                let tf = flops / (t.ms_median * 1e-3) / 1e12;
                Ok(merge(
                    json!({"key": key, "name": format!("conv {k}x{k} {}->{} s{} @{}x{} {dir}{lib}", s.cin, s.cout, s.stride, s.h, s.w, k = s.k),
                           "cin": s.cin, "cout": s.cout, "k": s.k, "stride": s.stride, "pad": s.pad, "H": s.h, "W": s.w,
                           "batch": N, "count": s.count, "direction": dir, "dtype": "bf16 channels_last",
                           "flops": flops, "rotated_sets": k,
                           // PyTorch's row of the shape (cuDNN there)
                           "vs_torch": [format!("conv/{tag}/{dir}")], "TFLOPs": sig(tf), "pct_of_gemm": pct(tf, b.gemm_tflops)}),
                    &t,
                ))
            });
        }
    }
}

// ---- resnet50_train -------------------------------------------------------------

/// ResNet-50 for 1000 classes (with the SL-MLP projector when `mlp`),
/// initialised from seed 0 on the host, on `device`.
fn resnet50(mlp: bool, device: Device) -> Result<models::SupervisedNet> {
    let mut cfg = models::NetConfig::new("resnet50", 1000)?;
    if mlp {
        cfg.projector = Some(models::ProjectorConfig::parse("d", 2048)?);
    }
    let net = models::SupervisedNet::new(cfg, &mut Rng::new(0))?;
    engine::nn::Module::to_device(&net, device)?;
    Ok(net)
}

/// torch_baselines.py's step: SGD momentum 0.9, wd 1e-4, lr 0.1, no warmup.
fn bench_options(precision: engine::amp::Precision) -> models::train::TrainOptions {
    models::train::TrainOptions {
        steps: 1000,
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
        warmup_steps: 0,
        label_smoothing: 0.0,
        precision,
    }
}

/// The whole ResNet-50 training step (SL and SL-MLP), as torch_baselines.py
/// times it: batch 256 at 224 px, bf16 compute with f32 master weights, SGD
/// momentum 0.9, wd 1e-4, inputs already on the GPU (two sets alternated),
/// through the same `Trainer::step` `slmlp pretrain` runs (so its per-step
/// loss read-back is timed too). Peak memory is the caching allocator's.
/// SL-MLP also runs in f16 with dynamic loss scaling (`eager_f16`; PyTorch
/// has no f16 row), to set its speed next to bf16's. The `_overlapped`
/// rows queue each step before reading the last one back
/// (`Trainer::step_overlapped`, what `slmlp pretrain` does on a GPU), timed
/// over runs of 8 steps between two synchronisations, as
/// torch_baselines.py's loop synchronises every 8 steps.
fn train(b: &mut Bench) {
    use engine::amp::Precision;
    use models::train::Trainer;
    const N: usize = 256;
    const PX: usize = 224;
    use engine::cuda::dnn::{scoped, Api};
    // (variant, precision, cuDNN API, 1x1 route, CUDA graph, overlapped):
    // the rows with the legacy API and with the 1x1 convolutions' route
    // forced only show what the graph API's plans, the GEMMs and the timed
    // choice between GEMM and cuDNN gain in the same run; the graph rows
    // replay the recorded step (`Trainer::with_cuda_graph`)
    let (auto, timed, bf16) = (Api::Auto, Pointwise::Auto, Precision::Bf16);
    for (variant, precision, api, pointwise, graph, overlap) in [
        ("sl", bf16, auto, timed, false, false),
        ("sl_mlp", bf16, auto, timed, false, false),
        ("sl_mlp", bf16, auto, timed, false, true),
        ("sl_mlp", bf16, auto, timed, true, false),
        ("sl_mlp", bf16, auto, timed, true, true),
        ("sl_mlp", bf16, Api::Legacy, timed, false, false),
        ("sl_mlp", bf16, auto, Pointwise::Cudnn, false, false),
        ("sl_mlp", Precision::F16, auto, timed, false, false),
        ("sl_mlp", bf16, auto, Pointwise::Gemm, false, false),
    ] {
        let (mode, dtype) = match (precision, api, pointwise, graph, overlap) {
            (Precision::F16, ..) => ("eager_f16", "f16"),
            (_, Api::Legacy, ..) => ("eager_legacy_cudnn", "bf16"),
            (_, _, Pointwise::Cudnn, ..) => ("eager_cudnn_1x1", "bf16"),
            (_, _, Pointwise::Gemm, ..) => ("eager_gemm_1x1", "bf16"),
            (.., true, true) => ("graph_overlapped", "bf16"),
            (.., true, false) => ("graph", "bf16"),
            (.., false, true) => ("eager_overlapped", "bf16"),
            _ => ("eager", "bf16"),
        };
        let key = format!("resnet50_train/{variant}/{mode}");
        b.attempt(&key, 25.0, |b| {
            let _api = scoped(api, true);
            let _pointwise = scoped_pointwise(pointwise);
            let net = resnet50(variant == "sl_mlp", Device::Cuda(b.g.ordinal))?;
            let params: usize = engine::nn::Module::params(&net)
                .iter()
                .map(|p| p.dims().iter().product::<usize>())
                .sum();
            let mut trainer = Trainer::new(&net, bench_options(precision), Default::default());
            if graph {
                trainer = trainer.with_cuda_graph()?;
            }
            let mut sets = Vec::new();
            for i in 0..2 {
                let x = b.pool.take(&[N, 3, PX, PX], 7 + i)?.to_dtype(DType::F32)?;
                let y: Vec<i64> = (0..N).map(|j| ((j * 37 + i * 11) % 1000) as i64).collect();
                // labels on the host, as the loader gives them (the trainer
                // uploads them and reads only the loss and the misses back)
                sets.push((x, Tensor::from_vec(y, &[N])?));
            }
            b.g.reset_peak_memory();
            let t0 = std::time::Instant::now();
            trainer.step(&sets[0].0, &sets[0].1)?;
            b.g.synchronize()?;
            let first_step_s = t0.elapsed().as_secs_f64();
            // as torch_baselines.py: the peak of the timed steps, after the
            // first one (its algorithm searches hold a Find workspace of up
            // to 1 GiB, dnn::workspace_cap) and apart from it
            let first = b.g.memory_stats();
            b.g.reset_peak_memory();
            let mut last_loss = f64::NAN;
            let t = if overlap {
                let (t, loss) = time_overlapped(b.g, &mut trainer, |i| Ok(sets[i % 2].clone()))?;
                last_loss = loss;
                t
            } else {
                time_gpu(b.g, 2, 5, 30, 6.0, |i| {
                    let (x, y) = &sets[i % 2];
                    last_loss = trainer.step(x, y)?.loss;
                    Ok(())
                })?
            };
            let peak = b.g.memory_stats();
            let graph_counts = trainer.graph_counts();
            let row = merge(
                json!({"key": key, "name": format!("resnet50 {} {dtype} train step (slmlp)", variant.to_uppercase().replace('_', "-")),
                       // every variant against PyTorch's eager and compiled steps
                       "vs_torch": [format!("resnet50_train/{variant}/eager"), format!("resnet50_train/{variant}/compile")],
                       "graph_recordings_replays": graph_counts,
                       "variant": variant, "mode": mode, "batch": N, "px": PX, "params": params,
                       "precision": format!("{dtype} compute, f32 master weights, channels_last, SGD momentum"),
                       "img_per_s": sig(N as f64 / (t.ms_median * 1e-3)),
                       "first_step_s": sig(first_step_s), "loss_last": sig(last_loss)}),
                &t,
            );
            Ok(with_peaks(row, &first, &peak))
        });
    }
}

/// Overlapped training steps (`Trainer::step_overlapped`) on the batches
/// `batch(i)` gives, timed over runs of 8 steps between two
/// synchronisations (`time_gpu_runs`): the timing and the last step's loss.
fn time_overlapped(
    g: &Gpu,
    trainer: &mut models::train::Trainer,
    mut batch: impl FnMut(usize) -> Result<(Tensor, Tensor)>,
) -> Result<(Timing, f64)> {
    let mut last = None;
    let t = time_gpu_runs(g, (2, 8), (3, 10, 8.0), |call| {
        let done = match call {
            Some(i) => {
                let (x, y) = batch(i)?;
                trainer.step_overlapped(&x, &y)?
            }
            None => trainer.finish_in_flight()?,
        };
        last = done.or(last.take());
        Ok(())
    })?;
    Ok((t, last.map_or(f64::NAN, |l| l.loss)))
}

/// The SL-MLP bf16 step of `train` fed by the loader `slmlp pretrain` uses
/// on a GPU (key resnet50_train/sl_mlp/eager_loader): 1024 random 256x256
/// RGB u8 images in memory, resident on the device, RandomResizedCrop to
/// 224 + flip + normalise on the GPU (`PixelWork::Device`), 4 loader
/// threads drawing the crops. Each timed call takes the next batch and
/// queues its step before reading the last one back, as `slmlp pretrain`
/// does on a GPU, so its img/s is the data-loading-included figure to set
/// beside the step-only `resnet50_train/sl_mlp/eager_overlapped` row
/// (issue target: within 5 %).
fn train_with_loader(b: &mut Bench) {
    use engine::amp::Precision;
    use models::data::{InMemory, Loader, LoaderOptions, PixelWork, Transform};
    use models::train::Trainer;
    const N: usize = 256;
    const PX: usize = 224;
    const IMAGES: usize = 1024;
    const SIDE: usize = 256;
    let key = "resnet50_train/sl_mlp/eager_loader";
    b.attempt(key, 30.0, |b| {
        let device = Device::Cuda(b.g.ordinal);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let pixels: Vec<u8> = (0..IMAGES * SIDE * SIDE * 3 / 8)
            .flat_map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                state.to_le_bytes()
            })
            .collect();
        let labels = (0..IMAGES).map(|i| (i % 1000) as u16).collect();
        let classes = (0..1000).map(|c| c.to_string()).collect();
        let ds = InMemory::new("bench", classes, 3, SIDE, SIDE, pixels, labels)?;
        let work = PixelWork::Device {
            device,
            dtype: DType::BF16,
        };
        let opts = LoaderOptions {
            batch: N,
            shuffle: true,
            drop_last: true,
            workers: 4,
            prefetch: 4,
            seed: 0,
        };
        let loader = Loader::with_pixel_work(
            std::sync::Arc::new(ds),
            Transform::imagenet_train(PX),
            opts,
            work,
        )?;
        let net = resnet50(true, device)?;
        let mut trainer = Trainer::new(&net, bench_options(Precision::Bf16), Default::default());
        let (mut epoch, mut batches) = (0, loader.epoch(0, 0));
        let (t, last_loss) = time_overlapped(b.g, &mut trainer, |_| {
            let batch = match batches.next() {
                Some(batch) => batch?,
                None => {
                    epoch += 1;
                    batches = loader.epoch(epoch, 0);
                    batches
                        .next()
                        .ok_or_else(|| engine::Error::arg("bench", "an epoch without batches"))??
                }
            };
            Ok((batch.images, batch.labels))
        })?;
        Ok(merge(
            json!({"key": key, "name": "resnet50 SL-MLP bf16 train step with the device-mode loader (slmlp)",
                   "vs_torch": ["resnet50_train/sl_mlp/eager", "resnet50_train/sl_mlp/compile"],
                   "variant": "sl_mlp", "mode": "eager_loader", "batch": N, "px": PX,
                   "data": format!("{IMAGES} random {SIDE}x{SIDE} RGB u8 images resident on the GPU, RandomResizedCrop {PX} + flip on the GPU, 4 loader threads"),
                   "img_per_s": sig(N as f64 / (t.ms_median * 1e-3)), "loss_last": sig(last_loss)}),
            &t,
        ))
    });
}

/// One Mask R-CNN R50-FPN training iteration as torch_baselines.py's
/// `maskrcnn_train` times it: torchvision's configuration (91 classes,
/// FPN 256, box head 1024, frozen BN, 3 trainable backbone stages), batch
/// 4 of random 800x1333 images (padded to 800x1344 as torchvision's
/// transform does) with 4 random boxes and masks each, bf16 autocast,
/// SGD momentum 0.9, lr 0.02 x 4/16, wd 1e-4; forward with the losses,
/// backward, step. The backbone's BN statistics are the initial 0/1
/// (torch calibrates its random backbone's; only the timing matters here).
fn maskrcnn(b: &mut Bench) {
    use models::detection::data::DetTarget;
    use models::detection::mask_rcnn::{MaskRcnn, MaskRcnnConfig};
    use models::detection::traffic;
    let key = "maskrcnn_train/r50_fpn";
    b.attempt(key, 30.0, |b| {
        let (h, w) = MR_HW;
        let padded_w = w.div_ceil(32) * 32;
        // cuDNN's and cuBLASLt's heuristic choices, no timed search per new
        // mask-head batch size: torch's side runs with cudnn.benchmark =
        // False (and never times cuBLAS algorithms)
        engine::cuda::dnn::set_benchmark(false);
        engine::cuda::blas::set_benchmark(false);
        let mut rng = Rng::new(0);
        let mut model = MaskRcnn::new(MaskRcnnConfig::torchvision("resnet50", 91), &mut rng)?;
        model.set_compute_dtype(DType::BF16)?;
        model.to_device(Device::Cuda(b.g.ordinal))?;
        model.set_training(true);
        let trainable = model.trainable_params();
        let mut opt = engine::optim::Sgd::new(0.02 * MR_BATCH as f64 / 16.0, 0.9, 1e-4);
        let mut batches = Vec::new();
        for i in 0..2 {
            let images = b
                .pool
                .take(&[MR_BATCH, 3, h, padded_w], 11 + i)?
                .to_dtype(DType::F32)?;
            let targets: Vec<DetTarget> = (0..MR_BATCH)
                .map(|_| random_target(&mut rng, (h, w)))
                .collect();
            batches.push((images, targets));
        }
        let sizes = vec![(h, w); MR_BATCH];
        let mut last_loss = None;
        let mut step = |i: usize, keep: bool| -> Result<()> {
            let (images, targets) = &batches[i % 2];
            engine::optim::zero_grad(&trainable);
            let loss = model
                .forward_train(images, &sizes, targets, &mut Rng::new(i as u64))?
                .total()?;
            loss.backward()?;
            engine::optim::Optimizer::step(&mut opt, &trainable)?;
            if keep {
                last_loss = Some(loss.detach());
            }
            Ok(())
        };
        b.g.reset_peak_memory();
        let t0 = std::time::Instant::now();
        step(0, false)?;
        b.g.synchronize()?;
        let first_s = t0.elapsed().as_secs_f64();
        let first = b.g.memory_stats();
        b.g.reset_peak_memory();
        let before = traffic();
        step(1, false)?;
        let reads = traffic().reads - before.reads;
        let t = time_gpu(b.g, 1, 5, 30, 8.0, |i| step(i, true))?;
        let peak = b.g.memory_stats();
        let loss = match &last_loss {
            Some(l) => l.to_device(Device::Cpu)?.item()?,
            None => f64::NAN,
        };
        engine::cuda::dnn::set_benchmark(true);
        engine::cuda::blas::set_benchmark(true);
        let row = merge(
            json!({"key": key, "name": format!("Mask R-CNN R50-FPN train iter, batch {MR_BATCH} @{h}x{w} (slmlp)"),
                   "batch": MR_BATCH, "image_hw": [h, w], "backbone": "frozen BN (initial statistics), trainable layers 3",
                   "precision": "bf16 autocast", "cudnn_benchmark": false, "first_iter_s": sig(first_s),
                   "host_reads_per_iter": reads,
                   "img_per_s": sig(MR_BATCH as f64 / (t.ms_median * 1e-3)),
                   "loss_last": sig(loss)}),
            &t,
        );
        Ok(with_peaks(row, &first, &peak))
    });
}

/// `MR_OBJECTS` random boxes with random masks inside them, as
/// torch_baselines.py's `maskrcnn_batches` draws them.
fn random_target(rng: &mut Rng, (h, w): (usize, usize)) -> models::detection::data::DetTarget {
    let (hf, wf) = (h as f64, w as f64);
    let mut boxes = Vec::new();
    let mut masks = Vec::new();
    for _ in 0..MR_OBJECTS {
        let x1 = rng.uniform() * wf * 0.6;
        let y1 = rng.uniform() * hf * 0.6;
        let x2 = (x1 + 16.0 + rng.uniform() * wf * 0.35).min(wf - 1.0);
        let y2 = (y1 + 16.0 + rng.uniform() * hf * 0.35).min(hf - 1.0);
        let mut m = vec![0u8; h * w];
        let (c0, c1) = (x1.round() as usize, x2.round() as usize);
        for y in y1.round() as usize..y2.round() as usize {
            for x in c0..c1 {
                m[y * w + x] = u8::from(rng.uniform() > 0.3);
            }
        }
        boxes.push([x1 as f32, y1 as f32, x2 as f32, y2 as f32]);
        masks.push(m);
    }
    models::detection::data::DetTarget {
        labels: (0..MR_OBJECTS).map(|i| 1 + (i as i64 * 29) % 90).collect(),
        boxes,
        masks,
        image_id: 0,
        orig_size: (h, w),
        size: (h, w),
    }
}

/// What each of the step's features gains, as two times of the same run
/// (issue 16 asks for each step's gain shown apart): the 1x1 stride-1
/// convolutions of a step as GEMMs against cuDNN, and the SL-MLP training
/// step's rows that differ in one setting.
fn summarize_gains(report: &mut Report, rows: &[Value], convs: &[ConvShape]) {
    let ms = |k: &str| {
        rows.iter()
            .find(|r| r["key"] == k)
            .and_then(|r| r["ms_median"].as_f64())
    };
    let (mut total, mut measured, mut expected) = ([0.0; 3], 0, 0);
    for s in convs.iter().filter(|s| s.pointwise()) {
        for dir in ["fwd", "bwd_data", "bwd_weight"] {
            expected += 1;
            let key = format!("conv/{}/{dir}", s.tag());
            let three = [
                ms(&key),
                ms(&format!("{key}/gemm")),
                ms(&format!("{key}/cudnn")),
            ];
            if let [Some(a), Some(g), Some(c)] = three {
                for (t, v) in total.iter_mut().zip([a, g, c]) {
                    *t += v * s.count as f64;
                }
                measured += 1;
            }
        }
    }
    if measured > 0 {
        let [auto, gemm, cudnn] = total.map(sig);
        report.figure(
            &format!("ResNet-50 1x1 stride-1 conv time per step, batch 256 ({measured}/{expected} measured all three ways)"),
            format!("{auto} (cuBLASLt only: {gemm}, cuDNN only: {cudnn})"),
            "ms",
            "the timed choice per problem against each route forced",
        );
    }
    let step = |mode: &str| ms(&format!("resnet50_train/sl_mlp/{mode}"));
    for (what, without, with) in [
        (
            "1x1 convs as cuBLASLt GEMMs",
            "eager_cudnn_1x1",
            "eager_gemm_1x1",
        ),
        (
            "1x1 convs on the faster of GEMM and cuDNN",
            "eager_cudnn_1x1",
            "eager",
        ),
        ("cuDNN graph API plans", "eager_legacy_cudnn", "eager"),
        ("CUDA graph", "eager", "graph"),
        ("overlapped steps", "eager", "eager_overlapped"),
        ("overlapped steps, CUDA graph", "graph", "graph_overlapped"),
        ("f16 instead of bf16", "eager", "eager_f16"),
        (
            "the device loader's data (5 % target)",
            "eager_overlapped",
            "eager_loader",
        ),
    ] {
        if let (Some(a), Some(b)) = (step(without), step(with)) {
            report.figure(
                &format!("SL-MLP step: {what} ({without} -> {with})"),
                format!("{} -> {} ({:.3}x)", sig(a), sig(b), b / a),
                "ms",
                "time with / time without, < 1 is a gain",
            );
        }
    }
}

fn main() {
    let args = Args::parse(BIN, " [--sections copy,gemm,bn,conv,train,maskrcnn]");
    use_bundled_nvrtc();
    let dl = Deadline::new(args.budget_s);
    let g = open_gpu_or_exit(BIN, &args.out);
    let sections: Vec<String> = args
        .value("--sections")
        .unwrap_or("copy,gemm,bn,conv,train")
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    for s in &sections {
        if !["copy", "gemm", "bn", "conv", "train", "maskrcnn"].contains(&s.as_str()) {
            eprintln!("{BIN}: unknown section {s:?} (copy, gemm, bn, conv, train, maskrcnn)");
            std::process::exit(EXIT_CRASH);
        }
    }
    let want = |s: &str| sections.iter().any(|x| x == s);
    println!("{BIN}: budget {} s; {}", args.budget_s, g.info.summary());
    let pool = match DevicePool::new(POOL_LEN, DType::BF16, 5) {
        Ok(p) => p,
        Err(e) => {
            println!(
                "FAIL {BIN}: the random input buffer ({POOL_LEN} bf16) could not be made: {e}"
            );
            let r = Report {
                failures: vec![format!("input buffer: {e}")],
                ..Report::default()
            };
            r.write(&args.out, None);
            std::process::exit(EXIT_FAIL);
        }
    };
    let mut b = Bench {
        g,
        dl: &dl,
        out: &args.out,
        pool,
        report: Report::default(),
        copy_gbps: None,
        gemm_tflops: None,
    };
    // ceilings first, then the BN figures measured against them, then the rest
    if want("copy") {
        copy(&mut b);
    }
    if want("gemm") {
        gemm(&mut b, true, false);
    }
    if want("bn") {
        bn(&mut b);
    }
    if want("gemm") {
        gemm(&mut b, false, true);
    }
    if want("conv") {
        conv(&mut b, Pointwise::Auto);
    }
    if want("train") {
        train(&mut b);
        train_with_loader(&mut b);
    }
    // after the steps: only a comparison
    if want("conv") {
        for route in [Pointwise::Cudnn, Pointwise::Gemm] {
            conv(&mut b, route);
        }
    }
    if want("maskrcnn") {
        maskrcnn(&mut b);
    }
    // summary: the ceilings, BN as % of copy, conv per-step total
    let rows = b.report.rows.clone();
    let find = |k: &str| rows.iter().find(|r| r["key"] == k);
    if let Some(c) = b.copy_gbps {
        b.report.figure(
            "d2d copy",
            sig(c),
            "GB/s",
            "H100 ~3000 GB/s (read + written)",
        );
    }
    if let Some(t) = b.gemm_tflops {
        b.report
            .figure("bf16 GEMM 8192^3", sig(t), "TFLOP/s", "H100 ~800 TFLOP/s");
    }
    for dir in ["fwd", "bwd"] {
        for variant in ["bn_relu", "bn_add_relu"] {
            let v: Vec<f64> = BN_SHAPES
                .iter()
                .filter_map(|(h, w, c)| find(&format!("bn_relu/{variant}/{h}x{w}x{c}/eager/{dir}")))
                .filter_map(|r| r["pct_of_copy"].as_f64())
                .collect();
            if !v.is_empty() {
                let (lo, hi) = v
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
                b.report.figure(
                    &format!("{variant} {dir} (N=256, bf16, {} shapes)", v.len()),
                    format!("{lo:.0}-{hi:.0}"),
                    "% of copy GB/s",
                    "a fused pass should approach 100%",
                );
            }
        }
    }
    let convs = resnet50_convs();
    let mut total = 0.0;
    let mut measured = 0;
    let mut expected = 0;
    for s in &convs {
        for dir in ["fwd", "bwd_data", "bwd_weight"] {
            if dir == "bwd_data" && !s.input_grad_needed {
                continue;
            }
            expected += 1;
            if let Some(ms) =
                find(&format!("conv/{}/{dir}", s.tag())).and_then(|r| r["ms_median"].as_f64())
            {
                total += ms * s.count as f64;
                measured += 1;
            }
        }
    }
    if measured > 0 {
        b.report.figure(
            &format!("ResNet-50 conv time per step, batch 256 ({measured}/{expected} measured)"),
            sig(total),
            "ms",
            "torch conv_layers per-step total (gpu_check.md)",
        );
    }
    summarize_gains(&mut b.report, &rows, &convs);
    b.report.search_figures();
    let line = gpu_line(g);
    println!("{BIN}: {line}");
    b.report.notes.push(line);
    b.report.write(&args.out, None);
    println!(
        "{BIN}: {} rows, {} failure(s) in {:.1} s",
        b.report.rows.len(),
        b.report.failures.len(),
        dl.elapsed()
    );
    std::process::exit(if b.report.failures.is_empty() {
        EXIT_PASS
    } else {
        EXIT_FAIL
    });
}
