//! RoIAlign (He et al., Mask R-CNN), computed exactly as torchvision's CPU
//! kernel (`torchvision/csrc/ops/cpu/roi_align_kernel.cpp`): same sample
//! positions, same boundary rules, same order of floating-point operations,
//! so f64 results agree with `torchvision.ops.roi_align` to rounding.

use super::{expect_rank, same_dtype};
use crate::autograd::record;
use crate::{dispatch_float, Element, Error, Float, Result, Tensor};
use rayon::prelude::*;

const OP: &str = "roi_align";

/// Bilinear samples one box may take (bins x grid): far beyond any real
/// feature map (a 14x14 output of a 1024x1024 map samples ~1e6).
const MAX_SAMPLES_PER_ROI: f64 = (1u64 << 28) as f64;

/// The validated arguments of one call.
#[derive(Clone, Copy)]
struct Geometry {
    /// Input [N, C, H, W].
    nchw: [usize; 4],
    /// Pooled output [ph, pw].
    out: [usize; 2],
    spatial_scale: f64,
    sampling_ratio: i64,
    aligned: bool,
}

/// One box mapped onto the feature map: where its bins start, their size and
/// how many sample points each bin averages over.
struct Roi<T> {
    batch: usize,
    start_h: T,
    start_w: T,
    bin_h: T,
    bin_w: T,
    /// Sample rows/cols per bin; <= 0 means no samples (an empty or inverted
    /// box, aligned, adaptive grid), as torchvision's loops then run zero times.
    grid_h: i64,
    grid_w: i64,
}

impl<T: Float> Roi<T> {
    /// torchvision's per-roi preamble, operation for operation.
    fn new(b: &[T], g: &Geometry) -> Roi<T> {
        let scale = <T as Element>::from_f64(g.spatial_scale);
        let offset = <T as Element>::from_f64(if g.aligned { 0.5 } else { 0.0 });
        let start_w = b[1] * scale - offset;
        let start_h = b[2] * scale - offset;
        let end_w = b[3] * scale - offset;
        let end_h = b[4] * scale - offset;
        let (mut roi_w, mut roi_h) = (end_w - start_w, end_h - start_h);
        if !g.aligned {
            // legacy (Detectron) behaviour: malformed boxes become 1x1
            roi_w = roi_w.max(T::one());
            roi_h = roi_h.max(T::one());
        }
        let (ph, pw) = (T::from_usize(g.out[0]), T::from_usize(g.out[1]));
        let grid = |size: T, bins: T| -> i64 {
            if g.sampling_ratio > 0 {
                g.sampling_ratio
            } else {
                // the C++ truncates ceil(...) to int; it is already integral
                <T as Element>::to_f64((size / bins).ceil()) as i64
            }
        };
        Roi {
            // validated to be an integer in range before any Roi is built
            batch: <T as Element>::to_f64(b[0]) as usize,
            start_h,
            start_w,
            bin_h: roi_h / ph,
            bin_w: roi_w / pw,
            grid_h: grid(roi_h, ph),
            grid_w: grid(roi_w, pw),
        }
    }

    /// The divisor of a bin's sum: the sample count, at least 1.
    fn count(&self) -> T {
        T::from_usize((self.grid_h.max(0) * self.grid_w.max(0)).max(1) as usize)
    }

    /// Every sample point of every bin, in torchvision's (ph, pw, iy, ix)
    /// order (`pre_calc_for_bilinear_interpolate`).
    fn samples(&self, g: &Geometry) -> Vec<Sample<T>> {
        let (gh, gw) = (self.grid_h.max(0) as usize, self.grid_w.max(0) as usize);
        let mut out = Vec::with_capacity(g.out[0] * g.out[1] * gh * gw);
        let (tgh, tgw) = (T::from_usize(gh), T::from_usize(gw));
        let half = <T as Element>::from_f64(0.5);
        for ph in 0..g.out[0] {
            for pw in 0..g.out[1] {
                for iy in 0..gh {
                    let y = self.start_h
                        + T::from_usize(ph) * self.bin_h
                        + (T::from_usize(iy) + half) * self.bin_h / tgh;
                    for ix in 0..gw {
                        let x = self.start_w
                            + T::from_usize(pw) * self.bin_w
                            + (T::from_usize(ix) + half) * self.bin_w / tgw;
                        out.push(Sample::bilinear(y, x, g.nchw[2], g.nchw[3]));
                    }
                }
            }
        }
        out
    }
}

