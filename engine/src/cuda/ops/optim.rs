//! Launchers for the optimizer and loss-scaling kernels: the fused SGD step
//! (kernels/cuda/sgd.cu) and the unscale + all-finite pass of dynamic loss
//! scaling (kernels/cuda/reduce.cu). They work on raw device buffers in
//! place, like the optimizer they serve: no autograd, no new tensors.
//!
//! Every launch goes on the GPU's one stream; nothing here waits for the
//! GPU except [`FiniteFlag::read`], which is the step's one sync.

use crate::cuda::launch::kerr;
use crate::cuda::{DeviceBlock, Gpu};
use crate::{Error, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use kernels::launch::{self, LaunchShape};

fn config(s: LaunchShape) -> LaunchConfig {
    LaunchConfig {
        grid_dim: s.grid,
        block_dim: s.block,
        shared_mem_bytes: s.shared_mem_bytes,
    }
}

/// `n` as the kernels' `i64` element count.
fn count(op: &'static str, n: usize) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::arg(op, format!("{n} elements exceed the i64 range")))
}

/// The scalar arguments of `sgd_step_<t>`, in the kernel's f32/int types.
/// The kernel computes `d = fmaf(weight_decay, p, g)` and
/// `buf = momentum * buf + (1 - dampening) * d`: the CPU's formula with one
/// rounding less in the decay term.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdHyper {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    /// 0 for params excluded from decay.
    pub weight_decay: f32,
    pub nesterov: bool,
    /// The param's first step: the kernel sets `buf = d` instead of reading it.
    pub first: bool,
}

/// The device buffers of one `sgd_step_<t>` launch. `p`, `g` and `buf` are
/// f32; `copy` has the dtype the entry point is named after. 0 stands for
/// an absent buffer (no momentum, no low-precision copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgdBuffers {
    pub p: u64,
    pub g: u64,
    pub buf: u64,
    pub copy: u64,
    pub n: usize,
}

/// The pack width `sgd_step` uses for these buffers (sgd.cu: PACK when
/// every non-null pointer is 16-byte aligned, else 1); the grid is sized
/// for it.
pub fn sgd_pack(b: &SgdBuffers) -> usize {
    let ptrs: Vec<usize> = [b.p, b.g, b.buf, b.copy]
        .iter()
        .enumerate()
        .filter(|&(i, &p)| i < 2 || p != 0)
        .map(|(_, &p)| p as usize)
        .collect();
    launch::pack_width(&ptrs, None)
}

/// Queues one fused SGD step over `b.n` elements: updates the f32 master
/// `p` and the momentum `buf` in place and, when `copy` is set, writes `p`
/// rounded to `copy_dtype` there (`sgd_step_<copy_dtype>`; use F32 with
/// `copy = 0` for a plain step).
///
/// # Safety
/// `p`, `g`, `buf` (if non-zero) hold `n` f32 each and `copy` (if non-zero)
/// `n` elements of `copy_dtype`, all live on `gpu` and not overlapping
/// (except that nothing else reads them while the kernel runs).
pub unsafe fn sgd_step(
    gpu: &Gpu,
    copy_dtype: kernels::device::Dtype,
    b: &SgdBuffers,
    h: &SgdHyper,
) -> Result<()> {
    const OP: &str = "sgd_step";
    if b.p == 0 || b.g == 0 {
        return Err(Error::arg(OP, "null parameter or gradient buffer"));
    }
    let Some(shape) = launch::elementwise(b.n, sgd_pack(b), &gpu.kernels.gpu()) else {
        return Ok(());
    };
    let name = format!("sgd_step_{}", copy_dtype.suffix());
    let f = gpu.kernels.function(&name).map_err(kerr(OP))?;
    let n = count(OP, b.n)?;
    let (nesterov, first) = (h.nesterov as i32, h.first as i32);
    gpu.bind()?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(&b.p).arg(&b.g).arg(&b.buf).arg(&b.copy).arg(&n);
    l.arg(&h.lr)
        .arg(&h.momentum)
        .arg(&h.dampening)
        .arg(&h.weight_decay);
    l.arg(&nesterov).arg(&first);
    l.launch(config(shape)).map_err(|e| gpu.err(&name, e))?;
    Ok(())
}

