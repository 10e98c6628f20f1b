//! `slmlp plot OUT...`: the training curves of one or more runs from their
//! `metrics.jsonl` as one PNG: loss, accuracy (validation per epoch, else
//! training), learning rate and img/s, each run one colour.

use crate::eval::plot::{line_charts_png, Chart, Series};
use engine::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Points kept per curve (longer runs are thinned evenly).
const MAX_POINTS: usize = 2000;
/// Largest metrics.jsonl read.
const MAX_BYTES: u64 = 1 << 30;

#[derive(clap::Args)]
pub struct PlotArgs {
    /// Output folders of `pretrain` or `detect train` (or their
    /// metrics.jsonl files).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The PNG to write (default: FIRST_RUN/curves.png).
    #[arg(long)]
    output: Option<PathBuf>,
}

/// A run's curves: step records' loss, lr and img/s by step; the accuracy
/// by epoch.
struct Curves {
    loss: Vec<[f64; 2]>,
    lr: Vec<[f64; 2]>,
    rate: Vec<[f64; 2]>,
    accuracy: Vec<[f64; 2]>,
}

fn read_curves(path: &Path) -> Result<Curves> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if size > MAX_BYTES {
        return Err(Error::arg(
            "plot",
            format!("{}: {size} bytes is more than {MAX_BYTES}", path.display()),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut c = Curves {
        loss: vec![],
        lr: vec![],
        rate: vec![],
        accuracy: vec![],
    };
    let (mut val_acc, mut train_acc) = (vec![], vec![]);
    for (i, line) in crate::fit::whole_lines(&text).lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| Error::arg("plot", format!("{}:{}: {e}", path.display(), i + 1)))?;
        let num = |k: &str| v.get(k).and_then(Value::as_f64);
        match v.get("kind").and_then(Value::as_str) {
            Some("step") => {
                let Some(step) = num("step") else { continue };
                for (curve, key) in [
                    (&mut c.loss, "loss"),
                    (&mut c.lr, "lr"),
                    (&mut c.rate, "images_per_s"),
                ] {
                    if let Some(y) = num(key) {
                        curve.push([step, y]);
                    }
                }
            }
            Some("epoch") => {
                let Some(epoch) = num("epoch") else { continue };
                if let Some(a) = num("val_accuracy") {
                    val_acc.push([epoch, 100.0 * a]);
                }
                if let Some(a) = num("train_accuracy") {
                    train_acc.push([epoch, 100.0 * a]);
                }
            }
            _ => {}
        }
    }
    if c.loss.is_empty() {
        return Err(Error::arg(
            "plot",
            format!("{}: no step records", path.display()),
        ));
    }
    c.accuracy = if val_acc.is_empty() {
        train_acc
    } else {
        val_acc
    };
    Ok(c)
}

/// Every k-th point (the last kept) so at most `MAX_POINTS` remain.
fn thin(points: Vec<[f64; 2]>) -> Vec<[f64; 2]> {
    let k = points.len().div_ceil(MAX_POINTS).max(1);
    let last = points.len().saturating_sub(1);
    points
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % k == 0 || *i == last)
        .map(|p| p.1)
        .collect()
}

/// A run's folder and its metrics file, given either.
fn locate(r: &Path) -> (PathBuf, PathBuf) {
    if r.is_dir() {
        (r.to_path_buf(), r.join("metrics.jsonl"))
    } else {
        (r.parent().unwrap_or(r).to_path_buf(), r.to_path_buf())
    }
}

pub fn run(a: &PlotArgs) -> Result<()> {
    let mut names = Vec::new();
    let mut runs = Vec::new();
    for r in &a.runs {
        let (dir, file) = locate(r);
        if !file.is_file() {
            return Err(Error::arg(
                "plot",
                format!(
                    "{}: no such metrics.jsonl; give a run's output folder or its metrics.jsonl",
                    file.display()
                ),
            ));
        }
        runs.push(read_curves(&file)?);
        names.push(dir.display().to_string());
    }
    let chart = |title: &str, x: &str, pick: fn(&Curves) -> &Vec<[f64; 2]>| Chart {
        title: title.into(),
        x_label: x.into(),
        series: runs
            .iter()
            .zip(&names)
            .map(|(c, n)| Series {
                name: n.clone(),
                points: thin(pick(c).clone()),
            })
            .collect(),
    };
    let charts = [
        chart("loss", "step", |c| &c.loss),
        chart("accuracy %", "epoch", |c| &c.accuracy),
        chart("learning rate", "step", |c| &c.lr),
        chart("img/s", "step", |c| &c.rate),
    ];
    let output = match &a.output {
        Some(p) => p.clone(),
        None => locate(&a.runs[0]).0.join("curves.png"),
    };
    line_charts_png(&output, &charts, &names, "training curves")?;
    println!("{} runs -> {}", runs.len(), output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_cut_short_at_the_end_is_left_out_and_one_inside_is_an_error() {
        let dir = testutil::TempDir::new("plot-torn");
        let path = dir.0.join("metrics.jsonl");
        let whole = "{\"kind\":\"step\",\"step\":1,\"loss\":2.0,\"lr\":0.1}\n\
                     {\"kind\":\"step\",\"step\":2,\"loss\":1.5,\"lr\":0.1}\n";
        std::fs::write(&path, format!("{whole}{{\"kind\":\"step\",\"st")).unwrap();
        let c = read_curves(&path).unwrap();
        assert_eq!(c.loss, vec![[1.0, 2.0], [2.0, 1.5]]);

        std::fs::write(&path, format!("{{\"kind\":\"st\n{whole}")).unwrap();
        let e = read_curves(&path)
            .err()
            .expect("a torn line inside")
            .to_string();
        assert!(e.contains("metrics.jsonl:1"), "{e}");
    }
}
