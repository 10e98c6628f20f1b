//! One supervised training step and its exact checkpoint: SGD with warmup +
//! cosine, optional mixed precision (bf16, or f16 with dynamic loss scaling).
//!
//! The `Trainer` is the classification `fit::Task`: `fit::fit` runs its
//! epochs, metrics, checkpoints and resume.
//!
//! Exactness: everything a step depends on — parameters, BN buffers,
//! momentum, the step counter and the loss scale — is in the checkpoint; the
//! data a step sees is a pure function of (seed, epoch, batch index) (see
//! `data::DataLoader`); every CPU op is deterministic. So a resumed run
//! continues bit for bit as if it had never stopped.
//!
//! Device: the trainer runs where the model's params are (move the model
//! with `Module::to_device` first). Batches arrive on the host and are
//! uploaded per step. One host read per step brings back the loss, the
//! misses (for accuracy), under f16 the loss scale's state, and the check
//! that every parameter and buffer is still finite after the optimizer
//! step. With [`Trainer::with_overlapped_steps`] `fit` queues the next step
//! before that read is waited for, so on a GPU the host never leaves it
//! idle. Checkpoints are written from host copies.
//!
//! On a GPU, [`Trainer::with_cuda_graph`] records the whole step (forward,
//! loss, backward, SGD, the finite check) as a CUDA graph after
//! `step_graph::GRAPH_WARMUP_STEPS` ordinary steps and replays it from then
//! on (`step_graph.rs`).

use crate::data::{ImageSource, Loader};
pub use crate::fit::StepLog;
use crate::fit::{load_checkpoint, save_checkpoint, Means, Task, TaskState, Validation};
use crate::step_graph::{static_inputs, GraphAction, GraphPlan, StepGraph};
use engine::amp::{LossScaler, Precision, ScaleOnDevice};
use engine::checkpoint::TrainState;
use engine::nn::{Buffer, Module, Param};
use engine::ops::copy::QueuedRead;
use engine::optim::{
    check_finite, non_finite_flag, zero_grad, Cosine, LrSchedule, Optimizer, Sgd, Warmup,
};
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

/// Index of the largest value of each row of `[N, K]` logits (first on ties).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<usize>> {
    if logits.rank() != 2 {
        return Err(Error::shape(
            "argmax_rows",
            format!("expected [N, K] logits, got {:?}", logits.dims()),
        ));
    }
    let k = logits.dims()[1];
    let l = logits.to_vec_f64()?;
    Ok(l.chunks(k.max(1))
        .map(|row| (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b }))
        .collect())
}

/// How many rows of `[N, K]` logits have their argmax (the first largest,
/// as [`argmax_rows`]) away from their label, as a scalar computed where
/// the logits are: topk(1)'s index (the lower one on ties) looks up its
/// class id in a float table, which is compared with the label. `labels`
/// are the i64 labels on the host (cast and uploaded here, N values), so
/// the logits never travel.
pub fn misses(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (n, k) = match logits.dims() {
        &[n, k] if k > 0 && labels.dims() == [n] => (n, k),
        d => {
            return Err(Error::shape(
                "misses",
                format!(
                    "expected [N, K > 0] logits and [N] labels, got {d:?} and {:?}",
                    labels.dims()
                ),
            ))
        }
    };
    let dev = logits.device();
    let ids =
        Tensor::from_vec((0..k).map(|j| j as f32).collect::<Vec<_>>(), &[k])?.to_device(dev)?;
    let (_, top) = logits.detach().topk(1)?;
    let predicted = ids.index_select(0, &top.reshape(&[n])?)?;
    let d = predicted.sub(&labels.to_dtype(DType::F32)?.to_device(dev)?)?;
    d.mul(&d)?.gt_zero_mask()?.sum_all()
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
    opt: Sgd,
    schedule: Warmup<Cosine>,
    scaler: Option<LossScaler>,
    /// The loss scale where the model is: an f16 step scales, skips and
    /// updates it there, and the step's one read brings it back.
    scale_on: ScaleOnDevice,
    /// Written into every checkpoint (e.g. the network's config).
    metadata: BTreeMap<String, String>,
    /// Where the model's params are; batches are moved here.
    device: Device,
    pub opts: TrainOptions,
    /// Steps completed so far.
    pub step: usize,
    /// Data parallelism, when on.
    dp: Option<crate::dist::DataParallel>,
    /// Batches with fewer images are skipped with a warning (`Task::step`):
    /// 2 for a network with a BatchNorm1d (the SL-MLP projector), which
    /// cannot normalise one sample in training (PyTorch raises there too)
    /// when unreadable images leave a batch of one. 1 by default.
    pub min_batch: usize,
    /// Where CPU steps run when the caller is not on a pool thread, made at
    /// the first one.
    cpu_pool: Option<engine::ops::CpuPool>,
    /// CUDA graph steps (when asked for): what each step does, and the
    /// recorded step.
    graph_plan: Option<GraphPlan>,
    graph: Option<StepGraph>,
    /// Whether `fit` queues each step before reading the last one back
    /// ([`Trainer::with_overlapped_steps`]).
    overlap: bool,
    /// The step queued and not read back yet (`step_overlapped`).
    in_flight: Option<InFlight>,
}

