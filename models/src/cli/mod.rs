//! The `slmlp` command line: typed arguments and one file per command, each
//! calling the library and printing what it did. `main` parses and
//! dispatches.

mod analyze;
mod coco_eval;
mod detect;
mod detection_data;
mod eval;
mod experiment;
mod forward;
mod plot;
mod pretrain;
mod transfer;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use engine::Result;
use serde_json::{json, Map, Value};
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
    Pretrain(crate::pretrain::PretrainArgs),
    /// Linear probe, k-NN or fine-tuning of a pretrained encoder on new classes or data.
    Transfer(crate::transfer::TransferArgs),
    /// Feature statistics (intra-class variation, discriminative ratio,
    /// redundancy, norms) and a t-SNE plot of one or more encoders.
    Analyze(crate::analyze::AnalyzeArgs),
    /// Run a checkpoint on an input batch; write logits, pooled features
    /// and optionally every layer's output (to diff against PyTorch).
    Forward(forward::ForwardArgs),
    /// The whole study: pretrain SL and SL-MLP on seen Fashion-MNIST classes,
    /// transfer to unseen classes and MNIST, analyze, write tables and plots.
    Experiment(crate::experiment::ExperimentArgs),
    /// COCO evaluation (pycocotools' protocol): the standard 12-line summary
    /// of a result file against a ground-truth file.
    CocoEval(coco_eval::CocoEvalArgs),
    /// Write the built-in detection benchmark: Fashion-MNIST items pasted on
    /// canvases, instance masks from their pixels, as COCO JSON + PNG
    /// (OUT/train from the training items, OUT/val from the test items).
    DetectionData(detection_data::DetectionDataArgs),
    /// Mask R-CNN on a detection folder: train, eval (COCO bbox + segm),
    /// predict (draw detections on an image).
    Detect(detect::DetectArgs),
    /// Acc@1 / Acc@5 of a classifier checkpoint on an image split (sizes
    /// and normalisation from the checkpoint; antialiased resize + centre
    /// crop as torchvision's classification reference).
    Eval(eval::EvalArgs),
    /// Training curves (loss, accuracy, learning rate, img/s) of one or more
    /// runs from their metrics.jsonl, as one PNG.
    Plot(plot::PlotArgs),
}

fn run(command: &Command) -> Result<()> {
    match command {
        Command::Pretrain(a) => pretrain::run(a),
        Command::Transfer(a) => transfer::run(a),
        Command::Analyze(a) => analyze::run(a),
        Command::Forward(a) => forward::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::CocoEval(a) => coco_eval::run(a),
        Command::DetectionData(a) => detection_data::run(a),
        Command::Detect(a) => detect::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Plot(a) => plot::run(a),
    }
}

/// Parses the command line, runs the command; an error is one line on
/// stderr and a failure exit code.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    crate::run_dir::set_command(command_record(&matches));
    if let Some(t) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
        {
            eprintln!("warning: --threads {t} not applied: {e}");
        }
    }
    match run(&cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The command's name (`detect train`) and every option's resolved value
/// (defaults included; global ones too), as `args.json` records them.
fn command_record(matches: &ArgMatches) -> Value {
    let mut names = Vec::new();
    let mut options = Map::new();
    let mut m = Some(matches);
    while let Some(level) = m {
        for id in level.ids() {
            let Ok(Some(raw)) = level.try_get_raw(id.as_str()) else {
                continue;
            };
            let values: Vec<Value> = raw
                .map(|v| Value::String(v.to_string_lossy().into_owned()))
                .collect();
            let value = match <[Value; 1]>::try_from(values) {
                Ok([one]) => one,
                Err(many) => Value::Array(many),
            };
            options.insert(id.as_str().to_string(), value);
        }
        m = level.subcommand().map(|(name, sub)| {
            names.push(name.to_string());
            sub
        });
    }
    json!({"name": names.join(" "), "options": options})
}