/// The four pixels a sample point reads and their bilinear weights.
#[derive(Clone, Copy)]
struct Sample<T> {
    /// Offsets into the (H, W) plane: (y_low, x_low), (y_low, x_high),
    /// (y_high, x_low), (y_high, x_high).
    pos: [usize; 4],
    w: [T; 4],
    /// False for points outside [-1, H] x [-1, W]: forward reads them with
    /// zero weights at pixel 0 (as torchvision), backward skips them.
    inside: bool,
}

impl<T: Float> Sample<T> {
    /// torchvision's bilinear rule: points beyond one pixel outside the map
    /// are empty, points in (-1, 0] clamp to the border, and the last
    /// row/column interpolates with itself.
    fn bilinear(mut y: T, mut x: T, height: usize, width: usize) -> Sample<T> {
        let (h, w) = (T::from_usize(height), T::from_usize(width));
        if y < -T::one() || y > h || x < -T::one() || x > w {
            return Sample {
                pos: [0; 4],
                w: [T::zero(); 4],
                inside: false,
            };
        }
        if y <= T::zero() {
            y = T::zero();
        }
        if x <= T::zero() {
            x = T::zero();
        }
        let (mut y_low, mut x_low) = (
            <T as Element>::to_f64(y) as usize,
            <T as Element>::to_f64(x) as usize,
        );
        let y_high = if y_low >= height - 1 {
            y_low = height - 1;
            y = T::from_usize(y_low);
            y_low
        } else {
            y_low + 1
        };
        let x_high = if x_low >= width - 1 {
            x_low = width - 1;
            x = T::from_usize(x_low);
            x_low
        } else {
            x_low + 1
        };
        let (ly, lx) = (y - T::from_usize(y_low), x - T::from_usize(x_low));
        let (hy, hx) = (T::one() - ly, T::one() - lx);
        Sample {
            pos: [
                y_low * width + x_low,
                y_low * width + x_high,
                y_high * width + x_low,
                y_high * width + x_high,
            ],
            w: [hy * hx, hy * lx, ly * hx, ly * lx],
            inside: true,
        }
    }
}