/// A step queued and not read back yet: its read and what its log needs.
struct InFlight {
    read: QueuedRead,
    /// Steps completed once it is (the trainer's count after it).
    step: usize,
    lr: f64,
    /// Images in the batch (under data parallelism, the global batch).
    batch: usize,
    /// Labels whose misses the read counts.
    labels: usize,
    /// Under data parallelism the global mean loss and accuracy, read
    /// already; else they are the read's first two values.
    known: Option<(f64, f64)>,
    /// The host's time queuing it (on the CPU, computing it).
    queue_s: f64,
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
            opt: Sgd::new(opts.lr, opts.momentum, opts.weight_decay).with_exclude_no_wd(true),
            schedule,
            scaler: opts.precision.scaler(),
            scale_on: ScaleOnDevice::default(),
            metadata,
            device: model.device(),
            step: 0,
            dp: None,
            min_batch: 1,
            cpu_pool: None,
            graph_plan: None,
            graph: None,
            overlap: false,
            in_flight: None,
            opts,
        }
    }

    /// Makes `fit` queue each step before it reads the previous one back
    /// ([`Trainer::step_overlapped`]): on a GPU the host then never leaves
    /// it idle between steps. The logs, the checkpoints and the weights are
    /// those of ordinary steps; an error a step's read finds (a non-finite
    /// loss or parameter, f16 overflows without end) stops the run one
    /// step later, before anything is saved. Data-parallel steps are not
    /// overlapped (they read their losses mid-step anyway, and every rank
    /// must stop at the same step).
    pub fn with_overlapped_steps(mut self) -> Self {
        self.overlap = true;
        self
    }

    /// Records the step as a CUDA graph once warm and replays it from then
    /// on. Needs a GPU model and no data parallelism (f16's loss scale
    /// lives on the device: `ScaleOnDevice`). A batch of another shape (an
    /// epoch's short last one) drops the recorded step and runs as an
    /// ordinary step, or is recorded itself if a batch of its shape ran
    /// before (`step_graph::GraphPlan`).
    pub fn with_cuda_graph(mut self) -> Result<Self> {
        let why = if !matches!(self.device, Device::Cuda(_)) {
            Some(format!("the model is on {}, not a GPU", self.device))
        } else if self.dp.is_some() {
            Some("data-parallel steps exchange gradients between the ranks mid-step".into())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::arg(
                "cuda graph",
                format!("a step cannot be recorded as a CUDA graph: {why}"),
            ));
        }
        self.graph_plan = Some(GraphPlan::default());
        Ok(self)
    }

    pub fn model(&self) -> &'m dyn Module {
        self.model
    }

    /// The device the model (and so every step) runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// One SGD step on `images` `[B, C, H, W]` (f32) with i64 `labels` `[B]`,
    /// given on any device (moved to the model's), read back before it
    /// returns. Under data parallelism (`with_data_parallel`) the batch is
    /// this rank's part of the global batch. An error while a step queued
    /// by [`step_overlapped`](Self::step_overlapped) is in flight: take its
    /// log first ([`finish_in_flight`](Self::finish_in_flight)).
    pub fn step(&mut self, images: &Tensor, labels: &Tensor) -> Result<StepLog> {
        if self.in_flight.is_some() {
            return Err(Error::arg(
                "train",
                "a step is still in flight: take its log with Trainer::finish_in_flight first",
            ));
        }
        let f = self.queue(images, labels)?;
        self.finish(f)
    }

    /// One SGD step as [`step`](Self::step), queued behind the step in
    /// flight, whose log it returns once read (None when there was none):
    /// on a GPU this step runs while the host reads the last one and
    /// prepares the next batch. This step's log comes with the next call or
    /// [`finish_in_flight`](Self::finish_in_flight).
    pub fn step_overlapped(&mut self, images: &Tensor, labels: &Tensor) -> Result<Option<StepLog>> {
        let f = self.queue(images, labels)?;
        match self.in_flight.replace(f) {
            Some(last) => self.finish(last).map(Some),
            None => Ok(None),
        }
    }

    /// Reads back the step in flight, if any, and returns its log.
    pub fn finish_in_flight(&mut self) -> Result<Option<StepLog>> {
        match self.in_flight.take() {
            Some(f) => self.finish(f).map(Some),
            None => Ok(None),
        }
    }

    /// Queues one step (read back by [`finish`](Self::finish)).
    fn queue(&mut self, images: &Tensor, labels: &Tensor) -> Result<InFlight> {
        // A CPU step runs on a pool thread: the caller's (the CLI runs its
        // commands on one) or else the trainer's own pool (`CpuPool`). A
        // data-parallel one stays here, since its ranks wait on each other.
        if self.device != Device::Cpu || self.dp.is_some() || engine::ops::on_pool_thread() {
            return self.queue_here(images, labels);
        }
        let pool = match self.cpu_pool.take() {
            Some(p) => p,
            None => engine::ops::CpuPool::new()?,
        };
        let queued = pool.run(|| self.queue_here(images, labels));
        self.cpu_pool = Some(pool);
        queued
    }

    fn queue_here(&mut self, images: &Tensor, labels: &Tensor) -> Result<InFlight> {
        let queued_at = Instant::now();
        let lr = self.schedule.lr(self.step);
        self.opt.set_lr(lr);
        let (read, batch, known) = match self.dp.take() {
            Some(mut dp) => {
                let params = self.params.clone();
                let b = images.dims()[0];
                let global = dp.gradients(&params, self.device, self.step, b, |_, start, n, w| {
                    let (l, a) = self.forward_backward(
                        &images.narrow(0, start, n)?,
                        &labels.narrow(0, start, n)?,
                        w,
                    )?;
                    Ok(vec![l, a])
                });
                self.dp = Some(dp);
                let g = global?;
                let read = self.queue_opt(None)?;
                (read, g.images, Some((g.means[0], g.means[1])))
            }
            None => {
                let read = match self.graph_step(images, labels)? {
                    Some(read) => read,
                    None => {
                        zero_grad(&self.params);
                        // one host read for the whole step: the loss and
                        // the misses with the check after the optimizer
                        // step (`queue_opt`)
                        let host_labels = labels.to_device(Device::Cpu)?;
                        let (summary, _) =
                            self.queue_forward_backward(images, labels, &host_labels, 1.0)?;
                        self.queue_opt(Some(summary))?
                    }
                };
                (read, images.dims()[0], None)
            }
        };
        self.step += 1;
        Ok(InFlight {
            read: read.queue_to_host()?,
            step: self.step,
            lr,
            batch,
            labels: labels.numel(),
            known,
            queue_s: queued_at.elapsed().as_secs_f64(),
        })
    }

    /// Reads a queued step back (the step's one host read), checks it and
    /// makes its log. Its img/s counts the host's time in the step: queuing
    /// it and waiting for its read (what data loading takes is not in it;
    /// an overlapped step's wait starts once the next step is queued).
    fn finish(&mut self, f: InFlight) -> Result<StepLog> {
        let t0 = Instant::now();
        let mut v = f.read.wait()?.to_vec_f64()?;
        let (stepped, found) = absorb_opt_step(
            &mut v,
            self.scaler.as_mut().map(|s| (s, &mut self.scale_on)),
        )?;
        let (loss, accuracy) = match f.known {
            Some(known) => known,
            None => {
                self.check_loss(v[0], f.step - 1)?;
                let n = f.labels as f64;
                (v[0], (n - v[1]) / n.max(1.0))
            }
        };
        if found {
            let at = format!("after step {}", f.step);
            return Err(non_finite_error(
                "train",
                &at,
                &self.params,
                &self.model.buffers(),
            ));
        }
        let seconds = f.queue_s + t0.elapsed().as_secs_f64();
        Ok(StepLog {
            step: f.step,
            loss,
            lr: f.lr,
            batch: f.batch,
            images_per_s: f.batch as f64 / seconds,
            parts: vec![("accuracy", accuracy)],
            skipped: Some(!stepped),
        })
    }

    /// Forward and backward of one (micro-)batch, its mean loss weighted by
    /// `weight` (its share of the step's batch; 1 for a whole batch): adds
    /// to the parameters' gradients. Returns the batch's mean loss and
    /// accuracy, read back at once (a data-parallel step needs them).
    fn forward_backward(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        weight: f64,
    ) -> Result<(f64, f64)> {
        let host_labels = labels.to_device(Device::Cpu)?;
        let (summary, _) = self.queue_forward_backward(images, labels, &host_labels, weight)?;
        let n = labels.numel();
        let v = summary.to_device(Device::Cpu)?.to_vec_f64()?;
        self.check_loss(v[0], self.step)?;
        Ok((v[0], (n as f64 - v[1]) / n.max(1) as f64))
    }

    /// [`forward_backward`](Self::forward_backward) queued, not read:
    /// returns the [loss, misses] tensor where the model is, and the class
    /// count. `miss_labels` are the labels [`misses`] compares with: i64 on
    /// the host, or f32 where the model is.
    fn queue_forward_backward(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        miss_labels: &Tensor,
        weight: f64,
    ) -> Result<(Tensor, usize)> {
        self.model.set_training(true);
        let dtype = self.opts.precision.compute_dtype();
        // host tensors stay as they are on a CPU run (to_device is a clone);
        // host labels go to the loss as they are: it checks them on the
        // host and uploads them, so a GPU step reads nothing back there
        let x = images.to_device(self.device)?;
        let logits = self.model.forward(&x.to_dtype(dtype)?)?;
        // the loss is always computed in f32 (autocast does the same)
        let logits = logits.to_dtype(DType::F32)?;
        let mut loss = logits.cross_entropy(labels, self.opts.label_smoothing, None)?;
        let summary = Tensor::stack(&[loss.detach(), misses(&logits, miss_labels)?], 0)?;
        if weight != 1.0 {
            loss = loss.scale(weight)?;
        }
        match &self.scaler {
            Some(s) => self.scale_on.backward(s, &loss)?,
            None => loss.backward()?,
        }
        Ok((summary, logits.dims()[1]))
    }

    /// A non-finite loss at (0-based) `step` stops the run (under f16 loss
    /// scaling an overflow only skips the step).
    fn check_loss(&self, loss: f64, step: usize) -> Result<()> {
        if !loss.is_finite() && self.scaler.is_none() {
            return Err(Error::arg(
                "train",
                format!("loss became {loss} at step {step}; lower the learning rate"),
            ));
        }
        Ok(())
    }

    /// The optimizer step on the gradients at the lr set (skipped under
    /// f16 when they overflowed, decided where the model is), then the
    /// gradients cleared and the check that every parameter and buffer is
    /// finite, queued. Returns the tensor the step's one host read takes:
    /// `summary` (the step's [loss, misses]) when given, then under f16 the
    /// scaled step's four values (`ScaleOnDevice::queue_step`), then the
    /// non-finite flag ([`absorb_opt_step`] takes these off).
    fn queue_opt(&mut self, summary: Option<Tensor>) -> Result<Tensor> {
        let read = queue_opt_step(
            &mut self.opt,
            self.scaler.as_ref().map(|s| (s, &mut self.scale_on)),
            &self.params,
            &self.model.buffers(),
            self.device,
        )?;
        let parts: Vec<Tensor> = summary.into_iter().chain([read]).collect();
        Tensor::cat(&parts, 0)
    }

    /// The step as a replay of the recorded graph (recorded first when
    /// there is none), at the lr set: the tensor to read, or None when it
    /// runs as an ordinary step instead (no graph asked for, the warm-up,
    /// or a batch of another shape).
    fn graph_step(&mut self, images: &Tensor, labels: &Tensor) -> Result<Option<Tensor>> {
        let Some(plan) = self.graph_plan.as_mut() else {
            return Ok(None);
        };
        let fits = self.graph.as_ref().map(|g| g.fits(images, labels));
        let (action, drop_graph) = plan.next(fits, images.dims());
        if drop_graph {
            self.graph = None;
        }
        if action == GraphAction::Ordinary {
            return Ok(None);
        }
        // the rate the recorded SGD reads when it runs, and under f16 the
        // loss scale; staged before a recording too, which must not record
        // the writes
        self.opt.stage_lr(self.device)?;
        if let Some(s) = &self.scaler {
            self.scale_on.stage(s, self.device)?;
        }
        if action == GraphAction::Record {
            self.record(images, labels)?;
        }
        let g = self.graph.as_ref().expect("recorded above");
        g.load(images, labels)?;
        g.graph.replay()?;
        // the next replay overwrites it: read it (queue_to_host) before
        Ok(Some(g.read.clone()))
    }

    /// Under [`Trainer::with_cuda_graph`]: how many times the step was
    /// recorded, and how many steps ran as replays.
    pub fn graph_counts(&self) -> Option<(usize, usize)> {
        self.graph_plan.as_ref().map(|p| (p.recordings, p.replays))
    }

    /// Records one step (nothing runs: the caller replays it), the
    /// learning rate already staged.
    fn record(&mut self, images: &Tensor, labels: &Tensor) -> Result<()> {
        let compute = self.opts.precision.compute_dtype();
        let (x, y, y32) = static_inputs(self.device, images, labels, compute)?;
        let gpu = engine::cuda::tensor::gpu_of(&x)?;
        zero_grad(&self.params);
        let recorded = engine::cuda::graph::capture(gpu, || {
            let (summary, classes) = self.queue_forward_backward(&x, &y, &y32, 1.0)?;
            Ok((self.queue_opt(Some(summary))?, classes))
        });
        let (graph, (read, classes)) = recorded.map_err(|e| {
            // nothing recorded ran; gradients a failed recording left behind
            // would be added to by the next step
            zero_grad(&self.params);
            Error::arg(
                "cuda graph",
                format!("recording the training step failed: {e}; train without --cuda-graph"),
            )
        })?;
        self.graph = Some(StepGraph {
            graph,
            images: x,
            batch_dtype: images.dtype(),
            labels: y,
            labels_f32: y32,
            read,
            classes,
        });
        Ok(())
    }

    /// Makes every step a data-parallel one (`dist`): `grad_accum`
    /// micro-batches on this rank, gradients summed over `comm`'s ranks.
    pub fn with_data_parallel(
        mut self,
        comm: Box<dyn crate::dist::Communicator>,
        grad_accum: usize,
    ) -> Self {
        self.dp = Some(crate::dist::DataParallel::new(
            comm,
            grad_accum,
            &self.params,
        ));
        self
    }

    /// Under data parallelism, BatchNorm statistics over all ranks
    /// (`--sync-bn`; see `dist::DataParallel::sync_batch_norm`).
    pub fn with_sync_batch_norm(self) -> Self {
        if let Some(dp) = &self.dp {
            dp.sync_batch_norm(self.model);
        }
        self
    }

    /// Writes the whole training state atomically (an error while a step
    /// is in flight: its checks are not read yet).
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.in_flight.is_some() {
            return Err(Error::arg(
                "train",
                "a step is still in flight: take its log with Trainer::finish_in_flight before saving",
            ));
        }
        save_checkpoint(self, path, self.step)
    }

    /// Restores a state written by `save` by a run with the same model,
    /// precision and length.
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        self.step = load_checkpoint(self, path)?;
        Ok(())
    }
}

