//! The supervised training loop: SGD with warmup + cosine, optional mixed
//! precision, JSONL metrics, atomic checkpoints and exact resume.
//!
//! Exactness: everything a step depends on — parameters, BN buffers, momentum,
//! the data generator's RNG state, the step counter and the loss scale — is in
//! the checkpoint, and every CPU op is deterministic, so a resumed run
//! continues bit for bit as if it had never stopped.

use crate::data::SyntheticImages;
use crate::resnet::ResNet;
use engine::amp::{amp_step, LossScaler, Precision};
use engine::checkpoint::{load_training, save_training, TrainState};
use engine::nn::{Buffer, Module, Param};
use engine::optim::{zero_grad, Cosine, LrSchedule, Optimizer, Sgd, Warmup};
use engine::{DType, Error, Result, Rng, Tensor};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub label_smoothing: f64,
    pub precision: Precision,
    /// Seeds the data stream (the model is initialised by the caller).
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            steps: 100,
            batch: 32,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_steps: 10,
            label_smoothing: 0.0,
            precision: Precision::F32,
            seed: 0,
        }
    }
}

/// What one step did; also the JSONL metrics record.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub images_per_s: f64,
    /// f16 only: the step was skipped because gradients overflowed.
    pub skipped: bool,
}

impl StepLog {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "step": self.step, "loss": self.loss, "lr": self.lr,
            "images_per_s": self.images_per_s, "skipped": self.skipped,
        })
        .to_string()
    }
}

pub struct Trainer<'m> {
    model: &'m ResNet,
    params: Vec<Param>,
    buffers: Vec<Buffer>,
    opt: Sgd,
    schedule: Warmup<Cosine>,
    scaler: Option<LossScaler>,
    data_rng: Rng,
    pub opts: TrainOptions,
    /// Steps completed so far.
    pub step: usize,
}

impl<'m> Trainer<'m> {
    pub fn new(model: &'m ResNet, opts: TrainOptions) -> Trainer<'m> {
        let schedule = Warmup {
            inner: Cosine {
                base_lr: opts.lr,
                total_steps: opts.steps,
                final_lr: 0.0,
            },
            warmup_steps: opts.warmup_steps,
            start_factor: 0.1,
        };
        Trainer {
            model,
            params: model.params(),
            buffers: model.buffers(),
            opt: Sgd::new(opts.lr, opts.momentum, opts.weight_decay).with_exclude_no_wd(true),
            schedule,
            scaler: opts.precision.scaler(),
            data_rng: Rng::new(opts.seed ^ 0xda7a),
            step: 0,
            opts,
        }
    }

    /// One SGD step on a fresh batch.
    pub fn step(&mut self, data: &SyntheticImages) -> Result<StepLog> {
        let t0 = Instant::now();
        let (images, labels) = data.batch(self.opts.batch, &mut self.data_rng)?;
        self.model.set_training(true);
        let dtype = self.opts.precision.compute_dtype();
        let logits = self.model.forward(&images.to_dtype(dtype)?)?;
        // the loss is always computed in f32 (autocast does the same)
        let loss =
            logits
                .to_dtype(DType::F32)?
                .cross_entropy(&labels, self.opts.label_smoothing, None)?;
        let loss_value = loss.item()?;
        if !loss_value.is_finite() && self.scaler.is_none() {
            return Err(Error::arg(
                "train",
                format!(
                    "loss became {loss_value} at step {}; lower the learning rate",
                    self.step
                ),
            ));
        }
        let lr = self.schedule.lr(self.step);
        self.opt.set_lr(lr);
        zero_grad(&self.params);
        match &self.scaler {
            Some(s) => s.scale_loss(&loss)?.backward()?,
            None => loss.backward()?,
        }
        let stepped = amp_step(&mut self.opt, self.scaler.as_mut(), &self.params)?;
        zero_grad(&self.params);
        self.step += 1;
        Ok(StepLog {
            step: self.step,
            loss: loss_value,
            lr,
            images_per_s: self.opts.batch as f64 / t0.elapsed().as_secs_f64(),
            skipped: !stepped,
        })
    }

    /// Writes the whole training state atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut extra = BTreeMap::new();
        extra.insert(
            "precision".to_string(),
            format!("{:?}", self.opts.precision),
        );
        extra.insert("total_steps".to_string(), self.opts.steps.to_string());
        if let Some(s) = &self.scaler {
            extra.insert("loss_scale".to_string(), s.scale.to_string());
            extra.insert(
                "loss_scale_clean_steps".to_string(),
                s.clean_steps.to_string(),
            );
        }
        let state = TrainState {
            step: self.step as u64,
            rng: self.data_rng.state(),
            extra,
        };
        save_training(path, &self.params, &self.buffers, &self.opt.state(), &state)
    }

