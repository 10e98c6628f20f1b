//! The projector's BatchNorm1d (+ReLU) over [N, C] (bn1d_relu.cu): its
//! registry entry, launch shape and the forward / backward launchers. The
//! engine runs training BatchNorm1d(+ReLU) on [N, C] without a residual
//! through these, one launch per direction (docs/KERNELS.md).

use crate::error::{Error, Result};
use crate::launch::{self, to_i32, Gpu, LaunchShape, BLOCK_THREADS, PACK};
use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("bn1d_relu",
    typed ["bn1d_relu_fwd", "bn1d_relu_bwd"]
    untyped []);

/// bn1d_relu_fwd/bwd over [N, C]: each block owns channel groups for all N
/// rows. Channel lanes are picked so that there are about one block per SM
/// (small N*C is the case this kernel exists for), but never fewer than 2
/// lanes with pack 8 (bf16: 32 contiguous bytes per row = a full sector).
pub fn bn1d(n: usize, c: usize, pack: usize, gpu: &Gpu) -> Result<LaunchShape> {
    if n == 0 || c == 0 {
        return Err(Error::Shape(format!(
            "BatchNorm1d over an empty [N={n}, C={c}]"
        )));
    }
    to_i32("N", n)?;
    to_i32("C", c)?;
    let pack = pack.max(1);
    let packs = c.div_ceil(pack);
    let per_sm = (packs / gpu.sm_count.max(1) as usize).max(1);
    // largest power of two <= per_sm, within [min_lanes, 32]
    let mut bx = 1usize << (usize::BITS - 1 - per_sm.leading_zeros());
    let min_lanes = if pack == PACK { 2 } else { 32 };
    bx = bx
        .clamp(min_lanes, 32)
        .min(packs.next_power_of_two().max(1));
    let bx = bx as u32;
    let groups = c.div_ceil(bx as usize * pack);
    Ok(LaunchShape::new(
        (groups as u32, 1, 1),
        (bx, BLOCK_THREADS / bx, 1),
    ))
}

/// Operands of bn1d_relu_fwd (training) over x dense row-major [N, C].
#[derive(Debug, Clone, Copy)]
pub struct Bn1dForward {
    /// x and y: dense row-major [N, C] of the launch dtype.
    pub x: DevPtr,
    pub y: DevPtr,
    /// f32 [C] each.
    pub weight: DevPtr,
    pub bias: DevPtr,
    /// f32 [C], updated in place (the unbiased variance feeds running_var).
    pub running_mean: DevPtr,
    pub running_var: DevPtr,
    /// f32 [C] outputs saved for backward: the batch mean and
    /// rsqrt(biased var + eps), as batchnorm.cu saves them.
    pub mean: DevPtr,
    pub invstd: DevPtr,
    pub n: usize,
    pub c: usize,
    pub momentum: f32,
    pub eps: f32,
    pub relu: bool,
}

/// Operands of bn1d_relu_bwd (training): dy' = relu ? (y > 0 ? dy : 0) : dy,
/// then dweight = Σdy'(x-mean)·invstd, dbias = Σdy' (each written when
/// non-zero) and dx (always written).
#[derive(Debug, Clone, Copy)]
pub struct Bn1dBackward {
    /// x, dy, dx: dense row-major [N, C] of the launch dtype.
    pub x: DevPtr,
    /// The forward output (its > 0 mask), read only when relu; else 0.
    pub y: DevPtr,
    pub dy: DevPtr,
    /// f32 [C] each (saved by the forward / the parameter).
    pub mean: DevPtr,
    pub invstd: DevPtr,
    pub weight: DevPtr,
    pub dx: DevPtr,
    /// f32 [C] or 0 (not needed).
    pub dweight: DevPtr,
    pub dbias: DevPtr,
    pub n: usize,
    pub c: usize,
    pub relu: bool,
}

