//! The reference: one output image at a time, the taps of each axis in
//! f64 from the integer geometry, the blend in f32 (width first).

use super::{AugmentOps, Crop, CropJob, INV_255};
use crate::backend::Cpu;
use crate::{Result, Tensor};

/// The two source indices of output index `o` along an axis of `n_in`
/// pixels resized to `n_out`, and the weight of the second: PyTorch's
/// bilinear source index with half-pixel centres, clamped at 0.
fn tap(o: usize, n_in: usize, n_out: usize) -> (usize, usize, f32) {
    let scale = n_in as f64 / n_out as f64;
    let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(n_in - 1);
    let i1 = (i0 + 1).min(n_in - 1);
    (i0, i1, (src - i0 as f64) as f32)
}

/// Writes one output image, `channels x size x size` (CHW), made from
/// `crop` of `pixels` as `super::crop_resize_normalize` documents.
/// `crop` must lie inside `pixels` and `out` hold `channels * size * size`
/// values (checked by the op; the loader's host path checks its own).
pub fn crop_resize_into(
    pixels: &[u8],
    crop: &Crop,
    channels: usize,
    size: usize,
    mean: &[f32],
    inv_std: &[f32],
    out: &mut [f32],
) {
    let c = channels;
    let rows: Vec<_> = (0..size).map(|o| tap(o, crop.crop_h, size)).collect();
    let cols: Vec<_> = (0..size).map(|o| tap(o, crop.crop_w, size)).collect();
    let at = |y: usize, x: usize, ch: usize| -> f32 {
        let (y, x) = (crop.top + y, crop.left + x);
        pixels[crop.offset + (y * crop.width + x) * c + ch] as f32 * INV_255
    };
    let (dy, dx) = crop.shift;
    let side = 0..size as isize;
    for ch in 0..c {
        let (mean, inv_std) = (mean[ch], inv_std[ch]);
        for y in 0..size {
            let sy = y as isize + dy;
            let row = &mut out[(ch * size + y) * size..(ch * size + y + 1) * size];
            for (x, o) in row.iter_mut().enumerate() {
                let sx = if crop.mirror { size - 1 - x } else { x } as isize + dx;
                let v = if side.contains(&sy) && side.contains(&sx) {
                    let (y0, y1, ly) = rows[sy as usize];
                    let (x0, x1, lx) = cols[sx as usize];
                    let top = at(y0, x0, ch) * (1.0 - lx) + at(y0, x1, ch) * lx;
                    let bottom = at(y1, x0, ch) * (1.0 - lx) + at(y1, x1, ch) * lx;
                    top * (1.0 - ly) + bottom * ly
                } else {
                    0.0
                };
                *o = (v - mean) * inv_std;
            }
        }
    }
}

impl AugmentOps for Cpu {
    fn crop_resize_normalize(&self, pixels: &Tensor, job: &CropJob) -> Result<Tensor> {
        crate::trace::kernel("crop_resize");
        let b = &job.batch;
        let px = pixels.data::<u8>()?;
        let per = b.channels * b.size * b.size;
        let mut out = vec![0f32; b.crops.len() * per];
        for (crop, o) in b.crops.iter().zip(out.chunks_exact_mut(per)) {
            crop_resize_into(&px, crop, b.channels, b.size, &b.mean, &job.inv_std, o);
        }
        let shape = [b.crops.len(), b.channels, b.size, b.size];
        Ok(Tensor::from_compute(out, &shape, b.dtype))
    }
}
