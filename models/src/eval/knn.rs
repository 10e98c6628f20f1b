//! Weighted k-nearest-neighbour classification on cosine similarity, the
//! usual non-parametric transfer evaluation of frozen features.

use super::{check_pair, Features};
use engine::ops::{gemm, MatRef};
use engine::{Error, Result};
use rayon::prelude::*;

/// Test rows per similarity block: the [block, train.n] similarity tile of
/// one block (10 MB for 10k train rows) stays small while the GEMM is still
/// large enough to run near peak.
const BLOCK: usize = 256;

/// Predicted class of every test row.
///
/// Rows of both sets are L2-normalised (a zero row stays zero, so its
/// similarity to everything is 0), and the similarity of test row `t` and
/// train row `r` is their dot product, the cosine similarity. The `k` train
/// rows with the highest similarity are the neighbours (equal similarities:
/// lower train index first); `k > train.n` uses all `train.n` rows. Each
/// neighbour adds its similarity to its class's score, and the prediction is
/// the class with the highest score among the classes present in the
/// neighbours (ties: lowest class index).
///
/// Errors if the sets differ in `d` or class list, `k == 0`, or the train
/// set is empty. Similarities are f32 GEMMs over blocks of test rows run in
/// parallel; each block's GEMM is single-threaded, so results do not depend
/// on the thread count.
pub fn knn_predict(train: &Features, test: &Features, k: usize) -> Result<Vec<usize>> {
    const OP: &str = "knn";
    check_pair(OP, train, test)?;
    if k == 0 {
        return Err(Error::arg(OP, "k must be >= 1, got 0"));
    }
    if train.n == 0 {
        return Err(Error::arg(OP, "the train set is empty"));
    }
    if train.n > u32::MAX as usize {
        return Err(Error::arg(
            OP,
            format!("{} train rows exceed u32 indices", train.n),
        ));
    }
    let k = k.min(train.n);
    let d = train.d;
    let tr = normalized_rows(train);
    let te = normalized_rows(test);
    let num_classes = train.classes.len();
    let mut pred = vec![0usize; test.n];
    pred.par_chunks_mut(BLOCK)
        .zip(te.par_chunks(BLOCK * d))
        .try_for_each(|(out, q)| -> Result<()> {
            let rows = out.len();
            let mut sims = vec![0.0f32; rows * train.n];
            let a = MatRef {
                data: q,
                rows,
                cols: d,
                row_stride: d,
                col_stride: 1,
            };
            // The train matrix read transposed: [d, train.n].
            let b = MatRef {
                data: &tr,
                rows: d,
                cols: train.n,
                row_stride: 1,
                col_stride: d,
            };
            gemm(&mut sims, a, b, false, 1)?;
            let mut cand: Vec<(f32, u32)> = Vec::with_capacity(train.n);
            let mut score = vec![0.0f64; num_classes];
            let mut present = vec![false; num_classes];
            for (t, p) in out.iter_mut().enumerate() {
                cand.clear();
                cand.extend(
                    sims[t * train.n..(t + 1) * train.n]
                        .iter()
                        .enumerate()
                        .map(|(r, &s)| (s, r as u32)),
                );
                let order =
                    |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
                if k < cand.len() {
                    cand.select_nth_unstable_by(k - 1, order);
                }
                score.fill(0.0);
                present.fill(false);
                // Summing in train-index order keeps the scores independent
                // of how the selection permuted the neighbours.
                let nb = &mut cand[..k];
                nb.sort_unstable_by_key(|c| c.1);
                for &(s, r) in nb.iter() {
                    let c = train.labels[r as usize];
                    score[c] += s as f64;
                    present[c] = true;
                }
                let mut best = None;
                for c in 0..num_classes {
                    if present[c] && best.is_none_or(|b: usize| score[c] > score[b]) {
                        best = Some(c);
                    }
                }
                *p = best.expect("k >= 1 neighbours give at least one class");
            }
            Ok(())
        })?;
    Ok(pred)
}

/// Fraction of test rows whose `knn_predict` class equals their label.
/// Errors as `knn_predict`, and on an empty test set.
pub fn knn_accuracy(train: &Features, test: &Features, k: usize) -> Result<f64> {
    if test.n == 0 {
        return Err(Error::arg(
            "knn",
            "the test set is empty: accuracy is undefined",
        ));
    }
    let pred = knn_predict(train, test, k)?;
    let correct = pred
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| p == l)
        .count();
    Ok(correct as f64 / test.n as f64)
}

fn normalized_rows(f: &Features) -> Vec<f32> {
    let mut out = f.x.clone();
    out.par_chunks_mut(f.d).for_each(|row| {
        let norm = row
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            let inv = (1.0 / norm) as f32;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(x: &[f32], d: usize, labels: &[usize], classes: usize) -> Features {
        Features::new(
            x.to_vec(),
            labels.len(),
            d,
            labels.to_vec(),
            (0..classes).map(|c| c.to_string()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn absent_class_does_not_win_with_negative_similarities() {
        // Every neighbour points away from the query, so class 1 scores < 0;
        // class 0 has no neighbour and must not win with its score of 0.
        let train = feats(&[-1.0, 0.0, -1.0, 0.1], 2, &[1, 1], 2);
        let test = feats(&[1.0, 0.0], 2, &[0], 2);
        assert_eq!(knn_predict(&train, &test, 2).unwrap(), vec![1]);
    }
}
