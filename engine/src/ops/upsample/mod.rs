//! Nearest and bilinear resizing of NCHW tensors, index for index as
//! PyTorch's `F.interpolate` (modes "nearest" and "bilinear"): the checks,
//! trace and autograd, over the [`UpsampleOps`] primitives of the backends
//! (`cpu.rs`, `cuda.rs`).

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

/// The bilinear source taps and blend, shared with the detection family's
/// `paste_masks` (which must resize exactly as `upsample_bilinear2d`).
pub(crate) use cpu::{linear_weights, Lerp};
pub(crate) use cuda::tap as cuda_tap;

use super::expect_rank;
use crate::autograd::record;
use crate::backend::{unsupported, BackendInfo};
use crate::ops::GradSpec;
use crate::{on_backend, DType, Device, Error, Result, Tensor};

/// How output pixels sample the input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// PyTorch's `nearest_idx`, with the ratio `1 / scale_factor` when one
    /// was given, else from the sizes.
    Nearest { scale_factor: Option<f64> },
    /// PyTorch's bilinear source index and weights.
    Bilinear { align_corners: bool },
}

/// One resize: input [n, c, h, w] -> output [n, c, oh, ow].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Resize {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub mode: Mode,
}

impl Mode {
    /// The op's name: "upsample_nearest2d" or "upsample_bilinear2d".
    pub fn op(&self) -> &'static str {
        match self {
            Mode::Nearest { .. } => "upsample_nearest2d",
            Mode::Bilinear { .. } => "upsample_bilinear2d",
        }
    }
}

/// The resizing primitives a backend implements.
pub trait UpsampleOps: BackendInfo {
    /// x resized to [n, c, oh, ow].
    fn upsample2d(&self, x: &Tensor, g: &Resize) -> Result<Tensor> {
        let _ = x;
        Err(unsupported(self, g.mode.op()))
    }
    /// Each output gradient added onto the input pixels it was sampled
    /// from, with the same weights.
    fn upsample2d_backward(&self, dy: &Tensor, g: &Resize) -> Result<Tensor> {
        let _ = dy;
        Err(unsupported(self, g.mode.op()))
    }
}

/// Checks x [N, C, H, W] and the output size and returns the resize.
fn check(x: &Tensor, out_hw: [usize; 2], mode: Mode) -> Result<Resize> {
    let op = mode.op();
    expect_rank(op, "input [N, C, H, W]", x, 4)?;
    let &[n, c, h, w] = x.dims() else {
        unreachable!("rank checked above")
    };
    if h == 0 || w == 0 || out_hw.contains(&0) {
        return Err(Error::shape(
            op,
            format!(
                "input {:?} and output size {out_hw:?} must have non-empty planes",
                x.dims()
            ),
        ));
    }
    Ok(Resize {
        n,
        c,
        h,
        w,
        oh: out_hw[0],
        ow: out_hw[1],
        mode,
    })
}

/// The gradient of a resize output: the input's dtype and device, the
/// output's shape.
fn check_grad(dy: &Tensor, x: (DType, Device), g: &Resize) -> Result<()> {
    GradSpec::new(x.0, x.1, &[g.n, g.c, g.oh, g.ow]).check(g.mode.op(), dy)
}

/// Resizes x to `out_hw` with its backward.
fn upsample(x: &Tensor, out_hw: [usize; 2], mode: Mode) -> Result<Tensor> {
    let g = check(x, out_hw, mode)?;
    let op = mode.op();
    on_backend!(x.device(), b => crate::trace::op(op, "forward", b.name(), &[x], || {
        let y = b.upsample2d(x, &g)?;
        let xs = (x.dtype(), x.device());
        Ok(record(y, op, &[x], move |dy| {
            check_grad(dy, xs, &g)?;
            Ok(vec![Some(b.upsample2d_backward(dy, &g)?)])
        }))
    }))
}

impl Tensor {
    /// Nearest-neighbour resize of x [N, C, H, W] to [N, C, out_h, out_w],
    /// exactly `F.interpolate(x, size=out_hw, mode="nearest")`: output
    /// (oy, ox) copies input (sy, sx) with, per axis,
    /// `s = d` when out == in, `s = d / 2` when out == 2*in, else
    /// `s = min(floor(f32(d) * (f32(in) / f32(out))), in - 1)` evaluated in
    /// f32 for every dtype (so non-integer ratios pick PyTorch's rows; for
    /// f64 this is PyTorch's f32 rule, which its own f64 forward leaves when
    /// out_h + out_w > 128, see `nearest_idx` in cpu.rs).
    /// Backward: each input pixel gets the sum of the gradients of the
    /// outputs that copied it. f16/bf16 compute in f32.
    pub fn upsample_nearest2d(&self, out_hw: [usize; 2]) -> Result<Tensor> {
        upsample(self, out_hw, Mode::Nearest { scale_factor: None })
    }

    /// Nearest upsampling by an integer factor (the FPN's top-down 2x):
    /// [N, C, H, W] -> [N, C, H*scale, W*scale], exactly
    /// `F.interpolate(x, scale_factor=scale, mode="nearest")`, i.e. the rule
    /// of `upsample_nearest2d` with `f32(1 / scale)` as the ratio.
    pub fn upsample_nearest2d_scale(&self, scale: usize) -> Result<Tensor> {
        const OP: &str = "upsample_nearest2d";
        if scale == 0 {
            return Err(Error::arg(OP, "scale factor must be >= 1, got 0"));
        }
        expect_rank(OP, "input [N, C, H, W]", self, 4)?;
        let d = self.dims();
        let mode = Mode::Nearest {
            scale_factor: Some(scale as f64),
        };
        upsample(self, [d[2] * scale, d[3] * scale], mode)
    }

    /// Bilinear resize of x [N, C, H, W] to [N, C, out_h, out_w], exactly
    /// `F.interpolate(x, size=out_hw, mode="bilinear", align_corners=...)`.
    /// Per axis, output index d samples the input at
    /// `src = d * (in - 1)/(out - 1)` (align_corners; 0 when out == 1) or
    /// `src = max((d + 0.5) * in/out - 0.5, 0)`, between pixels
    /// `i0 = min(floor(src), in - 1)` and `i1 = min(i0 + 1, in - 1)` with
    /// weights `1 - l, l`, `l = clamp(src - i0, 0, 1)`; out == in copies.
    /// The weights are computed in the compute type (f32, or f64 for f64).
    /// Backward scatters the gradient with the same weights.
    pub fn upsample_bilinear2d(&self, out_hw: [usize; 2], align_corners: bool) -> Result<Tensor> {
        upsample(self, out_hw, Mode::Bilinear { align_corners })
    }
}
