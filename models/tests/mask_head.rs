//! The Mask R-CNN mask branch against torchvision in float64 (fixtures:
//! tools/golden/make_mask_head_fixtures.py): head logits from
//! MultiScaleRoIAlign-pooled features, project_masks_on_boxes, maskrcnn_loss
//! and the gradients of every head parameter and of the features,
//! maskrcnn_inference, paste_masks_in_image (f64 and f32 boxes, boxes
//! partially outside the image); plus init, names and bad input.

use engine::checkpoint::load;
use engine::nn::Module;
use engine::{DType, Rng, Tensor};
use models::detection::mask_head::{
    maskrcnn_inference, maskrcnn_loss, paste_masks_in_image, project_masks_on_boxes, MaskHead,
    MaskHeadConfig,
};
use std::collections::BTreeMap;
use std::path::Path;

fn fixture(name: &str) -> BTreeMap<String, Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/golden")
        .join(name);
    load(&p).unwrap().tensors
}

fn max_abs(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims());
    got.to_vec_f64()
        .unwrap()
        .iter()
        .zip(want.to_vec_f64().unwrap())
        .map(|(a, b)| {
            assert!(a.is_finite(), "non-finite output");
            (a - b).abs()
        })
        .fold(0.0, f64::max)
}

fn usizes(t: &Tensor) -> Vec<usize> {
    t.to_vec::<i64>()
        .unwrap()
        .iter()
        .map(|&v| v as usize)
        .collect()
}

fn small_config() -> MaskHeadConfig {
    MaskHeadConfig {
        in_channels: 8,
        layers: vec![8; 4],
        dilation: 1,
        dim_reduced: 8,
        num_classes: 5,
    }
}

/// The fixture's head with torchvision's weights loaded by name.
fn loaded_head(fx: &BTreeMap<String, Tensor>) -> MaskHead {
    let head = MaskHead::new("roi_heads", &small_config(), DType::F64, &mut Rng::new(1)).unwrap();
    let params = head.params();
    assert_eq!(params.len(), 12);
    let want: Vec<&String> = fx.keys().filter(|k| k.starts_with("roi_heads.")).collect();
    assert_eq!(want.len(), 12);
    for p in &params {
        let v = fx
            .get(p.name())
            .unwrap_or_else(|| panic!("no {}", p.name()));
        p.set(v.clone()).unwrap();
    }
    head
}

struct Gt {
    proposals: Vec<Tensor>,
    masks: Vec<Tensor>,
    labels: Vec<Vec<usize>>,
    matched: Vec<Vec<usize>>,
}

fn gt(fx: &BTreeMap<String, Tensor>) -> Gt {
    let f = |n: &str, i: usize| fx[&format!("{n}{i}")].clone();
    Gt {
        proposals: (0..2).map(|i| f("proposals", i)).collect(),
        masks: (0..2).map(|i| f("gt_masks", i)).collect(),
        labels: (0..2).map(|i| usizes(&f("gt_labels", i))).collect(),
        matched: (0..2).map(|i| usizes(&f("matched", i))).collect(),
    }
}

#[test]
fn head_loss_and_gradients_match_torchvision() {
    let fx = fixture("mask_head_train.safetensors");
    let head = loaded_head(&fx);
    let g = gt(&fx);
    assert_eq!(g.masks[0].dtype(), DType::U8);
    let x = fx["features"].requires_grad_().unwrap();
    let logits = head.forward(&x).unwrap();
    assert_eq!(logits.dims(), [6, 5, 28, 28]);
    let e_logits = max_abs(&logits, &fx["logits"]);
    assert!(e_logits < 1e-10, "logits max abs err {e_logits}");

    let loss = maskrcnn_loss(&logits, &g.proposals, &g.masks, &g.labels, &g.matched).unwrap();
    let want = fx["loss"].item().unwrap();
    let e_loss = (loss.item().unwrap() - want).abs();
    assert!(e_loss < 1e-6, "loss {} vs {want}", loss.item().unwrap());
    loss.backward().unwrap();
    let mut e_grad = 0.0f64;
    for p in head.params() {
        let gr = p
            .grad()
            .unwrap_or_else(|| panic!("no grad for {}", p.name()));
        let want = &fx[&format!("grad.{}", p.name())];
        let scale = want
            .to_vec_f64()
            .unwrap()
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{}: zero reference gradient", p.name());
        let e = max_abs(&gr, want);
        assert!(
            e < 1e-5 * scale.max(1.0),
            "grad {}: max abs err {e}",
            p.name()
        );
        e_grad = e_grad.max(e);
    }
    let e_gx = max_abs(&x.grad().expect("feature grad"), &fx["grad.features"]);
    assert!(e_gx < 1e-5, "feature grad max abs err {e_gx}");
    eprintln!(
        "mask head: logits {e_logits:.2e}, loss {e_loss:.2e}, param grads {e_grad:.2e}, feature grad {e_gx:.2e}"
    );
}

