//! One supervised training step and its exact checkpoint: SGD with warmup +
//! cosine, optional mixed precision (bf16, or f16 with dynamic loss scaling).
//!
//! Exactness: everything a step depends on — parameters, BN buffers,
//! momentum, the step counter and the loss scale — is in the checkpoint; the
//! data a step sees is a pure function of (seed, epoch, batch index) (see
//! `data::Loader`); every CPU op is deterministic. So a resumed run continues
//! bit for bit as if it had never stopped.
//!
//! Device: the trainer runs where the model's params are (move the model
//! with `Module::to_device` first). Batches arrive on the host and are
//! uploaded per step; only the loss (a scalar), the logits (for accuracy)
//! and, under f16, the overflow flag come back. Checkpoints are written
//! from host copies.

use engine::amp::{amp_step, LossScaler, Precision};
use engine::checkpoint::{load_training, save_training, TrainState};
use engine::nn::{Buffer, Module, Param};
use engine::optim::{zero_grad, Cosine, LrSchedule, Optimizer, Sgd, Warmup};
use engine::{DType, Device, Error, Result, Tensor};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Total optimizer steps of the run (the cosine schedule's length).
    pub steps: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub label_smoothing: f64,
    pub precision: Precision,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            steps: 100,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_steps: 10,
            label_smoothing: 0.0,
            precision: Precision::F32,
        }
    }
}

/// What one step did; also the JSONL metrics record.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    /// Top-1 accuracy on this batch (train mode, before the update).
    pub accuracy: f64,
    pub lr: f64,
    pub batch: usize,
    pub images_per_s: f64,
    /// f16 only: the step was skipped because gradients overflowed.
    pub skipped: bool,
}

impl StepLog {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "step": self.step, "loss": self.loss, "accuracy": self.accuracy,
            "lr": self.lr, "batch": self.batch, "images_per_s": self.images_per_s,
            "skipped": self.skipped,
        })
    }
}

/// Index of the largest value of each row of `[N, K]` logits (first on ties).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<usize>> {
    if logits.rank() != 2 {
        return Err(Error::shape(
            "argmax_rows",
            format!("expected [N, K] logits, got {:?}", logits.dims()),
        ));
    }
    let k = logits.dims()[1];
    let l = logits.to_vec_f64();
    Ok(l.chunks(k.max(1))
        .map(|row| (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b }))
        .collect())
}

/// Fraction of rows whose argmax equals the i64 label.
pub fn batch_accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let pred = argmax_rows(logits)?;
    let y = labels.to_vec::<i64>()?;
    let hit = pred
        .iter()
        .zip(&y)
        .filter(|(p, &t)| **p as i64 == t)
        .count();
    Ok(hit as f64 / y.len().max(1) as f64)
}

pub struct Trainer<'m> {
    model: &'m dyn Module,
    params: Vec<Param>,
    buffers: Vec<Buffer>,
    opt: Sgd,
    schedule: Warmup<Cosine>,
    scaler: Option<LossScaler>,
    /// Written into every checkpoint (e.g. the network's config).
    metadata: BTreeMap<String, String>,
    /// Where the model's params are; batches are moved here.
    device: Device,
    pub opts: TrainOptions,
    /// Steps completed so far.
    pub step: usize,
}

