use super::*;
use crate::{Device, Rng};

/// torchvision's `Matcher.__call__` written out column by column in f64
/// (values and thresholds given exactly), then the label rule: the
/// straightforward reference the op must equal.
fn naive(
    q: &[f64],
    g: usize,
    n: usize,
    high: f64,
    low: f64,
    allow_low: bool,
    gt_labels: Option<&[i64]>,
) -> (Vec<i64>, Vec<i64>) {
    if g == 0 {
        return (vec![-1; n], vec![0; n]);
    }
    let at = |r: usize, p: usize| q[r * n + p];
    // torch.max(dim=0) on the CPU: the first NaN, else the first maximum
    let first_max = |vals: Vec<f64>| -> (usize, f64) {
        if let Some(i) = vals.iter().position(|v| v.is_nan()) {
            return (i, f64::NAN);
        }
        let mut best = 0;
        for (i, &v) in vals.iter().enumerate() {
            if v > vals[best] {
                best = i;
            }
        }
        (best, vals[best])
    };
    let all: Vec<(usize, f64)> = (0..n)
        .map(|p| first_max((0..g).map(|r| at(r, p)).collect()))
        .collect();
    let mut m: Vec<i64> = all
        .iter()
        .map(|&(i, v)| {
            if v < low {
                -1
            } else if v >= low && v < high {
                -2
            } else {
                i as i64
            }
        })
        .collect();
    if allow_low && n > 0 {
        for r in 0..g {
            let (_, top) = first_max((0..n).map(|p| at(r, p)).collect());
            for p in 0..n {
                if at(r, p) == top {
                    m[p] = all[p].0 as i64;
                }
            }
        }
    }
    let labels = m
        .iter()
        .map(|&j| match j {
            -1 => 0,
            -2 => -1,
            j => gt_labels.map_or(1, |l| l[j as usize]),
        })
        .collect();
    (m, labels)
}

fn vec_i64(t: &Tensor) -> Vec<i64> {
    t.to_vec::<i64>().unwrap()
}

/// A random [g, n] quality matrix on a 1/16 grid of [0, 1] (ties in rows
/// and columns), with about `nan` of its entries NaN.
fn random_quality(rng: &mut Rng, g: usize, n: usize, nan: f64) -> Vec<f64> {
    (0..g * n)
        .map(|_| {
            if rng.uniform() < nan {
                f64::NAN
            } else {
                (rng.uniform() * 16.0).floor() / 16.0
            }
        })
        .collect()
}

