//! `slmlp analyze`: the paper's feature statistics of one or more pretrained
//! encoders on any split, and the 2-D (t-SNE) embedding of their features
//! side by side.

use crate::eval::{
    feature_metrics, scatter_png, tsne, write_embedding_csv, FeatureMetrics, Features, Panel,
    TsneOptions,
};
use crate::extract::extract_features;
use crate::pretrain::{eval_loader, load_trained, ComputeArgs, DataArgs};
use engine::{Error, Result, Rng};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Checkpoints to compare (model.safetensors from pretrain); repeat the flag.
    #[arg(long, required = true)]
    pub checkpoint: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Write a PNG of the t-SNE embeddings, one panel per checkpoint.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Points per class in the plot.
    #[arg(long, default_value_t = 100)]
    pub plot_per_class: usize,
    #[arg(long, default_value_t = 30.0)]
    pub perplexity: f64,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Write the metrics as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn metrics_json(m: &FeatureMetrics) -> serde_json::Value {
    serde_json::json!({
        "intra_class_variation": m.intra_class_variation,
        "inter_class_distance": m.inter_class_distance,
        "discriminative_ratio": m.discriminative_ratio,
        "redundancy": m.redundancy,
        "redundancy_dims_used": m.redundancy_dims_used,
        "dead_dims": m.dead_dims, "zero_dims": m.zero_dims,
        "mean_norm": m.mean_norm, "std_norm": m.std_norm,
        "n": m.n, "d": m.d, "classes": m.classes,
    })
}

/// At most `per_class` rows of each class, chosen with `seed`, in order.
pub fn sample_per_class(f: &Features, per_class: usize, seed: u64) -> Features {
    let mut idx: Vec<usize> = (0..f.n).collect();
    Rng::new(seed).shuffle(&mut idx);
    let mut count = vec![0usize; f.classes.len().max(1)];
    let mut keep: Vec<usize> = idx
        .into_iter()
        .filter(|&i| {
            let c = f.labels[i];
            count[c] += 1;
            count[c] <= per_class
        })
        .collect();
    keep.sort_unstable();
    Features {
        x: keep.iter().flat_map(|&i| f.row(i).to_vec()).collect(),
        n: keep.len(),
        d: f.d,
        labels: keep.iter().map(|&i| f.labels[i]).collect(),
        classes: f.classes.clone(),
    }
}

/// t-SNE of each feature set (same points per class, same seed) drawn side
/// by side at `path` (PNG), the coordinates beside it (same name, `.csv`).
pub fn embedding_plot(
    path: &Path,
    sets: &[(String, &Features)],
    per_class: usize,
    perplexity: f64,
    seed: u64,
    title: &str,
) -> Result<()> {
    let mut panels = Vec::new();
    for (name, f) in sets {
        let s = sample_per_class(f, per_class, seed);
        let points = tsne(
            &s,
            &TsneOptions {
                perplexity,
                seed,
                ..TsneOptions::default()
            },
        )?;
        panels.push(Panel {
            title: name.clone(),
            points,
            labels: s.labels.clone(),
        });
    }
    let classes = sets
        .first()
        .map(|(_, f)| f.classes.clone())
        .unwrap_or_default();
    write_embedding_csv(&path.with_extension("csv"), &panels, &classes)?;
    scatter_png(path, &panels, &classes, title)
}

pub fn analyze(a: &AnalyzeArgs) -> Result<serde_json::Value> {
    let device = a.compute.device.open()?;
    let (precision, seed) = (a.compute.precision, a.compute.seed);
    let ds = a.data.open(None, seed)?;
    let mut sets = Vec::new();
    let mut out = Vec::new();
    for path in &a.checkpoint {
        let loaded = load_trained(path, device)?;
        if ds.channels() != loaded.net.config.in_channels {
            return Err(Error::arg(
                "analyze",
                format!(
                    "{} has {}-channel images but {} takes {}",
                    a.data.data,
                    ds.channels(),
                    path.display(),
                    loaded.net.config.in_channels
                ),
            ));
        }
        let f = extract_features(
            &loaded.net,
            &eval_loader(ds.clone(), &loaded.input, a.batch, a.data.workers)?,
            precision,
        )?;
        let m = feature_metrics(&f)?;
        let name = format!(
            "{} ({})",
            loaded.net.config.method().to_uppercase(),
            path.display()
        );
        println!(
            "{name}\n  intra-class variation {:.4}  inter-class distance {:.4}  discriminative ratio {:.4}  redundancy {:.4}  feature norm {:.3} +- {:.3}  ({} images, {} dims)",
            m.intra_class_variation, m.inter_class_distance, m.discriminative_ratio, m.redundancy, m.mean_norm, m.std_norm, m.n, m.d
        );
        out.push(serde_json::json!({"checkpoint": path.display().to_string(), "method": loaded.net.config.method(), "metrics": metrics_json(&m)}));
        sets.push((loaded.net.config.method().to_uppercase(), f));
    }
    if let Some(p) = &a.plot {
        let refs: Vec<(String, &Features)> = sets.iter().map(|(n, f)| (n.clone(), f)).collect();
        embedding_plot(
            p,
            &refs,
            a.plot_per_class,
            a.perplexity,
            seed,
            &format!("t-SNE of encoder features: {}", a.data.data),
        )?;
        println!("wrote {}", p.display());
    }
    let v = serde_json::json!({"data": a.data.data, "results": out});
    if let Some(p) = &a.out {
        crate::report::write_json(p, &v)?;
    }
    Ok(v)
}
