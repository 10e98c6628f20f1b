//! `slmlp pretrain`: supervised pretraining, SL or SL-MLP, and the pieces
//! every other command shares (loaders for a dataset spec, loading a trained
//! network back with what it was trained on).

use crate::data::{
    parse_classes, Augment, Dataset, Loader, LoaderOptions, PixelWork, Subset, Transform,
};
use crate::datasets::{self, Normalization};
use crate::device::DeviceArg;
use crate::dist::launch::{global_batch, run_ranks, DistArgs};
use crate::dist::Communicator;
use crate::fit::{fit, EpochLog, FitOptions};
use crate::net::metadata_value;
use crate::train::{TrainOptions, Trainer};
use crate::{NetConfig, ProjectorConfig, Stem, SupervisedNet};
use engine::amp::Precision;
use engine::checkpoint::{self, LoadOptions, TRAIN_FORMAT};
use engine::nn::Module;
use engine::{Device, Error, Result, Rng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Encoder -> pool -> Linear classifier.
    Sl,
    /// Encoder -> pool -> MLP projector -> Linear classifier.
    SlMlp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StemArg {
    /// 7x7/2 conv + max-pool (224px images).
    Imagenet,
    /// 3x3/1 conv, no pool (small images).
    Cifar,
}

/// Which data a run reads and how images are prepared.
#[derive(Clone, Debug, clap::Args)]
pub struct DataArgs {
    /// Dataset: fashion-mnist[:train|:test], mnist[:train|:test|:all],
    /// folder:PATH (ImageNet layout) or synthetic[:train|:test].
    #[arg(long, default_value = "fashion-mnist")]
    pub data: String,
    /// Keep only these classes (indices or names, e.g. "0-4" or
    /// "Sandal,Bag"); they are relabelled 0..k in this order.
    #[arg(long)]
    pub classes: Option<String>,
    /// Keep at most this many images per class (a deterministic choice).
    #[arg(long)]
    pub per_class: Option<usize>,
    /// Loader worker threads (decode + augment).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

impl DataArgs {
    /// The dataset `spec` (or `self.data`), with the class and size filters.
    pub fn open(&self, spec: Option<&str>, seed: u64) -> Result<Arc<dyn Dataset>> {
        let mut ds = datasets::open(spec.unwrap_or(&self.data))?;
        if let Some(c) = &self.classes {
            let keep = parse_classes(c, ds.classes())?;
            ds = Arc::new(Subset::classes(ds, &keep)?);
        }
        if let Some(n) = self.per_class {
            ds = Arc::new(Subset::per_class(ds, n, seed));
        }
        if ds.is_empty() {
            return Err(Error::arg(
                "data",
                format!(
                    "{}: no images left after filtering",
                    spec.unwrap_or(&self.data)
                ),
            ));
        }
        Ok(ds)
    }
}

/// How images become network inputs: side length and normalisation.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub size: usize,
    pub norm: Normalization,
}

impl InputSpec {
    /// Training transform: pad-and-crop + flip for small images,
    /// random-resized-crop + flip for large ones.
    pub fn train_transform(&self) -> Transform {
        let augment = if self.size <= 64 {
            Augment::PadCrop {
                pad: self.size.div_ceil(8),
                flip: true,
            }
        } else {
            Augment::RandomResizedCrop {
                scale: (0.08, 1.0),
                ratio: (0.75, 4.0 / 3.0),
                flip: true,
            }
        };
        self.transform(augment)
    }
    /// Evaluation transform: plain resize for small images, resize the
    /// shorter side to 8/7 of the size and center-crop for large ones.
    pub fn eval_transform(&self) -> Transform {
        let augment = if self.size <= 64 {
            Augment::None
        } else {
            Augment::ResizeCenterCrop {
                resize: self.size * 8 / 7,
            }
        };
        self.transform(augment)
    }
    fn transform(&self, augment: Augment) -> Transform {
        Transform {
            augment,
            size: self.size,
            mean: self.norm.mean.clone(),
            std: self.norm.std.clone(),
        }
    }
    pub fn to_metadata(&self, m: &mut BTreeMap<String, String>) {
        m.insert("data.size".into(), self.size.to_string());
        m.insert("data.normalization".into(), self.norm.spec());
    }
}

/// A loader for evaluation or feature extraction: in order, no augmentation.
pub fn eval_loader(
    ds: Arc<dyn Dataset>,
    input: &InputSpec,
    batch: usize,
    workers: usize,
) -> Result<Loader> {
    Loader::new(
        ds,
        input.eval_transform(),
        LoaderOptions {
            batch,
            shuffle: false,
            drop_last: false,
            workers,
            prefetch: 4,
            seed: 0,
        },
    )
}

/// Where and how a command computes; shared by every subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct ComputeArgs {
    /// f32, bf16, or f16 (with dynamic loss scaling).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// cpu, cuda, cuda:N or auto (auto falls back to the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Seeds the weights, the data order and subsets, and the augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Clone, Debug, clap::Args)]
pub struct PretrainArgs {
    /// sl: no projector; sl-mlp: with the MLP projector.
    #[arg(long, value_enum, default_value = "sl-mlp")]
    pub method: Method,
    /// resnet18, resnet34 or resnet50.
    #[arg(long, default_value = "resnet50")]
    pub arch: String,
    /// Channels of the first stage (stages use w, 2w, 4w, 8w; torchvision 64).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Stem; default: cifar for images up to 64 px, imagenet above.
    #[arg(long, value_enum)]
    pub stem: Option<StemArg>,
    /// Projector widths for sl-mlp: comma-separated Linear->BN->ReLU block
    /// widths, then optionally +N for a trailing Linear; "d" = the encoder's
    /// feature dim (the paper: "d").
    #[arg(long, default_value = "d")]
    pub projector: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Validation data (default: the held-out split of --data, same classes).
    #[arg(long)]
    pub val_data: Option<String>,
    /// Skip validation.
    #[arg(long)]
    pub no_val: bool,
    /// Input side in pixels (default: 28 for the MNIST-style sets, else 224).
    #[arg(long)]
    pub image_size: Option<usize>,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Peak learning rate (linear warmup, then cosine to 0).
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    #[arg(long, default_value_t = 1.0)]
    pub warmup_epochs: f64,
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[command(flatten)]
    pub dist: DistArgs,
    /// With several ranks: BatchNorm statistics of the global micro-batch
    /// (summed over the ranks, SyncBatchNorm) instead of each rank's own.
    #[arg(long)]
    pub sync_bn: bool,
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
    /// Also checkpoint every N steps (0: at epoch ends only).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Without a terminal, print progress every N steps.
    #[arg(long, default_value_t = 50)]
    pub log_every: usize,
    #[arg(long)]
    pub quiet: bool,
    /// Also write OUT/model-epoch{E}.safetensors after every epoch E.
    #[arg(long)]
    pub epoch_models: bool,
    /// Where training images are cropped, resized and normalised: host
    /// (the loader's threads, f32 batches uploaded) or device (the
    /// training device, from u8 pixels; an in-memory dataset stays there).
    /// Default: device on a GPU, host on the CPU. Same batches either way.
    #[arg(long, value_enum)]
    pub augment_on: Option<AugmentOn>,
    /// GPU, one rank, any precision: after two ordinary steps, record the
    /// whole step as a CUDA graph and replay it (one launch per step).
    /// Same arithmetic as the ordinary steps; a batch of another shape (an
    /// epoch's short last one) runs as one, and is recorded itself once its
    /// shape has run.
    #[arg(long)]
    pub cuda_graph: bool,
    /// Read each step's loss back before queuing the next. By default a
    /// one-rank GPU run queues the next step first, so the GPU does not
    /// wait for the host between steps (a step's error then stops the run
    /// one step later, before anything is saved); the logs, checkpoints and
    /// weights are the same either way.
    #[arg(long)]
    pub sync_steps: bool,
}

/// `--augment-on`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AugmentOn {
    Host,
    Device,
}

