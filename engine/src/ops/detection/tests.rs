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
    // 16 per float dtype (4 roi_align, 2 multiscale_roi_align, 2
    // paste_masks, 5 nms, 2 batched_nms, 1 box_iou) plus the two f32 box
    // coder cases, 4 filter_proposals cases in f32 and f64, and
    // matching's (matching/parity.rs)
    assert_eq!(cases.len(), 3 * 16 + 2 + 2 * 4 + matching::parity::CASES);
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

/// The host mask paste `paste_masks` replaced (models' former
/// `paste_masks_in_image` after the box expansion), kept here as the
/// reference: per mask, the zero-padded mask in the masks' dtype, resized
/// by `upsample_bilinear2d` (align_corners = false) to the box's size, its
/// in-image part copied into a zero plane.
fn paste_by_resize(masks: &Tensor, boxes: &[[i64; 4]], img: [usize; 2], padding: usize) -> Tensor {
    let d = masks.dims();
    let (k, mh, mw) = (d[0], d[2], d[3]);
    let (ph, pw) = (mh + 2 * padding, mw + 2 * padding);
    let [im_h, im_w] = img;
    let src = masks.to_vec_f64().unwrap();
    let mut out = vec![0.0f64; k * im_h * im_w];
    for (i, b) in boxes.iter().enumerate() {
        let w = (b[2] - b[0] + 1).max(1);
        let h = (b[3] - b[1] + 1).max(1);
        let x0 = b[0].max(0);
        let x1 = (b[2] + 1).min(im_w as i64);
        let y0 = b[1].max(0);
        let y1 = (b[3] + 1).min(im_h as i64);
        if x1 <= x0 || y1 <= y0 {
            continue;
        }
        let mut padded = vec![0.0f64; ph * pw];
        for y in 0..mh {
            let row = &src[(i * mh + y) * mw..][..mw];
            padded[(y + padding) * pw + padding..][..mw].copy_from_slice(row);
        }
        let resized = Tensor::from_vec(padded, &[1, 1, ph, pw])
            .unwrap()
            .to_dtype(masks.dtype())
            .unwrap()
            .upsample_bilinear2d([h as usize, w as usize], false)
            .unwrap()
            .to_vec_f64()
            .unwrap();
        let dst = &mut out[i * im_h * im_w..][..im_h * im_w];
        for y in y0..y1 {
            let src_row = &resized[(y - b[1]) as usize * w as usize..][..w as usize];
            let (sx0, sx1) = ((x0 - b[0]) as usize, (x1 - b[0]) as usize);
            dst[y as usize * im_w + x0 as usize..][..(x1 - x0) as usize]
                .copy_from_slice(&src_row[sx0..sx1]);
        }
    }
    Tensor::from_vec(out, &[k, 1, im_h, im_w])
        .unwrap()
        .to_dtype(masks.dtype())
        .unwrap()
}

/// Integer paste boxes over a `img` image: partly outside on every side,
/// tiny (1 x 1, one row, one column), inverted (a one-pixel resize whose
/// in-image slices are empty),
/// entirely outside, larger than the image, the padded mask's own size
/// (the resize's identity path) and random ones.
fn paste_boxes(
    rng: &mut crate::Rng,
    img: [usize; 2],
    padded: [usize; 2],
    k: usize,
) -> Vec<[i64; 4]> {
    let (h, w) = (img[0] as i64, img[1] as i64);
    let mut v = vec![
        [-7, -3, 12, 15],
        [w - 9, h - 6, w + 5, h + 8],
        [4, 5, 4, 5],
        [2, 3, 30.min(w - 1), 3],
        [6, 1, 6, 17.min(h - 1)],
        [10, 9, 3, 2],
        [w + 3, 2, w + 20, 12],
        [-20, -15, w + 11, h + 4],
        [1, 2, padded[1] as i64, padded[0] as i64 + 1],
    ];
    parity::fill_random_boxes(rng, img, &mut v, k);
    v
}

fn box_tensor(b: &[[i64; 4]]) -> Tensor {
    Tensor::from_vec(b.concat(), &[b.len(), 4]).unwrap()
}

#[test]
fn paste_masks_equals_the_host_resize_and_copy_bit_for_bit() {
    let mut rng = crate::Rng::new(11);
    // (masks [K, Mh, Mw], image, padding)
    for (k, mh, mw, img, padding) in [
        (12, 28, 28, [40, 50], 1),
        (10, 5, 9, [23, 17], 2),
        (9, 7, 7, [30, 31], 0),
    ] {
        let padded = [mh + 2 * padding, mw + 2 * padding];
        let boxes = paste_boxes(&mut rng, img, padded, k);
        let probs = Tensor::randn(&[k, 1, mh, mw], 0.0, 2.0, DType::F64, &mut rng)
            .sigmoid()
            .unwrap();
        for dtype in [DType::F64, DType::F32, DType::BF16, DType::F16] {
            let m = probs.to_dtype(dtype).unwrap();
            let got = paste_masks(&m, &box_tensor(&boxes), img, padding).unwrap();
            assert_eq!(got.dims(), [k, 1, img[0], img[1]]);
            assert_eq!(got.dtype(), dtype);
            assert!(!got.requires_grad());
            let want = paste_by_resize(&m, &boxes, img, padding);
            let (g, w) = (got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits(),
                    "{dtype} K{k} {mh}x{mw} pad {padding}: element {i} {a} vs {b}"
                );
            }
            // the inverted box 5 (torchvision's slices are empty) and box 6
            // outside the image paste nothing, every other box something
            let plane = img[0] * img[1];
            let nonzero = |j: usize| g[j * plane..(j + 1) * plane].iter().any(|&v| v != 0.0);
            assert!(
                !nonzero(5) && !nonzero(6),
                "{dtype}: boxes 5, 6 paste nothing"
            );
            assert!(
                (0..5).chain(7..k).all(nonzero),
                "{dtype}: every other box pastes"
            );
        }
    }
}

