//! One GPU's runtime: its context, the one stream every op is queued on, the
//! kernel library, the caching allocator and a pinned staging buffer.
//!
//! A [`Gpu`] is opened once per ordinal on first use ([`gpu`]) and lives for
//! the process (like PyTorch's per-device state). Everything runs on one
//! non-blocking stream, so the ops of a training step are ordered without
//! any synchronisation; the host waits only when it reads a result back
//! ([`Gpu::download`], `Tensor::item`) or asks for [`Gpu::synchronize`].
//!
//! Device memory comes from [`CachingAllocator`] (allocator.rs) over the raw
//! `cuMemAlloc` / `cuMemFree`; a [`DeviceBlock`] hands its block back to the
//! free list when dropped. With one stream, reuse is stream-ordered for free:
//! a block freed while queued kernels still read it is only handed out to
//! work queued after them.

use super::allocator::{AllocatorStats, Backend, CachingAllocator};
use super::probe::{probe, CudaInfo};
use crate::{Device, Error, Result};
use cudarc::driver::{result, sys, CudaContext, CudaStream};
use kernels::device::KernelLibrary;
use std::sync::{Arc, Mutex, OnceLock};

/// Pinned staging chunk: uploads and downloads move through it this many
/// bytes at a time.
const STAGING_BYTES: usize = 32 << 20;

pub(crate) fn driver_err(device: Device, what: &str, e: impl std::fmt::Debug) -> Error {
    Error::DeviceUnavailable {
        device,
        msg: format!("{what} failed: {e:?}"),
    }
}

struct DriverBackend {
    ctx: Arc<CudaContext>,
}

impl Backend for DriverBackend {
    fn raw_alloc(&mut self, bytes: usize) -> Result<u64> {
        let dev = Device::Cuda(self.ctx.ordinal());
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err(dev, "cuCtxSetCurrent", e))?;
        // SAFETY: a plain device allocation in the bound context.
        unsafe { result::malloc_sync(bytes) }.map_err(|e| driver_err(dev, "cuMemAlloc", e))
    }
    fn raw_free(&mut self, ptr: u64) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: ptr came from raw_alloc and no block of it is in use
            // (the allocator only frees whole free segments); cuMemFree
            // waits for queued work itself.
            let _ = unsafe { result::free_sync(ptr) };
        }
    }
    fn free_memory(&self) -> Option<(usize, usize)> {
        self.ctx.mem_get_info().ok()
    }
}

/// Page-locked host memory the copies go through (`cuMemAllocHost`).
struct Staging {
    ptr: *mut u8,
    cap: usize,
}
// SAFETY: the buffer is only touched under the Gpu's staging mutex.
unsafe impl Send for Staging {}

/// The runtime of one GPU.
pub struct Gpu {
    pub ordinal: usize,
    pub info: CudaInfo,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub kernels: KernelLibrary,
    alloc: Mutex<CachingAllocator<DriverBackend>>,
    staging: Mutex<Staging>,
}

/// The runtime of GPU `ordinal`, opened on first use: the probe's clear
/// error (missing library, no such GPU) when it cannot be.
pub fn gpu(ordinal: usize) -> Result<&'static Gpu> {
    static GPUS: OnceLock<Mutex<Vec<(usize, &'static Gpu)>>> = OnceLock::new();
    let mut opened = GPUS.get_or_init(|| Mutex::new(Vec::new())).lock().unwrap();
    if let Some((_, g)) = opened.iter().find(|(o, _)| *o == ordinal) {
        return Ok(g);
    }
    let g: &'static Gpu = Box::leak(Box::new(Gpu::open(ordinal)?));
    opened.push((ordinal, g));
    Ok(g)
}

impl Gpu {
    fn open(ordinal: usize) -> Result<Gpu> {
        let device = Device::Cuda(ordinal);
        let info = probe(ordinal)?;
        let ctx = kernels::device::open(ordinal).map_err(|e| Error::DeviceUnavailable {
            device,
            msg: e.to_string(),
        })?;
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_err(device, "cuStreamCreate", e))?;
        let kernels = KernelLibrary::new(ctx.clone(), kernels::Compiler::with_default_cache())
            .map_err(|e| Error::DeviceUnavailable {
                device,
                msg: e.to_string(),
            })?;
        let alloc = CachingAllocator::new(DriverBackend { ctx: ctx.clone() }, device);
        Ok(Gpu {
            ordinal,
            info,
            ctx,
            stream,
            kernels,
            alloc: Mutex::new(alloc),
            staging: Mutex::new(Staging {
                ptr: std::ptr::null_mut(),
                cap: 0,
            }),
        })
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    /// The raw stream handle (what cuBLASLt / cuDNN are bound to).
    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    pub(crate) fn err(&self, what: &str, e: impl std::fmt::Debug) -> Error {
        driver_err(self.device(), what, e)
    }