#[test]
fn projected_targets_match_torchvision() {
    let fx = fixture("mask_head_train.safetensors");
    let g = gt(&fx);
    let mut worst = 0.0f64;
    for i in 0..2 {
        let t = project_masks_on_boxes(&g.masks[i], &g.proposals[i], &g.matched[i], 28).unwrap();
        assert_eq!(t.dtype(), DType::F64);
        let want = &fx[&format!("project{i}")];
        // a target that is all 0 or all 1 would not test the resampling
        let v = want.to_vec_f64().unwrap();
        assert!(
            v.iter().any(|&a| a > 0.0 && a < 1.0),
            "image {i}: no fractional target"
        );
        let e = max_abs(&t, want);
        assert!(e < 1e-12, "image {i}: projected targets max abs err {e}");
        worst = worst.max(e);
    }
    eprintln!("project_masks_on_boxes: {worst:.2e}");
    let empty =
        project_masks_on_boxes(&g.masks[0], &Tensor::zeros(&[0, 4], DType::F64), &[], 28).unwrap();
    assert_eq!(empty.dims(), [0, 28, 28]);
}

#[test]
fn inference_probabilities_match_torchvision() {
    let fx = fixture("mask_head_train.safetensors");
    let labels: Vec<Vec<usize>> = (0..2)
        .map(|i| usizes(&fx[&format!("pred_labels{i}")]))
        .collect();
    let probs = maskrcnn_inference(&fx["logits"], &labels).unwrap();
    assert_eq!(probs.len(), 2);
    let mut worst = 0.0f64;
    for (i, p) in probs.iter().enumerate() {
        let e = max_abs(p, &fx[&format!("probs{i}")]);
        assert!(e < 1e-12, "image {i}: probabilities max abs err {e}");
        worst = worst.max(e);
    }
    eprintln!("maskrcnn_inference: {worst:.2e}");
}

