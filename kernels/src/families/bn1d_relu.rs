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
    /// f32 [C], only read: the old running statistics.
    pub running_mean: DevPtr,
    pub running_var: DevPtr,
    /// f32 [C] outputs, separate from `running_*` (the op is functional):
    /// the updated running statistics (the unbiased variance feeds
    /// running_var); 0 and 0: not tracked.
    pub new_running_mean: DevPtr,
    pub new_running_var: DevPtr,
    /// f32 [C] outputs saved for backward: the batch mean,
    /// rsqrt(biased var + eps), as batchnorm.cu saves them, and
    /// scale = invstd * weight, which y was computed with.
    pub mean: DevPtr,
    pub invstd: DevPtr,
    pub scale: DevPtr,
    pub n: usize,
    pub c: usize,
    pub momentum: f32,
    pub eps: f32,
    pub relu: bool,
}

impl Bn1dForward {
    /// The operand rules a null pointer would break on the device.
    fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Shape(format!("bn1d_relu_forward: {what}")));
        if self.x == 0 || self.y == 0 || self.mean == 0 || self.invstd == 0 || self.scale == 0 {
            return bad("x, y, mean, invstd and scale are required");
        }
        super::batchnorm::check_new_running(
            "bn1d_relu_forward",
            [self.running_mean, self.running_var],
            [self.new_running_mean, self.new_running_var],
        )
    }
}

/// Operands of bn1d_relu_bwd (training): dy' = relu ? (y > 0 ? dy : 0) : dy
/// with y's mask recomputed from x, mean, scale and bias exactly as the
/// forward computed y (y is not read), then dweight = Σdy'(x-mean)·invstd,
/// dbias = Σdy' (each written when non-zero) and dx (always written).
#[derive(Debug, Clone, Copy)]
pub struct Bn1dBackward {
    /// x, dy, dx: dense row-major [N, C] of the launch dtype.
    pub x: DevPtr,
    pub dy: DevPtr,
    /// f32 [C] each (saved by the forward / the parameter).
    pub mean: DevPtr,
    pub invstd: DevPtr,
    pub weight: DevPtr,
    /// f32 [C]: the forward's saved scale (required when relu, else unused)
    /// and the bias the forward read (0: none, as in the forward).
    pub scale: DevPtr,
    pub bias: DevPtr,
    pub dx: DevPtr,
    /// f32 [C] or 0 (not needed).
    pub dweight: DevPtr,
    pub dbias: DevPtr,
    pub n: usize,
    pub c: usize,
    pub relu: bool,
}

impl Bn1dBackward {
    /// The operand rules a null pointer would break on the device.
    fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Shape(format!("bn1d_relu_backward: {what}")));
        if self.x == 0 || self.dy == 0 || self.dx == 0 || self.mean == 0 || self.invstd == 0 {
            return bad("x, dy, dx, mean and invstd are required");
        }
        if self.relu && self.scale == 0 {
            return bad("relu recomputes the mask from the forward's scale: it is required");
        }
        Ok(())
    }
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
    /// `bn1d_relu_fwd_<t>(x, weight, bias, running_mean_in, running_var_in,
    /// running_mean_out, running_var_out, momentum, eps, N, C, relu, y,
    /// mean_out, invstd_out, scale_out)`.
    ///
    /// # Safety
    /// Every non-zero pointer must be a live device allocation of this
    /// context with the documented size and dtype, not written concurrently.
    pub unsafe fn bn1d_relu_forward(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: &Bn1dForward,
    ) -> Result<()> {
        a.check()?;
        let shape = self.bn1d_shape(a.n, a.c, &[a.x, a.y, a.bias])?;
        // bn1d checked that both fit an i32
        let (n, c, relu) = (a.n as i32, a.c as i32, a.relu as i32);
        let f = self.function(&format!("bn1d_relu_fwd_{}", dtype.suffix()))?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.x).arg(&a.weight).arg(&a.bias);
        b.arg(&a.running_mean)
            .arg(&a.running_var)
            .arg(&a.new_running_mean)
            .arg(&a.new_running_var);
        b.arg(&a.momentum).arg(&a.eps).arg(&n).arg(&c).arg(&relu);
        b.arg(&a.y).arg(&a.mean).arg(&a.invstd).arg(&a.scale);
        b.launch(config(shape)).map_err(driver("bn1d_relu_fwd"))?;
        Ok(())
    }

    /// BatchNorm1d (+ReLU) training backward over [N, C] in one launch:
    /// `bn1d_relu_bwd_<t>(x, dy, mean, invstd, weight, scale, bias, N, C,
    /// relu, dx, dweight, dbias)`.
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
        a.check()?;
        let shape = self.bn1d_shape(a.n, a.c, &[a.x, a.dy, a.dx, a.mean])?;
        // bn1d checked that both fit an i32
        let (n, c, relu) = (a.n as i32, a.c as i32, a.relu as i32);
        let f = self.function(&format!("bn1d_relu_bwd_{}", dtype.suffix()))?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.x)
            .arg(&a.dy)
            .arg(&a.mean)
            .arg(&a.invstd)
            .arg(&a.weight)
            .arg(&a.scale)
            .arg(&a.bias);
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

    #[test]
    fn operands_are_checked() {
        let f = Bn1dForward {
            x: 0x1000,
            y: 0x3000,
            weight: 0x2000,
            bias: 0x2100,
            running_mean: 0x2200,
            running_var: 0x2300,
            new_running_mean: 0x2400,
            new_running_var: 0x2500,
            mean: 0x2600,
            invstd: 0x2700,
            scale: 0x2800,
            n: 16,
            c: 8,
            momentum: 0.1,
            eps: 1e-5,
            relu: true,
        };
        assert!(f.check().is_ok());
        let untracked = Bn1dForward {
            new_running_mean: 0,
            new_running_var: 0,
            ..f
        };
        assert!(untracked.check().is_ok());
        let err = |a: Bn1dForward| a.check().unwrap_err().to_string();
        assert!(err(Bn1dForward { scale: 0, ..f }).contains("scale"));
        assert!(err(Bn1dForward {
            new_running_mean: 0,
            ..f
        })
        .contains("go together"));
        assert!(err(Bn1dForward {
            running_mean: 0,
            ..f
        })
        .contains("the old ones"));
        assert!(err(Bn1dForward {
            new_running_var: 0x2300,
            ..f
        })
        .contains("must not be the old buffers"));

        let b = Bn1dBackward {
            x: 0x1000,
            dy: 0x3000,
            mean: 0x2600,
            invstd: 0x2700,
            weight: 0x2000,
            scale: 0x2800,
            bias: 0,
            dx: 0x5000,
            dweight: 0,
            dbias: 0,
            n: 16,
            c: 8,
            relu: true,
        };
        assert!(b.check().is_ok());
        assert!(Bn1dBackward {
            relu: false,
            scale: 0,
            ..b
        }
        .check()
        .is_ok());
        let err = |a: Bn1dBackward| a.check().unwrap_err().to_string();
        assert!(err(Bn1dBackward { scale: 0, ..b }).contains("scale"));
        assert!(err(Bn1dBackward { dx: 0, ..b }).contains("required"));
    }
}
