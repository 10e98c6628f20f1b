//! The whole Region Proposal Network against torchvision
//! (tools/golden/make_rpn_module_fixtures.py): proposals and scores in eval
//! and train mode to 1e-6, both losses to 1e-6 and the head's gradients to
//! 1e-5 relative, in f64; the head's names and init; bad input.

use engine::checkpoint::{load_into_with, LoadOptions};
use engine::{DType, Rng, Tensor};
use models::detection::anchors::AnchorGenerator;
use models::detection::rpn::{Rpn, RpnHead, RpnOutput, TrainTest};
use serde_json::Value;
use std::time::Instant;
use testutil::golden::pair;
use testutil::{assert_close, assert_grad_close, Golden};

fn fixture() -> Golden {
    Golden::golden("rpn_module_fpn")
}

/// The fixture's inputs: f64 features, image sizes, padded size, and each
/// image's gt boxes.
struct Inputs {
    features: Vec<Tensor>,
    image_sizes: Vec<(usize, usize)>,
    padded_hw: (usize, usize),
    gt: Vec<Vec<[f32; 4]>>,
}

impl Inputs {
    /// `rpn.forward_with_scores` on these inputs with `targets`, seeded
    /// with `seed`.
    fn run(&self, rpn: &Rpn, targets: Option<&[Vec<[f32; 4]>]>, seed: u64) -> RpnOutput {
        rpn.forward_with_scores(
            &self.features,
            &self.image_sizes,
            self.padded_hw,
            targets,
            &mut Rng::new(seed),
        )
        .unwrap()
    }
}

fn inputs(ck: &Golden, dtype: DType) -> Inputs {
    let features = (0..5)
        .map(|l| ck.get(&format!("features.{l}")).to_dtype(dtype).unwrap())
        .collect();
    let image_sizes = ck.meta_pairs("image_sizes");
    let padded_hw = pair(&ck.meta("padded_hw"));
    let boxes = ck.get("gt.boxes").to_vec::<f32>().unwrap();
    let mut gt = Vec::new();
    let mut at = 0;
    for c in ck.meta("gt_counts").as_array().unwrap() {
        let c = c.as_u64().unwrap() as usize;
        gt.push(
            (at..at + c)
                .map(|g| std::array::from_fn(|k| boxes[4 * g + k]))
                .collect(),
        );
        at += c;
    }
    Inputs {
        features,
        image_sizes,
        padded_hw,
        gt,
    }
}

/// An RPN named "rpn" with the fixture's head weights (loaded by name).
fn rpn_from_fixture(ck: &Golden, dtype: DType) -> Rpn {
    let rpn = Rpn::fpn_default("rpn", 16, dtype, &mut Rng::new(1)).unwrap();
    let params = rpn.params();
    if dtype == DType::F64 {
        let opts = LoadOptions {
            allow_unexpected: true,
            ..LoadOptions::strict()
        };
        let report = load_into_with(ck, &params, &[], &opts).unwrap();
        assert_eq!(report.loaded.len(), 6, "{report:?}");
    } else {
        for p in &params {
            p.set(ck.get(p.name()).to_dtype(dtype).unwrap()).unwrap();
        }
    }
    rpn
}

/// Asserts per element |a - e| <= tol (1 + |e|) (NaN fails); returns the
/// worst |a - e| / bound.
fn close(what: &str, actual: &[f64], expected: &[f64], tol: f64) -> f64 {
    assert_close(what, actual, expected, tol, tol).ratio()
}

/// Compares proposals and scores with the fixture's, as ordered lists, per
/// element to `tol`; returns the worst |diff| / bound of boxes and of scores.
fn compare_proposals(ck: &Golden, case: &str, out: &RpnOutput, tol: f64) -> (f64, f64) {
    let (mut eb, mut es) = (0f64, 0f64);
    for b in 0..2 {
        let boxes: Vec<f64> = out.boxes[b].iter().flatten().copied().collect();
        let want = ck.f64s(&format!("{case}.boxes.{b}"));
        eb = eb.max(close(&format!("{case} boxes {b}"), &boxes, &want, tol));
        let want = ck.f64s(&format!("{case}.scores.{b}"));
        es = es.max(close(
            &format!("{case} scores {b}"),
            &out.scores[b],
            &want,
            tol,
        ));
    }
    (eb, es)
}

fn case(ck: &Golden, name: &str) -> Value {
    ck.meta("cases")
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
        .clone()
}

