//! The one training loop, for every kind of training (a `Task`):
//! classification (`train::Trainer`: pretrain, transfer fine-tuning) and
//! detection (`detect::DetectTask`). It runs the epochs over a `DataLoader`,
//! prints progress lines (loss, img/s, ETA), writes the JSONL metrics,
//! checkpoints the training state at every epoch end (and optionally every
//! N steps), resumes from that checkpoint, and saves the final weights.
//!
//! Files in the output folder (locked and checked by `run_dir::open`):
//! - `metrics.jsonl`: one `{"kind":"step",...}` record per step and one
//!   `{"kind":"epoch",...}` record per epoch, with the times (`data_s`
//!   waiting for the batch, `step_s` computing it, `wall_s` since the loop
//!   started) and the peak memories (see `run_dir::add_memory`);
//! - `args.json`: the run's configuration (`run_dir::snapshot`);
//! - `checkpoint.safetensors`: the full training state (resume point);
//! - `model.safetensors`: the final weights with the task's metadata.
//!
//! Exactness: a task keeps everything its steps depend on in the
//! checkpoint, and the data a step sees is a pure function of (seed, epoch,
//! batch index) (see `data::DataLoader`), so a resumed run continues bit for
//! bit as if it had never stopped.

use crate::data::{DataLoader, Source};
use crate::progress::Progress;
use crate::run_dir::{self, FolderPolicy};
use engine::checkpoint::{load_training, save_model, save_training, TrainState};
use engine::nn::{Buffer, Param};
use engine::{Device, Error, Result, Tensor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One kind of training the loop drives.
pub trait Task {
    /// What the training loader reads.
    type Source: Source;
    /// Held-out data `validate` reads at each epoch end (`()` for none).
    type Val;
    /// Prefix of the training means' names in the epoch record (`train_`
    /// gives `train_loss`).
    const EPOCH_PREFIX: &'static str;

    /// The model's parameters and buffers: what checkpoints hold.
    fn tensors(&self) -> (Vec<Param>, Vec<Buffer>);
    /// Length of the lr schedule: must be the run's epochs x batches.
    fn schedule_len(&self) -> usize;
    /// Runs optimizer step `step` (0-based: the schedule's position) on
    /// `batch`. The loop sets the returned log's `step`.
    fn step(&mut self, step: usize, batch: &<Self::Source as Source>::Batch) -> Result<StepLog>;
    /// The epoch record's validation fields (`None` values without `val`)
    /// and a text for the epoch's line.
    fn validate(&mut self, val: Option<&Self::Val>) -> Result<Validation>;
    /// The progress text of an epoch's means so far, e.g. `loss 0.4321  acc  87.5%`.
    fn describe(&self, means: &Means) -> String;
    /// Metadata of `model.safetensors` (also stored in checkpoints).
    fn metadata(&self) -> BTreeMap<String, String>;
    /// Checkpoint keys a resumed run must share with the checkpoint's.
    fn settings(&self) -> BTreeMap<String, String>;
    /// What a checkpoint holds besides the weights.
    fn state(&self) -> TaskState;
    /// Restores what `state` gave, read back from a checkpoint.
    fn restore(&mut self, optim: Vec<(String, Tensor)>, state: &TrainState) -> Result<()>;
}

/// A task's training state besides the weights, as checkpoints hold it.
pub struct TaskState {
    /// The optimizer's tensors (e.g. momentum).
    pub optim: Vec<(String, Tensor)>,
    /// The state of an rng the steps draw from (zeros when none).
    pub rng: [u64; 4],
    /// Metadata, the settings included.
    pub extra: BTreeMap<String, String>,
}

/// What one step did; also its JSONL record.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLog {
    /// Steps completed, this one included.
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    /// Images in the batch.
    pub batch: usize,
    pub images_per_s: f64,
    /// The task's other values (accuracy, the parts of the loss), averaged
    /// over the epoch like the loss.
    pub parts: Vec<(&'static str, f64)>,
    /// Under f16 loss scaling: whether the step was skipped because the
    /// gradients overflowed (`None`: the task never skips).
    pub skipped: Option<bool>,
}

impl StepLog {
    pub fn part(&self, name: &str) -> Option<f64> {
        self.parts.iter().find(|(n, _)| *n == name).map(|p| p.1)
    }

    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "step": self.step, "loss": self.loss, "lr": self.lr, "batch": self.batch,
            "images_per_s": self.images_per_s,
        });
        for (n, x) in &self.parts {
            v[*n] = (*x).into();
        }
        if let Some(s) = self.skipped {
            v["skipped"] = s.into();
        }
        v
    }
}

