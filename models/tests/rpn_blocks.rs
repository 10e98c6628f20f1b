//! The RPN / ROI-heads box building blocks against torchvision
//! (tools/golden/make_rpn_fixtures.py): anchors exactly, BoxCoder encode /
//! decode to 1e-12 relative in f64 (and 1e-6 in f32), clip and
//! remove_small_boxes exactly, Matcher exactly, and the sampler's counts
//! and eligibility.

use engine::{DType, Rng, Tensor};
use models::detection::anchors::AnchorGenerator;
use models::detection::box_coder::{
    clip_boxes_to_image, default_bbox_xform_clip, remove_small_boxes, BoxCoder,
};
use models::detection::matcher::{Matcher, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS};
use models::detection::sampler::BalancedPositiveNegativeSampler;
use serde_json::Value;
use testutil::golden::pair;
use testutil::Golden;

fn f64s(ck: &Golden, key: &str) -> Vec<f64> {
    let t = ck.get(key);
    assert_eq!(t.dtype(), DType::F64, "{key}");
    t.to_vec::<f64>().unwrap()
}

fn f32s(ck: &Golden, key: &str) -> Vec<f32> {
    let t = ck.get(key);
    assert_eq!(t.dtype(), DType::F32, "{key}");
    t.to_vec::<f32>().unwrap()
}

fn i64s(ck: &Golden, key: &str) -> Vec<i64> {
    let t = ck.get(key);
    assert_eq!(t.dtype(), DType::I64, "{key}");
    t.to_vec::<i64>().unwrap()
}

fn nested_f64(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// Largest |a - e| / max(1, |e|) over finite expected values; non-finite
/// expected values must be reproduced exactly (same infinity, or NaN).
fn max_rel_err<T: Copy + Into<f64>>(what: &str, actual: &[T], expected: &[T]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let mut worst = 0f64;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let (a, e): (f64, f64) = (a.into(), e.into());
        if e.is_finite() {
            assert!(a.is_finite(), "{what}[{i}]: got {a}, expected {e}");
            worst = worst.max((a - e).abs() / e.abs().max(1.0));
        } else {
            assert!(
                (e.is_nan() && a.is_nan()) || a == e,
                "{what}[{i}]: got {a}, expected {e}"
            );
        }
    }
    worst
}

// ---------------------------------------------------------------------------
// anchors

#[test]
fn anchors_match_torchvision() {
    let ck = Golden::golden("rpn_anchors");
    let cases = ck.meta("cases");
    assert_eq!(cases.as_array().unwrap().len(), 4);
    for c in cases.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let gen =
            AnchorGenerator::new(nested_f64(&c["sizes"]), nested_f64(&c["aspect_ratios"])).unwrap();
        let image = pair(&c["image_size"]);
        let feats: Vec<(usize, usize)> = c["feature_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(pair)
            .collect();

        for (l, cell) in gen.cell_anchors().iter().enumerate() {
            assert_eq!(
                cell,
                &f64s(&ck, &format!("{name}.cell.{l}")),
                "{name}: cell anchors of level {l}"
            );
        }
        let anchors = gen.grid_anchors(image, &feats).unwrap();
        let counts: Vec<usize> = i64s(&ck, &format!("{name}.count"))
            .iter()
            .map(|&v| v as usize)
            .collect();
        assert_eq!(anchors.num_per_level, counts, "{name}: anchors per level");
        assert_eq!(
            anchors.len(),
            counts.iter().sum::<usize>(),
            "{name}: total anchors"
        );
        for (l, (&n, &(gh, gw))) in counts.iter().zip(&feats).enumerate() {
            assert_eq!(
                n,
                gh * gw * gen.num_anchors_per_location()[l],
                "{name}: level {l}"
            );
        }

        if let Some(full) = ck.tensors.get(&format!("{name}.full")) {
            assert_eq!(
                anchors.boxes,
                full.to_vec::<f64>().unwrap(),
                "{name}: all anchors"
            );
        }
        let idx = i64s(&ck, &format!("{name}.sample_idx"));
        let sample = f64s(&ck, &format!("{name}.sample"));
        for (s, &r) in idx.iter().enumerate() {
            let r = r as usize;
            assert_eq!(
                &anchors.boxes[4 * r..4 * r + 4],
                &sample[4 * s..4 * s + 4],
                "{name}: anchor row {r}"
            );
        }
        // a weighted checksum of every coordinate (exact: anchors are integers)
        let wsum = i64s(&ck, &format!("{name}.wsum"));
        let mut start = 0usize;
        for (l, &n) in counts.iter().enumerate() {
            let mut sum = 0i64;
            for r in start..start + n {
                for k in 0..4 {
                    let v = anchors.boxes[4 * r + k];
                    assert_eq!(v, v.round(), "{name}: anchor {r} is not integer");
                    sum += v as i64 * ((4 * r + k) as i64 % 997 + 1);
                }
            }
            assert_eq!(sum, wsum[l], "{name}: checksum of level {l}");
            start += n;
        }
        println!("{name}: {} anchors identical to torchvision", anchors.len());
    }
}

