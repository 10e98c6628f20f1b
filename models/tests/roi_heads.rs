//! The ROI box branch against torchvision
//! (tools/golden/make_roi_heads_fixtures.py), in f64: MultiScaleRoIAlign's
//! levels and pooled values (in torchvision's row order) to 1e-9, eval detections to 1e-6, train losses
//! to 1e-6 and head gradients to 1e-5 relative; parameter names, sampling
//! and bad input.

use engine::{DType, Rng, Tensor};
use models::detection::roi_heads::{
    fastrcnn_loss, MultiScaleRoIAlign, RoiHeads, RoiHeadsOutput, RoiTarget,
};
use testutil::{assert_close, assert_grad_close, Golden};

fn fixture() -> Golden {
    Golden::golden("roi_heads_fpn")
}

fn boxes(ck: &Golden, key: &str) -> Vec<[f64; 4]> {
    ck.f64s(key)
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

fn features(ck: &Golden, dtype: DType) -> Vec<Tensor> {
    (0..4)
        .map(|l| ck.get(&format!("features.{l}")).to_dtype(dtype).unwrap())
        .collect()
}

fn proposals(ck: &Golden) -> Vec<Vec<[f64; 4]>> {
    (0..2)
        .map(|b| boxes(ck, &format!("proposals.{b}")))
        .collect()
}

fn targets(ck: &Golden) -> Vec<RoiTarget> {
    (0..2)
        .map(|b| RoiTarget {
            boxes: boxes(ck, &format!("gt.boxes.{b}")),
            labels: ck.get(&format!("gt.labels.{b}")).to_vec::<i64>().unwrap(),
        })
        .collect()
}

/// RoI heads named "roi_heads" with the fixture's weights loaded by name.
fn heads_from_fixture(ck: &Golden, dtype: DType) -> RoiHeads {
    let rep = ck.meta("representation_size").as_u64().unwrap() as usize;
    let classes = ck.meta("num_classes").as_u64().unwrap() as usize;
    let heads = RoiHeads::new("roi_heads", 16, rep, classes, dtype, &mut Rng::new(3)).unwrap();
    // the fixture stores the weights as (exact) f32: convert, then set by name
    for p in heads.params() {
        p.set(ck.get(p.name()).to_dtype(dtype).unwrap()).unwrap();
    }
    heads
}

/// Asserts per element |a - e| <= tol (1 + |e|) (NaN fails); returns the
/// worst |a - e| / bound.
/// `heads.forward` on the fixture's features (in `dtype`) and image sizes
/// with `props`, seeded with 0.
fn run(
    heads: &RoiHeads,
    ck: &Golden,
    dtype: DType,
    props: &[Vec<[f64; 4]>],
    targets: Option<&[RoiTarget]>,
) -> RoiHeadsOutput {
    heads
        .forward(
            &features(ck, dtype),
            props,
            &ck.meta_pairs("image_sizes"),
            targets,
            &mut Rng::new(0),
        )
        .unwrap()
}

/// Eval-mode heads from the fixture in `dtype`, run on `props`.
fn run_eval(ck: &Golden, dtype: DType, props: &[Vec<[f64; 4]>]) -> RoiHeadsOutput {
    let heads = heads_from_fixture(ck, dtype);
    heads.set_training(false);
    run(&heads, ck, dtype, props, None)
}

fn close(what: &str, actual: &[f64], expected: &[f64], tol: f64) -> f64 {
    assert_close(what, actual, expected, tol, tol).ratio()
}

#[test]
fn pooler_levels_and_values_match_torchvision() {
    let ck = fixture();
    let pool_boxes: Vec<Vec<[f64; 4]>> = (0..2)
        .map(|b| boxes(&ck, &format!("pool.boxes.{b}")))
        .collect();
    let pooler = MultiScaleRoIAlign::box_default();
    let out = pooler
        .forward(
            &features(&ck, DType::F64),
            &pool_boxes,
            &ck.meta_pairs("image_sizes"),
        )
        .unwrap();
    assert_eq!(out.scales, vec![0.25, 0.125, 0.0625, 0.03125]);
    let want_levels: Vec<usize> = ck
        .get("pool.levels")
        .to_vec::<i64>()
        .unwrap()
        .into_iter()
        .map(|l| l as usize)
        .collect();
    let flat: Vec<f64> = pool_boxes.iter().flatten().flatten().copied().collect();
    let levels = pooler.mapper(2, 5).levels(&flat).unwrap();
    assert_eq!(levels, want_levels);
    for l in 0..4 {
        assert!(levels.contains(&l), "level {l} is exercised");
    }
    let k = want_levels.len();
    assert_eq!(out.features.dims(), [k, 16, 7, 7]);
    // the rows in input order, as torchvision's
    let want = ck.f64s("pool.out");
    let r = assert_close(
        "pooled",
        &out.features.to_vec_f64().unwrap(),
        &want,
        1e-9,
        1e-9,
    );
    eprintln!("{r}");
}

#[test]
fn eval_detections_match_torchvision() {
    let ck = fixture();
    let out = run_eval(&ck, DType::F64, &proposals(&ck));
    assert!(out.losses.is_none());
    assert_eq!(out.detections.len(), 2);
    let (mut eb, mut es) = (0f64, 0f64);
    for (b, d) in out.detections.iter().enumerate() {
        let want_labels = ck.get(&format!("eval.labels.{b}")).to_vec::<i64>().unwrap();
        assert!(!want_labels.is_empty());
        assert_eq!(d.labels, want_labels, "image {b} labels");
        let got: Vec<f64> = d.boxes.iter().flatten().copied().collect();
        let want = ck.f64s(&format!("eval.boxes.{b}"));
        eb = eb.max(close(&format!("image {b} boxes"), &got, &want, 1e-6));
        let want = ck.f64s(&format!("eval.scores.{b}"));
        es = es.max(close(&format!("image {b} scores"), &d.scores, &want, 1e-6));
        assert!(
            d.scores.windows(2).all(|w| w[0] >= w[1]),
            "decreasing scores"
        );
    }
    eprintln!("eval: worst |diff| / bound: boxes {eb:.3}, scores {es:.3}");
}

#[test]
fn eval_f32_is_close_to_f64() {
    let ck = fixture();
    let out = run_eval(&ck, DType::F32, &proposals(&ck));
    for (b, d) in out.detections.iter().enumerate() {
        let want = ck.f64s(&format!("eval.scores.{b}"));
        assert_eq!(
            d.scores.len(),
            want.len(),
            "image {b}: detection count in f32"
        );
        close(&format!("image {b}: f32 scores"), &d.scores, &want, 1e-4);
    }
}

#[test]
fn train_losses_and_grads_match_torchvision() {
    let ck = fixture();
    let mut heads = heads_from_fixture(&ck, DType::F64);
    heads.sampler.batch_size_per_image = 1_000_000;
    assert!(heads.is_training());
    let tg = targets(&ck);
    let out = run(&heads, &ck, DType::F64, &proposals(&ck), Some(&tg));
    assert!(out.detections.is_empty());
    let losses = out.losses.expect("train mode gives losses");
    let (lc, lb) = (
        losses.classifier.item().unwrap(),
        losses.box_reg.item().unwrap(),
    );
    let (wc, wb) = (
        ck.get("train.loss_classifier").item().unwrap(),
        ck.get("train.loss_box_reg").item().unwrap(),
    );
    let (ec, eb) = ((lc - wc).abs() / wc.abs(), (lb - wb).abs() / wb.abs());
    assert!(
        ec <= 1e-6 && eb <= 1e-6,
        "classifier {lc} vs {wc}, box_reg {lb} vs {wb}"
    );
    losses
        .classifier
        .add(&losses.box_reg)
        .unwrap()
        .backward()
        .unwrap();
    let mut worst = 0f64;
    for p in heads.params() {
        let want = ck.f64s(&format!("train.grad.{}", p.name()));
        // f64 on both sides: a few hundred-term sums, so rounding is far below
        let r = assert_grad_close(&format!("grad {}", p.name()), &p, &want, 1e-8, 1e-6);
        worst = worst.max(r.ratio());
    }
    eprintln!(
        "train: loss rel err classifier {ec:.2e}, box_reg {eb:.2e}; grads worst |diff| / bound {worst:.3}"
    );
}

#[test]
fn parameter_names_are_torchvisions() {
    let heads = RoiHeads::new("roi_heads", 16, 32, 5, DType::F32, &mut Rng::new(0)).unwrap();
    let got: Vec<(String, Vec<usize>)> = heads
        .params()
        .iter()
        .map(|p| (p.name().to_string(), p.dims().to_vec()))
        .collect();
    let want: Vec<(String, Vec<usize>)> = [
        ("roi_heads.box_head.fc6.weight", vec![32, 16 * 49]),
        ("roi_heads.box_head.fc6.bias", vec![32]),
        ("roi_heads.box_head.fc7.weight", vec![32, 32]),
        ("roi_heads.box_head.fc7.bias", vec![32]),
        ("roi_heads.box_predictor.cls_score.weight", vec![5, 32]),
        ("roi_heads.box_predictor.cls_score.bias", vec![5]),
        ("roi_heads.box_predictor.bbox_pred.weight", vec![20, 32]),
        ("roi_heads.box_predictor.bbox_pred.bias", vec![20]),
    ]
    .into_iter()
    .map(|(n, d)| (n.to_string(), d))
    .collect();
    assert_eq!(got, want);
    assert_eq!(heads.sampler.batch_size_per_image, 512);
    assert_eq!(heads.box_coder.weights, [10.0, 10.0, 5.0, 5.0]);
}

#[test]
fn default_sampler_subsamples_deterministically() {
    let ck = fixture();
    let mut heads = heads_from_fixture(&ck, DType::F64);
    heads.sampler.batch_size_per_image = 8;
    let props = proposals(&ck);
    let tg = targets(&ck);
    let a = heads
        .select_training_samples::<f64>(&props, &tg, &mut Rng::new(7))
        .unwrap();
    let b = heads
        .select_training_samples::<f64>(&props, &tg, &mut Rng::new(7))
        .unwrap();
    assert_eq!(a.proposals, b.proposals);
    for (img, labels) in a.labels.iter().enumerate() {
        assert_eq!(labels.len(), 8, "image {img}: 8 sampled");
        let pos = labels.iter().filter(|&&l| l > 0).count();
        assert_eq!(pos, 2, "image {img}: int(8 * 0.25) positives");
        assert!(labels.iter().all(|&l| (0..5).contains(&l)));
    }
    let out = heads
        .forward(
            &features(&ck, DType::F64),
            &props,
            &ck.meta_pairs("image_sizes"),
            Some(&tg),
            &mut Rng::new(7),
        )
        .unwrap();
    let l = out.losses.unwrap();
    assert!(l.classifier.item().unwrap() > 0.0 && l.box_reg.item().unwrap() > 0.0);
}

fn err<T>(r: engine::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_input_is_an_error() {
    let ck = fixture();
    let heads = heads_from_fixture(&ck, DType::F64);
    let feats = features(&ck, DType::F64);
    let (props, sizes) = (proposals(&ck), ck.meta_pairs("image_sizes"));
    let mut rng = Rng::new(0);
    assert!(err(heads.forward(&feats, &props, &sizes, None, &mut rng)).contains("targets"));
    let mut tg = targets(&ck);
    tg[0].labels[0] = 0;
    assert!(err(heads.forward(&feats, &props, &sizes, Some(&tg), &mut rng)).contains("label"));
    let mut tg = targets(&ck);
    tg[1].labels[0] = 5;
    assert!(err(heads.forward(&feats, &props, &sizes, Some(&tg), &mut rng)).contains("label"));
    let mut tg = targets(&ck);
    tg[1].boxes[0] = [5.0, 5.0, 5.0, 9.0];
    assert!(
        err(heads.forward(&feats, &props, &sizes, Some(&tg), &mut rng)).contains("positive width")
    );
    assert!(
        err(heads.forward(&feats, &props[..1], &sizes, Some(&targets(&ck)), &mut rng))
            .contains("batch")
    );
    let narrow: Vec<Tensor> = feats.iter().map(|f| f.narrow(1, 0, 8).unwrap()).collect();
    assert!(
        err(heads.forward(&narrow, &props, &sizes, Some(&targets(&ck)), &mut rng))
            .contains("C = 16")
    );
    let pooler = MultiScaleRoIAlign::box_default();
    let bad_box = vec![vec![[10.0, 10.0, 5.0, 20.0]], vec![]];
    assert!(err(pooler.forward(&feats, &bad_box, &sizes)).contains("area"));
    let logits = Tensor::zeros(&[2, 3], DType::F64);
    let deltas = Tensor::zeros(&[2, 12], DType::F64);
    assert!(err(fastrcnn_loss(&logits, &deltas, &[0, 3], &[[0.0; 4]; 2])).contains("outside"));
    assert!(err(fastrcnn_loss(&logits, &deltas, &[], &[])).contains("no sampled"));
}

#[test]
fn eval_with_an_image_without_proposals() {
    let ck = fixture();
    let mut props = proposals(&ck);
    props[1].clear();
    let out = run_eval(&ck, DType::F64, &props);
    assert!(out.detections[1].boxes.is_empty());
    // image 0's detections do not depend on image 1's proposals
    let want = ck.get("eval.labels.0").to_vec::<i64>().unwrap();
    assert_eq!(out.detections[0].labels, want);
    close(
        "image 0 scores",
        &out.detections[0].scores,
        &ck.f64s("eval.scores.0"),
        1e-6,
    );
}

#[test]
fn train_with_a_background_only_image() {
    let ck = fixture();
    let heads = heads_from_fixture(&ck, DType::F64);
    let mut tg = targets(&ck);
    tg[1] = RoiTarget::default();
    let s = heads
        .select_training_samples::<f64>(&proposals(&ck), &tg, &mut Rng::new(1))
        .unwrap();
    assert!(s.labels[1].iter().all(|&l| l == 0));
    assert_eq!(s.labels[1].len(), proposals(&ck)[1].len());
    let out = heads
        .forward(
            &features(&ck, DType::F64),
            &proposals(&ck),
            &ck.meta_pairs("image_sizes"),
            Some(&tg),
            &mut Rng::new(1),
        )
        .unwrap();
    let l = out.losses.unwrap();
    assert!(l.classifier.item().unwrap().is_finite() && l.box_reg.item().unwrap().is_finite());
}