impl PretrainArgs {
    /// A run `experiment` owns: warmup over a tenth of the epochs (at most
    /// one), weight decay 5e-4, momentum 0.9, no validation pass (the
    /// study measures the networks itself), the default stem, input size
    /// and projector, and a folder that a rerun replaces.
    pub fn study(
        method: Method,
        data: DataArgs,
        (arch, width): (&str, usize),
        (epochs, batch, lr): (usize, usize, f64),
        compute: ComputeArgs,
        out: PathBuf,
    ) -> PretrainArgs {
        PretrainArgs {
            method,
            arch: arch.into(),
            width,
            stem: None,
            projector: "d".into(),
            data,
            val_data: None,
            no_val: true,
            image_size: None,
            epochs,
            batch,
            lr,
            warmup_epochs: (epochs as f64 / 10.0).min(1.0),
            weight_decay: 5e-4,
            momentum: 0.9,
            label_smoothing: 0.0,
            dist: Default::default(),
            sync_bn: false,
            compute,
            out,
            resume: false,
            deterministic: false,
            resume_force: false,
            overwrite: true,
            checkpoint_every: 0,
            log_every: 50,
            quiet: false,
            epoch_models: false,
            augment_on: None,
            cuda_graph: false,
            sync_steps: false,
        }
    }
}

