//! `slmlp eval`: top-1 and top-5 accuracy of a classifier checkpoint on an
//! image split, as torchvision's classification reference reports them.
//! The input size and normalisation come from the checkpoint's metadata:
//! images of more than 64 px are resized (antialiased) so the shorter side
//! is 8/7 of the size and centre-cropped (256 then 224 for ImageNet),
//! smaller ones resized to the size.

use super::{bounded, check_data, MAX_BATCH};
use crate::pretrain::{eval_loader, load_trained, ComputeArgs, DataArgs};
use engine::nn::Module;
use engine::{DType, Device, Error, Result};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// model.safetensors or checkpoint.safetensors of `pretrain`.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Also write the result as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// For each dataset class, the checkpoint's index of the class of the same
/// name; an error names the dataset classes the checkpoint never saw.
fn class_map(dataset: &[String], checkpoint: &[String]) -> Result<Vec<usize>> {
    let mut missing = Vec::new();
    let map = dataset
        .iter()
        .map(|c| {
            checkpoint.iter().position(|k| k == c).unwrap_or_else(|| {
                missing.push(c.as_str());
                0
            })
        })
        .collect();
    if missing.is_empty() {
        Ok(map)
    } else {
        Err(Error::arg(
            "eval",
            format!(
                "{} of the data's classes are not among the checkpoint's {} (e.g. {:?}); select matching ones with --classes",
                missing.len(),
                checkpoint.len(),
                &missing[..missing.len().min(3)]
            ),
        ))
    }
}

/// Whether `label` is among the `k` largest of `row` (ties go to the lower
/// index; a NaN score is a miss).
fn in_top_k(row: &[f32], label: usize, k: usize) -> bool {
    let v = row[label];
    if v.is_nan() {
        return false;
    }
    let above = row
        .iter()
        .enumerate()
        .filter(|&(i, &x)| x > v || (x == v && i < label))
        .count();
    above < k
}

pub fn run(a: &EvalArgs) -> Result<()> {
    bounded("batch", a.batch, 1..=MAX_BATCH)?;
    check_data(&a.data)?;
    let device = a.compute.device.open()?;
    let loaded = load_trained(&a.checkpoint, device)?;
    let ds = a.data.open(None, a.compute.seed)?;
    if ds.channels() != loaded.input.norm.mean.len() {
        return Err(Error::arg(
            "eval",
            format!(
                "the data has {} channels, the checkpoint was trained on {}",
                ds.channels(),
                loaded.input.norm.mean.len()
            ),
        ));
    }
    let map = class_map(ds.classes(), &loaded.classes)?;
    let images = ds.len();
    let loader = eval_loader(ds, &loaded.input, a.batch, a.data.workers)?;
    let net = &loaded.net;
    net.set_training(false);
    let _ng = engine::no_grad();
    let (mut top1, mut top5, mut n) = (0usize, 0usize, 0usize);
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let x = batch
            .images
            .to_device(device)?
            .to_dtype(a.compute.precision.compute_dtype())?;
        let logits = net
            .forward(&x)?
            .to_dtype(DType::F32)?
            .to_device(Device::Cpu)?;
        let classes = logits.dims()[1];
        let scores = logits.to_vec::<f32>()?;
        for (row, y) in scores.chunks(classes).zip(batch.labels.to_vec::<i64>()?) {
            let label = map[y as usize];
            top1 += in_top_k(row, label, 1) as usize;
            top5 += in_top_k(row, label, 5) as usize;
            n += 1;
        }
    }
    if n == 0 {
        return Err(Error::arg("eval", "the data yielded no readable images"));
    }
    let (acc1, acc5) = (
        100.0 * top1 as f64 / n as f64,
        100.0 * top5 as f64 / n as f64,
    );
    println!(
        "Acc@1 {acc1:.3}  Acc@5 {acc5:.3}  ({n} images{})",
        if n < images {
            format!(", {} unreadable skipped", images - n)
        } else {
            String::new()
        }
    );
    if let Some(out) = &a.out {
        let v = json!({
            "checkpoint": a.checkpoint.display().to_string(), "data": a.data.data,
            "images": n, "acc1": acc1, "acc5": acc5,
            "input_size": loaded.input.size, "args": crate::run_dir::snapshot(),
        });
        crate::report::write_text(out, &format!("{v:#}\n"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_counts_strictly_larger_and_earlier_ties() {
        let row = [0.1, 0.5, 0.3, 0.5, 0.0, 0.2, 0.4];
        assert!(in_top_k(&row, 1, 1));
        assert!(!in_top_k(&row, 3, 1)); // tie with the earlier index 1
        assert!(in_top_k(&row, 3, 2));
        assert!(in_top_k(&row, 5, 5));
        assert!(!in_top_k(&row, 0, 5));
        assert!(!in_top_k(&[f32::NAN, 1.0], 0, 5));
    }

    #[test]
    fn classes_map_by_name() {
        let names = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let ckpt = names(&["cat", "dog", "fox"]);
        assert_eq!(
            class_map(&names(&["fox", "cat"]), &ckpt).unwrap(),
            vec![2, 0]
        );
        let e = class_map(&names(&["cow"]), &ckpt).unwrap_err().to_string();
        assert!(e.contains("\"cow\""), "{e}");
    }
}
