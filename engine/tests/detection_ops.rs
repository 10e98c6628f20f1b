//! roi_align, nms, batched_nms and box_iou: backward by finite differences,
//! properties that pin the sampling geometry, determinism, half precision,
//! suppression rules against a direct transcription of torchvision's loop,
//! the trace, and bad input as errors. (The torchvision golden vectors are
//! in tests/golden_detection.rs.)

use engine::gradcheck::check_gradients;
use engine::ops::{batched_nms, box_iou, nms};
use engine::{DType, Rng, Tensor};
use std::time::Instant;
use testutil::randn;

fn boxes5(rows: &[[f64; 5]]) -> Tensor {
    Tensor::from_vec(rows.concat(), &[rows.len(), 5]).unwrap()
}

fn boxes4(rows: &[[f64; 4]]) -> Tensor {
    Tensor::from_vec(rows.concat(), &[rows.len(), 4]).unwrap()
}

#[test]
fn roi_align_gradients_match_finite_differences() {
    // offsets by multiples of sqrt(2)/10 keep sample points off pixel edges
    let r = std::f64::consts::SQRT_2 / 10.0;
    let boxes = boxes5(&[
        [0.0, 0.3 + r, 0.2 + r, 5.1 + r, 4.7 + r],
        [1.0, -1.4 + r, -0.6 + r, 3.3 + r, 2.2 + r],
        [1.0, 4.2 + r, 3.1 + r, 7.8 + r, 6.9 + r],
        [0.0, 2.0 + r, 2.0 + r, 2.3 + r, 2.2 + r],
    ]);
    let x = randn(&[2, 3, 6, 7], 11);
    for aligned in [false, true] {
        for (sr, scale) in [(-1, 1.0), (2, 1.0), (1, 0.5), (3, 0.75)] {
            let f = |t: &[Tensor]| t[0].roi_align(&boxes, [3, 2], scale, sr, aligned);
            check_gradients(f, std::slice::from_ref(&x), 1e-6, 1e-8, 1e-6)
                .unwrap_or_else(|e| panic!("aligned {aligned} sr {sr} scale {scale}: {e}"));
        }
    }
}

#[test]
fn roi_align_at_pixel_resolution() {
    let x = randn(&[1, 2, 4, 5], 3);
    let xv = x.to_vec_f64().unwrap();
    // aligned, one sample per bin, bins = pixels: every sample is a pixel centre
    let whole = boxes5(&[[0.0, 0.0, 0.0, 5.0, 4.0]]);
    let y = x.roi_align(&whole, [4, 5], 1.0, 1, true).unwrap();
    assert_eq!(y.dims(), &[1, 2, 4, 5]);
    assert_eq!(y.to_vec_f64().unwrap(), xv);
    // unaligned, the same box samples half a pixel down-right: the mean of
    // each 2x2 block, with the last row/column interpolating with itself
    let y = x
        .roi_align(&whole, [4, 5], 1.0, 1, false)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    let at = |c: usize, i: usize, j: usize| xv[c * 20 + i.min(3) * 5 + j.min(4)];
    for c in 0..2 {
        for i in 0..4 {
            for j in 0..5 {
                let want =
                    (at(c, i, j) + at(c, i, j + 1) + at(c, i + 1, j) + at(c, i + 1, j + 1)) / 4.0;
                assert!(
                    (y[c * 20 + i * 5 + j] - want).abs() < 1e-12,
                    "({c},{i},{j})"
                );
            }
        }
    }
}

