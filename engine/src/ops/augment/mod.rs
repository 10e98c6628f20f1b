//! The training input pipeline's pixel work as one op: per output image,
//! crop a region of a u8 HWC source image, resize it bilinearly to a
//! square (half-pixel centres, no antialiasing), shift it with zero fill,
//! mirror it, scale to [0, 1] and normalise per channel. It is what
//! `RandomResizedCrop` (torchvision's `resized_crop(..., antialias=False)`),
//! CIFAR's pad-and-crop, `RandomHorizontalFlip`, `ToTensor` and
//! `Normalize` do, in one pass, with the random choices made by the
//! caller: models' loaders draw them on the host and run this op on the
//! training device, so a GPU run uploads u8 pixels (or none, when the
//! dataset lives on the device) instead of normalised f32 images.
//!
//! Not differentiable (the input is u8). The CPU backend (`cpu.rs`) is the
//! reference and the host loader's own pixel path; the GPU's (augment.cu)
//! equals it bit for bit in f32.

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

pub use cpu::crop_resize_into;
pub use kernels::device::CropRecord as Crop;

use crate::backend::{unsupported, BackendInfo};
use crate::{on_backend, DType, Error, Result, Tensor};

const OP: &str = "crop_resize_normalize";

/// Largest output side (as models' transforms).
pub const MAX_SIZE: usize = 4096;
/// Most output images per call.
pub const MAX_IMAGES: usize = 1 << 16;
/// Most channels per image.
pub const MAX_CHANNELS: usize = 16;
/// The pixel scale: u8 `p` becomes `p as f32 * INV_255`.
pub const INV_255: f32 = 1.0 / 255.0;

/// What to make of a batch of source images (see [`crop_resize_normalize`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CropBatch {
    /// Channels of every source image (interleaved, HWC).
    pub channels: usize,
    /// Output side: each image becomes `channels x size x size`.
    pub size: usize,
    /// One per output image.
    pub crops: Vec<Crop>,
    /// Per channel, on [0, 1] values: out = (v - mean) / std, computed as
    /// (v - mean) * f32(1 / std).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// f32, f16 or bf16 (computed in f32, rounded once).
    pub dtype: DType,
}

/// A checked [`CropBatch`], with each channel's `1 / std` in f32.
#[derive(Clone, Debug, PartialEq)]
pub struct CropJob<'a> {
    pub batch: &'a CropBatch,
    pub inv_std: Vec<f32>,
}

/// The primitive a backend implements.
pub trait AugmentOps: BackendInfo {
    /// `[B, C, size, size]` in `job.batch.dtype` from the u8 `pixels` (1-D,
    /// on this backend), every crop checked against them.
    fn crop_resize_normalize(&self, pixels: &Tensor, job: &CropJob<'_>) -> Result<Tensor> {
        let _ = (pixels, job);
        Err(unsupported(self, OP))
    }
}

/// Checks `b` against `pixels` (1-D u8 of `len` bytes): sizes bounded,
/// every region non-empty and inside its image, every image inside the
/// pixels, shifts at most the output side, one finite mean and one
/// positive finite deviation per channel.
fn check<'a>(pixels: &Tensor, b: &'a CropBatch) -> Result<CropJob<'a>> {
    if pixels.dtype() != DType::U8 || pixels.rank() != 1 {
        return Err(Error::arg(
            OP,
            format!(
                "pixels must be a 1-D u8 tensor, got {:?} {}",
                pixels.dims(),
                pixels.dtype()
            ),
        ));
    }
    if !matches!(b.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::dtype(OP, "an f32, f16 or bf16 output", b.dtype));
    }
    if !(1..=MAX_SIZE).contains(&b.size) {
        return Err(Error::arg(
            OP,
            format!("output size must be in 1..={MAX_SIZE}, got {}", b.size),
        ));
    }
    if !(1..=MAX_CHANNELS).contains(&b.channels) {
        return Err(Error::arg(
            OP,
            format!("channels must be in 1..={MAX_CHANNELS}, got {}", b.channels),
        ));
    }
    if b.crops.len() > MAX_IMAGES {
        return Err(Error::arg(
            OP,
            format!(
                "{} images exceed the {MAX_IMAGES} of one call",
                b.crops.len()
            ),
        ));
    }
    if b.mean.len() != b.channels || b.std.len() != b.channels {
        return Err(Error::arg(
            OP,
            format!(
                "{} means and {} deviations for {} channels",
                b.mean.len(),
                b.std.len(),
                b.channels
            ),
        ));
    }
    if let Some(s) = b.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::arg(
            OP,
            format!("std must be finite and > 0, got {s}"),
        ));
    }
    if let Some(m) = b.mean.iter().find(|m| !m.is_finite()) {
        return Err(Error::arg(OP, format!("mean must be finite, got {m}")));
    }
    let len = pixels.numel();
    for (i, k) in b.crops.iter().enumerate() {
        let bad = |msg: String| Err(Error::arg(OP, format!("image {i}: {msg}")));
        let bytes = k
            .height
            .checked_mul(k.width)
            .and_then(|v| v.checked_mul(b.channels));
        match bytes.and_then(|n| k.offset.checked_add(n)) {
            Some(end) if k.height > 0 && k.width > 0 && end <= len => {}
            _ => {
                return bad(format!(
                    "a {}x{}x{} image at byte {} does not fit in {len} pixel bytes",
                    k.height, k.width, b.channels, k.offset
                ))
            }
        }
        if k.crop_h == 0
            || k.crop_w == 0
            || k.top.saturating_add(k.crop_h) > k.height
            || k.left.saturating_add(k.crop_w) > k.width
        {
            return bad(format!(
                "region {}x{} at ({}, {}) is empty or outside the {}x{} image",
                k.crop_h, k.crop_w, k.top, k.left, k.height, k.width
            ));
        }
        let side = b.size as isize;
        if k.shift.0.abs() > side || k.shift.1.abs() > side {
            return bad(format!(
                "shift {:?} exceeds the output side {}",
                k.shift, b.size
            ));
        }
    }
    Ok(CropJob {
        inv_std: b.std.iter().map(|s| 1.0 / s).collect(),
        batch: b,
    })
}

/// `[B, C, size, size]` images in `b.dtype` on `pixels`' device, image `i`
/// made from crop `b.crops[i]` of the u8 HWC images packed in `pixels`:
/// with `v(sy, sx)` the region resized to `size x size` (bilinear,
/// `align_corners = false`, no antialiasing; a region of the output's size
/// is copied exactly),
///
/// ```text
/// x' = mirror ? size-1-x : x;   sy = y + shift.0;   sx = x' + shift.1
/// out[i][c][y][x] = ((sy, sx) inside ? v(sy, sx)[c] : 0) - mean[c]) * f32(1 / std[c])
/// ```
///
/// Pixel values are `u8 * f32(1/255)`; everything is computed in f32.
pub fn crop_resize_normalize(pixels: &Tensor, b: &CropBatch) -> Result<Tensor> {
    let job = check(pixels, b)?;
    on_backend!(pixels.device(), be => crate::trace::op(OP, "forward", be.name(), &[pixels], || {
        be.crop_resize_normalize(pixels, &job)
    }))
}
