//! The assembled Mask R-CNN against torchvision
//! (tools/golden/make_mask_rcnn_fixtures.py), in f32: a quarter-width
//! ResNet-18-FPN Mask R-CNN whose every weight comes from the counter hash
//! of tools/golden/export_resnet50.py, keyed by torchvision's names. Checks
//! the names, the trainable set, RPN proposals, final detections and pasted
//! masks (1e-4 relative; boxes see `eval_matches_torchvision`), the five
//! train losses (1e-4), the frozen backbone BN and bad input.

use engine::{Rng, Tensor};
use models::detection::data::DetTarget;
use models::detection::mask_rcnn::{MaskRcnn, MaskRcnnConfig};
use std::collections::BTreeMap;
use testutil::hash::hash_init;
use testutil::{assert_close, Golden};

const TOL: f64 = 1e-4;

// ---------------------------------------------------------------------------
// the hash init (testutil::hash, twin of tools/golden/export_resnet50.py)

/// The fixture script's `head_scale`: the box predictors are scaled down so
/// that decoded boxes stay inside the images and scores do not saturate.
fn head_scale(name: &str) -> f64 {
    if name.starts_with("rpn.head.bbox_pred.")
        || name.starts_with("roi_heads.box_predictor.bbox_pred.")
    {
        0.05
    } else if name.starts_with("roi_heads.box_predictor.cls_score.") {
        0.01
    } else {
        1.0
    }
}

fn config() -> MaskRcnnConfig {
    MaskRcnnConfig {
        arch: "resnet18".into(),
        width: 16,
        num_classes: 4,
        fpn_channels: 32,
        representation_size: 64,
        trainable_layers: 3,
        in_channels: 3,
    }
}

fn hashed_model() -> MaskRcnn {
    let model = MaskRcnn::new(config(), &mut Rng::new(7)).unwrap();
    hash_init(&model.params(), &model.buffers(), head_scale);
    model
}

/// tests/fixtures/golden/mask_rcnn_eval.safetensors
fn fixture() -> Golden {
    Golden::golden("mask_rcnn_eval")
}

/// max |a - b| / max(|b|, 1) over the pairs: a measure, NaN counting as
/// infinite; panics on a length mismatch.
fn rel_err(what: &str, a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(
            0.0,
            |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
        )
}

/// Asserts per element |a - b| <= tol (1 + |b|) (NaN fails); returns the
/// worst |a - b| / bound.
fn close(what: &str, a: &[f64], b: &[f64], tol: f64) -> f64 {
    assert_close(what, a, b, tol, tol).ratio()
}

// ---------------------------------------------------------------------------

#[test]
fn names_and_shapes_are_torchvisions() {
    let ck = fixture();
    let want: BTreeMap<String, Vec<usize>> = ck
        .meta("param_names")
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
            )
        })
        .collect();
    let model = MaskRcnn::new(config(), &mut Rng::new(0)).unwrap();
    let mut have = BTreeMap::new();
    for p in model.params() {
        have.insert(p.name().to_string(), p.dims());
    }
    for b in model.buffers() {
        have.insert(b.name().to_string(), b.get().dims().to_vec());
    }
    assert_eq!(have, want);

    let trainable: Vec<String> = ck
        .meta("trainable")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mine: Vec<String> = model
        .trainable_params()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    let (mut a, mut b) = (mine.clone(), trainable.clone());
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "trainable parameters differ from torchvision's requires_grad set"
    );
    assert!(mine
        .iter()
        .all(|n| !n.starts_with("backbone.body.layer1") && !n.starts_with("backbone.body.conv1")));
}