#[test]
fn fpn_default_is_torchvisions_and_strides_use_integer_division() {
    let gen = AnchorGenerator::fpn_default();
    assert_eq!(gen.num_anchors_per_location(), vec![3; 5]);
    assert_eq!(
        gen.sizes,
        vec![
            vec![32.0],
            vec![64.0],
            vec![128.0],
            vec![256.0],
            vec![512.0]
        ]
    );
    let feats = [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)];
    assert_eq!(
        gen.strides((800, 1088), &feats).unwrap(),
        vec![(4, 4), (8, 8), (16, 16), (32, 32), (61, 64)]
    );
    // the fixture's first case is this generator
    let ck = Golden::golden("rpn_anchors");
    for l in 0..5 {
        assert_eq!(
            gen.cell_anchors()[l],
            f64s(&ck, &format!("fpn_800x1088.cell.{l}"))
        );
    }
    // bad input: level-count mismatch, empty grid, bad sizes
    assert!(gen.grid_anchors((800, 1088), &feats[..4]).is_err());
    assert!(gen.grid_anchors((800, 1088), &[(0, 1); 5]).is_err());
    assert!(AnchorGenerator::new(vec![vec![32.0]], vec![]).is_err());
    assert!(AnchorGenerator::new(vec![vec![-32.0]], vec![vec![1.0]]).is_err());
    assert!(AnchorGenerator::new(vec![vec![32.0]], vec![vec![f64::NAN]]).is_err());
}

// ---------------------------------------------------------------------------
// box coder

#[test]
fn box_coder_matches_torchvision() {
    let ck = Golden::golden("rpn_box_coder");
    let clip: f64 = ck.metadata["bbox_xform_clip"].parse().unwrap();
    assert_eq!(clip, default_bbox_xform_clip());
    let weights = ck.meta("weights");
    let (refs, props) = (f64s(&ck, "in.ref"), f64s(&ck, "in.prop"));
    let (anchors, deltas) = (f64s(&ck, "in.anchors"), f64s(&ck, "in.deltas"));
    let (refs32, props32) = (f32s(&ck, "in.ref_f32"), f32s(&ck, "in.prop_f32"));
    let (anchors32, deltas32) = (f32s(&ck, "in.anchors_f32"), f32s(&ck, "in.deltas_f32"));
    let mut worst = [0f64; 4];
    for (name, w) in weights.as_object().unwrap() {
        let w: Vec<f64> = w
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let coder = BoxCoder::new([w[0], w[1], w[2], w[3]]);
        // (slot in `worst`, what, relative error, bound)
        let errs = [
            (
                "encode",
                max_rel_err(
                    name,
                    &coder.encode(&refs, &props).unwrap(),
                    &f64s(&ck, &format!("encode.{name}")),
                ),
                1e-12,
            ),
            (
                "decode",
                max_rel_err(
                    name,
                    &coder.decode(&deltas, &anchors).unwrap(),
                    &f64s(&ck, &format!("decode.{name}")),
                ),
                1e-12,
            ),
            (
                "encode f32",
                max_rel_err(
                    name,
                    &coder.encode(&refs32, &props32).unwrap(),
                    &f32s(&ck, &format!("encode_f32.{name}")),
                ),
                1e-6,
            ),
            (
                "decode f32",
                max_rel_err(
                    name,
                    &coder.decode(&deltas32, &anchors32).unwrap(),
                    &f32s(&ck, &format!("decode_f32.{name}")),
                ),
                1e-6,
            ),
        ];
        for (k, (what, e, tol)) in errs.into_iter().enumerate() {
            assert!(e <= tol, "{what} {name}: relative error {e:.3e}");
            worst[k] = worst[k].max(e);
        }
    }
    println!(
        "max relative error: encode f64 {:.3e}, decode f64 {:.3e}, encode f32 {:.3e}, decode f32 {:.3e}",
        worst[0], worst[1], worst[2], worst[3]
    );
}

