use super::parity::{candidates, Candidates};
use super::*;
use crate::{Device, Rng};

/// torchvision's `clip_boxes_to_image` on flat [N, 4] (models'
/// `box_coder::clip_boxes_to_image`): x to [0, w], y to [0, h], NaN stays.
fn host_clip<T: Float>(boxes: &[T], (h, w): (usize, usize)) -> Vec<T> {
    let (h, w) = (
        <T as Element>::from_f64(h as f64),
        <T as Element>::from_f64(w as f64),
    );
    boxes
        .iter()
        .enumerate()
        .map(|(i, &v)| clamp_nan(v, T::zero(), if i % 2 == 0 { w } else { h }))
        .collect()
}

/// The host path this op replaces (models' `Rpn::filter_image`): clip,
/// `remove_small_boxes`, the score filter, the engine's `batched_nms` with
/// the level as category, the first `post_n`. Returns (boxes, scores,
/// kept before NMS).
#[allow(clippy::type_complexity)]
fn host_filter<T: Float>(
    decoded: &[T],
    logits: &[T],
    levels: &[i64],
    size: (usize, usize),
    g: &ProposalGeom,
) -> (Vec<[f64; 4]>, Vec<f64>, usize) {
    let boxes = host_clip(decoded, size);
    let m = <T as Element>::from_f64(g.min_size);
    let thresh = <T as Element>::from_f64(g.score_thresh);
    let kept: Vec<usize> = boxes
        .chunks_exact(4)
        .enumerate()
        .filter(|(_, b)| b[2] - b[0] >= m && b[3] - b[1] >= m)
        .map(|(i, _)| i)
        .filter(|&c| sigmoid(logits[c]) >= thresh)
        .collect();
    let k = kept.len();
    let mut kb = Vec::with_capacity(4 * k);
    let mut ks = Vec::with_capacity(k);
    let mut kl = Vec::with_capacity(k);
    for &c in &kept {
        kb.extend_from_slice(&boxes[4 * c..4 * c + 4]);
        ks.push(sigmoid(logits[c]));
        kl.push(levels[c]);
    }
    let keep = super::super::batched_nms(
        &Tensor::from_vec(kb.clone(), &[k, 4]).unwrap(),
        &Tensor::from_vec(ks.clone(), &[k]).unwrap(),
        &kl,
        g.nms_thresh,
    )
    .unwrap();
    let out_boxes = keep
        .iter()
        .take(g.post_n)
        .map(|&j| std::array::from_fn(|q| Element::to_f64(kb[4 * j + q])))
        .collect();
    let out_scores = keep
        .iter()
        .take(g.post_n)
        .map(|&j| Element::to_f64(ks[j]))
        .collect();
    (out_boxes, out_scores, k)
}

/// Runs the op and the host path on `bt` in `T`; asserts they agree
/// exactly. Returns, per image, the candidates kept before NMS.
fn compare_with_host<T: Float>(
    bt: &Candidates,
    min_size: f64,
    score_thresh: f64,
    nms_thresh: f64,
    post_n: usize,
) -> Vec<usize> {
    let (boxes, logits) = bt.tensors(T::DTYPE).unwrap();
    let out = filter_proposals(
        &boxes,
        &logits,
        &bt.levels,
        &bt.sizes,
        min_size,
        score_thresh,
        nms_thresh,
        post_n,
    )
    .unwrap();
    let (bsz, k) = (bt.sizes.len(), logits.dims()[1]);
    let p = post_n.min(k);
    assert_eq!(out.boxes.dims(), [bsz, p, 4]);
    assert_eq!(out.scores.dims(), [bsz, p]);
    assert_eq!(out.counts.dims(), [bsz]);
    assert_eq!(out.boxes.dtype(), T::DTYPE);
    assert_eq!(out.counts.dtype(), DType::I64);
    let (ob, os) = (
        out.boxes.to_vec::<T>().unwrap(),
        out.scores.to_vec::<T>().unwrap(),
    );
    let counts = out.counts.to_vec::<i64>().unwrap();
    let (bx, lg) = (boxes.to_vec::<T>().unwrap(), logits.to_vec::<T>().unwrap());
    let mut col_level = vec![0i64; k];
    for (l, &(s, n)) in bt.levels.iter().enumerate() {
        col_level[s..s + n].fill(l as i64);
    }
    let geom = ProposalGeom {
        batch: bsz,
        k,
        levels: bt.levels.clone(),
        image_sizes: bt.sizes.clone(),
        min_size,
        score_thresh,
        nms_thresh,
        post_n,
    };
    let mut pre = Vec::new();
    for b in 0..bsz {
        let (hb, hs, n_pre) = host_filter::<T>(
            &bx[b * k * 4..(b + 1) * k * 4],
            &lg[b * k..(b + 1) * k],
            &col_level,
            bt.sizes[b],
            &geom,
        );
        pre.push(n_pre);
        let c = counts[b] as usize;
        assert_eq!(c, hb.len(), "image {b}: count");
        for r in 0..p {
            let got_b: [f64; 4] = std::array::from_fn(|q| Element::to_f64(ob[(b * p + r) * 4 + q]));
            let got_s = Element::to_f64(os[b * p + r]);
            if r < c {
                assert_eq!(got_b, hb[r], "image {b} row {r}: box");
                assert_eq!(got_s, hs[r], "image {b} row {r}: score");
            } else {
                assert_eq!(got_b, [0.0; 4], "image {b} row {r} after the count");
                assert_eq!(got_s, 0.0, "image {b} row {r} after the count");
            }
        }
    }
    pre
}