#[test]
fn eval_matches_torchvision() {
    let ck = fixture();
    let model = hashed_model();
    model.set_training(false);
    let images = ck.get("images").clone();
    let image_sizes = ck.meta_pairs("image_sizes");
    let original_sizes = ck.meta_pairs("original_sizes");

    // RPN proposals (the first 20 per image and the count)
    let feats = model
        .fpn
        .forward(&model.backbone.stage_outputs(&images).unwrap())
        .unwrap();
    let d = images.dims();
    let props = model
        .rpn
        .forward_with_scores(&feats, &image_sizes, (d[2], d[3]), None, &mut Rng::new(0))
        .unwrap()
        .boxes;
    let mut worst = 0.0f64;
    for (b, p) in props.iter().enumerate() {
        let count = ck.f64s(&format!("proposal_count.{b}"))[0] as usize;
        assert_eq!(p.len(), count, "image {b}: proposal count");
        let mine: Vec<f64> = p.iter().take(20).flatten().copied().collect();
        let want = ck.f64s(&format!("proposals.{b}"));
        worst = worst.max(close(&format!("image {b}: proposals"), &mine, &want, TOL));
    }
    eprintln!("proposals: worst |diff| / bound {worst:.3}");

    let dets = model
        .forward_eval(&images, &image_sizes, &original_sizes)
        .unwrap();
    assert_eq!(dets.len(), 2);
    let (mut eb, mut es, mut em, mut ems) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    // against the float64 run: ours and torchvision's float32 errors
    let (mut eb64, mut etv64) = (0.0f64, 0.0f64);
    for (b, det) in dets.iter().enumerate() {
        let labels: Vec<i64> = ck
            .f64s(&format!("labels.{b}"))
            .iter()
            .map(|&v| v as i64)
            .collect();
        assert!(!labels.is_empty(), "the fixture should have detections");
        assert_eq!(det.labels, labels, "image {b}: labels");
        let boxes: Vec<f64> = det.boxes.iter().flatten().copied().collect();
        let tv32 = ck.f64s(&format!("boxes.{b}"));
        let tv64 = ck.f64s(&format!("boxes64.{b}"));
        // Box coordinates carry float32's own error of this random network
        // (torchvision float32 vs float64: ~3e-4 relative, above 1e-4), so
        // they must be as close to the exact answer as torchvision's float32.
        eb = eb.max(close(&format!("image {b}: boxes"), &boxes, &tv32, 1e-3));
        eb64 = eb64.max(rel_err("boxes", &boxes, &tv64));
        etv64 = etv64.max(rel_err("boxes", &tv32, &tv64));
        let want = ck.f64s(&format!("scores.{b}"));
        es = es.max(close(
            &format!("image {b}: scores"),
            &det.scores,
            &want,
            TOL,
        ));
        let (oh, ow) = original_sizes[b];
        assert_eq!(det.masks.dims(), [labels.len(), 1, oh, ow]);
        let m = det.masks.to_vec_f64().unwrap();
        let sums: Vec<f64> = m.chunks(oh * ow).map(|c| c.iter().sum()).collect();
        let want = ck.f64s(&format!("mask_sums.{b}"));
        ems = ems.max(close(&format!("image {b}: mask sums"), &sums, &want, TOL));
        let want = ck.f64s(&format!("masks.{b}"));
        em = em.max(close(
            &format!("image {b}: masks"),
            &m[..want.len()],
            &want,
            TOL,
        ));
    }
    eprintln!("detections: worst |diff| / bound: boxes {eb:.3}, scores {es:.3}, masks {em:.3}, mask sums {ems:.3}");
    eprintln!("boxes vs float64 (max rel err): ours {eb64:.3e}, torchvision float32 {etv64:.3e}");
    assert!(
        eb64 <= 2.0 * etv64 + 1e-6,
        "boxes: ours {eb64} from float64, torchvision float32 {etv64}"
    );
}

/// Two boxes with filled-rectangle masks on a `size` image.
fn target(size: (usize, usize)) -> DetTarget {
    let (h, w) = size;
    let rects = [[4usize, 6, 30, 40], [20, 10, 50, 30]];
    let masks = rects
        .iter()
        .map(|r| {
            let mut m = vec![0u8; h * w];
            for y in r[1]..r[3] {
                for x in r[0]..r[2] {
                    m[y * w + x] = 1;
                }
            }
            m
        })
        .collect();
    DetTarget {
        boxes: rects.iter().map(|r| r.map(|v| v as f32)).collect(),
        labels: vec![1, 3],
        masks,
        image_id: 0,
        orig_size: size,
        size,
    }
}

/// The fixture's images, their sizes and a target for each.
fn train_batch(ck: &Golden) -> (Tensor, Vec<(usize, usize)>, Vec<DetTarget>) {
    let image_sizes = ck.meta_pairs("image_sizes");
    let targets = image_sizes.iter().map(|&s| target(s)).collect();
    (ck.get("images").clone(), image_sizes, targets)
}