impl Task for Trainer<'_> {
    type Source = ImageSource;
    type Val = Loader;
    const EPOCH_PREFIX: &'static str = "train_";

    fn tensors(&self) -> (Vec<Param>, Vec<Buffer>) {
        (self.model.params(), self.model.buffers())
    }

    fn schedule_len(&self) -> usize {
        self.opts.steps
    }

    /// Under data parallelism only rank 0 writes.
    fn writes_files(&self) -> bool {
        self.dp.as_ref().is_none_or(|d| d.rank() == 0)
    }

    fn step(&mut self, step: usize, batch: &crate::data::Batch) -> Result<Vec<StepLog>> {
        self.step = step;
        let n = batch.indices.len();
        if n < self.min_batch && self.dp.is_some() {
            // one rank skipping would leave the others waiting in a collective
            return Err(Error::arg(
                "train",
                format!(
                    "batch {} has {n} readable image(s) on this rank, fewer than the {} BatchNorm needs in training; a data-parallel run cannot skip it on one rank (remove the unreadable images)",
                    batch.index, self.min_batch
                ),
            ));
        }
        if n < self.min_batch {
            eprintln!(
                "warning: batch {} has {n} readable image(s), fewer than the {} BatchNorm needs in training; skipped",
                batch.index, self.min_batch
            );
            let mut logs: Vec<StepLog> = self.finish_in_flight()?.into_iter().collect();
            self.step += 1;
            logs.push(StepLog {
                step: self.step,
                loss: f64::NAN,
                lr: self.schedule.lr(step),
                batch: 0,
                images_per_s: 0.0,
                parts: vec![("accuracy", f64::NAN)],
                skipped: Some(true),
            });
            return Ok(logs);
        }
        // data-parallel steps are read at once: every rank must stop at the
        // same step (one that stopped later would wait for the others in
        // the next step's collective)
        if self.overlap && self.dp.is_none() {
            let done = self.step_overlapped(&batch.images, &batch.labels)?;
            return Ok(done.into_iter().collect());
        }
        Ok(vec![Trainer::step(self, &batch.images, &batch.labels)?])
    }

    fn finish_steps(&mut self) -> Result<Vec<StepLog>> {
        Ok(self.finish_in_flight()?.into_iter().collect())
    }

    /// Validation loss and accuracy (both `None` without `val`).
    fn validate(&mut self, val: Option<&Loader>) -> Result<Validation> {
        let (loss, accuracy) = match val {
            Some(v) => {
                let (l, a) = evaluate(self.model, v, self.opts.precision)?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        Ok(Validation {
            fields: vec![("val_loss", loss), ("val_accuracy", accuracy)],
            text: accuracy.map_or(String::new(), |a| format!(", val acc {:.1}%", 100.0 * a)),
        })
    }

    fn part_names(&self) -> &'static [&'static str] {
        &["accuracy"]
    }

    fn describe(&self, means: &Means) -> String {
        format!(
            "loss {:.4}  acc {:5.1}%",
            means.loss,
            100.0 * means.part("accuracy")
        )
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.metadata.clone()
    }

    /// A run continues only with the same precision and schedule length.
    fn settings(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("precision".into(), format!("{:?}", self.opts.precision)),
            ("total_steps".into(), self.opts.steps.to_string()),
        ])
    }

    /// Momentum, no rng (the data stream is a function of (seed, epoch,
    /// batch)), the metadata, the settings and any loss scale.
    fn state(&self) -> TaskState {
        let mut extra = self.metadata.clone();
        extra.extend(self.settings());
        extra.extend(scaler_state(self.scaler.as_ref()));
        TaskState {
            optim: self.opt.state(),
            rng: [0; 4],
            extra,
        }
    }

    /// Also drops a recorded graph (the restored tensors replace those it
    /// reads) and any step in flight.
    fn restore(&mut self, optim: Vec<(String, Tensor)>, state: &TrainState) -> Result<()> {
        self.graph = None;
        self.in_flight = None;
        restore_optim(&mut self.opt, &mut self.scaler, optim, state)
    }
}

