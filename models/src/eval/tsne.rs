//! Exact t-SNE (van der Maaten & Hinton, JMLR 2008) and a deterministic PCA
//! projection, for 2-D pictures of feature spaces of up to a few thousand
//! points (time and memory are O(n^2)).

use super::plot::Panel;
use super::Features;
use engine::ops::{gemm, MatRef};
use engine::{Error, Result, Rng};
use rayon::prelude::*;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct TsneOptions {
    /// Target perplexity of each conditional distribution P(.|i); must be
    /// in (0, n).
    pub perplexity: f64,
    /// Gradient steps (>= 1); the first 250 use early exaggeration.
    pub iterations: usize,
    /// Seeds the tiny jitter added to the PCA start (see `tsne`).
    pub seed: u64,
}

impl Default for TsneOptions {
    fn default() -> Self {
        TsneOptions {
            perplexity: 30.0,
            iterations: 1000,
            seed: 0,
        }
    }
}

/// The embedding and the KL divergences seen on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct TsneResult {
    /// One 2-D point per feature row.
    pub embedding: Vec<[f64; 2]>,
    /// `(t, KL(P || Q))` after `t` gradient steps, for t = 0, 50, 100, ...
    /// and t = iterations; KL uses the un-exaggerated P throughout.
    pub kl: Vec<(usize, f64)>,
}

const EXAGGERATION: f64 = 12.0;
const EXAGGERATION_ITERS: usize = 250;
const MOMENTUM_EARLY: f64 = 0.5;
const MOMENTUM_LATE: f64 = 0.8;
const MIN_GAIN: f64 = 0.01;
const KL_EVERY: usize = 50;
/// Binary search on each row's precision: |H - ln(perplexity)| tolerance
/// and step limit (sklearn's values).
const ENTROPY_TOL: f64 = 1e-5;
const SEARCH_STEPS: usize = 100;
/// Std of the PCA start (sklearn's `init="pca"`) and of the jitter on it.
const INIT_STD: f64 = 1e-4;
const JITTER_STD: f64 = 1e-8;
/// Rows per parallel task in the O(n d) and O(n^2) passes; fixed so that
/// reductions do not depend on the thread count.
const ROWS_PER_TASK: usize = 64;

/// `tsne_run(f, opts)?.embedding`.
pub fn tsne(f: &Features, opts: &TsneOptions) -> Result<Vec<[f64; 2]>> {
    Ok(tsne_run(f, opts)?.embedding)
}