/// One int on the GPU that any kernel of a step sets to 1 when it meets an
/// inf/NaN (GradScaler's `found_inf`), zeroed when created.
pub struct FiniteFlag {
    gpu: &'static Gpu,
    block: DeviceBlock,
}

impl FiniteFlag {
    /// A fresh flag (queued zeroing: ordered before every later launch).
    pub fn new(gpu: &'static Gpu) -> Result<FiniteFlag> {
        let block = gpu.alloc(std::mem::size_of::<i32>())?;
        block.memset(0)?;
        Ok(FiniteFlag { gpu, block })
    }

    pub fn gpu(&self) -> &'static Gpu {
        self.gpu
    }

    /// Queues `g *= inv_scale` over `n` f32 in place, raising the flag on any
    /// non-finite result (`unscale_check_f32`).
    ///
    /// # Safety
    /// `g` holds `n` f32 on this flag's GPU, and nothing else uses it while
    /// the kernel runs.
    pub unsafe fn unscale_check_f32(&self, g: u64, n: usize, inv_scale: f32) -> Result<()> {
        const OP: &str = "unscale_check_f32";
        // reduce.cu moves float4s when g is 16-byte aligned; the pack only
        // sizes the grid (the kernel grid-strides).
        let pack = if g.is_multiple_of(16) { 4 } else { 1 };
        let Some(shape) = launch::elementwise(n, pack, &self.gpu.kernels.gpu()) else {
            return Ok(());
        };
        let f = self.gpu.kernels.function(OP).map_err(kerr(OP))?;
        let n = count(OP, n)?;
        let flag = self.block.ptr();
        self.gpu.bind()?;
        let mut l = self.gpu.stream.launch_builder(&f);
        l.arg(&g).arg(&n).arg(&inv_scale).arg(&flag);
        l.launch(config(shape)).map_err(|e| self.gpu.err(OP, e))?;
        Ok(())
    }

    /// Queues the all-finite check of `n` elements of `dtype` at `x`
    /// (`all_finite_<dtype>`), read-only.
    ///
    /// # Safety
    /// `x` holds `n` elements of `dtype` on this flag's GPU.
    pub unsafe fn check(&self, dtype: kernels::device::Dtype, x: u64, n: usize) -> Result<()> {
        const OP: &str = "all_finite";
        let pack = launch::pack_width(&[x as usize], None);
        let Some(shape) = launch::elementwise(n, pack, &self.gpu.kernels.gpu()) else {
            return Ok(());
        };
        let name = format!("all_finite_{}", dtype.suffix());
        let f = self.gpu.kernels.function(&name).map_err(kerr(OP))?;
        let n = count(OP, n)?;
        let flag = self.block.ptr();
        self.gpu.bind()?;
        let mut l = self.gpu.stream.launch_builder(&f);
        l.arg(&x).arg(&n).arg(&flag);
        l.launch(config(shape))
            .map_err(|e| self.gpu.err(&name, e))?;
        Ok(())
    }

    /// Waits for the queued checks and returns whether every value was
    /// finite (the flag is still 0). The only host sync of a step.
    pub fn read(&self) -> Result<bool> {
        let mut v = [0u8; 4];
        self.block.download_at(0, &mut v)?;
        Ok(i32::from_ne_bytes(v) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_pack_ignores_absent_buffers_and_needs_every_present_one_aligned() {
        let b = SgdBuffers {
            p: 0x1000,
            g: 0x2000,
            buf: 0,
            copy: 0,
            n: 100,
        };
        assert_eq!(sgd_pack(&b), launch::PACK);
        assert_eq!(
            sgd_pack(&SgdBuffers { buf: 0x3008, ..b }),
            1,
            "momentum buffer 8-byte aligned"
        );
        assert_eq!(
            sgd_pack(&SgdBuffers { copy: 0x4002, ..b }),
            1,
            "bf16 copy at an odd element"
        );
        assert_eq!(sgd_pack(&SgdBuffers { g: 0x2004, ..b }), 1);
        assert_eq!(
            sgd_pack(&SgdBuffers {
                buf: 0x3000,
                copy: 0x4000,
                ..b
            }),
            launch::PACK
        );
    }

    #[test]
    fn count_fits_i64() {
        assert_eq!(count("t", 25_557_032).unwrap(), 25_557_032);
    }
}
