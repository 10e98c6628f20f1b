//! The evaluation layer on constructed features with known answers.

use engine::Rng;
use models::eval::plot::{class_color, BACKGROUND, PANEL, TITLE_BAND};
use models::eval::*;
use std::f64::consts::PI;
use std::path::PathBuf;
use std::time::Instant;

fn names(c: usize) -> Vec<String> {
    (0..c).map(|k| format!("class {k}")).collect()
}

fn features(rows: Vec<Vec<f64>>, labels: Vec<usize>, classes: usize) -> Features {
    let d = rows[0].len();
    let n = rows.len();
    let x = rows.into_iter().flatten().map(|v| v as f32).collect();
    Features::new(x, n, d, labels, names(classes)).unwrap()
}

/// `per_class` points around each of `classes` random centres (norm
/// `spread`, drawn from `seed`) in `d` dims, with unit Gaussian noise drawn
/// from `noise_seed`; rows interleave classes.
fn clusters(
    classes: usize,
    per_class: usize,
    d: usize,
    spread: f64,
    seed: u64,
    noise_seed: u64,
) -> Features {
    let mut rng = Rng::new(seed);
    let centres: Vec<Vec<f64>> = (0..classes)
        .map(|_| {
            let v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter().map(|x| x / norm * spread).collect()
        })
        .collect();
    let mut rng = Rng::new(noise_seed);
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..per_class {
        for (c, centre) in centres.iter().enumerate() {
            rows.push(centre.iter().map(|m| m + rng.normal()).collect());
            labels.push(c);
        }
    }
    features(rows, labels, classes)
}