/// Exact t-SNE of the rows of `f` into 2-D (labels are not used).
///
/// - Affinities: squared Euclidean distances in f64; per row a binary search
///   on the Gaussian precision makes the entropy of P(.|i) equal
///   ln(perplexity) (within 1e-5, at most 100 steps);
///   `P_ij = (P(j|i) + P(i|j)) / 2n`, floored at f64 epsilon off the diagonal.
/// - Start: `pca2(f)` scaled so its first coordinate has std 1e-4 (sklearn's
///   PCA init), plus N(0, 1e-8) jitter from `seed` so that degenerate starts
///   (e.g. collinear) are not kept by symmetry.
/// - Optimisation: `iterations` steps of gradient descent on KL(P || Q) with
///   the Student-t kernel, gradient `4 sum_j (a P_ij - q_ij) (y_i - y_j) /
///   (1 + |y_i - y_j|^2)`; early exaggeration a = 12 and momentum 0.5 for
///   the first 250 steps, then a = 1 and momentum 0.8; per-coordinate gains
///   (+0.2 when the gradient's sign flips against the update, x0.8
///   otherwise, at least 0.01); learning rate `max(n / 12 / 4, 50)`
///   (sklearn's `learning_rate="auto"` for this gradient); the embedding is
///   re-centred after each step. All steps run: no early stopping.
///
/// Deterministic for given features and options. Errors on fewer than 2
/// rows, identical rows only, a perplexity outside (0, n), or 0 iterations.
pub fn tsne_run(f: &Features, opts: &TsneOptions) -> Result<TsneResult> {
    const OP: &str = "tsne";
    f.validate(OP)?;
    let n = f.n;
    if n < 2 {
        return Err(Error::arg(OP, format!("needs at least 2 rows, got {n}")));
    }
    if !(opts.perplexity.is_finite() && opts.perplexity > 0.0 && opts.perplexity < n as f64) {
        return Err(Error::arg(
            OP,
            format!(
                "perplexity must be in (0, n = {n}), got {} (it is the effective number of neighbours)",
                opts.perplexity
            ),
        ));
    }
    if opts.iterations == 0 {
        return Err(Error::arg(OP, "iterations must be >= 1"));
    }
    let p = joint_probabilities(f, opts.perplexity);

    let start = pca2(f)?;
    let mean0 = start.iter().map(|y| y[0]).sum::<f64>() / n as f64;
    let std0 = (start.iter().map(|y| (y[0] - mean0).powi(2)).sum::<f64>() / n as f64).sqrt();
    if std0 <= 0.0 {
        return Err(Error::arg(OP, "all rows are identical: nothing to embed"));
    }
    let mut rng = Rng::new(opts.seed);
    let mut y: Vec<f64> = start
        .iter()
        .flat_map(|s| [s[0] / std0 * INIT_STD, s[1] / std0 * INIT_STD])
        .collect();
    y.iter_mut().for_each(|v| *v += JITTER_STD * rng.normal());

    let lr = (n as f64 / EXAGGERATION / 4.0).max(50.0);
    let mut update = vec![0.0f64; 2 * n];
    let mut gains = vec![1.0f64; 2 * n];
    let mut grad = vec![0.0f64; 2 * n];
    let mut num = vec![0.0f64; n * n];
    let mut kl = Vec::new();
    for it in 0..opts.iterations {
        let z = kernel(&y, &mut num);
        if it % KL_EVERY == 0 {
            kl.push((it, kl_divergence(&p, &num, z)));
        }
        let (exaggeration, momentum) = if it < EXAGGERATION_ITERS {
            (EXAGGERATION, MOMENTUM_EARLY)
        } else {
            (1.0, MOMENTUM_LATE)
        };
        gradient(&p, &num, z, exaggeration, &y, &mut grad);
        for ((g, u), (gain, yv)) in grad
            .iter()
            .zip(update.iter_mut())
            .zip(gains.iter_mut().zip(y.iter_mut()))
        {
            *gain = if g * *u < 0.0 {
                *gain + 0.2
            } else {
                *gain * 0.8
            }
            .max(MIN_GAIN);
            *u = momentum * *u - lr * *gain * g;
            *yv += *u;
        }
        for c in 0..2 {
            let m = (0..n).map(|i| y[2 * i + c]).sum::<f64>() / n as f64;
            (0..n).for_each(|i| y[2 * i + c] -= m);
        }
    }
    let z = kernel(&y, &mut num);
    kl.push((opts.iterations, kl_divergence(&p, &num, z)));
    Ok(TsneResult {
        embedding: y.chunks(2).map(|c| [c[0], c[1]]).collect(),
        kl,
    })
}