    /// Makes this GPU's context current on the calling thread (raw driver
    /// calls need it; cudarc's safe API does it itself).
    pub fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| self.err("cuCtxSetCurrent", e))
    }

    /// Waits for everything queued so far; reports an asynchronous kernel
    /// error (illegal address, ...) as an error.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| self.err("cuStreamSynchronize", e))
    }

    /// `bytes` of device memory for work on this GPU's stream.
    pub fn alloc(&'static self, bytes: usize) -> Result<DeviceBlock> {
        self.bind()?;
        let ptr = self
            .alloc
            .lock()
            .unwrap()
            .alloc(bytes, self.cu_stream() as u64)?;
        Ok(DeviceBlock {
            gpu: self,
            ptr,
            bytes,
        })
    }

    /// Allocated / reserved / peak bytes of the caching allocator.
    pub fn memory_stats(&self) -> AllocatorStats {
        self.alloc.lock().unwrap().stats()
    }

    pub fn reset_peak_memory(&self) {
        self.alloc.lock().unwrap().reset_peak_stats()
    }

    /// Returns the cached, fully free segments to the device; bytes freed.
    pub fn empty_cache(&self) -> usize {
        let _ = self.bind();
        self.alloc.lock().unwrap().empty_cache()
    }

    /// Fills `bytes` at `dst` with the byte `value` (queued).
    pub fn memset(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: dst..dst+bytes lies in a live block (callers' contract).
        unsafe { result::memset_d8_async(dst, value, bytes, self.cu_stream()) }
            .map_err(|e| self.err("cuMemsetD8Async", e))
    }

    /// Device-to-device copy of `bytes` (queued).
    pub fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both ranges lie in live blocks (callers' contract).
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.cu_stream()) }
            .map_err(|e| self.err("cuMemcpyDtoDAsync", e))
    }

    fn staging(&self, need: usize) -> Result<std::sync::MutexGuard<'_, Staging>> {
        let mut s = self.staging.lock().unwrap();
        if s.cap < need {
            self.bind()?;
            if !s.ptr.is_null() {
                // SAFETY: allocated below; no copy is in flight (every
                // staged copy is waited for before the lock is released).
                let _ = unsafe { result::free_host(s.ptr.cast()) };
                s.ptr = std::ptr::null_mut();
                s.cap = 0;
            }
            // SAFETY: plain page-locked allocation.
            let p = unsafe { result::malloc_host(need, 0) }
                .map_err(|e| self.err("cuMemAllocHost", e))?;
            s.ptr = p.cast();
            s.cap = need;
        }
        Ok(s)
    }

    /// Host bytes -> device address `dst` through the pinned staging
    /// buffer; returns when the data has left the host buffer.
    pub fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let chunk = src.len().min(STAGING_BYTES);
        let s = self.staging(chunk)?;
        for (i, part) in src.chunks(chunk).enumerate() {
            // SAFETY: the staging buffer holds `chunk` bytes and the previous
            // copy out of it was waited for.
            let pinned = unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), s.ptr, part.len());
                std::slice::from_raw_parts(s.ptr, part.len())
            };
            let at = dst + (i * chunk) as u64;
            // SAFETY: dst range lies in a live block (callers' contract).
            unsafe { result::memcpy_htod_async(at, pinned, self.cu_stream()) }
                .map_err(|e| self.err("cuMemcpyHtoDAsync", e))?;
            self.synchronize()?;
        }
        Ok(())
    }

    /// Device address `src` -> host bytes, after all queued work.
    pub fn download(&self, dst: &mut [u8], src: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let chunk = dst.len().min(STAGING_BYTES);
        let s = self.staging(chunk)?;
        for (i, part) in dst.chunks_mut(chunk).enumerate() {
            // SAFETY: the staging buffer holds `chunk` bytes.
            let pinned = unsafe { std::slice::from_raw_parts_mut(s.ptr, part.len()) };
            let at = src + (i * chunk) as u64;
            // SAFETY: src range lies in a live block (callers' contract).
            unsafe { result::memcpy_dtoh_async(pinned, at, self.cu_stream()) }
                .map_err(|e| self.err("cuMemcpyDtoHAsync", e))?;
            self.synchronize()?;
            part.copy_from_slice(pinned);
        }
        Ok(())
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.info.summary())
    }
}

/// A block of device memory from the caching allocator; returned to its
/// free list on drop.
pub struct DeviceBlock {
    gpu: &'static Gpu,
    ptr: u64,
    bytes: usize,
}

impl DeviceBlock {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn gpu(&self) -> &'static Gpu {
        self.gpu
    }
}

impl std::fmt::Debug for DeviceBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBlock(cuda:{} {:#x}, {} B)",
            self.gpu.ordinal, self.ptr, self.bytes
        )
    }
}

impl Drop for DeviceBlock {
    fn drop(&mut self) {
        // A failure here means the pointer is unknown to the allocator,
        // which cannot happen for a block it handed out; nothing to report.
        let _ = self.gpu.alloc.lock().unwrap().free(self.ptr);
    }
}
