//! The optimizer primitives on the GPU: the fused SGD and LARS steps
//! (kernels/src/families/sgd.cu) and the unscale + all-finite pass of dynamic loss
//! scaling (kernels/src/families/reduce.cu), all writing device buffers in place.
//!
//! Every launch goes on the GPU's one stream; nothing here waits for the
//! GPU except [`FiniteFlag::read`], a loss-scaled step's one sync.

use super::{LarsHyper, OptimOps, SgdHyper};
use crate::backend::Cuda;
use crate::cuda::launch::cast;
use crate::cuda::launch::{empty_like, kdtype, kerr, with_strides_of};
use crate::cuda::tensor::{self as ct, ptr, storage_of};
use crate::cuda::{DeviceBlock, Gpu};
use crate::nn::Param;
use crate::{DType, Tensor};
use crate::{Error, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use kernels::launch::{self, LaunchShape};
use std::collections::HashMap;

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
struct SgdArgs {
    lr: f32,
    momentum: f32,
    dampening: f32,
    weight_decay: f32,
    nesterov: bool,
    /// The param's first step: the kernel sets `buf = d` instead of reading it.
    first: bool,
}

impl SgdArgs {
    /// Each setting's f32, as the host's f32 loop rounds them.
    fn new(h: &SgdHyper, first: bool) -> SgdArgs {
        SgdArgs {
            lr: h.lr as f32,
            momentum: h.momentum as f32,
            dampening: h.dampening as f32,
            weight_decay: h.weight_decay as f32,
            nesterov: h.nesterov,
            first,
        }
    }
}

/// The device buffers of one `sgd_step_<t>` launch. `p`, `g` and `buf` are
/// f32; `copy` has the dtype the entry point is named after. 0 stands for
/// an absent buffer (no momentum, no low-precision copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SgdBuffers {
    p: u64,
    g: u64,
    buf: u64,
    copy: u64,
    n: usize,
}

