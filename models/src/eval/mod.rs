//! Evaluation of encoder features: the paper's feature metrics, k-NN and
//! linear-probe transfer accuracy, and the 2-D embedding plot.

pub mod knn;
pub mod metrics;
pub mod plot;
pub mod probe;
pub mod tsne;

pub use knn::{knn_accuracy, knn_predict};
pub use metrics::{
    dead_dims, discriminative_ratio, feature_distribution_distance, feature_metrics,
    inter_class_distance, intra_class_variation, norm_stats, redundancy, DeadDims, FeatureMetrics,
};
pub use plot::{scatter_png, Panel};
pub use probe::{
    linear_probe, tuned_linear_probe, GridPoint, ProbeOptions, ProbeResult, TuneOptions,
    TunedProbe, MAX_GRID_POINTS,
};
pub use tsne::{pca2, tsne, tsne_run, write_embedding_csv, TsneOptions, TsneResult};

use engine::{Error, Result};

/// A feature matrix with labels: row `i` of `x` (`d` values) is sample `i`.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    /// `n * d` values, row major.
    pub x: Vec<f32>,
    pub n: usize,
    pub d: usize,
    /// `n` class indices.
    pub labels: Vec<usize>,
    /// Class names (labels index them).
    pub classes: Vec<String>,
}

impl Features {
    /// A checked feature set: `x.len() == n * d`, `d >= 1`, `labels.len() == n`,
    /// every label `< classes.len()` and every value finite. `n == 0` is
    /// allowed here; the evaluations that need samples reject it.
    pub fn new(
        x: Vec<f32>,
        n: usize,
        d: usize,
        labels: Vec<usize>,
        classes: Vec<String>,
    ) -> Result<Features> {
        let f = Features {
            x,
            n,
            d,
            labels,
            classes,
        };
        f.validate("Features::new")?;
        Ok(f)
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.d..(i + 1) * self.d]
    }

    /// Checks the invariants `new` establishes; every evaluation calls it
    /// first because the fields are public and may have been edited.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if self.d == 0 {
            return Err(Error::shape(op, "features need d >= 1 dims, got d = 0"));
        }
        if self.n.checked_mul(self.d) != Some(self.x.len()) {
            return Err(Error::shape(
                op,
                format!(
                    "x has {} values but n * d = {} * {} (row major [n, d])",
                    self.x.len(),
                    self.n,
                    self.d
                ),
            ));
        }
        if self.labels.len() != self.n {
            return Err(Error::shape(
                op,
                format!("{} labels for n = {} rows", self.labels.len(), self.n),
            ));
        }
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l >= self.classes.len())
        {
            return Err(Error::arg(
                op,
                format!(
                    "label {l} of row {i} is out of range: there are {} class names",
                    self.classes.len()
                ),
            ));
        }
        if let Some(pos) = self.x.iter().position(|v| !v.is_finite()) {
            return Err(Error::arg(
                op,
                format!(
                    "feature value {} at row {}, dim {} is not finite",
                    self.x[pos],
                    pos / self.d,
                    pos % self.d
                ),
            ));
        }
        Ok(())
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }
}

/// Per-dim mean and population std (dividing by `n`) of the rows of `f`,
/// two passes in f64; all zeros when `n = 0`.
pub(crate) fn dim_moments(f: &Features) -> (Vec<f64>, Vec<f64>) {
    let mut mean = vec![0.0f64; f.d];
    for i in 0..f.n {
        mean.iter_mut()
            .zip(f.row(i))
            .for_each(|(m, &v)| *m += v as f64);
    }
    let n = f.n.max(1) as f64;
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0f64; f.d];
    for i in 0..f.n {
        for ((s, &v), m) in var.iter_mut().zip(f.row(i)).zip(&mean) {
            *s += (v as f64 - m).powi(2);
        }
    }
    let std = var.iter().map(|s| (s / n).sqrt()).collect();
    (mean, std)
}

/// Two feature sets evaluated against each other (train/test) must have the
/// same width and index the same class list, else comparing labels is
/// meaningless.
pub(crate) fn check_pair(op: &'static str, train: &Features, test: &Features) -> Result<()> {
    train.validate(op)?;
    test.validate(op)?;
    if train.d != test.d {
        return Err(Error::shape(
            op,
            format!("train features have d = {}, test d = {}", train.d, test.d),
        ));
    }
    if train.classes != test.classes {
        return Err(Error::arg(
            op,
            format!(
                "train and test label different class lists ({} vs {} names): labels must index the same classes",
                train.classes.len(),
                test.classes.len()
            ),
        ));
    }
    Ok(())
}
