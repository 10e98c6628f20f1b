//! The assembled Mask R-CNN against torchvision
//! (tools/golden/make_mask_rcnn_fixtures.py), in f32: a quarter-width
//! ResNet-18-FPN Mask R-CNN whose every weight comes from the counter hash
//! of tools/golden/export_resnet50.py, keyed by torchvision's names. Checks
//! the names, the trainable set, RPN proposals, final detections and pasted
//! masks (1e-4 relative; boxes see `eval_matches_torchvision`), the five
//! train losses (1e-4), the frozen backbone BN and bad input.

use engine::checkpoint::{load, Checkpoint};
use engine::{Rng, Tensor};
use models::detection::data::DetTarget;
use models::detection::mask_rcnn::{MaskRcnn, MaskRcnnConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

const TOL: f64 = 1e-4;

// ---------------------------------------------------------------------------
// the hash init (twin of tools/golden/export_resnet50.py, copied from
// tests/resnet50_parity.rs: this crate cannot depend on the tests crate)

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// u(name, j) = top 24 bits of splitmix64(fnv1a64(name) + j) / 2^23 - 1, in [-1, 1).
fn hash_uniform(name: &str, n: usize) -> impl Iterator<Item = f64> {
    let h = fnv1a64(name);
    (0..n as u64).map(move |j| (splitmix64(h.wrapping_add(j)) >> 40) as f64 / 8388608.0 - 1.0)
}

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

fn hash_init_value(name: &str, dims: &[usize], param: bool) -> Tensor {
    let n: usize = dims.iter().product();
    let f: Box<dyn Fn(f64) -> f64> = if name.ends_with(".running_mean") {
        Box::new(|u| 0.1 * u)
    } else if name.ends_with(".running_var") {
        Box::new(|u| 1.0 + 0.25 * (u + 1.0))
    } else if name.ends_with(".weight") && dims.len() >= 2 {
        let fan_in: usize = dims[1..].iter().product();
        let scale = (6.0 / fan_in as f64).sqrt();
        Box::new(move |u| u * scale)
    } else if name.ends_with(".weight") {
        Box::new(|u| 1.0 + 0.1 * u)
    } else if name.ends_with(".bias") {
        Box::new(|u| 0.1 * u)
    } else {
        panic!("no hash-init rule for {name}")
    };
    // torchvision multiplies the f32 tensor by the factor in f32
    let s = if param { head_scale(name) as f32 } else { 1.0 };
    let v: Vec<f32> = hash_uniform(name, n).map(|u| f(u) as f32 * s).collect();
    Tensor::from_vec(v, dims).unwrap()
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
    for p in model.params() {
        p.set(hash_init_value(p.name(), &p.dims(), true)).unwrap();
    }
    for b in model.buffers() {
        let dims = b.get().dims().to_vec();
        b.set(hash_init_value(b.name(), &dims, false)).unwrap();
    }
    model
}

// ---------------------------------------------------------------------------
// fixture

fn fixture() -> Checkpoint {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/golden/mask_rcnn_eval.safetensors");
    load(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn meta(ck: &Checkpoint, key: &str) -> Value {
    serde_json::from_str(
        ck.metadata
            .get(key)
            .unwrap_or_else(|| panic!("no metadata {key}")),
    )
    .unwrap_or_else(|e| panic!("metadata {key}: {e}"))
}

fn get<'a>(ck: &'a Checkpoint, key: &str) -> &'a Tensor {
    ck.tensors
        .get(key)
        .unwrap_or_else(|| panic!("fixture has no tensor {key}"))
}

fn sizes(ck: &Checkpoint, key: &str) -> Vec<(usize, usize)> {
    meta(ck, key)
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v[0].as_u64().unwrap() as usize,
                v[1].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

/// max |a - b| / max(|b|, 1) over the pairs; panics on a length mismatch.
fn rel_err(what: &str, a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(
        a.len(),
        b.len(),
        "{what}: {} values vs torchvision's {}",
        a.len(),
        b.len()
    );
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------

#[test]
fn names_and_shapes_are_torchvisions() {
    let ck = fixture();
    let want: BTreeMap<String, Vec<usize>> = meta(&ck, "param_names")
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

    let trainable: Vec<String> = meta(&ck, "trainable")
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
    let images = get(&ck, "images").clone();
    let image_sizes = sizes(&ck, "image_sizes");
    let original_sizes = sizes(&ck, "original_sizes");

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
        let count = get(&ck, &format!("proposal_count.{b}")).to_vec_f64()[0] as usize;
        assert_eq!(p.len(), count, "image {b}: proposal count");
        let mine: Vec<f64> = p.iter().take(20).flatten().copied().collect();
        let e = rel_err(
            "proposals",
            &mine,
            &get(&ck, &format!("proposals.{b}")).to_vec_f64(),
        );
        worst = worst.max(e);
    }
    eprintln!("proposals: max rel err {worst:.3e}");
    assert!(worst <= TOL, "proposals differ by {worst}");

    let dets = model
        .forward_eval(&images, &image_sizes, &original_sizes)
        .unwrap();
    assert_eq!(dets.len(), 2);
    let (mut eb, mut es, mut em, mut ems) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    // against the float64 run: ours and torchvision's float32 errors
    let (mut eb64, mut etv64) = (0.0f64, 0.0f64);
    for (b, det) in dets.iter().enumerate() {
        let labels: Vec<i64> = get(&ck, &format!("labels.{b}"))
            .to_vec_f64()
            .iter()
            .map(|&v| v as i64)
            .collect();
        assert!(!labels.is_empty(), "the fixture should have detections");
        assert_eq!(det.labels, labels, "image {b}: labels");
        let boxes: Vec<f64> = det.boxes.iter().flatten().copied().collect();
        let tv32 = get(&ck, &format!("boxes.{b}")).to_vec_f64();
        let tv64 = get(&ck, &format!("boxes64.{b}")).to_vec_f64();
        eb = eb.max(rel_err("boxes", &boxes, &tv32));
        eb64 = eb64.max(rel_err("boxes", &boxes, &tv64));
        etv64 = etv64.max(rel_err("boxes", &tv32, &tv64));
        es = es.max(rel_err(
            "scores",
            &det.scores,
            &get(&ck, &format!("scores.{b}")).to_vec_f64(),
        ));
        let (oh, ow) = original_sizes[b];
        assert_eq!(det.masks.dims(), [labels.len(), 1, oh, ow]);
        let m = det.masks.to_vec_f64();
        let sums: Vec<f64> = m.chunks(oh * ow).map(|c| c.iter().sum()).collect();
        ems = ems.max(rel_err(
            "mask sums",
            &sums,
            &get(&ck, &format!("mask_sums.{b}")).to_vec_f64(),
        ));
        let want = get(&ck, &format!("masks.{b}")).to_vec_f64();
        em = em.max(rel_err("masks", &m[..want.len()], &want));
    }
    eprintln!("detections: max rel err boxes {eb:.3e}, scores {es:.3e}, masks {em:.3e}, mask sums {ems:.3e}");
    eprintln!("boxes vs float64: ours {eb64:.3e}, torchvision float32 {etv64:.3e}");
    assert!(
        es <= TOL && em <= TOL && ems <= TOL,
        "scores / masks beyond {TOL}"
    );
    // Box coordinates carry float32's own error of this random network
    // (torchvision float32 vs float64: ~3e-4 relative, above 1e-4), so
    // they must be as close to the exact answer as torchvision's float32.
    assert!(eb <= 1e-3, "boxes differ from torchvision's by {eb}");
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

#[test]
fn train_losses_backbone_bn_frozen_and_deterministic() {
    let ck = fixture();
    let images = get(&ck, "images").clone();
    let image_sizes = sizes(&ck, "image_sizes");
    let targets: Vec<DetTarget> = image_sizes.iter().map(|&s| target(s)).collect();
    let run = || {
        let model = hashed_model();
        model.set_training(true);
        let stats: Vec<Vec<f64>> = model
            .buffers()
            .iter()
            .map(|b| b.get().to_vec_f64())
            .collect();
        let losses = model
            .forward_train(&images, &image_sizes, &targets, &mut Rng::new(3))
            .unwrap();
        let total = losses.total().unwrap();
        total.backward().unwrap();
        let after: Vec<Vec<f64>> = model
            .buffers()
            .iter()
            .map(|b| b.get().to_vec_f64())
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
                    .is_some_and(|g| g.to_vec_f64().iter().any(|&v| v != 0.0))
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
        .stage_outputs(&images.narrow(0, 0, 1).unwrap().contiguous())
        .unwrap();
    let e = rel_err(
        "C5",
        &first[3].to_vec_f64(),
        &both[3].narrow(0, 0, 1).unwrap().contiguous().to_vec_f64(),
    );
    assert!(e < 1e-5, "backbone output depends on the batch: {e}");
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
    let images = get(&ck, "images").clone();
    let image_sizes = sizes(&ck, "image_sizes");
    let targets: Vec<DetTarget> = image_sizes.iter().map(|&s| target(s)).collect();
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
    let want = keys.map(|k| get(&ck, &format!("train.{k}")).to_vec_f64()[0]);
    let e = rel_err("train losses", &mine, &want);
    eprintln!("train losses {mine:?} vs torchvision {want:?}: max rel err {e:.3e}");
    assert!(e <= TOL, "train losses differ by {e}");
}