#[test]
fn train_losses_backbone_bn_frozen_and_deterministic() {
    let ck = fixture();
    let (images, image_sizes, targets) = train_batch(&ck);
    let run = || {
        let model = hashed_model();
        model.set_training(true);
        let stats: Vec<Vec<f64>> = model
            .buffers()
            .iter()
            .map(|b| b.get().to_vec_f64().unwrap())
            .collect();
        let losses = model
            .forward_train(&images, &image_sizes, &targets, &mut Rng::new(3))
            .unwrap();
        let total = losses.total().unwrap();
        total.backward().unwrap();
        let after: Vec<Vec<f64>> = model
            .buffers()
            .iter()
            .map(|b| b.get().to_vec_f64().unwrap())
            .collect();
        assert_eq!(
            stats, after,
            "backbone BN running stats changed in train mode"
        );
        let grads = model
            .trainable_params()
            .iter()
            .filter(|p| {
                p.grad()
                    .is_some_and(|g| g.to_vec_f64().unwrap().iter().any(|&v| v != 0.0))
            })
            .count();
        let vals: Vec<f64> = [
            &losses.classifier,
            &losses.box_reg,
            &losses.mask,
            &losses.objectness,
            &losses.rpn_box_reg,
        ]
        .iter()
        .map(|t| t.item().unwrap())
        .collect();
        (vals, grads, model.trainable_params().len())
    };
    let (a, grads, n) = run();
    eprintln!("losses {a:?}, {grads} of {n} trainable params with gradient");
    assert!(a.iter().all(|v| v.is_finite() && *v >= 0.0), "{a:?}");
    assert!(a[2] > 0.0 && a[0] > 0.0 && a[3] > 0.0, "{a:?}");
    assert!(
        grads > n / 2,
        "only {grads} of {n} trainable params got a gradient"
    );
    let (b, _, _) = run();
    assert_eq!(a, b, "same seed, different losses");

    // frozen BN: in train mode the backbone is per-image (no batch statistics)
    let model = hashed_model();
    model.set_training(true);
    let both = model.backbone.stage_outputs(&images).unwrap();
    let first = model
        .backbone
        .stage_outputs(&images.narrow(0, 0, 1).unwrap().contiguous().unwrap())
        .unwrap();
    // the same f32 computation per image: rounding-level differences only
    assert_close(
        "C5 of image 0 alone vs in the batch",
        &first[3].to_vec_f64().unwrap(),
        &both[3]
            .narrow(0, 0, 1)
            .unwrap()
            .contiguous()
            .unwrap()
            .to_vec_f64()
            .unwrap(),
        1e-5,
        1e-5,
    );
}

/// torchvision's `requires_grad_(False)` set (conv1, layer1, every backbone
/// BN) is frozen: it gets no gradient, every trainable param gets the same
/// bits as with nothing frozen, and the frozen stages record no backward.
#[test]
fn frozen_params_get_no_gradient_and_change_no_trainable_one() {
    let ck = fixture();
    let (images, image_sizes, targets) = train_batch(&ck);
    let model = hashed_model();
    // (trainable_params is the rest; `names_and_shapes_are_torchvisions`
    // checks it against torchvision's requires_grad set)
    let frozen: Vec<String> = model
        .params()
        .iter()
        .filter(|p| p.is_frozen())
        .map(|p| p.name().to_string())
        .collect();
    assert!(frozen.iter().any(|n| n.starts_with("backbone.body.conv1")));
    assert!(frozen
        .iter()
        .any(|n| n.starts_with("backbone.body.layer1.")));
    assert!(frozen
        .iter()
        .any(|n| n.starts_with("backbone.body.layer4.") && n.contains("bn")));

    // (the gradients of the params not in `frozen`, frozen params with one)
    let run = |thaw: bool| {
        let model = hashed_model();
        model.set_training(true);
        if thaw {
            model.params().iter().for_each(|p| p.set_frozen(false));
        }
        let losses = model
            .forward_train(&images, &image_sizes, &targets, &mut Rng::new(3))
            .unwrap();
        losses.total().unwrap().backward().unwrap();
        let trainable: BTreeMap<String, Vec<f64>> = model
            .params()
            .iter()
            .filter(|p| !frozen.iter().any(|n| n == p.name()))
            .filter_map(|p| Some((p.name().to_string(), p.grad()?.to_vec_f64().unwrap())))
            .collect();
        let frozen_with_grad = model
            .params()
            .iter()
            .filter(|p| p.is_frozen() && p.grad().is_some())
            .count();
        (trainable, frozen_with_grad)
    };
    let (grads, frozen_with_grad) = run(false);
    let (thawed, _) = run(true);
    assert_eq!(frozen_with_grad, 0);
    assert_eq!(grads.len(), model.trainable_params().len());
    assert!(grads == thawed, "trainable gradients changed by freezing");

    // conv1 and layer1 frozen: their output is outside the graph, layer2's not
    let c = model.backbone.stage_outputs(&images).unwrap();
    assert!(!c[0].requires_grad() && c[1].requires_grad());
}

