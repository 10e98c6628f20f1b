//! Per-sample preprocessing: geometric augmentation, resampling to a fixed
//! square size, and per-channel normalisation into CHW f32.
//!
//! Resampling is bilinear with half-pixel centres (PyTorch's
//! `interpolate(mode="bilinear", align_corners=False, antialias=False)`):
//! output pixel `o` samples source coordinate `(o + 0.5) * in/out - 0.5`,
//! clamped to the image. There is no antialiasing there, so strong
//! downscaling aliases; the evaluation resize (`Augment::ResizeCenterCrop`)
//! is antialiased as torchvision's `Resize` (`resize_antialiased`). Values
//! stay in f32 instead of being rounded back to u8 between steps. Random
//! choices use the caller's `Rng` in a fixed order, so one seed gives one
//! output. `Transform::plan` draws them; the pixel work of every
//! augmentation but the centre crop is then `engine::ops::augment`'s op, on
//! the host here or on the training device (the loader's device mode), with
//! the same result.

use super::Image;
use engine::ops::augment::{crop_resize_into, Crop};
use engine::{Error, Result, Rng};

/// Largest output side (and `Resize` target) a transform accepts: 16x
/// ImageNet's 256, so that a typo in a size cannot ask for gigabytes.
pub const MAX_IMAGE_SIZE: usize = 4096;
/// Largest intermediate image (pixels) the resize before a centre crop may
/// produce: 16 Mpx, 192 MiB of f32 RGB. An image whose aspect ratio would
/// exceed it (a 1x30000 strip scaled to a shorter side of 256) is an error,
/// which the loader reports as an unreadable sample and skips.
const MAX_RESIZED_PIXELS: usize = 1 << 24;

