//! The augment op's GPU parity cases: random u8 images of several sizes
//! packed in one buffer (gray and RGB), crops that downscale, upscale and
//! copy (a region of the output's size), shifted and mirrored, in f32,
//! bf16 and f16 output.
//!
//! Threshold 0: the GPU computes the taps in f64 and the blend in f32 with
//! every operation rounded as the CPU's (no fused multiply-adds), and f16
//! / bf16 round the same f32 once, so every element must be identical.

use super::{crop_resize_normalize, Crop, CropBatch};
use crate::parity::{Case, DTYPES};
use crate::{Device, Result, Rng, Tensor};

/// `n` images of random sizes in 5..=40 packed back to back, and a random
/// crop of each (shifted within `pad`, mirrored at random; every third
/// crop is exactly `size x size` when the image is large enough).
fn batch(rng: &mut Rng, n: usize, c: usize, size: usize, pad: usize) -> (Vec<u8>, Vec<Crop>) {
    let (mut pixels, mut crops) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (h, w) = (5 + rng.below(36), 5 + rng.below(36));
        let offset = pixels.len();
        pixels.extend((0..h * w * c).map(|_| rng.below(256) as u8));
        let (crop_h, crop_w) = if i % 3 == 0 && h >= size && w >= size {
            (size, size)
        } else {
            (1 + rng.below(h), 1 + rng.below(w))
        };
        let shift = |rng: &mut Rng| rng.below(2 * pad + 1) as isize - pad as isize;
        crops.push(Crop {
            offset,
            height: h,
            width: w,
            top: rng.below(h - crop_h + 1),
            left: rng.below(w - crop_w + 1),
            crop_h,
            crop_w,
            shift: (shift(rng), shift(rng)),
            mirror: rng.below(2) == 1,
        });
    }
    (pixels, crops)
}

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // (images, channels, output side, shift range)
    let shapes = [(7, 3, 16, 0), (5, 1, 9, 4), (3, 3, 33, 2)];
    for dtype in DTYPES {
        for (n, c, size, pad) in shapes {
            let (pixels, crops) = batch(rng, n, c, size, pad);
            let mean: Vec<f32> = (0..c).map(|i| 0.4 + 0.05 * i as f32).collect();
            let std: Vec<f32> = (0..c).map(|i| 0.2 + 0.01 * i as f32).collect();
            let b = CropBatch {
                channels: c,
                size,
                crops,
                mean,
                std,
                dtype,
            };
            let run = move |dev: Device| -> Result<Vec<(String, Tensor)>> {
                let px = Tensor::from_slice(&pixels, &[pixels.len()])?.to_device(dev)?;
                Ok(vec![("images".into(), crop_resize_normalize(&px, &b)?)])
            };
            out.push(Case {
                op: "crop_resize_normalize",
                dtype,
                label: format!("{n} images C{c} -> {size}x{size} shift<={pad}"),
                threshold: Some(0.0),
                run: Box::new(run),
            });
        }
    }
}