impl PretrainArgs {
    /// The network these options train on `classes` classes of
    /// `channels`-channel images of side `size`: --arch, --width, --stem
    /// (default: cifar up to 64 px, imagenet above) and, for sl-mlp,
    /// --projector. `slmlp profile` builds its network here too.
    pub fn net_config(&self, classes: usize, channels: usize, size: usize) -> Result<NetConfig> {
        let stem = match self.stem {
            Some(StemArg::Imagenet) => Stem::ImageNet,
            Some(StemArg::Cifar) => Stem::Cifar,
            None if size <= 64 => Stem::Cifar,
            None => Stem::ImageNet,
        };
        let mut config = NetConfig::new(&self.arch, classes)?;
        config.width = self.width;
        config.stem = stem;
        config.in_channels = channels;
        let d = config.resnet()?.feature_dim();
        if self.method == Method::SlMlp {
            config.projector = Some(ProjectorConfig::parse(&self.projector, d)?);
        }
        Ok(config)
    }
}

#[derive(Clone, Debug)]
pub struct PretrainReport {
    pub epochs: Vec<EpochLog>,
    pub seconds: f64,
    /// Training images per second over the whole run (data loading included).
    pub images_per_s: f64,
    /// Training images per second of the training steps alone (from the
    /// batch to the optimizer step; no data loading, validation or
    /// checkpoints).
    pub step_images_per_s: f64,
    /// With `--cuda-graph`: the recordings of the step and the steps that
    /// ran as replays.
    pub graph_counts: Option<(usize, usize)>,
    pub model_path: PathBuf,
}

/// Pretrains on the ranks of `--ranks` / the launch environment (one rank
/// by default; see `dist`); rank 0 writes the output folder and reports.
pub fn pretrain(a: &PretrainArgs) -> Result<PretrainReport> {
    engine::cuda::dnn::set_deterministic(a.deterministic);
    let device = a.compute.device.open()?;
    let ranks = a.dist.ranks(device)?;
    let accum = ranks.grad_accum;
    run_ranks(ranks, |comm, device| pretrain_rank(a, comm, device, accum))
}