#[test]
fn bad_inputs_are_errors() {
    let model = MaskRcnn::new(config(), &mut Rng::new(0)).unwrap();
    let images = Tensor::zeros(&[1, 3, 64, 64], engine::DType::F32);
    // train mode
    assert!(model
        .forward_eval(&images, &[(64, 64)], &[(64, 64)])
        .is_err());
    model.set_training(false);
    assert!(model
        .forward_eval(&images, &[(64, 64), (64, 64)], &[(64, 64)])
        .is_err());
    assert!(model
        .forward_eval(&images, &[(80, 64)], &[(64, 64)])
        .is_err());
    assert!(model.forward_eval(&images, &[(64, 64)], &[]).is_err());
    let t = target((64, 64));
    assert!(model
        .forward_train(
            &images,
            &[(64, 64)],
            std::slice::from_ref(&t),
            &mut Rng::new(0)
        )
        .is_err());
    model.set_training(true);
    let mut bad = t.clone();
    bad.labels[0] = 4;
    assert!(model
        .forward_train(&images, &[(64, 64)], &[bad], &mut Rng::new(0))
        .is_err());
    let mut bad = t;
    bad.masks.pop();
    assert!(model
        .forward_train(&images, &[(64, 64)], &[bad], &mut Rng::new(0))
        .is_err());
    let mut cfg = config();
    cfg.trainable_layers = 6;
    assert!(MaskRcnn::new(cfg, &mut Rng::new(0)).is_err());
}

#[test]
fn train_losses_match_torchvision() {
    let ck = fixture();
    let (images, image_sizes, targets) = train_batch(&ck);
    let mut model = hashed_model();
    model.set_training(true);
    // every eligible anchor / proposal sampled, as the fixture: no randomness
    model.rpn.sampler.batch_size_per_image = 1_000_000_000;
    model.roi_heads.sampler.batch_size_per_image = 1_000_000_000;
    let l = model
        .forward_train(&images, &image_sizes, &targets, &mut Rng::new(0))
        .unwrap();
    let mine = [
        &l.classifier,
        &l.box_reg,
        &l.mask,
        &l.objectness,
        &l.rpn_box_reg,
    ]
    .map(|t| t.item().unwrap());
    let keys = [
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    ];
    let want = keys.map(|k| ck.f64s(&format!("train.{k}"))[0]);
    eprintln!("train losses {mine:?} vs torchvision {want:?}");
    close("train losses", &mine, &want, TOL);
}

// ---------------------------------------------------------------------------
// full-width torchvision maskrcnn_resnet50_fpn (tools/golden/make_r50fpn_fixtures.py)

/// The fixture script's `scale`: box deltas and class logits tempered,
/// each bottleneck's last BN scaled by 0.2.
fn r50_scale(name: &str) -> f64 {
    if name.starts_with("backbone.body.layer")
        && (name.ends_with("bn3.weight") || name.ends_with("bn3.bias"))
    {
        0.2
    } else if name.starts_with("roi_heads.box_predictor.cls_score.") {
        0.2
    } else {
        head_scale(name)
    }
}

/// tests/fixtures/golden/r50fpn.safetensors
fn r50_fixture() -> Golden {
    Golden::golden("r50fpn")
}