#[test]
fn paste_masks_of_a_box_the_padded_size_is_the_padded_mask() {
    // no resize: the box shows the padded mask itself, 0 on the border
    let m = Tensor::from_vec(vec![0.25f32, 0.5, 0.75, 1.0, 0.125, 0.375], &[1, 1, 2, 3]).unwrap();
    let got = paste_masks(&m, &box_tensor(&[[1, 0, 5, 3]]), [4, 7], 1).unwrap();
    #[rustfmt::skip]
    let want = [
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.25, 0.5, 0.75, 0.0, 0.0,
        0.0, 0.0, 1.0, 0.125, 0.375, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    assert_eq!(got.to_vec::<f32>().unwrap(), want);
}

#[test]
fn paste_masks_rejects_bad_input() {
    let m = Tensor::zeros(&[2, 1, 4, 4], DType::F32);
    let b = box_tensor(&[[0, 0, 3, 3], [1, 1, 2, 2]]);
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    let e = err(paste_masks(
        &Tensor::zeros(&[2, 2, 4, 4], DType::F32),
        &b,
        [8, 8],
        1,
    ));
    assert!(e.contains("[K, 1, Mh, Mw]"), "{e}");
    let e = err(paste_masks(
        &Tensor::zeros(&[2, 4, 4], DType::F32),
        &b,
        [8, 8],
        1,
    ));
    assert!(e.contains("[K, 1, Mh, Mw]"), "{e}");
    let e = err(paste_masks(
        &Tensor::zeros(&[2, 1, 0, 4], DType::F32),
        &b,
        [8, 8],
        1,
    ));
    assert!(e.contains("Mh, Mw >= 1"), "{e}");
    let e = err(paste_masks(
        &Tensor::zeros(&[2, 1, 4, 4], DType::I64),
        &b,
        [8, 8],
        1,
    ));
    assert!(e.contains("float dtype"), "{e}");
    let e = err(paste_masks(&m, &box_tensor(&[[0, 0, 3, 3]]), [8, 8], 1));
    assert!(e.contains("boxes must be [2, 4]"), "{e}");
    let e = err(paste_masks(
        &m,
        &Tensor::zeros(&[2, 5], DType::I64),
        [8, 8],
        1,
    ));
    assert!(e.contains("got [2, 5]"), "{e}");
    let e = err(paste_masks(&m, &b.to_dtype(DType::F32).unwrap(), [8, 8], 1));
    assert!(e.contains("i64"), "{e}");
    let side = MAX_PASTE_SIDE as i64;
    let e = err(paste_masks(
        &m,
        &box_tensor(&[[0, 0, 3, 3], [5, 0, 5 + side, 2]]),
        [8, 8],
        1,
    ));
    assert!(e.contains("box 1 expands to 65537 x 3 pixels"), "{e}");
    // the extreme i64 corners overflow nothing
    let e = err(paste_masks(
        &m,
        &box_tensor(&[[i64::MIN, 0, i64::MAX, 2], [0; 4]]),
        [8, 8],
        1,
    ));
    assert!(e.contains("box 0 expands to"), "{e}");
    let e = err(paste_masks(&m, &b, [8, MAX_PASTE_SIDE + 1], 1));
    assert!(e.contains("at most 65536"), "{e}");
    let e = err(paste_masks(&m, &b, [8, 8], usize::MAX));
    assert!(e.contains("at most 65536"), "{e}");
    // a box far outside pastes nothing (no overflow) and an empty image or
    // no masks give empty outputs
    let far = box_tensor(&[
        [i64::MAX - 5, i64::MAX - 5, i64::MAX, i64::MAX],
        [i64::MIN; 4],
    ]);
    let y = paste_masks(&m, &far, [8, 8], 1).unwrap();
    assert!(y.to_vec_f64().unwrap().iter().all(|&v| v == 0.0));
    assert_eq!(paste_masks(&m, &b, [0, 8], 1).unwrap().dims(), [2, 1, 0, 8]);
    let none = paste_masks(
        &Tensor::zeros(&[0, 1, 4, 4], DType::F32),
        &Tensor::zeros(&[0, 4], DType::I64),
        [8, 8],
        1,
    )
    .unwrap();
    assert_eq!(none.dims(), [0, 1, 8, 8]);
}