/// Pearson correlation by the textbook formula, for cross-checking.
fn pearson(f: &Features, a: usize, b: usize) -> f64 {
    let n = f.n as f64;
    let col = |j: usize| (0..f.n).map(move |i| f.row(i)[j] as f64);
    let (ma, mb) = (col(a).sum::<f64>() / n, col(b).sum::<f64>() / n);
    let cov: f64 = col(a).zip(col(b)).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = col(a).map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = col(b).map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

// ---------------------------------------------------------------- metrics

#[test]
fn metrics_of_points_on_circles_are_exact() {
    // Class 0: 8 points on a radius-1 circle around (0, 0); class 1: 12
    // points on a radius-2 circle around (3, 4). Equal class weighting gives
    // intra = (1 + 2) / 2 even though class 1 has more points.
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (c, (cx, cy, r, m)) in [(0.0, 0.0, 1.0, 8), (3.0, 4.0, 2.0, 12)]
        .into_iter()
        .enumerate()
    {
        for k in 0..m {
            let t = 2.0 * PI * k as f64 / m as f64;
            rows.push(vec![cx + r * t.cos(), cy + r * t.sin()]);
            labels.push(c);
        }
    }
    let f = features(rows, labels, 2);
    let m = feature_metrics(&f).unwrap();
    assert!((m.intra_class_variation - 1.5).abs() < 1e-6, "{m:?}");
    assert!((m.inter_class_distance - 5.0).abs() < 1e-6, "{m:?}");
    assert!((m.discriminative_ratio - 5.0 / 1.5).abs() < 1e-5, "{m:?}");
    assert_eq!((m.n, m.d, m.classes), (20, 2, 2));
    assert_eq!(m.intra_class_variation, intra_class_variation(&f).unwrap());
    assert_eq!(m.discriminative_ratio, discriminative_ratio(&f).unwrap());
    assert_eq!(m, feature_metrics(&f).unwrap(), "not deterministic");
}

#[test]
fn inter_class_distance_averages_all_centroid_pairs() {
    // Centroids at (0,0), (3,0), (0,4): pair distances 3, 4, 5.
    let f = features(
        vec![
            vec![-1.0, 0.0],
            vec![1.0, 0.0],
            vec![3.0, 0.0],
            vec![0.0, 4.0],
        ],
        vec![0, 0, 1, 2],
        3,
    );
    assert!((inter_class_distance(&f).unwrap() - 4.0).abs() < 1e-12);
    // Class 0 varies by 1, the singletons by 0: mean over classes 1/3.
    assert!((intra_class_variation(&f).unwrap() - 1.0 / 3.0).abs() < 1e-12);
}

#[test]
fn norm_stats_are_mean_and_population_std() {
    let f = features(vec![vec![3.0, 4.0], vec![6.0, 8.0]], vec![0, 0], 1);
    let (mean, std) = norm_stats(&f).unwrap();
    assert!((mean - 7.5).abs() < 1e-12 && (std - 2.5).abs() < 1e-12);
}

#[test]
fn redundancy_is_one_for_affinely_related_dims() {
    let mut rng = Rng::new(1);
    let rows = (0..300)
        .map(|_| {
            let t = rng.normal();
            vec![t, -2.0 * t + 1.0, 0.5 * t - 3.0, 7.0, -t]
        })
        .collect();
    let f = features(rows, vec![0; 300], 1);
    // The constant dim is excluded; every other pair has |rho| = 1.
    assert!((redundancy(&f).unwrap() - 1.0).abs() < 1e-6);
}

#[test]
fn redundancy_is_near_zero_for_independent_permutations() {
    let (n, d) = (5000, 8);
    let mut rng = Rng::new(2);
    let mut cols: Vec<Vec<f64>> = Vec::new();
    for _ in 0..d {
        let mut c: Vec<f64> = (0..n).map(|i| i as f64).collect();
        rng.shuffle(&mut c);
        cols.push(c);
    }
    let rows = (0..n)
        .map(|i| cols.iter().map(|c| c[i]).collect())
        .collect();
    let f = features(rows, vec![0; n], 1);
    let r = redundancy(&f).unwrap();
    // E|rho| ~ sqrt(2 / (pi n)) ~ 0.011 for independent columns.
    assert!(r < 0.03, "R = {r}");
}

#[test]
fn redundancy_matches_pairwise_pearson() {
    let mut rng = Rng::new(3);
    let (n, d) = (200, 7);
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|_| {
            let z = rng.normal();
            (0..d)
                .map(|j| z * j as f64 * 0.3 + rng.normal() + 10.0)
                .collect()
        })
        .collect();
    let f = features(rows, vec![0; n], 1);
    let mut sum = 0.0;
    for a in 0..d {
        for b in a + 1..d {
            sum += pearson(&f, a, b).abs();
        }
    }
    let want = sum / (d * (d - 1) / 2) as f64;
    let got = redundancy(&f).unwrap();
    assert!((got - want).abs() < 1e-10, "{got} vs {want}");
}

#[test]
fn metrics_reject_bad_inputs() {
    let err = |r: engine::Result<f64>| r.unwrap_err().to_string();
    let empty = Features::new(vec![], 0, 3, vec![], names(2)).unwrap();
    assert!(err(intra_class_variation(&empty)).contains("no samples"));
    assert!(feature_metrics(&empty).is_err());
    let nan = Features::new(vec![1.0, f32::NAN], 1, 2, vec![0], names(1));
    assert!(nan.unwrap_err().to_string().contains("row 0, dim 1"));
    assert!(Features::new(vec![1.0; 4], 2, 2, vec![0, 2], names(2)).is_err());
    assert!(Features::new(vec![1.0; 5], 2, 2, vec![0, 1], names(2)).is_err());
    // Public fields edited after construction are checked again.
    let mut f = features(vec![vec![0.0, 1.0], vec![1.0, 0.0]], vec![0, 1], 2);
    f.x[0] = f32::INFINITY;
    assert!(err(redundancy(&f)).contains("not finite"));
    let one = features(vec![vec![0.0, 1.0], vec![1.0, 0.0]], vec![1, 1], 2);
    assert!(err(discriminative_ratio(&one)).contains("at least 2 classes"));
    let flat = features(vec![vec![1.0, 1.0], vec![2.0, 2.0]], vec![0, 1], 2);
    assert!(err(discriminative_ratio(&flat)).contains("intra-class variation is 0"));
}