/// torchvision's `maskrcnn_resnet50_fpn` (91 classes) with the hashed
/// weights; the running statistics are buffers, scaled like torch's.
fn r50_model() -> MaskRcnn {
    let model = MaskRcnn::new(
        MaskRcnnConfig::torchvision("resnet50", 91),
        &mut Rng::new(0),
    )
    .unwrap();
    hash_init(&model.params(), &[], r50_scale);
    for b in model.buffers() {
        let dims = b.get().dims().to_vec();
        let v = testutil::hash::hash_init_value_scaled(b.name(), &dims, r50_scale(b.name()) as f32);
        b.set(v).unwrap();
    }
    model
}

/// The script's image, (u + 1) / 2 with u = hash_uniform("r50fpn.image"),
/// normalised in f32 as torchvision's transform does (256x320: not
/// resized, not padded); checked against the fixture's sum.
fn r50_images(ck: &Golden) -> (Tensor, (usize, usize)) {
    let (h, w) = (256, 320);
    let mean = [0.485f32, 0.456, 0.406];
    let std = [0.229f32, 0.224, 0.225];
    let v: Vec<f32> = testutil::hash::hash_uniform("r50fpn.image", 3 * h * w)
        .enumerate()
        .map(|(i, u)| {
            let c = i / (h * w);
            ((u as f32 + 1.0) / 2.0 - mean[c]) / std[c]
        })
        .collect();
    let sum: f64 = v.iter().map(|&x| x as f64).sum();
    close("image sum", &[sum], &ck.f64s("image_sum"), 1e-9);
    (Tensor::from_vec(v, &[1, 3, h, w]).unwrap(), (h, w))
}

#[test]
fn r50fpn_names_and_eval_match_torchvision() {
    let ck = r50_fixture();
    let model = r50_model();
    let want: BTreeMap<String, Vec<usize>> =
        serde_json::from_value(ck.meta("param_names")).unwrap();
    let mut have: BTreeMap<String, Vec<usize>> = model
        .params()
        .iter()
        .map(|p| (p.name().to_string(), p.dims()))
        .collect();
    have.extend(
        model
            .buffers()
            .iter()
            .map(|b| (b.name().to_string(), b.get().dims().to_vec())),
    );
    assert_eq!(
        have, want,
        "names and shapes differ from torchvision's state dict"
    );

    model.set_training(false);
    let (images, size) = r50_images(&ck);
    let det = model
        .forward_eval(&images, &[size], &[size])
        .unwrap()
        .remove(0);
    let labels: Vec<i64> = ck.f64s("labels").iter().map(|&v| v as i64).collect();
    assert!(labels.len() >= 5, "the fixture should have detections");
    assert_eq!(det.labels, labels, "labels");
    let boxes: Vec<f64> = det.boxes.iter().flatten().copied().collect();
    let eb = close("boxes", &boxes, &ck.f64s("boxes"), 1e-3);
    let (eb64, etv64) = (
        rel_err("boxes", &boxes, &ck.f64s("boxes64")),
        rel_err("boxes", &ck.f64s("boxes"), &ck.f64s("boxes64")),
    );
    let es = close("scores", &det.scores, &ck.f64s("scores"), TOL);
    let m = det.masks.to_vec_f64().unwrap();
    let sums: Vec<f64> = m.chunks(size.0 * size.1).map(|c| c.iter().sum()).collect();
    let ems = close("mask sums", &sums, &ck.f64s("mask_sums"), TOL);
    let mask0: Vec<f64> = (0..size.0)
        .step_by(4)
        .flat_map(|y| (0..size.1).step_by(4).map(move |x| (y, x)))
        .map(|(y, x)| m[y * size.1 + x])
        .collect();
    let em = close("mask 0 (every 4th pixel)", &mask0, &ck.f64s("masks0"), TOL);
    eprintln!(
        "R50-FPN eval, {} detections: worst |diff| / bound: boxes {eb:.3}, scores {es:.3}, \
         mask sums {ems:.3}, mask 0 {em:.3}; boxes vs float64: ours {eb64:.2e}, torchvision f32 {etv64:.2e}",
        labels.len()
    );
    assert!(
        eb64 <= 2.0 * etv64 + 1e-6,
        "boxes: ours {eb64} from float64, torchvision float32 {etv64}"
    );
}

