//! Mask R-CNN on a COCO-style instances folder (as `slmlp detection-data`
//! writes) or a COCO instances file with its image folder (the COCO 2017
//! layout, see `SplitLocation`): `train` (a `DetectTask` in `fit`'s loop, so with the progress
//! lines, `metrics.jsonl`, checkpoints, `--resume` and `model.safetensors`
//! of `slmlp pretrain`; the weights carry the metadata needed to rebuild the
//! model), `eval` (COCO bbox + segm) and `predict` (draw on an image): what
//! `slmlp detect train | eval | predict` run.
//!
//! Files of `detect train --out OUT`:
//! - `metrics.jsonl`: one `{"kind":"step",...}` record per step (the five
//!   losses, their total, lr, img/s) and one `{"kind":"epoch",...}` per epoch;
//! - `checkpoint.safetensors`: the training state at the last epoch end;
//! - `model.safetensors`: the weights and the `detect.*` metadata.

use crate::data::{LoaderOptions, MAX_IMAGE_SIZE};
use crate::detection::data::{
    pad_batch, DetBatch, DetSample, DetSource, DetTarget, DetTransform, DetectionDataset,
    DetectionLoader, SplitLocation,
};
use crate::detection::host::read_f64;
use crate::detection::mask_rcnn::{ImageDetections, MaskRcnn, MaskRcnnConfig};
use crate::detection::{CocoEval, IouType, Rle};
use crate::device::DeviceArg;
use crate::dist::launch::{global_batch, run_ranks, DistArgs};
use crate::dist::{Communicator, DataParallel};
use crate::fit::{fit, FitOptions, Means, StepLog, Task, TaskState, Validation};
use crate::net::{MAX_CLASSES, MAX_IN_CHANNELS, MAX_WIDTH};
use crate::train::{
    absorb_opt_step, non_finite_error, queue_opt_step, restore_optim, scaler_state,
};
use engine::amp::{LossScaler, Precision, ScaleOnDevice};
use engine::checkpoint::{self, Checkpoint, LoadOptions, TrainState, TRAIN_FORMAT};
use engine::nn::{Buffer, Module, Param};
use engine::optim::{zero_grad, Cosine, LrSchedule, Optimizer, Sgd, StepDecay, Warmup};
use engine::{Device, Error, Result, Rng, Tensor};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    /// x0.1 at 2/3 and 8/9 of the run (detectron's 1x: 60k and 80k of 90k).
    Step,
    /// Half-cosine to 0 over the run.
    Cosine,
}

#[derive(Clone, Debug, clap::Args)]
pub struct DetectTrainArgs {
    /// Folder with train/annotations.json and train/images/.
    #[arg(long, required_unless_present = "train_ann")]
    pub data: Option<PathBuf>,
    /// Instead of --data: the training annotations (COCO instances JSON,
    /// e.g. annotations/instances_train2017.json).
    #[arg(long, conflicts_with = "data", requires = "train_images")]
    pub train_ann: Option<PathBuf>,
    /// With --train-ann: the folder of its images (e.g. train2017/).
    #[arg(long, requires = "train_ann")]
    pub train_images: Option<PathBuf>,
    /// resnet18, resnet34 or resnet50.
    #[arg(long, default_value = "resnet18")]
    pub arch: String,
    /// Backbone width of the first stage (torchvision 64).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// FPN channels, also the mask head's (torchvision 256).
    #[arg(long, default_value_t = 256)]
    pub fpn_channels: usize,
    /// Box head MLP width (torchvision 1024).
    #[arg(long, default_value_t = 1024)]
    pub representation_size: usize,
    /// Backbone stages trained, from the top (0..=5; torchvision 3).
    #[arg(long, default_value_t = 3)]
    pub trainable_layers: usize,
    /// A `slmlp pretrain` model.safetensors (or checkpoint) whose encoder
    /// initialises backbone.body (same arch, width, channels and imagenet stem).
    #[arg(long)]
    pub backbone: Option<PathBuf>,
    /// Image channels, 1 or 3 (default: the --backbone encoder's or the
    /// --init detector's, else 3).
    #[arg(long)]
    pub channels: Option<usize>,
    /// A whole detector to start from: a `detect train` model or a
    /// torchvision Mask R-CNN converted by tools/convert_torchvision.py.
    /// Its arch, width, FPN channels and representation size must equal the
    /// flags'. With another number of classes than DATA's, its box and mask
    /// predictors are left out (freshly initialised); the rest is loaded.
    #[arg(long, conflicts_with = "backbone")]
    pub init: Option<PathBuf>,
    #[arg(long, default_value_t = 26)]
    pub epochs: usize,
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Peak learning rate (SGD, momentum 0.9).
    #[arg(long, default_value_t = 0.02)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Linear warmup from lr/1000 over this many steps (capped at one epoch).
    #[arg(long, default_value_t = 1000)]
    pub warmup_steps: usize,
    #[arg(long, value_enum, default_value = "step")]
    pub schedule: ScheduleArg,
    /// Shorter image side after resizing...
    #[arg(long, default_value_t = 128)]
    pub min_size: usize,
    /// ...unless the longer side would exceed this.
    #[arg(long, default_value_t = 213)]
    pub max_size: usize,
    /// Loader worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Seeds the weights, the data order, the flips and the samplers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the detector computes: cpu, cuda, cuda:N or auto (auto falls
    /// back to the CPU). Proposal selection, matching and post-processing
    /// stay on the host (docs/DETECTION.md counts the round trips).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// What the convolutions and linear layers compute in: f32, bf16 or
    /// f16 (autocast: RoIAlign, box coding and the losses stay f32, the
    /// weights stay f32) f16 training uses dynamic loss scaling.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    #[command(flatten)]
    pub dist: DistArgs,
    /// Output folder: metrics.jsonl, checkpoint.safetensors, model.safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from OUT/checkpoint.safetensors (refused when OUT/args.json
    /// records other options, see --resume-force).
    #[arg(long)]
    pub resume: bool,
    /// GPU: only convolution algorithms cuDNN reports deterministic, so
    /// reruns give the same bits (slower; RoIAlign's backward stays
    /// non-deterministic). No effect on the CPU, which is deterministic.
    #[arg(long)]
    pub deterministic: bool,
    /// Resume although the recorded options (data, classes, hyperparameters) differ.
    #[arg(long, requires = "resume")]
    pub resume_force: bool,
    /// Start a new run in a non-empty OUT, replacing its run files.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Without a terminal, print progress every N steps.
    #[arg(long, default_value_t = 20)]
    pub log_every: usize,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Clone, Debug, clap::Args)]