#[test]
fn equals_the_host_path_beyond_1000_boxes() {
    // more than 1000 boxes pass the filter in every image: batched_nms
    // then runs one NMS per level, as the op: equal on any coordinates
    let mut rng = Rng::new(11);
    let bt = candidates(
        &mut rng,
        &[800, 600, 450, 300, 120],
        &[(200, 300), (333, 250), (150, 150)],
        false,
        false,
    );
    for (post_n, nms) in [(2000, 0.7), (150, 0.5)] {
        let pre = compare_with_host::<f32>(&bt, 1.0, 0.0, nms, post_n);
        assert!(pre.iter().all(|&n| n > 1000), "{pre:?}");
        let pre = compare_with_host::<f64>(&bt, 1e-3, 0.0, nms, post_n);
        assert!(pre.iter().all(|&n| n > 1000), "{pre:?}");
    }
}

#[test]
fn equals_the_host_path_up_to_1000_boxes_on_a_dyadic_grid() {
    // up to 1000 boxes batched_nms shifts each box by level * (max + 1);
    // on a 1/16 grid with coordinates below 2^10 the shifted coordinates
    // (below 2^13) are exact in f32, their differences too, so every IoU
    // is the unshifted one bit for bit and the two paths agree exactly
    let mut rng = Rng::new(12);
    let bt = candidates(
        &mut rng,
        &[150, 120, 90, 60],
        &[(300, 400), (257, 129)],
        true,
        false,
    );
    for (thresh, post_n) in [(0.0, 1000), (0.3, 40), (0.6, 3)] {
        let pre = compare_with_host::<f32>(&bt, 2.0, thresh, 0.6, post_n);
        assert!(pre.iter().all(|&n| n > 30 && n <= 1000), "{pre:?}");
        let pre = compare_with_host::<f64>(&bt, 2.0, thresh, 0.6, post_n);
        assert!(pre.iter().all(|&n| n > 30 && n <= 1000), "{pre:?}");
    }
}

#[test]
fn a_worked_example() {
    // 2 levels of 3 columns, one 100 x 50 image (h 50, w 100)
    let boxes = [
        // level 0
        [10.0, 10.0, 30.0, 30.0],  // kept, score sigmoid(3)
        [11.0, 10.0, 31.0, 30.0],  // IoU 19/21 with column 0: suppressed
        [-20.0, 40.0, 20.0, 70.0], // clipped to [0, 40, 20, 50]: kept
        // level 1
        [10.0, 10.0, 30.0, 30.0], // same box, other level: kept
        [50.0, 5.0, 50.5, 20.0],  // 0.5 wide: removed by min_size 1
        [60.0, 5.0, 90.0, 20.0],  // score below the threshold
    ];
    let logits = vec![3.0, 2.0, 1.0, 3.0, 2.5, -3.0];
    let b = Tensor::from_vec(boxes.concat(), &[1, 6, 4]).unwrap();
    let l = Tensor::from_vec(logits, &[1, 6]).unwrap();
    let out = filter_proposals(&b, &l, &[(0, 3), (3, 3)], &[(50, 100)], 1.0, 0.1, 0.7, 4).unwrap();
    assert_eq!(out.counts.to_vec::<i64>().unwrap(), vec![3]);
    let s = |x: f64| 1.0 / (1.0 + (-x).exp());
    // ties (columns 0 and 3, both sigmoid(3)) go to the lower column
    assert_eq!(
        out.scores.to_vec::<f64>().unwrap(),
        vec![s(3.0), s(3.0), s(1.0), 0.0]
    );
    assert_eq!(
        out.boxes.to_vec::<f64>().unwrap(),
        [
            [10.0, 10.0, 30.0, 30.0],
            [10.0, 10.0, 30.0, 30.0],
            [0.0, 40.0, 20.0, 50.0],
            [0.0; 4]
        ]
        .concat()
    );
    // post_n 1 keeps the best; IoU threshold 0.95 keeps column 1 too
    let out = filter_proposals(&b, &l, &[(0, 3), (3, 3)], &[(50, 100)], 1.0, 0.1, 0.95, 1).unwrap();
    assert_eq!(out.boxes.dims(), [1, 1, 4]);
    assert_eq!(out.counts.to_vec::<i64>().unwrap(), vec![1]);
    let out =
        filter_proposals(&b, &l, &[(0, 3), (3, 3)], &[(50, 100)], 1.0, 0.1, 0.95, 10).unwrap();
    assert_eq!(out.boxes.dims(), [1, 6, 4]);
    assert_eq!(out.counts.to_vec::<i64>().unwrap(), vec![4]);
    assert_eq!(
        out.scores.to_vec::<f64>().unwrap()[..4],
        [s(3.0), s(3.0), s(2.0), s(1.0)]
    );
}

