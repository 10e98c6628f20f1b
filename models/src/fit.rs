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
//!   waiting for the batch, `step_s` the task's call that ran it (an
//!   overlapped step's call queues it and reads the one before), `wall_s`
//!   since the loop started) and the peak memories (see
//!   `run_dir::add_memory`);
//! - `args.json`: the run's configuration (`run_dir::snapshot`);
//! - `checkpoint.safetensors`: the full training state (resume point);
//! - `model.safetensors`: the final weights with the task's metadata.
//!
//! Exactness: a task keeps everything its steps depend on in the
//! checkpoint, and the data a step sees is a pure function of (seed, epoch,
//! batch index) (see `data::DataLoader`), so on the CPU a resumed run
//! continues bit for bit as if it had never stopped (the conv backward's
//! partition is fixed, so the thread count may differ; on a GPU only with
//! deterministic kernels). The checkpoint also keeps the epoch's running
//! sums (its epoch record equals an uninterrupted run's) and whether the
//! epoch record at its step was written (a run killed during the
//! end-of-epoch validation redoes it on resume).
//!
//! Steps in flight: a task may return a step's log later than the call
//! that ran it (`Trainer::with_overlapped_steps`); the loop takes the logs
//! in step order and reads every step back (`Task::finish_steps`) before
//! it checkpoints, validates or ends, so no file holds a step whose checks
//! were not read.
//!
//! Non-finite values: a checkpoint or final model with a NaN or infinite
//! parameter or buffer is never written (the last good one stays), and an
//! epoch in which every sample was unreadable is an error.

use crate::data::{DataLoader, Source};
use crate::progress::Progress;
use crate::run_dir::{self, FolderPolicy};
use engine::checkpoint::{load_training, save_model, save_training, TrainState};
use engine::nn::{Buffer, Param};
use engine::optim::check_finite;
use engine::{Device, Error, Result, Tensor};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
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
    /// `batch`. Returns the logs of the steps read back by now, oldest
    /// first: this one, or, for a task that keeps a step in flight, the
    /// one before it (none at the first). The loop sets each log's `step`.
    fn step(
        &mut self,
        step: usize,
        batch: &<Self::Source as Source>::Batch,
    ) -> Result<Vec<StepLog>>;
    /// Reads back the steps still in flight and returns their logs: the
    /// loop calls it before it saves, validates or ends, so that every
    /// step's checks have passed by then.
    fn finish_steps(&mut self) -> Result<Vec<StepLog>> {
        Ok(Vec::new())
    }
    /// The epoch record's validation fields (`None` values without `val`)
    /// and a text for the epoch's line.
    fn validate(&mut self, val: Option<&Self::Val>) -> Result<Validation>;
    /// The names of the parts the steps report (`StepLog::parts`), in order.
    fn part_names(&self) -> &'static [&'static str];
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
    /// Whether this process writes the output folder's files (under data
    /// parallelism only rank 0 does; every rank reads a resume checkpoint).
    fn writes_files(&self) -> bool {
        true
    }
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
    /// Whether the step was skipped: under f16 loss scaling because the
    /// gradients overflowed, or (with `batch` 0) because too few images of
    /// the batch were readable (`None`: the task never skips).
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

/// Checkpoint key of the epoch's running sums (`Means::to_json`), so a run
/// resumed mid-epoch reports the same epoch means as an uninterrupted one.
const MEANS_KEY: &str = "fit.epoch_sums";
/// Checkpoint key: "true" once the record of the epoch ending at the
/// checkpoint's step is written; a run resumed at an epoch end without it
/// (killed during validation) redoes that epoch's validation and record.
const LOGGED_KEY: &str = "fit.epoch_logged";

impl Means {
    /// The sums (as f64 bits: exact, and a non-finite f16 loss survives),
    /// images and part names, as a checkpoint keeps them.
    fn to_json(&self) -> String {
        let names: Vec<&str> = self.parts.iter().map(|p| p.0).collect();
        let bits: Vec<u64> = self.sums.iter().map(|s| s.to_bits()).collect();
        serde_json::json!({"sums": bits, "images": self.images, "parts": names}).to_string()
    }