pub struct DetectEvalArgs {
    /// model.safetensors (or checkpoint.safetensors) from `detect train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Folder with <split>/annotations.json and <split>/images/.
    #[arg(long, required_unless_present = "val_ann")]
    pub data: Option<PathBuf>,
    /// Instead of --data: the annotations (COCO instances JSON, e.g.
    /// annotations/instances_val2017.json).
    #[arg(long, conflicts_with = "data", requires = "val_images")]
    pub val_ann: Option<PathBuf>,
    /// With --val-ann: the folder of its images (e.g. val2017/).
    #[arg(long, requires = "val_ann")]
    pub val_images: Option<PathBuf>,
    /// The split under --data; also names the output files.
    #[arg(long, default_value = "val")]
    pub split: String,
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Where the detector computes: cpu, cuda, cuda:N or auto (auto falls
    /// back to the CPU). Proposal selection, matching and post-processing
    /// stay on the host (docs/DETECTION.md counts the round trips).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// What the convolutions and linear layers compute in: f32, bf16 or
    /// f16 (autocast: RoIAlign, box coding and the losses stay f32, the
    /// weights stay f32).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Where detections_<split>.json and eval_<split>.json go (default: the
    /// checkpoint's folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct DetectPredictArgs {
    /// model.safetensors (or checkpoint.safetensors) from `detect train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub image: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Draw detections scoring at least this.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Also write every detection (whatever --threshold) as a COCO results
    /// list, as `detect eval` and pycocotools' loadRes take: bbox
    /// [x, y, w, h], score, category_id, segmentation as compressed RLE.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The image_id of the --json entries (the image's id in its annotations).
    #[arg(long, default_value_t = 0)]
    pub image_id: i64,
    /// Where the detector computes: cpu, cuda, cuda:N or auto (auto falls
    /// back to the CPU). Proposal selection, matching and post-processing
    /// stay on the host (docs/DETECTION.md counts the round trips).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// What the convolutions and linear layers compute in: f32, bf16 or
    /// f16 (autocast: RoIAlign, box coding and the losses stay f32, the
    /// weights stay f32).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Also write every detection's mask probabilities as pasted into the
    /// image, before the 0.5 threshold, to this safetensors file (to audit
    /// against another implementation): `masks` [K, 1, H, W] in the model's
    /// dtype, `boxes` [K, 4] (x1, y1, x2, y2) f64, `scores` [K] f64,
    /// `labels` [K] i64, in --json's order. 4 bytes a pixel per detection.
    #[arg(long)]
    pub mask_probs: Option<PathBuf>,
}

/// The largest FPN or box-head width accepted from the command line or a
/// checkpoint (torchvision: 256 and 1024).
pub const MAX_DETECT_CHANNELS: usize = 16_384;

/// What the model was built with; stored as `detect.*` metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectSpec {
    pub config: MaskRcnnConfig,
    pub min_size: usize,
    pub max_size: usize,
    /// COCO category id of label `l` at `l - 1`.
    pub category_ids: Vec<i64>,
    pub category_names: Vec<String>,
}

impl DetectSpec {
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let c = &self.config;
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| m.insert(format!("detect.{k}"), v);
        put("arch", c.arch.clone());
        put("width", c.width.to_string());
        put("num_classes", c.num_classes.to_string());
        put("fpn_channels", c.fpn_channels.to_string());
        put("representation_size", c.representation_size.to_string());
        put("trainable_layers", c.trainable_layers.to_string());
        put("channels", self.config.in_channels.to_string());
        put("min_size", self.min_size.to_string());
        put("max_size", self.max_size.to_string());
        put("category_ids", json!(self.category_ids).to_string());
        put("category_names", json!(self.category_names).to_string());
        m
    }

    /// Reads `to_metadata`'s keys, bare or under `extra.` (training
    /// checkpoints); errors name the missing or malformed key.
    pub fn from_metadata(meta: &BTreeMap<String, String>, source: &Path) -> Result<DetectSpec> {
        let get = |k: &str| -> Result<&str> {
            let key = format!("detect.{k}");
            crate::net::metadata_value(meta, &key).ok_or_else(|| Error::Checkpoint {
                path: source.display().to_string(),
                msg: format!("no `{key}` metadata: not a model written by `slmlp detect train`"),
            })
        };
        let bad = |k: &str, v: &str| Error::Checkpoint {
            path: source.display().to_string(),
            msg: format!("malformed `detect.{k}` metadata {v:?}"),
        };
        // bounded before anything is allocated from them
        let num = |k: &str, range: std::ops::RangeInclusive<usize>| -> Result<usize> {
            let v = get(k)?;
            v.parse()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| Error::Checkpoint {
                    path: source.display().to_string(),
                    msg: format!("`detect.{k}` metadata {v:?} is not a whole number in {range:?}"),
                })
        };
        let category_ids: Vec<i64> = {
            let v = get("category_ids")?;
            serde_json::from_str(v).map_err(|_| bad("category_ids", v))?
        };
        let category_names: Vec<String> = {
            let v = get("category_names")?;
            serde_json::from_str(v).map_err(|_| bad("category_names", v))?
        };
        let spec = DetectSpec {
            config: MaskRcnnConfig {
                arch: get("arch")?.to_string(),
                width: num("width", 1..=MAX_WIDTH)?,
                num_classes: num("num_classes", 2..=MAX_CLASSES)?,
                fpn_channels: num("fpn_channels", 1..=MAX_DETECT_CHANNELS)?,
                representation_size: num("representation_size", 1..=MAX_DETECT_CHANNELS)?,
                trainable_layers: num("trainable_layers", 0..=5)?,
                in_channels: num("channels", 1..=MAX_IN_CHANNELS)?,
            },
            min_size: num("min_size", 1..=MAX_IMAGE_SIZE)?,
            max_size: num("max_size", 1..=MAX_IMAGE_SIZE)?,
            category_ids,
            category_names,
        };
        if spec.category_ids.len() + 1 != spec.config.num_classes {
            return Err(bad("category_ids", &json!(spec.category_ids).to_string()));
        }
        Ok(spec)
    }

    fn transform(&self, train: bool) -> DetTransform {
        DetTransform {
            min_size: self.min_size,
            max_size: self.max_size,
            ..DetTransform::mask_rcnn(self.config.in_channels, train)
        }
    }
}