#[test]
fn pasted_masks_match_torchvision() {
    let fx = fixture("mask_head_paste.safetensors");
    let masks = &fx["masks"];
    for (boxes, want) in [("boxes", "pasted"), ("boxes_f32", "pasted_f32")] {
        let got = paste_masks_in_image(masks, &fx[boxes], [36, 48], 1).unwrap();
        assert_eq!(got.dtype(), DType::F64);
        let want = &fx[want];
        // every case puts some of its mask into the image
        for (k, plane) in want.to_vec_f64().unwrap().chunks(36 * 48).enumerate() {
            assert!(
                plane.iter().any(|&v| v > 0.0),
                "{boxes} case {k} pastes nothing"
            );
        }
        let e = max_abs(&got, want);
        assert!(e < 1e-6, "{boxes}: pasted masks max abs err {e}");
        eprintln!("paste_masks_in_image ({boxes}): {e:.2e}");
    }
    // a box entirely outside the image pastes nothing instead of failing
    let out = paste_masks_in_image(
        &masks.narrow(0, 0, 1).unwrap(),
        &Tensor::from_vec(vec![100.0f64, 100.0, 120.0, 130.0], &[1, 4]).unwrap(),
        [36, 48],
        1,
    )
    .unwrap();
    assert!(out.to_vec_f64().unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn init_and_names_follow_torchvision() {
    let cfg = MaskHeadConfig {
        in_channels: 16,
        layers: vec![16; 4],
        dilation: 1,
        dim_reduced: 32,
        num_classes: 3,
    };
    let head = MaskHead::new("roi_heads", &cfg, DType::F32, &mut Rng::new(7)).unwrap();
    let names: Vec<String> = head.params().iter().map(|p| p.name().to_string()).collect();
    let mut want: Vec<String> = (0..4)
        .flat_map(|i| ["weight", "bias"].map(|s| format!("roi_heads.mask_head.{i}.0.{s}")))
        .collect();
    for m in ["conv5_mask", "mask_fcn_logits"] {
        for s in ["weight", "bias"] {
            want.push(format!("roi_heads.mask_predictor.{m}.{s}"));
        }
    }
    assert_eq!(names, want);
    let std = |v: &[f64]| (v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64).sqrt();
    for p in head.params() {
        let v = p.get().to_vec_f64().unwrap();
        let n = p.name();
        match (n.contains("mask_head"), n.ends_with("bias")) {
            (true, true) => assert!(v.iter().all(|&b| b == 0.0), "{n} not zero"),
            (false, true) => {
                let fan_in = if n.contains("conv5") { 32 * 4 } else { 32 };
                let bound = 1.0 / (fan_in as f64).sqrt();
                assert!(
                    v.iter().all(|b| b.abs() <= bound) && v.iter().any(|&b| b != 0.0),
                    "{n}"
                );
            }
            (_, false) => {
                let d = p.dims();
                let fan_out = d[0] * d[2] * d[3];
                let want = (2.0 / fan_out as f64).sqrt();
                let got = std(&v);
                assert!((got / want - 1.0).abs() < 0.2, "{n}: std {got} vs {want}");
            }
        }
    }
    let y = head
        .forward(&Tensor::zeros(&[2, 16, 14, 14], DType::F32))
        .unwrap();
    assert_eq!(y.dims(), [2, 3, 28, 28]);
}

#[test]
fn bad_inputs_are_reported() {
    let fx = fixture("mask_head_train.safetensors");
    let g = gt(&fx);
    let logits = &fx["logits"];
    let err = |r: engine::Result<Tensor>| r.map(|_| ()).unwrap_err().to_string();

    let head = MaskHead::new("roi_heads", &small_config(), DType::F64, &mut Rng::new(0)).unwrap();
    let e = err(head.forward(&Tensor::zeros(&[1, 4, 14, 14], DType::F64)));
    assert!(e.contains("[K, 8, S, S]"), "{e}");

    let bad_labels = vec![vec![3, 9], g.labels[1].clone()];
    let e = err(maskrcnn_loss(
        logits,
        &g.proposals,
        &g.masks,
        &bad_labels,
        &g.matched,
    ));
    assert!(e.contains("label 9"), "{e}");

    let bad_matched = vec![vec![0, 2, 0], g.matched[1].clone()];
    let e = err(maskrcnn_loss(
        logits,
        &g.proposals,
        &g.masks,
        &g.labels,
        &bad_matched,
    ));
    assert!(e.contains("matched index 2 out of range"), "{e}");

    let e = err(maskrcnn_loss(
        &logits.narrow(0, 0, 5).unwrap(),
        &g.proposals,
        &g.masks,
        &g.labels,
        &g.matched,
    ));
    assert!(e.contains("but 5 rows"), "{e}");

    let e = maskrcnn_inference(logits, &[vec![1usize, 2]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 labels"), "{e}");

    let e = err(paste_masks_in_image(
        &fx["logits"].narrow(1, 0, 1).unwrap(),
        &Tensor::zeros(&[5, 4], DType::F64),
        [10, 10],
        1,
    ));
    assert!(e.contains("boxes must be [6, 4]"), "{e}");
    let e = err(paste_masks_in_image(
        &fx["logits"]
            .narrow(0, 0, 1)
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap(),
        &Tensor::from_vec(vec![0.0f64, 0.0, f64::NAN, 3.0], &[1, 4]).unwrap(),
        [10, 10],
        1,
    ));
    assert!(e.contains("finite"), "{e}");

    // no positive proposals: a zero loss that still reaches the logits
    let empty = Tensor::zeros(&[0, 5, 28, 28], DType::F64)
        .requires_grad_()
        .unwrap();
    let z = Tensor::zeros(&[0, 4], DType::F64);
    let none: Vec<Vec<usize>> = vec![vec![], vec![]];
    let loss = maskrcnn_loss(&empty, &[z.clone(), z], &g.masks, &g.labels, &none).unwrap();
    assert_eq!(loss.item().unwrap(), 0.0);
    loss.backward().unwrap();
    assert_eq!(
        empty.grad().expect("grad reaches the logits").dims(),
        [0, 5, 28, 28]
    );
}