/// ImageNet channel statistics (RGB, on [0, 1] values), as torchvision uses.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Clone, Debug, PartialEq)]
pub enum Augment {
    /// Resize the whole image to `size x size` (bilinear, aspect not kept)
    /// unless it already is that size.
    None,
    /// CIFAR-style: resize to `size x size` if needed, pad `pad` zero pixels
    /// on every side, take a uniformly random `size x size` crop (row offset
    /// drawn first, then column), then mirror left-right with probability 0.5
    /// when `flip`.
    PadCrop { pad: usize, flip: bool },
    /// torchvision `RandomResizedCrop(size, scale, ratio)`: up to 10 tries of
    /// area fraction ~ U(scale) and log aspect ratio ~ U(log ratio), the
    /// first crop that fits is placed uniformly; if none fits, a centre crop
    /// clamped to the ratio range. The crop is resized to `size x size`, then
    /// mirrored with probability 0.5 when `flip`.
    RandomResizedCrop {
        scale: (f64, f64),
        ratio: (f64, f64),
        flip: bool,
    },
    /// torchvision `Resize(resize)` + `CenterCrop(size)`: the shorter side is
    /// scaled to `resize` (the longer to `floor(resize * long / short)`)
    /// with torchvision's antialiased bilinear filter (`resize_antialiased`),
    /// then the centre `size x size` is taken, zero-padded if the image is
    /// smaller.
    ResizeCenterCrop { resize: usize },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    pub augment: Augment,
    /// Output is `channels x size x size`.
    pub size: usize,
    /// Per channel; the output is `(v - mean[c]) / std[c]` with `v` in [0, 1].
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Transform {
    /// No augmentation: resize to `size x size` if needed, then normalise.
    pub fn eval(size: usize, mean: Vec<f32>, std: Vec<f32>) -> Transform {
        Transform {
            augment: Augment::None,
            size,
            mean,
            std,
        }
    }

    /// CIFAR-style training transform (see `Augment::PadCrop`).
    pub fn pad_crop(
        size: usize,
        pad: usize,
        flip: bool,
        mean: Vec<f32>,
        std: Vec<f32>,
    ) -> Transform {
        Transform {
            augment: Augment::PadCrop { pad, flip },
            size,
            mean,
            std,
        }
    }

    /// The standard ImageNet training transform: RandomResizedCrop with
    /// scale (0.08, 1), ratio (3/4, 4/3), random flip, ImageNet statistics.
    pub fn imagenet_train(size: usize) -> Transform {
        Transform {
            augment: Augment::RandomResizedCrop {
                scale: (0.08, 1.0),
                ratio: (3.0 / 4.0, 4.0 / 3.0),
                flip: true,
            },
            size,
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
        }
    }

    /// The standard ImageNet evaluation transform: shorter side to
    /// `round(size * 256 / 224)` (256 for 224), centre crop `size`.
    pub fn imagenet_eval(size: usize) -> Transform {
        Transform {
            augment: Augment::ResizeCenterCrop {
                resize: (size as f64 * 256.0 / 224.0).round() as usize,
            },
            size,
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
        }
    }

    /// Number of f32 values `apply` writes for a `channels`-channel image.
    pub fn output_len(&self, channels: usize) -> usize {
        channels * self.size * self.size
    }

    /// Checks the settings against images of `channels` channels: size > 0,
    /// one positive finite std and one finite mean per channel, a usable
    /// scale/ratio range, a positive resize.
    pub fn check(&self, channels: usize) -> Result<()> {
        let bad = |msg: String| Err(Error::arg("transform", msg));
        if !(1..=MAX_IMAGE_SIZE).contains(&self.size) {
            return bad(format!(
                "output size must be in 1..={MAX_IMAGE_SIZE}, got {}",
                self.size
            ));
        }
        check_normalization(&self.mean, &self.std, channels).or_else(bad)?;
        match self.augment {
            Augment::RandomResizedCrop { scale, ratio, .. } => {
                let (s0, s1, r0, r1) = (scale.0, scale.1, ratio.0, ratio.1);
                if !(s0.is_finite() && s1.is_finite() && 0.0 < s0 && s0 <= s1) {
                    return bad(format!("scale must satisfy 0 < min <= max, got {scale:?}"));
                }
                if !(r0.is_finite() && r1.is_finite() && 0.0 < r0 && r0 <= r1) {
                    return bad(format!("ratio must satisfy 0 < min <= max, got {ratio:?}"));
                }
            }
            Augment::ResizeCenterCrop { resize } if !(1..=MAX_IMAGE_SIZE).contains(&resize) => {
                return bad(format!(
                    "resize must be in 1..={MAX_IMAGE_SIZE}, got {resize}"
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes the transformed `img` into `out` (`channels * size * size`
    /// values, CHW, normalised), drawing any randomness from `rng`.
    pub fn apply(&self, img: &Image, rng: &mut Rng, out: &mut [f32]) -> Result<()> {
        self.check(img.channels)?;
        let (h, w, c) = (img.height, img.width, img.channels);
        if h == 0 || w == 0 || img.pixels.len() != h * w * c {
            return Err(Error::shape(
                "transform",
                format!("image {h}x{w}x{c} (HxWxC) has {} bytes", img.pixels.len()),
            ));
        }
        if out.len() != self.output_len(c) {
            return Err(Error::shape(
                "transform",
                format!(
                    "output buffer has {} values, expected {}",
                    out.len(),
                    self.output_len(c)
                ),
            ));
        }
        let s = self.size;
        if let Some(crop) = self.plan(h, w, rng) {
            let inv_std: Vec<f32> = self.std.iter().map(|v| 1.0 / v).collect();
            crop_resize_into(&img.pixels, &crop, c, s, &self.mean, &inv_std, out);
            return Ok(());
        }
        match self.augment {
            Augment::ResizeCenterCrop { resize: short } => {
                let (nh, nw) = if w <= h {
                    (short * h / w, short)
                } else {
                    (short, short * w / h)
                };
                if nh.saturating_mul(nw) > MAX_RESIZED_PIXELS {
                    return Err(Error::shape(
                        "transform",
                        format!("image {h}x{w} resized to {nh}x{nw} for the centre crop exceeds {MAX_RESIZED_PIXELS} pixels (aspect ratio too extreme)"),
                    ));
                }
                let base = resize_antialiased(img, nh, nw);
                let offset = (centre_offset(nh, s), centre_offset(nw, s));
                self.write(&base, (nh, nw), offset, false, c, out);
            }
            _ => unreachable!("plan covers every other augmentation"),
        }
        Ok(())
    }

    /// The crop, shift and mirror of an `h x w` image for every
    /// augmentation but the antialiased `ResizeCenterCrop` (None), drawing
    /// the randomness from `rng` in `apply`'s order. The pixel work is then
    /// `engine::ops::augment`'s, on the host (`apply`) or on the training
    /// device (the loader's device mode).
    pub fn plan(&self, h: usize, w: usize, rng: &mut Rng) -> Option<Crop> {
        let s = self.size;
        let whole = Crop {
            offset: 0,
            height: h,
            width: w,
            top: 0,
            left: 0,
            crop_h: h,
            crop_w: w,
            shift: (0, 0),
            mirror: false,
        };
        match self.augment {
            Augment::None => Some(whole),
            Augment::PadCrop { pad, flip } => {
                // beyond the output side a shift reads only zeros
                let mut shift = || {
                    (rng.below(2 * pad + 1) as isize - pad as isize)
                        .clamp(-(s as isize), s as isize)
                };
                let (dy, dx) = (shift(), shift());
                let mirror = flip && rng.uniform() < 0.5;
                Some(Crop {
                    shift: (dy, dx),
                    mirror,
                    ..whole
                })
            }
            Augment::RandomResizedCrop { scale, ratio, flip } => {
                let r = random_resized_crop(h, w, scale, ratio, rng);
                let mirror = flip && rng.uniform() < 0.5;
                Some(Crop {
                    top: r.top,
                    left: r.left,
                    crop_h: r.height,
                    crop_w: r.width,
                    mirror,
                    ..whole
                })
            }
            Augment::ResizeCenterCrop { .. } => None,
        }
    }

    /// out[c][y][x] = normalise(base[c][y + dy][x' + dx]) with
    /// x' = size-1-x when mirrored; positions outside `base` read 0.
    fn write(
        &self,
        base: &[f32],
        (bh, bw): (usize, usize),
        (dy, dx): (isize, isize),
        mirror: bool,
        c: usize,
        out: &mut [f32],
    ) {
        let s = self.size;
        for ch in 0..c {
            let (mean, inv_std) = (self.mean[ch], 1.0 / self.std[ch]);
            let plane = &base[ch * bh * bw..(ch + 1) * bh * bw];
            for y in 0..s {
                let sy = y as isize + dy;
                let row = &mut out[(ch * s + y) * s..(ch * s + y + 1) * s];
                for (x, o) in row.iter_mut().enumerate() {
                    let xx = if mirror { s - 1 - x } else { x };
                    let sx = xx as isize + dx;
                    let inside = (0..bh as isize).contains(&sy) && (0..bw as isize).contains(&sx);
                    let v = if inside {
                        plane[sy as usize * bw + sx as usize]
                    } else {
                        0.0
                    };
                    *o = (v - mean) * inv_std;
                }
            }
        }
    }
}

/// A rectangle of the source image, in pixels.
#[derive(Clone, Copy, Debug)]
struct Region {
    top: usize,
    left: usize,
    height: usize,
    width: usize,
}

/// torchvision's CenterCrop offset: `round((n - s) / 2)` (ties to even, as
/// Python) when cropping, `-floor((s - n) / 2)` when padding.
fn centre_offset(n: usize, s: usize) -> isize {
    if n >= s {
        ((n - s) as f64 / 2.0).round_ties_even() as isize
    } else {
        -(((s - n) / 2) as isize)
    }
}

/// torchvision `RandomResizedCrop.get_params`, Python rounding included.
fn random_resized_crop(
    h: usize,
    w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> Region {
    let area = (h * w) as f64;
    let (log_r0, log_r1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * (scale.0 + (scale.1 - scale.0) * rng.uniform());
        let aspect = (log_r0 + (log_r1 - log_r0) * rng.uniform()).exp();
        let cw = (target * aspect).sqrt().round_ties_even() as usize;
        let ch = (target / aspect).sqrt().round_ties_even() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.below(h - ch + 1);
            let left = rng.below(w - cw + 1);
            return Region {
                top,
                left,
                height: ch,
                width: cw,
            };
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio.0 {
        (
            ((w as f64 / ratio.0).round_ties_even() as usize).clamp(1, h),
            w,
        )
    } else if in_ratio > ratio.1 {
        (
            h,
            ((h as f64 * ratio.1).round_ties_even() as usize).clamp(1, w),
        )
    } else {
        (h, w)
    };
    Region {
        top: (h - ch) / 2,
        left: (w - cw) / 2,
        height: ch,
        width: cw,
    }
}

/// torchvision's `Resize(antialias=True)` with bilinear interpolation
/// (PyTorch's `interpolate(mode="bilinear", antialias=True)`, like PIL): each
/// output pixel is a triangle-filter average of the source pixels, the
/// filter's support widened by the downscale factor. Returns CHW f32 in
/// [0, 1] without rounding to u8. Upscaling equals plain bilinear.
pub fn resize_antialiased(img: &Image, oh: usize, ow: usize) -> Vec<f32> {
    let (h, w, c) = (img.height, img.width, img.channels);
    let ys = antialias_weights(h, oh);
    let xs = antialias_weights(w, ow);
    // horizontal pass (h x ow per channel), then vertical
    let mut rows = vec![0f32; c * h * ow];
    for ch in 0..c {
        for y in 0..h {
            let src = &img.pixels[y * w * c..(y + 1) * w * c];
            for (x, (x0, wts)) in xs.iter().enumerate() {
                let v: f32 = wts
                    .iter()
                    .enumerate()
                    .map(|(k, wt)| src[(x0 + k) * c + ch] as f32 * wt)
                    .sum();
                rows[(ch * h + y) * ow + x] = v * (1.0 / 255.0);
            }
        }
    }
    let mut out = vec![0f32; c * oh * ow];
    for ch in 0..c {
        for (y, (y0, wts)) in ys.iter().enumerate() {
            for x in 0..ow {
                out[(ch * oh + y) * ow + x] = wts
                    .iter()
                    .enumerate()
                    .map(|(k, wt)| rows[(ch * h + y0 + k) * ow + x] * wt)
                    .sum();
            }
        }
    }
    out
}

/// For each of `n_out` positions along an axis of `n_in` source pixels:
/// the first source pixel and the normalised weights of it and the next
/// ones (PyTorch's `_compute_index_ranges_weights` for the antialiased
/// bilinear filter, align_corners=False).
fn antialias_weights(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = n_in as f64 / n_out as f64;
    let (support, inv_scale) = if scale >= 1.0 {
        (scale, 1.0 / scale)
    } else {
        (1.0, 1.0)
    };
    (0..n_out)
        .map(|o| {
            let centre = scale * (o as f64 + 0.5);
            // C++ casts truncate toward zero
            let lo = ((centre - support + 0.5).trunc().max(0.0) as usize).min(n_in - 1);
            let hi = ((centre + support + 0.5).trunc() as usize).clamp(lo + 1, n_in);
            let wts: Vec<f64> = (lo..hi)
                .map(|j| (1.0 - ((j as f64 - centre + 0.5) * inv_scale).abs()).max(0.0))
                .collect();
            let total: f64 = wts.iter().sum();
            let norm = if total > 0.0 { 1.0 / total } else { 0.0 };
            (lo, wts.iter().map(|w| (w * norm) as f32).collect())
        })
        .collect()
}

/// One finite mean and one positive finite std per channel; the message
/// says what is wrong.
pub(crate) fn check_normalization(
    mean: &[f32],
    std: &[f32],
    channels: usize,
) -> std::result::Result<(), String> {
    if mean.len() != channels || std.len() != channels {
        return Err(format!(
            "mean has {} values and std {}, the images have {channels} channels",
            mean.len(),
            std.len()
        ));
    }
    if mean.iter().any(|m| !m.is_finite()) || std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(format!(
            "mean must be finite and std positive, got mean {mean:?} std {std:?}"
        ));
    }
    Ok(())
}
