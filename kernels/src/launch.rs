//! Launch-shape arithmetic for every kernel in cuda/: pure functions, so the
//! grid/block choices are unit-tested without a GPU.
//!
//! Kernels loop (grid-stride over elements, rows or channel groups), so a
//! shape only decides speed, never correctness — except the block size of
//! the shared-memory reductions, which must be exactly `BLOCK_THREADS`.
//! The kernels' own rule for their 128-bit path is mirrored by
//! [`pack_width`]; the host uses it to size grids.

use crate::error::{Error, Result};

/// `SLMLP_BLOCK` in cuda/common.cuh: threads of every block.
pub const BLOCK_THREADS: u32 = 256;
/// `SLMLP_PACK` in cuda/common.cuh: elements per vector pack.
pub const PACK: usize = 8;
/// Resident 256-thread blocks per SM at full occupancy (2048 threads / 256).
const BLOCKS_PER_SM: u32 = 8;
/// Grid-stride kernels launch at most this many full waves; beyond that
/// each thread just loops (cheaper than retiring and launching blocks).
const MAX_WAVES: u32 = 4;
/// Reductions keep at least this many rows per row lane: fewer would make
/// the partial buffer and the finalize pass grow for nothing.
const MIN_ROWS_PER_LANE: usize = 4;
/// Channels summed per block of the finalize kernels (one warp each).
pub const FINALIZE_CHANNELS_PER_BLOCK: u32 = BLOCK_THREADS / 32;

/// What the grid is sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    pub sm_count: u32,
}