/// Checks every argument; returns the geometry or a clear error.
fn validate(
    x: &Tensor,
    boxes: &Tensor,
    out: [usize; 2],
    spatial_scale: f64,
    sampling_ratio: i64,
    aligned: bool,
) -> Result<Geometry> {
    expect_rank(OP, "input [N, C, H, W]", x, 4)?;
    let d = x.dims();
    let nchw = [d[0], d[1], d[2], d[3]];
    if boxes.rank() != 2 || boxes.dims()[1] != 5 {
        return Err(Error::shape(
            OP,
            format!(
                "boxes must be [K, 5] rows of (batch_index, x1, y1, x2, y2), got shape {:?}",
                boxes.dims()
            ),
        ));
    }
    same_dtype(OP, &[x, boxes])?;
    if !x.dtype().is_float() {
        return Err(Error::dtype(
            OP,
            "a float dtype (f64, f32, f16, bf16)",
            x.dtype(),
        ));
    }
    if out.contains(&0) {
        return Err(Error::arg(
            OP,
            format!("output size {out:?} must be >= 1 in both dims"),
        ));
    }
    if nchw[2] == 0 || nchw[3] == 0 {
        return Err(Error::shape(
            OP,
            format!("input {:?} has an empty plane", x.dims()),
        ));
    }
    if !(spatial_scale.is_finite() && spatial_scale > 0.0) {
        return Err(Error::arg(
            OP,
            format!("spatial_scale must be finite and > 0, got {spatial_scale}"),
        ));
    }
    for (k, row) in boxes.to_vec_f64().chunks_exact(5).enumerate() {
        let b = row[0];
        if b.fract() != 0.0 || b < 0.0 || b >= nchw[0] as f64 {
            return Err(Error::arg(
                OP,
                format!(
                    "box {k}: batch index {b} is not an integer in [0, {}) (input batch size {})",
                    nchw[0], nchw[0]
                ),
            ));
        }
        if row[1..].iter().any(|v| !v.is_finite()) {
            return Err(Error::arg(
                OP,
                format!("box {k}: coordinates {:?} must be finite", &row[1..]),
            ));
        }
        // a sample table this large means a corrupt box or sampling ratio,
        // not a feature map (torchvision would grind through it)
        let grid = |size: f64, bins: usize| {
            if sampling_ratio > 0 {
                sampling_ratio as f64
            } else {
                (size * spatial_scale / bins as f64).ceil().max(1.0)
            }
        };
        let per_roi = (out[0] * out[1]) as f64
            * grid(row[4] - row[2], out[0])
            * grid(row[3] - row[1], out[1]);
        if per_roi > MAX_SAMPLES_PER_ROI {
            return Err(Error::arg(
                OP,
                format!(
                    "box {k} {:?} at spatial_scale {spatial_scale} with sampling_ratio \
                     {sampling_ratio} needs {per_roi:.3e} samples (more than {MAX_SAMPLES_PER_ROI:e})",
                    &row[1..]
                ),
            ));
        }
    }
    Ok(Geometry {
        nchw,
        out,
        spatial_scale,
        sampling_ratio,
        aligned,
    })
}

/// Output [K, C, ph, pw]; parallel over boxes, each writing its own block.
fn forward<T: Float>(x: &[T], boxes: &[T], g: &Geometry) -> Vec<T> {
    let [_, c, h, w] = g.nchw;
    let (plane, oplane) = (h * w, g.out[0] * g.out[1]);
    let k = boxes.len() / 5;
    let mut out = vec![T::zero(); k * c * oplane];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(c * oplane)
        .zip(boxes.par_chunks(5))
        .for_each(|(o, b)| {
            let roi = Roi::new(b, g);
            let samples = roi.samples(g);
            let per_bin = samples.len() / oplane;
            let count = roi.count();
            for (ch, oc) in o.chunks_mut(oplane).enumerate() {
                let xp = &x[(roi.batch * c + ch) * plane..][..plane];
                for (ov, bin) in oc.iter_mut().zip(samples.chunks(per_bin.max(1))) {
                    let mut v = T::zero();
                    for s in bin {
                        v += s.w[0] * xp[s.pos[0]]
                            + s.w[1] * xp[s.pos[1]]
                            + s.w[2] * xp[s.pos[2]]
                            + s.w[3] * xp[s.pos[3]];
                    }
                    *ov = v / count;
                }
            }
        });
    out
}