/// Projection of the centred rows onto the top two principal directions
/// (eigenvectors of the sample covariance, largest eigenvalue first), each
/// direction's sign fixed so that its largest-magnitude component is
/// positive.
///
/// Orthogonal (block power) iteration from a fixed pseudo-random start,
/// applying the covariance implicitly as `X_c^T (X_c V)` (no d x d matrix),
/// until the 2-D subspace moves by less than 1e-12 or 300 steps; then a 2x2
/// Rayleigh-Ritz step orders the directions. Deterministic. Errors on fewer
/// than 2 rows; identical rows give all-zero projections.
pub fn pca2(f: &Features) -> Result<Vec<[f64; 2]>> {
    const OP: &str = "pca2";
    const MAX_STEPS: usize = 300;
    const TOL: f64 = 1e-12;
    f.validate(OP)?;
    if f.n < 2 {
        return Err(Error::arg(
            OP,
            format!("needs at least 2 rows, got {}", f.n),
        ));
    }
    let d = f.d;
    let mut mean = vec![0.0f64; d];
    for i in 0..f.n {
        mean.iter_mut()
            .zip(f.row(i))
            .for_each(|(m, &v)| *m += v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= f.n as f64);

    let mut rng = Rng::new(0x7CA2);
    let mut v = [
        (0..d).map(|_| rng.normal()).collect::<Vec<f64>>(),
        (0..d).map(|_| rng.normal()).collect::<Vec<f64>>(),
    ];
    orthonormalize(&mut v);
    for _ in 0..MAX_STEPS {
        let mut w = cov_times(f, &mean, &v);
        orthonormalize(&mut w);
        // How much of each new direction lies outside the old span.
        let moved = w
            .iter()
            .map(|c| 1.0 - dot(c, &v[0]).powi(2) - dot(c, &v[1]).powi(2))
            .fold(0.0f64, f64::max);
        v = w;
        if moved < TOL {
            break;
        }
    }
    let cv = cov_times(f, &mean, &v);
    let (a, b, c) = (dot(&v[0], &cv[0]), dot(&v[0], &cv[1]), dot(&v[1], &cv[1]));
    // Eigenvector of [[a, b], [b, c]] for the larger eigenvalue is
    // (cos t, sin t) with tan 2t = 2b / (a - c).
    let t = 0.5 * (2.0 * b).atan2(a - c);
    let (cs, sn) = (t.cos(), t.sin());
    let mut dirs = [
        v[0].iter()
            .zip(&v[1])
            .map(|(x, y)| cs * x + sn * y)
            .collect::<Vec<f64>>(),
        v[0].iter()
            .zip(&v[1])
            .map(|(x, y)| -sn * x + cs * y)
            .collect::<Vec<f64>>(),
    ];
    for dir in &mut dirs {
        let big = dir
            .iter()
            .copied()
            .fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        if big < 0.0 {
            dir.iter_mut().for_each(|x| *x = -*x);
        }
    }
    let shift = [dot(&mean, &dirs[0]), dot(&mean, &dirs[1])];
    Ok((0..f.n)
        .map(|i| {
            let r = f.row(i);
            [
                dot_f32(r, &dirs[0]) - shift[0],
                dot_f32(r, &dirs[1]) - shift[1],
            ]
        })
        .collect())
}

/// `C v` for both columns, with C the sample covariance (divided by n - 1):
/// `X^T (X v) - mean (sum_i (X v)_i)` on the centred data, in row chunks
/// whose partial sums are added in chunk order.
fn cov_times(f: &Features, mean: &[f64], v: &[Vec<f64>; 2]) -> [Vec<f64>; 2] {
    let d = f.d;
    let shift = [dot(mean, &v[0]), dot(mean, &v[1])];
    let partials: Vec<Vec<f64>> =
        f.x.par_chunks(ROWS_PER_TASK * d)
            .map(|rows| {
                let mut acc = vec![0.0f64; 2 * d];
                for r in rows.chunks(d) {
                    let u0 = dot_f32(r, &v[0]) - shift[0];
                    let u1 = dot_f32(r, &v[1]) - shift[1];
                    for ((a, &x), m) in acc.chunks_mut(2).zip(r).zip(mean) {
                        let xc = x as f64 - m;
                        a[0] += xc * u0;
                        a[1] += xc * u1;
                    }
                }
                acc
            })
            .collect();
    let mut out = [vec![0.0f64; d], vec![0.0f64; d]];
    for p in &partials {
        for (j, a) in p.chunks(2).enumerate() {
            out[0][j] += a[0];
            out[1][j] += a[1];
        }
    }
    let scale = 1.0 / (f.n - 1) as f64;
    out.iter_mut()
        .for_each(|o| o.iter_mut().for_each(|x| *x *= scale));
    out
}

/// Gram-Schmidt on two columns. A column that vanishes (rank < 2 data)
/// becomes a fixed unit vector orthogonal to the other, so the iteration
/// stays defined.
fn orthonormalize(v: &mut [Vec<f64>; 2]) {
    let d = v[0].len();
    let fallback = |k: usize| (0..d).map(|j| (j == k) as u8 as f64).collect::<Vec<f64>>();
    let n0 = dot(&v[0], &v[0]).sqrt();
    if n0 > 0.0 {
        v[0].iter_mut().for_each(|x| *x /= n0);
    } else {
        v[0] = fallback(0);
    }
    for k in 0..=d.min(2) {
        let p = dot(&v[0], &v[1]);
        let (a, b) = v.split_at_mut(1);
        b[0].iter_mut().zip(&a[0]).for_each(|(x, y)| *x -= p * y);
        let n1 = dot(&v[1], &v[1]).sqrt();
        if n1 > 1e-12 * n0.max(f64::MIN_POSITIVE) && n1 > 0.0 {
            v[1].iter_mut().for_each(|x| *x /= n1);
            return;
        }
        if d < 2 {
            break;
        }
        v[1] = fallback(k % d);
    }
}

/// Symmetrised input affinities P (n x n, row major, zero diagonal).
fn joint_probabilities(f: &Features, perplexity: f64) -> Vec<f64> {
    let (n, d) = (f.n, f.d);
    let x: Vec<f64> = f.x.iter().map(|&v| v as f64).collect();
    let sq: Vec<f64> = x.chunks(d).map(|r| r.iter().map(|v| v * v).sum()).collect();
    let mut dist = vec![0.0f64; n * n];
    let (xm, xt) = (
        MatRef {
            data: &x,
            rows: n,
            cols: d,
            row_stride: d,
            col_stride: 1,
        },
        MatRef {
            data: &x,
            rows: d,
            cols: n,
            row_stride: 1,
            col_stride: d,
        },
    );
    // the operands are built from x's own n x d shape: in bounds
    gemm(&mut dist, xm, xt, false, 0).expect("n x d operands of an n x d buffer");
    let target = perplexity.ln();
    let mut cond = vec![0.0f64; n * n];
    cond.par_chunks_mut(n)
        .zip(dist.par_chunks_mut(n))
        .enumerate()
        .for_each(|(i, (out, row))| {
            for (j, g) in row.iter_mut().enumerate() {
                *g = if i == j {
                    0.0
                } else {
                    (sq[i] + sq[j] - 2.0 * *g).max(0.0)
                };
            }
            conditional_row(i, row, target, out);
        });
    drop(dist);
    let mut p = vec![0.0f64; n * n];
    let denom = 2.0 * n as f64;
    p.par_chunks_mut(n).enumerate().for_each(|(i, out)| {
        for (j, o) in out.iter_mut().enumerate() {
            *o = if i == j {
                0.0
            } else {
                ((cond[i * n + j] + cond[j * n + i]) / denom).max(f64::EPSILON)
            };
        }
    });
    p
}

/// P(j|i) for one row of squared distances: a Gaussian whose precision is
/// found by bisection (doubling/halving until bracketed) so that the
/// entropy matches `target` (nats).
fn conditional_row(i: usize, dist: &[f64], target: f64, out: &mut [f64]) {
    let others = || dist.iter().enumerate().filter(move |&(j, _)| j != i);
    // Shifting by the nearest distance leaves P unchanged and keeps exp
    // from underflowing for every neighbour at once.
    let dmin = others().map(|(_, &v)| v).fold(f64::INFINITY, f64::min);
    let spread = others().map(|(_, &v)| v - dmin).sum::<f64>() / (dist.len() - 1) as f64;
    let mut beta = if spread > 0.0 { 1.0 / spread } else { 1.0 };
    let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
    for _ in 0..SEARCH_STEPS {
        let (mut sum, mut wsum) = (0.0f64, 0.0f64);
        for (j, &v) in dist.iter().enumerate() {
            let e = if j == i {
                0.0
            } else {
                (-(v - dmin) * beta).exp()
            };
            out[j] = e;
            sum += e;
            wsum += (v - dmin) * e;
        }
        let entropy = sum.ln() + beta * wsum / sum;
        let diff = entropy - target;
        if diff.abs() < ENTROPY_TOL {
            break;
        }
        if diff > 0.0 {
            lo = beta;
            beta = if hi.is_finite() {
                0.5 * (beta + hi)
            } else {
                beta * 2.0
            };
        } else {
            hi = beta;
            beta = 0.5 * (beta + lo);
        }
    }
    // Normalise what the last evaluated precision produced.
    let sum: f64 = out.iter().sum();
    out.iter_mut().for_each(|v| *v /= sum);
}

/// Student-t numerators `1 / (1 + |y_i - y_j|^2)` (zero diagonal) into
/// `num`; returns their sum Z.
fn kernel(y: &[f64], num: &mut [f64]) -> f64 {
    let n = y.len() / 2;
    let sums: Vec<f64> = num
        .par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .map(|(t, block)| {
            let mut s = 0.0f64;
            for (r, row) in block.chunks_mut(n).enumerate() {
                let i = t * ROWS_PER_TASK + r;
                let (yi0, yi1) = (y[2 * i], y[2 * i + 1]);
                for (j, o) in row.iter_mut().enumerate() {
                    let (a, b) = (yi0 - y[2 * j], yi1 - y[2 * j + 1]);
                    *o = 1.0 / (1.0 + a * a + b * b);
                }
                row[i] = 0.0;
                s += row.iter().sum::<f64>();
            }
            s
        })
        .collect();
    sums.iter().sum()
}

fn gradient(p: &[f64], num: &[f64], z: f64, exaggeration: f64, y: &[f64], grad: &mut [f64]) {
    let n = y.len() / 2;
    let inv_z = 1.0 / z;
    grad.par_chunks_mut(2).enumerate().for_each(|(i, g)| {
        let (prow, nrow) = (&p[i * n..(i + 1) * n], &num[i * n..(i + 1) * n]);
        let (yi0, yi1) = (y[2 * i], y[2 * i + 1]);
        let (mut g0, mut g1) = (0.0f64, 0.0f64);
        for j in 0..n {
            let w = (exaggeration * prow[j] - nrow[j] * inv_z) * nrow[j];
            g0 += w * (yi0 - y[2 * j]);
            g1 += w * (yi1 - y[2 * j + 1]);
        }
        g[0] = 4.0 * g0;
        g[1] = 4.0 * g1;
    });
}

/// `sum_{i != j} P_ij ln(P_ij / q_ij)` with `q_ij = num_ij / Z` (floored at
/// f64 epsilon, as sklearn does).
fn kl_divergence(p: &[f64], num: &[f64], z: f64) -> f64 {
    let n = (p.len() as f64).sqrt() as usize;
    let rows: Vec<f64> = p
        .par_chunks(n)
        .zip(num.par_chunks(n))
        .enumerate()
        .map(|(i, (pr, nr))| {
            pr.iter()
                .zip(nr)
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, (&pij, &nij))| pij * (pij / (nij / z).max(f64::EPSILON)).ln())
                .sum()
        })
        .collect();
    rows.iter().sum()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn dot_f32(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(&x, y)| x as f64 * y).sum()
}

