//! `slmlp profile`: where a training step's time goes. Runs W warm-up and
//! S profiled steps of `pretrain`'s network and training step on random
//! data, and prints the engine profiler's roofline table (`engine::profile`):
//! per op and shapes, calls, time, FLOPs or bytes, and the share of the
//! peak FLOP/s or copy bandwidth they reach; --out writes it as JSON.

use super::{bounded, MAX_BATCH};
use crate::data::MAX_IMAGE_SIZE;
use crate::net::{MAX_CLASSES, MAX_IN_CHANNELS, MAX_WIDTH};
use crate::pretrain::{ComputeArgs, DataArgs, Method, PretrainArgs, StemArg};
use crate::train::{TrainOptions, Trainer};
use crate::SupervisedNet;
use engine::nn::Module;
use engine::profile::{self, Ceiling};
use engine::{DType, Device, Error, Result, Rng, Tensor};
use std::path::PathBuf;
use std::time::Instant;

/// Warm-up and profiled steps, rows of the table.
const MAX_STEPS: usize = 1000;
/// Elements of one input batch (4 GiB of f32).
const MAX_BATCH_ELEMENTS: usize = 1 << 30;

#[derive(Clone, Debug, clap::Args)]
pub struct ProfileArgs {
    /// sl: no projector; sl-mlp: with the MLP projector.
    #[arg(long, value_enum, default_value = "sl-mlp")]
    pub method: Method,
    /// resnet18, resnet34 or resnet50.
    #[arg(long, default_value = "resnet50")]
    pub arch: String,
    /// Channels of the first stage (stages use w, 2w, 4w, 8w).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Stem; default: cifar for images up to 64 px, imagenet above.
    #[arg(long, value_enum)]
    pub stem: Option<StemArg>,
    /// Projector widths for sl-mlp (as `pretrain --projector`).
    #[arg(long, default_value = "d")]
    pub projector: String,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Input channels.
    #[arg(long, default_value_t = 3)]
    pub in_channels: usize,
    /// Classes of the classifier.
    #[arg(long, default_value_t = 1000)]
    pub classes: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Steps run before profiling (algorithm searches, allocator warm-up).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Steps profiled.
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Rows of the table (the rest are summed into "other").
    #[arg(long, default_value_t = 25)]
    pub top: usize,
    /// Write the whole profile (every row, every algorithm search) here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Peak FLOP/s of the ceiling, in TFLOP/s (CPU default: the f32 FMA
    /// peak measured at the start; GPU: the card's datasheet).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Copy bandwidth of the ceiling, in GB/s (CPU default: measured at
    /// the start; GPU: the card's datasheet HBM bandwidth).
    #[arg(long)]
    pub peak_gbps: Option<f64>,
    /// GPU datasheet defaults to use (h100, h200; default: from the card's name).
    #[arg(long)]
    pub card: Option<String>,
}

fn check(a: &ProfileArgs) -> Result<()> {
    bounded("width", a.width, 1..=MAX_WIDTH)?;
    bounded("image-size", a.image_size, 1..=MAX_IMAGE_SIZE)?;
    bounded("in-channels", a.in_channels, 1..=MAX_IN_CHANNELS)?;
    bounded("classes", a.classes, 1..=MAX_CLASSES)?;
    bounded("batch", a.batch, 1..=MAX_BATCH)?;
    bounded("warmup", a.warmup, 0..=MAX_STEPS)?;
    bounded("steps", a.steps, 1..=MAX_STEPS)?;
    bounded("top", a.top, 1..=MAX_STEPS)?;
    let elements = a
        .batch
        .checked_mul(a.in_channels)
        .and_then(|v| v.checked_mul(a.image_size))
        .and_then(|v| v.checked_mul(a.image_size));
    if elements.is_none_or(|e| e > MAX_BATCH_ELEMENTS) {
        return Err(Error::arg(
            "command line",
            format!(
                "--batch {} x --in-channels {} x --image-size {}^2 is more than {MAX_BATCH_ELEMENTS} input elements",
                a.batch, a.in_channels, a.image_size
            ),
        ));
    }
    for (flag, v) in [("peak-tflops", a.peak_tflops), ("peak-gbps", a.peak_gbps)] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0 && *v < 1e6)) {
            return Err(Error::arg(
                "command line",
                format!("--{flag} {v} must be a positive number below 1e6"),
            ));
        }
    }
    Ok(())
}

