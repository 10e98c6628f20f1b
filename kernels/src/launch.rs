//! Launch-shape arithmetic shared by the kernel families: pure functions,
//! so the grid/block choices are unit-tested without a GPU. A shape only
//! one family uses lives in that family's module (`families/<name>.rs`).
//!
//! Kernels loop (grid-stride over elements, rows or channel groups), so a
//! shape only decides speed, never correctness — except the block size of
//! the shared-memory reductions, which must be exactly `BLOCK_THREADS`.
//! The kernels' own rule for their 128-bit path is mirrored by
//! [`pack_width`]; the host uses it to size grids.

use crate::error::{Error, Result};

/// `SLMLP_BLOCK` in common.cuh: threads of every block.
pub const BLOCK_THREADS: u32 = 256;
/// `SLMLP_PACK` in common.cuh: elements per vector pack.
pub const PACK: usize = 8;
/// Resident 256-thread blocks per SM at full occupancy (2048 threads / 256).
pub(crate) const BLOCKS_PER_SM: u32 = 8;
/// Grid-stride kernels launch at most this many full waves; beyond that
/// each thread just loops (cheaper than retiring and launching blocks).
pub(crate) const MAX_WAVES: u32 = 4;
/// What the grid is sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    pub sm_count: u32,
}

impl Gpu {
    /// H100 SXM/PCIe 80GB as used for the project's checks (docs/DESIGN.md §3).
    pub const H100: Gpu = Gpu { sm_count: 132 };
}

/// A kernel launch: grid and block in (x, y, z), dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchShape {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_mem_bytes: u32,
}

impl LaunchShape {
    pub(crate) fn new(grid: (u32, u32, u32), block: (u32, u32, u32)) -> LaunchShape {
        LaunchShape {
            grid,
            block,
            shared_mem_bytes: 0,
        }
    }
    pub fn threads_per_block(&self) -> u32 {
        self.block.0 * self.block.1 * self.block.2
    }
    pub fn blocks(&self) -> u64 {
        self.grid.0 as u64 * self.grid.1 as u64 * self.grid.2 as u64
    }
}

/// The pack width the kernels use for these operands: `PACK` when every
/// pointer is 16-byte aligned and `channels` (if the kernel has them)
/// divides by `PACK`, else 1. Same rule as the `aligned16` checks in .cu.
pub fn pack_width(ptrs: &[usize], channels: Option<usize>) -> usize {
    let aligned = ptrs.iter().all(|p| p % 16 == 0);
    let chan_ok = channels.is_none_or(|c| c % PACK == 0);
    if aligned && chan_ok {
        PACK
    } else {
        1
    }
}

pub(crate) fn to_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Shape(format!(
            "{what} = {v} does not fit the kernels' int32 parameter"
        ))
    })
}

fn grid_cap(gpu: &Gpu) -> u64 {
    (gpu.sm_count * BLOCKS_PER_SM * MAX_WAVES) as u64
}

/// 1-D grid-stride launch over `n` elements moved `pack` at a time:
/// elementwise ops, casts, bn_fwd_apply, bn_bwd_dx, gap_bwd, pooling (pack
/// 1), sgd_step, sum_partial. None when n == 0 (launch nothing).
pub fn elementwise(n: usize, pack: usize, gpu: &Gpu) -> Option<LaunchShape> {
    if n == 0 {
        return None;
    }
    let units = n.div_ceil(pack.max(1)) as u64;
    let blocks = units
        .div_ceil(BLOCK_THREADS as u64)
        .min(grid_cap(gpu))
        .max(1);
    Some(LaunchShape::new(
        (blocks as u32, 1, 1),
        (BLOCK_THREADS, 1, 1),
    ))
}

/// The (channel lanes, row lanes) block of the NHWC column reductions:
/// enough lanes to cover the channel packs (up to a warp's 32), the rest of
/// the 256 threads on rows.
pub(crate) fn column_block(c: usize, pack: usize) -> (u32, u32) {
    let packs = c.div_ceil(pack.max(1)).max(1);
    let bx = packs.next_power_of_two().min(32) as u32;
    (bx, BLOCK_THREADS / bx)
}

/// One block per row, grid-stride beyond 2^31 - 1 rows (xent_fwd,
/// xent_bwd, sum_rows).
pub fn rows(n_rows: usize) -> Option<LaunchShape> {
    if n_rows == 0 {
        return None;
    }
    let blocks = n_rows.min(i32::MAX as usize) as u32;
    Some(LaunchShape::new((blocks, 1, 1), (BLOCK_THREADS, 1, 1)))
}

/// One block (sum_finalize, xent_finalize).
pub fn single_block() -> LaunchShape {
    LaunchShape::new((1, 1, 1), (BLOCK_THREADS, 1, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Gpu = Gpu::H100;

    #[test]
    fn pack_width_follows_the_kernels_rule() {
        assert_eq!(pack_width(&[0x1000, 0x2010], Some(64)), 8);
        assert_eq!(
            pack_width(&[0x1000, 0x2008], Some(64)),
            1,
            "8-byte aligned view"
        );
        assert_eq!(pack_width(&[0x1000], Some(12)), 1, "C % 8 != 0");
        assert_eq!(pack_width(&[0x1000], None), 8);
        assert_eq!(pack_width(&[], Some(3)), 1);
    }

    #[test]
    fn elementwise_covers_small_and_caps_large() {
        assert_eq!(elementwise(0, 8, &G), None);
        let s = elementwise(1, 8, &G).unwrap();
        assert_eq!((s.grid, s.block), ((1, 1, 1), (256, 1, 1)));
        // 256*56*56*64 bf16 elements: 6.4M packs -> capped at 4 waves
        let s = elementwise(256 * 56 * 56 * 64, 8, &G).unwrap();
        assert_eq!(s.grid.0, 132 * 8 * 4);
        // exactly one pack per thread below the cap
        let s = elementwise(256 * 8 * 100, 8, &G).unwrap();
        assert_eq!(s.grid.0, 100);
        let s = elementwise(256 * 100 + 1, 1, &G).unwrap();
        assert_eq!(s.grid.0, 101);
    }

    #[test]
    fn rows_and_single_block() {
        assert_eq!(rows(0), None);
        assert_eq!(rows(1000).unwrap().grid.0, 1000);
        assert_eq!(single_block().blocks(), 1);
    }
}