#[test]
fn match_boxes_equals_the_straightforward_matcher_on_random_inputs() {
    let mut rng = Rng::new(11);
    let rules = [
        MatchRule::RPN,
        MatchRule::ROI_HEADS,
        MatchRule {
            high_threshold: 0.75,
            low_threshold: 0.25,
            allow_low_quality_matches: false,
        },
        MatchRule {
            high_threshold: 0.5,
            low_threshold: 0.5,
            allow_low_quality_matches: true,
        },
    ];
    let mut cases = 0;
    for (g, n) in [
        (0, 7),
        (3, 0),
        (0, 0),
        (1, 1),
        (1, 9),
        (4, 13),
        (7, 40),
        (16, 300),
    ] {
        for nan in [0.0, 0.05] {
            let q = random_quality(&mut rng, g, n, nan);
            let gl: Vec<i64> = (0..g).map(|_| 1 + rng.below(90) as i64).collect();
            for dtype in [DType::F64, DType::F32, DType::BF16, DType::F16] {
                // every value of the 1/16 grid and the rules' thresholds are
                // exact in all four dtypes
                let qt = Tensor::from_vec(q.clone(), &[g, n])
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let glt = Tensor::from_vec(gl.clone(), &[g]).unwrap();
                for rule in rules {
                    for labels in [None, Some(&gl[..])] {
                        let want = naive(
                            &q,
                            g,
                            n,
                            rule.high_threshold,
                            rule.low_threshold,
                            rule.allow_low_quality_matches,
                            labels,
                        );
                        let (m, l) = match_boxes(&qt, rule, labels.map(|_| &glt)).unwrap();
                        assert_eq!((m.dims(), l.dims()), (&[n][..], &[n][..]));
                        assert_eq!((m.dtype(), l.dtype()), (DType::I64, DType::I64));
                        let label = format!("[{g},{n}] nan {nan} {dtype:?} {rule:?}");
                        assert_eq!(vec_i64(&m), want.0, "matches {label}");
                        assert_eq!(vec_i64(&l), want.1, "labels {label}");
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 8 * 2 * 4 * 4 * 2);
}

#[test]
fn match_boxes_hand_case_covers_every_rule() {
    // 3 gt x 6 predictions. Column 0: 0.9 (gt 1) foreground; column 1: 0.5
    // between; column 2: 0.1 below; gt 2's best (0.2, columns 2 and 4, a
    // tie in its row) is low: with low-quality matches columns 2 and 4 get
    // their own best gt back (column 2: gt 2; column 4: gt 0 and 2 tie at
    // 0.2, the first wins: gt 0); column 5 has a NaN (gt 1): NaN wins the
    // column and is neither below nor between, so it matches gt 1.
    let q = [
        0.3,
        0.5,
        0.05,
        0.0,
        0.2,
        0.1, //
        0.9,
        0.4,
        0.0,
        0.1,
        0.1,
        f64::NAN, //
        0.0,
        0.1,
        0.2,
        0.0,
        0.2,
        0.1,
    ];
    let t = Tensor::from_vec(q.to_vec(), &[3, 6]).unwrap();
    let (m, l) = match_boxes(&t, MatchRule::RPN, None).unwrap();
    // gt 0's row max 0.5 is column 1 (between -> gt 0, its column best);
    // gt 1's row max is NaN (matches nothing); gt 2 matches only through
    // its low-quality best
    assert_eq!(vec_i64(&m), [1, 0, 2, -1, 0, 1]);
    assert_eq!(vec_i64(&l), [1, 1, 1, 0, 1, 1]);
    let (m, l) = match_boxes(&t, MatchRule::ROI_HEADS, None).unwrap();
    assert_eq!(vec_i64(&m), [1, 0, -1, -1, -1, 1]);
    assert_eq!(vec_i64(&l), [1, 1, 0, 0, 0, 1]);
    let gl = Tensor::from_vec(vec![7i64, 3, 5], &[3]).unwrap();
    let (_, l) = match_boxes(&t, MatchRule::RPN, Some(&gl)).unwrap();
    assert_eq!(vec_i64(&l), [3, 7, 5, 0, 7, 3]);
    let between = MatchRule {
        high_threshold: 0.7,
        low_threshold: 0.3,
        allow_low_quality_matches: false,
    };
    let (m, l) = match_boxes(&t, between, Some(&gl)).unwrap();
    assert_eq!(vec_i64(&m), [1, -2, -1, -1, -1, 1]);
    assert_eq!(vec_i64(&l), [3, -1, 0, 0, 0, 3]);
}

#[test]
fn match_boxes_compares_in_the_quality_dtype() {
    // 0.7 rounds to 0.69921875 in bf16: that quality is foreground in bf16
    // (the threshold rounds too, as torch casts the scalar) but between
    // when the same value is compared in f32 against 0.7f32
    let v = half::bf16::from_f64(0.7).to_f64();
    assert!(v < 0.7);
    let q = Tensor::from_vec(vec![v, 0.2], &[1, 2]).unwrap();
    let rule = MatchRule {
        allow_low_quality_matches: false,
        ..MatchRule::RPN
    };
    let m = |dtype| {
        vec_i64(
            &match_boxes(&q.to_dtype(dtype).unwrap(), rule, None)
                .unwrap()
                .0,
        )
    };
    assert_eq!(m(DType::BF16), [0, -1]);
    assert_eq!(m(DType::F32), [-2, -1]);
    assert_eq!(m(DType::F64), [-2, -1]);
}

#[test]
fn match_boxes_of_no_gt_is_all_background() {
    for labels in [None, Some(Tensor::zeros(&[0], DType::I64))] {
        let q = Tensor::zeros(&[0, 5], DType::F32);
        let (m, l) = match_boxes(&q, MatchRule::RPN, labels.as_ref()).unwrap();
        assert_eq!(vec_i64(&m), [-1; 5]);
        assert_eq!(vec_i64(&l), [0; 5]);
    }
}

#[test]
fn match_boxes_rejects_bad_input() {
    let err = |r: Result<(Tensor, Tensor)>| r.unwrap_err().to_string();
    let q = Tensor::zeros(&[2, 3], DType::F32);
    let e = err(match_boxes(
        &Tensor::zeros(&[6], DType::F32),
        MatchRule::RPN,
        None,
    ));
    assert!(e.contains("[G, N]"), "{e}");
    let e = err(match_boxes(
        &Tensor::zeros(&[2, 3], DType::I64),
        MatchRule::RPN,
        None,
    ));
    assert!(e.contains("float"), "{e}");
    for (h, l) in [(0.3, 0.7), (f64::NAN, 0.3), (0.7, f64::NAN)] {
        let rule = MatchRule {
            high_threshold: h,
            low_threshold: l,
            allow_low_quality_matches: true,
        };
        let e = err(match_boxes(&q, rule, None));
        assert!(e.contains("low_threshold"), "{e}");
    }
    let e = err(match_boxes(
        &q,
        MatchRule::RPN,
        Some(&Tensor::zeros(&[3], DType::I64)),
    ));
    assert!(e.contains("[G] = [2]"), "{e}");
    let e = err(match_boxes(
        &q,
        MatchRule::RPN,
        Some(&Tensor::zeros(&[2, 1], DType::I64)),
    ));
    assert!(e.contains("[G] = [2]"), "{e}");
    let e = err(match_boxes(
        &q,
        MatchRule::RPN,
        Some(&Tensor::zeros(&[2], DType::F32)),
    ));
    assert!(e.contains("i64"), "{e}");
    // the bounds are checked on the shape alone: an expanded (stride 0)
    // view of one element has the shape without the memory
    let one = Tensor::zeros(&[1, 1], DType::F32);
    for shape in [[MATCH_MAX_GT + 1, 1], [1 << 16, (1 << 15) + 1]] {
        let big = one.expand(&shape).unwrap();
        let e = err(match_boxes(&big, MatchRule::RPN, None));
        assert!(e.contains("too large"), "{e}");
    }
}

/// Labels [n]: positives (1 or a class) at `pos`, ignored (-1) at `ign`,
/// the rest negatives (0).
fn labels(n: usize, pos: &[usize], ign: &[usize]) -> Tensor {
    let mut v = vec![0i64; n];
    for &i in pos {
        v[i] = 1 + (i % 3) as i64;
    }
    for &i in ign {
        v[i] = -1 - (i % 2) as i64;
    }
    Tensor::from_vec(v, &[n]).unwrap()
}

/// (positives, negatives, counts) of a sample as vectors.
fn sample(l: &Tensor, batch: usize, frac: f64, seed: u64) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let s = sample_balanced(l, batch, frac, seed).unwrap();
    (
        vec_i64(&s.positive),
        vec_i64(&s.negative),
        vec_i64(&s.counts),
    )
}

#[test]
fn sample_key_is_splitmix64() {
    // seed 0 starts splitmix64's stream at state 0: its first output is the
    // published 0xe220a8397b1dcdaf
    assert_eq!(sample_key(0, 0), 0xe220_a839_7b1d_cdaf);
    assert_eq!(mix64(0), 0);
    assert_ne!(sample_key(0, 1), sample_key(1, 0));
}

#[test]
fn sample_balanced_counts_follow_torchvision() {
    // (n, positives, ignored, batch, fraction) -> torchvision's counts
    let pos: Vec<usize> = (0..40).map(|i| 3 * i + 1).collect();
    let ign: Vec<usize> = (0..30).map(|i| 3 * i + 2).collect();
    let l = labels(200, &pos, &ign); // 40 positives, 30 ignored, 130 negatives
    for (batch, frac, want_pos, want_neg) in [
        (256, 0.5, 40, 130), // few of both: everything eligible
        (64, 0.25, 16, 48),
        (64, 0.5, 32, 32),
        (100, 0.7, 40, 60), // int(70) > 40 positives: the rest negatives
        (10, 0.33, 3, 7),   // int(3.3) = 3
        (7, 0.0, 0, 7),
        (7, 1.0, 7, 0),
        (0, 0.5, 0, 0),
    ] {
        let (p, ng, c) = sample(&l, batch, frac, 3);
        assert_eq!(c, [want_pos, want_neg], "batch {batch} frac {frac}");
        let target = (batch as f64 * frac) as usize;
        assert_eq!(p.len(), target.min(200));
        assert_eq!(ng.len(), batch.min(200));
        let lv = vec_i64(&l);
        assert!(p[..want_pos as usize].iter().all(|&i| lv[i as usize] >= 1));
        assert!(ng[..want_neg as usize].iter().all(|&i| lv[i as usize] == 0));
    }
    // no positives at all: the negatives fill the batch
    let (_, _, c) = sample(&labels(50, &[], &[0, 1]), 16, 0.5, 1);
    assert_eq!(c, [0, 16]);
    // empty labels
    let (p, ng, c) = sample(&labels(0, &[], &[]), 16, 0.5, 1);
    assert_eq!((p.len(), ng.len(), c), (0, 0, vec![0, 0]));
}

#[test]
fn sample_balanced_is_increasing_then_the_sentinel() {
    let n = 1000;
    let pos: Vec<usize> = (0..n).filter(|i| i % 7 == 0).collect();
    let l = labels(n, &pos, &[5, 6, 12, 999]);
    for seed in 0..20 {
        let (p, ng, c) = sample(&l, 256, 0.25, seed);
        for (v, k) in [(&p, c[0]), (&ng, c[1])] {
            let k = k as usize;
            assert!(v[..k].windows(2).all(|w| w[0] < w[1]), "{v:?}");
            assert!(v[..k].iter().all(|&i| (0..n as i64).contains(&i)));
            assert!(v[k..].iter().all(|&i| i == n as i64), "{v:?}");
        }
        assert_eq!(c, [64, 192]);
    }
}

#[test]
fn sample_balanced_same_seed_same_result_other_seed_differs() {
    let pos: Vec<usize> = (0..300).map(|i| 2 * i).collect();
    let l = labels(5000, &pos, &[1, 3]);
    let a = sample(&l, 256, 0.5, 42);
    assert_eq!(a, sample(&l, 256, 0.5, 42));
    for other in [43, 0, u64::MAX] {
        let b = sample(&l, 256, 0.5, other);
        assert_ne!(a.0, b.0, "positives of seeds 42 and {other}");
        assert_ne!(a.1, b.1, "negatives of seeds 42 and {other}");
    }
}

#[test]
fn sample_balanced_takes_every_eligible_element_when_the_batch_allows() {
    let pos = [3, 9, 10, 31];
    let ign = [0, 1, 2, 20];
    let l = labels(32, &pos, &ign);
    for seed in [0, 1, 77] {
        let (p, ng, c) = sample(&l, 64, 0.5, seed);
        assert_eq!(c, [4, 24]);
        assert_eq!(p[..4], [3, 9, 10, 31]);
        let want: Vec<i64> = (0..32)
            .filter(|i| !pos.contains(i) && !ign.contains(i))
            .map(|i| i as i64)
            .collect();
        assert_eq!(ng[..24], want[..]);
        assert!(p[4..].iter().chain(&ng[24..]).all(|&i| i == 32));
        assert_eq!((p.len(), ng.len()), (32, 32));
    }
}

/// Over 2000 consecutive seeds, each of 10 positives is chosen 4 times in
/// 10 (4 of 10 per sample) and each of 30 negatives 4 times in 30: the
/// count of each must lie within 5 binomial standard deviations of its
/// mean (bounds fixed here, before any run: sd = sqrt(2000 p (1 - p)) =
/// 21.9 and 15.2). A biased hash (e.g. one favouring low indices, or a key
/// that ignores the seed) fails.
#[test]
fn sample_balanced_is_uniform_over_seeds() {
    let pos: Vec<usize> = (0..10).map(|i| 4 * i + 2).collect();
    let ign: Vec<usize> = vec![1, 5, 9, 13, 17, 21, 25, 29, 33, 37];
    let l = labels(50, &pos, &ign); // 10 positives, 10 ignored, 30 negatives
    let seeds = 2000;
    let mut hits = [0usize; 50];
    for seed in 0..seeds {
        let (p, ng, c) = sample(&l, 8, 0.5, seed);
        assert_eq!(c, [4, 4]);
        for &i in p[..4].iter().chain(&ng[..4]) {
            hits[i as usize] += 1;
        }
    }
    let lv = vec_i64(&l);
    for (i, &h) in hits.iter().enumerate() {
        let p = match lv[i] {
            v if v >= 1 => 4.0 / 10.0,
            0 => 4.0 / 30.0,
            _ => 0.0,
        };
        let mean = seeds as f64 * p;
        let sd = (seeds as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (h as f64 - mean).abs() <= 5.0 * sd,
            "element {i} (label {}) chosen {h} times in {seeds}, expected {mean:.1} +- {:.1}",
            lv[i],
            5.0 * sd
        );
    }
}

#[test]
fn sample_balanced_rejects_bad_input() {
    let err = |r: Result<BalancedSample>| r.unwrap_err().to_string();
    let l = labels(10, &[1], &[]);
    for f in [-0.1, 1.5, f64::NAN] {
        let e = err(sample_balanced(&l, 8, f, 0));
        assert!(e.contains("positive_fraction"), "{e}");
    }
    let e = err(sample_balanced(
        &Tensor::zeros(&[2, 5], DType::I64),
        8,
        0.5,
        0,
    ));
    assert!(e.contains("[N]"), "{e}");
    let e = err(sample_balanced(
        &Tensor::zeros(&[10], DType::F32),
        8,
        0.5,
        0,
    ));
    assert!(e.contains("i64"), "{e}");
    let big = Tensor::zeros(&[1], DType::I64)
        .expand(&[SAMPLE_MAX_N + 1])
        .unwrap();
    let e = err(sample_balanced(&big, 8, 0.5, 0));
    assert!(e.contains("at most"), "{e}");
    assert_eq!(l.device(), Device::Cpu);
}

#[test]
fn parity_cases_are_counted_and_valid_on_the_cpu() {
    let mut cases = Vec::new();
    parity::cases(&mut Rng::new(3), &mut cases);
    assert_eq!(cases.len(), parity::CASES);
    for c in cases.iter().filter(|c| c.op == "sample_balanced") {
        let out = (c.run)(Device::Cpu).unwrap();
        let get = |name: &str| vec_i64(&out.iter().find(|(n, _)| n == name).unwrap().1);
        let counts = get("counts");
        for (k, name) in counts.iter().zip(["positive", "negative"]) {
            let v = get(name);
            let k = *k as usize;
            assert!(v[..k].windows(2).all(|w| w[0] < w[1]), "{}", c.label);
            // the tail is one sentinel (N), above every chosen index
            assert!(v[k..].windows(2).all(|w| w[0] == w[1]), "{}", c.label);
            if let (Some(&last), Some(&sentinel)) = (v[..k].last(), v.get(k)) {
                assert!(last < sentinel, "{}", c.label);
            }
        }
    }
}

/// matching.cu's sampler transcribed step by step on the host (the radix
/// passes of sample_hist / sample_select over the same state layout, then
/// sample_chunk_counts / sample_scan / sample_scatter / sample_fill in
/// index order): the algorithm the GPU runs must choose what the CPU
/// reference chooses. (The GPU itself is checked by the parity cases.)
fn sampler_as_the_kernels_run_it(
    labels: &[i64],
    seed: u64,
    target: usize,
    batch: usize,
) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let n = labels.len();
    let (target, batch) = (target.min(n) as i64, batch.min(n) as i64);
    let class = |l: i64| -> i64 {
        if l >= 1 {
            0
        } else if l == 0 {
            1
        } else {
            -1
        }
    };
    let mut st = [0u64; 8];
    let mut hist = [0u32; 512];
    let mut counts = [0i64; 2];
    for pass in 0..8 {
        // sample_hist
        let shift = 56 - 8 * pass;
        let fixed = if pass == 0 {
            0
        } else {
            !0u64 << (64 - 8 * pass)
        };
        for (i, &l) in labels.iter().enumerate() {
            let c = class(l);
            if c < 0 {
                continue;
            }
            let k = sample_key(seed, i as u64);
            if k & fixed != st[4 * c as usize] & fixed {
                continue;
            }
            hist[c as usize * 256 + ((k >> shift) & 255) as usize] += 1;
        }
        // sample_select
        for c in 0..2 {
            let h = &hist[c * 256..(c + 1) * 256];
            if pass == 0 {
                let total: i64 = h.iter().map(|&v| v as i64).sum();
                let cap = if c == 0 { target } else { batch - st[2] as i64 };
                let want = total.min(cap);
                st[4 * c] = 0;
                st[4 * c + 1] = want as u64;
                st[4 * c + 2] = want as u64;
                counts[c] = want;
            }
            let rank = st[4 * c + 1];
            if rank == 0 {
                continue;
            }
            let mut below = 0u64;
            for (d, &v) in h.iter().enumerate() {
                if below + v as u64 >= rank {
                    st[4 * c] |= (d as u64) << shift;
                    st[4 * c + 1] = rank - below;
                    break;
                }
                below += v as u64;
            }
        }
        hist = [0; 512];
    }
    let chosen = |i: usize| -> i64 {
        let c = class(labels[i]);
        let k = sample_key(seed, i as u64);
        if c >= 0 && st[4 * c as usize + 2] > 0 && k <= st[4 * c as usize] {
            c
        } else {
            -1
        }
    };
    // sample_chunk_counts + sample_scan: each chunk's exclusive offsets
    const CHUNK: usize = 2048;
    let chunks = n.div_ceil(CHUNK);
    let mut offsets = vec![[0u64; 2]; chunks];
    let mut run = [0u64; 2];
    for (b, o) in offsets.iter_mut().enumerate() {
        *o = run;
        for i in b * CHUNK..((b + 1) * CHUNK).min(n) {
            if let c @ 0..=1 = chosen(i) {
                run[c as usize] += 1;
            }
        }
    }
    // sample_scatter, sample_fill
    let (cap_pos, cap_neg) = (target as usize, batch as usize);
    let mut out = [vec![-7i64; cap_pos], vec![-7i64; cap_neg]];
    for (b, o) in offsets.iter().enumerate() {
        let mut base = *o;
        for i in b * CHUNK..((b + 1) * CHUNK).min(n) {
            if let c @ 0..=1 = chosen(i) {
                let c = c as usize;
                if base[c] < st[4 * c + 2] {
                    out[c][base[c] as usize] = i as i64;
                }
                base[c] += 1;
            }
        }
    }
    for c in 0..2 {
        for (j, v) in out[c].iter_mut().enumerate() {
            if j as u64 >= st[4 * c + 2] {
                *v = n as i64;
            }
        }
    }
    let [p, ng] = out;
    (p, ng, counts.to_vec())
}

#[test]
fn the_kernels_sampling_algorithm_chooses_as_the_cpu() {
    let mut rng = Rng::new(21);
    // (n, positive and ignored probabilities, batch, fraction): chunk
    // boundaries, everything chosen, nothing eligible, heavy positives
    for (n, pos, ign, batch, frac) in [
        (1, 1.0, 0.0, 256, 0.5),
        (2048, 0.01, 0.1, 256, 0.5),
        (2049, 0.3, 0.1, 256, 0.25),
        (9000, 0.002, 0.02, 256, 0.5),
        (700, 0.05, 0.1, 4000, 0.5),
        (3000, 0.0, 1.0, 256, 0.5),
        (5000, 0.6, 0.0, 300, 0.9),
        (4100, 0.2, 0.2, 4100, 0.3),
    ] {
        let l = super::parity::labels(&mut rng, n, pos, ign);
        let lt = Tensor::from_vec(l.clone(), &[n]).unwrap();
        for seed in [0, 1, rng.next_u64(), u64::MAX] {
            let want = sample(&lt, batch, frac, seed);
            let target = (batch as f64 * frac) as usize;
            let got = sampler_as_the_kernels_run_it(&l, seed, target, batch);
            assert_eq!(got, want, "n {n} batch {batch} x {frac} seed {seed}");
        }
    }
}
