use super::*;

#[test]
fn order_is_descending_stable_nan_first() {
    let s = [0.5, f64::NAN, 0.9, 0.5, f64::NAN, -1.0];
    assert_eq!(
        crate::ops::index::sort_order(&s, true),
        vec![1, 4, 2, 0, 3, 5]
    );
}

#[test]
fn roi_align_gradient_must_match_the_output() {
    let g = RoiGeom {
        nchw: [1, 2, 5, 5],
        k: 3,
        out: [2, 2],
        spatial_scale: 1.0,
        sampling_ratio: 2,
        aligned: true,
    };
    let x = (DType::F32, Device::Cpu);
    assert!(check_grad(
        "roi_align",
        &Tensor::zeros(&[3, 2, 2, 2], DType::F32),
        x,
        &g
    )
    .is_ok());
    for dy in [
        Tensor::zeros(&[3, 2, 2, 2], DType::F64),
        Tensor::zeros(&[2, 2, 2, 2], DType::F32),
    ] {
        let e = check_grad("roi_align", &dy, x, &g).unwrap_err().to_string();
        assert!(e.contains("gradient") && e.contains("[3, 2, 2, 2]"), "{e}");
    }
}

#[test]
fn nms_scores_must_be_one_per_box_on_the_boxes_device() {
    let b = Tensor::zeros(&[2, 4], DType::F32);
    let e = nms(&b, &Tensor::zeros(&[3], DType::F32), 0.5).unwrap_err();
    assert!(e.to_string().contains("[K] = [2]"), "{e}");
    let e = nms(&b, &Tensor::zeros(&[2], DType::F64), 0.5).unwrap_err();
    assert!(e.to_string().contains("dtype"), "{e}");
}

#[test]
fn parity_cases_run_on_the_cpu_reproducibly() {
    let mut cases = Vec::new();
    parity::cases(&mut crate::Rng::new(5), &mut cases);
    // 12 per float dtype (4 roi_align, 2 multiscale_roi_align, 5 nms, 2
    // batched_nms... see parity.rs) plus the two f32 box coder cases
    assert_eq!(cases.len(), 3 * 14 + 2);
    for c in cases.iter().filter(|c| c.dtype == DType::F32) {
        let (a, b) = ((c.run)(Device::Cpu).unwrap(), (c.run)(Device::Cpu).unwrap());
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            assert_eq!(
                x.to_vec_f64().unwrap(),
                y.to_vec_f64().unwrap(),
                "{} {} {n}",
                c.op,
                c.label
            );
        }
    }
}

/// Three random f64 levels [2, 3, H_l, W_l] of a 64 x 80 image (scales 1/4,
/// 1/8, 1/16) and `k` boxes [k, 5] of sides 2 to 100 over the batch.
fn pyramid(k: usize, seed: u64) -> (Vec<Tensor>, Tensor) {
    let mut rng = crate::Rng::new(seed);
    let feats = [(16, 20), (8, 10), (4, 5)]
        .iter()
        .map(|&(h, w)| Tensor::randn(&[2, 3, h, w], 0.0, 1.0, DType::F64, &mut rng))
        .collect();
    let mut v = Vec::new();
    for i in 0..k {
        let side = 2.0 * 50f64.powf(rng.uniform());
        let (x, y) = (rng.uniform() * 80.0 - 8.0, rng.uniform() * 64.0 - 8.0);
        v.extend([(i % 2) as f64, x, y, x + side * 1.2, y + side / 1.2]);
    }
    (feats, Tensor::from_vec(v, &[k, 5]).unwrap())
}

const SCALES: [f64; 3] = [0.25, 0.125, 0.0625];

/// canonical scale 32: sides 8..64 span levels 2..4, the rest clamp.
fn mapper() -> LevelMapper {
    LevelMapper {
        canonical_scale: 32.0,
        ..LevelMapper::new(2, 4)
    }
}

