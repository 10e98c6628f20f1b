//! BatchNorm over NHWC activations (batchnorm.cu): the launch shapes of its
//! column reductions, the workspace size and the training / eval forward
//! and backward launchers.

use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::error::{Error, Result};
use crate::launch::{
    self, column_block, to_i32, Gpu, LaunchShape, BLOCKS_PER_SM, BLOCK_THREADS, MAX_WAVES,
};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("batchnorm",
    typed ["bn_fwd_stats", "bn_fwd_finalize", "bn_fwd_apply", "bn_bwd_reduce", "bn_bwd_dx"]
    untyped ["bn_eval_prepare", "bn_bwd_finalize"]);

/// Reductions keep at least this many rows per row lane: fewer would make
/// the partial buffer and the finalize pass grow for nothing.
const MIN_ROWS_PER_LANE: usize = 4;

/// Channels summed per block of the finalize kernels (one warp each).
pub const FINALIZE_CHANNELS_PER_BLOCK: u32 = BLOCK_THREADS / 32;

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

/// The [2][C][S] partials of bn_fwd_stats / bn_bwd_reduce over [M, C],
/// for whichever pack width the kernel's own alignment test picks.
fn partial_floats(m: usize, c: usize, gpu: &Gpu) -> Result<usize> {
    let mut partial = 0;
    for pack in [1, launch::PACK] {
        partial = partial.max(nhwc_channel_reduce(m, c, pack, gpu)?.partial_floats(c));
    }
    Ok(partial)
}

/// Floats of f32 workspace a training BatchNorm forward over [M, C] needs:
/// the partials of bn_fwd_stats, nothing else (mean, invstd and scale are
/// the caller's outputs). Eval mode needs no workspace.
pub fn bn_fwd_workspace_floats(m: usize, c: usize, gpu: &Gpu) -> Result<usize> {
    partial_floats(m, c, gpu)
}

/// Floats of f32 workspace a BatchNorm backward over [M, C] needs: the
/// partials of bn_bwd_reduce rounded up to 16 bytes, then the 3*C dx
/// coefficients of bn_bwd_finalize (16-byte aligned for bn_bwd_dx's vector
/// loads).
pub fn bn_bwd_workspace_floats(m: usize, c: usize, gpu: &Gpu) -> Result<usize> {
    Ok(partial_floats(m, c, gpu)?.next_multiple_of(4) + 3 * c)
}

/// Operands of a BatchNorm forward over x viewed as [M, C] (NHWC).
#[derive(Debug, Clone, Copy)]
pub struct BnForward {
    pub x: DevPtr,
    /// 0, or the residual of the add+ReLU variant (x's shape and dtype).
    pub residual: DevPtr,
    /// f32 [C] each; weight/bias may be 0 (no affine).
    pub weight: DevPtr,
    pub bias: DevPtr,
    /// f32 [C], only read: in training the old running statistics (read
    /// when `new_running_*` are given), in eval the statistics used.
    pub running_mean: DevPtr,
    pub running_var: DevPtr,
    /// Training: f32 [C] outputs, the updated running statistics, separate
    /// from `running_*` (the op is functional); 0 and 0: not tracked.
    /// Unused in eval.
    pub new_running_mean: DevPtr,
    pub new_running_var: DevPtr,
    pub y: DevPtr,
    /// f32 [C] outputs saved for backward: the statistics used (batch or
    /// running) and scale = invstd * weight, which y was computed with (the
    /// BN+ReLU backward recomputes its mask from it).
    pub mean: DevPtr,
    pub invstd: DevPtr,
    pub scale: DevPtr,
    /// Training: f32, `bn_fwd_workspace_floats(m, c)` long; eval: unused.
    pub workspace: DevPtr,
    pub m: usize,
    pub c: usize,
    pub momentum: f32,
    pub eps: f32,
    pub relu: bool,
    pub training: bool,
}

impl BnForward {
    /// The operand rules a null pointer would break on the device.
    fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Shape(format!("bn_forward: {what}")));
        if self.x == 0 || self.y == 0 || self.mean == 0 || self.invstd == 0 || self.scale == 0 {
            return bad("x, y, mean, invstd and scale are required");
        }
        if !self.training {
            if self.running_mean == 0 || self.running_var == 0 {
                return bad("eval reads running_mean and running_var: both are required");
            }
            return Ok(());
        }
        if self.workspace == 0 {
            return bad("training needs a workspace (bn_fwd_workspace_floats)");
        }
        check_new_running(
            "bn_forward",
            [self.running_mean, self.running_var],
            [self.new_running_mean, self.new_running_var],
        )
    }
}