#[test]
fn nan_and_infinite_logits() {
    // NaN (first, as topk puts it) is dropped; +inf scores 1 and -inf 0
    // (kept by a threshold of 0: torchvision's default)
    let boxes: Vec<f64> = (0..4)
        .flat_map(|i| {
            let x = 30.0 * i as f64;
            [x, 0.0, x + 20.0, 20.0]
        })
        .collect();
    let b = Tensor::from_vec(boxes, &[1, 4, 4])
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let l = Tensor::from_vec(
        vec![f64::NAN, f64::INFINITY, 0.0, f64::NEG_INFINITY],
        &[1, 4],
    )
    .unwrap()
    .to_dtype(DType::F32)
    .unwrap();
    let out = filter_proposals(&b, &l, &[(0, 4)], &[(100, 200)], 0.0, 0.0, 0.7, 10).unwrap();
    assert_eq!(out.counts.to_vec::<i64>().unwrap(), vec![3]);
    assert_eq!(
        out.scores.to_vec::<f32>().unwrap(),
        vec![1.0, 0.5, 0.0, 0.0]
    );
    assert_eq!(
        out.boxes.to_vec::<f32>().unwrap()[..4],
        [30.0, 0.0, 50.0, 20.0]
    );
    assert_eq!(
        out.boxes.to_vec::<f32>().unwrap()[8..12],
        [90.0, 0.0, 110.0, 20.0]
    );
}

#[test]
fn empty_batches_candidates_and_post_n() {
    let mut rng = Rng::new(3);
    for (bsz, lens, post_n) in [(0, vec![5, 3], 4), (2, vec![0, 0], 4), (2, vec![5, 3], 0)] {
        let sizes = vec![(40, 60); bsz];
        let bt = candidates(&mut rng, &lens, &sizes, false, false);
        let k: usize = lens.iter().sum();
        let (b, l) = (
            Tensor::from_vec(bt.boxes.clone(), &[bsz, k, 4]).unwrap(),
            Tensor::from_vec(bt.logits.clone(), &[bsz, k]).unwrap(),
        );
        let out = filter_proposals(&b, &l, &bt.levels, &sizes, 0.0, 0.0, 0.5, post_n).unwrap();
        let p = post_n.min(k);
        assert_eq!(out.boxes.dims(), [bsz, p, 4]);
        assert_eq!(out.scores.dims(), [bsz, p]);
        assert_eq!(out.counts.to_vec::<i64>().unwrap(), vec![0; bsz]);
    }
}

