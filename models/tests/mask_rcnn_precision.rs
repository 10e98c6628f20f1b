//! Mask R-CNN under autocast (`MaskRcnn::set_compute_dtype`): the
//! convolutions and linear layers compute in bf16 / f16, RoIAlign, box
//! coding, proposal selection and the losses in f32, and the weights and
//! their gradients stay f32. Checked against the same model in f32 where
//! both sample the same anchors and RoIs.
//!
//! Bounds, set before any run from the formats' unit roundoff u (bf16
//! 2^-9, f16 2^-12): a value that went through the ~25 layers of a
//! ResNet-18-FPN in the half dtype carries a relative error of order
//! sqrt(25) u with f32 accumulation, so the losses are compared at
//! 8 sqrt(25) u (bf16 7.8e-2, f16 9.8e-3) relative to max(|f32 loss|, 0.1),
//! and the box head's gradients (two more layers, a backward) at 4x that
//! in relative L2 norm.

use engine::{DType, Rng, Tensor};
use models::detection::data::DetTarget;
use models::detection::mask_rcnn::{MaskRcnn, MaskRcnnConfig};
use models::detection::roi_heads::RoiTarget;

fn config() -> MaskRcnnConfig {
    MaskRcnnConfig {
        arch: "resnet18".into(),
        width: 8,
        num_classes: 3,
        fpn_channels: 16,
        representation_size: 32,
        trainable_layers: 5,
        in_channels: 3,
    }
}

const SIZES: [(usize, usize); 2] = [(64, 64), (56, 64)];

fn images() -> Tensor {
    Tensor::randn(&[2, 3, 64, 64], 0.0, 1.0, DType::F32, &mut Rng::new(11))
}

fn targets() -> Vec<DetTarget> {
    let rects = [
        [[4usize, 6, 30, 40], [20, 10, 60, 30]],
        [[0, 0, 40, 50], [30, 30, 62, 54]],
    ];
    rects
        .iter()
        .zip(SIZES)
        .map(|(rs, (h, w))| DetTarget {
            boxes: rs.iter().map(|r| r.map(|v| v as f32)).collect(),
            labels: vec![1, 2],
            masks: rs
                .iter()
                .map(|r| {
                    (0..h * w)
                        .map(|i| {
                            u8::from(
                                (r[0]..r[2]).contains(&(i % w)) && (r[1]..r[3]).contains(&(i / w)),
                            )
                        })
                        .collect()
                })
                .collect(),
            image_id: 0,
            orig_size: (h, w),
            size: (h, w),
        })
        .collect()
}

/// The unit roundoff's multiple the losses are held to (see the module docs).
fn loss_tol(dtype: DType) -> f64 {
    let u = match dtype {
        DType::BF16 => 2f64.powi(-9),
        _ => 2f64.powi(-12),
    };
    8.0 * 5.0 * u
}

fn assert_loss_close(what: &str, half: &Tensor, full: &Tensor, tol: f64) {
    assert_eq!(
        half.dtype(),
        DType::F32,
        "{what}: losses are f32 under autocast"
    );
    let (a, b) = (half.item().unwrap(), full.item().unwrap());
    let err = (a - b).abs() / b.abs().max(0.1);
    eprintln!("{what}: {a} vs f32 {b} (relative {err:.2e}, bound {tol:.2e})");
    assert!(
        err <= tol,
        "{what}: {a} vs f32 {b}: relative error {err:.3e} > {tol:.3e}"
    );
}

fn grads(model: &MaskRcnn, prefix: &str) -> Vec<f64> {
    model
        .trainable_params()
        .iter()
        .filter(|p| p.name().starts_with(prefix))
        .flat_map(|p| {
            let g = p.grad().expect("a gradient");
            assert_eq!(g.dtype(), DType::F32, "{}: f32 gradient", p.name());
            g.to_vec_f64().unwrap()
        })
        .collect()
}