/// The running means of an epoch's step values, weighted by batch size.
#[derive(Clone, Debug, Default)]
pub struct Means {
    pub loss: f64,
    pub parts: Vec<(&'static str, f64)>,
    sums: Vec<f64>,
    images: usize,
}

impl Means {
    fn add(&mut self, log: &StepLog) {
        let b = log.batch as f64;
        let values = std::iter::once(log.loss).chain(log.parts.iter().map(|p| p.1));
        self.sums.resize(1 + log.parts.len(), 0.0);
        for (s, v) in self.sums.iter_mut().zip(values) {
            *s += v * b;
        }
        self.images += log.batch;
        let n = self.images.max(1) as f64;
        self.loss = self.sums[0] / n;
        self.parts = log
            .parts
            .iter()
            .zip(&self.sums[1..])
            .map(|((name, _), s)| (*name, s / n))
            .collect();
    }

    pub fn part(&self, name: &str) -> f64 {
        self.parts
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(f64::NAN, |p| p.1)
    }
}

/// What `Task::validate` found.
#[derive(Clone, Debug, Default)]
pub struct Validation {
    /// Fields of the epoch record, e.g. `val_accuracy`.
    pub fields: Vec<(&'static str, Option<f64>)>,
    /// Appended to the epoch's line, e.g. `, val acc 87.5%`.
    pub text: String,
}

/// One epoch's record.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochLog {
    pub epoch: usize,
    /// The training means under their record names (`train_loss`, ...),
    /// then the validation fields.
    pub values: Vec<(String, Option<f64>)>,
    pub images_per_s: f64,
    pub seconds: f64,
    /// Unreadable images skipped so far.
    pub skipped_images: usize,
}

impl EpochLog {
    /// The value named `name` in the record, e.g. `val_accuracy`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|v| v.1)
    }

    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "kind": "epoch", "epoch": self.epoch, "images_per_s": self.images_per_s,
            "seconds": self.seconds, "skipped_images": self.skipped_images,
        });
        for (n, x) in &self.values {
            v[n.as_str()] = (*x).into();
        }
        v
    }
}

