//! Detection's GPU parity cases: RoIAlign with inverted and empty boxes,
//! aligned and legacy, fixed and adaptive sampling; NMS over clustered boxes
//! (suppression chains across the kernel's 64-box blocks), duplicates, an
//! empty box, tied and NaN scores; batched NMS over 3 and 5 categories on
//! both of the CPU's paths (coordinate trick up to 1000 boxes, per category
//! beyond); box IoU with empty and inverted boxes; multi-level RoIAlign over
//! three FPN levels (boxes of every level, clamped below and above, and one
//! level no box maps to); box encode / decode (f32 only), with codes past
//! the decode clip; the mask paste (f32, bf16, f16: boxes partly outside
//! on every side, tiny, inverted, entirely outside and larger than the
//! image; padding 1 and 2, square and oblong masks).

use super::LevelMapper;
use crate::parity::autograd_with;
use crate::parity::{autograd, dims, Case, Input, Outputs, DTYPES};
use crate::{DType, Device, Result, Rng, Tensor};

/// `k` RoIAlign boxes [k, 5] over an `n`-image batch of h x w maps at
/// `scale`, some partly outside the image; box 0 inverted, box 1 empty.
fn roi_boxes(rng: &mut Rng, n: usize, h: usize, w: usize, scale: f64, k: usize) -> Vec<f64> {
    let (ih, iw) = (h as f64 / scale, w as f64 / scale);
    let mut v = Vec::with_capacity(5 * k);
    for i in 0..k {
        let b = rng.below(n) as f64;
        let x1 = rng.uniform() * 1.2 * iw - 0.1 * iw;
        let y1 = rng.uniform() * 1.2 * ih - 0.1 * ih;
        let (bw, bh) = (rng.uniform() * 0.6 * iw, rng.uniform() * 0.6 * ih);
        match i {
            0 => v.extend([b, x1, y1, x1 - bw, y1 - bh]), // inverted
            1 => v.extend([b, x1, y1, x1, y1]),           // empty
            _ => v.extend([b, x1, y1, x1 + bw, y1 + bh]),
        }
    }
    v
}

/// NMS boxes [k, 4] in a few clusters (heavy overlap), plus a duplicate
/// pair and an empty box; scores quantized to `step` (ties) when step > 0.
fn nms_inputs(rng: &mut Rng, k: usize, step: f64) -> (Vec<f64>, Vec<f64>) {
    let centers: Vec<(f64, f64)> = (0..4)
        .map(|_| (rng.uniform() * 200.0, rng.uniform() * 200.0))
        .collect();
    let mut b = Vec::with_capacity(4 * k);
    let mut sc = Vec::with_capacity(k);
    for i in 0..k {
        let (cx, cy) = centers[rng.below(centers.len())];
        let x = cx + rng.normal() * 8.0;
        let y = cy + rng.normal() * 8.0;
        let (bw, bh) = (10.0 + rng.uniform() * 30.0, 10.0 + rng.uniform() * 30.0);
        if i == 1 && k > 2 {
            let p = b[..4].to_vec();
            b.extend(p); // duplicate of box 0: IoU 1
        } else if i == 2 && k > 2 {
            b.extend([x, y, x, y]); // empty: IoU 0 (or NaN with itself)
        } else {
            b.extend([x, y, x + bw, y + bh]);
        }
        let u = rng.uniform();
        sc.push(if step > 0.0 {
            (u / step).floor() * step
        } else {
            u
        });
    }
    (b, sc)
}

/// `boxes` [k, 4] and `scores` [k] of `dtype` on `dev`.
fn boxes_scores(b: &[f64], s: &[f64], dtype: DType, dev: Device) -> Result<(Tensor, Tensor)> {
    let k = s.len();
    let boxes = Tensor::from_vec(b.to_vec(), &[k, 4])?.to_dtype(dtype)?;
    let scores = Tensor::from_vec(s.to_vec(), &[k])?.to_dtype(dtype)?;
    Ok((boxes.to_device(dev)?, scores.to_device(dev)?))
}

/// Kept indices as an i64 [n] tensor, for comparison.
fn kept(keep: Vec<usize>) -> Result<Outputs> {
    let n = keep.len();
    let v: Vec<i64> = keep.into_iter().map(|i| i as i64).collect();
    Ok(vec![("keep".into(), Tensor::from_vec(v, &[n])?)])
}

