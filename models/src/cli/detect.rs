//! `slmlp detect train | eval | predict`.

use super::{bounded, MAX_BATCH, MAX_COUNT, MAX_THREADS};
use crate::data::MAX_IMAGE_SIZE;
use crate::detect::{eval, predict, train, DetectEvalArgs, DetectPredictArgs, DetectTrainArgs};
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
    Train(DetectTrainArgs),
    /// COCO bbox and segm evaluation of a trained model on DATA/<split> or
    /// on --val-ann FILE --val-images DIR.
    Eval(DetectEvalArgs),
    /// Draw a model's detections (boxes and tinted masks) on one image.
    Predict(DetectPredictArgs),
}

/// Widest FPN and box-head layers accepted.
const MAX_DETECT_CHANNELS: usize = 16_384;

/// The sizes on the command line within bounds.
fn check(a: &DetectArgs) -> Result<()> {
    match &a.command {
        DetectCommand::Train(t) => {
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
            let r = train(t)?;
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