/// The detector `spec` describes, its weights drawn from `rng`.
pub fn build_model(spec: &DetectSpec, rng: &mut Rng) -> Result<MaskRcnn> {
    if spec.config.in_channels != 1 && spec.config.in_channels != 3 {
        return Err(Error::arg(
            "detect",
            format!("channels must be 1 or 3, got {}", spec.config.in_channels),
        ));
    }
    MaskRcnn::new(spec.config.clone(), rng)
}

/// The `slmlp pretrain` encoder stored in `path`: its tensors named
/// `conv1.*`, `bn1.*` or `layer1..4.*` (torchvision's top-level names),
/// renamed to `backbone.body.*`.
fn encoder_tensors(path: &Path) -> Result<Checkpoint> {
    let ckpt = checkpoint::load(path)?;
    let tensors: BTreeMap<String, engine::Tensor> = ckpt
        .tensors
        .into_iter()
        .filter(|(k, _)| {
            ["conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .map(|(k, t)| (format!("backbone.body.{k}"), t))
        .collect();
    if tensors.is_empty() {
        return Err(Error::Checkpoint {
            path: path.display().to_string(),
            msg: "no encoder tensors (conv1.*, layer1.* ...): not a `slmlp pretrain` model".into(),
        });
    }
    Ok(Checkpoint {
        tensors,
        metadata: ckpt.metadata,
    })
}

/// Input channels of the encoder in `ckpt` (its `conv1.weight` is
/// `[width, channels, k, k]`).
fn encoder_channels(ckpt: &Checkpoint, path: &Path) -> Result<usize> {
    match ckpt
        .tensors
        .get("backbone.body.conv1.weight")
        .map(|t| t.dims().to_vec())
    {
        Some(d) if d.len() == 4 => Ok(d[1]),
        other => Err(Error::Checkpoint {
            path: path.display().to_string(),
            msg: format!("conv1.weight should be [width, channels, k, k], got {other:?}"),
        }),
    }
}

/// Loads the encoder into the backbone; every backbone tensor must be there
/// with the same shape (a different arch, width or a cifar stem is an error
/// naming the tensors).
fn load_encoder(model: &MaskRcnn, ckpt: &Checkpoint, path: &Path) -> Result<()> {
    let stem = ckpt.tensors["backbone.body.conv1.weight"].dims().to_vec();
    let want = model.backbone.params()[0].dims().to_vec();
    if stem != want {
        return Err(Error::Checkpoint {
            path: path.display().to_string(),
            msg: format!(
                "the encoder's conv1.weight is {stem:?}, this Mask R-CNN's backbone needs {want:?} \
                 (same --width, channels and a 7x7 imagenet stem: pretrain with --stem imagenet)"
            ),
        });
    }
    checkpoint::load_into_with(
        ckpt,
        &model.backbone.params(),
        &model.backbone.buffers(),
        &LoadOptions::strict(),
    )
    .map_err(|e| Error::Checkpoint {
        path: path.display().to_string(),
        msg: format!(
            "encoder does not fit backbone.body ({}): {e}",
            model.config.arch
        ),
    })?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct DetectTrainReport {
    /// Steps run in all (those before a resume included).
    pub steps: usize,
    /// Seconds of this call.
    pub seconds: f64,
    pub model_path: PathBuf,
}

/// Names of the five losses, in `MaskRcnnLosses`' order: JSONL fields of
/// the step and epoch records.
const LOSS_NAMES: [&str; 5] = [
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "loss_objectness",
    "loss_rpn_box_reg",
];

/// Mask R-CNN training as a `fit::Task`: SGD (momentum 0.9) on
/// `trainable_params()`, the lr warmed up linearly from lr/1000, then the
/// schedule; the RPN and RoI samplers of micro-batch `m` of step `s` draw
/// from an rng seeded by (seed, s, m), so a resumed run continues exactly
/// and `--ranks K` samples as `--grad-accum K` does.
pub struct DetectTask<'m> {
    model: &'m MaskRcnn,
    trainable: Vec<Param>,
    opt: Sgd,
    /// f16's dynamic loss scale.
    scaler: Option<LossScaler>,
    /// Its state where the model is (`ScaleOnDevice`).
    scale_on: ScaleOnDevice,
    schedule: Warmup<Box<dyn LrSchedule>>,
    total: usize,
    seed: u64,
    /// What the loader pads to (micro-batches are padded alike).
    size_divisible: usize,
    /// Data parallelism, when on.
    dp: Option<DataParallel>,
    /// The model's `detect.*` spec, and the precision unless f32.
    settings: BTreeMap<String, String>,
    metadata: BTreeMap<String, String>,
}

impl<'m> DetectTask<'m> {
    /// Training for `a.epochs` epochs of `per_epoch` steps (the warmup
    /// capped at one epoch); the weights' metadata is `spec`'s plus the seed
    /// and the number of epochs.
    pub fn new(
        model: &'m MaskRcnn,
        a: &DetectTrainArgs,
        spec: &DetectSpec,
        per_epoch: usize,
    ) -> DetectTask<'m> {
        // saturating: fit refuses a run this long with a clear error
        let total = a.epochs.saturating_mul(per_epoch);
        let inner: Box<dyn LrSchedule> = match a.schedule {
            ScheduleArg::Step => Box::new(StepDecay {
                base_lr: a.lr,
                milestones: vec![total * 2 / 3, total * 8 / 9],
                gamma: 0.1,
            }),
            ScheduleArg::Cosine => Box::new(Cosine {
                base_lr: a.lr,
                total_steps: total,
                final_lr: 0.0,
            }),
        };
        let mut metadata = spec.to_metadata();
        metadata.insert("seed".into(), a.seed.to_string());
        metadata.insert("epochs".into(), a.epochs.to_string());
        let mut settings = spec.to_metadata();
        // f32 runs record nothing: checkpoints from before --precision are f32
        if a.precision != Precision::F32 {
            settings.insert("precision".into(), format!("{:?}", a.precision));
        }
        model.set_training(true);
        DetectTask {
            model,
            trainable: model.trainable_params(),
            opt: Sgd::new(a.lr, 0.9, a.weight_decay),
            scaler: a.precision.scaler(),
            scale_on: ScaleOnDevice::default(),
            schedule: Warmup {
                inner,
                warmup_steps: a.warmup_steps.min(per_epoch),
                start_factor: 1e-3,
            },
            total,
            seed: a.seed,
            size_divisible: spec.transform(true).size_divisible,
            dp: None,
            settings,
            metadata,
        }
    }

    /// Makes every step a data-parallel one (`dist`): `grad_accum`
    /// micro-batches on this rank, gradients summed over `comm`'s ranks.
    pub fn with_data_parallel(mut self, comm: Box<dyn Communicator>, grad_accum: usize) -> Self {
        self.dp = Some(DataParallel::new(comm, grad_accum, &self.trainable));
        self
    }

    /// Forward and backward of global micro-batch `m` of step `step`:
    /// `batch`'s images `start..start + n`, the total loss weighted by
    /// `weight`. Returns the total loss and its five parts.
    fn micro(
        &mut self,
        step: usize,
        batch: &DetBatch,
        (m, start, n, weight): (usize, usize, usize, f64),
    ) -> Result<Vec<f64>> {
        let part;
        let batch = if n == batch.indices.len() {
            batch
        } else {
            part = batch.part(start, n, self.size_divisible)?;
            &part
        };
        let mut rng = Rng::new(crate::data::derive_seed(&[
            self.seed,
            0x5a4d,
            step as u64,
            m as u64,
        ]));
        let images = batch.images.to_device(self.model.device())?;
        let losses =
            self.model
                .forward_train(&images, &batch.image_sizes, &batch.targets, &mut rng)?;
        let loss = losses.total()?;
        // the total and its five parts in one read from the device
        let values = read_f64(&Tensor::stack(
            &[
                loss.clone(),
                losses.classifier.clone(),
                losses.box_reg.clone(),
                losses.mask.clone(),
                losses.objectness.clone(),
                losses.rpn_box_reg.clone(),
            ],
            0,
        )?)?;
        let (value, parts) = (values[0], &values[1..]);
        // under f16 an overflow skips the step instead (`ScaleOnDevice`)
        if !value.is_finite() && self.scaler.is_none() {
            return Err(Error::arg(
                "detect train",
                format!(
                    "loss is {value} at step {} ({}); stopping (try a lower --lr)",
                    step + 1,
                    LOSS_NAMES
                        .iter()
                        .zip(parts.iter())
                        .map(|(n, v)| format!("{n} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let loss = if weight != 1.0 {
            loss.scale(weight)?
        } else {
            loss
        };
        match &self.scaler {
            Some(s) => self.scale_on.backward(s, &loss)?,
            None => loss.backward()?,
        }
        Ok(values)
    }
}

impl Task for DetectTask<'_> {
    type Source = DetSource;
    type Val = ();
    const EPOCH_PREFIX: &'static str = "";

    fn tensors(&self) -> (Vec<Param>, Vec<Buffer>) {
        (self.model.params(), self.model.buffers())
    }

    fn schedule_len(&self) -> usize {
        self.total
    }

    fn step(&mut self, step: usize, batch: &DetBatch) -> Result<Vec<StepLog>> {
        let t = Instant::now();
        let lr = self.schedule.lr(step);
        self.opt.set_lr(lr);
        zero_grad(&self.trainable);
        let b = batch.indices.len();
        let (images, values) = match self.dp.take() {
            Some(mut dp) => {
                let params = self.trainable.clone();
                let global =
                    dp.gradients(&params, self.model.device(), step, b, |m, start, n, w| {
                        self.micro(step, batch, (m, start, n, w))
                    });
                self.dp = Some(dp);
                let g = global?;
                (g.images, g.means)
            }
            None => (b, self.micro(step, batch, (0, 0, b, 1.0))?),
        };
        // the step and its checks in one read (f16: the device decides
        // whether it steps, `ScaleOnDevice`)
        let buffers = self.model.buffers();
        let read = queue_opt_step(
            &mut self.opt,
            self.scaler.as_ref().map(|s| (s, &mut self.scale_on)),
            &self.trainable,
            &buffers,
            self.model.device(),
        )?;
        let mut v = read_f64(&read)?;
        let (stepped, found) = absorb_opt_step(
            &mut v,
            self.scaler.as_mut().map(|s| (s, &mut self.scale_on)),
        )?;
        if found {
            let at = format!("after step {}", step + 1);
            return Err(non_finite_error(
                "detect train",
                &at,
                &self.trainable,
                &buffers,
            ));
        }
        Ok(vec![StepLog {
            step: step + 1,
            loss: values[0],
            lr,
            batch: images,
            images_per_s: images as f64 / t.elapsed().as_secs_f64(),
            parts: LOSS_NAMES
                .into_iter()
                .zip(values[1..].iter().copied())
                .collect(),
            skipped: self.scaler.is_some().then_some(!stepped),
        }])
    }

    /// Under data parallelism only rank 0 writes.
    fn writes_files(&self) -> bool {
        self.dp.as_ref().is_none_or(|d| d.rank() == 0)
    }

    fn validate(&mut self, _: Option<&()>) -> Result<Validation> {
        Ok(Validation::default())
    }

    fn part_names(&self) -> &'static [&'static str] {
        &LOSS_NAMES
    }

    fn describe(&self, m: &Means) -> String {
        let p = |i: usize| m.part(LOSS_NAMES[i]);
        format!(
            "loss {:.4} (cls {:.4} box {:.4} mask {:.4} obj {:.4} rpn {:.4})",
            m.loss,
            p(0),
            p(1),
            p(2),
            p(3),
            p(4)
        )
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.metadata.clone()
    }

    /// The model's `detect.*` spec and a precision other than f32:
    /// another one cannot continue a run.
    fn settings(&self) -> BTreeMap<String, String> {
        self.settings.clone()
    }

    /// Momentum and any loss scale; no rng (the samplers' is a function of
    /// the seed, the step and the micro-batch).
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

    fn restore(&mut self, optim: Vec<(String, engine::Tensor)>, state: &TrainState) -> Result<()> {
        restore_optim(&mut self.opt, &mut self.scaler, optim, state)
    }
}

/// Trains Mask R-CNN on DATA/train with [`DetectTask`] in `fit`'s loop, on
/// the ranks of `--ranks` / the launch environment (one by default; see
/// `dist`); rank 0 writes the output folder and reports.
pub fn train(a: &DetectTrainArgs) -> Result<DetectTrainReport> {
    engine::cuda::dnn::set_deterministic(a.deterministic);
    const OP: &str = "detect train";
    let encoder = match &a.backbone {
        Some(p) => {
            if !p.is_file() {
                return Err(Error::arg(
                    OP,
                    format!("--backbone {}: no such file", p.display()),
                ));
            }
            let ck = encoder_tensors(p)?;
            let c = encoder_channels(&ck, p)?;
            Some((ck, c, p))
        }
        None => None,
    };
    let init = match &a.init {
        Some(p) => Some((read_spec(p)?, p)),
        None => None,
    };
    let encoder_or_init = encoder
        .as_ref()
        .map(|(_, c, p)| (*c, *p))
        .or(init.as_ref().map(|(s, p)| (s.config.in_channels, *p)));
    let channels = match (a.channels, encoder_or_init) {
        (Some(c), Some((e, p))) if c != e => {
            return Err(Error::arg(
                OP,
                format!(
                    "--channels {c}, but {} takes {e}-channel images",
                    p.display()
                ),
            ))
        }
        (Some(c), _) => c,
        (None, Some((e, _))) => e,
        (None, None) => 3,
    };
    let mut ds = SplitLocation::from_args(
        a.data.as_deref(),
        "train",
        a.train_ann.as_deref(),
        a.train_images.as_deref(),
        "train",
    )?
    .open(channels)?;
    let removed = ds.retain_annotated();
    if ds.is_empty() {
        return Err(Error::arg(
            OP,
            format!(
                "{}: no image has an instance to train on",
                ds.annotations_path().display()
            ),
        ));
    }
    let spec = DetectSpec {
        config: MaskRcnnConfig {
            arch: a.arch.clone(),
            width: a.width,
            num_classes: ds.num_classes() + 1,
            fpn_channels: a.fpn_channels,
            representation_size: a.representation_size,
            trainable_layers: a.trainable_layers,
            in_channels: channels,
        },
        min_size: a.min_size,
        max_size: a.max_size,
        category_ids: (1..=ds.num_classes() as i64)
            .map(|l| ds.category_id(l).unwrap_or(l))
            .collect(),
        category_names: ds.category_names().to_vec(),
    };
    let ranks = a.dist.ranks(a.device.open()?)?;
    let accum = ranks.grad_accum;
    let shared = TrainShared {
        spec: &spec,
        ds: Arc::new(ds),
        removed,
        encoder: encoder.as_ref().map(|(ck, _, p)| (ck, p.as_path())),
        init: init.as_ref().map(|(s, p)| (s, p.as_path())),
    };
    run_ranks(ranks, |comm, device| {
        train_rank(a, &shared, comm, device, accum)
    })
}

/// What every rank of `detect train` reads: the model's spec, the data
/// (and how many images without instances were left out of it), and the
/// weights to start from.
struct TrainShared<'a> {
    spec: &'a DetectSpec,
    ds: Arc<DetectionDataset>,
    removed: usize,
    encoder: Option<(&'a Checkpoint, &'a Path)>,
    init: Option<(&'a DetectSpec, &'a Path)>,
}

/// One rank of `detect train` (see `dist`): everything but rank 0 is quiet
/// and writes nothing.
fn train_rank(
    a: &DetectTrainArgs,
    s: &TrainShared,
    comm: Box<dyn Communicator>,
    device: Device,
    grad_accum: usize,
) -> Result<DetectTrainReport> {
    const OP: &str = "detect train";
    let (rank, world) = (comm.rank(), comm.world());
    let quiet = a.quiet || rank > 0;
    let (spec, ds) = (s.spec, &s.ds);
    let mut model = build_model(spec, &mut Rng::new(a.seed))?;
    model.set_compute_dtype(a.precision.compute_dtype())?;
    if let Some((ck, p)) = s.encoder {
        load_encoder(&model, ck, p)?;
    }
    if let Some((from, p)) = s.init {
        init_from(&model, from, p)?;
    }
    model.to_device(device)?;
    let global = global_batch(a.batch, grad_accum, world)?;
    // this rank's slice of each global batch, cut into micro-batches by
    // the task
    let loader = DetectionLoader::new(
        ds.clone(),
        spec.transform(true),
        LoaderOptions {
            batch: a.batch * grad_accum,
            shuffle: true,
            drop_last: true,
            workers: a.workers,
            prefetch: 4,
            seed: a.seed,
        },
    )?
    .shard(rank, world)?;
    let per_epoch = loader.batches_per_epoch();
    if per_epoch == 0 {
        return Err(Error::arg(
            OP,
            format!(
                "{} training images is less than one batch of {global}",
                ds.len(),
            ),
        ));
    }
    if a.epochs == 0 {
        return Err(Error::arg(OP, "nothing to train: --epochs 0"));
    }
    if !quiet {
        let n: usize = model.params().iter().map(|p| p.get().numel()).sum();
        let batch = if global == a.batch {
            a.batch.to_string()
        } else {
            format!(
                "{global} ({world} ranks x {grad_accum} micro-batches x {})",
                a.batch
            )
        };
        eprintln!(
            "detect train: Mask R-CNN {} width {} ({:.2}M params), {} classes, {} train images ({} without instances left out), {}-channel, min/max size {}/{}, batch {batch}, {} epochs x {per_epoch} steps, lr {}",
            a.arch, a.width, n as f64 / 1e6, ds.num_classes(), ds.len(), s.removed,
            spec.config.in_channels, a.min_size, a.max_size, a.epochs, a.lr,
        );
    }
    let started = Instant::now();
    let mut task = DetectTask::new(&model, a, spec, per_epoch);
    if global != a.batch {
        task = task.with_data_parallel(comm, grad_accum);
    }
    let result = fit(
        &mut task,
        &loader,
        None,
        &FitOptions {
            epochs: a.epochs,
            out_dir: Some(a.out.clone()),
            checkpoint_every: 0,
            resume: a.resume,
            resume_force: a.resume_force,
            overwrite: a.overwrite,
            log_every: a.log_every,
            quiet,
            epoch_models: false,
        },
    )?;
    Ok(DetectTrainReport {
        steps: result.total_steps,
        seconds: started.elapsed().as_secs_f64(),
        model_path: a.out.join("model.safetensors"),
    })
}

/// A trained model loaded back with its spec, in eval mode.
pub struct LoadedDetector {
    pub model: MaskRcnn,
    pub spec: DetectSpec,
}

fn existing(flag: &str, path: &Path) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::arg(
            "detect",
            format!("{flag} {}: no such file", path.display()),
        ))
    }
}

/// The `detect.*` spec of a detector checkpoint, without its tensors.
fn read_spec(path: &Path) -> Result<DetectSpec> {
    existing("--init", path)?;
    DetectSpec::from_metadata(&checkpoint::load(path)?.metadata, path)
}

/// Fills `model`'s tensors from `ckpt`, except those under the `skip`
/// prefixes (left as they are): every other model tensor must be there with
/// its shape; extra checkpoint tensors are an error, but for a training
/// checkpoint's optimizer state.
fn load_weights(model: &MaskRcnn, ckpt: &Checkpoint, path: &Path, skip: &[&str]) -> Result<()> {
    let kept = |n: &str| !skip.iter().any(|s| n.starts_with(s));
    let params: Vec<Param> = model
        .params()
        .into_iter()
        .filter(|p| kept(p.name()))
        .collect();
    let training = ckpt
        .metadata
        .get("format")
        .is_some_and(|f| f == TRAIN_FORMAT);
    let tensors = ckpt
        .tensors
        .iter()
        .filter(|(k, _)| kept(k) && !(training && k.starts_with("optim.")))
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    let ckpt = Checkpoint {
        tensors,
        metadata: ckpt.metadata.clone(),
    };
    checkpoint::load_into_with(&ckpt, &params, &model.buffers(), &LoadOptions::strict()).map_err(
        |e| Error::Checkpoint {
            path: path.display().to_string(),
            msg: e.to_string(),
        },
    )?;
    Ok(())
}

/// The class-dependent tensors `--init` leaves out when the number of
/// classes changes (what torchvision's fine-tuning recipe replaces).
const CLASS_HEADS: [&str; 2] = ["roi_heads.box_predictor.", "roi_heads.mask_predictor."];

/// Loads the `--init` detector `from` (read from `path`) into `model`: the
/// same shape but for the number of classes, whose heads then stay as drawn.
fn init_from(model: &MaskRcnn, from: &DetectSpec, path: &Path) -> Result<()> {
    let (have, want) = (&from.config, &model.config);
    let shape = |c: &MaskRcnnConfig| {
        (
            c.arch.clone(),
            c.width,
            c.fpn_channels,
            c.representation_size,
            c.in_channels,
        )
    };
    if shape(have) != shape(want) {
        return Err(Error::arg(
            "detect train",
            format!(
                "--init {} is a {} width {} Mask R-CNN with FPN {} and representation {} on {}-channel images; \
                 give the same --arch, --width, --fpn-channels, --representation-size (this run: {} {} {} {})",
                path.display(),
                have.arch, have.width, have.fpn_channels, have.representation_size, have.in_channels,
                want.arch, want.width, want.fpn_channels, want.representation_size,
            ),
        ));
    }
    let skip: &[&str] = if have.num_classes == want.num_classes {
        &[]
    } else {
        &CLASS_HEADS
    };
    load_weights(model, &checkpoint::load(path)?, path, skip)
}

/// [`load_detector`], computing in `precision` on `device`.
fn open_detector(path: &Path, device: &DeviceArg, precision: Precision) -> Result<LoadedDetector> {
    let mut d = load_detector(path)?;
    d.model.set_compute_dtype(precision.compute_dtype())?;
    d.model.to_device(device.open()?)?;
    Ok(d)
}

/// Loads `model.safetensors` or `checkpoint.safetensors` of `detect train`,
/// or a torchvision detector converted by tools/convert_torchvision.py.
pub fn load_detector(path: &Path) -> Result<LoadedDetector> {
    existing("--checkpoint", path)?;
    let ckpt = checkpoint::load(path)?;
    let spec = DetectSpec::from_metadata(&ckpt.metadata, path)?;
    let model = build_model(&spec, &mut Rng::new(0))?;
    load_weights(&model, &ckpt, path, &[])?;
    model.set_training(false);
    Ok(LoadedDetector { model, spec })
}

#[derive(Clone, Debug)]
pub struct DetectEvalReport {
    pub images: usize,
    pub detections: usize,
    /// pycocotools' 12 numbers (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l).
    pub bbox: [f64; 12],
    pub segm: [f64; 12],
    pub bbox_summary: String,
    pub segm_summary: String,
    pub detections_path: PathBuf,
    pub results_path: PathBuf,
}

/// One image's detections as COCO results entries: `bbox` `[x, y, w, h]`,
/// `segmentation` the compressed RLE of the mask probabilities > 0.5, the
/// label mapped to its category id by `category_id`.
pub fn coco_results(
    det: &ImageDetections,
    image_id: i64,
    category_id: impl Fn(i64) -> Option<i64>,
) -> Result<Vec<Value>> {
    let d = det.masks.dims().to_vec();
    if d.len() != 4 || d[0] != det.boxes.len() || d[1] != 1 {
        return Err(Error::shape(
            "detect",
            format!("masks {d:?} for {} boxes", det.boxes.len()),
        ));
    }
    let (h, w) = (d[2], d[3]);
    let probs = read_f64(&det.masks)?;
    let mut out = Vec::with_capacity(det.boxes.len());
    for (k, b) in det.boxes.iter().enumerate() {
        let Some(cat) = category_id(det.labels[k]) else {
            return Err(Error::arg(
                "detect",
                format!(
                    "the model predicted label {}, which has no category",
                    det.labels[k]
                ),
            ));
        };
        let mask: Vec<u8> = probs[k * h * w..(k + 1) * h * w]
            .iter()
            .map(|&p| u8::from(p > 0.5))
            .collect();
        let rle = Rle::encode(&mask, h as u32, w as u32)?;
        out.push(json!({
            "image_id": image_id,
            "category_id": cat,
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "score": det.scores[k],
            "segmentation": {"size": [h, w], "counts": rle.to_compressed()},
        }));
    }
    Ok(out)
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string(v).map_err(|e| Error::arg("detect", e.to_string()))?;
    crate::report::write_text(path, &text)
}

/// Runs the model over DATA/<split> (or --val-ann with --val-images) and
/// evaluates with the COCO protocol:
/// bbox on the entries' boxes, segm on their masks (as torchvision's
/// references, segm results carry no box, so their area is the mask's).
/// Writes `detections_<split>.json` (bbox + segmentation per entry) and
/// `eval_<split>.json` (`{"bbox": [12], "segm": [12], ...}`).
pub fn eval(a: &DetectEvalArgs) -> Result<DetectEvalReport> {
    let LoadedDetector { model, spec } = open_detector(&a.checkpoint, &a.device, a.precision)?;
    let ds = SplitLocation::from_args(
        a.data.as_deref(),
        &a.split,
        a.val_ann.as_deref(),
        a.val_images.as_deref(),
        "val",
    )?
    .open(spec.config.in_channels)?;
    let ids: Vec<i64> = (1..=ds.num_classes() as i64)
        .filter_map(|l| ds.category_id(l))
        .collect();
    if ids != spec.category_ids {
        return Err(Error::arg(
            "detect eval",
            format!(
                "{} has categories {ids:?}, the model was trained on {:?}",
                ds.annotations_path().display(),
                spec.category_ids
            ),
        ));
    }
    let ds = Arc::new(ds);
    let loader = DetectionLoader::new(
        ds.clone(),
        spec.transform(false),
        LoaderOptions {
            batch: a.batch,
            shuffle: false,
            drop_last: false,
            workers: a.workers,
            prefetch: 4,
            seed: 0,
        },
    )?;
    let mut entries = Vec::new();
    let mut images = 0;
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let orig: Vec<(usize, usize)> = batch.targets.iter().map(|t| t.orig_size).collect();
        let on_device = batch.images.to_device(model.device())?;
        let dets = model.forward_eval(&on_device, &batch.image_sizes, &orig)?;
        for (det, &i) in dets.iter().zip(&batch.indices) {
            let image_id = ds.image_id(i).unwrap_or(-1);
            entries.extend(coco_results(det, image_id, |l| ds.category_id(l))?);
            images += 1;
        }
    }
    if images == 0 {
        return Err(Error::arg(
            "detect eval",
            format!(
                "every image of {} was unreadable ({} skipped); nothing to evaluate",
                ds.annotations_path().display(),
                loader.skipped()
            ),
        ));
    }
    if loader.skipped() > 0 {
        eprintln!("warning: {} unreadable images skipped", loader.skipped());
    }
    let out = match &a.out {
        Some(o) => o.clone(),
        None => a
            .checkpoint
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let detections_path = out.join(format!("detections_{}.json", a.split));
    write_json(&detections_path, &Value::Array(entries.clone()))?;
    let only = |drop: &str| -> Value {
        Value::Array(
            entries
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    if let Some(o) = e.as_object_mut() {
                        o.remove(drop);
                    }
                    e
                })
                .collect(),
        )
    };
    let src = detections_path.display().to_string();
    let gt = ds.gt();
    let bbox = CocoEval::evaluate(
        gt,
        &gt.results_from_value(&only("segmentation"), &src)?,
        IouType::Bbox,
    )?;
    let segm = CocoEval::evaluate(
        gt,
        &gt.results_from_value(&only("bbox"), &src)?,
        IouType::Segm,
    )?;
    let results_path = out.join(format!("eval_{}.json", a.split));
    write_json(
        &results_path,
        &json!({
            "checkpoint": a.checkpoint.display().to_string(),
            "split": a.split, "images": images, "detections": entries.len(),
            "bbox": bbox.stats(), "segm": segm.stats(),
        }),
    )?;
    Ok(DetectEvalReport {
        images,
        detections: entries.len(),
        bbox: bbox.stats(),
        segm: segm.stats(),
        bbox_summary: bbox.summary(),
        segm_summary: segm.summary(),
        detections_path,
        results_path,
    })
}

