//! Feature-space statistics from Wang et al. (CVPR 2022) that explain why an
//! MLP projector helps transfer: intra-class variation, the discriminative
//! ratio (with its two parts), feature redundancy, dead or constant dims,
//! the spread of feature norms, and the distance between the feature
//! distributions of two data sets.
//!
//! Everything is computed in f64 with reductions in a fixed order, so a
//! feature set always gives bit-identical metrics.

use super::{dim_moments, Features};
use engine::ops::{gemm, MatRef};
use engine::{Error, Result};

/// All metrics of one feature set; see the functions of the same names for
/// the exact definitions.
///
/// The discriminative ratio is reported with its decomposition: its
/// numerator `inter_class_distance` (how far apart the class centres are)
/// and its denominator `intra_class_variation` (how spread each class is),
/// so a change of the ratio can be traced to either part.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureMetrics {
    /// The ratio's denominator.
    pub intra_class_variation: f64,
    /// The ratio's numerator.
    pub inter_class_distance: f64,
    /// `inter_class_distance / intra_class_variation`.
    pub discriminative_ratio: f64,
    /// Over the `redundancy_dims_used` dims that vary (constant ones have
    /// no correlation and are left out).
    pub redundancy: f64,
    /// Dims that vary across the rows: `d - dead_dims`.
    pub redundancy_dims_used: usize,
    /// Dead or constant dims: one value in every row (zero variance),
    /// `zero_dims` included; see the function `dead_dims`.
    pub dead_dims: usize,
    /// Dims that are exactly 0 in every row (dead units, e.g. after ReLU).
    pub zero_dims: usize,
    pub mean_norm: f64,
    pub std_norm: f64,
    pub n: usize,
    pub d: usize,
    /// Number of classes with at least one sample (the classes the
    /// class-wise metrics average over).
    pub classes: usize,
}

/// Every metric at once (centroids are computed once and shared).
pub fn feature_metrics(f: &Features) -> Result<FeatureMetrics> {
    const OP: &str = "feature_metrics";
    let stats = ClassStats::new(OP, f)?;
    let intra = stats.intra();
    let inter = stats.inter(OP)?;
    let (mean_norm, std_norm) = norm_stats(f)?;
    let (redundancy, redundancy_dims_used) = redundancy_over_varying_dims(f)?;
    let dead = dead_dims(f)?;
    Ok(FeatureMetrics {
        intra_class_variation: intra,
        inter_class_distance: inter,
        discriminative_ratio: ratio(OP, inter, intra)?,
        redundancy,
        redundancy_dims_used,
        dead_dims: dead.constant,
        zero_dims: dead.zero,
        mean_norm,
        std_norm,
        n: f.n,
        d: f.d,
        classes: stats.centroids.len(),
    })
}

/// Intra-class variation: for each class `c` with `n_c > 0` samples and
/// centroid `mu_c = mean_i x_i`, the mean Euclidean distance
/// `(1/n_c) sum_{i in c} ||x_i - mu_c||_2`; then the unweighted mean of that
/// over the non-empty classes (every class counts equally, whatever its
/// size; classes with no samples are skipped). Errors on an empty set.
pub fn intra_class_variation(f: &Features) -> Result<f64> {
    const OP: &str = "intra_class_variation";
    Ok(ClassStats::new(OP, f)?.intra())
}

/// Inter-class distance: the mean Euclidean distance `||mu_a - mu_b||_2`
/// over all unordered pairs `a < b` of distinct non-empty classes'
/// centroids. Errors unless at least 2 classes have samples.
pub fn inter_class_distance(f: &Features) -> Result<f64> {
    const OP: &str = "inter_class_distance";
    ClassStats::new(OP, f)?.inter(OP)
}

/// Discriminative ratio `phi = inter_class_distance / intra_class_variation`
/// (lower = more intra-class variation kept relative to class separation).
/// Errors unless at least 2 classes have samples, or if every sample sits
/// exactly on its class centroid (intra-class variation 0).
pub fn discriminative_ratio(f: &Features) -> Result<f64> {
    const OP: &str = "discriminative_ratio";
    let stats = ClassStats::new(OP, f)?;
    ratio(OP, stats.inter(OP)?, stats.intra())
}