impl<'m> Trainer<'m> {
    pub fn new(
        model: &'m dyn Module,
        opts: TrainOptions,
        metadata: BTreeMap<String, String>,
    ) -> Trainer<'m> {
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
            metadata,
            device: model.device(),
            step: 0,
            opts,
        }
    }

    pub fn model(&self) -> &'m dyn Module {
        self.model
    }

    /// The device the model (and so every step) runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Saves the weights alone (no optimizer state) with the run's
    /// metadata: what `transfer`, `analyze` and `forward` read.
    pub fn save_model(&self, path: &Path) -> Result<()> {
        engine::checkpoint::save_model(path, &self.params, &self.buffers, &self.metadata)
    }

    /// One SGD step on `images` [B, C, H, W] (f32) with i64 `labels` [B],
    /// given on any device (moved to the model's).
    pub fn step(&mut self, images: &Tensor, labels: &Tensor) -> Result<StepLog> {
        let t0 = Instant::now();
        self.model.set_training(true);
        let dtype = self.opts.precision.compute_dtype();
        // host tensors stay as they are on a CPU run (to_device is a clone)
        let (x, y) = (
            images.to_device(self.device)?,
            labels.to_device(self.device)?,
        );
        let logits = self.model.forward(&x.to_dtype(dtype)?)?;
        // the loss is always computed in f32 (autocast does the same)
        let logits = logits.to_dtype(DType::F32)?;
        let loss = logits.cross_entropy(&y, self.opts.label_smoothing, None)?;
        let loss_value = loss.detach().to_device(Device::Cpu)?.item()?;
        if !loss_value.is_finite() && self.scaler.is_none() {
            return Err(Error::arg(
                "train",
                format!(
                    "loss became {loss_value} at step {}; lower the learning rate",
                    self.step
                ),
            ));
        }
        let accuracy = batch_accuracy(
            &logits.detach().to_device(Device::Cpu)?,
            &labels.to_device(Device::Cpu)?,
        )?;
        let lr = self.schedule.lr(self.step);
        self.opt.set_lr(lr);
        zero_grad(&self.params);
        match &self.scaler {
            Some(s) => s.backward(&loss)?,
            None => loss.backward()?,
        }
        let stepped = amp_step(&mut self.opt, self.scaler.as_mut(), &self.params)?;
        zero_grad(&self.params);
        self.step += 1;
        let batch = images.dims()[0];
        Ok(StepLog {
            step: self.step,
            loss: loss_value,
            accuracy,
            lr,
            batch,
            images_per_s: batch as f64 / t0.elapsed().as_secs_f64(),
            skipped: !stepped,
        })
    }

    /// Writes the whole training state atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut extra = self.metadata.clone();
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
            // the data stream is a function of (seed, epoch, batch): no RNG to keep
            rng: [0; 4],
            extra,
        };
        save_training(path, &self.params, &self.buffers, &self.opt.state(), &state)
    }

    /// Restores a state written by `save` by a run with the same model,
    /// precision and length.
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        let ckpt_err = |msg: String| Error::Checkpoint {
            path: path.display().to_string(),
            msg,
        };
        let (optim_state, state) = load_training(path, &self.params, &self.buffers)?;
        let want = [
            ("precision", format!("{:?}", self.opts.precision)),
            ("total_steps", self.opts.steps.to_string()),
        ];
        for (k, v) in want {
            match state.extra.get(k) {
                Some(got) if *got == v => {}
                got => {
                    return Err(ckpt_err(format!(
                        "written by a run with {k} = {}, this run has {v}; resume with the same options",
                        got.map_or("(none)", String::as_str)
                    )))
                }
            }
        }
        self.opt.load_state(optim_state)?;
        self.step = state.step as usize;
        if let Some(s) = &mut self.scaler {
            let get = |k: &str| -> Result<f64> {
                state
                    .extra
                    .get(k)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| ckpt_err(format!("f16 run but the checkpoint has no valid {k}")))
            };
            s.scale = get("loss_scale")?;
            s.clean_steps = get("loss_scale_clean_steps")? as usize;
        }
        Ok(())
    }
}

/// Mean of the first and last `k` losses, for "did it learn" checks.
pub fn loss_drop(logs: &[StepLog], k: usize) -> Option<(f64, f64)> {
    if logs.len() < 2 * k || k == 0 {
        return None;
    }
    let mean = |s: &[StepLog]| s.iter().map(|l| l.loss).sum::<f64>() / s.len() as f64;
    Some((mean(&logs[..k]), mean(&logs[logs.len() - k..])))
}