/// A task's optimizer step, queued with its checks for one host read: the
/// SGD step (under f16 loss scaling, the step `ScaleOnDevice` decides on
/// the device), the gradients cleared, then the non-finite check of every
/// param and buffer. Returns the tensor to read and give to
/// [`absorb_opt_step`]: under f16 the scaled step's four values, then the
/// check's flag.
pub(crate) fn queue_opt_step(
    opt: &mut Sgd,
    scaling: Option<(&LossScaler, &mut ScaleOnDevice)>,
    params: &[Param],
    buffers: &[Buffer],
    device: Device,
) -> Result<Tensor> {
    let scaled = match scaling {
        Some((s, on)) => Some(on.queue_step(s, opt, params, device)?),
        None => {
            opt.step(params)?;
            None
        }
    };
    zero_grad(params);
    let flag = non_finite_flag(params, buffers, device)?;
    Tensor::cat(&scaled.into_iter().chain([flag]).collect::<Vec<_>>(), 0)
}

/// Takes what [`queue_opt_step`] queued off the end of the values read
/// `v`: under f16 the scaled step's values go back into the scaler.
/// Returns whether the optimizer stepped and whether the non-finite check
/// found a NaN or an infinity ([`non_finite_error`]).
pub(crate) fn absorb_opt_step(
    v: &mut Vec<f64>,
    scaling: Option<(&mut LossScaler, &mut ScaleOnDevice)>,
) -> Result<(bool, bool)> {
    let found = v.pop().unwrap_or(0.0) != 0.0;
    let stepped = match scaling {
        Some((s, on)) => {
            let scaled = v.split_off(v.len().saturating_sub(ScaleOnDevice::READ_LEN));
            on.absorb(s, &scaled)?
        }
        None => true,
    };
    Ok((stepped, found))
}

