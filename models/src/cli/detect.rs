//! `slmlp detect train | eval | predict`.

use super::preset::{apply_detect, DetectPreset};
use crate::detect::{eval, predict, train, DetectEvalArgs, DetectPredictArgs, DetectTrainArgs};
use engine::Result;

#[derive(Clone, Debug, clap::Args)]
pub struct DetectArgs {
    #[command(subcommand)]
    command: DetectCommand,
}

#[derive(Clone, Debug, clap::Subcommand)]
enum DetectCommand {
    /// Train Mask R-CNN on DATA/train (annotations.json + images/).
    Train(TrainCli),
    /// COCO bbox and segm evaluation of a trained model on DATA/<split>.
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

pub fn run(a: &DetectArgs) -> Result<()> {
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