/// The running-statistics operands of a training forward: the new mean and
/// variance both or neither (not tracked), and when given, the old ones
/// present and distinct from them (the kernel reads old, writes new).
pub(crate) fn check_new_running(op: &str, old: [DevPtr; 2], new: [DevPtr; 2]) -> Result<()> {
    let bad = |what: &str| Err(Error::Shape(format!("{op}: {what}")));
    let [nm, nv] = new;
    if (nm == 0) != (nv == 0) {
        return bad("new_running_mean and new_running_var go together");
    }
    if nm != 0 && (old[0] == 0 || old[1] == 0) {
        return bad("new running statistics need the old ones (running_mean, running_var)");
    }
    if nm != 0 && (nm == old[0] || nv == old[1]) {
        return bad("the new running statistics must not be the old buffers");
    }
    Ok(())
}

/// Operands of the matching backward.
#[derive(Debug, Clone, Copy)]
pub struct BnBackward {
    pub x: DevPtr,
    pub dy: DevPtr,
    /// add+ReLU: the forward output y (its > 0 mask); else 0.
    pub out: DevPtr,
    /// BN+ReLU: the mask is recomputed from x, mean, `scale` and `bias`
    /// exactly as the forward computed y (no read of y); `out` must be 0.
    pub relu: bool,
    /// add+ReLU: receives the residual's gradient (dy masked); else 0.
    pub dresidual: DevPtr,
    pub mean: DevPtr,
    pub invstd: DevPtr,
    /// f32 [C]: the forward's saved scale (required when relu, else unused)
    /// and the bias the forward read (0: none, as in the forward).
    pub scale: DevPtr,
    pub bias: DevPtr,
    pub weight: DevPtr,
    pub dx: DevPtr,
    /// f32 [C] or 0 (not needed).
    pub dweight: DevPtr,
    pub dbias: DevPtr,
    /// f32, `bn_bwd_workspace_floats(m, c)` long.
    pub workspace: DevPtr,
    pub m: usize,
    pub c: usize,
    pub training: bool,
}

impl BnBackward {
    /// The operand rules a null pointer would break on the device.
    fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Shape(format!("bn_backward: {what}")));
        if self.x == 0 || self.dy == 0 || self.mean == 0 || self.invstd == 0 {
            return bad("x, dy, mean and invstd are required");
        }
        if self.workspace == 0 {
            return bad("a workspace (bn_bwd_workspace_floats) is required");
        }
        if self.relu && self.out != 0 {
            return bad("one ReLU mask: relu (recomputed) or out (add+ReLU), not both");
        }
        if self.relu && self.scale == 0 {
            return bad("relu recomputes the mask from the forward's scale: it is required");
        }
        if self.dresidual != 0 && self.out == 0 {
            return bad("dresidual (add+ReLU) needs the forward output out");
        }
        Ok(())
    }
}