#[test]
fn roi_align_boundary_rules() {
    let x = Tensor::full(&[1, 1, 3, 3], 2.0, DType::F64);
    let y = |b: [f64; 5], sr: i64, aligned: bool| {
        x.roi_align(&boxes5(&[b]), [1, 1], 1.0, sr, aligned)
            .unwrap()
            .item()
            .unwrap()
    };
    // (aligned shifts boxes by -0.5; one sample per bin sits at its centre)
    // the sample at (-1.25, -1.25): more than a pixel outside, so 0
    assert_eq!(y([0.0, -1.0, -1.0, -0.5, -0.5], 1, true), 0.0);
    // at (-0.75, -0.75): clamped onto pixel (0, 0)
    assert_eq!(y([0.0, -0.5, -0.5, 0.0, 0.0], 1, true), 2.0);
    // at (3.0, 3.0) = (H, W): still inside, the last pixel
    assert_eq!(y([0.0, 3.0, 3.0, 4.0, 4.0], 1, true), 2.0);
    // at (3.5, 3.5): beyond H, so 0
    assert_eq!(y([0.0, 3.5, 3.5, 4.5, 4.5], 1, true), 0.0);
    // an empty box: the adaptive grid is empty when aligned (0), unaligned
    // grows the box to 1x1; a fixed sampling ratio samples its one point
    assert_eq!(y([0.0, 1.2, 1.2, 1.2, 1.2], -1, true), 0.0);
    assert_eq!(y([0.0, 1.2, 1.2, 1.2, 1.2], -1, false), 2.0);
    assert_eq!(y([0.0, 1.2, 1.2, 1.2, 1.2], 1, true), 2.0);
    // inverted boxes: likewise empty when aligned, 1x1 when not
    assert_eq!(y([0.0, 2.0, 2.0, 1.0, 1.0], -1, true), 0.0);
    assert_eq!(y([0.0, 2.0, 2.0, 1.0, 1.0], -1, false), 2.0);
}

#[test]
fn roi_align_backward_is_deterministic_across_thread_counts() {
    let x = randn(&[2, 37, 9, 8], 5);
    let mut rng = Rng::new(9);
    let mut rows = Vec::new();
    for k in 0..50 {
        let v = Tensor::rand(&[4], -2.0, 8.0, DType::F64, &mut rng)
            .to_vec_f64()
            .unwrap();
        rows.push([
            (k % 2) as f64,
            v[0],
            v[1],
            v[0] + v[2].abs(),
            v[1] + v[3].abs(),
        ]);
    }
    let boxes = boxes5(&rows);
    let g = randn(&[50, 37, 2, 3], 6).to_dtype(DType::F32).unwrap();
    let grad_with = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let x = x.to_dtype(DType::F32).unwrap().requires_grad_().unwrap();
            let b = boxes.to_dtype(DType::F32).unwrap();
            let y = x.roi_align(&b, [2, 3], 0.5, -1, true).unwrap();
            y.backward_with(g.clone()).unwrap();
            x.grad().unwrap().to_vec::<f32>().unwrap()
        })
    };
    let one = grad_with(1);
    assert!(one.iter().any(|&v| v != 0.0));
    assert_eq!(one, grad_with(3));
    assert_eq!(one, grad_with(8));
}

#[test]
fn roi_align_half_precision_computes_in_f32() {
    let x = randn(&[1, 2, 5, 6], 8);
    let boxes = boxes5(&[[0.0, 0.5, 0.25, 4.5, 3.75], [0.0, 1.0, 1.0, 5.0, 4.0]]);
    let reference = |t: &Tensor| {
        let x32 = t.to_dtype(DType::F32).unwrap();
        let b32 = boxes
            .to_dtype(t.dtype())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        x32.roi_align(&b32, [2, 2], 1.0, 2, false).unwrap()
    };
    for dtype in [DType::BF16, DType::F16] {
        let xh = x.to_dtype(dtype).unwrap().requires_grad_().unwrap();
        let y = xh
            .roi_align(&boxes.to_dtype(dtype).unwrap(), [2, 2], 1.0, 2, false)
            .unwrap();
        assert_eq!(y.dtype(), dtype);
        // the f32 result rounded once to the half type
        let want = reference(&x.to_dtype(dtype).unwrap())
            .to_dtype(dtype)
            .unwrap();
        assert_eq!(
            y.to_vec_f64().unwrap(),
            want.to_vec_f64().unwrap(),
            "{dtype}"
        );
        y.sum_all().unwrap().backward().unwrap();
        assert_eq!(xh.grad().unwrap().dtype(), dtype);
    }
}