/// The train case's gt: filled rectangles (the script's RECTS / RECT_LABELS).
fn r50_target(size: (usize, usize)) -> DetTarget {
    let (h, w) = size;
    let rects = [
        [20usize, 30, 150, 200],
        [120, 60, 300, 180],
        [200, 150, 260, 250],
    ];
    let masks = rects
        .iter()
        .map(|r| {
            let mut m = vec![0u8; h * w];
            for y in r[1]..r[3] {
                m[y * w + r[0]..y * w + r[2]].fill(1);
            }
            m
        })
        .collect();
    DetTarget {
        boxes: rects.iter().map(|r| r.map(|v| v as f32)).collect(),
        labels: vec![1, 18, 62],
        masks,
        image_id: 0,
        orig_size: size,
        size,
    }
}

/// The five losses and the gradients of every trainable parameter (their
/// norms, sums and 16 hashed elements; the whole gradient of a few) against
/// torchvision's float64 run of the same float32 weights (a full-width
/// R50-FPN backward over 2000 proposals: 16 s on 2 cores).
#[test]
fn r50fpn_train_losses_and_gradients_match_torchvision() {
    let ck = r50_fixture();
    let mut model = r50_model();
    model.set_training(true);
    model.rpn.sampler.batch_size_per_image = 1_000_000_000;
    model.roi_heads.sampler.batch_size_per_image = 1_000_000_000;
    let (images, size) = r50_images(&ck);
    let l = model
        .forward_train(&images, &[size], &[r50_target(size)], &mut Rng::new(0))
        .unwrap();
    let keys = [
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    ];
    let mine = [
        &l.classifier,
        &l.box_reg,
        &l.mask,
        &l.objectness,
        &l.rpn_box_reg,
    ]
    .map(|t| t.item().unwrap());
    let want64 = keys.map(|k| ck.f64s(&format!("train64.{k}"))[0]);
    let want32 = keys.map(|k| ck.f64s(&format!("train.{k}"))[0]);
    eprintln!(
        "R50-FPN losses {mine:?}\n  torchvision f32 {want32:?}\n  torchvision f64 {want64:?}"
    );
    close("R50-FPN train losses", &mine, &want64, TOL);
    l.total().unwrap().backward().unwrap();

    let names: Vec<String> = serde_json::from_value(ck.meta("grad_names")).unwrap();
    let params: BTreeMap<String, engine::nn::Param> = model
        .trainable_params()
        .into_iter()
        .map(|p| (p.name().to_string(), p))
        .collect();
    let mut mine_names: Vec<&String> = params.keys().collect();
    let mut want_names: Vec<&String> = names.iter().collect();
    mine_names.sort();
    want_names.sort();
    assert_eq!(mine_names, want_names, "trainable parameters");
    let samples = ck.meta("samples").as_u64().unwrap() as usize;
    let (norm64, sum64, abs64) = (
        ck.f64s("grad64.norm"),
        ck.f64s("grad64.sum"),
        ck.f64s("grad64.abs_sum"),
    );
    let (norm32, sample64) = (ck.f64s("grad.norm"), ck.f64s("grad64.sample"));
    let (mut en, mut ets, mut es) = (0.0f64, 0.0f64, 0.0f64);
    let mut fpn = 0;
    for (i, n) in names.iter().enumerate() {
        let g = params[n]
            .grad()
            .unwrap_or_else(|| panic!("{n}: no gradient"))
            .to_vec_f64()
            .unwrap();
        let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        en = en.max((norm - norm64[i]).abs() / norm64[i].max(1e-30));
        ets = ets.max((norm32[i] - norm64[i]).abs() / norm64[i].max(1e-30));
        let sum: f64 = g.iter().sum();
        assert!(
            (sum - sum64[i]).abs() <= GRAD_TOL * abs64[i],
            "{n}: sum {sum} vs {}",
            sum64[i]
        );
        // elements: the scale is the tensor's mean |g|
        let mean_abs = abs64[i] / g.len() as f64;
        let h = testutil::hash::fnv1a64(&format!("sample:{n}"));
        let picked: Vec<f64> = (0..samples as u64)
            .map(|j| g[(testutil::hash::splitmix64(h.wrapping_add(j)) % g.len() as u64) as usize])
            .collect();
        let r = assert_close(
            &format!("{n}: sampled gradient"),
            &picked,
            &sample64[i * samples..(i + 1) * samples],
            GRAD_TOL * mean_abs,
            GRAD_TOL,
        );
        es = es.max(r.ratio());
        fpn += usize::from(n.starts_with("backbone.fpn."));
    }
    eprintln!(
        "R50-FPN gradients of {} trainable tensors ({fpn} FPN): worst norm rel err {en:.2e} \
         (torchvision f32: {ets:.2e}), sampled elements worst |diff| / bound {es:.3}",
        names.len()
    );
    assert!(en <= GRAD_TOL, "gradient norm rel err {en}");
    assert_eq!(fpn, 16, "every FPN tensor's gradient is compared");
    let full: Vec<String> = serde_json::from_value(ck.meta("full_grads")).unwrap();
    for n in &full {
        let g = params[n].grad().unwrap().to_vec_f64().unwrap();
        let want = ck.f64s(&format!("grad64.full.{n}"));
        let scale = want.iter().map(|v| v.abs()).sum::<f64>() / want.len() as f64;
        assert_close(
            &format!("{n}: gradient"),
            &g,
            &want,
            GRAD_TOL * scale,
            GRAD_TOL,
        );
    }
}