#[test]
fn multiscale_roi_align_is_roi_align_on_each_boxs_level() {
    let (feats, boxes) = pyramid(40, 1);
    let rows = boxes.to_vec_f64().unwrap();
    let coords: Vec<f64> = rows.chunks(5).flat_map(|r| r[1..].to_vec()).collect();
    let levels = mapper().levels::<f64>(&coords).unwrap();
    for l in 0..3 {
        assert!(levels.contains(&l), "level {l} is exercised");
    }
    for (dtype, aligned, sr) in [(DType::F64, true, 0), (DType::F32, false, 2)] {
        let feats: Vec<Tensor> = feats
            .iter()
            .map(|f| f.to_dtype(dtype).unwrap().requires_grad_().unwrap())
            .collect();
        let b = boxes.to_dtype(dtype).unwrap();
        let y = multiscale_roi_align(&feats, &b, &SCALES, [3, 2], sr, aligned, &mapper()).unwrap();
        assert_eq!(y.dims(), [40, 3, 3, 2]);
        let up = Tensor::randn(y.dims(), 0.0, 1.0, dtype, &mut crate::Rng::new(2));
        y.mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        let yv = y.to_vec_f64().unwrap();
        let upv = up.to_vec_f64().unwrap();
        let row = 3 * 3 * 2;
        for (l, f) in feats.iter().enumerate() {
            // the level's boxes, in input order, through the one-level op
            let ks: Vec<usize> = (0..40).filter(|&k| levels[k] == l).collect();
            let sub: Vec<f64> = ks
                .iter()
                .flat_map(|&k| rows[5 * k..5 * k + 5].to_vec())
                .collect();
            let sub = Tensor::from_vec(sub, &[ks.len(), 5])
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let x = f.detach().requires_grad_().unwrap();
            let want = x.roi_align(&sub, [3, 2], SCALES[l], sr, aligned).unwrap();
            let wv = want.to_vec_f64().unwrap();
            let sub_up: Vec<f64> = ks
                .iter()
                .flat_map(|&k| upv[k * row..(k + 1) * row].to_vec())
                .collect();
            let sub_up = Tensor::from_vec(sub_up, want.dims())
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            want.mul(&sub_up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (j, &k) in ks.iter().enumerate() {
                assert_eq!(
                    yv[k * row..(k + 1) * row],
                    wv[j * row..(j + 1) * row],
                    "box {k}"
                );
            }
            // same boxes, same order: the same sums bit for bit
            assert_eq!(
                f.grad().unwrap().to_vec_f64().unwrap(),
                x.grad().unwrap().to_vec_f64().unwrap(),
                "level {l} gradient"
            );
        }
    }
}

#[test]
fn multiscale_roi_align_gradients_match_finite_differences() {
    let (feats, boxes) = pyramid(12, 3);
    for (aligned, sr) in [(true, -1), (false, 2)] {
        let f =
            |t: &[Tensor]| multiscale_roi_align(t, &boxes, &SCALES, [2, 3], sr, aligned, &mapper());
        crate::gradcheck::check_gradients(f, &feats, 1e-6, 1e-7, 1e-5).unwrap();
    }
}

#[test]
fn multiscale_roi_align_with_one_level_maps_nothing() {
    // one level: every box on it, even one with no level (as torchvision)
    let (feats, _) = pyramid(0, 4);
    let boxes = Tensor::from_vec(
        vec![0.0, 10.0, 10.0, 5.0, 20.0, 1.0, 2.0, 3.0, 30.0, 40.0],
        &[2, 5],
    )
    .unwrap();
    let y = multiscale_roi_align(
        &feats[..1],
        &boxes,
        &SCALES[..1],
        [2, 2],
        2,
        false,
        &LevelMapper::new(2, 2),
    )
    .unwrap();
    let want = feats[0]
        .roi_align(&boxes, [2, 2], SCALES[0], 2, false)
        .unwrap();
    assert_eq!(y.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
}

#[test]
fn multiscale_roi_align_rejects_bad_input() {
    let (feats, boxes) = pyramid(4, 5);
    let m = mapper();
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    let inverted = Tensor::from_vec(vec![0.0, 10.0, 10.0, 5.0, 20.0], &[1, 5]).unwrap();
    let e = err(multiscale_roi_align(
        &feats,
        &inverted,
        &SCALES,
        [2, 2],
        2,
        false,
        &m,
    ));
    assert!(e.contains("box 0") && e.contains("area"), "{e}");
    let e = err(multiscale_roi_align(
        &feats,
        &boxes,
        &SCALES[..2],
        [2, 2],
        2,
        false,
        &m,
    ));
    assert!(e.contains("2 scales for 3 feature maps"), "{e}");
    let e = err(multiscale_roi_align(
        &feats,
        &boxes,
        &SCALES,
        [2, 2],
        2,
        false,
        &LevelMapper::new(2, 5),
    ));
    assert!(e.contains("levels 2..=5"), "{e}");
    let e = err(multiscale_roi_align(&[], &boxes, &[], [2, 2], 2, false, &m));
    assert!(e.contains("no feature map"), "{e}");
    let narrow = vec![
        feats[0].clone(),
        feats[1].narrow(1, 0, 2).unwrap(),
        feats[2].clone(),
    ];
    let e = err(multiscale_roi_align(
        &narrow,
        &boxes,
        &SCALES,
        [2, 2],
        2,
        false,
        &m,
    ));
    assert!(e.contains("N and C must agree"), "{e}");
    let far = Tensor::from_vec(vec![2.0, 1.0, 1.0, 30.0, 30.0], &[1, 5]).unwrap();
    let e = err(multiscale_roi_align(
        &feats,
        &far,
        &SCALES,
        [2, 2],
        2,
        false,
        &m,
    ));
    assert!(e.contains("batch index 2"), "{e}");
    let e = err(multiscale_roi_align(
        &feats,
        &boxes.to_dtype(DType::F32).unwrap(),
        &SCALES,
        [2, 2],
        2,
        false,
        &m,
    ));
    assert!(e.contains("dtype"), "{e}");
}

#[test]
fn box_coding_follows_torchvision_on_known_values() {
    let t = |v: Vec<f64>| Tensor::from_vec(v, &[1, 4]).unwrap();
    // proposal 10 x 10 at (5, 5), gt 10 x 20 at (5, 10)
    let (gt, p) = (t(vec![0.0, 0.0, 10.0, 20.0]), t(vec![0.0, 0.0, 10.0, 10.0]));
    let codes = box_encode(&gt, &p, [10.0, 10.0, 5.0, 5.0]).unwrap();
    let want = [0.0, 10.0 * 0.5, 0.0, 5.0 * 2f64.ln()];
    assert_eq!(codes.to_vec_f64().unwrap(), want);
    let back = box_decode(&codes, &p, [10.0, 10.0, 5.0, 5.0], 4.0).unwrap();
    assert_eq!(back.to_vec_f64().unwrap(), [0.0, 0.0, 10.0, 20.0]);
    // dw = 100 / 1 clamps at the clip: width e^2 x 10, centre kept
    let huge =
        Tensor::from_vec(vec![0.0, 0.0, 100.0, f64::NAN, 0.0, 0.0, 0.0, 0.0], &[1, 8]).unwrap();
    let d = box_decode(&huge, &p, [1.0; 4], 2.0)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    let half = 0.5 * 2f64.exp() * 10.0;
    assert_eq!(d[0], 5.0 - half);
    assert_eq!(d[2], 5.0 + half);
    assert!(d[1].is_nan() && d[3].is_nan(), "NaN stays NaN: {d:?}");
    assert_eq!(d[4..], [0.0, 0.0, 10.0, 10.0]);
}

#[test]
fn box_coding_in_f32_is_the_host_reference_computed_in_f32() {
    let mut rng = crate::Rng::new(9);
    let mut draw = |n: usize| -> Vec<f32> {
        (0..n)
            .flat_map(|_| {
                let (x, y) = (rng.uniform() as f32 * 100.0, rng.uniform() as f32 * 100.0);
                let (w, h) = (
                    1.0 + rng.uniform() as f32 * 50.0,
                    1.0 + rng.uniform() as f32 * 50.0,
                );
                [x, y, x + w, y + h]
            })
            .collect()
    };
    let (g, p) = (draw(20), draw(20));
    let w = [10.0, 10.0, 5.0, 5.0];
    let ten = |v: &[f32], c: usize| Tensor::from_vec(v.to_vec(), &[v.len() / c, c]).unwrap();
    let codes = box_encode(&ten(&g, 4), &ten(&p, 4), w).unwrap();
    assert_eq!(codes.dtype(), DType::F32);
    assert!(!codes.requires_grad());
    let want = encode_boxes::<f32>(&g, &p, w);
    assert_eq!(codes.to_vec::<f32>().unwrap(), want);
    // 2 codes per box (rows of 8)
    let rel: Vec<f32> = want.iter().chain(&want).map(|v| v * 0.7).collect();
    let rel_t = Tensor::from_vec(rel.clone(), &[20, 8]).unwrap();
    let d = box_decode(&rel_t, &ten(&p, 4), w, 4.135).unwrap();
    assert_eq!(d.dims(), [20, 8]);
    assert_eq!(
        d.to_vec::<f32>().unwrap(),
        decode_boxes::<f32>(&rel, &p, w, 4.135)
    );
}

#[test]
fn box_coding_rejects_bad_input() {
    let b = Tensor::zeros(&[3, 4], DType::F32);
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    let e = err(box_encode(
        &b,
        &Tensor::zeros(&[2, 4], DType::F32),
        [1.0; 4],
    ));
    assert!(e.contains("3 rows but proposals 2"), "{e}");
    let e = err(box_encode(
        &b,
        &Tensor::zeros(&[3, 4], DType::F64),
        [1.0; 4],
    ));
    assert!(e.contains("dtype"), "{e}");
    let h = Tensor::zeros(&[3, 4], DType::BF16);
    let e = err(box_encode(&h, &h, [1.0; 4]));
    assert!(e.contains("f32 or f64"), "{e}");
    let e = err(box_decode(
        &Tensor::zeros(&[3, 6], DType::F32),
        &b,
        [1.0; 4],
        4.0,
    ));
    assert!(e.contains("[N, 4 K] with N = 3"), "{e}");
    let e = err(box_decode(
        &Tensor::zeros(&[2, 4], DType::F32),
        &b,
        [1.0; 4],
        4.0,
    ));
    assert!(e.contains("got shape [2, 4]"), "{e}");
    let e = err(box_decode(
        &b,
        &Tensor::zeros(&[3, 5], DType::F32),
        [1.0; 4],
        4.0,
    ));
    assert!(e.contains("[K, 4]"), "{e}");
}