/// One rank of `pretrain`: everything but rank 0 is quiet and skips
/// validation.
fn pretrain_rank(
    a: &PretrainArgs,
    comm: Box<dyn Communicator>,
    device: Device,
    grad_accum: usize,
) -> Result<PretrainReport> {
    let (rank, world) = (comm.rank(), comm.world());
    let quiet = a.quiet || rank > 0;
    let (precision, seed) = (a.compute.precision, a.compute.seed);
    let train_ds = a.data.open(None, seed)?;
    let val_spec = a
        .val_data
        .clone()
        .or_else(|| datasets::test_spec(&a.data.data));
    let val_ds = match (&val_spec, a.no_val || rank > 0) {
        (Some(spec), false) => {
            // the held-out split gets the class filter, not the per-class cap
            let args = DataArgs {
                per_class: None,
                ..a.data.clone()
            };
            Some(args.open(Some(spec), seed)?)
        }
        _ => None,
    };
    let default_size = if a.data.data.starts_with("folder:") {
        224
    } else {
        28
    };
    let input = InputSpec {
        size: a.image_size.unwrap_or(default_size),
        norm: datasets::default_normalization(&a.data.data),
    };
    if input.norm.mean.len() != train_ds.channels() {
        return Err(Error::arg(
            "pretrain",
            "normalization does not match the dataset's channels",
        ));
    }
    let config = a.net_config(train_ds.classes().len(), train_ds.channels(), input.size)?;
    let stem = config.stem;
    // initialised on the host (deterministic for a seed), then moved
    let net = SupervisedNet::new(config.clone(), &mut Rng::new(seed))?;
    net.to_device(device)?;
    let gpu = match device {
        Device::Cuda(i) => Some(engine::cuda::gpu(i)?),
        Device::Cpu => None,
    };
    if let (Some(g), false) = (gpu, quiet) {
        eprintln!("device: {}", g.info.summary());
    }

    let global_batch = global_batch(a.batch, grad_accum, world)?;
    // this rank's slice of each global batch, cut into micro-batches by
    // the trainer
    let dtype = precision.compute_dtype();
    let work = match a.augment_on {
        None => PixelWork::for_training(device, dtype),
        Some(AugmentOn::Host) => PixelWork::Host,
        Some(AugmentOn::Device) => PixelWork::Device { device, dtype },
    };
    let train = Loader::with_pixel_work(
        train_ds.clone(),
        input.train_transform(),
        LoaderOptions {
            batch: a.batch * grad_accum,
            shuffle: true,
            drop_last: true,
            workers: a.data.workers,
            prefetch: 4,
            seed,
        },
        work,
    )?
    .shard(rank, world)?;
    if !quiet {
        if let PixelWork::Device { device, .. } = work {
            let resident = if train.resident() {
                "the dataset resident there"
            } else {
                "u8 images uploaded per batch"
            };
            eprintln!("augmentation on {device} ({resident})");
        }
    }
    let val = match val_ds {
        Some(ds) => Some(eval_loader(ds, &input, a.batch, a.data.workers)?),
        None => None,
    };
    let per_epoch = train.batches_per_epoch();
    if per_epoch == 0 {
        return Err(Error::arg(
            "pretrain",
            format!(
                "{} images is less than one batch of {global_batch}",
                train_ds.len(),
            ),
        ));
    }
    let mut meta = config.to_metadata();
    input.to_metadata(&mut meta);
    meta.insert("data.spec".into(), a.data.data.clone());
    meta.insert(
        "data.classes".into(),
        serde_json::to_string(train_ds.classes()).unwrap_or_default(),
    );
    meta.insert("seed".into(), seed.to_string());
    let opts = TrainOptions {
        // saturating: fit refuses a run this long with a clear error
        steps: a.epochs.saturating_mul(per_epoch),
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        warmup_steps: (a.warmup_epochs * per_epoch as f64).round() as usize,
        label_smoothing: a.label_smoothing,
        precision,
    };
    if !quiet {
        let params: usize = net.params().iter().map(|p| p.get().numel()).sum();
        eprintln!(
            "pretrain {}: {} width {} ({:.2}M params, {} stem), {} classes, {} train images{}, {}px, batch {}, {} epochs x {per_epoch} steps, {:?}",
            config.method(),
            a.arch,
            a.width,
            params as f64 / 1e6,
            if stem == Stem::Cifar { "cifar" } else { "imagenet" },
            train_ds.classes().len(),
            train_ds.len(),
            val.as_ref().map_or(String::new(), |v| format!(", {} val", v.dataset().len())),
            input.size,
            if global_batch == a.batch {
                a.batch.to_string()
            } else {
                format!("{global_batch} ({} ranks x {grad_accum} micro-batches x {})", world, a.batch)
            },
            a.epochs,
            precision,
        );
    }
    let mut trainer = Trainer::new(&net, opts, meta);
    // the projector's BatchNorm1d cannot train on one image
    trainer.min_batch = if config.projector.is_some() { 2 } else { 1 };
    if global_batch != a.batch {
        trainer = trainer.with_data_parallel(comm, grad_accum);
        if a.sync_bn {
            trainer = trainer.with_sync_batch_norm();
        }
    }
    if a.cuda_graph {
        trainer = trainer.with_cuda_graph()?;
    }
    if device != Device::Cpu && !a.sync_steps {
        trainer = trainer.with_overlapped_steps();
    }
    let t0 = Instant::now();
    let result = fit(
        &mut trainer,
        &train,
        val.as_ref(),
        &FitOptions {
            epochs: a.epochs,
            out_dir: Some(a.out.clone()),
            checkpoint_every: a.checkpoint_every,
            resume: a.resume,
            resume_force: a.resume_force,
            overwrite: a.overwrite,
            log_every: a.log_every,
            quiet,
            epoch_models: a.epoch_models,
        },
    )?;
    let seconds = t0.elapsed().as_secs_f64();
    if let (Some(g), false) = (gpu, quiet) {
        let m = g.memory_stats();
        eprintln!(
            "{}: peak memory {} allocated, {} reserved",
            g.device(),
            engine::cuda::allocator::format_bytes(m.peak_allocated),
            engine::cuda::allocator::format_bytes(m.peak_reserved)
        );
    }
    let images: usize = result.steps.iter().map(|s| s.batch).sum();
    // each step's own time: batch / its img/s
    let step_seconds: f64 = result
        .steps
        .iter()
        .filter(|s| s.batch > 0 && s.images_per_s > 0.0)
        .map(|s| s.batch as f64 / s.images_per_s)
        .sum();
    Ok(PretrainReport {
        epochs: result.epochs,
        seconds,
        images_per_s: images as f64 / seconds,
        step_images_per_s: images as f64 / step_seconds,
        graph_counts: trainer.graph_counts(),
        model_path: a.out.join("model.safetensors"),
    })
}