const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// Draws the detections scoring at least `threshold` on the image: each
/// mask (probability > 0.5) tinted half-way to its class colour, each box
/// as a 1-px outline. Returns the number drawn.
pub fn predict(a: &DetectPredictArgs) -> Result<usize> {
    let LoadedDetector { model, spec } = open_detector(&a.checkpoint, &a.device, a.precision)?;
    let img = image::open(&a.image)
        .map_err(|e| Error::arg("detect predict", format!("{}: {e}", a.image.display())))?;
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let pixels = if spec.config.in_channels == 1 {
        img.to_luma8().into_raw()
    } else {
        rgb.clone().into_raw()
    };
    let sample = DetSample {
        image: crate::data::Image {
            channels: spec.config.in_channels,
            height: h,
            width: w,
            pixels,
        },
        target: DetTarget {
            boxes: vec![],
            labels: vec![],
            masks: vec![],
            image_id: 0,
            orig_size: (h, w),
            size: (h, w),
        },
    };
    let t = spec.transform(false);
    let item = t.apply(sample, &mut Rng::new(0))?;
    let (images, sizes) = pad_batch(&[item], spec.config.in_channels, t.size_divisible)?;
    let dets = model.forward_eval(&images.to_device(model.device())?, &sizes, &[(h, w)])?;
    let det = &dets[0];
    if let Some(path) = &a.json {
        let category = |l: i64| {
            usize::try_from(l - 1)
                .ok()
                .and_then(|i| spec.category_ids.get(i).copied())
        };
        write_json(
            path,
            &Value::Array(coco_results(det, a.image_id, category)?),
        )?;
    }
    if let Some(path) = &a.mask_probs {
        write_mask_probs(path, det)?;
    }
    let probs = read_f64(&det.masks)?;
    let mut canvas = rgb.into_raw();
    let mut drawn = 0;
    for k in 0..det.boxes.len() {
        if det.scores[k] < a.threshold {
            continue;
        }
        let color = PALETTE[(det.labels[k].max(0) as usize) % PALETTE.len()];
        for (p, &v) in probs[k * h * w..(k + 1) * h * w].iter().enumerate() {
            if v > 0.5 {
                for c in 0..3 {
                    let px = &mut canvas[p * 3 + c];
                    *px = ((*px as u16 + color[c] as u16) / 2) as u8;
                }
            }
        }
        let b = det.boxes[k];
        let clampx = |v: f64| (v.round().max(0.0) as usize).min(w - 1);
        let clampy = |v: f64| (v.round().max(0.0) as usize).min(h - 1);
        let (x1, y1, x2, y2) = (clampx(b[0]), clampy(b[1]), clampx(b[2]), clampy(b[3]));
        let mut put = |x: usize, y: usize| {
            canvas[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&color)
        };
        for x in x1..=x2 {
            put(x, y1);
            put(x, y2);
        }
        for y in y1..=y2 {
            put(x1, y);
            put(x2, y);
        }
        let name = spec
            .category_names
            .get(usize::try_from(det.labels[k] - 1).unwrap_or(usize::MAX))
            .cloned()
            .unwrap_or_default();
        println!(
            "{name} ({}) score {:.3} box [{:.1}, {:.1}, {:.1}, {:.1}]",
            det.labels[k], det.scores[k], b[0], b[1], b[2], b[3]
        );
        drawn += 1;
    }
    write_png(&a.out, &canvas, w, h)?;
    Ok(drawn)
}

/// `detect predict --mask-probs`: the detections with their pasted mask
/// probabilities, as safetensors.
fn write_mask_probs(path: &Path, det: &ImageDetections) -> Result<()> {
    let k = det.boxes.len();
    let boxes: Vec<f64> = det.boxes.iter().flatten().copied().collect();
    let tensors = [
        ("masks".to_string(), det.masks.clone()),
        ("boxes".to_string(), Tensor::from_vec(boxes, &[k, 4])?),
        ("scores".to_string(), Tensor::from_slice(&det.scores, &[k])?),
        ("labels".to_string(), Tensor::from_slice(&det.labels, &[k])?),
    ];
    checkpoint::save(path, &tensors, &BTreeMap::new())
}

fn write_png(path: &Path, rgb: &[u8], w: usize, h: usize) -> Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let op = "detect predict";
    crate::report::write_png(path, rgb, (w, h), png::ColorType::Rgb, op)
}