/// The ceiling for `device`: the flags, else the documented / measured
/// CPU numbers or the card's datasheet.
fn ceiling(a: &ProfileArgs, device: Device) -> Result<Ceiling> {
    let flags = |f: f64, b: f64, what: &str| Ceiling::new(f, b, what.to_string());
    match device {
        Device::Cpu => {
            let (f, fsrc) = match a.peak_tflops {
                Some(t) => (t * 1e12, "--peak-tflops".to_string()),
                None => {
                    let (f, isa) = profile::measure_cpu_fma_peak();
                    (
                        f,
                        format!("f32 FMA peak measured now ({isa}, {} threads; docs/PERF.md Ceiling's method)", rayon::current_num_threads()),
                    )
                }
            };
            let (b, bsrc) = match a.peak_gbps {
                Some(g) => (g * 1e9, "--peak-gbps".to_string()),
                None => (
                    profile::measure_cpu_copy_bandwidth(),
                    "copy bandwidth measured now (best of 5 parallel 64 MiB copies, read + write)"
                        .to_string(),
                ),
            };
            flags(f, b, &format!("FLOP/s: {fsrc}; bytes/s: {bsrc}"))
        }
        Device::Cuda(i) => {
            let g = engine::cuda::gpu(i)?;
            let dtype = a.compute.precision.compute_dtype();
            let card = match &a.card {
                Some(c) => Some(c.clone()),
                None if g.info.name.contains("H200") => Some("h200".into()),
                None if g.info.name.contains("H100") => Some("h100".into()),
                None => None,
            };
            let sheet = card
                .map(|c| Ceiling::gpu_datasheet(&c, dtype, engine::cuda::dnn::tf32()))
                .transpose()?;
            match (a.peak_tflops, a.peak_gbps, sheet) {
                (Some(t), Some(b), _) => flags(t * 1e12, b * 1e9, "--peak-tflops, --peak-gbps"),
                (t, b, Some(s)) => flags(
                    t.map_or(s.flops_per_s, |t| t * 1e12),
                    b.map_or(s.bytes_per_s, |b| b * 1e9),
                    &format!(
                        "{}{}",
                        s.source,
                        if t.is_some() || b.is_some() {
                            " (overridden by the flags given)"
                        } else {
                            ""
                        }
                    ),
                ),
                _ => Err(Error::arg(
                    "profile",
                    format!(
                        "no datasheet defaults for {}: pass --peak-tflops and --peak-gbps (or --card h100|h200)",
                        g.info.name
                    ),
                )),
            }
        }
    }
}

/// Drains the GPU's queue (a no-op on the CPU).
fn sync(device: Device) -> Result<()> {
    match device {
        Device::Cuda(i) => engine::cuda::gpu(i)?.synchronize(),
        Device::Cpu => Ok(()),
    }
}

fn host_name(device: Device) -> Result<String> {
    Ok(match device {
        Device::Cuda(i) => engine::cuda::gpu(i)?.info.summary(),
        Device::Cpu => {
            let model = std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("model name"))
                        .and_then(|l| l.split(':').nth(1))
                        .map(|m| m.trim().to_string())
                })
                .unwrap_or_else(|| "unknown CPU".into());
            format!("cpu: {model}, {} threads", rayon::current_num_threads())
        }
    })
}

