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
    let (dy, dx) = crop.shift;
    let inside = |v: isize| (0..size as isize).contains(&v);
    // per output column (mirror and shift applied): the byte offsets of its
    // two source columns within a row, and the weights; None reads zero
    let cols: Vec<Option<(usize, usize, f32, f32)>> = (0..size)
        .map(|x| {
            let sx = if crop.mirror { size - 1 - x } else { x } as isize + dx;
            inside(sx).then(|| {
                let (x0, x1, lx) = tap(sx as usize, crop.crop_w, size);
                ((crop.left + x0) * c, (crop.left + x1) * c, 1.0 - lx, lx)
            })
        })
        .collect();
    let row_bytes = crop.width * c;
    let image = &pixels[crop.offset..crop.offset + crop.height * row_bytes];
    for ch in 0..c {
        let (mean, inv_std) = (mean[ch], inv_std[ch]);
        let zero = (0.0 - mean) * inv_std;
        for y in 0..size {
            let row = &mut out[(ch * size + y) * size..(ch * size + y + 1) * size];
            let sy = y as isize + dy;
            if !inside(sy) {
                row.fill(zero);
                continue;
            }
            let (y0, y1, ly) = tap(sy as usize, crop.crop_h, size);
            let r0 = &image[(crop.top + y0) * row_bytes..(crop.top + y0 + 1) * row_bytes];
            let r1 = &image[(crop.top + y1) * row_bytes..(crop.top + y1 + 1) * row_bytes];
            let at = |r: &[u8], x: usize| r[x + ch] as f32 * INV_255;
            for (o, col) in row.iter_mut().zip(&cols) {
                *o = match *col {
                    Some((x0, x1, lx0, lx)) => {
                        let top = at(r0, x0) * lx0 + at(r0, x1) * lx;
                        let bottom = at(r1, x0) * lx0 + at(r1, x1) * lx;
                        (top * (1.0 - ly) + bottom * ly - mean) * inv_std
                    }
                    None => zero,
                };
            }
        }
    }
}

impl AugmentOps for Cpu {
    fn crop_resize_normalize(&self, pixels: &Tensor, job: &CropJob<'_>) -> Result<Tensor> {
        crate::trace::kernel("crop_resize");
        let b = job.batch;
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