/// Bound of the R50-FPN gradient checks (relative; elements also absolute
/// against the tensor's mean |g|): float32 against torchvision's float64.
const GRAD_TOL: f64 = 1e-2;

/// The host round trips of one iteration, counted by `detection::traffic`
/// (on a GPU each read waits for the device): training reads the RPN's
/// objectness and deltas once each and nothing else; inference also reads
/// the box head's outputs and one pasted mask set per image. Uploads are
/// the targets, masks and RoIs built on the host.
#[test]
fn host_round_trips_per_iteration() {
    use models::detection::traffic;
    let ck = fixture();
    let images = ck.get("images").clone();
    let image_sizes = ck.meta_pairs("image_sizes");
    let b = image_sizes.len();
    let targets: Vec<DetTarget> = image_sizes.iter().map(|&s| target(s)).collect();
    let model = hashed_model();
    model.set_training(true);
    let before = traffic();
    let losses = model
        .forward_train(&images, &image_sizes, &targets, &mut Rng::new(3))
        .unwrap();
    losses.total().unwrap().backward().unwrap();
    let train = traffic();
    let (reads, uploads) = (train.reads - before.reads, train.uploads - before.uploads);
    eprintln!("train: {reads} reads, {uploads} uploads for {b} images");
    // the RPN's proposals and sampled counts
    assert_eq!(reads, 1, "training reads");
    // RPN: the anchors and the count table (first call), every image's gt
    // boxes, the labels;
    // box loss: labels, targets; mask loss: its inputs; RoIs: the boxes and
    // their levels per pooler
    assert!((10..=14).contains(&uploads), "training uploads {uploads}");

    model.set_training(false);
    let original_sizes = ck.meta_pairs("original_sizes");
    let before = traffic();
    let dets = model
        .forward_eval(&images, &image_sizes, &original_sizes)
        .unwrap();
    let eval = traffic();
    let (reads, uploads) = (eval.reads - before.reads, eval.uploads - before.uploads);
    eprintln!(
        "eval: {reads} reads, {uploads} uploads for {b} images, {} detections",
        dets.iter().map(|d| d.boxes.len()).sum::<usize>()
    );
    // RPN 1, post-processing 1; the masks are pasted on their device (the
    // pooled rows come in input order: nothing to put back)
    let pasted = dets.iter().filter(|d| !d.boxes.is_empty()).count();
    assert!(pasted > 0, "no detections: the paste is untested");
    assert_eq!(reads, 2, "inference reads");
    // per RoI pooler the RoIs and their levels, the mask one-hot, and one
    // table of sampling taps per image pasted (the anchors of this grid
    // and the count table are already on the device)
    assert_eq!(uploads, 5 + pasted, "inference uploads");
}