/// A trained network loaded back, with what it was trained on.
pub struct Loaded {
    pub net: SupervisedNet,
    pub input: InputSpec,
    /// Pretraining class names.
    pub classes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

/// Loads `model.safetensors` or a training `checkpoint.safetensors` written
/// by `pretrain`: checks its metadata against its tensors' shapes from the
/// header alone (`net::check_checkpoint`), then rebuilds the network from
/// it, fills it on the host and moves it to `device`.
pub fn load_trained(path: &Path, device: Device) -> Result<Loaded> {
    crate::net::check_checkpoint(path)?;
    let ckpt = checkpoint::load(path)?;
    let meta = &ckpt.metadata;
    let with_path = |e: Error| Error::Checkpoint {
        path: path.display().to_string(),
        msg: e.to_string(),
    };
    let get = |k: &str| metadata_value(meta, k).map(str::to_string);
    let config = NetConfig::from_metadata(meta).map_err(with_path)?;
    let input = InputSpec {
        size: get("data.size")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| with_path(Error::arg("load", "no valid data.size in the metadata")))?,
        norm: Normalization::parse(&get("data.normalization").unwrap_or_default())
            .map_err(with_path)?,
    };
    let classes: Vec<String> = get("data.classes")
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| (0..config.num_classes).map(|i| i.to_string()).collect());
    let net = SupervisedNet::new(config, &mut Rng::new(0))?;
    let training = meta.get("format").is_some_and(|f| f == TRAIN_FORMAT);
    // a training checkpoint also holds the optimizer state under optim.
    let opts = if training {
        LoadOptions::backbone()
    } else {
        LoadOptions::strict()
    };
    checkpoint::load_into_with(&ckpt, &net.params(), &net.buffers(), &opts).map_err(with_path)?;
    net.to_device(device)?;
    Ok(Loaded {
        net,
        input,
        classes,
        metadata: ckpt.metadata,
    })
}
