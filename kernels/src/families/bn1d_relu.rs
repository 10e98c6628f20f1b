//! The projector's BatchNorm1d (+ReLU) over [N, C] (bn1d_relu.cu): its
//! registry entry and launch shape. No launcher yet: the engine runs 2-D
//! BatchNorm through batchnorm.cu with M = N (docs/KERNELS.md).

use crate::error::{Error, Result};
use crate::launch::{to_i32, Gpu, LaunchShape, BLOCK_THREADS, PACK};
use crate::registry::Kernel;

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
