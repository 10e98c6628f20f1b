//! Per-sample preprocessing: geometric augmentation, resampling to a fixed
//! square size, and per-channel normalisation into CHW f32.
//!
//! Resampling is bilinear with half-pixel centres (PyTorch's
//! `interpolate(mode="bilinear", align_corners=False, antialias=False)`):
//! output pixel `o` samples source coordinate `(o + 0.5) * in/out - 0.5`,
//! clamped to the image. There is NO antialiasing, so strong downscaling
//! aliases (unlike PIL or torchvision's default `antialias=True`), and values
//! stay in f32 instead of being rounded back to u8 between steps. Random
//! choices use the caller's `Rng` in a fixed order, so one seed gives one
//! output.

use super::Image;
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
    /// scaled to `resize` (the longer to `floor(resize * long / short)`),
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
        let full = Region {
            top: 0,
            left: 0,
            height: h,
            width: w,
        };
        match self.augment {
            Augment::None => {
                let base = resize(img, full, s, s);
                self.write(&base, (s, s), (0, 0), false, c, out);
            }
            Augment::PadCrop { pad, flip } => {
                let base = resize(img, full, s, s);
                let dy = rng.below(2 * pad + 1) as isize - pad as isize;
                let dx = rng.below(2 * pad + 1) as isize - pad as isize;
                let mirror = flip && rng.uniform() < 0.5;
                self.write(&base, (s, s), (dy, dx), mirror, c, out);
            }
            Augment::RandomResizedCrop { scale, ratio, flip } => {
                let crop = random_resized_crop(h, w, scale, ratio, rng);
                let base = resize(img, crop, s, s);
                let mirror = flip && rng.uniform() < 0.5;
                self.write(&base, (s, s), (0, 0), mirror, c, out);
            }
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
                let base = resize(img, full, nh, nw);
                let offset = (centre_offset(nh, s), centre_offset(nw, s));
                self.write(&base, (nh, nw), offset, false, c, out);
            }
        }
        Ok(())
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

/// Bilinear resize of `region` of `img` to `oh x ow`, as CHW f32 in [0, 1].
/// A region already `oh x ow` is copied exactly.
fn resize(img: &Image, region: Region, oh: usize, ow: usize) -> Vec<f32> {
    let c = img.channels;
    let at = |y: usize, x: usize, ch: usize| -> f32 {
        img.pixels[((region.top + y) * img.width + region.left + x) * c + ch] as f32 * (1.0 / 255.0)
    };
    let mut out = vec![0f32; c * oh * ow];
    if region.height == oh && region.width == ow {
        for ch in 0..c {
            for y in 0..oh {
                for x in 0..ow {
                    out[(ch * oh + y) * ow + x] = at(y, x, ch);
                }
            }
        }
        return out;
    }
    let ys = taps(region.height, oh);
    let xs = taps(region.width, ow);
    for ch in 0..c {
        for (y, &(y0, y1, ly)) in ys.iter().enumerate() {
            for (x, &(x0, x1, lx)) in xs.iter().enumerate() {
                let top = at(y0, x0, ch) * (1.0 - lx) + at(y0, x1, ch) * lx;
                let bottom = at(y1, x0, ch) * (1.0 - lx) + at(y1, x1, ch) * lx;
                out[(ch * oh + y) * ow + x] = top * (1.0 - ly) + bottom * ly;
            }
        }
    }
    out
}

/// For each of `n_out` output positions along an axis of `n_in` source
/// pixels: the two source neighbours and the weight of the second.
fn taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, (src - i0 as f64) as f32)
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