/// Gradient w.r.t. the input [N, C, H, W]. Parallel over contiguous runs
/// of channels of one image, never over boxes: every input element receives
/// its contributions in torchvision's order (box, bin, sample, corner), so
/// the result is deterministic and independent of the thread count.
fn backward<T: Float>(dy: &[T], boxes: &[T], g: &Geometry) -> Vec<T> {
    let [n, c, h, w] = g.nchw;
    let (plane, oplane) = (h * w, g.out[0] * g.out[1]);
    let mut dx = vec![T::zero(); n * c * plane];
    if dx.is_empty() || boxes.is_empty() {
        return dx;
    }
    let rois: Vec<Roi<T>> = boxes.chunks_exact(5).map(|b| Roi::new(b, g)).collect();
    // a few channel runs per thread: each run rebuilds the sample tables of
    // its image's boxes once
    let run = c.div_ceil(4 * rayon::current_num_threads()).max(1);
    dx.par_chunks_mut(c * plane)
        .enumerate()
        .for_each(|(img, di)| {
            di.par_chunks_mut(run * plane)
                .enumerate()
                .for_each(|(r, d)| {
                    let c0 = r * run;
                    for (k, roi) in rois.iter().enumerate().filter(|(_, roi)| roi.batch == img) {
                        let samples = roi.samples(g);
                        let per_bin = samples.len() / oplane;
                        // torchvision divides by the raw product here (no
                        // max(.., 1)); with samples present it is >= 1 anyway
                        let count = T::from_usize((roi.grid_h.max(0) * roi.grid_w.max(0)) as usize);
                        for (ch, dp) in d.chunks_mut(plane).enumerate() {
                            let gp = &dy[(k * c + c0 + ch) * oplane..][..oplane];
                            for (&gv, bin) in gp.iter().zip(samples.chunks(per_bin.max(1))) {
                                for s in bin.iter().filter(|s| s.inside) {
                                    for corner in 0..4 {
                                        dp[s.pos[corner]] += gv * s.w[corner] / count;
                                    }
                                }
                            }
                        }
                    }
                });
        });
    dx
}

impl Tensor {
    /// RoIAlign of `self` [N, C, H, W] over `boxes` [K, 5] = rows of
    /// (batch_index, x1, y1, x2, y2) in input-image coordinates, same float
    /// dtype; returns [K, C, ph, pw] with `output_size` = [ph, pw].
    ///
    /// Exactly `torchvision.ops.roi_align`: each box is scaled by
    /// `spatial_scale` (and shifted by -0.5 when `aligned`; otherwise its
    /// width and height are raised to at least 1), split into ph x pw bins,
    /// and each bin is the mean of a grid of `sampling_ratio` x
    /// `sampling_ratio` bilinear samples at the sub-cell centres
    /// (`sampling_ratio <= 0`: ceil(bin height) x ceil(bin width) per box).
    /// A sample outside [-1, H] x [-1, W] counts as 0; one in (-1, 0]
    /// clamps to the border. Differentiable w.r.t. `self` (scatter-add of
    /// the same weights); `boxes` get no gradient, as in torchvision.
    /// f16/bf16 are computed in f32 and rounded back.
    pub fn roi_align(
        &self,
        boxes: &Tensor,
        output_size: [usize; 2],
        spatial_scale: f64,
        sampling_ratio: i64,
        aligned: bool,
    ) -> Result<Tensor> {
        if self.device() != crate::Device::Cpu {
            // the CPU op's checks, on a host copy of the (few) boxes
            let host_boxes = boxes.to_device(crate::Device::Cpu)?;
            validate(
                self,
                &host_boxes,
                output_size,
                spatial_scale,
                sampling_ratio,
                aligned,
            )?;
            return crate::cuda::ops::detection::roi_align(
                self,
                boxes,
                output_size,
                spatial_scale,
                sampling_ratio,
                aligned,
            );
        }
        crate::trace::op(OP, "forward", "cpu:roi_align", &[self, boxes], || {
            let g = validate(
                self,
                boxes,
                output_size,
                spatial_scale,
                sampling_ratio,
                aligned,
            )?;
            let (dtype, x_shape) = (self.dtype(), self.dims().to_vec());
            let k = boxes.dims()[0];
            let shape = [k, g.nchw[1], output_size[0], output_size[1]];
            let out = dispatch_float!(OP, dtype, T => {
                let y = forward::<T>(&self.float_data::<T>()?, &boxes.float_data::<T>()?, &g);
                Tensor::from_compute(y, &shape, dtype)
            });
            let boxes = boxes.detach();
            Ok(record(out, OP, &[self], move |gy| {
                let dx = dispatch_float!(OP, dtype, T => {
                    let d = backward::<T>(&gy.float_data::<T>()?, &boxes.float_data::<T>()?, &g);
                    Tensor::from_compute(d, &x_shape, dtype)
                });
                Ok(vec![Some(dx)])
            }))
        })
    }
}
