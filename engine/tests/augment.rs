//! The augment op (`engine::ops::augment::crop_resize_normalize`) against
//! torchvision's training pipeline with the random choices fixed
//! (tools/golden/make_augment_fixtures.py): ToTensor, resized_crop without
//! antialiasing, pad-and-crop, hflip, Normalize, in float32. Bounds: torch
//! computes the bilinear scale in f32 (we in f64, as models' transforms
//! always did), divides by 255 and by std where we multiply by f32
//! reciprocals: a few f32 ulps of values within +-3, so atol 1e-5 and rtol
//! 1e-5, fixed before the first run.

use engine::ops::augment::{crop_resize_normalize, Crop, CropBatch};
use engine::{DType, Tensor};
use testutil::{assert_close, Golden};

fn check(name: &str) {
    let fx = Golden::golden(name);
    let p = fx.meta("params");
    let floats = |k: &str| -> Vec<f32> {
        p[k].as_array()
            .expect(k)
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    let rows = fx.get("in.crops").to_vec::<i64>().unwrap();
    let crops: Vec<Crop> = rows
        .chunks(10)
        .map(|r| Crop {
            offset: r[0] as usize,
            height: r[1] as usize,
            width: r[2] as usize,
            top: r[3] as usize,
            left: r[4] as usize,
            crop_h: r[5] as usize,
            crop_w: r[6] as usize,
            shift: (r[7] as isize, r[8] as isize),
            mirror: r[9] != 0,
        })
        .collect();
    let b = CropBatch {
        channels: p["channels"].as_u64().unwrap() as usize,
        size: p["size"].as_u64().unwrap() as usize,
        crops,
        mean: floats("mean"),
        std: floats("std"),
        dtype: DType::F32,
    };
    let got = crop_resize_normalize(fx.get("in.pixels"), &b).unwrap();
    let want = fx.get("out.images");
    assert_eq!(got.dims(), want.dims(), "{name}");
    let (g, w) = (got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
    assert_close(name, &g, &w, 1e-5, 1e-5);
}

#[test]
fn crop_resize_normalize_matches_torchvision() {
    check("augment_rgb");
    check("augment_gray");
}

#[test]
fn other_output_dtypes_round_the_f32_result_once() {
    let pixels = Tensor::from_vec((0..=255u8).cycle().take(3 * 10 * 12).collect(), &[360]).unwrap();
    let crop = Crop {
        offset: 0,
        height: 10,
        width: 12,
        top: 1,
        left: 2,
        crop_h: 7,
        crop_w: 9,
        shift: (1, -2),
        mirror: true,
    };
    let batch = |dtype| CropBatch {
        channels: 3,
        size: 8,
        crops: vec![crop, crop],
        mean: vec![0.5, 0.4, 0.3],
        std: vec![0.25, 0.2, 0.3],
        dtype,
    };
    let f32s = crop_resize_normalize(&pixels, &batch(DType::F32)).unwrap();
    for dt in [DType::BF16, DType::F16] {
        let low = crop_resize_normalize(&pixels, &batch(dt)).unwrap();
        assert_eq!(low.dtype(), dt);
        let rounded = f32s.to_dtype(dt).unwrap();
        assert_eq!(low.to_vec_f64().unwrap(), rounded.to_vec_f64().unwrap());
    }
}
