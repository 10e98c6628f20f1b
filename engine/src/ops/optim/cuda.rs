//! The optimizer primitives on the GPU: the fused SGD and LARS steps
//! (kernels/src/families/sgd.cu) and the unscale + all-finite pass of dynamic loss
//! scaling (kernels/src/families/reduce.cu), all writing device buffers in place.
//!
//! Every launch goes on the GPU's one stream; nothing here waits for the
//! GPU except [`FiniteFlag::read`], a loss-scaled step's one sync (the
//! multi-tensor step's table goes up through the upload ring, queued), and
//! the per-param fallback for params sharing storage, which reads a
//! device learning rate (`SgdItem::lr_at`) back.

use super::{
    check_scalar_at, check_scale_state, check_scale_update, check_skippable, sgd_step_each,
    LarsHyper, OptimOps, ScaleHyper, SgdHyper, SgdItem,
};
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
    /// Address of a device f32 the multi-tensor kernel reads in place of
    /// `lr` (0: none; `SgdItem::lr_at`).
    lr_at: u64,
    /// Address of a device f32 flag; the multi-tensor kernel leaves the
    /// tensor as it is when it is not 0 (0: none; `SgdItem::skip_if`).
    skip_at: u64,
}

impl SgdArgs {
    /// Each setting's f32, as the host's f32 loop rounds them.
    fn new(h: &SgdHyper, first: bool) -> SgdArgs {
        SgdArgs {
            lr_at: 0,
            skip_at: 0,
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

/// Elements per chunk of a multi-tensor SGD step: one block of
/// `sgd_multi_<t>` per chunk (256 threads, 32 packs of 8 each). A multiple
/// of `launch::PACK`, so every chunk of an aligned tensor starts aligned.
const SGD_CHUNK: usize = 1 << 16;

/// The most chunks (and tensors) one multi-tensor step's table takes: the
/// kernel's chunk count and tensor index are `int`, and 2^24 chunks of
/// 64 Ki elements is 2^40 f32 (4 TiB), past any GPU.
const SGD_MAX_CHUNKS: usize = 1 << 24;

/// Values per chunk of `all_finite_multi_<t>` (a multiple of
/// `launch::PACK`, so an aligned tensor's chunks start aligned).
const FINITE_CHUNK: usize = 1 << 16;

/// reduce.cu's `FiniteChunk` list for tensors of `elem` bytes per value at
/// (address, count) `items`: (start address, count) pairs of at most
/// `chunk` values (empty tensors give none), as the 16 bytes each the
/// kernel reads. An error past [`SGD_MAX_CHUNKS`] chunks (the kernel's
/// count is an int).
fn finite_chunks(items: &[(u64, usize)], elem: usize, chunk: usize) -> Result<Vec<u8>> {
    let total: usize = items.iter().map(|&(_, n)| n.div_ceil(chunk.max(1))).sum();
    if total > SGD_MAX_CHUNKS {
        return Err(Error::arg(
            "non_finite_found",
            format!("more than {SGD_MAX_CHUNKS} chunks of {chunk} values in one check"),
        ));
    }
    let mut out = Vec::with_capacity(total * 16);
    for &(addr, n) in items {
        for start in (0..n).step_by(chunk.max(1)) {
            let at = addr + (start * elem) as u64;
            out.extend_from_slice(&at.to_ne_bytes());
            out.extend_from_slice(&((n - start).min(chunk) as i64).to_ne_bytes());
        }
    }
    Ok(out)
}

/// One tensor of `sgd_multi_<t>`'s table: sgd.cu's `SgdTensor`, 80 bytes
/// (four pointers, an i64, four f32, two i32, the lr and skip-flag
/// pointers).
#[derive(Clone, Copy, Debug, PartialEq)]
struct SgdTensor {
    b: SgdBuffers,
    h: SgdArgs,
}

impl SgdTensor {
    const BYTES: usize = 80;

    /// Appends the 80 bytes; `n` was checked to fit i64 by [`sgd_table`].
    fn write(&self, out: &mut Vec<u8>) {
        for v in [self.b.p, self.b.g, self.b.buf, self.b.copy] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.extend_from_slice(&(self.b.n as i64).to_ne_bytes());
        for v in [
            self.h.lr,
            self.h.momentum,
            self.h.dampening,
            self.h.weight_decay,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [self.h.nesterov as i32, self.h.first as i32] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.extend_from_slice(&self.h.lr_at.to_ne_bytes());
        out.extend_from_slice(&self.h.skip_at.to_ne_bytes());
    }
}

/// Elements `start..start + count` of table tensor `tensor`: sgd.cu's
/// `SgdChunk`, 16 bytes (i64, i32, i32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SgdChunk {
    start: usize,
    tensor: usize,
    count: usize,
}

impl SgdChunk {
    const BYTES: usize = 16;

    /// Appends the 16 bytes; [`sgd_table`] bounds `start` (below a tensor's
    /// i64 count), `tensor` and `count` (int range).
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.start as i64).to_ne_bytes());
        out.extend_from_slice(&(self.tensor as i32).to_ne_bytes());
        out.extend_from_slice(&(self.count as i32).to_ne_bytes());
    }
}

/// One `sgd_multi_<copy>` launch: chunks `first..first + chunks` of the
/// table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SgdLaunch {
    copy: kernels::device::Dtype,
    first: usize,
    chunks: usize,
}

/// A multi-tensor SGD step's device table (the tensors, then the chunk
/// list, launch after launch), its launches, and the launch each tensor's
/// chunks are in (None: an empty tensor, no chunk).
#[derive(Debug, PartialEq)]
struct SgdTable {
    tensors: Vec<SgdTensor>,
    chunks: Vec<SgdChunk>,
    launches: Vec<SgdLaunch>,
    launch_of: Vec<Option<usize>>,
}