/// The error of a raised non-finite check `at` a step: ReLU propagates
/// NaN, but a diverged weight can still hide behind a finite loss for a
/// while, so a run stops at the first non-finite tensor (`check_finite`
/// names it).
pub(crate) fn non_finite_error(
    what: &'static str,
    at: &str,
    params: &[Param],
    buffers: &[Buffer],
) -> Error {
    match check_finite(params, buffers) {
        Err(e) => Error::arg(what, format!("{at}: {e}")),
        Ok(()) => Error::arg(
            what,
            format!("{at}: a parameter or buffer holds a NaN or an infinity"),
        ),
    }
}

/// A loss scaler's state as checkpoint metadata (`TaskState::extra`);
/// nothing without one.
pub(crate) fn scaler_state(s: Option<&LossScaler>) -> Vec<(String, String)> {
    s.map_or(Vec::new(), |s| {
        vec![
            ("loss_scale".into(), s.scale.to_string()),
            ("loss_scale_clean_steps".into(), s.clean_steps.to_string()),
            (
                "loss_scale_skipped_steps".into(),
                s.skipped_steps.to_string(),
            ),
        ]
    })
}

/// A task's `restore`: the optimizer's state and any loss scale from a
/// checkpoint, the scale read first so that an error leaves both as they
/// were.
pub(crate) fn restore_optim(
    opt: &mut Sgd,
    scaler: &mut Option<LossScaler>,
    optim: Vec<(String, Tensor)>,
    state: &TrainState,
) -> Result<()> {
    let restored = match scaler {
        Some(s) => Some(restored_scaler(s, state)?),
        None => None,
    };
    opt.load_state(optim)?;
    *scaler = restored;
    Ok(())
}