#[test]
fn decode_clamps_dw_dh_and_inverts_encode() {
    let coder = BoxCoder::new([10.0, 10.0, 5.0, 5.0]);
    let clip = default_bbox_xform_clip();
    let anchor = [10.0, 20.0, 50.0, 100.0]; // w 40, h 80, centre (30, 60)
                                            // dw / ww above the clip decodes like dw / ww exactly at it
    let over = coder
        .decode(&[0.0, 0.0, 5.0 * clip + 3.0, 1e6], &anchor)
        .unwrap();
    let at = coder
        .decode(&[0.0, 0.0, 5.0 * clip, 5.0 * clip], &anchor)
        .unwrap();
    assert_eq!(over, at);
    let w = at[2] - at[0];
    assert!((w - 40.0 * 1000.0 / 16.0).abs() < 1e-9, "clamped width {w}");
    // NaN is not clamped away
    assert!(coder.decode(&[0.0, 0.0, f64::NAN, 0.0], &anchor).unwrap()[0].is_nan());
    // decode(encode(gt)) = gt
    let gt = [12.5, 7.0, 90.25, 33.0];
    let d = coder.encode(&gt, &anchor).unwrap();
    let back = coder.decode(&d, &anchor).unwrap();
    for k in 0..4 {
        assert!((back[k] - gt[k]).abs() < 1e-12, "{back:?} vs {gt:?}");
    }
    // shape errors
    assert!(coder.encode(&gt, &[0.0; 8]).is_err());
    assert!(coder.encode(&gt[..3], &gt[..3]).is_err());
    assert!(coder.decode(&[0.0; 6], &anchor).is_err());
    assert!(coder.decode(&[0.0; 4], &[]).is_err());
    assert_eq!(coder.decode::<f64>(&[], &[]).unwrap(), Vec::<f64>::new());
}

#[test]
fn box_coder_tensor_versions_equal_slice_versions() {
    let ck = Golden::golden("rpn_box_coder");
    let coder = BoxCoder::new([10.0, 10.0, 5.0, 5.0]);
    for (a, d) in [
        ("in.anchors", "in.deltas"),
        ("in.anchors_f32", "in.deltas_f32"),
    ] {
        let (anchors, deltas) = (ck.get(a), ck.get(d));
        let out = coder.decode_tensor(deltas, anchors).unwrap();
        assert_eq!(out.dims(), deltas.dims());
        assert_eq!(out.dtype(), deltas.dtype());
        let want = if deltas.dtype() == DType::F64 {
            coder
                .decode(
                    &deltas.to_vec::<f64>().unwrap(),
                    &anchors.to_vec::<f64>().unwrap(),
                )
                .unwrap()
        } else {
            coder
                .decode(
                    &deltas.to_vec::<f32>().unwrap(),
                    &anchors.to_vec::<f32>().unwrap(),
                )
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect()
        };
        let got = out.to_vec_f64().unwrap();
        assert!(got
            .iter()
            .zip(&want)
            .all(|(g, w)| g == w || (g.is_nan() && w.is_nan())));
    }
    let (r, p) = (ck.get("in.ref"), ck.get("in.prop"));
    let enc = coder.encode_tensor(r, p).unwrap();
    assert_eq!(
        enc.to_vec::<f64>().unwrap(),
        coder
            .encode(&r.to_vec::<f64>().unwrap(), &p.to_vec::<f64>().unwrap())
            .unwrap()
    );
    // mixed dtypes and wrong shapes are errors
    assert!(coder.encode_tensor(r, ck.get("in.prop_f32")).is_err());
    assert!(coder.decode_tensor(ck.get("in.deltas"), r).is_err());
}