impl SgdTable {
    /// Byte offset of the chunk list in [`SgdTable::bytes`] (a multiple of
    /// 16: the tensors are 80 bytes each).
    fn chunks_offset(&self) -> usize {
        self.tensors.len() * SgdTensor::BYTES
    }

    /// The bytes uploaded for the kernels: every tensor, then every chunk.
    fn bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.chunks_offset() + self.chunks.len() * SgdChunk::BYTES);
        for t in &self.tensors {
            t.write(&mut out);
        }
        for c in &self.chunks {
            c.write(&mut out);
        }
        out
    }
}

/// The table of a multi-tensor SGD step over `items` (each a tensor's
/// buffers, settings and copy dtype, F32 for none), `chunk` elements a
/// chunk: table tensor i is item i; an empty item has no chunk. The
/// launches: one per copy dtype (f16, bf16) in order of first appearance;
/// f32 items (no copy) ride in the first one, or get an F32 launch of
/// their own when no item has a copy; a launch without chunks is dropped.
/// Fails on a null p or g, a copy pointer without a copy dtype (or the
/// other way round; both only for non-empty items), a count past i64, or more than [`SGD_MAX_CHUNKS`]
/// chunks or tensors, before allocating them.
fn sgd_table(
    items: &[(SgdBuffers, SgdArgs, kernels::device::Dtype)],
    chunk: usize,
) -> Result<SgdTable> {
    use kernels::device::Dtype;
    const OP: &str = "sgd_step_many";
    if chunk == 0 || !chunk.is_multiple_of(launch::PACK) || chunk > i32::MAX as usize {
        return Err(Error::arg(
            OP,
            format!(
                "chunks of {chunk} elements: want a positive multiple of {} in int range",
                launch::PACK
            ),
        ));
    }
    if items.len() > SGD_MAX_CHUNKS {
        return Err(Error::arg(
            OP,
            format!(
                "{} tensors in one step: at most {SGD_MAX_CHUNKS}",
                items.len()
            ),
        ));
    }
    let mut total = 0usize;
    let mut groups: Vec<Dtype> = Vec::new();
    for (i, (b, _, dt)) in items.iter().enumerate() {
        // an empty tensor's buffers are never read
        if b.n > 0 && (b.p == 0 || b.g == 0) {
            return Err(Error::arg(
                OP,
                format!("tensor {i}: null parameter or gradient buffer"),
            ));
        }
        if b.n > 0 && (b.copy != 0) != (*dt != Dtype::F32) {
            return Err(Error::arg(
                OP,
                format!(
                    "tensor {i}: copy buffer {:#x} with copy dtype {}",
                    b.copy,
                    dt.suffix()
                ),
            ));
        }
        count(OP, b.n)?;
        total = total
            .checked_add(b.n.div_ceil(chunk))
            .filter(|&t| t <= SGD_MAX_CHUNKS)
            .ok_or_else(|| {
                Error::arg(
                    OP,
                    format!("more than {SGD_MAX_CHUNKS} chunks of {chunk} elements in one step"),
                )
            })?;
        if *dt != Dtype::F32 && !groups.contains(dt) {
            groups.push(*dt);
        }
    }
    if groups.is_empty() {
        groups.push(Dtype::F32);
    }
    // the group an item's chunks go to: its copy dtype's, f32 ones the first
    let group_of = |dt: Dtype| groups.iter().position(|&g| g == dt).unwrap_or(0);
    let mut chunks = Vec::with_capacity(total);
    let mut launches = Vec::with_capacity(groups.len());
    let mut launch_of = vec![None; items.len()];
    for (gi, &copy) in groups.iter().enumerate() {
        let first = chunks.len();
        for (tensor, (b, _, dt)) in items.iter().enumerate() {
            if group_of(*dt) != gi || b.n == 0 {
                continue;
            }
            launch_of[tensor] = Some(launches.len());
            for start in (0..b.n).step_by(chunk) {
                chunks.push(SgdChunk {
                    start,
                    tensor,
                    count: chunk.min(b.n - start),
                });
            }
        }
        if chunks.len() > first {
            launches.push(SgdLaunch {
                copy,
                first,
                chunks: chunks.len() - first,
            });
        }
    }
    let tensors = items.iter().map(|&(b, h, _)| SgdTensor { b, h }).collect();
    Ok(SgdTable {
        tensors,
        chunks,
        launches,
        launch_of,
    })
}

/// Whether two of the f32 ranges `(address, elements)` share an element
/// (empty ones never do): params stepped in place by one launch must not.
fn overlapping(ranges: &[(u64, usize)]) -> bool {
    let mut r: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|&&(_, n)| n > 0)
        .map(|&(a, n)| (a, a.saturating_add((n as u64).saturating_mul(4))))
        .collect();
    r.sort_unstable();
    r.windows(2).any(|w| w[1].0 < w[0].1)
}