#[test]
fn roi_align_rejects_bad_input() {
    let x = randn(&[2, 3, 5, 5], 1);
    let good = [0.0, 1.0, 1.0, 3.0, 3.0];
    let err = |x: &Tensor, b: &Tensor, out: [usize; 2], scale: f64| {
        x.roi_align(b, out, scale, 2, false)
            .expect_err("bad input must be an error")
            .to_string()
    };
    let four = Tensor::from_vec(vec![0.0f64; 8], &[2, 4]).unwrap();
    assert!(err(&x, &four, [2, 2], 1.0).contains("[K, 5]"));
    for (b, what) in [
        (2.0, "batch index 2"),
        (-1.0, "batch index -1"),
        (0.5, "batch index 0.5"),
    ] {
        let mut row = good;
        row[0] = b;
        assert!(
            err(&x, &boxes5(&[good, row]), [2, 2], 1.0).contains(what),
            "{what}"
        );
    }
    let mut nan = good;
    nan[3] = f64::NAN;
    assert!(err(&x, &boxes5(&[nan]), [2, 2], 1.0).contains("finite"));
    assert!(err(&x, &boxes5(&[good]), [0, 2], 1.0).contains("output size"));
    let huge = [0.0, 0.0, 0.0, 1e12, 1e12];
    let adaptive = x.roi_align(&boxes5(&[huge]), [2, 2], 1.0, -1, false);
    assert!(adaptive
        .expect_err("huge box")
        .to_string()
        .contains("samples"));
    let sr = x.roi_align(&boxes5(&[good]), [7, 7], 1.0, 1 << 20, false);
    assert!(sr
        .expect_err("absurd sampling ratio")
        .to_string()
        .contains("samples"));
    assert!(err(&x, &boxes5(&[good]), [2, 2], 0.0).contains("spatial_scale"));
    let b32 = boxes5(&[good]).to_dtype(DType::F32).unwrap();
    assert!(err(&x, &b32, [2, 2], 1.0).contains("dtype"));
    assert!(err(&randn(&[3, 5, 5], 1), &boxes5(&[good]), [2, 2], 1.0).contains("[N, C, H, W]"));
    let xi = Tensor::zeros(&[1, 1, 2, 2], DType::I64);
    let bi = Tensor::zeros(&[1, 5], DType::I64);
    assert!(err(&xi, &bi, [2, 2], 1.0).contains("float"));
    // no boxes is not an error
    let none = Tensor::zeros(&[0, 5], DType::F64);
    assert_eq!(
        x.roi_align(&none, [2, 2], 1.0, 2, false).unwrap().dims(),
        &[0, 3, 2, 2]
    );
}

