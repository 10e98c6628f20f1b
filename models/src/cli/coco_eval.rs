//! `slmlp coco-eval`: pycocotools' summary of a results file.

use crate::detection::{evaluate_files, IouType};
use engine::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CocoEvalArgs {
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

pub fn run(a: &CocoEvalArgs) -> Result<()> {
    let iou = match a.iou_type {
        IouArg::Bbox => IouType::Bbox,
        IouArg::Segm => IouType::Segm,
    };
    let e = evaluate_files(&a.gt, &a.dt, iou)?;
    print!("{}", e.summary());
    Ok(())
}