/// `s` with the state [`scaler_state`] recorded in a checkpoint, validated.
fn restored_scaler(s: &LossScaler, state: &TrainState) -> Result<LossScaler> {
    let get = |k: &str| -> Result<f64> {
        state
            .extra
            .get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Error::arg(
                    "resume",
                    format!("f16 run but the checkpoint has no valid {k}"),
                )
            })
    };
    let scale = get("loss_scale")?;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::arg(
            "resume",
            format!("the checkpoint's loss_scale {scale} is not finite and > 0"),
        ));
    }
    let count = |k: &str| -> Result<usize> {
        let v = get(k)?;
        if v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) {
            Ok(v as usize)
        } else {
            Err(Error::arg(
                "resume",
                format!("the checkpoint's {k} {v} is not a count"),
            ))
        }
    };
    // checkpoints from before the skip bound have no skip count
    let skipped_steps = match state.extra.contains_key("loss_scale_skipped_steps") {
        true => count("loss_scale_skipped_steps")?,
        false => 0,
    };
    Ok(LossScaler {
        scale,
        clean_steps: count("loss_scale_clean_steps")?,
        skipped_steps,
        ..s.clone()
    })
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

/// Mean of the first and last `k` losses, for "did it learn" checks.
pub fn loss_drop(logs: &[StepLog], k: usize) -> Option<(f64, f64)> {
    if logs.len() < 2 * k || k == 0 {
        return None;
    }
    let mean = |s: &[StepLog]| s.iter().map(|l| l.loss).sum::<f64>() / s.len() as f64;
    Some((mean(&logs[..k]), mean(&logs[logs.len() - k..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `misses` agrees with `batch_accuracy` (the host argmax), ties
    /// included: the first largest logit is the prediction.
    #[test]
    fn misses_match_the_host_argmax_ties_included() {
        let mut rng = engine::Rng::new(4);
        let logits = Tensor::randn(&[64, 10], 0.0, 1.0, DType::F32, &mut rng);
        let labels: Vec<i64> = (0..64).map(|i| (i * 7 % 10) as i64).collect();
        let labels = Tensor::from_vec(labels, &[64]).unwrap();
        let acc = batch_accuracy(&logits, &labels).unwrap();
        let m = misses(&logits, &labels).unwrap().item().unwrap();
        assert_eq!(m, 64.0 * (1.0 - acc));
        assert!(
            acc > 0.0 && acc < 1.0,
            "a batch with hits and misses: {acc}"
        );
        // equal logits: only label 0 is the argmax; [1, 3, 3]: label 1 is
        let logits =
            Tensor::from_vec(vec![0.5f32, 0.5, 0.5, 0.5, 1.0, 3.0, 3.0, 3.0], &[2, 4]).unwrap();
        for (y, want) in [
            ([0i64, 1], 0.0),
            ([1, 1], 1.0),
            ([0, 2], 1.0),
            ([3, 3], 2.0),
        ] {
            let y = Tensor::from_vec(y.to_vec(), &[2]).unwrap();
            assert_eq!(
                misses(&logits, &y).unwrap().item().unwrap(),
                want,
                "labels {y:?}"
            );
            let acc = batch_accuracy(&logits, &y).unwrap();
            assert_eq!(want, 2.0 * (1.0 - acc));
        }
        let bad = Tensor::from_vec(vec![0i64; 3], &[3]).unwrap();
        assert!(misses(&logits, &bad).is_err());
    }

    /// A CPU step runs on a pool thread: the trainer's own pool when the
    /// caller is outside any, the caller's (as under the CLI) otherwise,
    /// with the same result either way.
    #[test]
    fn an_f16_step_that_overflows_is_skipped_where_the_model_is() {
        let mut rng = engine::Rng::new(2);
        let mut cfg = crate::NetConfig::new("resnet18", 3).unwrap();
        cfg.width = 4;
        cfg.stem = crate::Stem::Cifar;
        let net = crate::SupervisedNet::new(cfg, &mut rng).unwrap();
        let opts = TrainOptions {
            precision: Precision::F16,
            ..TrainOptions::default()
        };
        let mut t = Trainer::new(&net, opts, BTreeMap::new());
        let x = Tensor::randn(&[4, 3, 12, 12], 0.0, 1.0, DType::F32, &mut rng);
        let y = Tensor::from_vec(vec![0i64, 1, 2, 1], &[4]).unwrap();
        let weights = |t: &Trainer| -> Vec<Vec<f32>> {
            t.params
                .iter()
                .map(|p| p.get().to_vec::<f32>().unwrap())
                .collect()
        };
        // a scale no f16 gradient survives: the step is skipped, the
        // weights stay, the scale halves (all decided by ScaleOnDevice)
        t.scaler.as_mut().unwrap().scale = 2f64.powi(100);
        let before = weights(&t);
        let log = t.step(&x, &y).unwrap();
        assert_eq!(log.skipped, Some(true));
        assert_eq!(weights(&t), before);
        let s = t.scaler.clone().unwrap();
        assert_eq!((s.scale, s.skipped_steps), (2f64.powi(99), 1));
        // a scale set on the host (a restored checkpoint) is staged again
        t.scaler.as_mut().unwrap().scale = 1024.0;
        let log = t.step(&x, &y).unwrap();
        assert_eq!(log.skipped, Some(false));
        assert_ne!(weights(&t), before);
        let s = t.scaler.clone().unwrap();
        assert_eq!((s.scale, s.clean_steps, s.skipped_steps), (1024.0, 1, 0));
        assert_eq!(t.step, 2);
    }

    /// Overlapped steps (each queued before the last is read back) log,
    /// skip and scale as ordinary ones, bit for bit, through an f16
    /// overflow; an ordinary step or a save waits for the one in flight.
    #[test]
    fn overlapped_steps_log_and_skip_as_ordinary_ones() {
        let mut rng = engine::Rng::new(4);
        let x = Tensor::randn(&[4, 3, 12, 12], 0.0, 1.0, DType::F32, &mut rng);
        let y = Tensor::from_vec(vec![0i64, 1, 2, 1], &[4]).unwrap();
        let run = |overlap: bool| {
            let mut cfg = crate::NetConfig::new("resnet18", 3).unwrap();
            cfg.width = 4;
            cfg.stem = crate::Stem::Cifar;
            let net = crate::SupervisedNet::new(cfg, &mut engine::Rng::new(2)).unwrap();
            let opts = TrainOptions {
                precision: Precision::F16,
                steps: 4,
                ..TrainOptions::default()
            };
            let mut t = Trainer::new(&net, opts, BTreeMap::new());
            // the first step overflows, the second runs at 2^100 * 2^-90
            let s = t.scaler.as_mut().unwrap();
            (s.scale, s.backoff_factor) = (2f64.powi(100), 2f64.powi(-90));
            let mut logs = Vec::new();
            for _ in 0..4 {
                if overlap {
                    logs.extend(t.step_overlapped(&x, &y).unwrap());
                    let e = t.step(&x, &y).unwrap_err().to_string();
                    assert!(e.contains("in flight"), "{e}");
                    let e = t.save(Path::new("unused")).unwrap_err().to_string();
                    assert!(e.contains("in flight"), "{e}");
                } else {
                    logs.push(t.step(&x, &y).unwrap());
                }
            }
            logs.extend(t.finish_in_flight().unwrap());
            assert!(t.finish_in_flight().unwrap().is_none());
            let logs: Vec<_> = logs
                .iter()
                .map(|l| {
                    (
                        l.step,
                        l.loss.to_bits(),
                        l.lr,
                        l.part("accuracy"),
                        l.skipped,
                    )
                })
                .collect();
            let weights: Vec<Vec<f32>> = net
                .params()
                .iter()
                .map(|p| p.get().to_vec::<f32>().unwrap())
                .collect();
            (logs, weights, t.scaler.clone().unwrap())
        };
        let (plain, overlapped) = (run(false), run(true));
        assert_eq!(plain.0.len(), 4);
        assert_eq!(plain.0[0].4, Some(true));
        assert_eq!(plain.0[1].4, Some(false));
        assert_eq!(overlapped.0, plain.0);
        assert_eq!(overlapped.1, plain.1);
        let scale = |s: &LossScaler| (s.scale, s.clean_steps, s.skipped_steps);
        assert_eq!(scale(&overlapped.2), scale(&plain.2));
        assert_eq!(plain.2.scale, 1024.0);
    }

    #[test]
    fn a_cuda_graph_step_needs_a_gpu_model() {
        let mut rng = engine::Rng::new(1);
        let mut cfg = crate::NetConfig::new("resnet18", 3).unwrap();
        cfg.width = 4;
        let net = crate::SupervisedNet::new(cfg, &mut rng).unwrap();
        let e = Trainer::new(&net, TrainOptions::default(), BTreeMap::new())
            .with_cuda_graph()
            .err()
            .expect("a CPU model cannot record a CUDA graph")
            .to_string();
        assert!(e.contains("not a GPU"), "{e}");
    }

    #[test]
    fn a_cpu_step_uses_the_callers_pool_or_its_own() {
        let mut config = crate::NetConfig::new("resnet18", 3).unwrap();
        (config.width, config.in_channels) = (4, 1);
        config.stem = crate::Stem::Cifar;
        let net = crate::SupervisedNet::new(config, &mut engine::Rng::new(0)).unwrap();
        let mut rng = engine::Rng::new(1);
        let x = Tensor::randn(&[4, 1, 8, 8], 0.0, 1.0, DType::F32, &mut rng);
        let y = Tensor::from_vec(vec![0i64, 1, 2, 1], &[4]).unwrap();
        let mut own = Trainer::new(&net, TrainOptions::default(), Default::default());
        let first = own.step(&x, &y).unwrap();
        assert!(own.cpu_pool.is_some(), "stepped from a test thread");

        let net = crate::SupervisedNet::new(net.config.clone(), &mut engine::Rng::new(0)).unwrap();
        let mut callers = Trainer::new(&net, TrainOptions::default(), Default::default());
        let pool = engine::ops::CpuPool::new().unwrap();
        let again = pool.run(|| callers.step(&x, &y)).unwrap();
        assert!(callers.cpu_pool.is_none(), "stepped on the caller's pool");
        assert_eq!(first.loss.to_bits(), again.loss.to_bits());
    }
}