/// `k` multi-level RoIAlign boxes [k, 5] over an `n`-image batch of an
/// image of `size` x `size`: sides from 2 to 3 `size` (so the level mapper
/// of canonical scale `size` / 2 uses its whole range and clamps), some
/// partly outside; box 0 empty.
fn multiscale_boxes(rng: &mut Rng, n: usize, size: f64, k: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(5 * k);
    for i in 0..k {
        let b = rng.below(n) as f64;
        let side = 2.0 * (1.5 * size).powf(rng.uniform());
        let (x1, y1) = (
            rng.uniform() * size - 0.1 * size,
            rng.uniform() * size - 0.1 * size,
        );
        let a = 0.5 + rng.uniform();
        if i == 0 {
            v.extend([b, x1, y1, x1, y1 + side]);
        } else {
            v.extend([b, x1, y1, x1 + side * a, y1 + side / a]);
        }
    }
    v
}

/// Boxes [n, 4] of positive size around random centres in a 200 x 200 image.
fn coder_boxes(rng: &mut Rng, n: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(4 * n);
    for _ in 0..n {
        let (cx, cy) = (rng.uniform() * 200.0, rng.uniform() * 200.0);
        let (w, h) = (1.0 + rng.uniform() * 80.0, 1.0 + rng.uniform() * 80.0);
        v.extend([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]);
    }
    v
}

/// A [rows, cols] f32 tensor of `v` on `dev`.
fn f32_on(v: &[f64], rows: usize, cols: usize, dev: Device) -> Result<Tensor> {
    Tensor::from_vec(v.to_vec(), &[rows, cols])?
        .to_dtype(DType::F32)?
        .to_device(dev)
}

/// Box encode and decode parity cases (f32: box coding stays in f32 under
/// autocast). CUDA's logf / expf are within 2 ulp of the CPU's, so the
/// default f32 bound applies.
fn coder_cases(rng: &mut Rng, out: &mut Vec<Case>) {
    let weights = [10.0, 10.0, 5.0, 5.0];
    let n = 300;
    let (gt, props) = (coder_boxes(rng, n), coder_boxes(rng, n));
    out.push(Case {
        op: "box_encode",
        dtype: DType::F32,
        label: format!("[{n},4] w{weights:?}"),
        threshold: None,
        run: Box::new(move |dev| {
            let (g, p) = (f32_on(&gt, n, 4, dev)?, f32_on(&props, n, 4, dev)?);
            Ok(vec![("codes".into(), super::box_encode(&g, &p, weights)?)])
        }),
    });
    let classes = 5;
    let boxes = coder_boxes(rng, n);
    // codes up to +-12 after the weights: dw / dh past the clip ln(62.5)
    let codes: Vec<f64> = (0..n * 4 * classes)
        .map(|i| rng.normal() * if i % 4 >= 2 { 20.0 } else { 3.0 })
        .collect();
    let clip = (1000.0f64 / 16.0).ln();
    out.push(Case {
        op: "box_decode",
        dtype: DType::F32,
        label: format!("[{n},{}] x [{n},4] clip {clip:.3}", 4 * classes),
        threshold: None,
        run: Box::new(move |dev| {
            let c = f32_on(&codes, n, 4 * classes, dev)?;
            let b = f32_on(&boxes, n, 4, dev)?;
            Ok(vec![(
                "boxes".into(),
                super::box_decode(&c, &b, weights, clip)?,
            )])
        }),
    });
}

