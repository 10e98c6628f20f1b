//! The detection ops against torchvision (tools/golden/make_detection_fixtures.py):
//! roi_align forward and input gradient (f64 to 1e-6 relative of the
//! float64 reference, f32 to 1e-5), multiscale_roi_align (torchvision's
//! MultiScaleRoIAlign, tools/golden/make_multiscale_roi_align_fixtures.py:
//! output, every level's gradient, the same bounds), and the exact kept
//! indices of nms and batched_nms, and box_iou.

use engine::ops::detection::{multiscale_roi_align, LevelMapper};
use engine::ops::{batched_nms, box_iou, nms};
use engine::{DType, Tensor};
use slmlp_tests::{rel_err, run_with_grads, Fixture};

const TOL_F64: f64 = 1e-6;
const TOL_F32: f64 = 1e-5;

/// The LevelMapper of a multiscale_roi_align fixture.
fn fixture_mapper(fx: &Fixture) -> LevelMapper {
    let p = &fx.params;
    LevelMapper {
        canonical_scale: fx.param_f64("canonical_scale"),
        canonical_level: fx.param_f64("canonical_level"),
        ..LevelMapper::new(p["k_min"].as_i64().unwrap(), p["k_max"].as_i64().unwrap())
    }
}

/// multiscale_roi_align on a fixture's inputs cast to `dtype`; returns
/// (out, the gradient of every level).
fn run_multiscale(fx: &Fixture, dtype: DType) -> (Tensor, Vec<Tensor>) {
    let cast = |k: &str| fx.get(k).to_dtype(dtype).unwrap();
    let feats: Vec<Tensor> = (0..3).map(|l| cast(&format!("in.features.{l}"))).collect();
    // (batch index, x1, y1, x2, y2) rows, image 0's first, as torchvision's
    // _convert_to_roi_format
    let mut rows = Vec::new();
    for b in 0..2 {
        for r in fx
            .get(&format!("in.boxes.{b}"))
            .to_vec_f64()
            .unwrap()
            .chunks(4)
        {
            rows.push(b as f64);
            rows.extend_from_slice(r);
        }
    }
    let k = rows.len() / 5;
    let boxes = Tensor::from_vec(rows, &[k, 5])
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let p = &fx.params;
    let scales: Vec<f64> = p["scales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mapper = fixture_mapper(fx);
    let sr = p["sampling_ratio"].as_i64().unwrap();
    let out_size = fx.param_pair("output_size");
    let (out, leaves) = run_with_grads(&feats, &cast("grad_out"), |x| {
        multiscale_roi_align(x, &boxes, &scales, out_size, sr, false, &mapper)
    })
    .unwrap_or_else(|e| panic!("{}: {e}", fx.name));
    assert_eq!(out.dtype(), dtype);
    let grads = leaves
        .iter()
        .map(|l| l.grad().expect("every level gets a gradient"))
        .collect();
    (out, grads)
}

#[test]
fn multiscale_roi_align_matches_torchvision() {
    let (mut f64_err, mut vs_f64, mut vs_f32) = (0f64, 0f64, 0f64);
    for case in [
        "detection_multiscale_roi_align_a",
        "detection_multiscale_roi_align_b",
    ] {
        let fx = Fixture::load(case);
        let coords: Vec<f64> = (0..2)
            .flat_map(|b| fx.get(&format!("in.boxes.{b}")).to_vec_f64().unwrap())
            .collect();
        let levels: Vec<i64> = fixture_mapper(&fx)
            .levels::<f64>(&coords)
            .unwrap()
            .into_iter()
            .map(|l| l as i64)
            .collect();
        assert_eq!(
            levels,
            fx.get("levels").to_vec::<i64>().unwrap(),
            "{case}: levels"
        );
        let (out, grads) = run_multiscale(&fx, DType::F64);
        check(
            &format!("{case}: out"),
            &out,
            fx.get("out"),
            TOL_F64,
            &mut f64_err,
        );
        for (l, g) in grads.iter().enumerate() {
            check(
                &format!("{case}: grad.{l}"),
                g,
                fx.get(&format!("grad.{l}")),
                TOL_F64,
                &mut f64_err,
            );
        }
        let (out, grads) = run_multiscale(&fx, DType::F32);
        check(
            &format!("{case}: f32 out vs f64"),
            &out,
            fx.get("out"),
            TOL_F32,
            &mut vs_f64,
        );
        // same operation order as torchvision's float32 kernel
        check(
            &format!("{case}: out vs torch f32"),
            &out,
            fx.get("out_f32"),
            1e-6,
            &mut vs_f32,
        );
        for (l, g) in grads.iter().enumerate() {
            let key = format!("grad_f32.{l}");
            check(
                &format!("{case}: {key}"),
                g,
                fx.get(&key),
                1e-6,
                &mut vs_f32,
            );
        }
    }
    eprintln!(
        "multiscale_roi_align: worst relative error f64 {f64_err:.3e}, f32 {vs_f64:.3e} vs the \
         f64 reference and {vs_f32:.3e} vs torch f32"
    );
}

/// Every roi_align fixture: aligned x sampling_ratio x spatial scale.
fn roi_cases() -> Vec<String> {
    let mut v = Vec::new();
    for a in [0, 1] {
        for sr in ["m1", "1", "2", "4"] {
            for sc in [1, 4, 16] {
                v.push(format!("detection_roi_align_a{a}_sr{sr}_sc{sc}"));
            }
        }
    }
    v
}

/// roi_align on the fixture's inputs cast to `dtype`, with
/// `sampling_ratio` overridden when given; returns (out, grad.x).
fn run_roi(fx: &Fixture, dtype: DType, sampling_ratio: Option<i64>) -> (Tensor, Tensor) {
    let cast = |k: &str| fx.get(k).to_dtype(dtype).unwrap();
    let out_size = fx.param_pair("output_size");
    let scale = fx.param_f64("spatial_scale");
    let sr = sampling_ratio.unwrap_or(fx.params["sampling_ratio"].as_i64().unwrap());
    let aligned = fx.params["aligned"].as_bool().unwrap();
    let boxes = cast("in.boxes");
    let (out, leaves) = run_with_grads(&[cast("in.x")], &cast("grad_out"), |x| {
        x[0].roi_align(&boxes, out_size, scale, sr, aligned)
    })
    .unwrap_or_else(|e| panic!("{}: {e}", fx.name));
    assert_eq!(out.dtype(), dtype);
    let g = leaves[0]
        .grad()
        .expect("roi_align gives the input a gradient");
    (out, g)
}

fn check(what: &str, actual: &Tensor, expected: &Tensor, tol: f64, worst: &mut f64) {
    let e = rel_err(actual, expected);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
    *worst = worst.max(e);
}

#[test]
fn roi_align_f64_matches_torchvision() {
    let mut worst = 0f64;
    for case in roi_cases() {
        let fx = Fixture::load(&case);
        let (out, g) = run_roi(&fx, DType::F64, None);
        check(
            &format!("{case}: out"),
            &out,
            fx.get("out"),
            TOL_F64,
            &mut worst,
        );
        check(
            &format!("{case}: grad.x"),
            &g,
            fx.get("grad.x"),
            TOL_F64,
            &mut worst,
        );
        if case.contains("_srm1_") {
            // any sampling_ratio <= 0 is the adaptive rule
            let (out0, g0) = run_roi(&fx, DType::F64, Some(0));
            check(
                &format!("{case} (sr 0): out"),
                &out0,
                fx.get("out"),
                TOL_F64,
                &mut worst,
            );
            check(
                &format!("{case} (sr 0): grad.x"),
                &g0,
                fx.get("grad.x"),
                TOL_F64,
                &mut worst,
            );
        }
    }
    eprintln!("roi_align f64: worst relative error {worst:.3e}");
}

#[test]
fn roi_align_f32_matches_torchvision() {
    let (mut vs_f64, mut vs_f32) = (0f64, 0f64);
    for case in roi_cases() {
        let fx = Fixture::load(&case);
        let (out, g) = run_roi(&fx, DType::F32, None);
        check(
            &format!("{case}: out vs f64"),
            &out,
            fx.get("out"),
            TOL_F32,
            &mut vs_f64,
        );
        check(
            &format!("{case}: grad.x vs f64"),
            &g,
            fx.get("grad.x"),
            TOL_F32,
            &mut vs_f64,
        );
        // same operation order as torchvision's float32 kernel
        check(
            &format!("{case}: out vs torch f32"),
            &out,
            fx.get("out_f32"),
            1e-6,
            &mut vs_f32,
        );
        check(
            &format!("{case}: grad.x vs torch f32"),
            &g,
            fx.get("grad_f32.x"),
            1e-6,
            &mut vs_f32,
        );
    }
    eprintln!("roi_align f32: worst relative error {vs_f64:.3e} vs the f64 reference, {vs_f32:.3e} vs torch f32");
}

/// The `keep.<i>` index lists of a fixture, one per threshold.
fn expected_keeps(fx: &Fixture) -> Vec<(f64, Vec<usize>)> {
    let ts = fx.params["thresholds"].as_array().expect("thresholds");
    ts.iter()
        .enumerate()
        .map(|(i, t)| {
            let keep = fx.get(&format!("keep.{i}")).to_vec::<i64>().unwrap();
            (
                t.as_f64().unwrap(),
                keep.into_iter().map(|v| v as usize).collect(),
            )
        })
        .collect()
}

#[test]
fn nms_matches_torchvision() {
    for case in [
        "detection_nms_f64",
        "detection_nms_f32",
        "detection_nms_nan",
    ] {
        let fx = Fixture::load(case);
        let (b, s) = (fx.get("in.boxes"), fx.get("in.scores"));
        let mut suppressed_some = false;
        for (t, expected) in expected_keeps(&fx) {
            let keep = nms(b, s, t).unwrap();
            assert_eq!(keep, expected, "{case}: threshold {t}");
            suppressed_some |= keep.len() < b.dims()[0];
        }
        assert!(
            suppressed_some,
            "{case}: the fixture should exercise suppression"
        );
    }
}

#[test]
fn batched_nms_matches_torchvision() {
    for case in [
        "detection_batched_nms_f64",
        "detection_batched_nms_f32",
        "detection_batched_nms_vanilla",
    ] {
        let fx = Fixture::load(case);
        let (b, s) = (fx.get("in.boxes"), fx.get("in.scores"));
        let idxs = fx.get("in.idxs").to_vec::<i64>().unwrap();
        for (t, expected) in expected_keeps(&fx) {
            let keep = batched_nms(b, s, &idxs, t).unwrap();
            assert_eq!(keep, expected, "{case}: threshold {t}");
        }
    }
}

#[test]
fn box_iou_matches_torchvision() {
    let fx = Fixture::load("detection_box_iou");
    let (a, b) = (fx.get("in.a"), fx.get("in.b"));
    let out = box_iou(a, b).unwrap();
    let e = rel_err(&out, fx.get("out"));
    assert!(e <= TOL_F64, "box_iou f64: relative error {e:.3e}");
    let out32 = box_iou(
        &a.to_dtype(DType::F32).unwrap(),
        &b.to_dtype(DType::F32).unwrap(),
    )
    .unwrap();
    assert_eq!(out32.dtype(), DType::F32);
    let e32 = rel_err(&out32, fx.get("out"));
    assert!(e32 <= TOL_F32, "box_iou f32: relative error {e32:.3e}");
    eprintln!("box_iou: relative error {e:.3e} (f64), {e32:.3e} (f32)");
}
