use super::*;

fn crop(height: usize, width: usize) -> Crop {
    Crop {
        offset: 0,
        height,
        width,
        top: 0,
        left: 0,
        crop_h: height,
        crop_w: width,
        shift: (0, 0),
        mirror: false,
    }
}

fn batch(c: usize, size: usize, crops: Vec<Crop>) -> CropBatch {
    CropBatch {
        channels: c,
        size,
        crops,
        mean: vec![0.0; c],
        std: vec![1.0; c],
        dtype: DType::F32,
    }
}

fn pixels(n: usize) -> Tensor {
    Tensor::from_vec((0..n).map(|i| (i * 37 % 256) as u8).collect(), &[n]).unwrap()
}

fn run(px: &Tensor, b: &CropBatch) -> Vec<f32> {
    crop_resize_normalize(px, b)
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn a_region_of_the_output_size_is_copied_exactly_and_mirrored_exactly() {
    // a 2-channel 6x7 image, its 4x4 region at (1, 2), mean 0 std 1
    let px = pixels(6 * 7 * 2);
    let raw = px.to_vec::<u8>().unwrap();
    let mut k = crop(6, 7);
    (k.top, k.left, k.crop_h, k.crop_w) = (1, 2, 4, 4);
    let plain = run(&px, &batch(2, 4, vec![k]));
    let mirrored = run(&px, &batch(2, 4, vec![Crop { mirror: true, ..k }]));
    for ch in 0..2 {
        for y in 0..4 {
            for x in 0..4 {
                let want = raw[((1 + y) * 7 + 2 + x) * 2 + ch] as f32 * INV_255;
                assert_eq!(plain[(ch * 4 + y) * 4 + x], want);
                assert_eq!(mirrored[(ch * 4 + y) * 4 + 3 - x], want);
            }
        }
    }
}

#[test]
fn shifted_pixels_read_zero_outside_and_are_normalised() {
    let px = pixels(5 * 5);
    let raw = px.to_vec::<u8>().unwrap();
    let b = CropBatch {
        mean: vec![0.5],
        std: vec![0.25],
        ..batch(
            1,
            5,
            vec![Crop {
                shift: (2, -1),
                ..crop(5, 5)
            }],
        )
    };
    let out = run(&px, &b);
    for y in 0..5 {
        for x in 0..5 {
            let (sy, sx) = (y as isize + 2, x as isize - 1);
            let v = if (0..5).contains(&sy) && (0..5).contains(&sx) {
                raw[sy as usize * 5 + sx as usize] as f32 * INV_255
            } else {
                0.0
            };
            assert_eq!(out[y * 5 + x], (v - 0.5) * 4.0, "({y}, {x})");
        }
    }
}

#[test]
fn upscaling_blends_neighbours_with_half_pixel_centres() {
    // 1x2 image [0, 255] to 2x4: columns sample 0, 0.25, 0.75, 1 of the way
    let px = Tensor::from_vec(vec![0u8, 255], &[2]).unwrap();
    let out = run(&px, &batch(1, 4, vec![crop(1, 2)]));
    let row = [0.0f32, 0.25, 0.75, 1.0];
    for y in 0..4 {
        for x in 0..4 {
            assert!((out[y * 4 + x] - row[x]).abs() < 1e-6, "{out:?}");
        }
    }
}

#[test]
fn images_are_read_at_their_offsets() {
    // two 2x2 gray images; the second, at byte 4, resized to 2x2, is itself
    let px = pixels(8);
    let raw = px.to_vec::<u8>().unwrap();
    let out = run(
        &px,
        &batch(
            1,
            2,
            vec![
                crop(2, 2),
                Crop {
                    offset: 4,
                    ..crop(2, 2)
                },
            ],
        ),
    );
    let want: Vec<f32> = raw.iter().map(|&p| p as f32 * INV_255).collect();
    assert_eq!(out, want);
}

#[test]
fn bad_batches_are_errors() {
    let px = pixels(100);
    let ok = batch(1, 4, vec![crop(10, 10)]);
    assert!(crop_resize_normalize(&px, &ok).is_ok());
    let cases: Vec<(CropBatch, &str)> = vec![
        (batch(1, 4, vec![crop(10, 11)]), "does not fit"),
        (
            batch(
                1,
                4,
                vec![Crop {
                    offset: 1,
                    ..crop(10, 10)
                }],
            ),
            "does not fit",
        ),
        (
            batch(
                1,
                4,
                vec![Crop {
                    top: 3,
                    crop_h: 8,
                    ..crop(10, 10)
                }],
            ),
            "outside",
        ),
        (
            batch(
                1,
                4,
                vec![Crop {
                    crop_w: 0,
                    ..crop(10, 10)
                }],
            ),
            "empty",
        ),
        (
            batch(
                1,
                4,
                vec![Crop {
                    shift: (0, 5),
                    ..crop(10, 10)
                }],
            ),
            "shift",
        ),
        (batch(1, 0, vec![crop(10, 10)]), "output size"),
        (batch(1, MAX_SIZE + 1, vec![crop(10, 10)]), "output size"),
        (batch(0, 4, vec![]), "channels"),
        (
            CropBatch {
                std: vec![0.0],
                ..ok.clone()
            },
            "std",
        ),
        (
            CropBatch {
                mean: vec![f32::NAN],
                ..ok.clone()
            },
            "mean",
        ),
        (
            CropBatch {
                mean: vec![0.0, 0.0],
                ..ok.clone()
            },
            "means",
        ),
        (
            CropBatch {
                dtype: DType::I64,
                ..ok.clone()
            },
            "f32, f16 or bf16",
        ),
        (
            batch(
                1,
                4,
                vec![Crop {
                    height: usize::MAX,
                    ..crop(10, 10)
                }],
            ),
            "does not fit",
        ),
    ];
    for (b, want) in cases {
        let e = crop_resize_normalize(&px, &b).unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} should mention {want:?}");
    }
    let f = Tensor::zeros(&[100], DType::F32);
    assert!(crop_resize_normalize(&f, &ok).is_err());
    let two_d = px.reshape(&[10, 10]).unwrap();
    assert!(crop_resize_normalize(&two_d, &ok).is_err());
}