impl Gpu {
    /// H100 SXM/PCIe 80GB as used for the project's checks (DESIGN.md §3).
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
    fn new(grid: (u32, u32, u32), block: (u32, u32, u32)) -> LaunchShape {
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

fn to_i32(what: &str, v: usize) -> Result<i32> {
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
/// 1), sgd_step, sum_partial, all_finite. None when n == 0 (launch nothing).
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
fn column_block(c: usize, pack: usize) -> (u32, u32) {
    let packs = c.div_ceil(pack.max(1)).max(1);
    let bx = packs.next_power_of_two().min(32) as u32;
    (bx, BLOCK_THREADS / bx)
}

/// Shape of bn_fwd_stats / bn_bwd_reduce over x viewed as [M, C].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReduceShape {
    pub launch: LaunchShape,
    /// Row splits S (= grid.y): the partial workspace is [2][C][S] floats.
    pub splits: u32,
}

impl ReduceShape {
    pub fn partial_floats(&self, c: usize) -> usize {
        2 * c * self.splits as usize
    }
}

/// bn_fwd_stats / bn_bwd_reduce: block (bx, by) of 256, grid.x = channel
/// groups, grid.y = S row splits chosen to fill ~4 waves of the GPU while
/// keeping >= MIN_ROWS_PER_LANE rows per lane.
pub fn nhwc_channel_reduce(m: usize, c: usize, pack: usize, gpu: &Gpu) -> Result<ReduceShape> {
    if m == 0 || c == 0 {
        return Err(Error::Shape(format!(
            "channel reduction over an empty [M={m}, C={c}]"
        )));
    }
    to_i32("C", c)?;
    let (bx, by) = column_block(c, pack);
    let groups = c.div_ceil(bx as usize * pack.max(1)) as u64;
    let target = (gpu.sm_count * BLOCKS_PER_SM / 2 * MAX_WAVES) as u64;
    let by_rows = m.div_ceil(by as usize * MIN_ROWS_PER_LANE).max(1) as u64;
    let splits = target.div_ceil(groups).min(by_rows).clamp(1, 65535) as u32;
    let gx = u32::try_from(groups)
        .map_err(|_| Error::Shape(format!("C = {c} needs {groups} channel groups")))?;
    Ok(ReduceShape {
        launch: LaunchShape::new((gx, splits, 1), (bx, by, 1)),
        splits,
    })
}

/// bn_fwd_finalize / bn_bwd_finalize: one warp per channel.
pub fn channel_finalize(c: usize) -> LaunchShape {
    let blocks = (c as u64)
        .div_ceil(FINALIZE_CHANNELS_PER_BLOCK as u64)
        .max(1);
    LaunchShape::new((blocks as u32, 1, 1), (BLOCK_THREADS, 1, 1))
}

/// bn_eval_prepare and other one-thread-per-channel kernels.
pub fn per_channel(c: usize) -> LaunchShape {
    let blocks = (c as u64).div_ceil(BLOCK_THREADS as u64).max(1);
    LaunchShape::new((blocks as u32, 1, 1), (BLOCK_THREADS, 1, 1))
}

/// Floats of workspace one BatchNorm forward or backward needs besides its
/// outputs: the partials plus `coef` (3*C: the dx coefficients backward,
/// the per-channel scale forward uses the first C).
pub fn bn_workspace_floats(c: usize, shape: &ReduceShape) -> usize {
    shape.partial_floats(c) + 3 * c
}

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

/// gap_fwd over x [N, HW, C]: the column-reduction block, grid (channel
/// groups, N).
pub fn gap_fwd(n: usize, hw: usize, c: usize, pack: usize) -> Result<LaunchShape> {
    if n == 0 || hw == 0 || c == 0 {
        return Err(Error::Shape(format!(
            "global average pool over an empty [N={n}, HW={hw}, C={c}]"
        )));
    }
    to_i32("HW", hw)?;
    to_i32("C", c)?;
    if n > 65535 {
        return Err(Error::Shape(format!(
            "N = {n} exceeds grid.y (65535); split the batch"
        )));
    }
    let (bx, by) = column_block(c, pack);
    let groups = c.div_ceil(bx as usize * pack.max(1));
    Ok(LaunchShape::new((groups as u32, n as u32, 1), (bx, by, 1)))
}

/// xent_fwd / xent_bwd: one block per row (grid-stride beyond 2^31 - 1).
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

/// Most blocks (= f32 partials) of the two-launch whole-tensor sum: few
/// enough that sum_finalize's single block adds them quickly, enough to
/// fill an H100 several times over.
pub const SUM_MAX_PARTIALS: u32 = 1024;

/// sum_partial over `n` elements moved `pack` at a time: the elementwise
/// shape capped at [`SUM_MAX_PARTIALS`] blocks (grid.x = partial count).
/// None when n == 0.
pub fn sum_partial(n: usize, pack: usize, gpu: &Gpu) -> Option<LaunchShape> {
    let mut s = elementwise(n, pack, gpu)?;
    s.grid.0 = s.grid.0.min(SUM_MAX_PARTIALS);
    Some(s)
}

/// Output size of a pooling window along one axis (floor mode), or an error
/// with PyTorch's conditions (kernel, stride >= 1, padding <= kernel / 2).
pub fn pool_out(size: usize, kernel: usize, stride: usize, pad: usize) -> Result<usize> {
    if kernel == 0 || stride == 0 {
        return Err(Error::Shape(format!(
            "pool kernel {kernel} and stride {stride} must be >= 1"
        )));
    }
    if pad > kernel / 2 {
        return Err(Error::Shape(format!(
            "pool padding {pad} must be at most half the kernel {kernel}"
        )));
    }
    let padded = size + 2 * pad;
    if padded < kernel {
        return Err(Error::Shape(format!(
            "pool input {size} (+2*{pad} padding) is smaller than the kernel {kernel}"
        )));
    }
    Ok((padded - kernel) / stride + 1)
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
    fn nhwc_reduce_at_resnet50_shapes() {
        // conv2_x: N=256, 56x56, C=64, bf16 packs of 8: 8 channel lanes x 32 rows
        let m = 256 * 56 * 56;
        let r = nhwc_channel_reduce(m, 64, 8, &G).unwrap();
        assert_eq!(r.launch.block, (8, 32, 1));
        assert_eq!(r.launch.grid.0, 1);
        assert_eq!(r.splits, 132 * 4 * 4);
        assert_eq!(r.launch.threads_per_block(), BLOCK_THREADS);
        let rows_per_lane = m.div_ceil(r.splits as usize * 32);
        assert!(rows_per_lane >= MIN_ROWS_PER_LANE, "{rows_per_lane}");
        assert_eq!(r.partial_floats(64), 2 * 64 * 2112);

        // conv5_x: 7x7, C=2048: a full warp of lanes, 8 channel groups
        let r = nhwc_channel_reduce(256 * 49, 2048, 8, &G).unwrap();
        assert_eq!(r.launch.block, (32, 8, 1));
        assert_eq!(r.launch.grid.0, 8);
        assert_eq!(r.splits, 264);
        assert!(256 * 49 / (r.splits as usize * 8) >= MIN_ROWS_PER_LANE);

        // tiny: never more splits than rows allow, never zero
        let r = nhwc_channel_reduce(3, 5, 1, &G).unwrap();
        assert_eq!(r.splits, 1);
        assert_eq!(r.launch.block, (8, 32, 1));
        assert!(nhwc_channel_reduce(0, 64, 8, &G).is_err());
        assert!(nhwc_channel_reduce(10, 0, 8, &G).is_err());
    }

    #[test]
    fn reduce_grid_covers_every_channel() {
        for c in [1, 3, 7, 8, 9, 64, 100, 255, 256, 257, 1000, 2048, 4096] {
            for pack in [1, 8] {
                if pack == 8 && c % 8 != 0 {
                    continue;
                }
                let r = nhwc_channel_reduce(1000, c, pack, &G).unwrap();
                let (bx, by, _) = r.launch.block;
                assert_eq!(bx * by, BLOCK_THREADS, "c={c} pack={pack}");
                assert!(bx.is_power_of_two() && bx <= 32);
                let covered = r.launch.grid.0 as usize * bx as usize * pack;
                assert!(covered >= c, "c={c} pack={pack} covered={covered}");
                // no channel group is entirely idle
                assert!(covered - c < bx as usize * pack, "c={c} pack={pack}");
            }
        }
    }

    #[test]
    fn finalize_and_workspace() {
        assert_eq!(channel_finalize(64).grid.0, 8);
        assert_eq!(channel_finalize(65).grid.0, 9);
        assert_eq!(per_channel(2048).grid.0, 8);
        let r = nhwc_channel_reduce(256 * 49, 2048, 8, &G).unwrap();
        assert_eq!(bn_workspace_floats(2048, &r), 2 * 2048 * 264 + 3 * 2048);
    }

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
    fn sum_partial_caps_the_partial_count() {
        assert_eq!(sum_partial(0, 8, &G), None);
        assert_eq!(sum_partial(10, 8, &G).unwrap().grid.0, 1);
        // 256 * 8 * 300 elements: 300 blocks, under the cap
        assert_eq!(sum_partial(256 * 8 * 300, 8, &G).unwrap().grid.0, 300);
        let big = sum_partial(1 << 30, 8, &G).unwrap();
        assert_eq!(big.grid.0, SUM_MAX_PARTIALS);
        assert_eq!(big.threads_per_block(), BLOCK_THREADS);
    }

    #[test]
    fn gap_rows_and_pool_sizes() {
        let s = gap_fwd(256, 49, 2048, 8).unwrap();
        assert_eq!((s.grid, s.block), ((8, 256, 1), (32, 8, 1)));
        assert!(gap_fwd(70000, 49, 2048, 8).is_err());
        assert_eq!(rows(0), None);
        assert_eq!(rows(1000).unwrap().grid.0, 1000);
        // ResNet stem max pool: 112 -> 56 with k3 s2 p1
        assert_eq!(pool_out(112, 3, 2, 1).unwrap(), 56);
        assert_eq!(pool_out(7, 7, 1, 0).unwrap(), 1);
        assert!(pool_out(112, 3, 2, 2).is_err());
        assert!(pool_out(2, 5, 1, 1).is_err());
        assert!(pool_out(8, 0, 1, 0).is_err());
    }
}