    /// Reads `to_json`'s text back; `names` are the task's part names
    /// (`Task::part_names`), which must include the saved ones.
    fn from_json(text: &str, names: &[&'static str]) -> Option<Means> {
        let v: Value = serde_json::from_str(text).ok()?;
        let bits: Vec<u64> = serde_json::from_value(v.get("sums")?.clone()).ok()?;
        let sums: Vec<f64> = bits.into_iter().map(f64::from_bits).collect();
        let images = usize::try_from(v.get("images")?.as_u64()?).ok()?;
        let saved: Vec<String> = serde_json::from_value(v.get("parts")?.clone()).ok()?;
        let mut parts = Vec::with_capacity(saved.len());
        for name in &saved {
            parts.push(*names.iter().find(|n| *n == name)?);
        }
        if !(sums.is_empty() || sums.len() == 1 + parts.len()) {
            return None;
        }
        let mut m = Means {
            sums,
            images,
            ..Means::default()
        };
        m.refresh(&parts);
        Some(m)
    }

    /// Recomputes the means from the sums.
    fn refresh(&mut self, names: &[&'static str]) {
        let n = self.images.max(1) as f64;
        self.loss = self.sums.first().map_or(0.0, |s| s / n);
        self.parts = names
            .iter()
            .zip(self.sums.iter().skip(1))
            .map(|(name, s)| (*name, s / n))
            .collect();
    }

    /// Adds a step's values; a step that trained on no image is left out.
    fn add(&mut self, log: &StepLog) {
        if log.batch == 0 {
            return;
        }
        let b = log.batch as f64;
        let values = std::iter::once(log.loss).chain(log.parts.iter().map(|p| p.1));
        self.sums.resize(1 + log.parts.len(), 0.0);
        for (s, v) in self.sums.iter_mut().zip(values) {
            *s += v * b;
        }
        self.images += log.batch;
        let names: Vec<&'static str> = log.parts.iter().map(|p| p.0).collect();
        self.refresh(&names);
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
    /// Also write `model-epoch{E}.safetensors` at the end of every epoch E
    /// (for the training-length curves of `experiment --curve`).
    pub epoch_models: bool,
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
            epoch_models: false,
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
/// A state with a non-finite parameter or buffer is refused, so the last
/// good checkpoint is never replaced by a diverged one.
pub fn save_checkpoint<T: Task + ?Sized>(task: &T, path: &Path, step: usize) -> Result<()> {
    save_state(task, path, step, BTreeMap::new())
}

/// `save_checkpoint` with the loop's own keys (`MEANS_KEY`, `LOGGED_KEY`).
fn save_state<T: Task + ?Sized>(
    task: &T,
    path: &Path,
    step: usize,
    fit_keys: BTreeMap<String, String>,
) -> Result<()> {
    let TaskState {
        optim,
        rng,
        mut extra,
    } = task.state();
    extra.extend(fit_keys);
    let (params, buffers) = task.tensors();
    check_finite(&params, &buffers).map_err(|e| Error::Checkpoint {
        path: path.display().to_string(),
        msg: format!("not written (the last one is kept): {e}"),
    })?;
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
    Ok(load_state(task, path)?.step as usize)
}

/// `load_checkpoint`, returning the whole state read (metadata included).
fn load_state<T: Task + ?Sized>(task: &mut T, path: &Path) -> Result<TrainState> {
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
    Ok(state)
}

/// Keeps the metrics a resumed run will not redo: step records up to
/// `step` and epoch records up to `epoch`. Lines that aren't ours are kept,
/// except a last line without a newline (a write cut short by a kill).
fn truncate_metrics(path: &Path, step: usize, epoch: usize) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let keep: String = whole_lines(&text)
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
    // written aside and renamed over: a kill here leaves the old file whole
    crate::report::write_text(path, &keep)
}

/// `text` up to its last newline: a last line without one is a record
/// still being written, or one a kill cut short (`Files::write` writes a
/// record and its newline in one call).
pub fn whole_lines(text: &str) -> &str {
    text.rfind('\n').map_or("", |i| &text[..=i])
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
            // one write per record: a `writeln!` on a `File` is a write per
            // formatted piece, and a kill between two of them tears the line
            let line = format!("{record}\n");
            file.write_all(line.as_bytes())
                .map_err(|e| Error::io(&*path, e))?;
        }
        Ok(())
    }
}

/// A step the loop ran whose log has not come back yet (`Task::step`):
/// its counter and times.
struct Queued {
    step: usize,
    data_s: f64,
    step_s: f64,
}

/// Where the loop is, for the step records and the progress line.
struct Position {
    epoch: usize,
    per_epoch: usize,
    total: usize,
    first_step: usize,
    started: Instant,
    device: Device,
    quiet: bool,
}

/// One epoch's steps on their way to the records: the steps run whose
/// logs have not come back yet, oldest first, and what each log goes into.
struct Records<'a> {
    queued: VecDeque<Queued>,
    files: &'a mut Option<Files>,
    means: &'a mut Means,
    steps: &'a mut Vec<StepLog>,
    progress: &'a Progress,
    at: Position,
}