/// Multi-level RoIAlign parity cases: 3 levels of a 2-image batch, boxes
/// over every level; the gradient flows into every level.
fn multiscale_cases(rng: &mut Rng, dtype: DType, out: &mut Vec<Case>) {
    // (levels' (H, W), channels, boxes, output, sampling_ratio, aligned)
    type MsCase = (
        &'static [(usize, usize)],
        usize,
        usize,
        [usize; 2],
        i64,
        bool,
    );
    let ms: [MsCase; 2] = [
        (&[(16, 20), (8, 10), (4, 5)], 6, 40, [3, 4], -1, true),
        (
            &[(32, 24), (16, 12), (8, 6), (4, 3)],
            16,
            60,
            [7, 7],
            2,
            false,
        ),
    ];
    for (hw, c, k, o, sr, aligned) in ms {
        let n = 2;
        // level l has scale 1/4 / 2^l over a (4 H_0) image
        let size = 4.0 * hw[0].0 as f64;
        let bx = multiscale_boxes(rng, n, size, k);
        let scales: Vec<f64> = (0..hw.len()).map(|l| 0.25 / (1u32 << l) as f64).collect();
        let mapper = LevelMapper {
            canonical_scale: size / 2.0,
            ..LevelMapper::new(2, 1 + hw.len() as i64)
        };
        let shapes: Vec<[usize; 4]> = hw.iter().map(|&(h, w)| [n, c, h, w]).collect();
        let label = format!(
            "{} levels {:?} c{c} k{k} -> {o:?} r{sr} a{}",
            hw.len(),
            hw,
            aligned as u8
        );
        let draw = move |rng: &mut Rng| {
            shapes
                .iter()
                .zip(["x0", "x1", "x2", "x3"])
                .map(|(s, name)| (name, Tensor::randn(s, 0.0, 1.0, dtype, rng), true))
                .collect()
        };
        out.push(autograd_with(
            "multiscale_roi_align",
            dtype,
            label,
            rng.next_u64(),
            draw,
            move |t| {
                let boxes = Tensor::from_vec(bx.clone(), &[k, 5])?
                    .to_dtype(dtype)?
                    .to_device(t[0].device())?;
                let y = super::multiscale_roi_align(t, &boxes, &scales, o, sr, aligned, &mapper)?;
                Ok(vec![("y".into(), y)])
            },
        ));
    }
}

/// `k` integer paste boxes [k, 4] (x0, y0, x1, y1, inclusive) over an
/// image of `img`: the first few partly outside on every side, tiny (1 x 1
/// and one row), inverted, entirely outside and larger than the image;
/// the rest random, overlapping the image.
fn paste_boxes(rng: &mut Rng, img: [usize; 2], k: usize) -> Vec<i64> {
    let (h, w) = (img[0] as i64, img[1] as i64);
    let mut v = vec![
        [-6, -4, 15, 11],
        [w - 10, h - 7, w + 6, h + 9],
        [3, 4, 3, 4],
        [2, 5, w / 2, 5],
        [9, 8, 2, 1],
        [w + 2, 1, w + 30, 20],
        [-25, -12, w + 13, h + 3],
    ];
    fill_random_boxes(rng, img, &mut v, k);
    v.concat()
}

/// Pads `v` to `k` random integer boxes overlapping an image of `img` by
/// at least 3 x 3 pixels (or cuts it to `k`).
pub(crate) fn fill_random_boxes(rng: &mut Rng, img: [usize; 2], v: &mut Vec<[i64; 4]>, k: usize) {
    let [h, w] = img;
    while v.len() < k {
        let x0 = rng.below(w - 3) as i64 - 3;
        let y0 = rng.below(h - 3) as i64 - 3;
        let (bw, bh) = (6 + rng.below(w) as i64, 6 + rng.below(h) as i64);
        v.push([x0, y0, x0 + bw, y0 + bh]);
    }
    v.truncate(k);
}