#[test]
fn bad_arguments_are_clear_errors() {
    let b = Tensor::zeros(&[2, 5, 4], DType::F32);
    let l = Tensor::zeros(&[2, 5], DType::F32);
    let lv = [(0, 2), (2, 3)];
    let sz = [(10, 10), (10, 10)];
    let err = |b: &Tensor, l: &Tensor, lv: &[(usize, usize)], sz: &[(usize, usize)], t: f64| {
        filter_proposals(b, l, lv, sz, 0.0, t, 0.5, 3)
            .unwrap_err()
            .to_string()
    };
    assert!(filter_proposals(&b, &l, &lv, &sz, 0.0, 0.0, 0.5, 3).is_ok());
    let e = err(&Tensor::zeros(&[2, 5, 5], DType::F32), &l, &lv, &sz, 0.0);
    assert!(e.contains("[B, K, 4]"), "{e}");
    let e = err(&b, &Tensor::zeros(&[2, 4], DType::F32), &lv, &sz, 0.0);
    assert!(e.contains("[2, 5]"), "{e}");
    let e = err(&b, &Tensor::zeros(&[2, 5], DType::F64), &lv, &sz, 0.0);
    assert!(e.contains("share a dtype"), "{e}");
    let e = err(
        &Tensor::zeros(&[2, 5, 4], DType::F16),
        &Tensor::zeros(&[2, 5], DType::F16),
        &lv,
        &sz,
        0.0,
    );
    assert!(e.contains("f32 or f64"), "{e}");
    let e = err(&b, &l, &lv, &sz[..1], 0.0);
    assert!(e.contains("1 image sizes"), "{e}");
    let e = err(&b, &l, &[(0, 2), (3, 2)], &sz, 0.0);
    assert!(e.contains("contiguous"), "{e}");
    let e = err(&b, &l, &[(0, 2), (2, 2)], &sz, 0.0);
    assert!(e.contains("K = 5"), "{e}");
    let e = err(&b, &l, &lv, &sz, f64::NAN);
    assert!(e.contains("score_thresh"), "{e}");
    let long = MAX_PROPOSAL_SEGMENT + 1;
    let e = err(
        &Tensor::zeros(&[1, long, 4], DType::F32),
        &Tensor::zeros(&[1, long], DType::F32),
        &[(0, long)],
        &[(10, 10)],
        0.0,
    );
    assert!(e.contains("at most 16384"), "{e}");
    let many: Vec<(usize, usize)> = (0..65).map(|i| (i, 1)).collect();
    let e = err(
        &Tensor::zeros(&[1, 65, 4], DType::F32),
        &Tensor::zeros(&[1, 65], DType::F32),
        &many,
        &[(10, 10)],
        0.0,
    );
    assert!(e.contains("at most 64"), "{e}");
    // a segment whose logits increase (NaN anywhere is ignored)
    let l = Tensor::from_vec(
        vec![
            1.0f32,
            0.5,
            f32::NAN,
            0.2,
            0.1,
            1.0,
            0.5,
            f32::NAN,
            0.2,
            0.3,
        ],
        &[2, 5],
    )
    .unwrap();
    let e = err(&b, &l, &lv, &sz, 0.0);
    assert!(
        e.contains("image 1, level segment 1") && e.contains("non-increasing"),
        "{e}"
    );
}

#[test]
fn output_is_on_the_inputs_device_without_history() {
    let b = Tensor::zeros(&[1, 2, 4], DType::F64)
        .requires_grad_()
        .unwrap();
    let l = Tensor::zeros(&[1, 2], DType::F64);
    let out = filter_proposals(&b, &l, &[(0, 2)], &[(5, 5)], 0.0, 0.0, 0.5, 2).unwrap();
    assert_eq!(out.boxes.device(), Device::Cpu);
    assert!(!out.boxes.requires_grad());
}

#[test]
fn parity_cases_keep_and_cut_on_the_cpu() {
    let mut cases = Vec::new();
    super::parity::cases(&mut Rng::new(9), &mut cases);
    assert_eq!(cases.len(), 8);
    let (mut cut, mut images) = (0, 0);
    for c in &cases {
        let out = (c.run)(Device::Cpu).unwrap();
        let counts = out[0].1.to_vec::<i64>().unwrap();
        let p = out[2].1.dims()[1] as i64;
        assert!(
            counts.iter().all(|&n| n >= 1 && n <= p),
            "{} {counts:?}",
            c.label
        );
        cut += counts.iter().filter(|&&n| n == p).count();
        images += counts.len();
    }
    // post_n cuts some images and not others
    assert!(cut > 0 && cut < images, "{cut} of {images}");
}

#[test]
fn parity_logits_keep_distinct_scores_many_ulp_apart_in_f32() {
    // the device's expf is within 2 ulp of the host's: no two different
    // logits of a parity case may have f32 sigmoids closer than that
    let mut rng = Rng::new(4);
    let c = candidates(&mut rng, &[500, 400], &[(100, 100); 3], false, true);
    let mut v: Vec<f64> = c.logits.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    assert!(v.len() > 200);
    for w in v.windows(2) {
        let (a, b) = (sigmoid(w[0] as f32), sigmoid(w[1] as f32));
        let ulp = f32::EPSILON * b.abs();
        assert!(b - a > 16.0 * ulp, "{w:?}: {a} {b}");
    }
}