#[test]
fn clip_and_remove_small_boxes_match_torchvision() {
    let ck = Golden::golden("rpn_box_coder");
    let size = pair(&ck.meta("clip_size"));
    let clipped = clip_boxes_to_image(&f64s(&ck, "clip.in"), size).unwrap();
    let want = f64s(&ck, "clip.out");
    for (i, (a, e)) in clipped.iter().zip(&want).enumerate() {
        assert!(
            a == e || (a.is_nan() && e.is_nan()),
            "clip[{i}]: got {a}, expected {e}"
        );
    }
    assert_eq!(clipped.len(), want.len());
    let small = f64s(&ck, "small.in");
    for (i, m) in ck.meta("min_sizes").as_array().unwrap().iter().enumerate() {
        let keep = remove_small_boxes(&small, m.as_f64().unwrap()).unwrap();
        let want: Vec<usize> = i64s(&ck, &format!("small.keep.{i}"))
            .iter()
            .map(|&v| v as usize)
            .collect();
        assert_eq!(keep, want, "remove_small_boxes min_size {m}");
    }
    assert!(clip_boxes_to_image(&[0.0f64; 5], size).is_err());
    assert!(remove_small_boxes(&[0.0f32; 3], 1.0).is_err());
}

// ---------------------------------------------------------------------------
// matcher

#[test]
fn matcher_matches_torchvision() {
    let ck = Golden::golden("rpn_matcher");
    let cases = ck.meta("cases");
    for c in cases.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let m = Matcher::new(
            c["high"].as_f64().unwrap(),
            c["low"].as_f64().unwrap(),
            c["allow_low_quality_matches"].as_bool().unwrap(),
        )
        .unwrap();
        let q = ck.get(&format!("q.{}", c["q"].as_str().unwrap()));
        let (g, p) = (q.dims()[0], q.dims()[1]);
        let got = if name.ends_with("_f32") {
            m.matches(&q.to_vec::<f32>().unwrap(), g, p).unwrap()
        } else {
            m.matches(&q.to_vec::<f64>().unwrap(), g, p).unwrap()
        };
        assert_eq!(
            got,
            i64s(&ck, &format!("{name}.out")),
            "matcher case {name}"
        );
        assert_eq!(m.matches_tensor(q).unwrap(), got, "{name}: tensor version");
        let counted = |v: i64| got.iter().filter(|&&x| x == v).count();
        println!(
            "{name}: {p} predictions, {} background, {} between, identical to torchvision",
            counted(BELOW_LOW_THRESHOLD),
            counted(BETWEEN_THRESHOLDS)
        );
    }
    // low-quality matches actually change the real-IoU RPN case
    assert_ne!(
        i64s(&ck, "iou_rpn_allow0.out"),
        i64s(&ck, "iou_rpn_allow1.out")
    );
}

