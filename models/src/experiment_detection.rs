//! `slmlp experiment --detection`: the paper's transfer test on the built-in
//! detection benchmark.
//!
//! Per seed: pretrain an SL and an SL-MLP encoder (ImageNet stem, so it fits
//! the detector's backbone) on the "seen" Fashion-MNIST classes, then
//! fine-tune Mask R-CNN three times with the same schedule, from a random
//! backbone, the SL encoder and the SL-MLP encoder, on canvases built from
//! the *unseen* classes (items from Fashion-MNIST's training split for
//! training, from its test split for validation), and evaluate box and mask
//! AP on the validation canvases with the COCO protocol. Everything runs
//! through [`pretrain`], [`crate::detect::train`] and [`crate::detect::eval`];
//! this module only chooses the settings and tabulates.
//!
//! Within a seed the three detectors start from the same head weights and
//! see the same data order (`detect train` seeds both from the seed), so the
//! backbone is the only difference; the two encoders start from the same
//! weights too (`pretrain` seeds them the same way).

use crate::data::{default_fashion_mnist_dir, fashion_mnist, Split, FASHION_MNIST_CLASSES};
use crate::detect::{DetectEvalArgs, DetectTrainArgs, ScheduleArg};
use crate::detection::synth::{generate, SynthOptions, SynthSummary};
use crate::device::DeviceArg;
use crate::fit::mmss;
use crate::pretrain::{pretrain, ComputeArgs, DataArgs, Method, PretrainArgs, StemArg};
use crate::report::{mean_std, write_json, write_text};
use engine::amp::Precision;
use engine::{Error, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The backbones compared, in table order: (key, label).
pub const BACKBONES: [(&str, &str); 3] = [("random", "random"), ("sl", "SL"), ("sl-mlp", "SL-MLP")];

/// Every setting of a detection transfer run.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionConfig {
    /// Output folder: benchmark/, seed*/..., detection.{md,json}.
    pub out: PathBuf,
    pub quick: bool,
    pub seeds: usize,
    /// Runs use seeds `first_seed, first_seed + 1, ...`; the benchmark is
    /// drawn once, from `first_seed`.
    pub first_seed: u64,
    /// Fashion-MNIST classes the encoders are pretrained on (0-based); the
    /// benchmark's items come from the other classes.
    pub seen: Vec<usize>,
    pub arch: String,
    /// First-stage width, shared by the encoders and the detector backbone.
    pub width: usize,
    pub pretrain_epochs: usize,
    /// Pretraining images per seen class (`None`: all).
    pub pretrain_per_class: Option<usize>,
    /// Pretraining input side: Fashion-MNIST's 28 px upscaled, so that the
    /// ImageNet stem (7x7/2 conv + max-pool) keeps a spatial map at layer4.
    pub pretrain_size: usize,
    pub pretrain_batch: usize,
    pub pretrain_lr: f64,
    pub precision: Precision,
    /// Where the encoders are pretrained and the detectors trained and
    /// evaluated.
    pub device: DeviceArg,
    /// Training and validation canvases of the benchmark.
    pub train_canvases: usize,
    pub val_canvases: usize,
    /// Canvas side in pixels.
    pub canvas: usize,
    pub det_epochs: usize,
    pub det_batch: usize,
    pub det_lr: f64,
    pub det_warmup_steps: usize,
    pub fpn_channels: usize,
    pub representation_size: usize,
    /// Backbone stages fine-tuned (5: all, as the paper fine-tunes the
    /// whole network; a random backbone must train every stage anyway).
    pub trainable_layers: usize,
    pub min_size: usize,
    pub max_size: usize,
    pub workers: usize,
    /// Silences the per-step progress of pretrain and detect train.
    pub quiet: bool,
    /// Keep the (seed, backbone) runs already finished in `out` whose
    /// record (OUT/seed<s>/<backbone>.json) was written with these
    /// settings by this commit; run only the others.
    pub resume: bool,
}