#[test]
fn matches_torchvision_filter_proposals() {
    // tests/fixtures/golden/detection_filter_proposals.safetensors, written
    // by tools/golden/make_proposal_fixtures.py: torchvision's
    // RegionProposalNetwork.filter_proposals in float32 and float64. The
    // clip, the filters and the NMS decide exactly as torchvision (same
    // operations; boxes on a 1/16 grid so its coordinate trick is exact):
    // counts, order and boxes must be equal; the scores differ only by
    // torch.sigmoid's rounding (f32: within 1e-6 relative, f64: 1e-14)
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/golden/detection_filter_proposals.safetensors");
    let ck = crate::checkpoint::load(&path).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&ck.metadata["cases"]).unwrap();
    let pairs = |v: &serde_json::Value| -> Vec<(usize, usize)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_u64().unwrap() as usize,
                    p[1].as_u64().unwrap() as usize,
                )
            })
            .collect()
    };
    let mut checked = 0;
    for c in cases.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let (levels, sizes) = (pairs(&c["levels"]), pairs(&c["image_sizes"]));
        let f = |k: &str| c[k].as_f64().unwrap();
        let post_n = c["post_n"].as_u64().unwrap() as usize;
        for (dt, dtype, rtol) in [("f32", DType::F32, 1e-6), ("f64", DType::F64, 1e-14)] {
            let cast = |k: &str| ck.tensors[k].to_dtype(dtype).unwrap();
            let out = filter_proposals(
                &cast(&format!("{name}.boxes")),
                &cast(&format!("{name}.logits")),
                &levels,
                &sizes,
                f("min_size"),
                f("score_thresh"),
                f("nms_thresh"),
                post_n,
            )
            .unwrap();
            let p = out.scores.dims()[1];
            let (ob, os) = (
                out.boxes.to_vec_f64().unwrap(),
                out.scores.to_vec_f64().unwrap(),
            );
            let counts = out.counts.to_vec::<i64>().unwrap();
            for (b, &n) in counts.iter().enumerate() {
                let tb = ck.tensors[&format!("{name}.{dt}.boxes.{b}")]
                    .to_vec_f64()
                    .unwrap();
                let ts = ck.tensors[&format!("{name}.{dt}.scores.{b}")]
                    .to_vec_f64()
                    .unwrap();
                let n = n as usize;
                assert_eq!(n, ts.len(), "{name} {dt} image {b}: count");
                assert_eq!(
                    &ob[b * p * 4..(b * p + n) * 4],
                    &tb[..],
                    "{name} {dt} image {b}"
                );
                for (r, (&x, &y)) in os[b * p..b * p + n].iter().zip(&ts).enumerate() {
                    assert!(
                        (x - y).abs() <= rtol * y.abs(),
                        "{name} {dt} image {b} row {r}: score {x} vs torchvision {y}"
                    );
                }
                checked += n;
            }
        }
    }
    assert!(checked > 2000, "{checked}");
}

#[test]
fn strided_inputs_give_the_contiguous_result() {
    // logits as the transpose of a [K, B] tensor, boxes as a narrowed view
    let mut rng = Rng::new(21);
    let bt = candidates(&mut rng, &[40, 25], &[(90, 120), (70, 60)], false, false);
    let (b, l) = bt.tensors(DType::F32).unwrap();
    let want = filter_proposals(&b, &l, &bt.levels, &bt.sizes, 1.0, 0.0, 0.6, 30).unwrap();
    let lt = l.permute(&[1, 0]).unwrap().contiguous().unwrap();
    let l_view = lt.permute(&[1, 0]).unwrap();
    assert!(!l_view.is_contiguous());
    let wide = Tensor::cat(&[b.clone(), b.clone()], 2).unwrap();
    let b_view = wide.narrow(2, 4, 4).unwrap();
    assert!(!b_view.is_contiguous());
    let got = filter_proposals(&b_view, &l_view, &bt.levels, &bt.sizes, 1.0, 0.0, 0.6, 30).unwrap();
    for (x, y) in [
        (&got.boxes, &want.boxes),
        (&got.scores, &want.scores),
        (&got.counts, &want.counts),
    ] {
        assert_eq!(x.to_vec_f64().unwrap(), y.to_vec_f64().unwrap());
    }
    assert!(want.counts.to_vec::<i64>().unwrap().iter().all(|&n| n > 5));
}
