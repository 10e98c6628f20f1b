//! slmlp: supervised pretraining with and without the MLP projector (SL vs
//! SL-MLP), transfer, feature analysis and layer-by-layer inspection.

use clap::{Parser, Subcommand};
use models::analyze::{analyze, AnalyzeArgs};
use models::detection::{evaluate_files, IouType};
use models::experiment::{experiment, ExperimentArgs};
use models::pretrain::{check_device, load_trained, pretrain, PretrainArgs};
use models::transfer::{transfer, TransferArgs};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "slmlp", version, about = "SL vs SL-MLP: supervised pretraining with and without an MLP projector, on our own engine", long_about = None)]
struct Cli {
    /// CPU threads for the compute (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain an encoder with a classifier (SL) or projector + classifier (SL-MLP).
    Pretrain(PretrainArgs),
    /// Linear probe, k-NN or fine-tuning of a pretrained encoder on new classes or data.
    Transfer(TransferArgs),
    /// Feature statistics (intra-class variation, discriminative ratio,
    /// redundancy, norms) and a t-SNE plot of one or more encoders.
    Analyze(AnalyzeArgs),
    /// Run a checkpoint on an input batch; write logits, pooled features
    /// and optionally every layer's output (to diff against PyTorch).
    Forward(ForwardArgs),
    /// The whole study: pretrain SL and SL-MLP on seen Fashion-MNIST classes,
    /// transfer to unseen classes and MNIST, analyze, write tables and plots.
    Experiment(ExperimentArgs),
    /// COCO evaluation (pycocotools' protocol): the standard 12-line summary
    /// of a result file against a ground-truth file.
    CocoEval(CocoEvalArgs),
    /// Write the built-in detection benchmark: Fashion-MNIST items pasted on
    /// canvases, instance masks from their pixels, as COCO JSON + PNG
    /// (OUT/train from the training items, OUT/val from the test items).
    DetectionData(DetectionDataArgs),
    /// Mask R-CNN on a detection folder: train, eval (COCO bbox + segm),
    /// predict (draw detections on an image).
    Detect(models::detect::DetectArgs),
}

#[derive(clap::Args)]
struct DetectionDataArgs {
    #[arg(long)]
    out: PathBuf,
    /// Training images (items from Fashion-MNIST's training split).
    #[arg(long, default_value_t = 2000)]
    train: usize,
    /// Validation images (items from Fashion-MNIST's test split).
    #[arg(long, default_value_t = 500)]
    val: usize,
    /// Canvas side in pixels.
    #[arg(long, default_value_t = 128)]
    canvas: usize,
    /// Each image gets 1..=N items.
    #[arg(long, default_value_t = 4)]
    max_objects: usize,
    /// Fashion-MNIST classes to draw items from (default all).
    #[arg(long)]
    classes: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn detection_data(a: &DetectionDataArgs) -> engine::Result<()> {
    use models::data::{
        default_fashion_mnist_dir, fashion_mnist, parse_classes, Split, FASHION_MNIST_CLASSES,
    };
    use models::detection::synth::{generate, SynthOptions};
    let names: Vec<String> = FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let classes = match &a.classes {
        Some(c) => Some(parse_classes(c, &names)?),
        None => None,
    };
    for (split, source, n, seed) in [
        ("train", Split::Train, a.train, a.seed),
        ("val", Split::Test, a.val, a.seed.wrapping_add(1)),
    ] {
        let source = fashion_mnist(&default_fashion_mnist_dir(), source)?;
        let opts = SynthOptions {
            images: n,
            canvas: (a.canvas, a.canvas),
            max_objects: a.max_objects,
            classes: classes.clone(),
            seed,
            ..SynthOptions::default()
        };
        let s = generate(&source, &opts, &a.out, split)?;
        println!(
            "{split}: {} images, {} instances ({} dropped as occluded, {} not placed) -> {}",
            s.images,
            s.instances,
            s.occluded,
            s.unplaced,
            s.annotations.display()
        );
    }
    Ok(())
}

#[derive(clap::Args)]
struct CocoEvalArgs {
    /// Ground truth: a COCO instances JSON.
    #[arg(long)]
    gt: PathBuf,
    /// Detections: a COCO results JSON (list of {image_id, category_id, bbox|segmentation, score}).
    #[arg(long)]
    dt: PathBuf,
    #[arg(long, value_enum, default_value = "bbox")]
    iou_type: IouArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IouArg {
    Bbox,
    Segm,
}

#[derive(clap::Args)]
struct ForwardArgs {
    /// model.safetensors or checkpoint.safetensors from pretrain.
    #[arg(long)]
    checkpoint: PathBuf,
    /// safetensors file with the input batch [N, C, H, W] as tensor "input".
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors: "logits", "features" and, with
    /// --dump-activations, "act.<torch module name>" for every layer.
    #[arg(long)]
    output: PathBuf,
    #[arg(long)]
    dump_activations: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn forward(a: &ForwardArgs) -> engine::Result<()> {
    check_device(&a.device)?;
    let loaded = load_trained(&a.checkpoint)?;
    let input = models::inspect::read_input(&a.input)?;
    let outputs = models::inspect::forward_outputs(&loaded.net, &input, a.dump_activations)?;
    models::inspect::write_outputs(&a.output, &outputs)?;
    for (name, t) in &outputs {
        println!("{name:<24} {:?}", t.dims());
    }
    println!("wrote {}", a.output.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(t) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
        {
            eprintln!("warning: --threads {t} not applied: {e}");
        }
    }
    let result = match &cli.command {
        Command::Pretrain(a) => pretrain(a).map(|r| {
            println!(
                "done in {:.0} s ({:.1} img/s); weights in {}",
                r.seconds,
                r.images_per_s,
                r.model_path.display()
            );
        }),
        Command::Transfer(a) => transfer(a).map(|r| {
            println!(
                "transfer to {} classes ({} train / {} test images):",
                r.classes.len(),
                r.train_images,
                r.test_images
            );
            if let Some(p) = &r.linear {
                println!(
                    "  linear probe: test {:.2}%  (train {:.2}%)",
                    100.0 * p.test_accuracy,
                    100.0 * p.train_accuracy
                );
            }
            if let Some(k) = r.knn {
                println!("  k-NN: {:.2}%", 100.0 * k);
            }
            if let Some(f) = r.finetune {
                println!("  fine-tune: {:.2}%", 100.0 * f);
            }
        }),
        Command::Analyze(a) => analyze(a).map(|_| ()),
        Command::Forward(a) => forward(a),
        Command::Experiment(a) => experiment(a).map(|_| ()),
        Command::CocoEval(a) => {
            let iou = match a.iou_type {
                IouArg::Bbox => IouType::Bbox,
                IouArg::Segm => IouType::Segm,
            };
            evaluate_files(&a.gt, &a.dt, iou).map(|e| print!("{}", e.summary()))
        }
        Command::DetectionData(a) => detection_data(a),
        Command::Detect(a) => models::detect::detect(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