/// Mask paste parity cases. The GPU samples with the CPU's own taps and
/// blends in the CPU's f32 operation order without FMA contraction, so it
/// should equal the CPU bit for bit; the default bound applies.
fn paste_cases(rng: &mut Rng, dtype: DType, out: &mut Vec<Case>) {
    // (masks K x Mh x Mw, image, padding)
    for (k, mh, mw, img, padding) in [(24, 28, 28, [61, 83], 1), (11, 6, 10, [37, 29], 2)] {
        let bx = paste_boxes(rng, img, k);
        let masks = Tensor::randn(&[k, 1, mh, mw], 0.0, 2.0, DType::F32, rng);
        out.push(Case {
            op: "paste_masks",
            dtype,
            label: format!("[{k},1,{mh},{mw}] -> {img:?} pad {padding}"),
            threshold: None,
            run: Box::new(move |dev| {
                let m = masks.sigmoid()?.to_dtype(dtype)?.to_device(dev)?;
                let b = Tensor::from_vec(bx.clone(), &[k, 4])?.to_device(dev)?;
                Ok(vec![(
                    "pasted".into(),
                    super::paste_masks(&m, &b, img, padding)?,
                )])
            }),
        });
    }
}

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // (input, boxes, output, spatial_scale, sampling_ratio, aligned)
    type RoiCase = (&'static [usize], usize, [usize; 2], f64, i64, bool);
    let roi: [RoiCase; 4] = [
        (&[2, 8, 12, 10], 6, [3, 3], 0.5, 2, true),
        (&[1, 5, 9, 7], 5, [2, 4], 1.0, 0, false),
        (&[2, 64, 25, 34], 20, [7, 7], 0.0625, -1, true),
        (&[1, 3, 6, 6], 4, [2, 2], 1.0, 3, false),
    ];
    // (boxes, iou threshold, score quantum: > 0 makes ties)
    let nms: [(usize, f64, f64); 5] = [
        (1, 0.5, 0.0),
        (50, 0.5, 0.0),
        (200, 0.3, 0.05),
        (257, 0.7, 0.0),
        (1500, 0.5, 0.01),
    ];
    coder_cases(rng, out);
    for dtype in DTYPES {
        multiscale_cases(rng, dtype, out);
        paste_cases(rng, dtype, out);
        for (shape, k, o, scale, sr, aligned) in roi {
            let bx = roi_boxes(rng, shape[0], shape[2], shape[3], scale, k);
            out.push(autograd(
                "roi_align",
                dtype,
                format!(
                    "{} k{k} -> {o:?} s{scale} r{sr} a{}",
                    dims(shape),
                    aligned as u8
                ),
                rng.next_u64(),
                vec![Input::randn("x", shape, 1.0)],
                move |t| {
                    // boxes in x's dtype, on x's device (no gradient)
                    let boxes = Tensor::from_vec(bx.clone(), &[k, 5])?
                        .to_dtype(dtype)?
                        .to_device(t[0].device())?;
                    Ok(vec![(
                        "y".into(),
                        t[0].roi_align(&boxes, o, scale, sr, aligned)?,
                    )])
                },
            ));
        }
        for (k, thr, step) in nms {
            let (bx, mut sc) = nms_inputs(rng, k, step);
            if k >= 200 {
                sc[k / 2] = f64::NAN; // NaN scores are visited first
            }
            let run = move |dev: Device| {
                let (boxes, scores) = boxes_scores(&bx, &sc, dtype, dev)?;
                kept(super::nms(&boxes, &scores, thr)?)
            };
            out.push(Case {
                op: "nms",
                dtype,
                label: format!("k{k} iou>{thr} q{step}"),
                // the kept indices must be identical
                threshold: Some(0.0),
                run: Box::new(run),
            });
        }
        // (boxes, categories, iou threshold): 200 takes the CPU's coordinate
        // trick, 1500 its per-category path
        for (k, cats, thr) in [(200, 3, 0.5), (1500, 5, 0.6)] {
            let (mut bx, sc) = nms_inputs(rng, k, 0.02);
            // coordinates on a 1/8 grid: the trick's shifted coordinates are
            // then exact in f32 and decide as the unshifted ones on the GPU
            for v in &mut bx {
                *v = (*v * 8.0).round() / 8.0;
            }
            let idxs: Vec<i64> = (0..k).map(|_| rng.below(cats) as i64).collect();
            let run = move |dev: Device| {
                let (boxes, scores) = boxes_scores(&bx, &sc, dtype, dev)?;
                kept(super::batched_nms(&boxes, &scores, &idxs, thr)?)
            };
            out.push(Case {
                op: "batched_nms",
                dtype,
                label: format!("k{k} cats{cats} iou>{thr}"),
                // the kept indices must be identical
                threshold: Some(0.0),
                run: Box::new(run),
            });
        }
        let (mut a, _) = nms_inputs(rng, 37, 0.0);
        let (b, _) = nms_inputs(rng, 90, 0.0);
        a[4..8].copy_from_slice(&[30.0, 40.0, 10.0, 20.0]); // inverted
        let run = move |dev: Device| {
            let t = |v: &[f64]| -> Result<Tensor> {
                Tensor::from_vec(v.to_vec(), &[v.len() / 4, 4])?
                    .to_dtype(dtype)?
                    .to_device(dev)
            };
            // box 2 of each set is empty; two empty boxes would give 0/0
            let mut b = b.clone();
            b[8..12].copy_from_slice(&[5.0, 6.0, 50.0, 60.0]);
            Ok(vec![("iou".into(), super::box_iou(&t(&a)?, &t(&b)?)?)])
        };
        out.push(Case {
            op: "box_iou",
            dtype,
            label: "[37,4] x [90,4]".into(),
            // the same f32 operations in the same order, rounded once
            threshold: Some(0.0),
            run: Box::new(run),
        });
    }
    super::proposals::parity::cases(rng, out);
    // matching and balanced sampling (matching/parity.rs)
    super::matching::parity::cases(rng, out);
}