/// The backbone and FPN in `dtype` (as `MaskRcnn` runs them), the RPN's
/// losses and the box branch's on the f32 run's proposals, then the box
/// head's gradients: sampling is a function of the gt, the proposals and
/// the seed, so both precisions sample the same anchors and RoIs.
fn shared_sampling_run(
    dtype: DType,
    proposals: Option<&[Vec<[f64; 4]>]>,
) -> (Vec<Tensor>, Vec<Vec<[f64; 4]>>, Vec<f64>) {
    let model = MaskRcnn::new(config(), &mut Rng::new(7)).unwrap();
    model.set_training(true);
    let x = images().to_dtype(dtype).unwrap();
    let feats = model
        .fpn
        .forward(&model.backbone.stage_outputs(&x).unwrap())
        .unwrap();
    assert!(feats.iter().all(|f| f.dtype() == dtype));
    let t = targets();
    let gt: Vec<Vec<[f32; 4]>> = t.iter().map(|t| t.boxes.clone()).collect();
    let rpn = model
        .rpn
        .forward_with_scores(&feats, &SIZES, (64, 64), Some(&gt), &mut Rng::new(3))
        .unwrap();
    let rpn_losses = rpn.losses.unwrap();
    let props = proposals.map_or(rpn.boxes.clone(), <[_]>::to_vec);
    let roi_targets: Vec<RoiTarget> = t
        .iter()
        .map(|t| RoiTarget {
            boxes: t.boxes.iter().map(|b| b.map(f64::from)).collect(),
            labels: t.labels.clone(),
        })
        .collect();
    let roi = model
        .roi_heads
        .forward(
            &feats[..4],
            &props,
            &SIZES,
            Some(&roi_targets),
            &mut Rng::new(5),
        )
        .unwrap()
        .losses
        .unwrap();
    roi.classifier
        .add(&roi.box_reg)
        .unwrap()
        .backward()
        .unwrap();
    let g = grads(&model, "roi_heads.box_");
    (
        vec![
            rpn_losses.objectness,
            rpn_losses.box_reg,
            roi.classifier,
            roi.box_reg,
        ],
        props,
        g,
    )
}

#[test]
fn autocast_matches_f32_where_the_sampling_is_shared() {
    let (full, props, g32) = shared_sampling_run(DType::F32, None);
    let names = ["objectness", "rpn_box_reg", "classifier", "box_reg"];
    for dtype in [DType::BF16, DType::F16] {
        let (half, _, g) = shared_sampling_run(dtype, Some(&props));
        let tol = loss_tol(dtype);
        for ((n, a), b) in names.iter().zip(&half).zip(&full) {
            assert_loss_close(&format!("{dtype:?} {n}"), a, b, tol);
        }
        let diff: f64 = g
            .iter()
            .zip(&g32)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = g32.iter().map(|b| b * b).sum::<f64>().sqrt();
        let rel = diff / norm;
        eprintln!("{dtype:?} box head gradients: relative L2 error {rel:.2e}");
        assert!(
            norm > 0.0 && rel <= 4.0 * tol,
            "{dtype:?} box head gradients: relative L2 error {rel:.3e} > {:.3e}",
            4.0 * tol
        );
    }
}

#[test]
fn the_whole_model_trains_and_infers_in_the_compute_dtype() {
    let (x, t) = (images(), targets());
    let run = |dtype: DType| {
        let mut model = MaskRcnn::new(config(), &mut Rng::new(7)).unwrap();
        model.set_compute_dtype(dtype).unwrap();
        assert_eq!(model.compute_dtype(), dtype);
        model.set_training(true);
        let losses = model
            .forward_train(&x, &SIZES, &t, &mut Rng::new(3))
            .unwrap();
        let total = losses.total().unwrap();
        assert_eq!(total.dtype(), DType::F32);
        total.backward().unwrap();
        let g = grads(&model, "");
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{dtype:?}: non-finite gradient"
        );
        assert!(
            model.params().iter().all(|p| p.get().dtype() == DType::F32),
            "weights stay f32"
        );
        model.set_training(false);
        let dets = model.forward_eval(&x, &SIZES, &SIZES).unwrap();
        for (d, &(h, w)) in dets.iter().zip(&SIZES) {
            assert_eq!(d.masks.dtype(), DType::F32);
            assert_eq!(d.masks.dims(), [d.boxes.len(), 1, h, w]);
            assert!(d.scores.iter().all(|s| (0.0..=1.0).contains(s)));
        }
        (total.item().unwrap(), g)
    };
    let (l32, g32) = run(DType::F32);
    for dtype in [DType::BF16, DType::F16] {
        let (l, g) = run(dtype);
        eprintln!("{dtype:?}: total loss {l} (f32 {l32})");
        assert!(l.is_finite());
        // the half dtype is really used: the same weights and batch give
        // other bits (how far is the shared-sampling test's business)
        assert_ne!(g, g32, "{dtype:?} computed exactly as f32");
    }
    // f64 images compute in f64 whatever the setting (autocast is from f32)
    let mut model = MaskRcnn::new(config(), &mut Rng::new(7)).unwrap();
    model.set_training(true);
    let x64 = x.to_dtype(DType::F64).unwrap();
    let a = model
        .forward_train(&x64, &SIZES, &t, &mut Rng::new(3))
        .unwrap()
        .total()
        .unwrap();
    model.set_compute_dtype(DType::BF16).unwrap();
    let b = model
        .forward_train(&x64, &SIZES, &t, &mut Rng::new(3))
        .unwrap()
        .total()
        .unwrap();
    assert_eq!(a.dtype(), DType::F64);
    assert_eq!(a.item().unwrap(), b.item().unwrap());
    let err = model.set_compute_dtype(DType::I64).unwrap_err().to_string();
    assert!(err.contains("bf16"), "{err}");
}