/// Uploads `t` (one host-to-device copy) and queues its launches of
/// `sgd_multi_<t>`, calling `queued(k)` once launch k is queued. The table
/// block is dropped after the launches that read it are queued (the
/// allocator is stream-ordered).
///
/// # Safety
/// Every tensor of `t` holds buffers as [`sgd_step`] requires, live on
/// `gpu` until the launches are queued, and no two tensors share a p,
/// buf or copy element.
unsafe fn sgd_multi(
    gpu: &'static Gpu,
    t: &SgdTable,
    mut queued: impl FnMut(usize) -> Result<()>,
) -> Result<()> {
    const OP: &str = "sgd_step_many";
    if t.launches.is_empty() {
        return Ok(());
    }
    let block = gpu.alloc(t.chunks_offset() + t.chunks.len() * SgdChunk::BYTES)?;
    block.upload_queued_at(0, &t.bytes())?;
    let tensors = block.ptr();
    for (k, l) in t.launches.iter().enumerate() {
        let name = format!("sgd_multi_{}", l.copy.suffix());
        let f = gpu.kernels.function(&name).map_err(kerr(OP))?;
        let chunks = tensors + (t.chunks_offset() + l.first * SgdChunk::BYTES) as u64;
        // at most SGD_MAX_CHUNKS (sgd_table): int and grid range
        let n = l.chunks as i32;
        let shape = LaunchShape {
            grid: (l.chunks as u32, 1, 1),
            block: (launch::BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        gpu.bind()?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&tensors).arg(&chunks).arg(&n);
        b.launch(config(shape)).map_err(|e| gpu.err(&name, e))?;
        queued(k)?;
    }
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

/// The factor `unscale_check_f32` multiplies by.
#[derive(Clone, Copy)]
enum Inv {
    Value(f32),
    /// The reciprocal of the f32 at this device address, taken when the
    /// kernel runs.
    Of(u64),
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

    /// Queues one `all_finite_multi_<dt>` over the dense tensors of dtype
    /// `dt` at (address, count) `items`, raising the flag on any
    /// non-finite value (the chunk list is uploaded without a host wait).
    ///
    /// # Safety
    /// Each item holds `count` dense values of `dt` on this flag's GPU,
    /// live until the launch is queued.
    unsafe fn check_many(&self, items: &[(u64, usize)], dt: kernels::device::Dtype) -> Result<()> {
        const OP: &str = "all_finite_multi";
        let table = finite_chunks(items, dt.size(), FINITE_CHUNK)?;
        if table.is_empty() {
            return Ok(());
        }
        let n = (table.len() / 16) as i32;
        let block = self.gpu.alloc(table.len())?;
        block.upload_queued_at(0, &table)?;
        let name = format!("{OP}_{}", dt.suffix());
        let f = self.gpu.kernels.function(&name).map_err(kerr(OP))?;
        let (chunks, flag) = (block.ptr(), self.block.ptr());
        let shape = LaunchShape {
            grid: (n as u32, 1, 1),
            block: (launch::BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        self.gpu.bind()?;
        let mut l = self.gpu.stream.launch_builder(&f);
        l.arg(&chunks).arg(&n).arg(&flag);
        l.launch(config(shape))
            .map_err(|e| self.gpu.err(&name, e))?;
        // the table block is freed after the launch that reads it is
        // queued (the allocator is stream-ordered)
        Ok(())
    }

    /// Queues `out[0] = 1.0` if the flag is raised, else 0.0
    /// (`found_to_f32`).
    ///
    /// # Safety
    /// `out` holds one f32 on this flag's GPU.
    unsafe fn to_f32(&self, out: u64) -> Result<()> {
        const OP: &str = "found_to_f32";
        let Some(shape) = launch::elementwise(1, 1, &self.gpu.kernels.gpu()) else {
            return Err(Error::arg(OP, "no launch shape for one element"));
        };
        let f = self.gpu.kernels.function(OP).map_err(kerr(OP))?;
        let flag = self.block.ptr();
        self.gpu.bind()?;
        let mut l = self.gpu.stream.launch_builder(&f);
        l.arg(&flag).arg(&out);
        l.launch(config(shape)).map_err(|e| self.gpu.err(OP, e))?;
        Ok(())
    }

    /// Queues `g *= inv` over `n` f32 in place, raising the flag on any
    /// non-finite result (`unscale_check_f32`).
    ///
    /// # Safety
    /// `g` holds `n` f32 on this flag's GPU, and nothing else uses it while
    /// the kernel runs; an [`Inv::Of`] address holds an f32 there.
    unsafe fn unscale_check_f32(&self, g: u64, n: usize, inv: Inv) -> Result<()> {
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
        let (inv_scale, scale_at) = match inv {
            Inv::Value(v) => (v, 0u64),
            Inv::Of(at) => (1.0f32, at),
        };
        self.gpu.bind()?;
        let mut l = self.gpu.stream.launch_builder(&f);
        l.arg(&g).arg(&n).arg(&inv_scale).arg(&scale_at).arg(&flag);
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

/// Where a step writes the parameter rounded to a lower dtype (the
/// kernels' `copy`).
enum Rounded {
    /// An f32 param without a kept forward copy: nothing.
    Nothing,
    /// An f16/bf16 param: a fresh buffer that becomes its new value.
    Value(Tensor),
    /// An f32 param's kept bf16/f16 copy (`Param::take_copy`): rewritten
    /// in place, and kept again once the launch is queued.
    Kept(Tensor),
}

impl Rounded {
    fn tensor(&self) -> Option<&Tensor> {
        match self {
            Rounded::Nothing => None,
            Rounded::Value(t) | Rounded::Kept(t) => Some(t),
        }
    }
    fn ptr(&self) -> Result<u64> {
        Ok(self.tensor().map(ptr).transpose()?.unwrap_or(0))
    }
    /// The kernel's copy dtype (F32 for none).
    fn kdtype(&self, op: &'static str) -> Result<kernels::device::Dtype> {
        kdtype(op, self.tensor().map_or(DType::F32, |c| c.dtype()))
    }
    /// Installs the rounding once the launch that writes it is queued.
    fn install(self, p: &Param) -> Result<()> {
        match self {
            Rounded::Nothing => Ok(()),
            Rounded::Value(c) => p.set(c),
            Rounded::Kept(c) => {
                p.keep_copy(c);
                Ok(())
            }
        }
    }
}

/// A step's operands: the f32 master (the param's own storage when it is
/// f32, else an f32 copy), the f32 gradient in the master's element order,
/// and where the rounded result goes ([`Rounded`]: an f16/bf16 param's new
/// value, or an f32 param's kept forward copy when it has one laid out as
/// the master). A strided param is made dense once (the kernels walk flat
/// buffers).
fn working_set(op: &'static str, p: &Param, g: &Tensor) -> Result<(Tensor, Tensor, Rounded)> {
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
    let rounded = if low {
        Rounded::Value(empty_like(&master, value.dtype())?)
    } else {
        // taken out whatever happens next: the value is about to change, so
        // a copy not rewritten by this step's launch must not be read again
        match p.take_copy() {
            Some(c) if same_elements(&c, &master) => Rounded::Kept(c),
            _ => Rounded::Nothing,
        }
    };
    Ok((master, g, rounded))
}

/// Whether element i from `copy`'s first element is element i from the
/// (dense) `master`'s: same device, dims and strides, and dense. Then the
/// kernels may write it as the master's rounding.
fn same_elements(copy: &Tensor, master: &Tensor) -> bool {
    copy.device() == master.device()
        && copy.dims() == master.dims()
        && copy.strides() == master.strides()
        && ct::is_dense(copy.layout())
}

impl OptimOps for Cuda {
    /// One `sgd_step_<t>` launch. An f32 param's storage is stepped in
    /// place; f16/bf16 params through an f32 working copy whose rounding
    /// the same kernel writes into the new value, as the host rounds its
    /// f32 result.
    fn sgd_step(&self, p: &Param, g: &Tensor, m: &mut Option<Tensor>, h: &SgdHyper) -> Result<()> {
        const OP: &str = "sgd";
        let (master, g, rounded) = working_set(OP, p, g)?;
        let gpu = ct::gpu_of(&master)?;
        let use_momentum = h.momentum != 0.0;
        let first = m.is_none();
        let new_buf = match m {
            Some(b) => Some(with_strides_of(OP, b, &master)?),
            // the kernel writes buf = d on a first step: no zeroing needed
            // (it outlives the step: crate::cuda::lasting)
            None if use_momentum => Some(crate::cuda::lasting(|| empty_like(&master, DType::F32))?),
            None => None,
        };
        let bufs = SgdBuffers {
            p: ptr(&master)?,
            g: ptr(&g)?,
            buf: new_buf.as_ref().map(ptr).transpose()?.unwrap_or(0),
            copy: rounded.ptr()?,
            n: master.numel(),
        };
        let copy_dtype = rounded.kdtype(OP)?;
        // SAFETY: master, grad, buf and copy are dense over the same layout
        // (numel elements each from their first element), live on `gpu`, and
        // are distinct buffers: master is the param's storage or a fresh
        // cast, grad and buf are separate allocations, and the copy is a
        // fresh buffer or the param's kept copy (a cast's own allocation).
        unsafe { sgd_step(gpu, copy_dtype, &bufs, &SgdArgs::new(h, first))? };
        if new_buf.is_some() {
            *m = new_buf;
        }
        rounded.install(p)
    }

    /// One `sgd_multi_<t>` launch per GPU (two when both f16 and bf16
    /// params are there) over every item, after preparing each as
    /// [`OptimOps::sgd_step`] does (f32 params in their own storage,
    /// f16/bf16 ones through an f32 working copy, the momentum created on a
    /// first step) and uploading the table in one copy. Bitwise the result
    /// of `sgd_step` per item: the kernels share the per-element body.
    /// Params whose storage overlaps another's go through the per-param
    /// loop (one launch would race on the shared elements).
    fn sgd_step_many(&self, items: &mut [SgdItem<'_>]) -> Result<()> {
        const OP: &str = "sgd";
        /// An item's operands, alive until its launch is queued.
        struct Work {
            gpu: &'static Gpu,
            master: Tensor,
            g: Tensor,
            buf: Option<Tensor>,
            rounded: Rounded,
            first: bool,
        }
        let mut work = Vec::with_capacity(items.len());
        for it in items.iter() {
            check_skippable(OP, it)?;
            let (master, g, rounded) = working_set(OP, it.p, it.g)?;
            let gpu = ct::gpu_of(&master)?;
            let buf = match &*it.m {
                Some(b) => Some(with_strides_of(OP, b, &master)?),
                // the kernel writes buf = d on a first step: no zeroing
                // needed, unless the kernel may skip it (SgdItem::skip_if)
                // (it outlives the step: crate::cuda::lasting)
                None if it.h.momentum != 0.0 => Some(crate::cuda::lasting(|| {
                    if it.skip_if.is_some() {
                        ct::zeros(gpu, master.dims(), DType::F32)
                            .and_then(|z| with_strides_of(OP, &z, &master))
                    } else {
                        empty_like(&master, DType::F32)
                    }
                })?),
                None => None,
            };
            let first = it.m.is_none();
            work.push(Work {
                gpu,
                master,
                g,
                buf,
                rounded,
                first,
            });
        }
        // installs item i's results (its launch is queued)
        let commit = |w: &mut Work, it: &mut SgdItem<'_>| -> Result<()> {
            if let Some(b) = w.buf.take() {
                *it.m = Some(b);
            }
            std::mem::replace(&mut w.rounded, Rounded::Nothing).install(it.p)
        };
        let mut ordinals: Vec<usize> = Vec::new();
        for w in &work {
            if !ordinals.contains(&w.gpu.ordinal) {
                ordinals.push(w.gpu.ordinal);
            }
        }
        for ordinal in ordinals {
            let idx: Vec<usize> = (0..work.len())
                .filter(|&i| work[i].gpu.ordinal == ordinal)
                .collect();
            let gpu = work[idx[0]].gpu;
            let mut rows = Vec::with_capacity(idx.len());
            for &i in &idx {
                let w = &work[i];
                let b = SgdBuffers {
                    p: ptr(&w.master)?,
                    g: ptr(&w.g)?,
                    buf: w.buf.as_ref().map(ptr).transpose()?.unwrap_or(0),
                    copy: w.rounded.ptr()?,
                    n: w.master.numel(),
                };
                let dt = w.rounded.kdtype(OP)?;
                let mut args = SgdArgs::new(&items[i].h, w.first);
                if let Some(t) = items[i].lr_at {
                    check_scalar_at(OP, "learning rate", t, w.master.device())?;
                    args.lr_at = ptr(t)?;
                }
                if let Some(t) = items[i].skip_if {
                    args.skip_at = ptr(t)?;
                }
                rows.push((b, args, dt));
            }
            let masters: Vec<(u64, usize)> = rows.iter().map(|(b, _, _)| (b.p, b.n)).collect();
            if overlapping(&masters) {
                let mut sub: Vec<SgdItem<'_>> = items
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| idx.contains(i))
                    .map(|(_, it)| SgdItem {
                        p: it.p,
                        g: it.g,
                        m: &mut *it.m,
                        h: it.h,
                        lr_at: it.lr_at,
                        skip_if: it.skip_if,
                    })
                    .collect();
                sgd_step_each(self, &mut sub)?;
                continue;
            }
            let table = sgd_table(&rows, SGD_CHUNK)?;
            // empty params: nothing to run, their (empty) results now
            for (j, &i) in idx.iter().enumerate() {
                if table.launch_of[j].is_none() {
                    commit(&mut work[i], &mut items[i])?;
                }
            }
            let (work, items) = (&mut work, &mut *items);
            // SAFETY: each tensor's master, grad, buf and copy are dense over
            // the same layout (numel elements from their first element), on
            // `gpu`, and distinct buffers (master is the param's storage or a
            // fresh cast, grad and buf separate allocations); no two masters
            // overlap (checked above). `work` holds masters and grads to the
            // end of this call, and a committed buf or copy lives on in the
            // momentum state or the param.
            unsafe {
                sgd_multi(gpu, &table, |k| {
                    for (j, &i) in idx.iter().enumerate() {
                        if table.launch_of[j] == Some(k) {
                            commit(&mut work[i], &mut items[i])?;
                        }
                    }
                    Ok(())
                })?
            };
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
        let (master, g, rounded) = working_set(OP, p, g)?;
        let gpu = ct::gpu_of(&master)?;
        let new_buf = match buf {
            Some(b) => with_strides_of(OP, b, &master)?,
            // the momentum starts at zero (and outlives the step:
            // crate::cuda::lasting)
            None => {
                let b = crate::cuda::lasting(|| empty_like(&master, DType::F32))?;
                storage_of(&b)?.block().memset(0)?;
                b
            }
        };
        let bufs = SgdBuffers {
            p: ptr(&master)?,
            g: ptr(&g)?,
            buf: ptr(&new_buf)?,
            copy: rounded.ptr()?,
            n: master.numel(),
        };
        let copy_dtype = rounded.kdtype(OP)?;
        // SAFETY: as sgd_step's: master, grad, buf and copy are dense over
        // the same layout, live on `gpu`, distinct buffers.
        unsafe { lars_step(gpu, copy_dtype, &bufs, h)? };
        *buf = Some(new_buf);
        rounded.install(p)
    }

    /// [`unscale`] read back once: the step's only sync.
    fn unscale_and_check_finite(&self, grads: &[(Param, Tensor)], inv_scale: f64) -> Result<bool> {
        let mut finite = true;
        for f in &unscale(grads, Inv::Value(inv_scale as f32))? {
            finite &= f.read()?;
        }
        Ok(finite)
    }

    /// [`unscale`] by the scale on the device, its flag turned into the f32
    /// answer (`found_to_f32`), nothing read.
    fn unscale_found(&self, grads: &[(Param, Tensor)], state: &Tensor) -> Result<Tensor> {
        const OP: &str = "unscale_found";
        let Some((_, g)) = grads.first() else {
            return Err(Error::arg(OP, "no gradients to unscale"));
        };
        check_scale_state(OP, state, g.device())?;
        if grads.iter().any(|(_, h)| h.device() != g.device()) {
            return Err(Error::arg(
                OP,
                "the gradients are on several GPUs; unscale each GPU's apart",
            ));
        }
        let gpu = ct::gpu_of(state)?;
        let state = ct::to_default_layout(state)?;
        let flag = unscale(grads, Inv::Of(ptr(&state)?))?
            .pop()
            .ok_or_else(|| Error::arg(OP, "no gradient was unscaled"))?;
        let out = ct::empty(gpu, &[1], DType::F32)?;
        // SAFETY: out holds one f32 on the flag's GPU.
        unsafe { flag.to_f32(ptr(&out)?) }?;
        Ok(out)
    }

    /// One `amp_update_scale` thread on the state, in place.
    fn update_scale(&self, state: &mut Tensor, found: &Tensor, h: &ScaleHyper) -> Result<()> {
        const OP: &str = "amp_update_scale";
        check_scale_update(state, found, h)?;
        let gpu = ct::gpu_of(state)?;
        // (a strided state is replaced by a dense copy, rewritten from then on)
        *state = ct::to_default_layout(state)?;
        let Some(shape) = launch::elementwise(1, 1, &gpu.kernels.gpu()) else {
            return Err(Error::arg(OP, "no launch shape for one element"));
        };
        let f = gpu.kernels.function(OP).map_err(kerr(OP))?;
        // (held until the launch is queued)
        let found = ct::to_default_layout(found)?;
        let (at, found_at) = (ptr(state)?, ptr(&found)?);
        let (growth, backoff) = (h.growth_factor as f32, h.backoff_factor as f32);
        let interval = h.growth_interval as f32;
        gpu.bind()?;
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&at)
            .arg(&found_at)
            .arg(&growth)
            .arg(&backoff)
            .arg(&interval);
        // SAFETY: state holds 3 f32 and found one, both on `gpu` (checked).
        unsafe { l.launch(config(shape)) }.map_err(|e| gpu.err(OP, e))?;
        Ok(())
    }

    fn all_finite(&self, tensors: &[Tensor]) -> Result<bool> {
        let mut finite = true;
        for f in &check_all(tensors)? {
            finite &= f.read()?;
        }
        Ok(finite)
    }

    fn non_finite_found(&self, tensors: &[Tensor]) -> Result<Tensor> {
        const OP: &str = "non_finite_found";
        let Some(first) = tensors.first() else {
            return Err(Error::arg(OP, "no tensors to check"));
        };
        let gpu = ct::gpu_of(first)?;
        let mut flags = check_all(tensors)?;
        if flags.len() > 1
            || flags
                .first()
                .is_some_and(|f| f.gpu().ordinal != gpu.ordinal)
        {
            return Err(Error::arg(
                OP,
                "the tensors are on several GPUs; check each GPU's apart",
            ));
        }
        // no float tensor: a fresh (lowered) flag
        let flag = match flags.pop() {
            Some(f) => f,
            None => FiniteFlag::new(gpu)?,
        };
        let out = ct::empty(gpu, &[1], DType::F32)?;
        // SAFETY: out holds one f32 on the flag's GPU.
        unsafe { flag.to_f32(ptr(&out)?) }?;
        Ok(out)
    }
}

/// `unscale_check_f32` per gradient, raising one flag per GPU (returned,
/// not read). f32 gradients are rewritten in their own storage; f16/bf16
/// ones go through an f32 copy (multiplied and checked in f32, then
/// rounded back: the host's arithmetic).
fn unscale(grads: &[(Param, Tensor)], inv: Inv) -> Result<Vec<FiniteFlag>> {
    const OP: &str = "LossScaler::unscale";
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
        unsafe { flag.unscale_check_f32(ptr(&work)?, work.numel(), inv)? };
        if g.dtype() != DType::F32 {
            p.set_grad(Some(cast(&work, g.dtype())?));
        } else if in_place {
            unscaled_in_place.push(*view);
        } else {
            p.set_grad(Some(work));
        }
    }
    Ok(flags)
}

/// The tensors one `all_finite_multi_<t>` launch checks: (flag index,
/// dtype, (address, count) per tensor).
type CheckGroup = (usize, DType, Vec<(u64, usize)>);

/// Queues the check of every float tensor of `tensors`, raising one flag
/// per GPU (not read): one `all_finite_multi_<t>` launch per GPU and
/// dtype, over the tensors as they are when dense, else over dense copies.
fn check_all(tensors: &[Tensor]) -> Result<Vec<FiniteFlag>> {
    const OP: &str = "all_finite";
    let mut flags: Vec<FiniteFlag> = Vec::new();
    let mut groups: Vec<CheckGroup> = Vec::new();
    // the checked tensors (copies included) stay alive until the launches
    // that read them are queued
    let mut works = Vec::new();
    for t in tensors.iter().filter(|t| t.dtype().is_float()) {
        let f = flag_index(&mut flags, ct::gpu_of(t)?)?;
        kdtype(OP, t.dtype())?;
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
        let item = (ptr(&work)?, work.numel());
        match groups
            .iter_mut()
            .find(|(g, d, _)| *g == f && *d == t.dtype())
        {
            Some((_, _, items)) => items.push(item),
            None => groups.push((f, t.dtype(), vec![item])),
        }
        works.push(work);
    }
    for (f, dtype, items) in &groups {
        // SAFETY: every item is a dense tensor of `dtype` (numel values from
        // its address) on flag f's GPU, alive in `works`.
        unsafe { flags[*f].check_many(items, kdtype(OP, *dtype)?)? };
    }
    drop(works);
    Ok(flags)
}

/// The flag of `gpu` among `flags`, created on its first use.
fn flag_for<'f>(flags: &'f mut Vec<FiniteFlag>, gpu: &'static Gpu) -> Result<&'f FiniteFlag> {
    let i = flag_index(flags, gpu)?;
    Ok(&flags[i])
}

/// The index of `gpu`'s flag among `flags`, created on its first use.
fn flag_index(flags: &mut Vec<FiniteFlag>, gpu: &'static Gpu) -> Result<usize> {
    match flags.iter().position(|f| f.gpu().ordinal == gpu.ordinal) {
        Some(i) => Ok(i),
        None => {
            flags.push(FiniteFlag::new(gpu)?);
            Ok(flags.len() - 1)
        }
    }
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

    use kernels::device::Dtype;

    #[test]
    fn finite_chunks_tile_every_tensor_in_order_and_skip_empty_ones() {
        let read = |bytes: &[u8]| -> Vec<(u64, i64)> {
            bytes
                .chunks(16)
                .map(|c| {
                    let a = u64::from_ne_bytes(c[..8].try_into().unwrap());
                    let n = i64::from_ne_bytes(c[8..].try_into().unwrap());
                    (a, n)
                })
                .collect()
        };
        // bf16 (2 bytes a value), chunks of 8: 20 values -> 8, 8, 4
        let t = finite_chunks(&[(0x1000, 20), (0x9000, 0), (0x2000, 8)], 2, 8).unwrap();
        assert_eq!(
            read(&t),
            vec![(0x1000, 8), (0x1010, 8), (0x1020, 4), (0x2000, 8)]
        );
        // f32, the real chunk: a ResNet-50-sized tensor
        let t = finite_chunks(&[(0x1_0000_0000, 2_359_296)], 4, FINITE_CHUNK).unwrap();
        let c = read(&t);
        assert_eq!(c.len(), 36);
        assert_eq!(c.iter().map(|&(_, n)| n).sum::<i64>(), 2_359_296);
        assert!(c.windows(2).all(|w| w[1].0 == w[0].0 + (w[0].1 as u64) * 4));
        assert!(finite_chunks(&[], 4, FINITE_CHUNK).unwrap().is_empty());
        // past the kernel's int count
        assert!(finite_chunks(&[(0, SGD_MAX_CHUNKS + 1)], 4, 1).is_err());
    }

    /// An item of `n` elements at distinct fake addresses; `copy` F32 for
    /// none.
    fn item(i: u64, n: usize, copy: Dtype) -> (SgdBuffers, SgdArgs, Dtype) {
        let h = SgdHyper {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 1e-4,
            nesterov: false,
        };
        let base = (i + 1) << 32;
        let b = SgdBuffers {
            p: base,
            g: base + (1 << 30),
            buf: base + (2 << 30),
            copy: if copy == Dtype::F32 {
                0
            } else {
                base + (3 << 30)
            },
            n,
        };
        (b, SgdArgs::new(&h, i.is_multiple_of(2)), copy)
    }

    /// Every non-empty tensor's chunks, in table order, tile [0, n) exactly
    /// (no gap, no overlap), each at most `chunk` long and starting at a
    /// multiple of it; empty tensors have none.
    fn assert_tiles(t: &SgdTable, items: &[(SgdBuffers, SgdArgs, Dtype)], chunk: usize) {
        assert_eq!(t.tensors.len(), items.len());
        for (i, (b, _, _)) in items.iter().enumerate() {
            let mine: Vec<&SgdChunk> = t.chunks.iter().filter(|c| c.tensor == i).collect();
            let mut at = 0;
            for c in &mine {
                assert_eq!(c.start, at, "tensor {i}: chunks contiguous, in order");
                assert!(c.count > 0 && c.count <= chunk, "tensor {i}: {c:?}");
                assert!(c.start.is_multiple_of(chunk));
                at += c.count;
            }
            assert_eq!(at, b.n, "tensor {i} covered");
            assert_eq!(mine.len(), b.n.div_ceil(chunk));
            assert_eq!(t.launch_of[i].is_none(), b.n == 0);
        }
        // the launches partition the chunk list, each chunk in its tensor's
        let mut next = 0;
        for (k, l) in t.launches.iter().enumerate() {
            assert_eq!(l.first, next);
            assert!(l.chunks > 0);
            for c in &t.chunks[l.first..l.first + l.chunks] {
                assert_eq!(t.launch_of[c.tensor], Some(k), "{c:?}");
            }
            next += l.chunks;
        }
        assert_eq!(next, t.chunks.len());
    }

    #[test]
    fn sgd_table_tiles_every_tensor_and_skips_empty_ones() {
        let sizes = [1, 7, 0, 4097, SGD_CHUNK, SGD_CHUNK + 1, 300_000, 0, 8];
        let items: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| item(i as u64, n, Dtype::F32))
            .collect();
        let t = sgd_table(&items, SGD_CHUNK).unwrap();
        assert_tiles(&t, &items, SGD_CHUNK);
        // f32 only: one F32 launch over 1 + 1 + 1 + 1 + 2 + 5 + 1 chunks
        assert_eq!(
            t.launches,
            vec![SgdLaunch {
                copy: Dtype::F32,
                first: 0,
                chunks: 12
            }]
        );
        assert_eq!(
            t.chunks[6],
            SgdChunk {
                start: 0,
                tensor: 6,
                count: SGD_CHUNK
            }
        );
        assert_eq!(
            t.chunks[10],
            SgdChunk {
                start: 4 * SGD_CHUNK,
                tensor: 6,
                count: 300_000 - 4 * SGD_CHUNK
            }
        );
        // small chunks, every size up to three chunks
        for n in 0..=24 {
            let items = [item(0, n, Dtype::F32), item(1, 24 - n, Dtype::F16)];
            assert_tiles(&sgd_table(&items, 8).unwrap(), &items, 8);
        }
        // nothing to run
        let empty = sgd_table(&[item(0, 0, Dtype::F32), item(1, 0, Dtype::Bf16)], 8).unwrap();
        assert!(empty.chunks.is_empty() && empty.launches.is_empty());
        assert_eq!(empty.launch_of, vec![None, None]);
        assert!(sgd_table(&[], SGD_CHUNK).unwrap().launches.is_empty());
    }

    #[test]
    fn sgd_table_launches_once_per_copy_dtype_with_f32_params_in_the_first() {
        let items = [
            item(0, 10, Dtype::F32),
            item(1, 20, Dtype::Bf16),
            item(2, 0, Dtype::F16),
            item(3, 30, Dtype::F16),
            item(4, 17, Dtype::F32),
            item(5, 9, Dtype::Bf16),
        ];
        let t = sgd_table(&items, 8).unwrap();
        assert_tiles(&t, &items, 8);
        // bf16 first seen first: items 0, 1, 4, 5 (2 + 3 + 3 + 2 chunks), then f16: 3 (4)
        assert_eq!(
            t.launches,
            vec![
                SgdLaunch {
                    copy: Dtype::Bf16,
                    first: 0,
                    chunks: 10
                },
                SgdLaunch {
                    copy: Dtype::F16,
                    first: 10,
                    chunks: 4
                },
            ]
        );
        assert_eq!(
            t.launch_of,
            vec![Some(0), Some(0), None, Some(1), Some(0), Some(0)]
        );
        // an empty f16 param alone makes no launch
        let t = sgd_table(&[item(0, 5, Dtype::F32), item(1, 0, Dtype::F16)], 8).unwrap();
        assert_eq!(t.launches.len(), 1);
        assert_eq!(t.launches[0].copy, Dtype::F16);
    }

    #[test]
    fn sgd_table_bounds_counts_before_allocating_and_checks_buffers() {
        let err = |items: &[(SgdBuffers, SgdArgs, Dtype)], chunk: usize| {
            sgd_table(items, chunk).unwrap_err().to_string()
        };
        // past i64, past the chunk bound (no allocation of 2^44 chunks), and
        // the sum of two tensors' chunks
        assert!(err(&[item(0, usize::MAX, Dtype::F32)], SGD_CHUNK).contains("i64"));
        let e = err(&[item(0, 1 << 60, Dtype::F32)], SGD_CHUNK);
        assert!(e.contains("chunks"), "{e}");
        let half = SGD_MAX_CHUNKS / 2 * SGD_CHUNK;
        let e = err(
            &[
                item(0, half, Dtype::F32),
                item(1, half, Dtype::F32),
                item(2, 1, Dtype::F32),
            ],
            SGD_CHUNK,
        );
        assert!(e.contains("chunks"), "{e}");
        // chunk sizes the kernel cannot take
        for c in [0, 12, 1 << 40] {
            assert!(
                sgd_table(&[item(0, 5, Dtype::F32)], c).is_err(),
                "chunk {c}"
            );
        }
        // null buffers, a copy without its dtype and the other way round
        let (mut b, h, dt) = item(0, 5, Dtype::F32);
        b.g = 0;
        assert!(err(&[(b, h, dt)], 8).contains("null"));
        b.g = 0x10;
        b.copy = 0x20;
        assert!(err(&[(b, h, dt)], 8).contains("copy"));
        let (mut b, h, dt) = item(0, 5, Dtype::F16);
        b.copy = 0;
        assert!(err(&[(b, h, dt)], 8).contains("copy"));
        // an empty tensor's buffers are never read
        b.n = 0;
        b.p = 0;
        assert!(sgd_table(&[(b, h, dt)], 8).is_ok());
    }

    #[test]
    fn sgd_table_bytes_have_the_kernel_layout() {
        let mut items = [item(0, 3, Dtype::F32), item(1, 20, Dtype::F16)];
        items[1].1.lr_at = 0x4000;
        items[1].1.skip_at = 0x5000;
        let t = sgd_table(&items, 8).unwrap();
        let bytes = t.bytes();
        assert_eq!(t.chunks_offset(), 160);
        assert_eq!(bytes.len(), 160 + 4 * 16);
        let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().unwrap());
        let i32_at = |o: usize| i32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap());
        let f32_at = |o: usize| f32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap());
        // tensor 1: p, g, buf, copy, n, lr, momentum, dampening, wd,
        // nesterov, first, lr_at, skip_at
        let (b, h, _) = items[1];
        let at = 80;
        assert_eq!(
            [u64_at(at), u64_at(at + 8), u64_at(at + 16), u64_at(at + 24)],
            [b.p, b.g, b.buf, b.copy]
        );
        assert_eq!(u64_at(at + 32), 20);
        assert_eq!(
            [
                f32_at(at + 40),
                f32_at(at + 44),
                f32_at(at + 48),
                f32_at(at + 52)
            ],
            [h.lr, h.momentum, h.dampening, h.weight_decay]
        );
        assert_eq!([i32_at(at + 56), i32_at(at + 60)], [0, 0]);
        assert_eq!([u64_at(at + 64), u64_at(at + 72)], [0x4000, 0x5000]);
        assert_eq!(i32_at(60), 1, "tensor 0's first step");
        assert_eq!(u64_at(64), 0, "tensor 0 has no lr tensor");
        assert_eq!(u64_at(72), 0, "tensor 0 has no skip flag");
        // chunk 3: tensor 1's last (start 16, 4 elements)
        let at = 160 + 3 * 16;
        assert_eq!((u64_at(at), i32_at(at + 8), i32_at(at + 12)), (16, 1, 4));
    }

    #[test]
    fn overlapping_masters_are_found() {
        assert!(!overlapping(&[]));
        assert!(
            !overlapping(&[(0x1000, 4), (0x1010, 4), (0x2000, 1)]),
            "adjacent"
        );
        assert!(overlapping(&[(0x1010, 4), (0x1000, 5)]));
        assert!(
            overlapping(&[(0x3000, 1), (0x1000, 1), (0x3000, 1)]),
            "the same param twice"
        );
        assert!(!overlapping(&[(0x1000, 0), (0x1000, 3)]), "empty");
        assert!(
            overlapping(&[(u64::MAX - 3, 8), (u64::MAX - 1, 1)]),
            "saturated end"
        );
    }

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
