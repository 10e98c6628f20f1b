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
mod preset;
mod pretrain;
mod profile;
mod transfer;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use engine::Result;
use serde_json::{json, Map, Value};
use std::process::ExitCode;

#[derive(Parser)]
// a flag given twice takes its last value, like most CLIs
#[command(args_override_self = true)]
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
    Pretrain(pretrain::PretrainCli),
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
    /// Where a training step's time goes: W warm-up + S profiled steps on
    /// random data, a roofline table per op (calls, ms, FLOP or bytes, % of
    /// peak FLOP/s or copy bandwidth) and --out JSON.
    Profile(profile::ProfileArgs),
}

/// Bounds on the sizes and counts every command takes from the command
/// line, so that a typo is a one-line error instead of a failed allocation
/// (network sizes: `net::MAX_*`; image sizes: `data::MAX_IMAGE_SIZE`).
const MAX_BATCH: usize = 65_536;
const MAX_THREADS: usize = 4096;
/// Images per class, images to generate, neighbours, seeds, epochs.
const MAX_COUNT: usize = 100_000_000;
/// Points per class in a t-SNE plot (exact t-SNE: memory grows with the
/// square of the points).
const MAX_PLOT_PER_CLASS: usize = 10_000;

/// An error naming `--flag` unless `value` lies in `range`.
fn bounded(flag: &str, value: usize, range: std::ops::RangeInclusive<usize>) -> Result<()> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(engine::Error::arg(
            "command line",
            format!(
                "--{flag} {value} is out of range {}..={}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// `bounded` for an optional flag.
fn bounded_opt(
    flag: &str,
    value: Option<usize>,
    range: std::ops::RangeInclusive<usize>,
) -> Result<()> {
    value.map_or(Ok(()), |v| bounded(flag, v, range))
}

/// The data flags every classification command shares.
fn check_data(d: &crate::pretrain::DataArgs) -> Result<()> {
    bounded_opt("per-class", d.per_class, 1..=MAX_COUNT)?;
    bounded("workers", d.workers, 0..=MAX_THREADS)
}

fn run(command: &Command) -> Result<()> {
    match command {
        Command::Pretrain(a) => pretrain::run(&a.args),
        Command::Transfer(a) => transfer::run(a),
        Command::Analyze(a) => analyze::run(a),
        Command::Forward(a) => forward::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::CocoEval(a) => coco_eval::run(a),
        Command::DetectionData(a) => detection_data::run(a),
        Command::Detect(a) => detect::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Profile(a) => profile::run(a),
    }
}

/// The command line parsed, with any `--preset` applied under the flags
/// given explicitly; also the command and its matches (for `args.json`).
fn parse_from<I, T>(argv: I) -> std::result::Result<(Cli, clap::Command, ArgMatches), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(argv)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    match (&mut cli.command, matches.subcommand()) {
        (Command::Pretrain(p), Some((_, m))) => p.apply_preset(m),
        (Command::Detect(d), Some((_, m))) => d.apply_preset(m),
        _ => {}
    }
    Ok((cli, command, matches))
}

/// Parses the command line, runs the command; an error is one line on
/// stderr and a failure exit code.
pub fn main() -> ExitCode {
    // before any tensor: a step's freed tensors are reused, not unmapped
    // and faulted in again (docs/PERF.md, "Freed tensor memory kept")
    engine::host_memory::keep_freed_memory();
    let (cli, command, matches) = parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    crate::run_dir::set_command(command_record(&command, &matches));
    if let Err(e) = bounded_opt("threads", cli.threads, 1..=MAX_THREADS) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(t) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
        {
            eprintln!("warning: --threads {t} not applied: {e}");
        }
    }
    // The command runs on a pool thread, where its CPU ops start their
    // parts in place instead of waking another thread for each (docs/ENGINE.md,
    // "CPU threads"); a CUDA command's host thread is that one too.
    match engine::ops::CpuPool::new().and_then(|pool| pool.run(|| run(&cli.command))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The command's name (`detect train`) and every option's resolved value
/// (defaults included; global ones too), as `args.json` records them.
fn command_record(command: &clap::Command, matches: &ArgMatches) -> Value {
    let mut names = Vec::new();
    let mut options = Map::new();
    let mut at = Some((command, matches));
    while let Some((cmd, level)) = at {
        // arguments only: the ids of argument groups hold member names
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            let Ok(Some(raw)) = level.try_get_raw(id) else {
                continue;
            };
            let values: Vec<Value> = raw
                .map(|v| Value::String(v.to_string_lossy().into_owned()))
                .collect();
            let value = match <[Value; 1]>::try_from(values) {
                Ok([one]) => one,
                Err(many) => Value::Array(many),
            };
            options.insert(id.to_string(), value);
        }
        at = level.subcommand().and_then(|(name, sub)| {
            names.push(name.to_string());
            cmd.find_subcommand(name).map(|c| (c, sub))
        });
    }
    json!({"name": names.join(" "), "options": options})
}

#[cfg(test)]
mod tests {
    use super::{parse_from, Command};

    #[test]
    fn a_repeated_flag_takes_its_last_value_and_lists_still_append() {
        let cli = parse_from([
            "slmlp", "pretrain", "--out", "o", "--epochs", "3", "--epochs", "5",
        ])
        .unwrap()
        .0;
        let Command::Pretrain(p) = cli.command else {
            panic!("parsed pretrain")
        };
        assert_eq!(p.args.epochs, 5);
        let cli = parse_from(["slmlp", "analyze", "--checkpoint", "a", "--checkpoint", "b"])
            .unwrap()
            .0;
        let Command::Analyze(a) = cli.command else {
            panic!("parsed analyze")
        };
        assert_eq!(a.checkpoint.len(), 2);
    }
}
