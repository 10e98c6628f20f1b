//! The evaluation resize against torchvision's `Resize(antialias=True)`
//! (tests/fixtures/resize, made by tools/golden/make_resize_fixtures.py):
//! within 1e-3 of its float path and within 1/255 of its uint8 and PIL
//! paths, which round to u8.

use models::data::{resize_antialiased, Image};
use serde_json::Value;
use std::path::Path;

fn values(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn resize_matches_torchvision_antialiased() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/resize/resize.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let n = |k: &str| case[k].as_u64().unwrap() as usize;
        let img = Image {
            channels: n("channels"),
            height: n("height"),
            width: n("width"),
            pixels: values(&case["pixels"]).iter().map(|&v| v as u8).collect(),
        };
        let ours: Vec<f64> = resize_antialiased(&img, n("out_height"), n("out_width"))
            .iter()
            .map(|&v| v as f64 * 255.0)
            .collect();
        for (reference, atol) in [("torch_float", 1e-3), ("torch_u8", 1.0), ("pil", 1.0)] {
            let want = values(&case[reference]);
            assert_eq!(ours.len(), want.len());
            let worst = ours
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= atol + 1e-6,
                "{} vs {reference}: max |diff| {worst} (of 255) > {atol}",
                case["name"]
            );
        }
    }
}