// -------------------------------------------------------------------- knn

#[test]
fn knn_hand_checked_votes() {
    // Cosine similarities of q = (1, 0.2) to the train rows:
    // A 0.981 (c0), B 0.196 (c1), C 0.832 (c1), D -0.981 (c0).
    let train = features(
        vec![
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![1.0, 1.0],
            vec![-1.0, 0.0],
        ],
        vec![0, 1, 1, 0],
        2,
    );
    let test = features(vec![vec![1.0, 0.2]], vec![0], 2);
    let pred = |k| knn_predict(&train, &test, k).unwrap()[0];
    assert_eq!(pred(1), 0); // A
    assert_eq!(pred(2), 0); // A 0.981 > C 0.832
    assert_eq!(pred(3), 1); // C + B = 1.028 > A
    assert_eq!(pred(4), 1); // A + D = 0 < 1.028
    assert_eq!(pred(100), 1); // k clipped to 4
    assert_eq!(knn_accuracy(&train, &test, 2).unwrap(), 1.0);
    assert_eq!(knn_accuracy(&train, &test, 3).unwrap(), 0.0);
}

#[test]
fn knn_ties_go_to_lower_indices() {
    let train = features(vec![vec![1.0, 0.0], vec![0.0, 1.0]], vec![1, 0], 2);
    let test = features(vec![vec![1.0, 1.0]], vec![0], 2);
    // Equal similarities: the neighbour is train row 0 (class 1) ...
    assert_eq!(knn_predict(&train, &test, 1).unwrap(), vec![1]);
    // ... and equal class scores go to class 0.
    assert_eq!(knn_predict(&train, &test, 2).unwrap(), vec![0]);
}

#[test]
fn knn_separates_clusters_perfectly() {
    let train = clusters(6, 100, 32, 8.0, 10, 1);
    let test = clusters(6, 40, 32, 8.0, 10, 2);
    for k in [1, 5, 20] {
        assert_eq!(knn_accuracy(&train, &test, k).unwrap(), 1.0, "k = {k}");
    }
    // More than one block of test rows, and a thread-count-free result.
    let big = clusters(6, 100, 32, 8.0, 10, 3);
    let a = knn_predict(&train, &big, 7).unwrap();
    assert_eq!(a, knn_predict(&train, &big, 7).unwrap());
    assert_eq!(a, big.labels);
    assert!(big.n > 256);
}