/// The pack width `sgd_step` uses for these buffers (sgd.cu: PACK when
/// every non-null pointer is 16-byte aligned, else 1); the grid is sized
/// for it.
fn sgd_pack(b: &SgdBuffers) -> usize {
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
unsafe fn sgd_step(
    gpu: &Gpu,
    copy_dtype: kernels::device::Dtype,
    b: &SgdBuffers,
    h: &SgdArgs,
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

/// Queues one LARS step over the dense f32 `p`, `g` and `buf` of `n`
/// elements (and `copy`, 0 or `n` elements of `copy_dtype`): the norms
/// and the trust ratio on the device unless the param is excluded (q = 1,
/// no decay), then `lars_step_<copy_dtype>`.
///
/// # Safety
/// As [`sgd_step`]; `buf` is non-zero and holds the momentum (zeros on a
/// first step).
unsafe fn lars_step(
    gpu: &'static Gpu,
    copy_dtype: kernels::device::Dtype,
    b: &SgdBuffers,
    h: &LarsHyper,
) -> Result<()> {
    const OP: &str = "lars_step";
    if b.p == 0 || b.g == 0 || b.buf == 0 {
        return Err(Error::arg(
            OP,
            "null parameter, gradient or momentum buffer",
        ));
    }
    let Some(shape) = launch::elementwise(b.n, 1, &gpu.kernels.gpu()) else {
        return Ok(());
    };
    let n = count(OP, b.n)?;
    let (wd, q) = if h.excluded {
        (0.0f32, None)
    } else {
        // per block (sum p², sum g²) in double, then the ratio, on the device
        let parts = shape
            .grid
            .0
            .min(kernels::families::reduce::SUM_MAX_PARTIALS);
        let partials = ct::alloc(gpu, DType::F64, 2 * parts as usize)?;
        let q = ct::alloc(gpu, DType::F32, 1)?;
        let f = gpu.kernels.function("lars_norms").map_err(kerr(OP))?;
        gpu.bind()?;
        let mut l = gpu.stream.launch_builder(&f);
        let out = partials.ptr();
        l.arg(&b.p).arg(&b.g).arg(&n).arg(&out);
        let norms = LaunchShape {
            grid: (parts, 1, 1),
            ..shape
        };
        l.launch(config(norms))
            .map_err(|e| gpu.err("lars_norms", e))?;
        let f = gpu.kernels.function("lars_trust").map_err(kerr(OP))?;
        let (count, qp) = (parts as i32, q.ptr());
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&out)
            .arg(&count)
            .arg(&h.eta)
            .arg(&h.weight_decay)
            .arg(&qp);
        l.launch(config(launch::single_block()))
            .map_err(|e| gpu.err("lars_trust", e))?;
        // both buffers are only read by launches queued before they drop
        (h.weight_decay as f32, Some(q))
    };
    let name = format!("lars_step_{}", copy_dtype.suffix());
    let f = gpu.kernels.function(&name).map_err(kerr(OP))?;
    let (lr, momentum) = (h.lr as f32, h.momentum as f32);
    let qp = q.as_ref().map_or(0, |q| q.ptr());
    gpu.bind()?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(&b.p).arg(&b.g).arg(&b.buf).arg(&b.copy).arg(&n);
    l.arg(&lr).arg(&momentum).arg(&wd).arg(&qp);
    l.launch(config(shape)).map_err(|e| gpu.err(&name, e))?;
    Ok(())
}

/// One int on the GPU that any kernel of a step sets to 1 when it meets an
/// inf/NaN (GradScaler's `found_inf`), zeroed when created.
struct FiniteFlag {
    gpu: &'static Gpu,
    block: DeviceBlock,
}

impl FiniteFlag {
    /// A fresh flag (queued zeroing: ordered before every later launch).
    fn new(gpu: &'static Gpu) -> Result<FiniteFlag> {
        let block = gpu.alloc(std::mem::size_of::<i32>())?;
        block.memset(0)?;
        Ok(FiniteFlag { gpu, block })
    }

    fn gpu(&self) -> &'static Gpu {
        self.gpu
    }

    /// Queues a read-only check of the `n` values of dtype `dt` at `x`,
    /// raising the flag on any non-finite one (reduce.cu's `all_finite_<t>`).
    ///
    /// # Safety
    /// `x` holds `n` dense values of `dt` on this flag's GPU.
    unsafe fn check(&self, x: u64, n: usize, dt: kernels::device::Dtype) -> Result<()> {
        const OP: &str = "all_finite";
        // reduce.cu moves packs when x is 16-byte aligned; the pack only
        // sizes the grid (the kernel grid-strides).
        let pack = if x.is_multiple_of(16) {
            16 / dt.size()
        } else {
            1
        };
        let Some(shape) = launch::elementwise(n, pack, &self.gpu.kernels.gpu()) else {
            return Ok(());
        };
        let name = format!("{OP}_{}", dt.suffix());
        let f = self.gpu.kernels.function(&name).map_err(kerr(OP))?;
        let n = count(OP, n)?;
        let flag = self.block.ptr();
        self.gpu.bind()?;
        let mut l = self.gpu.stream.launch_builder(&f);
        l.arg(&x).arg(&n).arg(&flag);
        l.launch(config(shape)).map_err(|e| self.gpu.err(OP, e))?;
        Ok(())
    }

    /// Queues `g *= inv_scale` over `n` f32 in place, raising the flag on any
    /// non-finite result (`unscale_check_f32`).
    ///
    /// # Safety
    /// `g` holds `n` f32 on this flag's GPU, and nothing else uses it while
    /// the kernel runs.
    unsafe fn unscale_check_f32(&self, g: u64, n: usize, inv_scale: f32) -> Result<()> {
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

    /// Waits for the queued checks and returns whether every value was
    /// finite (the flag is still 0). The only host sync of a step.
    fn read(&self) -> Result<bool> {
        let mut v = [0u8; 4];
        self.block.download_at(0, &mut v)?;
        Ok(i32::from_ne_bytes(v) == 0)
    }
}

/// A step's operands: the f32 master (the param's own storage when it is
/// f32, else an f32 copy), the f32 gradient in the master's element order,
/// and for an f16/bf16 param a fresh buffer for its new value. A strided
/// param is made dense once (the kernels walk flat buffers).
fn working_set(
    op: &'static str,
    p: &Param,
    g: &Tensor,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let mut value = p.get();
    if !matches!(value.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::dtype(
            op,
            format!("an f32, f16 or bf16 parameter on the GPU ({})", p.name()),
            value.dtype(),
        ));
    }
    if !ct::is_dense(value.layout()) {
        p.set(ct::to_default_layout(&value)?)?;
        value = p.get();
    }
    let low = value.dtype() != DType::F32;
    // f32: the param's own storage, stepped in place
    let master = if low {
        cast(&value, DType::F32)?
    } else {
        value.clone()
    };
    // element i of every operand must be the same logical element
    let g = with_strides_of(op, &cast(g, DType::F32)?, &master)?;
    let copy = if low {
        Some(empty_like(&master, value.dtype())?)
    } else {
        None
    };
    Ok((master, g, copy))
}