/// Feature redundancy `R = (2 / (m (m - 1))) sum_{i<j} |rho_ij|`, the mean
/// absolute Pearson correlation over all pairs of feature dims, where
/// `rho_ij` is the sample correlation of dims `i` and `j` across the `n`
/// rows. Dims whose values are all identical have no defined correlation
/// and are excluded, so `m` counts the dims that vary; errors if `m < 2`.
///
/// Columns are standardised (two-pass mean and population std in f64) and
/// the correlation matrix is their Gram matrix, one f64 GEMM: O(n m^2).
/// `feature_metrics` reports `m` as `redundancy_dims_used`.
pub fn redundancy(f: &Features) -> Result<f64> {
    Ok(redundancy_over_varying_dims(f)?.0)
}

/// `redundancy` and the number `m` of dims it averaged over.
fn redundancy_over_varying_dims(f: &Features) -> Result<(f64, usize)> {
    const OP: &str = "redundancy";
    f.validate(OP)?;
    if f.n < 2 {
        return Err(Error::arg(
            OP,
            format!("correlations need at least 2 rows, got n = {}", f.n),
        ));
    }
    let (n, d) = (f.n, f.d);
    let mut mean = vec![0.0f64; d];
    let mut lo = vec![f32::INFINITY; d];
    let mut hi = vec![f32::NEG_INFINITY; d];
    for i in 0..n {
        for (j, &v) in f.row(i).iter().enumerate() {
            mean[j] += v as f64;
            lo[j] = lo[j].min(v);
            hi[j] = hi[j].max(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let varying: Vec<usize> = (0..d).filter(|&j| lo[j] < hi[j]).collect();
    let m = varying.len();
    if m < 2 {
        return Err(Error::arg(
            OP,
            format!("only {m} of {d} feature dims vary across the {n} rows; correlations need at least 2"),
        ));
    }
    let mut var = vec![0.0f64; m];
    for i in 0..n {
        let row = f.row(i);
        for (k, &j) in varying.iter().enumerate() {
            let c = row[j] as f64 - mean[j];
            var[k] += c * c;
        }
    }
    // z_ik = (x_ij - mean_j) / sqrt(sum_i (x_ij - mean_j)^2), so that
    // (Z^T Z)_kl is exactly the Pearson correlation.
    let inv: Vec<f64> = var.iter().map(|v| 1.0 / v.sqrt()).collect();
    let mut z = vec![0.0f64; n * m];
    for i in 0..n {
        let row = f.row(i);
        let out = &mut z[i * m..(i + 1) * m];
        for (k, &j) in varying.iter().enumerate() {
            out[k] = (row[j] as f64 - mean[j]) * inv[k];
        }
    }
    let mut corr = vec![0.0f64; m * m];
    let zt = MatRef {
        data: &z,
        rows: m,
        cols: n,
        row_stride: 1,
        col_stride: m,
    };
    let zm = MatRef {
        data: &z,
        rows: n,
        cols: m,
        row_stride: m,
        col_stride: 1,
    };
    gemm(&mut corr, zt, zm, false, 0)?;
    let mut sum = 0.0f64;
    for a in 0..m {
        // Rounding can push |rho| a hair above 1 for identical columns.
        sum += corr[a * m + a + 1..(a + 1) * m]
            .iter()
            .map(|r| r.abs().min(1.0))
            .sum::<f64>();
    }
    Ok((sum / (m * (m - 1) / 2) as f64, m))
}

/// Feature dims that carry no information about the rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadDims {
    /// Dims whose value is the same in every row (zero variance), the
    /// all-zero ones included.
    pub constant: usize,
    /// Dims that are exactly 0 in every row.
    pub zero: usize,
}

/// Counts the constant and the all-zero dims of `f` (exact comparisons:
/// a dim that varies by one ulp varies). Errors on an empty set.
pub fn dead_dims(f: &Features) -> Result<DeadDims> {
    const OP: &str = "dead_dims";
    f.validate(OP)?;
    if f.n == 0 {
        return Err(Error::arg(OP, "no samples (n = 0)"));
    }
    let first = f.row(0);
    let mut constant = vec![true; f.d];
    let mut zero: Vec<bool> = first.iter().map(|&v| v == 0.0).collect();
    for i in 1..f.n {
        for (j, &v) in f.row(i).iter().enumerate() {
            constant[j] &= v == first[j];
            zero[j] &= v == 0.0;
        }
    }
    Ok(DeadDims {
        constant: constant.iter().filter(|&&c| c).count(),
        zero: zero.iter().filter(|&&z| z).count(),
    })
}

/// Distance between the feature distributions of two data sets embedded by
/// the same encoder, e.g. the pretraining data (`source`) and a transfer
/// target (`target`); labels are ignored.
///
/// Wang et al. (CVPR 2022, "Revisiting the Transferability of Supervised
/// Pretraining: an MLP Perspective", arXiv 2112.00496) state that the MLP
/// projector decreases "the feature distribution distance between
/// pretraining and evaluation datasets". Their exact formula could not be
/// retrieved here (only the abstract was available to us), so this is a
/// documented standard measure instead: the 2-Wasserstein (Frechet)
/// distance between diagonal Gaussian fits of the two sets, divided by their
/// root-mean-square spread so that it does not depend on the feature scale:
///
/// `FDD = sqrt( sum_j (mu_sj - mu_tj)^2 + (s_sj - s_tj)^2 ) / sqrt( (sum_j s_sj^2 + s_tj^2) / 2 )`
///
/// with `mu_j`, `s_j` the per-dim mean and population std of each set. It is
/// 0 for sets with the same per-dim means and stds (identical sets), and a
/// set shifted by a vector `v` with unchanged spread is
/// `||v|| / sqrt(sum_j s_j^2)` away. Scaling every feature of both sets by
/// `c > 0` leaves it unchanged, so encoders with different feature norms
/// compare fairly; it is symmetric in the two sets.
///
/// Errors if the sets differ in width, either is empty, or both have zero
/// spread in every dim (the scale is undefined).
pub fn feature_distribution_distance(source: &Features, target: &Features) -> Result<f64> {
    const OP: &str = "feature_distribution_distance";
    source.validate(OP)?;
    target.validate(OP)?;
    if source.d != target.d {
        return Err(Error::shape(
            OP,
            format!(
                "source features have d = {}, target d = {}",
                source.d, target.d
            ),
        ));
    }
    if source.n == 0 || target.n == 0 {
        return Err(Error::arg(
            OP,
            format!(
                "source ({}) and target ({}) need samples",
                source.n, target.n
            ),
        ));
    }
    let (mu_s, sd_s) = dim_moments(source);
    let (mu_t, sd_t) = dim_moments(target);
    let mut dist2 = 0.0f64;
    let mut spread2 = 0.0f64;
    for j in 0..source.d {
        dist2 += (mu_s[j] - mu_t[j]).powi(2) + (sd_s[j] - sd_t[j]).powi(2);
        spread2 += (sd_s[j] * sd_s[j] + sd_t[j] * sd_t[j]) / 2.0;
    }
    if spread2 <= 0.0 {
        return Err(Error::arg(
            OP,
            "every dim is constant in both sets: the feature scale is 0, the distance undefined",
        ));
    }
    Ok((dist2 / spread2).sqrt())
}

/// Mean and population standard deviation (dividing by `n`) of the row L2
/// norms `||x_i||_2`. Errors on an empty set.
pub fn norm_stats(f: &Features) -> Result<(f64, f64)> {
    const OP: &str = "norm_stats";
    f.validate(OP)?;
    if f.n == 0 {
        return Err(Error::arg(OP, "no samples (n = 0)"));
    }
    let norms: Vec<f64> = (0..f.n)
        .map(|i| {
            f.row(i)
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let mean = norms.iter().sum::<f64>() / f.n as f64;
    let var = norms.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / f.n as f64;
    Ok((mean, var.sqrt()))
}

fn ratio(op: &'static str, inter: f64, intra: f64) -> Result<f64> {
    if intra <= 0.0 {
        return Err(Error::arg(
            op,
            "intra-class variation is 0 (every sample equals its class centroid): the ratio is undefined",
        ));
    }
    Ok(inter / intra)
}

/// Centroids of the non-empty classes, in class-index order, with the mean
/// distance of each class's samples to its centroid.
struct ClassStats {
    centroids: Vec<Vec<f64>>,
    mean_dist: Vec<f64>,
}

impl ClassStats {
    fn new(op: &'static str, f: &Features) -> Result<ClassStats> {
        f.validate(op)?;
        if f.n == 0 {
            return Err(Error::arg(op, "no samples (n = 0)"));
        }
        let c = f.classes.len();
        let mut sums = vec![vec![0.0f64; f.d]; c];
        let mut counts = vec![0usize; c];
        for i in 0..f.n {
            let s = &mut sums[f.labels[i]];
            for (a, &v) in s.iter_mut().zip(f.row(i)) {
                *a += v as f64;
            }
            counts[f.labels[i]] += 1;
        }
        for (s, &k) in sums.iter_mut().zip(&counts) {
            s.iter_mut().for_each(|a| *a /= k.max(1) as f64);
        }
        let mut dist = vec![0.0f64; c];
        for i in 0..f.n {
            let mu = &sums[f.labels[i]];
            dist[f.labels[i]] += euclid(f.row(i).iter().map(|&v| v as f64), mu);
        }
        let present: Vec<usize> = (0..c).filter(|&k| counts[k] > 0).collect();
        Ok(ClassStats {
            mean_dist: present
                .iter()
                .map(|&k| dist[k] / counts[k] as f64)
                .collect(),
            centroids: present
                .iter()
                .map(|&k| std::mem::take(&mut sums[k]))
                .collect(),
        })
    }

    /// Never empty: `new` rejects n = 0, so some class has samples.
    fn intra(&self) -> f64 {
        self.mean_dist.iter().sum::<f64>() / self.mean_dist.len() as f64
    }

    fn inter(&self, op: &'static str) -> Result<f64> {
        let k = self.centroids.len();
        if k < 2 {
            return Err(Error::arg(
                op,
                format!("inter-class distances need at least 2 classes with samples, got {k}"),
            ));
        }
        let mut sum = 0.0f64;
        for a in 0..k {
            for b in a + 1..k {
                sum += euclid(self.centroids[a].iter().copied(), &self.centroids[b]);
            }
        }
        Ok(sum / (k * (k - 1) / 2) as f64)
    }
}

fn euclid(a: impl Iterator<Item = f64>, b: &[f64]) -> f64 {
    a.zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(rows: &[&[f32]], labels: &[usize], classes: usize) -> Features {
        let d = rows[0].len();
        Features::new(
            rows.iter().flat_map(|r| r.iter().copied()).collect(),
            rows.len(),
            d,
            labels.to_vec(),
            (0..classes).map(|c| format!("c{c}")).collect(),
        )
        .unwrap()
    }

    #[test]
    fn empty_classes_are_skipped_and_sizes_do_not_weight() {
        // Class 0: 2 points at distance 1 from centroid (0,0); class 2: 4
        // points at distance 3 from (10,0); class 1 has no samples.
        let f = feats(
            &[
                &[1.0, 0.0],
                &[-1.0, 0.0],
                &[13.0, 0.0],
                &[7.0, 0.0],
                &[10.0, 3.0],
                &[10.0, -3.0],
            ],
            &[0, 0, 2, 2, 2, 2],
            3,
        );
        let m = feature_metrics(&f).unwrap();
        assert_eq!(m.classes, 2);
        assert!((m.intra_class_variation - 2.0).abs() < 1e-12);
        assert!((m.inter_class_distance - 10.0).abs() < 1e-12);
        assert!((m.discriminative_ratio - 5.0).abs() < 1e-12);
    }

    #[test]
    fn one_class_has_intra_but_no_ratio() {
        let f = feats(&[&[1.0, 0.0], &[-1.0, 0.0]], &[1, 1], 2);
        assert!((intra_class_variation(&f).unwrap() - 1.0).abs() < 1e-12);
        let e = discriminative_ratio(&f).unwrap_err().to_string();
        assert!(e.contains("at least 2 classes"), "{e}");
    }

    #[test]
    fn redundancy_excludes_constant_dims() {
        // dim 1 = 2 * dim 0, dim 2 constant: only the pair (0, 1) counts.
        let f = feats(
            &[&[1.0, 2.0, 5.0], &[2.0, 4.0, 5.0], &[4.0, 8.0, 5.0]],
            &[0, 0, 0],
            1,
        );
        assert!((redundancy(&f).unwrap() - 1.0).abs() < 1e-12);
        let g = feats(&[&[1.0, 5.0], &[2.0, 5.0]], &[0, 0], 1);
        assert!(redundancy(&g)
            .unwrap_err()
            .to_string()
            .contains("only 1 of 2"));
    }

    #[test]
    fn dead_dims_count_constant_and_all_zero_dims() {
        // dim 0 varies, dim 1 is constant 5, dim 2 is all zero, dim 3 is
        // zero except in one row, dim 4 varies by sign only.
        let f = feats(
            &[
                &[1.0, 5.0, 0.0, 0.0, 1.0],
                &[2.0, 5.0, 0.0, 3.0, -1.0],
                &[4.0, 5.0, 0.0, 0.0, 1.0],
            ],
            &[0, 1, 1],
            2,
        );
        assert_eq!(
            dead_dims(&f).unwrap(),
            DeadDims {
                constant: 2,
                zero: 1
            }
        );
        let m = feature_metrics(&f).unwrap();
        assert_eq!((m.dead_dims, m.zero_dims), (2, 1));
        // redundancy says what it used: the 3 varying dims of 5
        assert_eq!(m.redundancy_dims_used, 3);
        assert_eq!(m.redundancy_dims_used, m.d - m.dead_dims);
        // one row: every dim is constant
        let one = feats(&[&[0.0, 2.0]], &[0], 1);
        assert_eq!(
            dead_dims(&one).unwrap(),
            DeadDims {
                constant: 2,
                zero: 1
            }
        );
        let empty = Features::new(vec![], 0, 2, vec![], vec!["a".into()]).unwrap();
        assert!(dead_dims(&empty).is_err());
    }

    #[test]
    fn feature_distribution_distance_has_the_known_values() {
        // per dim: means (1, 2), stds (1, 2); sum of variances 5
        let src = feats(&[&[0.0, 0.0], &[2.0, 4.0]], &[0, 0], 1);
        assert_eq!(feature_distribution_distance(&src, &src).unwrap(), 0.0);
        // the same distribution with other labels and rows reordered
        let same = feats(&[&[2.0, 4.0], &[0.0, 0.0]], &[1, 0], 2);
        assert_eq!(feature_distribution_distance(&src, &same).unwrap(), 0.0);
        // shifted by v = (3, 4): ||v|| / sqrt(5) = sqrt(5)
        let shifted = feats(&[&[3.0, 4.0], &[5.0, 8.0]], &[0, 0], 1);
        let fdd = feature_distribution_distance(&src, &shifted).unwrap();
        assert!((fdd - 5f64.sqrt()).abs() < 1e-12, "{fdd}");
        // stds doubled about the same means: sqrt((1 + 4) / ((1+4 + 4+16) / 2))
        let wider = feats(&[&[-1.0, -2.0], &[3.0, 6.0]], &[0, 0], 1);
        let fdd = feature_distribution_distance(&src, &wider).unwrap();
        assert!((fdd - 0.4f64.sqrt()).abs() < 1e-12, "{fdd}");
        assert_eq!(fdd, feature_distribution_distance(&wider, &src).unwrap());
        // scale-invariant: both sets x 1000
        let scale = |f: &Features| {
            let mut g = f.clone();
            g.x.iter_mut().for_each(|v| *v *= 1000.0);
            g
        };
        let big = feature_distribution_distance(&scale(&src), &scale(&shifted)).unwrap();
        assert!((big - 5f64.sqrt()).abs() < 1e-9, "{big}");
    }

    #[test]
    fn feature_distribution_distance_rejects_bad_inputs() {
        let a = feats(&[&[0.0, 0.0], &[2.0, 4.0]], &[0, 0], 1);
        let b = feats(&[&[0.0], &[2.0]], &[0, 0], 1);
        let e = feature_distribution_distance(&a, &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("d = 2") && e.contains("d = 1"), "{e}");
        let empty = Features::new(vec![], 0, 2, vec![], vec!["a".into()]).unwrap();
        assert!(feature_distribution_distance(&a, &empty).is_err());
        let flat = feats(&[&[1.0, 1.0], &[1.0, 1.0]], &[0, 0], 1);
        let e = feature_distribution_distance(&flat, &flat)
            .unwrap_err()
            .to_string();
        assert!(e.contains("constant"), "{e}");
    }
}