/// torchvision's CPU nms loop, transcribed literally (no compaction, no
/// parallelism), in f64.
fn reference_nms(b: &[f64], s: &[f64], thr: f64) -> Vec<usize> {
    let k = s.len();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&i, &j| s[j].partial_cmp(&s[i]).unwrap());
    let area = |i: usize| (b[4 * i + 2] - b[4 * i]) * (b[4 * i + 3] - b[4 * i + 1]);
    let mut suppressed = vec![false; k];
    let mut keep = Vec::new();
    for a in 0..k {
        let i = order[a];
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        for &j in &order[a + 1..] {
            if suppressed[j] {
                continue;
            }
            let w = (b[4 * i + 2].min(b[4 * j + 2]) - b[4 * i].max(b[4 * j])).max(0.0);
            let h = (b[4 * i + 3].min(b[4 * j + 3]) - b[4 * i + 1].max(b[4 * j + 1])).max(0.0);
            let inter = w * h;
            if inter / (area(i) + area(j) - inter) > thr {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// `k` random boxes in a `extent`-sized image with sides up to `size`.
fn random_boxes(k: usize, extent: f64, size: f64, seed: u64) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let xy = Tensor::rand(&[k, 2], 0.0, extent, DType::F64, &mut rng)
        .to_vec_f64()
        .unwrap();
    let wh = Tensor::rand(&[k, 2], 1.0, size, DType::F64, &mut rng)
        .to_vec_f64()
        .unwrap();
    let mut b = Vec::with_capacity(4 * k);
    for i in 0..k {
        b.extend([
            xy[2 * i],
            xy[2 * i + 1],
            xy[2 * i] + wh[2 * i],
            xy[2 * i + 1] + wh[2 * i + 1],
        ]);
    }
    let s = Tensor::rand(&[k], 0.0, 1.0, DType::F64, &mut rng);
    (Tensor::from_vec(b, &[k, 4]).unwrap(), s)
}

#[test]
fn nms_20k_boxes_matches_the_reference_loop() {
    let (b, s) = random_boxes(20_000, 1000.0, 60.0, 21);
    let start = Instant::now();
    let keep = nms(&b, &s, 0.5).unwrap();
    let took = start.elapsed();
    let want = reference_nms(&b.to_vec_f64().unwrap(), &s.to_vec_f64().unwrap(), 0.5);
    assert_eq!(keep, want);
    assert!(
        keep.len() > 1000 && keep.len() < 20_000,
        "kept {}",
        keep.len()
    );
    eprintln!("nms: 20000 boxes -> {} kept in {took:?}", keep.len());
    // f32 computes in f32 and still keeps a plausible set
    let k32 = nms(
        &b.to_dtype(DType::F32).unwrap(),
        &s.to_dtype(DType::F32).unwrap(),
        0.5,
    )
    .unwrap();
    assert!(k32.len().abs_diff(keep.len()) <= keep.len() / 100);
}

#[test]
fn nms_threshold_is_strict_and_ties_keep_index_order() {
    // IoU of these two is exactly 1/2
    let b = boxes4(&[
        [0.0, 0.0, 2.0, 1.0],
        [0.0, 0.0, 1.0, 1.0],
        [5.0, 5.0, 6.0, 6.0],
    ]);
    let s = Tensor::from_vec(vec![0.5f64, 0.9, 0.5], &[3]).unwrap();
    assert_eq!(nms(&b, &s, 0.5).unwrap(), vec![1, 0, 2]);
    assert_eq!(nms(&b, &s, 0.49).unwrap(), vec![1, 2]);
    let empty = Tensor::zeros(&[0, 4], DType::F64);
    assert!(nms(&empty, &Tensor::zeros(&[0], DType::F64), 0.5)
        .unwrap()
        .is_empty());
}

#[test]
fn batched_nms_keeps_categories_apart() {
    // identical boxes: one category suppresses its duplicate, another does not
    let b = boxes4(&[[0.0, 0.0, 4.0, 4.0]; 3]);
    let s = Tensor::from_vec(vec![0.7f64, 0.8, 0.9], &[3]).unwrap();
    assert_eq!(batched_nms(&b, &s, &[0, 0, 1], 0.5).unwrap(), vec![2, 1]);
    // both code paths (<= 1000 boxes: coordinate trick, more: one nms per
    // category) agree with per-category reference nms on integer boxes,
    // where the shifted coordinates are exact
    for k in [600, 1400] {
        let (b, s) = random_boxes(k, 200.0, 40.0, k as u64);
        let b = Tensor::from_vec(
            b.to_vec_f64()
                .unwrap()
                .iter()
                .map(|v| v.round())
                .collect::<Vec<_>>(),
            &[k, 4],
        )
        .unwrap();
        let idxs: Vec<i64> = (0..k).map(|i| (i * 7 % 5) as i64 - 1).collect();
        let (bv, sv) = (b.to_vec_f64().unwrap(), s.to_vec_f64().unwrap());
        let mut want = Vec::new();
        for c in -1..4 {
            let members: Vec<usize> = (0..k).filter(|&i| idxs[i] == c).collect();
            let cb: Vec<f64> = members
                .iter()
                .flat_map(|&i| bv[4 * i..4 * i + 4].to_vec())
                .collect();
            let cs: Vec<f64> = members.iter().map(|&i| sv[i]).collect();
            want.extend(reference_nms(&cb, &cs, 0.4).into_iter().map(|j| members[j]));
        }
        want.sort_by(|&i, &j| sv[j].partial_cmp(&sv[i]).unwrap());
        assert_eq!(batched_nms(&b, &s, &idxs, 0.4).unwrap(), want, "{k} boxes");
    }
}

#[test]
fn box_iou_values() {
    let a = boxes4(&[[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 1.0, 3.0]]);
    let b = boxes4(&[
        [1.0, 1.0, 3.0, 3.0],
        [0.0, 0.0, 2.0, 2.0],
        [5.0, 5.0, 6.0, 7.0],
    ]);
    let iou = box_iou(&a, &b).unwrap();
    assert_eq!(iou.dims(), &[2, 3]);
    assert_eq!(
        iou.to_vec_f64().unwrap(),
        vec![1.0 / 7.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    );
}

#[test]
fn nms_family_rejects_bad_input() {
    let b = boxes4(&[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]]);
    let s = Tensor::from_vec(vec![0.1f64, 0.2], &[2]).unwrap();
    let msg = |r: engine::Result<Vec<usize>>| r.expect_err("must fail").to_string();
    assert!(msg(nms(&b.reshape(&[1, 8]).unwrap(), &s, 0.5)).contains("[K, 4]"));
    assert!(msg(nms(&b, &Tensor::zeros(&[3], DType::F64), 0.5)).contains("scores"));
    assert!(msg(nms(&b, &s.to_dtype(DType::F32).unwrap(), 0.5)).contains("dtype"));
    assert!(msg(batched_nms(&b, &s, &[0], 0.5)).contains("idxs"));
    let bi = Tensor::zeros(&[2, 4], DType::I64);
    assert!(msg(nms(&bi, &s, 0.5)).contains("float"));
    assert!(box_iou(&b, &Tensor::zeros(&[2, 3], DType::F64)).is_err());
}

#[test]
fn detection_ops_report_to_the_trace() {
    let x = randn(&[1, 2, 5, 5], 2).requires_grad_().unwrap();
    let rois = boxes5(&[[0.0, 0.5, 0.5, 3.5, 4.0]]);
    let b = boxes4(&[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.1]]);
    let s = Tensor::from_vec(vec![0.1f64, 0.2], &[2]).unwrap();

    let ((), t) = testutil::trace::capture(|| {
        let y = x.roi_align(&rois, [2, 2], 1.0, 2, true).unwrap();
        y.sum_all().unwrap().backward().unwrap();
        nms(&b, &s, 0.5).unwrap();
        batched_nms(&b, &s, &[0, 1], 0.5).unwrap();
        box_iou(&b, &b).unwrap();
    });
    let find = |op: &str, phase: &str| t.find(op, phase);
    let fwd = find("roi_align", "forward");
    assert_eq!(fwd["ran"], "cpu:roi_align");
    assert_eq!(fwd["outputs"][0]["shape"], serde_json::json!([1, 2, 2, 2]));
    find("roi_align", "backward");
    assert_eq!(
        find("nms", "forward")["outputs"][0]["shape"],
        serde_json::json!([1])
    );
    assert_eq!(find("batched_nms", "forward")["ran"], "cpu:nms");
    assert_eq!(find("box_iou", "forward")["ran"], "cpu:box_iou");
}