#[derive(Clone, Debug)]
pub struct FitOptions {
    pub epochs: usize,
    /// Where metrics and checkpoints go; `None` keeps nothing on disk.
    pub out_dir: Option<PathBuf>,
    /// Also checkpoint every this many steps (0: only at epoch ends).
    pub checkpoint_every: usize,
    /// Continue from `out_dir/checkpoint.safetensors`.
    pub resume: bool,
    /// Resume even when the recorded options differ from this run's.
    pub resume_force: bool,
    /// Start anew in a non-empty `out_dir`, replacing its run files.
    pub overwrite: bool,
    /// Without a terminal, print a progress line every this many steps.
    pub log_every: usize,
    /// Print nothing (tests, the experiment's inner runs use their own lines).
    pub quiet: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            epochs: 1,
            out_dir: None,
            checkpoint_every: 0,
            resume: false,
            resume_force: false,
            overwrite: false,
            log_every: 50,
            quiet: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct FitResult {
    /// Every step run by this call (not those before a resume).
    pub steps: Vec<StepLog>,
    pub epochs: Vec<EpochLog>,
    /// Steps done in all, those before a resume included.
    pub total_steps: usize,
}

/// Writes `task`'s training state after `step` steps to `path`, atomically.
pub fn save_checkpoint<T: Task + ?Sized>(task: &T, path: &Path, step: usize) -> Result<()> {
    let TaskState { optim, rng, extra } = task.state();
    let (params, buffers) = task.tensors();
    let state = TrainState {
        step: step as u64,
        rng,
        extra,
    };
    save_training(path, &params, &buffers, &optim, &state)
}

/// Restores a state `save_checkpoint` wrote by a run with the same
/// settings; returns its step count. Nothing changes on an error.
pub fn load_checkpoint<T: Task + ?Sized>(task: &mut T, path: &Path) -> Result<usize> {
    let (params, buffers) = task.tensors();
    let (optim, state) = load_training(path, &params, &buffers)?;
    for (k, v) in task.settings() {
        match state.extra.get(&k) {
            Some(got) if *got == v => {}
            got => {
                return Err(Error::Checkpoint {
                    path: path.display().to_string(),
                    msg: format!(
                        "written by a run with {k} = {}, this run has {v}; resume with the same settings",
                        got.map_or("(none)", String::as_str)
                    ),
                })
            }
        }
    }
    task.restore(optim, &state).map_err(|e| Error::Checkpoint {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    Ok(state.step as usize)
}

/// Keeps the metrics a resumed run will not redo: step records up to
/// `step` and epoch records up to `epoch`. Lines that aren't ours are kept.
fn truncate_metrics(path: &Path, step: usize, epoch: usize) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let keep: String = text
        .lines()
        .filter(|line| {
            let v: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(_) => return true,
            };
            let at = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
            match v.get("kind").and_then(|k| k.as_str()) {
                Some("step") => at("step").is_none_or(|s| s <= step),
                Some("epoch") => at("epoch").is_none_or(|e| e <= epoch),
                _ => true,
            }
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, keep).map_err(|e| Error::io(path, e))
}

/// `m:ss` of a duration in seconds.
pub fn mmss(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// Where the loop writes: nothing, or the output folder's files.
struct Files {
    checkpoint: PathBuf,
    model: PathBuf,
    metrics: (std::fs::File, PathBuf),
}

impl Files {
    fn write(files: &mut Option<Files>, record: &Value) -> Result<()> {
        if let Some(f) = files {
            let (file, path) = &mut f.metrics;
            writeln!(file, "{record}").map_err(|e| Error::io(&*path, e))?;
        }
        Ok(())
    }
}

/// Trains `task` for `opts.epochs` epochs over `train`, validating on `val`
/// after each (see the module notes).
pub fn fit<T: Task>(
    task: &mut T,
    train: &DataLoader<T::Source>,
    val: Option<&T::Val>,
    opts: &FitOptions,
) -> Result<FitResult> {
    let per_epoch = train.batches_per_epoch();
    let total = opts.epochs * per_epoch;
    if total == 0 {
        return Err(Error::arg(
            "fit",
            "nothing to train: zero epochs or an empty loader",
        ));
    }
    if task.schedule_len() != total {
        return Err(Error::arg(
            "fit",
            format!(
                "the schedule is set for {} steps but {} epochs x {per_epoch} batches = {total}",
                task.schedule_len(),
                opts.epochs
            ),
        ));
    }
    let (checkpoint, metrics) = match &opts.out_dir {
        Some(d) => (d.join("checkpoint.safetensors"), d.join("metrics.jsonl")),
        None if opts.resume => return Err(Error::arg("fit", "--resume needs an output folder")),
        None => (PathBuf::new(), PathBuf::new()),
    };
    let lock = match &opts.out_dir {
        Some(d) => Some(run_dir::open(
            d,
            FolderPolicy {
                resume: opts.resume,
                resume_force: opts.resume_force,
                overwrite: opts.overwrite,
            },
        )?),
        None => None,
    };
    let device = task.tensors().0.first().map_or(Device::Cpu, |p| p.get().device());
    let mut step = 0;
    if opts.resume {
        step = load_checkpoint(task, &checkpoint)?.min(total);
        if let Some(l) = &lock {
            l.write_args()?;
        }
        truncate_metrics(&metrics, step, step / per_epoch)?;
        if !opts.quiet {
            eprintln!(
                "resumed at step {step}/{total} from {}",
                checkpoint.display()
            );
        }
    }
    let mut files = match &opts.out_dir {
        Some(d) => Some(Files {
            metrics: (
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&metrics)
                    .map_err(|e| Error::io(&metrics, e))?,
                metrics,
            ),
            checkpoint,
            model: d.join("model.safetensors"),
        }),
        None => None,
    };
    let started = Instant::now();
    let first_step = step;
    let mut result = FitResult::default();
    while step < total {
        let epoch = step / per_epoch;
        let t_epoch = Instant::now();
        let mut means = Means::default();
        let progress = Progress::epoch(
            format!("epoch {}/{}", epoch + 1, opts.epochs),
            per_epoch,
            step % per_epoch,
            opts.log_every,
            opts.quiet,
        );
        let mut batches = train.epoch(epoch, step % per_epoch);
        loop {
            let t_data = Instant::now();
            let Some(batch) = batches.next() else { break };
            let batch = batch?;
            let t_step = Instant::now();
            let mut log = task.step(step, &batch)?;
            let (data_s, step_s) = (
                (t_step - t_data).as_secs_f64(),
                t_step.elapsed().as_secs_f64(),
            );
            // a batch whose images were all unreadable is left out by the
            // loader: the counter follows the position in the data stream,
            // which is what a resume restarts from
            step = epoch * per_epoch + T::Source::batch_index(&batch) + 1;
            log.step = step;
            let mut record = log.to_json();
            record["kind"] = "step".into();
            record["epoch"] = (epoch + 1).into();
            record["data_s"] = data_s.into();
            record["step_s"] = step_s.into();
            record["wall_s"] = started.elapsed().as_secs_f64().into();
            run_dir::add_memory(&mut record, device);
            Files::write(&mut files, &record)?;
            means.add(&log);
            if !opts.quiet {
                let rate = started.elapsed().as_secs_f64() / (step - first_step) as f64;
                let text = format!(
                    "{}  lr {:.2e}  {:.1} img/s  ETA {}{}",
                    task.describe(&means),
                    log.lr,
                    log.images_per_s,
                    mmss(rate * (total - step) as f64),
                    if log.skipped == Some(true) {
                        "  (f16 overflow: step skipped)"
                    } else {
                        ""
                    }
                );
                progress.update(step - epoch * per_epoch, step, step == total, &text);
            }
            if let Some(f) = &files {
                if opts.checkpoint_every > 0 && step.is_multiple_of(opts.checkpoint_every) {
                    save_checkpoint(task, &f.checkpoint, step)?;
                }
            }
            result.steps.push(log);
        }
        drop(progress);
        let validation = task.validate(val)?;
        let seconds = t_epoch.elapsed().as_secs_f64();
        let train_means = std::iter::once(("loss", means.loss)).chain(means.parts.iter().copied());
        let log = EpochLog {
            epoch: epoch + 1,
            values: train_means
                .map(|(n, v)| (format!("{}{n}", T::EPOCH_PREFIX), Some(v)))
                .chain(validation.fields.iter().map(|(n, v)| (n.to_string(), *v)))
                .collect(),
            images_per_s: means.images as f64 / seconds,
            seconds,
            skipped_images: train.skipped(),
        };
        let mut record = log.to_json();
        record["wall_s"] = started.elapsed().as_secs_f64().into();
        run_dir::add_memory(&mut record, device);
        Files::write(&mut files, &record)?;
        if !opts.quiet {
            eprintln!(
                "epoch {}/{} done in {}: {}{}{}",
                log.epoch,
                opts.epochs,
                mmss(seconds),
                task.describe(&means),
                validation.text,
                if log.skipped_images > 0 {
                    format!(", {} unreadable images skipped", log.skipped_images)
                } else {
                    String::new()
                }
            );
        }
        // an epoch whose last batches were all unreadable still ends here
        step = step.max((epoch + 1) * per_epoch);
        if let Some(f) = &files {
            save_checkpoint(task, &f.checkpoint, step)?;
        }
        result.epochs.push(log);
    }
    if let Some(f) = &files {
        let (params, buffers) = task.tensors();
        save_model(&f.model, &params, &buffers, &task.metadata())?;
    }
    result.total_steps = step;
    Ok(result)
}
