//! COCO masks and evaluation against pycocotools reference values
//! (tests/fixtures/coco_eval, made by tools/golden/make_coco_eval_fixtures.py).

use models::detection::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/coco_eval")
}

fn load(name: &str) -> Value {
    let path = fixtures().join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Maps `f` over the JSON array `v` (panics if `v` is not an array).
fn arr<'a, T>(v: &'a Value, f: impl FnMut(&'a Value) -> T) -> Vec<T> {
    v.as_array().unwrap().iter().map(f).collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    arr(v, |x| x.as_f64().unwrap())
}

fn u32s(v: &Value) -> Vec<u32> {
    arr(v, |x| x.as_u64().unwrap() as u32)
}

/// The `(h, w)` fields of a fixture case.
fn hw(case: &Value) -> (u32, u32) {
    (
        case["h"].as_u64().unwrap() as u32,
        case["w"].as_u64().unwrap() as u32,
    )
}

/// The `iscrowd` flags of a fixture case.
fn crowd(case: &Value) -> Vec<bool> {
    arr(&case["iscrowd"], |x| x.as_u64() == Some(1))
}

fn check_case(case: &str) {
    let expected = load(&format!("{case}_expected.json"));
    let evals = expected["evals"].as_array().unwrap();
    assert!(!evals.is_empty());
    for e in evals {
        let iou = match e["iou_type"].as_str().unwrap() {
            "bbox" => IouType::Bbox,
            _ => IouType::Segm,
        };
        let (gt, dt) = (e["gt"].as_str().unwrap(), e["dt"].as_str().unwrap());
        let ev = evaluate_files(&fixtures().join(gt), &fixtures().join(dt), iou).unwrap();
        let want = f64s(&e["stats"]);
        let got = ev.stats();
        for i in 0..12 {
            assert!(
                (got[i] - want[i]).abs() <= 1e-6,
                "{case} {dt} {iou:?} stat {i}: got {} want {}",
                got[i],
                want[i]
            );
        }
        assert_eq!(
            ev.summary(),
            e["summary"].as_str().unwrap(),
            "{case} {dt} {iou:?} summary"
        );
        for probe in e["ious"].as_array().unwrap() {
            let (img, cat) = (
                probe["image_id"].as_i64().unwrap(),
                probe["category_id"].as_i64().unwrap(),
            );
            let m = ev
                .ious(img, cat)
                .unwrap_or_else(|| panic!("{case}: no ious for ({img}, {cat})"));
            let rows = probe["ious"].as_array().unwrap();
            assert_eq!(
                m.values.len(),
                rows.iter()
                    .map(|r| r.as_array().unwrap().len())
                    .sum::<usize>()
            );
            for (d, row) in rows.iter().enumerate() {
                for (g, want) in f64s(row).into_iter().enumerate() {
                    let got = m.values[d * m.gts + g];
                    assert!(
                        (got - want).abs() <= 1e-12,
                        "{case} {iou:?} iou ({img},{cat}) [{d},{g}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn mixed_case_matches_pycocotools() {
    check_case("mixed");
}

#[test]
fn perfect_detections_match_pycocotools() {
    check_case("perfect");
    let ev = evaluate_files(
        &fixtures().join("perfect_gt.json"),
        &fixtures().join("perfect_dt.json"),
        IouType::Segm,
    )
    .unwrap();
    assert_eq!(ev.stats()[0], 1.0);
    assert_eq!(ev.stats()[5], -1.0, "no large objects: APl is -1");
}

#[test]
fn no_detections_match_pycocotools() {
    check_case("no_dets");
}

#[test]
fn default_params_equal_numpy_linspace() {
    let m = load("masks.json");
    let p = Params::default();
    assert_eq!(p.iou_thrs, f64s(&m["params"]["iouThrs"]));
    assert_eq!(p.rec_thrs, f64s(&m["params"]["recThrs"]));
}

#[test]
fn rle_round_trips_match_pycocotools() {
    let m = load("masks.json");
    for case in m["masks"].as_array().unwrap() {
        let (h, w) = hw(case);
        let counts = u32s(&case["counts"]);
        let string = case["string"].as_str().unwrap();
        let from_str = Rle::from_compressed(string, h, w).unwrap();
        assert_eq!(from_str.counts, counts, "decompressing {string}");
        let rle = Rle::from_counts(counts.clone(), h, w).unwrap();
        assert_eq!(rle.to_compressed(), string);
        assert_eq!(rle.area(), case["area"].as_u64().unwrap());
        assert_eq!(rle.to_bbox().to_vec(), f64s(&case["bbox"]));
        if let Some(mask) = case["mask"].as_array() {
            let mask: Vec<u8> = mask.iter().map(|x| x.as_u64().unwrap() as u8).collect();
            let enc = Rle::encode(&mask, h, w).unwrap();
            assert_eq!(enc, rle);
            assert_eq!(enc.decode(), mask);
        }
    }
}

#[test]
fn polygons_rasterise_like_pycocotools() {
    let m = load("masks.json");
    for case in m["polygons"].as_array().unwrap() {
        let (h, w) = hw(case);
        let polys: Vec<Vec<f64>> = arr(&case["polygons"], f64s);
        let strings: Vec<&str> = arr(&case["strings"], |s| s.as_str().unwrap());
        let parts: Vec<Rle> = polys
            .iter()
            .map(|p| Rle::from_polygon(p, h, w).unwrap())
            .collect();
        for (p, (r, s)) in parts.iter().zip(&strings).enumerate() {
            assert_eq!(r.to_compressed(), *s, "polygon {p} of {polys:?}");
        }
        let merged = Segmentation::Polygons(polys.clone()).to_rle(h, w).unwrap();
        assert_eq!(
            merged.to_compressed(),
            case["merged"].as_str().unwrap(),
            "{polys:?}"
        );
        assert_eq!(merged.area(), case["area"].as_u64().unwrap());
        assert_eq!(merged.to_bbox().to_vec(), f64s(&case["bbox"]));
    }
}

#[test]
fn mask_and_box_ious_match_pycocotools() {
    let m = load("masks.json");
    for case in m["ious"].as_array().unwrap() {
        let (h, w) = hw(case);
        let rles = |k: &str| -> Vec<Rle> {
            arr(&case[k], |s| {
                Rle::from_compressed(s.as_str().unwrap(), h, w).unwrap()
            })
        };
        let got = rle_iou(&rles("dt"), &rles("gt"), &crowd(case));
        let want: Vec<f64> = arr(&case["iou"], f64s).concat();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-15, "mask iou {got:?} vs {want:?}");
        }
    }
    for case in m["bbox_ious"].as_array().unwrap() {
        let boxes = |k: &str| -> Vec<[f64; 4]> { arr(&case[k], |b| f64s(b).try_into().unwrap()) };
        let got = bbox_iou(&boxes("dt"), &boxes("gt"), &crowd(case));
        let want: Vec<f64> = arr(&case["iou"], f64s).concat();
        assert_eq!(got, want);
    }
}

#[test]
fn mask_sizes_must_agree() {
    let a = Rle::empty(4, 5);
    let full = Rle::from_counts(vec![0, 20], 4, 5).unwrap();
    assert!(Rle::merge(&[a, Rle::empty(5, 4)]).is_err());
    let other = Rle::from_counts(vec![0, 20], 5, 4).unwrap();
    assert_eq!(
        rle_iou(std::slice::from_ref(&full), &[other], &[false]),
        vec![-1.0]
    );
    assert_eq!(
        rle_iou(
            std::slice::from_ref(&full),
            std::slice::from_ref(&full),
            &[false]
        ),
        vec![1.0]
    );
    assert!(
        Rle::from_counts(vec![3, 4], 4, 5).is_err(),
        "counts must add up to h*w"
    );
    assert!(
        Rle::from_compressed("0~", 1, 1).is_err(),
        "character outside 48..=111"
    );
    assert!(Rle::from_compressed("P", 4, 8).is_err(), "truncated group");
}

fn gt_json() -> Value {
    json!({
        "images": [{"id": 1, "height": 10, "width": 12}, {"id": 2, "height": 8, "width": 8}],
        "categories": [{"id": 3, "name": "x"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0,
             "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 1,
             "segmentation": {"size": [8, 8], "counts": [0, 2, 6, 2, 54]}}
        ]
    })
}

fn gt_error(edit: impl FnOnce(&mut Value)) -> String {
    let mut v = gt_json();
    edit(&mut v);
    CocoGt::from_value(&v, "gt.json").unwrap_err().to_string()
}

#[test]
fn malformed_ground_truth_errors_name_the_field() {
    assert!(CocoGt::from_value(&gt_json(), "gt.json").is_ok());
    let e = gt_error(|v| {
        v["annotations"][1]
            .as_object_mut()
            .unwrap()
            .remove("area")
            .map(|_| ())
            .unwrap()
    });
    assert!(
        e.contains("gt.json")
            && e.contains("annotations[1]")
            && e.contains("\"area\"")
            && e.contains("missing"),
        "{e}"
    );
    let e = gt_error(|v| v["annotations"][0]["bbox"] = json!("1,1,4,4"));
    assert!(
        e.contains("annotations[0]") && e.contains("\"bbox\""),
        "{e}"
    );
    let e = gt_error(|v| v["annotations"][0]["bbox"] = json!([1, 1, -4, 4]));
    assert!(
        e.contains("annotations[0]") && e.contains("negative"),
        "{e}"
    );
    let e = gt_error(|v| v["images"][1]["height"] = json!(-8));
    assert!(e.contains("images[1]") && e.contains("\"height\""), "{e}");
    let e = gt_error(|v| v["annotations"][1]["image_id"] = json!(7));
    assert!(
        e.contains("annotations[1]") && e.contains("\"image_id\"") && e.contains('7'),
        "{e}"
    );
    let e = gt_error(|v| v["annotations"][1]["segmentation"]["counts"] = json!([0, 2, 6]));
    assert!(
        e.contains("annotations[1]") && e.contains("\"segmentation\"") && e.contains("64"),
        "{e}"
    );
    let e = gt_error(|v| v["annotations"][1]["id"] = json!(1));
    assert!(e.contains("duplicate annotation id"), "{e}");
    let e = gt_error(|v| v["categories"] = json!({}));
    assert!(e.contains("\"categories\""), "{e}");
}

#[test]
fn malformed_results_error_names_the_entry() {
    let gt = CocoGt::from_value(&gt_json(), "gt.json").unwrap();
    let ok = json!([{"image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "score": 0.5}]);
    let dets = gt.results_from_value(&ok, "dt.json").unwrap();
    assert_eq!(dets[0].area, 16.0);
    assert_eq!(dets[0].id, 1);
    let e = gt
        .results_from_value(&json!([ok[0], ok[0], {"image_id": 9, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}]), "dt.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dt.json")
            && e.contains("results[2]")
            && e.contains("\"image_id\"")
            && e.contains('9'),
        "{e}"
    );
    let e = gt.results_from_value(
        &json!([ok[0], {"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}]),
        "dt.json",
    );
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("results[1]") && e.contains("\"score\"") && e.contains("missing"),
        "{e}"
    );
    let e = gt.results_from_value(
        &json!([ok[0], {"image_id": 1, "category_id": 3, "score": 0.1}]),
        "dt.json",
    );
    assert!(e.unwrap_err().to_string().contains("\"bbox\""));
    let e = gt
        .results_from_value(&json!({"image_id": 1}), "dt.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("list"), "{e}");
    let missing = evaluate_files(
        Path::new("/nonexistent/gt.json"),
        Path::new("dt.json"),
        IouType::Bbox,
    );
    assert!(missing
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/gt.json"));
}

#[test]
fn results_completed_like_load_res() {
    let gt = CocoGt::from_value(&gt_json(), "gt.json").unwrap();
    // Masks only: area from the mask, box from the mask.
    let seg = Rle::from_polygon(&[1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0], 10, 12).unwrap();
    let dets = gt
        .results_from_value(
            &json!([{"image_id": 1, "category_id": 3, "score": 0.7,
                     "segmentation": {"size": [10, 12], "counts": seg.to_compressed()}}]),
            "dt.json",
        )
        .unwrap();
    assert_eq!(dets[0].area, seg.area() as f64);
    assert_eq!(dets[0].bbox, seg.to_bbox());
    // Boxes only: the segm evaluation uses the box's polygon, equal to the gt's.
    let dets = gt
        .results_from_value(
            &json!([{"image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "score": 0.7}]),
            "dt.json",
        )
        .unwrap();
    let ev = CocoEval::evaluate(&gt, &dets, IouType::Segm).unwrap();
    assert_eq!(ev.ious(1, 3).unwrap().values, vec![1.0]);
    // One true positive: precision is 1 / (1 + eps), as numpy computes it.
    assert!((ev.stats()[1] - 1.0).abs() < 1e-12, "{}", ev.stats()[1]);
}

/// 5000 images x 100 detections of 10 categories: the scale of COCO val.
/// Exact boxes outscore 90 far-away false positives per image, so AP is 1.
#[test]
fn coco_val_scale_evaluation() {
    let (n_img, cats) = (5000i64, 10i64);
    let images: Vec<Value> = (1..=n_img)
        .map(|i| json!({"id": i, "height": 480, "width": 640}))
        .collect();
    let categories: Vec<Value> = (1..=cats)
        .map(|c| json!({"id": c, "name": format!("c{c}")}))
        .collect();
    let mut anns = Vec::new();
    let mut dets = Vec::new();
    for i in 1..=n_img {
        for c in 1..=cats {
            let b = [(c * 50) as f64, (i % 100) as f64, 20.0 + c as f64, 30.0];
            anns.push(json!({"id": anns.len() + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}));
            dets.push(json!({"image_id": i, "category_id": c, "bbox": b, "score": 0.9}));
            for j in 0..9 {
                let fp = [600.0 - j as f64, 400.0, 10.0, 10.0];
                dets.push(json!({"image_id": i, "category_id": c, "bbox": fp, "score": 0.1 + 0.01 * j as f64}));
            }
        }
    }
    let gt = CocoGt::from_value(
        &json!({"images": images, "categories": categories, "annotations": anns}),
        "gen",
    )
    .unwrap();
    let dets = gt.results_from_value(&Value::Array(dets), "gen").unwrap();
    assert_eq!(dets.len(), (n_img * cats * 10) as usize);
    let t = std::time::Instant::now();
    let ev = CocoEval::evaluate(&gt, &dets, IouType::Bbox).unwrap();
    eprintln!(
        "evaluated {} detections on {n_img} images in {:.2?}",
        dets.len(),
        t.elapsed()
    );
    let s = ev.stats();
    assert_eq!(s[0], 1.0);
    assert_eq!(s[8], 1.0);
    assert_eq!(s[6], 1.0, "one object per (image, category): AR@1 is 1");
}
