//! The mask paste op (`engine::ops::detection::paste_masks`) against
//! torchvision's `paste_masks_in_image` (tools/golden/make_paste_masks_fixtures.py):
//! 28x28 masks with padding 1, 14x20 with padding 2, 7x7 with padding 0,
//! boxes partly outside the image on every side, tiny and larger than the
//! image. The op takes the integer boxes torchvision's `expand_boxes(..)
//! .to(int64)` gives (stored per precision); f64 against torchvision's
//! float64 run, f32 against its float32 run, per element |a - b| <= atol.

use engine::checkpoint::load;
use engine::ops::detection::paste_masks;
use engine::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The fixture's tensors and its (img_hw, padding).
fn fixture(name: &str) -> (BTreeMap<String, Tensor>, [usize; 2], usize) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/golden")
        .join(format!("{name}.safetensors"));
    let ck = load(&path).unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    let params: serde_json::Value =
        serde_json::from_str(&ck.metadata["params"]).expect("params JSON");
    let hw = &params["img_hw"];
    let img = [0, 1].map(|i| hw[i].as_u64().unwrap() as usize);
    let padding = params["padding"].as_u64().unwrap() as usize;
    (ck.tensors, img, padding)
}

/// max |got - want| over all elements; fails on a NaN/Inf or a shape
/// mismatch.
fn max_abs(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims());
    let (g, w) = (got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
    g.iter().zip(&w).fold(0.0, |m, (a, b)| {
        assert!(a.is_finite(), "non-finite output {a}");
        m.max((a - b).abs())
    })
}

#[test]
fn paste_masks_matches_torchvision() {
    for name in [
        "detection_paste_masks_a",
        "detection_paste_masks_b",
        "detection_paste_masks_c",
    ] {
        let (fx, img, padding) = fixture(name);
        let masks = &fx["in.masks"];
        let k = masks.dims()[0];
        // (dtype, integer boxes, reference, bound): the f64 reference is
        // torch's float64 resize, whose weights agree with ours to f64
        // rounding; torch's float32 resize computes the same f32 weights and
        // blend, so its result is within a few f32 ulps of ours
        for (dtype, boxes, want, atol) in [
            (DType::F64, "int_boxes", "out", 1e-12),
            (DType::F32, "int_boxes_f32", "out_f32", 1e-6),
        ] {
            let b = &fx[boxes];
            assert_eq!((b.dtype(), b.dims()), (DType::I64, &[k, 4][..]));
            let got = paste_masks(&masks.to_dtype(dtype).unwrap(), b, img, padding).unwrap();
            assert_eq!(got.dtype(), dtype);
            let want = &fx[want];
            // every box puts some of its mask into the image
            let plane = img[0] * img[1];
            for (j, p) in want.to_vec_f64().unwrap().chunks(plane).enumerate() {
                assert!(p.iter().any(|&v| v > 0.0), "{name}: box {j} pastes nothing");
            }
            let e = max_abs(&got, want);
            eprintln!("{name} {dtype}: max abs err {e:.2e}");
            assert!(e <= atol, "{name} {dtype}: max abs err {e:e} > {atol:e}");
        }
    }
}