impl DetectionConfig {
    /// The benchmark's source classes: those not in `seen`.
    pub fn unseen(&self) -> Vec<usize> {
        (0..FASHION_MNIST_CLASSES.len())
            .filter(|c| !self.seen.contains(c))
            .collect()
    }

    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::arg("experiment --detection", m.to_string()));
        if self.seeds == 0 || self.pretrain_epochs == 0 || self.det_epochs == 0 {
            return bad("--seeds, --epochs and --det-epochs must be at least 1");
        }
        if self.train_canvases == 0 || self.val_canvases == 0 {
            return bad("--det-train and --det-val must be at least 1");
        }
        if self.seen.len() < 2 || self.unseen().len() < 2 {
            return bad("--seen must leave at least 2 seen and 2 unseen classes");
        }
        Ok(())
    }
}

/// One fine-tuned detector's numbers (COCO protocol on the validation
/// canvases; AP is averaged over IoU 0.50:0.95).
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionRun {
    pub seed: u64,
    /// A key of [`BACKBONES`].
    pub backbone: String,
    pub box_ap: f64,
    pub box_ap50: f64,
    pub mask_ap: f64,
    pub mask_ap50: f64,
    /// Last-epoch training accuracy of the encoder's pretraining (`None`
    /// for the random backbone).
    pub pretrain_accuracy: Option<f64>,
    pub pretrain_seconds: Option<f64>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

impl DetectionRun {
    /// (label, value) of the four AP numbers, in table order.
    pub fn aps(&self) -> [(&'static str, f64); 4] {
        [
            ("box AP", self.box_ap),
            ("box AP50", self.box_ap50),
            ("mask AP", self.mask_ap),
            ("mask AP50", self.mask_ap50),
        ]
    }
    fn from_json(v: &Value) -> Option<DetectionRun> {
        let f = |k: &str| v[k].as_f64();
        Some(DetectionRun {
            seed: v["seed"].as_u64()?,
            backbone: v["backbone"].as_str()?.to_string(),
            box_ap: f("box_ap")?,
            box_ap50: f("box_ap50")?,
            mask_ap: f("mask_ap")?,
            mask_ap50: f("mask_ap50")?,
            pretrain_accuracy: f("pretrain_accuracy"),
            pretrain_seconds: f("pretrain_seconds"),
            train_seconds: f("train_seconds")?,
            eval_seconds: f("eval_seconds")?,
        })
    }
    fn to_json(&self) -> Value {
        json!({
            "seed": self.seed, "backbone": self.backbone,
            "box_ap": self.box_ap, "box_ap50": self.box_ap50,
            "mask_ap": self.mask_ap, "mask_ap50": self.mask_ap50,
            "pretrain_accuracy": self.pretrain_accuracy, "pretrain_seconds": self.pretrain_seconds,
            "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
        })
    }
}

/// What [`detection_experiment`] produced and wrote.
#[derive(Clone, Debug)]
pub struct DetectionResults {
    /// Every (seed, backbone) run, seed-major, backbones in [`BACKBONES`] order.
    pub runs: Vec<DetectionRun>,
    pub seconds: f64,
    /// The text of OUT/detection.md.
    pub markdown: String,
    /// The content of OUT/detection.json.
    pub json: Value,
}

/// Runs the whole transfer test `c` describes: writes the benchmark to
/// OUT/benchmark/{train,val}, per seed pretrains SL and SL-MLP into
/// OUT/seed<s>/pretrain-<method>, fine-tunes and evaluates a detector per
/// backbone in OUT/seed<s>/detect-<backbone>, and writes OUT/detection.md
/// and OUT/detection.json, and records each finished (seed, backbone) run
/// in OUT/seed<s>/<backbone>.json. A rerun into the same folder starts
/// every run afresh (their old metrics.jsonl is removed), except, with
/// `resume`, the recorded runs whose settings and commit match.
pub fn detection_experiment(c: &DetectionConfig) -> Result<DetectionResults> {
    c.check()?;
    let t0 = Instant::now();
    let log = |msg: String| eprintln!("[{}] {msg}", mmss(t0.elapsed().as_secs_f64()));
    let unseen = c.unseen();
    let names = |v: &[usize]| {
        v.iter()
            .map(|&i| FASHION_MNIST_CLASSES[i])
            .collect::<Vec<_>>()
            .join(", ")
    };
    log(format!(
        "experiment --detection: {} seed(s); encoders pretrained on [{}], detection on [{}]; output in {}",
        c.seeds,
        names(&c.seen),
        names(&unseen),
        c.out.display()
    ));
    let bench = c.out.join("benchmark");
    let summaries = write_benchmark(c, &unseen, &bench)?;
    for s in &summaries {
        log(format!(
            "benchmark: {} canvases, {} instances -> {}",
            s.images,
            s.instances,
            s.annotations.display()
        ));
    }
    // what decides a run's numbers besides its seed: the record check of --resume
    let mut settings = config_json(c, &summaries);
    settings["seeds"] = Value::Null;
    let settings = json!({"config": settings, "commit": option_env!("SLMLP_COMMIT")});
    let mut runs = Vec::new();
    for seed in c.first_seed..c.first_seed + c.seeds as u64 {
        let seed_dir = c.out.join(format!("seed{seed}"));
        for (key, label) in BACKBONES {
            let record = seed_dir.join(format!("{key}.json"));
            if c.resume {
                if let Some(run) = read_record(&record, &settings)? {
                    log(format!(
                        "seed {seed} {label}: kept the finished run {}",
                        record.display()
                    ));
                    runs.push(run);
                    continue;
                }
            }
            // (encoder file, last-epoch train accuracy, seconds)
            let method = match key {
                "sl" => Some(Method::Sl),
                "sl-mlp" => Some(Method::SlMlp),
                _ => None,
            };
            let enc = method
                .map(|m| pretrain_encoder(c, seed, (m, key), &seed_dir, &log))
                .transpose()?;
            let out = seed_dir.join(format!("detect-{key}"));
            log(format!("seed {seed}: Mask R-CNN from the {label} backbone"));
            let trained = crate::detect::train(&DetectTrainArgs {
                data: Some(bench.clone()),
                train_ann: None,
                train_images: None,
                arch: c.arch.clone(),
                width: c.width,
                fpn_channels: c.fpn_channels,
                representation_size: c.representation_size,
                trainable_layers: c.trainable_layers,
                backbone: enc.as_ref().map(|e| e.0.clone()),
                init: None,
                channels: Some(1),
                epochs: c.det_epochs,
                batch: c.det_batch,
                lr: c.det_lr,
                weight_decay: 1e-4,
                warmup_steps: c.det_warmup_steps,
                schedule: ScheduleArg::Step,
                min_size: c.min_size,
                max_size: c.max_size,
                workers: c.workers,
                seed,
                device: c.device,
                precision: c.precision,
                dist: Default::default(),
                out,
                resume: false,
                deterministic: false,
                resume_force: false,
                // the study owns its run folders: a rerun replaces them
                overwrite: true,
                log_every: 25,
                quiet: c.quiet,
            })?;
            let te = Instant::now();
            let ev = crate::detect::eval(&DetectEvalArgs {
                checkpoint: trained.model_path.clone(),
                data: Some(bench.clone()),
                val_ann: None,
                val_images: None,
                split: "val".into(),
                batch: c.det_batch,
                workers: c.workers,
                device: c.device,
                precision: c.precision,
                out: None,
            })?;
            let run = DetectionRun {
                seed,
                backbone: key.into(),
                box_ap: ev.bbox[0],
                box_ap50: ev.bbox[1],
                mask_ap: ev.segm[0],
                mask_ap50: ev.segm[1],
                pretrain_accuracy: enc.as_ref().and_then(|e| e.1),
                pretrain_seconds: enc.as_ref().map(|e| e.2),
                train_seconds: trained.seconds,
                eval_seconds: te.elapsed().as_secs_f64(),
            };
            log(format!(
                "seed {seed} {label}: box AP {:.4} (AP50 {:.4}), mask AP {:.4} (AP50 {:.4}); trained in {}",
                run.box_ap,
                run.box_ap50,
                run.mask_ap,
                run.mask_ap50,
                mmss(run.train_seconds)
            ));
            write_json(
                &record,
                &json!({"settings": settings, "run": run.to_json()}),
            )?;
            runs.push(run);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let json = results_json(c, &summaries, &runs, seconds);
    let markdown = results_markdown(c, &summaries, &runs, seconds);
    write_json(&c.out.join("detection.json"), &json)?;
    write_text(&c.out.join("detection.md"), &markdown)?;
    log(format!(
        "wrote {} and {}",
        c.out.join("detection.md").display(),
        c.out.join("detection.json").display()
    ));
    Ok(DetectionResults {
        runs,
        seconds,
        markdown,
        json,
    })
}

/// Pretrains the seed's `method` encoder (backbone `key`) into
/// SEED_DIR/pretrain-<key>: (model file, last-epoch training accuracy,
/// seconds).
fn pretrain_encoder(
    c: &DetectionConfig,
    seed: u64,
    (method, key): (Method, &str),
    seed_dir: &Path,
    log: &dyn Fn(String),
) -> Result<(PathBuf, Option<f64>, f64)> {
    log(format!("seed {seed}: pretraining the {key} encoder"));
    let seen = c
        .seen
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let r = pretrain(&PretrainArgs {
        stem: Some(StemArg::Imagenet),
        image_size: Some(c.pretrain_size),
        quiet: c.quiet,
        ..PretrainArgs::study(
            method,
            DataArgs {
                data: "fashion-mnist:train".into(),
                classes: Some(seen),
                per_class: c.pretrain_per_class,
                workers: c.workers,
            },
            (&c.arch, c.width),
            (c.pretrain_epochs, c.pretrain_batch, c.pretrain_lr),
            ComputeArgs {
                precision: c.precision,
                device: c.device,
                seed,
            },
            seed_dir.join(format!("pretrain-{key}")),
        )
    })?;
    let acc = r.epochs.last().and_then(|e| e.get("train_accuracy"));
    log(format!(
        "seed {seed}: {key} encoder done in {} (last-epoch train accuracy {})",
        mmss(r.seconds),
        acc.map_or("-".into(), |a| format!("{:.1}%", 100.0 * a))
    ));
    Ok((r.model_path, acc, r.seconds))
}

/// The run recorded at `path` if it exists and was written with
/// `settings`; `None` means it must be run.
fn read_record(path: &Path, settings: &Value) -> Result<Option<DetectionRun>> {
    Ok(
        crate::report::read_record(path, settings)?
            .and_then(|v| DetectionRun::from_json(&v["run"])),
    )
}

/// The benchmark as `slmlp detection-data --classes <unseen>` writes it:
/// `train` from Fashion-MNIST's training items, `val` from its test items.
fn write_benchmark(c: &DetectionConfig, unseen: &[usize], dir: &Path) -> Result<Vec<SynthSummary>> {
    let mut out = Vec::new();
    for (split, source, n, seed) in [
        ("train", Split::Train, c.train_canvases, c.first_seed),
        (
            "val",
            Split::Test,
            c.val_canvases,
            c.first_seed.wrapping_add(1),
        ),
    ] {
        let source = fashion_mnist(&default_fashion_mnist_dir(), source)?;
        let opts = SynthOptions {
            images: n,
            canvas: (c.canvas, c.canvas),
            classes: Some(unseen.to_vec()),
            seed,
            ..SynthOptions::default()
        };
        out.push(generate(&source, &opts, dir, split)?);
    }
    Ok(out)
}

/// The runs of one backbone, in seed order.
fn of<'a>(runs: &'a [DetectionRun], backbone: &str) -> Vec<&'a DetectionRun> {
    runs.iter().filter(|r| r.backbone == backbone).collect()
}

/// Per AP quantity, `b - a` per seed (runs are paired by seed).
fn paired_differences(runs: &[DetectionRun], a: &str, b: &str) -> Vec<Vec<f64>> {
    let (ra, rb) = (of(runs, a), of(runs, b));
    (0..4)
        .map(|i| {
            ra.iter()
                .zip(&rb)
                .map(|(x, y)| y.aps()[i].1 - x.aps()[i].1)
                .collect()
        })
        .collect()
}

/// The paired t-test of every (pair, AP quantity), pair-major in [`PAIRS`]
/// order, with its p-value Holm-corrected over all twelve.
fn paired_tests(runs: &[DetectionRun]) -> Vec<(crate::stats::Paired, f64)> {
    let tests: Vec<_> = PAIRS
        .iter()
        .flat_map(|(a, b, _)| paired_differences(runs, a, b))
        .map(|d| crate::stats::paired(&d))
        .collect();
    let holm = crate::stats::holm(&tests.iter().map(|t| t.p).collect::<Vec<_>>());
    tests.into_iter().zip(holm).collect()
}

const PAIRS: [(&str, &str, &str); 3] = [
    ("random", "sl", "SL − random"),
    ("random", "sl-mlp", "SL-MLP − random"),
    ("sl", "sl-mlp", "SL-MLP − SL"),
];

fn config_json(c: &DetectionConfig, bench: &[SynthSummary]) -> Value {
    json!({
        "quick": c.quick, "seeds": c.seeds, "first_seed": c.first_seed,
        "seen_classes": c.seen, "benchmark_classes": c.unseen(),
        "arch": c.arch, "width": c.width, "stem": "imagenet",
        "pretrain": {
            "epochs": c.pretrain_epochs, "per_class": c.pretrain_per_class,
            "image_size": c.pretrain_size, "batch": c.pretrain_batch, "lr": c.pretrain_lr,
            "precision": format!("{:?}", c.precision).to_lowercase(),
            "device": c.device.to_string(),
        },
        "benchmark": {
            "canvas": c.canvas, "train_canvases": c.train_canvases, "val_canvases": c.val_canvases,
            "train_instances": bench.first().map(|s| s.instances),
            "val_instances": bench.get(1).map(|s| s.instances),
        },
        "detect": {
            "epochs": c.det_epochs, "batch": c.det_batch, "lr": c.det_lr, "schedule": "step",
            "precision": format!("{:?}", c.precision).to_lowercase(),
            "warmup_steps": c.det_warmup_steps, "fpn_channels": c.fpn_channels,
            "representation_size": c.representation_size, "trainable_layers": c.trainable_layers,
            "min_size": c.min_size, "max_size": c.max_size,
        },
    })
}

fn results_json(
    c: &DetectionConfig,
    bench: &[SynthSummary],
    runs: &[DetectionRun],
    seconds: f64,
) -> Value {
    let keys = ["box_ap", "box_ap50", "mask_ap", "mask_ap50"];
    let stats = |cols: Vec<Vec<f64>>| -> Value {
        keys.iter()
            .zip(cols)
            .map(|(k, v)| {
                let (mean, std) = mean_std(&v);
                (
                    k.to_string(),
                    json!({"mean": mean, "std": std, "values": v}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let mut summary = serde_json::Map::new();
    for (key, _) in BACKBONES {
        let rs = of(runs, key);
        let cols = (0..4)
            .map(|i| rs.iter().map(|r| r.aps()[i].1).collect())
            .collect();
        summary.insert(key.into(), stats(cols));
    }
    let tests = paired_tests(runs);
    let differences: serde_json::Map<_, _> = PAIRS
        .iter()
        .enumerate()
        .map(|(pi, (a, b, _))| {
            let mut d = stats(paired_differences(runs, a, b));
            for (qi, k) in keys.iter().enumerate() {
                let (t, holm) = &tests[pi * 4 + qi];
                d[*k]["paired"] = json!({
                    "ci95": [t.ci95.0, t.ci95.1], "t": t.t, "p": t.p, "p_holm": holm,
                    "d_z": t.d_z, "positive": t.positive, "n": t.n,
                });
            }
            (format!("{b}-minus-{a}"), d)
        })
        .collect();
    json!({
        "provenance": crate::run_dir::provenance(),
        "config": config_json(c, bench),
        "seconds": seconds,
        "summary": summary,
        "differences": differences,
        "runs": runs.iter().map(DetectionRun::to_json).collect::<Vec<_>>(),
    })
}

fn results_markdown(
    c: &DetectionConfig,
    bench: &[SynthSummary],
    runs: &[DetectionRun],
    seconds: f64,
) -> String {
    let n = c.seeds;
    let fmt = |v: &[f64]| {
        let (m, s) = mean_std(v);
        if n > 1 {
            format!("{m:.4} ± {s:.4}")
        } else {
            format!("{m:.4}")
        }
    };
    let classes = |v: &[usize]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let instances = |i: usize| bench.get(i).map_or(0, |s| s.instances);
    let mut md = format!(
        "# Mask R-CNN transfer: random vs SL vs SL-MLP backbones\n\n\
         {} {} width {} (ImageNet stem). Encoders pretrained {} epoch(s) on Fashion-MNIST classes {} \
         ({} images per class, {} px, batch {}, lr {}, {}). Benchmark from the unseen classes {}: \
         {} training canvases ({} instances), {} validation canvases ({} instances), {}x{} gray. \
         Mask R-CNN: FPN {} channels, box head {}, {} backbone stage(s) trained, {} epoch(s), batch {}, \
         lr {} (step schedule, {} warmup steps), min/max size {}/{}. {} seed(s) from {}; {:.1} min.\n\n",
        if c.quick { "Quick run:" } else { "Run:" },
        c.arch,
        c.width,
        c.pretrain_epochs,
        classes(&c.seen),
        c.pretrain_per_class.map_or("all".into(), |p| p.to_string()),
        c.pretrain_size,
        c.pretrain_batch,
        c.pretrain_lr,
        format!("{:?}", c.precision).to_lowercase(),
        classes(&c.unseen()),
        c.train_canvases,
        instances(0),
        c.val_canvases,
        instances(1),
        c.canvas,
        c.canvas,
        c.fpn_channels,
        c.representation_size,
        c.trainable_layers,
        c.det_epochs,
        c.det_batch,
        c.det_lr,
        c.det_warmup_steps,
        c.min_size,
        c.max_size,
        n,
        c.first_seed,
        seconds / 60.0
    );
    md += "| backbone | box AP | box AP50 | mask AP | mask AP50 |\n|---|---|---|---|---|\n";
    for (key, label) in BACKBONES {
        let rs = of(runs, key);
        let cells: Vec<String> = (0..4)
            .map(|i| fmt(&rs.iter().map(|r| r.aps()[i].1).collect::<Vec<_>>()))
            .collect();
        md += &format!("| {label} | {} |\n", cells.join(" | "));
    }
    for (a, b, label) in PAIRS {
        let cells: Vec<String> = paired_differences(runs, a, b)
            .iter()
            .map(|v| fmt(v))
            .collect();
        md += &format!("| {label} | {} |\n", cells.join(" | "));
    }
    md += if n > 1 {
        "\nCOCO protocol on the validation canvases; AP over IoU 0.50:0.95. Mean ± sample std over seeds; \
         the difference rows are per-seed paired differences (same seed: same detector head \
         initialisation and data order).\n"
    } else {
        "\nCOCO protocol on the validation canvases; AP over IoU 0.50:0.95. One seed: no noise estimate.\n"
    };
    if n > 1 {
        md += &format!(
            "\n## Paired tests\n\nPaired t-test over the {n} seeds ({} dof): mean difference with its 95% interval, \
             two-sided p, and p after Holm's correction over all twelve rows.\n\n\
             | comparison | quantity | mean | 95% interval | p | p (Holm) | seeds ahead |\n|---|---|---|---|---|---|---|\n",
            n - 1
        );
        for (i, (t, holm)) in paired_tests(runs).iter().enumerate() {
            md += &format!(
                "| {} | {} | {:+.4} | {:+.4} .. {:+.4} | {:.3} | {:.3} | {}/{} |\n",
                PAIRS[i / 4].2,
                runs[0].aps()[i % 4].0,
                t.mean,
                t.ci95.0,
                t.ci95.1,
                t.p,
                holm,
                t.positive,
                t.n
            );
        }
    }
    md += "\n## Per seed\n\n| seed | backbone | box AP | box AP50 | mask AP | mask AP50 | pretrain train acc | pretrain s | detect train s |\n|---|---|---|---|---|---|---|---|---|\n";
    for r in runs {
        let label = BACKBONES
            .iter()
            .find(|b| b.0 == r.backbone)
            .map_or(r.backbone.as_str(), |b| b.1);
        md += &format!(
            "| {} | {label} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} | {:.0} |\n",
            r.seed,
            r.box_ap,
            r.box_ap50,
            r.mask_ap,
            r.mask_ap50,
            r.pretrain_accuracy
                .map_or("-".into(), |a| format!("{:.1}%", 100.0 * a)),
            r.pretrain_seconds.map_or("-".into(), |s| format!("{s:.0}")),
            r.train_seconds
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, backbone: &str, box_ap: f64) -> DetectionRun {
        DetectionRun {
            seed,
            backbone: backbone.into(),
            box_ap,
            box_ap50: 2.0 * box_ap,
            mask_ap: box_ap - 0.01,
            mask_ap50: 0.5,
            pretrain_accuracy: (backbone != "random").then_some(0.9),
            pretrain_seconds: (backbone != "random").then_some(60.0),
            train_seconds: 500.0,
            eval_seconds: 5.0,
        }
    }

    /// Three seeds: the paired rows carry the t-test of the per-seed
    /// differences, Holm-corrected over the twelve rows, and a run
    /// survives its JSON record.
    #[test]
    fn paired_tests_over_seeds() {
        let mut runs = Vec::new();
        for (seed, base) in [(0, 0.20), (1, 0.22), (2, 0.18)] {
            runs.push(run(seed, "random", base));
            runs.push(run(seed, "sl", base + 0.10));
            runs.push(run(seed, "sl-mlp", base + 0.10 + 0.02 * (seed + 1) as f64));
        }
        let tests = paired_tests(&runs);
        assert_eq!(tests.len(), 12);
        // SL-MLP − SL box AP: differences 0.02, 0.04, 0.06
        let (t, holm) = &tests[8];
        assert!((t.mean - 0.04).abs() < 1e-12 && (t.std - 0.02).abs() < 1e-12);
        let half = crate::stats::t_quantile(0.95, 2.0) * 0.02 / 3f64.sqrt();
        assert!((t.ci95.0 - (0.04 - half)).abs() < 1e-12);
        assert_eq!(t.positive, 3);
        assert!(*holm >= t.p && *holm <= 1.0);
        // mask AP50 never differs: no spread, no test, and Holm skips it
        assert!(tests[11].0.p.is_nan() && tests[11].1.is_nan());
        for r in &runs {
            assert_eq!(DetectionRun::from_json(&r.to_json()).as_ref(), Some(r));
        }
    }
}