impl Records<'_> {
    /// Takes the logs a task returned, oldest first, for the steps queued
    /// first: each step's JSONL record, the epoch's means, the progress
    /// line.
    fn take<T: Task>(&mut self, task: &T, logs: Vec<StepLog>) -> Result<()> {
        let at = &self.at;
        for mut log in logs {
            let q = self.queued.pop_front().ok_or_else(|| {
                Error::arg("fit", "the task returned more step logs than it ran steps")
            })?;
            log.step = q.step;
            let mut record = log.to_json();
            record["kind"] = "step".into();
            record["epoch"] = (at.epoch + 1).into();
            record["data_s"] = q.data_s.into();
            record["step_s"] = q.step_s.into();
            record["wall_s"] = at.started.elapsed().as_secs_f64().into();
            run_dir::add_memory(&mut record, at.device);
            Files::write(self.files, &record)?;
            self.means.add(&log);
            if !at.quiet {
                let rate = at.started.elapsed().as_secs_f64() / (q.step - at.first_step) as f64;
                let text = format!(
                    "{}  lr {:.2e}  {:.1} img/s  ETA {}{}",
                    task.describe(self.means),
                    log.lr,
                    log.images_per_s,
                    mmss(rate * (at.total - q.step) as f64),
                    if log.batch == 0 {
                        "  (too few readable images: step skipped)"
                    } else if log.skipped == Some(true) {
                        "  (f16 overflow: step skipped)"
                    } else {
                        ""
                    }
                );
                let pos = q.step - at.epoch * at.per_epoch;
                self.progress.update(pos, q.step, q.step == at.total, &text);
            }
            self.steps.push(log);
        }
        Ok(())
    }

    /// An error when a step of the epoch never reported.
    fn all_taken(&self) -> Result<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        Err(Error::arg(
            "fit",
            format!(
                "{} step(s) of epoch {} never reported",
                self.queued.len(),
                self.at.epoch + 1
            ),
        ))
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
    let total = opts.epochs.checked_mul(per_epoch).ok_or_else(|| {
        Error::arg(
            "fit",
            format!(
                "{} epochs x {per_epoch} batches is too many steps",
                opts.epochs
            ),
        )
    })?;
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
    // the writing rank owns the folder (data parallelism: rank 0)
    let lock = match &opts.out_dir {
        Some(d) if task.writes_files() => Some(run_dir::open(
            d,
            FolderPolicy {
                resume: opts.resume,
                resume_force: opts.resume_force,
                overwrite: opts.overwrite,
            },
        )?),
        _ => None,
    };
    let device = task
        .tensors()
        .0
        .first()
        .map_or(Device::Cpu, |p| p.get().device());
    let mut step = 0;
    // the running sums of the epoch in progress at the resume point, and
    // whether the resume point is an epoch end whose record is missing
    let mut carried = None;
    let mut redo_epoch_end = false;
    if opts.resume {
        if !checkpoint.is_file() {
            return Err(Error::arg(
                "fit",
                format!(
                    "--resume: {} does not exist; nothing to resume",
                    checkpoint.display()
                ),
            ));
        }
        let state = load_state(task, &checkpoint)?;
        step = (state.step as usize).min(total);
        redo_epoch_end = step > 0
            && step.is_multiple_of(per_epoch)
            && state.extra.get(LOGGED_KEY).is_some_and(|v| v == "false");
        if let Some(text) = state.extra.get(MEANS_KEY) {
            let means =
                Means::from_json(text, task.part_names()).ok_or_else(|| Error::Checkpoint {
                    path: checkpoint.display().to_string(),
                    msg: format!("unreadable {MEANS_KEY} {text:?}"),
                })?;
            carried = Some(means);
        }
        if let Some(l) = &lock {
            l.write_args()?;
        }
        if task.writes_files() {
            truncate_metrics(
                &metrics,
                step,
                step / per_epoch - usize::from(redo_epoch_end),
            )?;
        }
        if !opts.quiet {
            eprintln!(
                "resumed at step {step}/{total} from {}",
                checkpoint.display()
            );
        }
    }
    let mut files = match &opts.out_dir {
        Some(_) if !task.writes_files() => None,
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
    while step < total || redo_epoch_end {
        // redoing an epoch end runs no batch (it starts at the epoch's end)
        let epoch = step / per_epoch - usize::from(redo_epoch_end);
        redo_epoch_end = false;
        let t_epoch = Instant::now();
        let mut means = carried.take().unwrap_or_default();
        let start = step - epoch * per_epoch;
        let mut read = 0;
        let progress = Progress::epoch(
            format!("epoch {}/{}", epoch + 1, opts.epochs),
            per_epoch,
            start,
            opts.log_every,
            opts.quiet,
        );
        let mut batches = train.epoch(epoch, start);
        let mut record = Records {
            queued: VecDeque::new(),
            files: &mut files,
            means: &mut means,
            steps: &mut result.steps,
            progress: &progress,
            at: Position {
                epoch,
                per_epoch,
                total,
                first_step,
                started,
                device,
                quiet: opts.quiet,
            },
        };
        loop {
            let t_data = Instant::now();
            let Some(batch) = batches.next() else { break };
            let batch = batch?;
            read += 1;
            let t_step = Instant::now();
            let mut logs = task.step(step, &batch)?;
            let (data_s, step_s) = (
                (t_step - t_data).as_secs_f64(),
                t_step.elapsed().as_secs_f64(),
            );
            // a batch whose images were all unreadable is left out by the
            // loader: the counter follows the position in the data stream,
            // which is what a resume restarts from
            step = epoch * per_epoch + T::Source::batch_index(&batch) + 1;
            record.queued.push_back(Queued {
                step,
                data_s,
                step_s,
            });
            // every rank reads its steps back here, the writing one saves
            let save = opts.checkpoint_every > 0 && step.is_multiple_of(opts.checkpoint_every);
            if save {
                logs.extend(task.finish_steps()?);
            }
            record.take(&*task, logs)?;
            if let (true, Some(f)) = (save, &*record.files) {
                // the epoch's sums so far; at an epoch end, its record is
                // still to be written
                let keys = BTreeMap::from([
                    (MEANS_KEY.to_string(), record.means.to_json()),
                    (LOGGED_KEY.to_string(), "false".to_string()),
                ]);
                save_state(task, &f.checkpoint, step, keys)?;
            }
        }
        // the epoch's last steps, read back before it is validated and saved
        let logs = task.finish_steps()?;
        record.take(&*task, logs)?;
        record.all_taken()?;
        drop(progress);
        if start == 0 && read == 0 {
            return Err(Error::arg(
                "fit",
                format!(
                    "epoch {}: every sample was unreadable ({} skipped); nothing to train on",
                    epoch + 1,
                    train.skipped()
                ),
            ));
        }
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
            let keys = BTreeMap::from([(LOGGED_KEY.to_string(), "true".to_string())]);
            save_state(task, &f.checkpoint, step, keys)?;
            if opts.epoch_models {
                let (params, buffers) = task.tensors();
                let path = f
                    .model
                    .with_file_name(format!("model-epoch{}.safetensors", epoch + 1));
                save_model(&path, &params, &buffers, &task.metadata())?;
            }
        }
        result.epochs.push(log);
    }
    if let Some(f) = &files {
        let (params, buffers) = task.tensors();
        check_finite(&params, &buffers)?;
        save_model(&f.model, &params, &buffers, &task.metadata())?;
    }
    result.total_steps = step;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_keeps_whole_records_up_to_the_checkpoint_and_drops_a_torn_tail() {
        let dir = testutil::TempDir::new("fit-truncate");
        let path = dir.0.join("metrics.jsonl");
        let step = |n: usize| format!("{{\"kind\":\"step\",\"step\":{n},\"loss\":1.0}}\n");
        let mut text: String = (1..=4).map(step).collect();
        text.push_str("{\"kind\":\"epoch\",\"epoch\":1}\n");
        text.push_str("a line someone else wrote\n");
        text.push_str(&step(5));
        // a kill while the next record was being written
        text.push_str("{\"kind\":\"step\",\"st");
        std::fs::write(&path, &text).unwrap();

        truncate_metrics(&path, 4, 1).unwrap();
        let mut want: String = (1..=4).map(step).collect();
        want.push_str("{\"kind\":\"epoch\",\"epoch\":1}\n");
        want.push_str("a line someone else wrote\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["metrics.jsonl"], "nothing left aside");

        // the same records, the epoch redone: its record goes too
        truncate_metrics(&path, 4, 0).unwrap();
        let kept = std::fs::read_to_string(&path).unwrap();
        assert!(!kept.contains("epoch\":1"), "{kept}");
        assert_eq!(kept.lines().count(), 5);
    }
}