    /// Restores a state written by `save` (same architecture and options).
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        let (optim_state, state) = load_training(path, &self.params, &self.buffers)?;
        self.opt.load_state(optim_state)?;
        self.step = state.step as usize;
        self.data_rng = Rng::from_state(state.rng);
        if let Some(s) = &mut self.scaler {
            let get = |k: &str| -> Result<f64> {
                state
                    .extra
                    .get(k)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| Error::Checkpoint {
                        path: path.display().to_string(),
                        msg: format!("f16 run but the checkpoint has no valid {k}"),
                    })
            };
            s.scale = get("loss_scale")?;
            s.clean_steps = get("loss_scale_clean_steps")? as usize;
        }
        Ok(())
    }
}

/// Runs a trainer to `opts.steps`, printing progress and (with `out_dir`)
/// appending JSONL metrics and checkpointing every `checkpoint_every` steps.
pub fn run(
    trainer: &mut Trainer,
    data: &SyntheticImages,
    out_dir: Option<&Path>,
    log_every: usize,
    checkpoint_every: usize,
) -> Result<Vec<StepLog>> {
    let total = trainer.opts.steps;
    let mut metrics = match out_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            let p = d.join("metrics.jsonl");
            Some((
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .map_err(|e| Error::io(&p, e))?,
                p,
            ))
        }
        None => None,
    };
    let ckpt: Option<PathBuf> = out_dir.map(|d| d.join("checkpoint.safetensors"));
    let start = Instant::now();
    let first = trainer.step;
    let mut logs = Vec::new();
    while trainer.step < total {
        let log = trainer.step(data)?;
        if let Some((f, p)) = &mut metrics {
            writeln!(f, "{}", log.to_json()).map_err(|e| Error::io(&*p, e))?;
        }
        if log.step % log_every.max(1) == 0 || log.step == total {
            let per_step = start.elapsed().as_secs_f64() / (log.step - first) as f64;
            let eta = per_step * (total - log.step) as f64;
            println!(
                "step {:>5}/{total}  loss {:.4}  lr {:.4}  {:.1} img/s  ETA {}:{:02}{}",
                log.step,
                log.loss,
                log.lr,
                log.images_per_s,
                eta as u64 / 60,
                eta as u64 % 60,
                if log.skipped {
                    "  (skipped: f16 overflow)"
                } else {
                    ""
                }
            );
        }
        if let Some(p) = &ckpt {
            if log.step % checkpoint_every.max(1) == 0 || log.step == total {
                trainer.save(p)?;
            }
        }
        logs.push(log);
    }
    Ok(logs)
}

/// Mean of the first and last `k` losses, for "did it learn" checks.
pub fn loss_drop(logs: &[StepLog], k: usize) -> Option<(f64, f64)> {
    if logs.len() < 2 * k || k == 0 {
        return None;
    }
    let mean = |s: &[StepLog]| s.iter().map(|l| l.loss).sum::<f64>() / s.len() as f64;
    Some((mean(&logs[..k]), mean(&logs[logs.len() - k..])))
}

/// Classification accuracy of `model` on `n` fresh samples (eval mode).
pub fn accuracy(
    model: &ResNet,
    data: &SyntheticImages,
    n: usize,
    seed: u64,
    dtype: DType,
) -> Result<f64> {
    let _ng = engine::no_grad();
    model.set_training(false);
    let mut rng = Rng::new(seed);
    let (images, labels) = data.batch(n, &mut rng)?;
    let logits: Tensor = model.forward(&images.to_dtype(dtype)?)?;
    let (l, y) = (logits.to_vec_f64(), labels.to_vec::<i64>()?);
    let k = logits.dims()[1];
    let correct = y
        .iter()
        .enumerate()
        .filter(|(i, &t)| {
            let row = &l[i * k..(i + 1) * k];
            let arg = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            arg as i64 == t
        })
        .count();
    model.set_training(true);
    Ok(correct as f64 / n as f64)
}