impl OptimOps for Cuda {
    /// One `sgd_step_<t>` launch. An f32 param's storage is stepped in
    /// place; f16/bf16 params through an f32 working copy whose rounding
    /// the same kernel writes into the new value, as the host rounds its
    /// f32 result.
    fn sgd_step(&self, p: &Param, g: &Tensor, m: &mut Option<Tensor>, h: &SgdHyper) -> Result<()> {
        const OP: &str = "sgd";
        let (master, g, copy) = working_set(OP, p, g)?;
        let gpu = ct::gpu_of(&master)?;
        let use_momentum = h.momentum != 0.0;
        let first = m.is_none();
        let new_buf = match m {
            Some(b) => Some(with_strides_of(OP, b, &master)?),
            // the kernel writes buf = d on a first step: no zeroing needed
            None if use_momentum => Some(empty_like(&master, DType::F32)?),
            None => None,
        };
        let bufs = SgdBuffers {
            p: ptr(&master)?,
            g: ptr(&g)?,
            buf: new_buf.as_ref().map(ptr).transpose()?.unwrap_or(0),
            copy: copy.as_ref().map(ptr).transpose()?.unwrap_or(0),
            n: master.numel(),
        };
        let copy_dtype = kdtype(OP, copy.as_ref().map_or(DType::F32, |c| c.dtype()))?;
        // SAFETY: master, grad, buf and copy are dense over the same layout
        // (numel elements each from their first element), live on `gpu`, and
        // are distinct buffers: master is the param's storage or a fresh
        // cast, grad and buf are separate allocations.
        unsafe { sgd_step(gpu, copy_dtype, &bufs, &SgdArgs::new(h, first))? };
        if new_buf.is_some() {
            *m = new_buf;
        }
        if let Some(c) = copy {
            p.set(c)?;
        }
        Ok(())
    }

    /// `lars_step_<t>` after the norms and trust ratio on the device; like
    /// [`OptimOps::sgd_step`], f32 params are stepped in their own storage,
    /// f16/bf16 ones through an f32 working copy.
    fn lars_step(
        &self,
        p: &Param,
        g: &Tensor,
        buf: &mut Option<Tensor>,
        h: &LarsHyper,
    ) -> Result<()> {
        const OP: &str = "lars";
        let (master, g, copy) = working_set(OP, p, g)?;
        let gpu = ct::gpu_of(&master)?;
        let new_buf = match buf {
            Some(b) => with_strides_of(OP, b, &master)?,
            // the momentum starts at zero
            None => {
                let b = empty_like(&master, DType::F32)?;
                storage_of(&b)?.block().memset(0)?;
                b
            }
        };
        let bufs = SgdBuffers {
            p: ptr(&master)?,
            g: ptr(&g)?,
            buf: ptr(&new_buf)?,
            copy: copy.as_ref().map(ptr).transpose()?.unwrap_or(0),
            n: master.numel(),
        };
        let copy_dtype = kdtype(OP, copy.as_ref().map_or(DType::F32, |c| c.dtype()))?;
        // SAFETY: as sgd_step's: master, grad, buf and copy are dense over
        // the same layout, live on `gpu`, distinct buffers.
        unsafe { lars_step(gpu, copy_dtype, &bufs, h)? };
        *buf = Some(new_buf);
        if let Some(c) = copy {
            p.set(c)?;
        }
        Ok(())
    }

    /// `unscale_check_f32` per gradient, raising one flag per GPU, read back
    /// once: the step's only sync. f32 gradients are rewritten in their own
    /// storage; f16/bf16 ones go through an f32 copy (multiplied and checked
    /// in f32, then rounded back: the host's arithmetic).
    fn unscale_and_check_finite(&self, grads: &[(Param, Tensor)], inv_scale: f64) -> Result<bool> {
        const OP: &str = "LossScaler::unscale";
        let inv_scale = inv_scale as f32;
        let mut views = Vec::with_capacity(grads.len());
        for (_, g) in grads {
            kdtype(OP, g.dtype())?;
            views.push((storage_of(g)?.ptr(), ptr(g)?, g.numel()));
        }
        let mut flags: Vec<FiniteFlag> = Vec::new();
        let mut unscaled_in_place = Vec::new();
        for (((p, g), how), view) in grads.iter().zip(plan(&views)).zip(&views) {
            // Done only counts when the earlier twin really was rewritten in
            // place (not when it went through a copy)
            if how == Plan::Done && unscaled_in_place.contains(view) {
                continue;
            }
            let gpu = ct::gpu_of(g)?;
            let flag = flag_for(&mut flags, gpu)?;
            // the f32 buffer the kernel rewrites, and whether it is g itself
            let (work, in_place) = if g.dtype() != DType::F32 {
                (cast(g, DType::F32)?, false)
            } else if how != Plan::InPlace || !ct::is_dense(g.layout()) {
                (
                    ct::copy_to_strides(g, &crate::layout::gpu_strides(g.dims()))?,
                    false,
                )
            } else {
                (g.clone(), true)
            };
            if !ct::is_dense(work.layout()) {
                return Err(Error::arg(
                    OP,
                    format!(
                        "{}: gradient {:?} is not dense after copying",
                        p.name(),
                        g.dims()
                    ),
                ));
            }
            // SAFETY: work is dense (numel f32 from ptr) on flag's GPU, and
            // is either a fresh buffer or a gradient no other gradient
            // views (plan).
            unsafe { flag.unscale_check_f32(ptr(&work)?, work.numel(), inv_scale)? };
            if g.dtype() != DType::F32 {
                p.set_grad(Some(cast(&work, g.dtype())?));
            } else if in_place {
                unscaled_in_place.push(*view);
            } else {
                p.set_grad(Some(work));
            }
        }
        let mut finite = true;
        for f in &flags {
            finite &= f.read()?;
        }
        Ok(finite)
    }