impl KernelLibrary {
    /// BatchNorm (+ReLU, +add+ReLU) forward: training runs stats ->
    /// finalize -> apply, eval runs prepare -> apply (batchnorm.cu).
    ///
    /// # Safety
    /// Every non-zero pointer must be a live device allocation of this
    /// context with the documented size and dtype, not written concurrently.
    pub unsafe fn bn_forward(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: &BnForward,
    ) -> Result<()> {
        a.check()?;
        let (m, c) = (a.m as i64, to_i32("C", a.c)?);
        let pack = launch::pack_width(&[a.x as usize, a.y as usize], Some(a.c));
        let sfx = dtype.suffix();
        if a.training {
            // Shapes mirror the kernels' own vector-path rules (speed only:
            // the kernels loop, any grid is correct).
            let stats_pack = launch::pack_width(&[a.x as usize], Some(a.c));
            let reduce = nhwc_channel_reduce(a.m, a.c, stats_pack, &self.gpu())?;
            let splits = reduce.splits as i32;
            let f = self.function(&format!("bn_fwd_stats_{sfx}"))?;
            let mut b = stream.launch_builder(&f);
            b.arg(&a.x).arg(&m).arg(&c).arg(&a.workspace);
            b.launch(config(reduce.launch))
                .map_err(driver("bn_fwd_stats"))?;

            let f = self.function(&format!("bn_fwd_finalize_{sfx}"))?;
            let mut b = stream.launch_builder(&f);
            b.arg(&a.x)
                .arg(&a.workspace)
                .arg(&splits)
                .arg(&m)
                .arg(&c)
                .arg(&a.weight);
            b.arg(&a.momentum)
                .arg(&a.eps)
                .arg(&a.mean)
                .arg(&a.invstd)
                .arg(&a.scale);
            b.arg(&a.running_mean)
                .arg(&a.running_var)
                .arg(&a.new_running_mean)
                .arg(&a.new_running_var);
            b.launch(config(channel_finalize(a.c)))
                .map_err(driver("bn_fwd_finalize"))?;
        } else {
            let f = self.function("bn_eval_prepare")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&a.running_mean)
                .arg(&a.running_var)
                .arg(&a.weight)
                .arg(&a.eps)
                .arg(&c);
            b.arg(&a.mean).arg(&a.invstd).arg(&a.scale);
            b.launch(config(per_channel(a.c)))
                .map_err(driver("bn_eval_prepare"))?;
        }
        let Some(shape) = launch::elementwise(a.m * a.c, pack, &self.gpu()) else {
            return Ok(());
        };
        let relu = a.relu as i32;
        let f = self.function(&format!("bn_fwd_apply_{sfx}"))?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.x)
            .arg(&a.residual)
            .arg(&a.mean)
            .arg(&a.scale)
            .arg(&a.bias)
            .arg(&a.y);
        b.arg(&m).arg(&c).arg(&relu);
        b.launch(config(shape)).map_err(driver("bn_fwd_apply"))?;
        Ok(())
    }

    /// BatchNorm backward: reduce -> finalize -> dx (batchnorm.cu).
    ///
    /// # Safety
    /// As [`KernelLibrary::bn_forward`].
    pub unsafe fn bn_backward(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: &BnBackward,
    ) -> Result<()> {
        a.check()?;
        let (m, c) = (a.m as i64, to_i32("C", a.c)?);
        let pack = launch::pack_width(&[a.x as usize, a.dy as usize, a.dx as usize], Some(a.c));
        let reduce = nhwc_channel_reduce(a.m, a.c, pack, &self.gpu())?;
        let ws_floats = bn_bwd_workspace_floats(a.m, a.c, &self.gpu())?;
        let coef = a.workspace + ((ws_floats - 3 * a.c) * 4) as u64;
        let relu = a.relu as i32;
        let sfx = dtype.suffix();

        let f = self.function(&format!("bn_bwd_reduce_{sfx}"))?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.x)
            .arg(&a.dy)
            .arg(&a.out)
            .arg(&a.dresidual)
            .arg(&a.mean)
            .arg(&a.scale)
            .arg(&a.bias)
            .arg(&relu);
        b.arg(&m).arg(&c).arg(&a.workspace);
        b.launch(config(reduce.launch))
            .map_err(driver("bn_bwd_reduce"))?;

        let (splits, training) = (reduce.splits as i32, a.training as i32);
        let f = self.function("bn_bwd_finalize")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.workspace)
            .arg(&splits)
            .arg(&m)
            .arg(&c)
            .arg(&a.weight)
            .arg(&a.invstd);
        b.arg(&training).arg(&a.dweight).arg(&a.dbias).arg(&coef);
        b.launch(config(channel_finalize(a.c)))
            .map_err(driver("bn_bwd_finalize"))?;

        if a.dx == 0 {
            return Ok(());
        }
        // add+ReLU: the reduce already wrote the masked gradient to
        // dresidual (relu is false there).
        let (g, mask) = if a.dresidual != 0 {
            (a.dresidual, 0u64)
        } else {
            (a.dy, a.out)
        };
        let Some(shape) = launch::elementwise(a.m * a.c, pack, &self.gpu()) else {
            return Ok(());
        };
        let f = self.function(&format!("bn_bwd_dx_{sfx}"))?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.x)
            .arg(&g)
            .arg(&mask)
            .arg(&a.mean)
            .arg(&a.scale)
            .arg(&a.bias)
            .arg(&relu);
        b.arg(&coef).arg(&a.dx).arg(&m).arg(&c);
        b.launch(config(shape)).map_err(driver("bn_bwd_dx"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const G: Gpu = Gpu::H100;

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
        // conv5_x: the pack-8 partials are the larger (264 splits of 8
        // channel groups; pack 1 has 64 groups, so 2112 / 64 = 33 splits).
        // The forward needs just them, the backward the 3*C coefficients too
        // (2*2048*264 is a multiple of 4: no padding).
        let (m, c) = (256 * 49, 2048);
        assert_eq!(nhwc_channel_reduce(m, c, 1, &G).unwrap().splits, 33);
        assert_eq!(bn_fwd_workspace_floats(m, c, &G).unwrap(), 2 * 2048 * 264);
        assert_eq!(
            bn_bwd_workspace_floats(m, c, &G).unwrap(),
            2 * 2048 * 264 + 3 * 2048
        );
        // C = 3 (scalar path only, one split of 3 rows): 2*3 = 6 partials,
        // padded to 8 before the coefficients in the backward.
        assert_eq!(bn_fwd_workspace_floats(3, 3, &G).unwrap(), 6);
        assert_eq!(bn_bwd_workspace_floats(3, 3, &G).unwrap(), 8 + 9);
    }

    #[test]
    fn workspace_covers_both_pack_widths() {
        let (m, c) = (256 * 56 * 56, 64);
        let f = bn_fwd_workspace_floats(m, c, &G).unwrap();
        let w = bn_bwd_workspace_floats(m, c, &G).unwrap();
        for pack in [1, launch::PACK] {
            let r = nhwc_channel_reduce(m, c, pack, &G).unwrap();
            assert!(f >= r.partial_floats(c));
            assert!(w >= r.partial_floats(c) + 3 * c);
        }
        // the coefficient block starts 16-byte aligned, after the partials
        assert_eq!((w - 3 * c) % 4, 0);
        assert!(w - 3 * c >= f);
    }

    fn forward() -> BnForward {
        BnForward {
            x: 0x1000,
            residual: 0,
            weight: 0x2000,
            bias: 0x2100,
            running_mean: 0x2200,
            running_var: 0x2300,
            new_running_mean: 0x2400,
            new_running_var: 0x2500,
            y: 0x3000,
            mean: 0x2600,
            invstd: 0x2700,
            scale: 0x2800,
            workspace: 0x4000,
            m: 16,
            c: 8,
            momentum: 0.1,
            eps: 1e-5,
            relu: true,
            training: true,
        }
    }

    fn backward() -> BnBackward {
        BnBackward {
            x: 0x1000,
            dy: 0x3000,
            out: 0,
            relu: true,
            dresidual: 0,
            mean: 0x2600,
            invstd: 0x2700,
            scale: 0x2800,
            bias: 0x2100,
            weight: 0x2000,
            dx: 0x5000,
            dweight: 0,
            dbias: 0,
            workspace: 0x4000,
            m: 16,
            c: 8,
            training: true,
        }
    }

    #[test]
    fn forward_operands_are_checked() {
        assert!(forward().check().is_ok());
        // not tracking the running statistics, eval without a workspace
        let untracked = BnForward {
            new_running_mean: 0,
            new_running_var: 0,
            ..forward()
        };
        assert!(untracked.check().is_ok());
        let eval = BnForward {
            training: false,
            workspace: 0,
            ..untracked
        };
        assert!(eval.check().is_ok());
        let err = |a: BnForward| a.check().unwrap_err().to_string();
        assert!(err(BnForward { scale: 0, ..forward() }).contains("scale"));
        assert!(err(BnForward { workspace: 0, ..forward() }).contains("workspace"));
        assert!(err(BnForward {
            new_running_var: 0,
            ..forward()
        })
        .contains("go together"));
        assert!(err(BnForward {
            running_var: 0,
            ..forward()
        })
        .contains("the old ones"));
        assert!(err(BnForward {
            new_running_mean: 0x2200,
            ..forward()
        })
        .contains("must not be the old buffers"));
        assert!(err(BnForward {
            running_mean: 0,
            ..eval
        })
        .contains("eval reads"));
    }

    #[test]
    fn backward_operands_are_checked() {
        assert!(backward().check().is_ok());
        // add+ReLU: the mask from out, dresidual written; plain: no mask
        let add_relu = BnBackward {
            relu: false,
            out: 0x6000,
            dresidual: 0x7000,
            ..backward()
        };
        assert!(add_relu.check().is_ok());
        let plain = BnBackward {
            relu: false,
            scale: 0,
            bias: 0,
            ..backward()
        };
        assert!(plain.check().is_ok());
        let err = |a: BnBackward| a.check().unwrap_err().to_string();
        assert!(err(BnBackward { out: 0x6000, ..backward() }).contains("not both"));
        assert!(err(BnBackward { scale: 0, ..backward() }).contains("scale"));
        assert!(err(BnBackward {
            out: 0,
            ..add_relu
        })
        .contains("dresidual"));
        assert!(err(BnBackward {
            workspace: 0,
            ..backward()
        })
        .contains("workspace"));
    }
}