pub fn run(a: &ProfileArgs) -> Result<()> {
    check(a)?;
    engine::cuda::dnn::set_deterministic(false);
    let device = a.compute.device.open()?;
    // pretrain's network for these options
    let mut p = PretrainArgs::study(
        a.method,
        DataArgs {
            data: "synthetic".into(),
            classes: None,
            per_class: None,
            workers: 0,
        },
        (&a.arch, a.width),
        (1, a.batch, 0.1),
        a.compute.clone(),
        PathBuf::new(),
    );
    p.stem = a.stem;
    p.projector = a.projector.clone();
    p.image_size = Some(a.image_size);
    let config = p.net_config(a.classes, a.in_channels, a.image_size)?;
    let mut rng = Rng::new(a.compute.seed);
    let net = SupervisedNet::new(config.clone(), &mut rng)?;
    net.to_device(device)?;
    let precision = a.compute.precision;
    let opts = TrainOptions {
        steps: a.warmup + a.steps,
        lr: p.lr,
        momentum: p.momentum,
        weight_decay: p.weight_decay,
        warmup_steps: 0,
        label_smoothing: 0.0,
        precision,
    };
    let mut trainer = Trainer::new(&net, opts, config.to_metadata());
    trainer.min_batch = if config.projector.is_some() { 2 } else { 1 };
    let (b, s) = (a.batch, a.image_size);
    let images = Tensor::randn(&[b, a.in_channels, s, s], 0.0, 1.0, DType::F32, &mut rng);
    let labels: Vec<i64> = (0..b).map(|_| rng.below(a.classes) as i64).collect();
    let labels = Tensor::from_vec(labels, &[b])?;
    let host = host_name(device)?;
    let params: usize = net.params().iter().map(|p| p.get().numel()).sum();
    let macs = net.macs(s, s);
    eprintln!(
        "profile {} {} width {} ({:.2}M params, {} stem), {} classes, batch {b} of {}x{s}x{s}, {precision:?}, on {host}: {} warm-up + {} profiled steps",
        config.method(),
        a.arch,
        a.width,
        params as f64 / 1e6,
        if config.stem == crate::Stem::Cifar { "cifar" } else { "imagenet" },
        a.classes,
        a.in_channels,
        a.warmup,
        a.steps,
    );
    let ceiling = ceiling(a, device)?;
    for _ in 0..a.warmup {
        trainer.step(&images, &labels)?;
    }
    sync(device)?;
    profile::start(ceiling)?;
    let t0 = Instant::now();
    let stepped = (0..a.steps).try_for_each(|_| trainer.step(&images, &labels).map(|_| ()));
    let synced = sync(device);
    let wall = t0.elapsed().as_secs_f64();
    // stop whatever happened, then report the step's error first
    let prof = profile::stop(a.steps);
    stepped?;
    synced?;
    let prof = prof?;
    let step_ms = wall * 1e3 / a.steps as f64;
    println!(
        "{} {} width {}, batch {b}, {}x{s}x{s}, {precision:?} on {host}",
        config.method(),
        a.arch,
        a.width,
        a.in_channels
    );
    println!(
        "step: {step_ms:.2} ms ({:.1} img/s); model: {:.3} GFLOP/step (6 x forward MACs x batch)",
        b as f64 / (step_ms / 1e3),
        6.0 * macs as f64 * b as f64 / 1e9
    );
    print!("{}", prof.table(a.top));
    if let Some(out) = &a.out {
        let mut j = prof.to_json();
        j["model"] = serde_json::json!({
            "method": config.method(), "arch": a.arch, "width": a.width,
            "stem": if config.stem == crate::Stem::Cifar { "cifar" } else { "imagenet" },
            "projector": config.projector.as_ref().map(|_| a.projector.clone()),
            "image_size": s, "in_channels": a.in_channels, "classes": a.classes,
            "batch": b, "precision": format!("{precision:?}"), "params": params,
            "forward_macs_per_image": macs,
        });
        j["device"] = serde_json::json!(host);
        j["warmup"] = serde_json::json!(a.warmup);
        j["step_ms"] = serde_json::json!(step_ms);
        j["command"] = serde_json::json!(std::env::args().collect::<Vec<_>>());
        let text = serde_json::to_string_pretty(&j)
            .map_err(|e| Error::arg("profile", format!("JSON: {e}")))?;
        crate::report::write_text(out, &(text + "\n"))?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
