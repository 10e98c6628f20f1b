//! `slmlp detect train | eval | predict`.

use super::preset::{apply_detect, DetectPreset};
use super::{bounded, MAX_BATCH, MAX_COUNT, MAX_THREADS};
use crate::data::MAX_IMAGE_SIZE;
use crate::detect::{
    eval, predict, train, DetectEvalArgs, DetectPredictArgs, DetectTrainArgs, MAX_DETECT_CHANNELS,
};
use crate::net::MAX_WIDTH;
use engine::Result;

#[derive(Clone, Debug, clap::Args)]
pub struct DetectArgs {
    #[command(subcommand)]
    command: DetectCommand,
}

#[derive(Clone, Debug, clap::Subcommand)]
enum DetectCommand {
    /// Train Mask R-CNN on DATA/train (annotations.json + images/) or on
    /// --train-ann FILE --train-images DIR (the COCO 2017 layout).
    Train(TrainCli),
    /// COCO bbox and segm evaluation of a trained model on DATA/<split> or
    /// on --val-ann FILE --val-images DIR.
    Eval(DetectEvalArgs),
    /// Draw a model's detections (boxes and tinted masks) on one image.
    Predict(DetectPredictArgs),
}

#[derive(Clone, Debug, clap::Args)]
struct TrainCli {
    /// A recipe's settings (docs/RECIPE.md); flags given explicitly win.
    #[arg(long, value_enum)]
    preset: Option<DetectPreset>,
    #[command(flatten)]
    args: DetectTrainArgs,
}

impl DetectArgs {
    /// `detect train`'s `--preset`, applied under the explicit flags of `m`
    /// (the `detect` matches).
    pub fn apply_preset(&mut self, m: &clap::ArgMatches) {
        if let (DetectCommand::Train(t), Some((_, tm))) = (&mut self.command, m.subcommand()) {
            if let Some(p) = t.preset {
                apply_detect(p, &mut t.args, tm);
            }
        }
    }

    #[cfg(test)]
    pub fn train_args(&self) -> Option<&DetectTrainArgs> {
        match &self.command {
            DetectCommand::Train(t) => Some(&t.args),
            _ => None,
        }
    }
}

/// The sizes on the command line within bounds.
fn check(a: &DetectArgs) -> Result<()> {
    match &a.command {
        DetectCommand::Train(TrainCli { args: t, .. }) => {
            bounded("width", t.width, 1..=MAX_WIDTH)?;
            bounded("fpn-channels", t.fpn_channels, 1..=MAX_DETECT_CHANNELS)?;
            bounded(
                "representation-size",
                t.representation_size,
                1..=MAX_DETECT_CHANNELS,
            )?;
            bounded("min-size", t.min_size, 1..=MAX_IMAGE_SIZE)?;
            bounded("max-size", t.max_size, 1..=MAX_IMAGE_SIZE)?;
            bounded("batch", t.batch, 1..=MAX_BATCH)?;
            bounded("epochs", t.epochs, 0..=MAX_COUNT)?;
            bounded("warmup-steps", t.warmup_steps, 0..=MAX_COUNT)?;
            bounded("workers", t.workers, 0..=MAX_THREADS)
        }
        DetectCommand::Eval(e) => {
            bounded("batch", e.batch, 1..=MAX_BATCH)?;
            bounded("workers", e.workers, 0..=MAX_THREADS)
        }
        DetectCommand::Predict(_) => Ok(()),
    }
}

pub fn run(a: &DetectArgs) -> Result<()> {
    check(a)?;
    match &a.command {
        DetectCommand::Train(t) => {
            let r = train(&t.args)?;
            println!(
                "done: {} steps in {:.0} s; weights in {}",
                r.steps,
                r.seconds,
                r.model_path.display()
            );
        }
        DetectCommand::Eval(e) => {
            let r = eval(e)?;
            println!("bbox:\n{}", r.bbox_summary);
            println!("segm:\n{}", r.segm_summary);
            println!(
                "{} detections on {} images -> {}, {}",
                r.detections,
                r.images,
                r.detections_path.display(),
                r.results_path.display()
            );
        }
        DetectCommand::Predict(p) => {
            let n = predict(p)?;
            println!("{n} detections drawn -> {}", p.out.display());
        }
    }
    Ok(())
}