/// Writes the points of `panels` as CSV (`panel,index,class,x,y`, one
/// row per point, the class by name) to `path`, so an embedding plotted
/// as PNG can be replotted elsewhere. Errors on a label without a name or
/// if the file cannot be written.
pub fn write_embedding_csv(path: &Path, panels: &[Panel], class_names: &[String]) -> Result<()> {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut text = String::from("panel,index,class,x,y\n");
    for p in panels {
        for (i, (xy, &l)) in p.points.iter().zip(&p.labels).enumerate() {
            let name = class_names.get(l).ok_or_else(|| {
                Error::arg(
                    "write_embedding_csv",
                    format!("{}: label {l} has no name", path.display()),
                )
            })?;
            text += &format!(
                "{},{i},{},{},{}\n",
                quote(&p.title),
                quote(name),
                xy[0],
                xy[1]
            );
        }
    }
    crate::report::write_text(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(x: Vec<f32>, n: usize, d: usize) -> Features {
        Features::new(x, n, d, vec![0; n], vec!["a".into()]).unwrap()
    }

    #[test]
    fn conditional_rows_hit_the_perplexity() {
        let mut rng = Rng::new(3);
        let (n, d) = (60, 5);
        let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32 * 3.0).collect();
        let f = feats(x, n, d);
        let p = joint_probabilities(&f, 10.0);
        let total: f64 = p.iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "P sums to {total}");
        // Re-derive one conditional row and check its entropy directly.
        let row: Vec<f64> = (0..n)
            .map(|j| {
                f.row(0)
                    .iter()
                    .zip(f.row(j))
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum()
            })
            .collect();
        let mut out = vec![0.0; n];
        conditional_row(0, &row, 10.0f64.ln(), &mut out);
        let h: f64 = -out
            .iter()
            .filter(|&&v| v > 0.0)
            .map(|v| v * v.ln())
            .sum::<f64>();
        assert!((h.exp() - 10.0).abs() < 1e-3, "perplexity {}", h.exp());
        assert_eq!(out[0], 0.0);
    }

    #[test]
    fn pca2_finds_the_dominant_axes() {
        // Variance 100 along dim 2, 4 along dim 0, 0.01 along dim 1.
        let mut rng = Rng::new(5);
        let n = 400;
        let mut x = Vec::new();
        for _ in 0..n {
            x.extend([
                (2.0 * rng.normal()) as f32,
                (0.1 * rng.normal()) as f32,
                (10.0 * rng.normal()) as f32 + 7.0,
            ]);
        }
        let f = feats(x, n, 3);
        let y = pca2(&f).unwrap();
        let m = |k: usize| (0..n).map(|i| f.row(i)[k] as f64).sum::<f64>() / n as f64;
        let (m0, m2) = (m(0), m(2));
        // Directions are +e2 then +e0 (largest component made positive), up
        // to a small tilt from sample correlations.
        for (i, p) in y.iter().enumerate() {
            let r = f.row(i);
            assert!(
                (r[2] as f64 - m2 - p[0]).abs() < 0.5,
                "row {i}: {r:?} -> {p:?}"
            );
            assert!(
                (r[0] as f64 - m0 - p[1]).abs() < 0.5,
                "row {i}: {r:?} -> {p:?}"
            );
        }
        let var = |k: usize| y.iter().map(|p| p[k] * p[k]).sum::<f64>() / (n - 1) as f64;
        assert!(var(0) > 80.0 && var(0) < 120.0, "{}", var(0));
        assert!(var(1) > 3.0 && var(1) < 5.0, "{}", var(1));
        assert_eq!(y, pca2(&f).unwrap());
    }
}