/// Runs one fixture case in f64 and checks everything it stores.
fn check_case(name: &str) {
    let ck = fixture();
    let c = case(&ck, name);
    let inp = inputs(&ck, DType::F64);
    let mut rpn = rpn_from_fixture(&ck, DType::F64);
    let n = |k: &str| c[k].as_u64().unwrap() as usize;
    rpn.pre_nms_top_n = TrainTest {
        train: n("pre_nms_top_n"),
        test: n("pre_nms_top_n"),
    };
    rpn.post_nms_top_n = TrainTest {
        train: n("post_nms_top_n"),
        test: n("post_nms_top_n"),
    };
    rpn.sampler.batch_size_per_image = n("batch_size_per_image");
    let training = c["training"].as_bool().unwrap();
    rpn.set_training(training);
    let keep: Vec<u64> = c["gt_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let gt: Vec<Vec<[f32; 4]>> = inp
        .gt
        .iter()
        .enumerate()
        .map(|(b, g)| {
            if keep.contains(&(b as u64)) {
                g.clone()
            } else {
                vec![]
            }
        })
        .collect();

    let t0 = Instant::now();
    let out = inp.run(&rpn, training.then_some(gt.as_slice()), 7);
    let fwd = t0.elapsed();
    let (eb, es) = compare_proposals(&ck, name, &out, 1e-6);
    let counts: Vec<usize> = out.boxes.iter().map(Vec::len).collect();
    eprintln!(
        "{name}: proposals {counts:?}, worst |diff| / bound: boxes {eb:.3} scores {es:.3}, forward {fwd:?}"
    );

    if !training {
        assert!(out.losses.is_none(), "{name}: no targets, no losses");
        return;
    }
    let losses = out.losses.expect("train mode with targets gives losses");
    let lo = losses.objectness.item().unwrap();
    let lb = losses.box_reg.item().unwrap();
    let lo_tv = ck.f64s(&format!("{name}.loss_objectness"))[0];
    let lo_64 = ck.f64s(&format!("{name}.loss_objectness_f64"))[0];
    let lb_tv = ck.f64s(&format!("{name}.loss_rpn_box_reg"))[0];
    let rel = |a: f64, e: f64| (a - e).abs() / e.abs();
    assert!(
        rel(lo, lo_tv) <= 1e-6,
        "{name}: objectness {lo} vs torchvision {lo_tv}"
    );
    assert!(
        rel(lo, lo_64) <= 1e-12,
        "{name}: objectness {lo} vs f64 {lo_64}"
    );
    assert!(rel(lb, lb_tv) <= 1e-10, "{name}: box_reg {lb} vs {lb_tv}");
    assert!(lb > 0.0, "{name}: some positives contribute");

    let t1 = Instant::now();
    losses
        .objectness
        .add(&losses.box_reg)
        .unwrap()
        .backward()
        .unwrap();
    let bwd = t1.elapsed();
    let mut worst = 0f64;
    for p in rpn.params() {
        let short = p.name().strip_prefix("rpn.head.").unwrap();
        let want = ck.f64s(&format!("{name}.grad.{short}"));
        // f64 on both sides: sums over a few thousand anchors, far below
        let r = assert_grad_close(&format!("{name}: grad {short}"), &p, &want, 1e-8, 1e-6);
        worst = worst.max(r.ratio());
    }
    eprintln!(
        "{name}: objectness {lo} (rel err {:.1e} vs torchvision's f32, {:.1e} vs f64), box_reg {lb} (rel err {:.1e}), grads worst |diff| / bound {worst:.3}, backward {bwd:?}",
        rel(lo, lo_tv),
        rel(lo, lo_64),
        rel(lb, lb_tv)
    );
}

#[test]
fn eval_default_matches_torchvision() {
    check_case("eval_default");
}

#[test]
fn eval_small_top_n_matches_torchvision() {
    check_case("eval_small");
}

#[test]
fn train_all_anchors_sampled_matches_torchvision() {
    check_case("train_all");
}

#[test]
fn train_background_image_and_post_nms_cut_match_torchvision() {
    check_case("train_small_bg");
}

#[test]
fn f32_forward_is_close_to_torchvision() {
    let ck = fixture();
    let inp = inputs(&ck, DType::F32);
    let mut rpn = rpn_from_fixture(&ck, DType::F32);
    rpn.sampler.batch_size_per_image = 1_000_000;
    let out = inp.run(&rpn, Some(&inp.gt), 3);
    let losses = out.losses.unwrap();
    assert_eq!(losses.objectness.dtype(), DType::F32);
    let lo = losses.objectness.item().unwrap();
    let lb = losses.box_reg.item().unwrap();
    let lo_tv = ck.f64s("train_all.loss_objectness_f64")[0];
    let lb_tv = ck.f64s("train_all.loss_rpn_box_reg")[0];
    assert!(
        (lo - lo_tv).abs() <= 1e-5 * lo_tv,
        "objectness {lo} vs {lo_tv}"
    );
    assert!(
        (lb - lb_tv).abs() <= 1e-4 * lb_tv,
        "box_reg {lb} vs {lb_tv}"
    );
    // the f64 reference's best proposal per image, within f32 rounding
    for b in 0..2 {
        let want = ck.f64s(&format!("train_all.boxes.{b}"));
        let got = out.boxes[b][0];
        for k in 0..4 {
            assert!(
                (got[k] - want[k]).abs() <= 1e-3,
                "image {b} top box {got:?} vs {:?}",
                &want[..4]
            );
        }
    }
}

#[test]
fn forward_returns_f32_proposals_of_forward_with_scores() {
    let ck = fixture();
    let inp = inputs(&ck, DType::F64);
    let rpn = rpn_from_fixture(&ck, DType::F64);
    rpn.set_training(false);
    let full = inp.run(&rpn, None, 0);
    let (boxes, losses) = rpn
        .forward(
            &inp.features,
            &inp.image_sizes,
            inp.padded_hw,
            None,
            &mut Rng::new(0),
        )
        .unwrap();
    assert!(losses.is_none());
    assert_eq!(boxes.len(), 2);
    for (b, img) in boxes.iter().enumerate() {
        assert_eq!(img.len(), full.boxes[b].len());
        for (p, q) in img.iter().zip(&full.boxes[b]) {
            assert_eq!(*p, q.map(|v| v as f32));
        }
    }
}

#[test]
fn default_sampler_is_seeded_and_differs_from_all_anchors() {
    let ck = fixture();
    let inp = inputs(&ck, DType::F64);
    let rpn = rpn_from_fixture(&ck, DType::F64);
    assert_eq!(rpn.sampler.batch_size_per_image, 256);
    let run = |seed: u64| {
        let out = inp.run(&rpn, Some(&inp.gt), seed);
        let l = out.losses.unwrap();
        (l.objectness.item().unwrap(), l.box_reg.item().unwrap())
    };
    let a = run(5);
    assert_eq!(a, run(5), "same seed, same losses");
    assert_ne!(a, run(6), "another seed samples other anchors");
    let all = ck.f64s("train_all.loss_rpn_box_reg")[0];
    // 256 sampled anchors per image instead of ~5000: positives weigh more
    assert!(a.1 > 2.0 * all, "box_reg {} vs all-anchors {all}", a.1);
}

#[test]
fn head_has_torchvision_names_and_init() {
    let head = RpnHead::new("rpn.head", 32, 3, DType::F32, &mut Rng::new(0)).unwrap();
    let got: Vec<(String, Vec<usize>)> = head
        .params()
        .iter()
        .map(|p| (p.name().to_string(), p.dims()))
        .collect();
    let want = [
        ("rpn.head.conv.0.0.weight", vec![32, 32, 3, 3]),
        ("rpn.head.conv.0.0.bias", vec![32]),
        ("rpn.head.cls_logits.weight", vec![3, 32, 1, 1]),
        ("rpn.head.cls_logits.bias", vec![3]),
        ("rpn.head.bbox_pred.weight", vec![12, 32, 1, 1]),
        ("rpn.head.bbox_pred.bias", vec![12]),
    ];
    assert_eq!(got.len(), want.len());
    for ((gn, gd), (wn, wd)) in got.iter().zip(&want) {
        assert_eq!((gn.as_str(), gd), (*wn, wd));
    }
    let w = head.conv.weight.get().to_vec_f64().unwrap();
    let mean = w.iter().sum::<f64>() / w.len() as f64;
    let std = (w.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    assert!(
        (std - 0.01).abs() < 0.001 && mean.abs() < 0.001,
        "N(0, 0.01): mean {mean} std {std}"
    );
    for p in head.params().iter().filter(|p| p.name().ends_with("bias")) {
        assert!(
            p.get().to_vec_f64().unwrap().iter().all(|&v| v == 0.0),
            "{} is zero",
            p.name()
        );
    }
    // the RPN's own head sits under <prefix>.head
    let rpn = Rpn::fpn_default("rpn", 8, DType::F32, &mut Rng::new(0)).unwrap();
    assert_eq!(rpn.params()[0].name(), "rpn.head.conv.0.0.weight");
    assert_eq!(rpn.head.num_anchors(), 3);
    assert!(rpn.is_training());
}

// ---------------------------------------------------------------------------
// bad input

fn small_features(batch: usize, channels: usize, levels: usize) -> Vec<Tensor> {
    let mut rng = Rng::new(11);
    [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)][..levels]
        .iter()
        .map(|&(h, w)| Tensor::randn(&[batch, channels, h, w], 0.0, 1.0, DType::F32, &mut rng))
        .collect()
}

fn err_of(r: engine::Result<RpnOutput>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let rpn = Rpn::fpn_default("rpn", 4, DType::F32, &mut Rng::new(0)).unwrap();
    let sizes = [(64, 80), (60, 70)];
    let gt = vec![vec![[1.0f32, 2.0, 30.0, 40.0]], vec![]];
    let mut rng = Rng::new(0);
    let mut call = |f: &[Tensor], s: &[(usize, usize)], t: Option<&[Vec<[f32; 4]>]>| {
        err_of(rpn.forward_with_scores(f, s, (64, 80), t, &mut rng))
    };
    let ok = small_features(2, 4, 5);

    let e = call(&small_features(2, 4, 4), &sizes, Some(&gt));
    assert!(
        e.contains("4 feature maps") && e.contains("5 levels"),
        "{e}"
    );
    let mut mixed = ok.clone();
    mixed[2] = small_features(3, 4, 5)[2].clone();
    let e = call(&mixed, &sizes, Some(&gt));
    assert!(e.contains("feature map 2") && e.contains("B = 2"), "{e}");
    let e = call(&small_features(2, 5, 5), &sizes, Some(&gt));
    assert!(e.contains("C = 4"), "{e}");
    let e = call(&ok, &sizes[..1], Some(&gt));
    assert!(
        e.contains("1 image sizes") && e.contains("batch of 2"),
        "{e}"
    );
    let e = call(&ok, &[(64, 80), (65, 70)], Some(&gt));
    assert!(
        e.contains("image 1") && e.contains("padded size 64 x 80"),
        "{e}"
    );
    let e = call(&ok, &sizes, Some(&gt[..1]));
    assert!(
        e.contains("targets for 1 images") && e.contains("batch of 2"),
        "{e}"
    );
    let e = call(&ok, &sizes, None);
    assert!(e.contains("targets are required in train mode"), "{e}");
    let bad = vec![vec![[10.0f32, 2.0, 10.0, 40.0]], vec![]];
    let e = call(&ok, &sizes, Some(&bad));
    assert!(
        e.contains("target box 0 of image 0") && e.contains("positive width"),
        "{e}"
    );
    let nan = vec![vec![], vec![[f32::NAN, 2.0, 10.0, 40.0]]];
    let e = call(&ok, &sizes, Some(&nan));
    assert!(e.contains("target box 0 of image 1"), "{e}");
    let f64s: Vec<Tensor> = ok
        .iter()
        .enumerate()
        .map(|(l, t)| {
            if l == 3 {
                t.to_dtype(DType::F64).unwrap()
            } else {
                t.clone()
            }
        })
        .collect();
    let e = call(&f64s, &sizes, Some(&gt));
    assert!(e.contains("feature map 3 is f64"), "{e}");
    let e = call(&[], &sizes, Some(&gt));
    assert!(e.contains("0 feature maps"), "{e}");

    // the same inputs are accepted
    let out = rpn
        .forward_with_scores(&ok, &sizes, (64, 80), Some(&gt), &mut Rng::new(0))
        .unwrap();
    assert_eq!(out.boxes.len(), 2);
    assert!(out.losses.is_some());
}

#[test]
fn anchor_generator_and_head_must_agree() {
    // two sizes on one level: 6 anchors per location there, 3 elsewhere
    let mut sizes: Vec<Vec<f64>> = AnchorGenerator::fpn_default().sizes;
    sizes[1] = vec![64.0, 96.0];
    let gen = AnchorGenerator::new(sizes, vec![vec![0.5, 1.0, 2.0]; 5]).unwrap();
    let e = Rpn::new("rpn", 4, gen.clone(), DType::F32, &mut Rng::new(0))
        .err()
        .expect("uneven anchors per location")
        .to_string();
    assert!(e.contains("[3, 6, 3, 3, 3]"), "{e}");

    // a generator swapped in after construction is checked at forward
    let mut rpn = Rpn::fpn_default("rpn", 4, DType::F32, &mut Rng::new(0)).unwrap();
    rpn.anchor_generator = gen;
    rpn.set_training(false);
    let e = err_of(rpn.forward_with_scores(
        &small_features(1, 4, 5),
        &[(64, 80)],
        (64, 80),
        None,
        &mut Rng::new(0),
    ));
    assert!(e.contains("head predicts 3 anchors per location"), "{e}");
}
