//! The epoch loop around `Trainer`: progress with loss, accuracy, img/s and
//! ETA; validation each epoch; JSONL metrics; a training checkpoint at every
//! epoch end (and optionally every N steps); `--resume`; the final weights.
//!
//! Files in the output folder:
//! - `metrics.jsonl`: one `{"kind":"step",...}` record per step and one
//!   `{"kind":"epoch",...}` record per epoch;
//! - `checkpoint.safetensors`: the full training state (resume point);
//! - `model.safetensors`: the final weights with the network's metadata.

use crate::data::Loader;
use crate::train::{batch_accuracy, StepLog, Trainer};
use engine::amp::Precision;
use engine::nn::Module;
use engine::{DType, Device, Error, Result};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct FitOptions {
    pub epochs: usize,
    /// Where metrics and checkpoints go; `None` keeps nothing on disk.
    pub out_dir: Option<PathBuf>,
    /// Also checkpoint every this many steps (0: only at epoch ends).
    pub checkpoint_every: usize,
    /// Continue from `out_dir/checkpoint.safetensors`.
    pub resume: bool,
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
            log_every: 50,
            quiet: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub images_per_s: f64,
    pub seconds: f64,
    /// Unreadable images skipped so far.
    pub skipped_images: usize,
}

impl EpochLog {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "epoch", "epoch": self.epoch, "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy, "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy, "images_per_s": self.images_per_s,
            "seconds": self.seconds, "skipped_images": self.skipped_images,
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct FitResult {
    /// Every step run by this call (not those before a resume).
    pub steps: Vec<StepLog>,
    pub epochs: Vec<EpochLog>,
}

/// Mean cross-entropy and top-1 accuracy of `model` over one pass of
/// `loader` in eval mode (BN running statistics), computing in `precision`
/// on the model's device (batches are uploaded; the loss and logits come
/// back).
pub fn evaluate(model: &dyn Module, loader: &Loader, precision: Precision) -> Result<(f64, f64)> {
    let _ng = engine::no_grad();
    model.set_training(false);
    let device = model.device();
    let (mut loss, mut acc, mut n) = (0.0, 0.0, 0usize);
    let result = (|| {
        for batch in loader.epoch(0, 0) {
            let batch = batch?;
            let b = batch.labels.dims()[0];
            let (x, y) = (
                batch.images.to_device(device)?,
                batch.labels.to_device(device)?,
            );
            let logits = model
                .forward(&x.to_dtype(precision.compute_dtype())?)?
                .to_dtype(DType::F32)?;
            let l = logits.cross_entropy(&y, 0.0, None)?;
            loss += l.to_device(Device::Cpu)?.item()? * b as f64;
            acc += batch_accuracy(&logits.to_device(Device::Cpu)?, &batch.labels)? * b as f64;
            n += b;
        }
        Ok(())
    })();
    model.set_training(true);
    result?;
    if n == 0 {
        return Err(Error::arg(
            "evaluate",
            "the evaluation set yielded no images",
        ));
    }
    Ok((loss / n as f64, acc / n as f64))
}

/// Keeps the metrics a resumed run will not redo: step records up to
/// `step` and epoch records up to `epoch`. Lines that aren't ours are kept.
pub(crate) fn truncate_metrics(path: &Path, step: usize, epoch: usize) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let keep: String = text
        .lines()
        .filter(|line| {
            let v: serde_json::Value = match serde_json::from_str(line) {
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
pub(crate) fn mmss(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// Trains `trainer` for `opts.epochs` epochs over `train` (`trainer.opts.steps`
/// must equal epochs x batches per epoch), validating on `val` after each.
pub fn fit(
    trainer: &mut Trainer,
    train: &Loader,
    val: Option<&Loader>,
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
    if trainer.opts.steps != total {
        return Err(Error::arg(
            "fit",
            format!(
                "trainer is set for {} steps but {} epochs x {per_epoch} batches = {total}",
                trainer.opts.steps, opts.epochs
            ),
        ));
    }
    let (ckpt, metrics_path) = match &opts.out_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            (
                Some(d.join("checkpoint.safetensors")),
                Some(d.join("metrics.jsonl")),
            )
        }
        None => (None, None),
    };
    if opts.resume {
        let p = ckpt
            .as_ref()
            .ok_or_else(|| Error::arg("fit", "--resume needs an output folder"))?;
        if !p.exists() {
            return Err(Error::arg(
                "fit",
                format!(
                    "--resume: {} does not exist; nothing to resume",
                    p.display()
                ),
            ));
        }
        trainer.resume(p)?;
        if let Some(m) = &metrics_path {
            truncate_metrics(m, trainer.step, trainer.step / per_epoch)?;
        }
        if !opts.quiet {
            eprintln!(
                "resumed at step {}/{total} from {}",
                trainer.step,
                p.display()
            );
        }
    }
    let mut metrics = match &metrics_path {
        Some(p) => Some((
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::io(p, e))?,
            p.clone(),
        )),
        None => None,
    };
    let mut write = |v: serde_json::Value| -> Result<()> {
        if let Some((f, p)) = &mut metrics {
            writeln!(f, "{v}").map_err(|e| Error::io(&*p, e))?;
        }
        Ok(())
    };
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let first_step = trainer.step;
    let mut result = FitResult::default();
    while trainer.step < total {
        let epoch = trainer.step / per_epoch;
        let t_epoch = Instant::now();
        let (mut loss_sum, mut acc_sum, mut seen) = (0.0, 0.0, 0usize);
        for batch in train.epoch(epoch, trainer.step % per_epoch) {
            let batch = batch?;
            let mut log = trainer.step(&batch.images, &batch.labels)?;
            // a batch whose images were all unreadable is left out by the
            // loader: keep the step counter equal to the position in the
            // data stream, which is what a resume restarts from
            trainer.step = epoch * per_epoch + batch.index + 1;
            log.step = trainer.step;
            let mut rec = log.to_json();
            rec["kind"] = "step".into();
            rec["epoch"] = (epoch + 1).into();
            write(rec)?;
            loss_sum += log.loss * log.batch as f64;
            acc_sum += log.accuracy * log.batch as f64;
            seen += log.batch;
            if !opts.quiet && (tty || log.step % opts.log_every.max(1) == 0 || log.step == total) {
                let done = log.step - first_step;
                let rate = started.elapsed().as_secs_f64() / done as f64;
                let in_epoch = log.step - epoch * per_epoch;
                let bar: String = (0..20)
                    .map(|i| {
                        if i * per_epoch < 20 * in_epoch {
                            '#'
                        } else {
                            '.'
                        }
                    })
                    .collect();
                let line = format!(
                    "epoch {}/{} [{bar}] {in_epoch}/{per_epoch}  loss {:.4}  acc {:5.1}%  {:.0} img/s  ETA {}{}",
                    epoch + 1,
                    opts.epochs,
                    loss_sum / seen as f64,
                    100.0 * acc_sum / seen as f64,
                    log.images_per_s,
                    mmss(rate * (total - log.step) as f64),
                    if log.skipped { "  (f16 overflow: step skipped)" } else { "" }
                );
                if tty {
                    eprint!("\r{line}\x1b[K");
                } else {
                    eprintln!("{line}");
                }
            }
            if let Some(p) = &ckpt {
                if opts.checkpoint_every > 0 && log.step % opts.checkpoint_every == 0 {
                    trainer.save(p)?;
                }
            }
            result.steps.push(log);
        }
        if tty && !opts.quiet {
            eprintln!();
        }
        let (val_loss, val_accuracy) = match val {
            Some(v) => {
                let (l, a) = evaluate(trainer.model(), v, trainer.opts.precision)?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let seconds = t_epoch.elapsed().as_secs_f64();
        let log = EpochLog {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: acc_sum / seen.max(1) as f64,
            val_loss,
            val_accuracy,
            images_per_s: seen as f64 / seconds,
            seconds,
            skipped_images: train.skipped(),
        };
        write(log.to_json())?;
        if !opts.quiet {
            eprintln!(
                "epoch {}/{} done in {}: train loss {:.4} acc {:.1}%{}{}",
                log.epoch,
                opts.epochs,
                mmss(seconds),
                log.train_loss,
                100.0 * log.train_accuracy,
                val_accuracy.map_or(String::new(), |a| format!(", val acc {:.1}%", 100.0 * a)),
                if log.skipped_images > 0 {
                    format!(", {} unreadable images skipped", log.skipped_images)
                } else {
                    String::new()
                }
            );
        }
        if let Some(p) = &ckpt {
            trainer.save(p)?;
        }
        result.epochs.push(log);
    }
    if let Some(d) = &opts.out_dir {
        trainer.save_model(&d.join("model.safetensors"))?;
    }
    Ok(result)
}