impl KernelLibrary {
    /// The [`bn1d`] shape with the pack width of the kernel's own vector
    /// test on `ptrs` (speed only: both widths are correct).
    fn bn1d_shape(&self, n: usize, c: usize, ptrs: &[DevPtr]) -> Result<LaunchShape> {
        let ptrs: Vec<usize> = ptrs.iter().map(|&p| p as usize).collect();
        let pack = launch::pack_width(&ptrs, Some(c));
        bn1d(n, c, pack, &self.gpu())
    }

    /// BatchNorm1d (+ReLU) training forward over [N, C] in one launch:
    /// `bn1d_relu_fwd_<t>(x, weight, bias, running_mean, running_var,
    /// momentum, eps, N, C, relu, y, mean_out, invstd_out)`.
    ///
    /// # Safety
    /// Every pointer must be a live device allocation of this context with
    /// the documented size and dtype, not written concurrently.
    pub unsafe fn bn1d_relu_forward(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: &Bn1dForward,
    ) -> Result<()> {
        let shape = self.bn1d_shape(a.n, a.c, &[a.x, a.y, a.bias])?;
        // bn1d checked that both fit an i32
        let (n, c, relu) = (a.n as i32, a.c as i32, a.relu as i32);
        let f = self.function(&format!("bn1d_relu_fwd_{}", dtype.suffix()))?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.x)
            .arg(&a.weight)
            .arg(&a.bias)
            .arg(&a.running_mean)
            .arg(&a.running_var);
        b.arg(&a.momentum).arg(&a.eps).arg(&n).arg(&c).arg(&relu);
        b.arg(&a.y).arg(&a.mean).arg(&a.invstd);
        b.launch(config(shape)).map_err(driver("bn1d_relu_fwd"))?;
        Ok(())
    }

    /// BatchNorm1d (+ReLU) training backward over [N, C] in one launch:
    /// `bn1d_relu_bwd_<t>(x, y, dy, mean, invstd, weight, N, C, relu, dx,
    /// dweight, dbias)`.
    ///
    /// # Safety
    /// Every non-zero pointer must be a live device allocation of this
    /// context with the documented size and dtype, not written concurrently.
    pub unsafe fn bn1d_relu_backward(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: &Bn1dBackward,
    ) -> Result<()> {
        let shape = self.bn1d_shape(a.n, a.c, &[a.x, a.y, a.dy, a.dx, a.mean])?;
        // bn1d checked that both fit an i32
        let (n, c, relu) = (a.n as i32, a.c as i32, a.relu as i32);
        let f = self.function(&format!("bn1d_relu_bwd_{}", dtype.suffix()))?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.x)
            .arg(&a.y)
            .arg(&a.dy)
            .arg(&a.mean)
            .arg(&a.invstd)
            .arg(&a.weight);
        b.arg(&n)
            .arg(&c)
            .arg(&relu)
            .arg(&a.dx)
            .arg(&a.dweight)
            .arg(&a.dbias);
        b.launch(config(shape)).map_err(driver("bn1d_relu_bwd"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const G: Gpu = Gpu::H100;

    #[test]
    fn bn1d_projector_shape() {
        // SL-MLP projector: N=256, C=2048, bf16
        let s = bn1d(256, 2048, 8, &G).unwrap();
        assert_eq!(s.block, (2, 128, 1));
        assert_eq!(s.grid.0, 128);
        // scalar path: a warp across channels for coalescing
        let s = bn1d(256, 2047, 1, &G).unwrap();
        assert_eq!(s.block, (32, 8, 1));
        assert_eq!(s.grid.0, 64);
        // few channels: lanes shrink to what exists
        let s = bn1d(64, 8, 8, &G).unwrap();
        assert_eq!(s.block.0 * s.block.1, BLOCK_THREADS);
        assert_eq!(s.grid.0, 1);
        assert!(bn1d(0, 8, 8, &G).is_err());
    }
}
