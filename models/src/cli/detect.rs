//! `slmlp detect train | eval | predict`.

use crate::detect::{eval, predict, train, DetectEvalArgs, DetectPredictArgs, DetectTrainArgs};
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

pub fn run(a: &DetectArgs) -> Result<()> {
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