    fn all_finite(&self, tensors: &[Tensor]) -> Result<bool> {
        const OP: &str = "all_finite";
        let mut flags: Vec<FiniteFlag> = Vec::new();
        for t in tensors.iter().filter(|t| t.dtype().is_float()) {
            let gpu = ct::gpu_of(t)?;
            let flag = flag_for(&mut flags, gpu)?;
            let dt = kdtype(OP, t.dtype())?;
            // a dense tensor is checked where it is, another through a copy
            let work = if ct::is_dense(t.layout()) {
                t.clone()
            } else {
                ct::copy_to_strides(t, &crate::layout::gpu_strides(t.dims()))?
            };
            if !ct::is_dense(work.layout()) {
                return Err(Error::arg(
                    OP,
                    format!("tensor {:?} is not dense after copying", t.dims()),
                ));
            }
            // SAFETY: work is dense (numel values of dt from ptr) on flag's GPU.
            unsafe { flag.check(ptr(&work)?, work.numel(), dt)? };
        }
        let mut finite = true;
        for f in &flags {
            finite &= f.read()?;
        }
        Ok(finite)
    }
}

/// The flag of `gpu` among `flags`, created on its first use.
fn flag_for<'f>(flags: &'f mut Vec<FiniteFlag>, gpu: &'static Gpu) -> Result<&'f FiniteFlag> {
    let i = match flags.iter().position(|f| f.gpu().ordinal == gpu.ordinal) {
        Some(i) => i,
        None => {
            flags.push(FiniteFlag::new(gpu)?);
            flags.len() - 1
        }
    };
    Ok(&flags[i])
}

/// What to do with one gradient, given which storage each one views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Unscale it where it is.
    InPlace,
    /// Another param's gradient is the very same view and was unscaled
    /// in place already: nothing to do.
    Done,
    /// It shares storage with a different view: unscale a private copy
    /// so no element is divided twice (the host unscales every
    /// gradient into a new tensor; this keeps that result).
    Copy,
}

/// One gradient view: (storage base address, first element's address,
/// elements).
type View = (u64, u64, usize);

/// The plan for each gradient view, in order.
fn plan(views: &[View]) -> Vec<Plan> {
    let mut by_base: HashMap<u64, Vec<(u64, usize)>> = HashMap::new();
    for &(base, at, n) in views {
        let v = by_base.entry(base).or_default();
        if !v.contains(&(at, n)) {
            v.push((at, n));
        }
    }
    let mut done = Vec::new();
    views
        .iter()
        .map(|&(base, at, n)| {
            if by_base[&base].len() > 1 {
                Plan::Copy
            } else if done.contains(&(at, n)) {
                Plan::Done
            } else {
                done.push((at, n));
                Plan::InPlace
            }
        })
        .collect()
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

    #[test]
    fn shared_gradient_storage_is_never_unscaled_twice() {
        // distinct storages: all in place
        assert_eq!(
            plan(&[(0x1000, 0x1000, 10), (0x2000, 0x2000, 10)]),
            vec![Plan::InPlace, Plan::InPlace]
        );
        // the same view twice (one upstream gradient handed to two params)
        assert_eq!(
            plan(&[
                (0x1000, 0x1000, 10),
                (0x2000, 0x2000, 4),
                (0x1000, 0x1000, 10)
            ]),
            vec![Plan::InPlace, Plan::InPlace, Plan::Done]
        );
        // two different views of one storage: both copied, the storage untouched
        assert_eq!(
            plan(&[
                (0x1000, 0x1000, 10),
                (0x1000, 0x1010, 6),
                (0x3000, 0x3000, 1)
            ]),
            vec![Plan::Copy, Plan::Copy, Plan::InPlace]
        );
        assert!(plan(&[]).is_empty());
    }

    #[test]
    fn sgd_args_are_the_f32_of_each_setting() {
        let h = SgdHyper {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 5e-4,
            nesterov: true,
        };
        let a = SgdArgs::new(&h, true);
        assert_eq!(
            (a.lr, a.momentum, a.weight_decay),
            (0.1f32, 0.9f32, 5e-4f32)
        );
        assert!(a.nesterov && a.first);
        assert!(!SgdArgs::new(&h, false).first);
    }
}
