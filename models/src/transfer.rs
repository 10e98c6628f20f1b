//! `slmlp transfer`: how well a pretrained encoder's pooled features serve
//! classes or domains it never saw — linear probe and k-NN on frozen
//! features, and full fine-tuning. The projector and classifier are dropped.

use crate::data::{Dataset, Loader, LoaderOptions, PixelWork};
use crate::datasets;
use crate::eval::{knn_accuracy, linear_probe, ProbeOptions, ProbeResult};
use crate::extract::extract_features;
use crate::fit::{fit, FitOptions};
use crate::pretrain::{eval_loader, load_trained, ComputeArgs, DataArgs, InputSpec};
use crate::train::{TrainOptions, Trainer};
use crate::SupervisedNet;
use engine::amp::Precision;
use engine::nn::Module;
use engine::{Device, Error, Result, Rng};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Logistic regression on frozen, standardised features.
    Linear,
    /// Cosine k-nearest-neighbour vote on frozen features.
    Knn,
    /// Train the whole encoder with a new classifier.
    Finetune,
}

#[derive(Clone, Debug, clap::Args)]
pub struct TransferArgs {
    /// A model.safetensors or checkpoint.safetensors written by pretrain.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Test data (default: the held-out split of --data, same classes).
    #[arg(long)]
    pub test_data: Option<String>,
    /// Comma-separated: linear, knn, finetune.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "linear,knn")]
    pub mode: Vec<Mode>,
    /// Neighbours for k-NN.
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    #[arg(long, default_value_t = 30)]
    pub probe_epochs: usize,
    #[arg(long, default_value_t = 0.1)]
    pub probe_lr: f64,
    #[arg(long, default_value_t = 5)]
    pub finetune_epochs: usize,
    #[arg(long, default_value_t = 0.01)]
    pub finetune_lr: f64,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Clone, Debug, Default)]
pub struct TransferReport {
    pub train_images: usize,
    pub test_images: usize,
    pub classes: Vec<String>,
    pub linear: Option<ProbeResult>,
    pub knn: Option<f64>,
    pub finetune: Option<f64>,
}

impl TransferReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "train_images": self.train_images, "test_images": self.test_images,
            "classes": self.classes,
            "linear_test_accuracy": self.linear.as_ref().map(|p| p.test_accuracy),
            "linear_train_accuracy": self.linear.as_ref().map(|p| p.train_accuracy),
            "knn_accuracy": self.knn, "finetune_accuracy": self.finetune,
        })
    }
}

/// Fine-tunes a copy of `encoder_of`'s encoder with a fresh classifier for
/// `train`'s classes, on `encoder_of`'s device; returns the accuracy on
/// `test` after the last epoch.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    encoder_of: &SupervisedNet,
    input: &InputSpec,
    train: Arc<dyn Dataset>,
    test: Arc<dyn Dataset>,
    epochs: usize,
    lr: f64,
    batch: usize,
    precision: Precision,
    workers: usize,
    seed: u64,
) -> Result<f64> {
    let mut config = encoder_of.config.clone();
    config.projector = None;
    config.num_classes = train.classes().len();
    // built and filled on the host (the fresh classifier is seeded there),
    // then moved to where the encoder lives
    let net = SupervisedNet::new(config, &mut Rng::new(seed))?;
    for (dst, src) in net.encoder.params().iter().zip(encoder_of.encoder.params()) {
        dst.set(src.get().to_device(Device::Cpu)?)?;
    }
    for (dst, src) in net
        .encoder
        .buffers()
        .iter()
        .zip(encoder_of.encoder.buffers())
    {
        dst.set(src.get().to_device(Device::Cpu)?)?;
    }
    net.to_device(encoder_of.device())?;
    let loader = Loader::with_pixel_work(
        train,
        input.train_transform(),
        LoaderOptions {
            batch,
            shuffle: true,
            drop_last: true,
            workers,
            prefetch: 4,
            seed,
        },
        PixelWork::for_training(encoder_of.device(), precision.compute_dtype()),
    )?;
    let val = eval_loader(test, input, batch, workers)?;
    let per_epoch = loader.batches_per_epoch();
    let opts = TrainOptions {
        steps: epochs * per_epoch,
        lr,
        warmup_steps: 0,
        precision,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(&net, opts, Default::default());
    if encoder_of.device() != Device::Cpu {
        // the next step queued before the last is read back
        trainer = trainer.with_overlapped_steps();
    }
    let r = fit(
        &mut trainer,
        &loader,
        Some(&val),
        &FitOptions {
            epochs,
            quiet: true,
            ..Default::default()
        },
    )?;
    r.epochs
        .last()
        .and_then(|e| e.get("val_accuracy"))
        .ok_or_else(|| Error::arg("finetune", "no epoch ran"))
}

pub fn transfer(a: &TransferArgs) -> Result<TransferReport> {
    let device = a.compute.device.open()?;
    let (precision, seed) = (a.compute.precision, a.compute.seed);
    let loaded = load_trained(&a.checkpoint, device)?;
    let train_ds = a.data.open(None, seed)?;
    let test_spec = a
        .test_data
        .clone()
        .or_else(|| datasets::test_spec(&a.data.data))
        .ok_or_else(|| {
            Error::arg(
                "transfer",
                format!("{} has no held-out split; give --test-data", a.data.data),
            )
        })?;
    let test_ds = DataArgs {
        per_class: None,
        ..a.data.clone()
    }
    .open(Some(&test_spec), seed)?;
    if train_ds.channels() != loaded.net.config.in_channels {
        return Err(Error::arg(
            "transfer",
            format!(
                "{} has {}-channel images but the encoder takes {}",
                a.data.data,
                train_ds.channels(),
                loaded.net.config.in_channels
            ),
        ));
    }
    let mut report = TransferReport {
        train_images: train_ds.len(),
        test_images: test_ds.len(),
        classes: train_ds.classes().to_vec(),
        ..Default::default()
    };
    if a.mode.iter().any(|m| *m != Mode::Finetune) {
        let extract = |ds: &Arc<dyn Dataset>| {
            extract_features(
                &loaded.net,
                &eval_loader(ds.clone(), &loaded.input, a.batch, a.data.workers)?,
                precision,
            )
        };
        let (ftr, fte) = (extract(&train_ds)?, extract(&test_ds)?);
        if a.mode.contains(&Mode::Linear) {
            let opts = ProbeOptions {
                epochs: a.probe_epochs,
                lr: a.probe_lr,
                seed,
                ..ProbeOptions::default()
            };
            report.linear = Some(linear_probe(&ftr, &fte, train_ds.classes().len(), &opts)?);
        }
        if a.mode.contains(&Mode::Knn) {
            report.knn = Some(knn_accuracy(&ftr, &fte, a.k)?);
        }
    }
    if a.mode.contains(&Mode::Finetune) {
        report.finetune = Some(finetune(
            &loaded.net,
            &loaded.input,
            train_ds,
            test_ds,
            a.finetune_epochs,
            a.finetune_lr,
            a.batch,
            precision,
            a.data.workers,
            seed,
        )?);
    }
    if let Some(p) = &a.out {
        crate::report::write_json(p, &report.to_json())?;
    }
    Ok(report)
}