#[test]
fn knn_rejects_bad_inputs() {
    let a = features(vec![vec![1.0, 0.0]], vec![0], 1);
    let b = features(vec![vec![1.0, 0.0, 0.0]], vec![0], 1);
    assert!(knn_predict(&a, &b, 1)
        .unwrap_err()
        .to_string()
        .contains("d = 2"));
    assert!(knn_predict(&a, &a, 0)
        .unwrap_err()
        .to_string()
        .contains("k must be"));
    let empty = Features::new(vec![], 0, 2, vec![], names(1)).unwrap();
    assert!(knn_predict(&empty, &a, 1)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    assert!(knn_accuracy(&a, &empty, 1).is_err());
    let other = Features::new(vec![1.0, 0.0], 1, 2, vec![0], vec!["x".into()]).unwrap();
    assert!(knn_predict(&a, &other, 1).is_err());
}

// ------------------------------------------------------------------ probe

/// Points labelled by the argmax of a random linear map, keeping only
/// those with a margin: linearly separable by construction. Features are
/// scaled and shifted far from standard to exercise the standardisation.
fn separable(n: usize, d: usize, classes: usize, seed: u64, w_seed: u64) -> Features {
    let mut wr = Rng::new(w_seed);
    let w: Vec<Vec<f64>> = (0..classes)
        .map(|_| (0..d).map(|_| wr.normal()).collect())
        .collect();
    let mut rng = Rng::new(seed);
    let (mut rows, mut labels) = (Vec::new(), Vec::new());
    while rows.len() < n {
        let x: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        let mut s: Vec<(f64, usize)> = w
            .iter()
            .enumerate()
            .map(|(c, wc)| (wc.iter().zip(&x).map(|(a, b)| a * b).sum(), c))
            .collect();
        s.sort_by(|a, b| b.0.total_cmp(&a.0));
        if s[0].0 - s[1].0 < 0.5 {
            continue;
        }
        labels.push(s[0].1);
        rows.push(
            x.iter()
                .enumerate()
                .map(|(j, v)| v * (1.0 + j as f64) * 20.0 + 100.0)
                .collect(),
        );
    }
    features(rows, labels, classes)
}

#[test]
fn linear_probe_fits_separable_data() {
    let train = separable(2000, 16, 4, 1, 7);
    let test = separable(1000, 16, 4, 2, 7);
    let opts = ProbeOptions::default();
    let r = linear_probe(&train, &test, 4, &opts).unwrap();
    assert!(r.train_accuracy >= 0.98, "{r:?}");
    assert!(r.test_accuracy >= 0.98, "{r:?}");
    assert!(r.final_loss < 0.2, "{r:?}");
    let opts_short = ProbeOptions {
        epochs: 3,
        ..opts.clone()
    };
    let again = linear_probe(&train, &test, 4, &opts_short).unwrap();
    assert_eq!(
        again,
        linear_probe(&train, &test, 4, &opts_short).unwrap(),
        "not deterministic"
    );
}

#[test]
fn linear_probe_rejects_bad_inputs() {
    let train = separable(50, 4, 3, 1, 7);
    let o = ProbeOptions::default();
    assert!(linear_probe(&train, &train, 2, &o)
        .unwrap_err()
        .to_string()
        .contains("num_classes = 2"));
    let bad = ProbeOptions {
        lr: f64::NAN,
        ..o.clone()
    };
    assert!(linear_probe(&train, &train, 3, &bad).is_err());
    let bad = ProbeOptions {
        batch: 0,
        ..o.clone()
    };
    assert!(linear_probe(&train, &train, 3, &bad).is_err());
    let empty = Features::new(vec![], 0, 4, vec![], names(3)).unwrap();
    assert!(linear_probe(&train, &empty, 3, &o).is_err());
    // A huge rate diverges: a clear error, not NaN accuracies.
    let wild = ProbeOptions {
        lr: 1e300,
        epochs: 2,
        ..o
    };
    assert!(linear_probe(&train, &train, 3, &wild)
        .unwrap_err()
        .to_string()
        .contains("lower lr"));
}

/// Overlapping Gaussian classes: the train and test draws of the same
/// centres, so a good probe is well above chance but not perfect.
fn overlapping(noise_seed: u64) -> Features {
    clusters(5, 60, 16, 2.5, 11, noise_seed)
}

#[test]
fn tuned_probe_beats_a_badly_fixed_rate() {
    let (train, test) = (overlapping(1), overlapping(2));
    let bad = ProbeOptions {
        lr: 1e-4,
        weight_decay: 0.0,
        ..ProbeOptions::default()
    };
    let fixed = linear_probe(&train, &test, 5, &bad).unwrap();
    // the bad rate is in the grid: the selection must see that it is bad
    let opts = TuneOptions {
        lrs: vec![1e-4, 0.01, 0.1, 0.3],
        ..TuneOptions::default()
    };
    let tuned = tuned_linear_probe(&train, &test, 5, &opts).unwrap();
    assert_eq!(tuned.grid.len(), 16);
    assert_ne!(tuned.lr, 1e-4, "{tuned:?}");
    assert!(
        tuned.test_accuracy >= fixed.test_accuracy,
        "tuned {tuned:?} vs fixed {fixed:?}"
    );
    assert!(
        tuned.test_accuracy >= fixed.test_accuracy + 0.05,
        "tuned {} vs fixed {}",
        tuned.test_accuracy,
        fixed.test_accuracy
    );
    // the choice is the grid's best held-out accuracy
    let best = tuned
        .grid
        .iter()
        .filter_map(|g| g.holdout_accuracy)
        .fold(0.0f64, f64::max);
    assert_eq!(tuned.holdout_accuracy, best);
    let chosen = tuned
        .grid
        .iter()
        .find(|g| g.holdout_accuracy == Some(best))
        .unwrap();
    assert_eq!(
        (chosen.lr, chosen.weight_decay),
        (tuned.lr, tuned.weight_decay)
    );
    // 20 % of each class's 60 rows held out
    assert_eq!(tuned.holdout_rows, 5 * 12);
    assert!(tuned.standardize);
    // the final probe is linear_probe with the choice
    let again = linear_probe(
        &train,
        &test,
        5,
        &ProbeOptions {
            lr: tuned.lr,
            weight_decay: tuned.weight_decay,
            ..ProbeOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        (again.train_accuracy, again.test_accuracy, again.final_loss),
        (tuned.train_accuracy, tuned.test_accuracy, tuned.final_loss)
    );
    let j = tuned.to_json();
    assert_eq!(j["test_accuracy"], tuned.test_accuracy);
    assert_eq!(j["grid"].as_array().unwrap().len(), 16);
}

#[test]
fn tuned_probe_selection_never_sees_the_test_set() {
    let train = overlapping(1);
    let opts = TuneOptions::default();
    let a = tuned_linear_probe(&train, &overlapping(2), 5, &opts).unwrap();
    // a different test set: other rows, labels scrambled
    let mut other = overlapping(3);
    other.labels.reverse();
    other.x.truncate(100 * other.d);
    other.labels.truncate(100);
    other.n = 100;
    let b = tuned_linear_probe(&train, &other, 5, &opts).unwrap();
    assert_eq!(a.grid, b.grid);
    assert_eq!((a.lr, a.weight_decay), (b.lr, b.weight_decay));
    assert_eq!(a.holdout_accuracy, b.holdout_accuracy);
    assert_eq!(a.train_accuracy, b.train_accuracy);
    assert_ne!(a.test_accuracy, b.test_accuracy);
    // another seed draws another held-out part
    let reseeded = TuneOptions {
        seed: 5,
        ..TuneOptions::default()
    };
    let c = tuned_linear_probe(&train, &overlapping(2), 5, &reseeded).unwrap();
    assert_ne!(a.grid, c.grid);
}

#[test]
fn tuned_probe_runs_without_standardisation_and_checks_options() {
    let (train, test) = (overlapping(1), overlapping(2));
    let raw = TuneOptions {
        standardize: false,
        ..TuneOptions::default()
    };
    let r = tuned_linear_probe(&train, &test, 5, &raw).unwrap();
    assert!(!r.standardize);
    assert!(r.test_accuracy > 0.5, "{r:?}");
    let bad = |o: TuneOptions| {
        tuned_linear_probe(&train, &test, 5, &o)
            .unwrap_err()
            .to_string()
    };
    let d = TuneOptions::default;
    assert!(bad(TuneOptions { lrs: vec![], ..d() }).contains("0 points"));
    assert!(bad(TuneOptions {
        lrs: vec![0.1; 17],
        ..d()
    })
    .contains("68 points"));
    assert!(bad(TuneOptions {
        holdout: 1.0,
        ..d()
    })
    .contains("holdout"));
    assert!(bad(TuneOptions {
        weight_decays: vec![-1.0],
        ..d()
    })
    .contains("weight_decay"));
    // every candidate diverges: an error, not NaN accuracies
    assert!(bad(TuneOptions {
        lrs: vec![1e300],
        ..d()
    })
    .contains("diverged"));
    // one row per class: nothing to hold out
    let single = features(vec![vec![0.0], vec![1.0]], vec![0, 1], 2);
    let e = tuned_linear_probe(&single, &single, 2, &d())
        .unwrap_err()
        .to_string();
    assert!(e.contains("held out"), "{e}");
}

// ------------------------------------------------------------------- tsne

/// Leave-one-out k-NN accuracy with Euclidean distance in the embedding.
fn loo_knn(points: &[[f64; 2]], labels: &[usize], k: usize, classes: usize) -> f64 {
    let mut correct = 0;
    for i in 0..points.len() {
        let mut d: Vec<(f64, usize)> = (0..points.len())
            .filter(|&j| j != i)
            .map(|j| {
                (
                    (points[i][0] - points[j][0]).powi(2) + (points[i][1] - points[j][1]).powi(2),
                    j,
                )
            })
            .collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut votes = vec![0; classes];
        d[..k].iter().for_each(|&(_, j)| votes[labels[j]] += 1);
        let best = (0..classes)
            .max_by_key(|&c| (votes[c], std::cmp::Reverse(c)))
            .unwrap();
        correct += (best == labels[i]) as usize;
    }
    correct as f64 / points.len() as f64
}

#[test]
fn tsne_keeps_gaussian_clusters_apart() {
    let f = clusters(5, 60, 50, 12.0, 4, 4);
    let r = tsne_run(&f, &TsneOptions::default()).unwrap();
    assert_eq!(r.embedding.len(), f.n);
    let acc = loo_knn(&r.embedding, &f.labels, 5, 5);
    assert!(acc >= 0.95, "2-D kNN accuracy {acc}");
    let kl = |t: usize| r.kl.iter().find(|e| e.0 == t).unwrap().1;
    let last = r.kl.last().unwrap();
    assert_eq!(last.0, 1000);
    assert!(last.1 < kl(250) && kl(250) < kl(0), "KL trace {:?}", r.kl);
    assert!(last.1 < 0.7 * kl(0), "KL trace {:?}", r.kl);
    // The final embedding is the one the trace ends with: centred.
    let mean: f64 = r.embedding.iter().map(|p| p[0]).sum::<f64>() / f.n as f64;
    assert!(mean.abs() < 1e-9);
}

#[test]
fn tsne_is_deterministic_and_checks_options() {
    let f = clusters(3, 20, 10, 6.0, 5, 5);
    let o = TsneOptions {
        perplexity: 10.0,
        iterations: 60,
        seed: 3,
    };
    assert_eq!(tsne(&f, &o).unwrap(), tsne(&f, &o).unwrap());
    let bad = TsneOptions {
        perplexity: 60.0,
        ..o.clone()
    };
    assert!(tsne(&f, &bad)
        .unwrap_err()
        .to_string()
        .contains("perplexity"));
    let bad = TsneOptions {
        iterations: 0,
        ..o.clone()
    };
    assert!(tsne(&f, &bad).is_err());
    let same = Features::new(vec![1.0; 60], 30, 2, vec![0; 30], names(1)).unwrap();
    assert!(tsne(&same, &o)
        .unwrap_err()
        .to_string()
        .contains("identical"));
}

#[test]
fn pca2_of_a_plane_is_an_isometry_with_decorrelated_axes() {
    // Points (a, b) put in 6-D by an orthonormal map plus an offset: the
    // top two components span that plane, so projecting onto them keeps
    // every pairwise distance, and the two coordinates are uncorrelated with
    // the first carrying more variance.
    let mut rng = Rng::new(6);
    let s = 1.0 / 2f64.sqrt();
    let (u, v) = ([s, 0.0, s, 0.0, 0.0, 0.0], [0.0, 0.6, 0.0, 0.8, 0.0, 0.0]);
    let ab: Vec<(f64, f64)> = (0..200)
        .map(|_| (5.0 * rng.normal(), rng.normal()))
        .collect();
    let rows = ab
        .iter()
        .map(|&(a, b)| (0..6).map(|j| a * u[j] + b * v[j] + j as f64).collect())
        .collect();
    let f = features(rows, vec![0; 200], 1);
    let p = pca2(&f).unwrap();
    for i in (0..200).step_by(7) {
        for j in (1..200).step_by(11) {
            let want = ((ab[i].0 - ab[j].0).powi(2) + (ab[i].1 - ab[j].1).powi(2)).sqrt();
            let got = ((p[i][0] - p[j][0]).powi(2) + (p[i][1] - p[j][1]).powi(2)).sqrt();
            assert!(
                (got - want).abs() < 1e-4,
                "pair ({i}, {j}): {got} vs {want}"
            );
        }
    }
    let mean = |k: usize| p.iter().map(|q| q[k]).sum::<f64>() / 200.0;
    assert!(mean(0).abs() < 1e-9 && mean(1).abs() < 1e-9);
    let cov = |a: usize, b: usize| p.iter().map(|q| q[a] * q[b]).sum::<f64>() / 199.0;
    assert!(cov(0, 1).abs() < 1e-8 * cov(0, 0), "{}", cov(0, 1));
    assert!(cov(0, 0) > 10.0 * cov(1, 1));
}

// ------------------------------------------------------------------- plot

fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn decode(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn scatter_png_draws_panels_points_titles_and_legend() {
    let dir = out_dir("scatter");
    let path = dir.join("embedding.png");
    let f = clusters(3, 30, 2, 10.0, 8, 8);
    let pts = |f: &Features| {
        (0..f.n)
            .map(|i| [f.row(i)[0] as f64, f.row(i)[1] as f64])
            .collect::<Vec<_>>()
    };
    let panels = vec![
        Panel {
            title: "SL".into(),
            points: pts(&f),
            labels: f.labels.clone(),
        },
        Panel {
            title: "SL-MLP".into(),
            points: pts(&f)
                .iter()
                .map(|p| [p[0] * 1e-6, -p[1] * 1e-6])
                .collect(),
            labels: f.labels.clone(),
        },
    ];
    let classes = vec!["tee".to_string(), "trouser".into(), "bag".into()];
    scatter_png(&path, &panels, &classes, "t-SNE of features").unwrap();
    let (w, h, rgb) = decode(&path);
    assert_eq!(w as usize, 2 * PANEL);
    assert!(
        h as usize > TITLE_BAND + PANEL,
        "no room for the legend: {h}"
    );
    assert_eq!(rgb.len(), (w * h * 3) as usize);
    let px = |x: usize, y: usize| {
        [
            rgb[3 * (y * w as usize + x)],
            rgb[3 * (y * w as usize + x) + 1],
            rgb[3 * (y * w as usize + x) + 2],
        ]
    };
    // Every class colour appears inside each panel's frame.
    for panel in 0..2 {
        for c in 0..3 {
            let found = (TITLE_BAND + 30..TITLE_BAND + PANEL)
                .any(|y| (panel * PANEL..(panel + 1) * PANEL).any(|x| px(x, y) == class_color(c)));
            assert!(found, "class {c} missing from panel {panel}");
        }
    }
    // The main title's glyphs are ink, centred in the title band.
    let ink = (0..TITLE_BAND)
        .flat_map(|y| (0..w as usize).map(move |x| (x, y)))
        .filter(|&(x, y)| px(x, y) == [0, 0, 0])
        .collect::<Vec<_>>();
    assert!(ink.len() > 200, "{} title pixels", ink.len());
    let mid = ink.iter().map(|p| p.0).sum::<usize>() / ink.len();
    assert!(
        (mid as i64 - w as i64 / 2).abs() < 60,
        "title centred at {mid}"
    );
    // Panel titles sit above each frame; the legend below the panels has
    // every swatch colour.
    for panel in 0..2 {
        let inked = (TITLE_BAND..TITLE_BAND + 28)
            .any(|y| (panel * PANEL..(panel + 1) * PANEL).any(|x| px(x, y) == [0, 0, 0]));
        assert!(inked, "panel {panel} has no title");
    }
    for c in 0..3 {
        let swatch = (TITLE_BAND + PANEL..h as usize)
            .any(|y| (0..w as usize).any(|x| px(x, y) == class_color(c)));
        assert!(swatch, "legend lacks class {c}");
    }
    assert_ne!(px(5, h as usize - 1), [0, 0, 0]);
    assert_eq!(px(0, 0), BACKGROUND);
    // Only the PNG is left: the temporary file was renamed.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("embedding.png")]);
}

#[test]
fn scatter_png_rejects_bad_inputs() {
    let dir = out_dir("scatter_bad");
    let path = dir.join("x.png");
    let names2 = names(2);
    let p = |points: Vec<[f64; 2]>, labels: Vec<usize>| Panel {
        title: "p".into(),
        points,
        labels,
    };
    assert!(scatter_png(&path, &[], &names2, "t").is_err());
    assert!(scatter_png(&path, &[p(vec![[0.0, 0.0]], vec![])], &names2, "t").is_err());
    assert!(scatter_png(&path, &[p(vec![[0.0, 0.0]], vec![2])], &names2, "t").is_err());
    assert!(scatter_png(&path, &[p(vec![[f64::NAN, 0.0]], vec![0])], &names2, "t").is_err());
    let missing = dir.join("no_such_dir").join("x.png");
    let e = scatter_png(&missing, &[p(vec![[0.0, 0.0]], vec![0])], &names2, "t").unwrap_err();
    assert!(e.to_string().contains("no_such_dir"), "{e}");
    assert!(!path.exists());
}

// ------------------------------------------------------------ full scale

/// The sizes the experiment runs at; prints timings (run with --release
/// -- --ignored --nocapture) and checks the answers still hold.
#[test]
#[ignore = "full-scale timings: cargo test --release -p models --test eval -- --ignored --nocapture"]
fn full_scale_timings() {
    let train = clusters(10, 1000, 512, 6.0, 20, 1);
    let test = clusters(10, 1000, 512, 6.0, 20, 2);

    let t = Instant::now();
    let m = feature_metrics(&train).unwrap();
    println!(
        "feature_metrics 10000 x 512: {:.2} s  {m:?}",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let acc = knn_accuracy(&train, &test, 20).unwrap();
    println!(
        "knn 10000 x 10000 x 512, k=20: {:.2} s  acc {acc}",
        t.elapsed().as_secs_f64()
    );
    assert!(acc > 0.95);

    let t = Instant::now();
    let r = linear_probe(&train, &test, 10, &ProbeOptions::default()).unwrap();
    println!(
        "linear_probe 10000 x 512, 30 epochs: {:.2} s  {r:?}",
        t.elapsed().as_secs_f64()
    );
    assert!(r.test_accuracy > 0.95);

    let small = clusters(10, 100, 512, 6.0, 20, 3);
    let t = Instant::now();
    let e = tsne(&small, &TsneOptions::default()).unwrap();
    println!(
        "tsne 1000 x 512, 1000 iterations: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert!(loo_knn(&e, &small.labels, 5, 10) > 0.9);

    let dir = out_dir("full_scale");
    let t = Instant::now();
    let panel = Panel {
        title: "t-SNE".into(),
        points: e,
        labels: small.labels.clone(),
    };
    scatter_png(
        &dir.join("tsne.png"),
        &[panel.clone(), panel],
        &small.classes,
        "full scale",
    )
    .unwrap();
    println!(
        "scatter_png 2 x 1000 points: {:.3} s",
        t.elapsed().as_secs_f64()
    );
}