#[test]
fn matcher_empty_and_bad_input() {
    let m = Matcher::rpn_default();
    assert_eq!(
        (
            m.high_threshold,
            m.low_threshold,
            m.allow_low_quality_matches
        ),
        (0.7, 0.3, true)
    );
    let r = Matcher::roi_heads_default();
    assert_eq!(
        (
            r.high_threshold,
            r.low_threshold,
            r.allow_low_quality_matches
        ),
        (0.5, 0.5, false)
    );
    // torchvision raises on an empty matrix; background images go through match_or_background
    assert!(m.matches::<f64>(&[], 0, 5).is_err());
    assert!(m.matches::<f64>(&[], 3, 0).is_err());
    assert_eq!(
        m.match_or_background::<f64>(&[], 0, 3).unwrap(),
        vec![BELOW_LOW_THRESHOLD; 3]
    );
    assert_eq!(
        m.match_or_background::<f64>(&[], 2, 0).unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(
        m.match_or_background(&[0.9f64, 0.1], 1, 2).unwrap(),
        vec![0, BELOW_LOW_THRESHOLD]
    );
    assert!(m.matches(&[0.5f64; 5], 2, 3).is_err());
    assert!(Matcher::new(0.3, 0.7, false).is_err());
    assert!(m.matches_tensor(&Tensor::zeros(&[4], DType::F64)).is_err());
}

// ---------------------------------------------------------------------------
// sampler

#[test]
fn sampler_counts_and_eligibility_match_torchvision() {
    let ck = Golden::golden("rpn_sampler");
    let cases = ck.meta("cases");
    for c in cases.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let s = BalancedPositiveNegativeSampler::new(
            c["batch_size_per_image"].as_u64().unwrap() as usize,
            c["positive_fraction"].as_f64().unwrap(),
        )
        .unwrap();
        let labels = i64s(&ck, &format!("{name}.labels"));
        let want_pos = i64s(&ck, &format!("{name}.num_pos"))[0] as usize;
        let want_neg = i64s(&ck, &format!("{name}.num_neg"))[0] as usize;
        let npos = labels.iter().filter(|&&l| l >= 1).count();
        let nneg = labels.iter().filter(|&&l| l == 0).count();
        assert_eq!(s.counts(npos, nneg), (want_pos, want_neg), "{name}: counts");

        let mut rng = Rng::new(7);
        let picked = s.sample_host(&labels, &mut rng).unwrap();
        let (pi, ni) = picked.clone();
        assert_eq!(
            (pi.len(), ni.len()),
            (want_pos, want_neg),
            "{name}: sampled counts"
        );
        assert!(
            pi.iter().all(|&i| labels[i] >= 1),
            "{name}: a positive pick is not a positive"
        );
        assert!(
            ni.iter().all(|&i| labels[i] == 0),
            "{name}: a negative pick is not a negative"
        );
        // same seed, same picks
        assert_eq!(
            s.sample_host(&labels, &mut Rng::new(7)).unwrap(),
            picked,
            "{name}: determinism"
        );
        // when there is a real choice, another seed picks differently
        if npos > 2 * want_pos && want_pos > 10 {
            assert_ne!(
                s.sample_host(&labels, &mut Rng::new(8)).unwrap().0,
                picked.0,
                "{name}"
            );
        }
        println!("{name}: {want_pos} positives of {npos}, {want_neg} negatives of {nneg}");
    }
    assert!(BalancedPositiveNegativeSampler::new(256, 1.5).is_err());
    assert!(BalancedPositiveNegativeSampler::new(256, f64::NAN).is_err());
}

#[test]
fn sampler_choice_is_spread_over_all_candidates() {
    // 40 positives, 4 picked per draw: over 500 draws every candidate shows up
    let s = BalancedPositiveNegativeSampler::new(8, 0.5).unwrap();
    let labels: Vec<i64> = (0..80).map(|i| if i % 2 == 0 { 1 } else { 0 }).collect();
    let mut hits = [0usize; 80];
    let mut rng = Rng::new(1);
    for _ in 0..500 {
        let (pos, neg) = s.sample_host(&labels, &mut rng).unwrap();
        for i in pos.into_iter().chain(neg) {
            hits[i] += 1;
        }
    }
    // expectation 50 each; far from 0 and from 500
    assert!(hits.iter().all(|&h| (20..=90).contains(&h)), "{hits:?}");
}
