//! One GPU's runtime: its context, the one stream every op is queued on, the
//! kernel library, the caching allocator, a pinned staging buffer, pinned
//! rings for uploads that do not wait (small ones and batches,
//! `upload_ring.rs`) and pinned buffers for small downloads that do not
//! wait (`queued_read.rs`).
//!
//! A [`Gpu`] is opened once per ordinal on first use ([`gpu`]) and lives for
//! the process (like PyTorch's per-device state). Everything runs on one
//! non-blocking stream, so the ops of a training step are ordered without
//! any synchronisation; the host waits only when it reads a result back
//! ([`DeviceBlock::download_at`], `Tensor::item`) or asks for
//! [`Gpu::synchronize`].
//!
//! Device memory comes from [`CachingAllocator`] (allocator.rs) over the raw
//! `cuMemAlloc` / `cuMemFree`; a [`DeviceBlock`] hands its block back to the
//! free list when dropped. Reuse is stream-ordered: a block freed while
//! kernels queued on its stream still read it is only handed out to work
//! queued after them. A block also used on another stream must say so with
//! [`DeviceBlock::record_stream`]; its free then waits (through events) for
//! the work queued on that stream before the free.
//!
//! The engine reads and writes device memory through the bounds-checked
//! [`DeviceBlock`] methods (`memset`, `upload_queued_at`, `download_at`,
//! `download_queued_at`, `copy_from`); the raw-address [`Gpu`] calls they
//! wrap are `unsafe`.
//!
//! While a CUDA graph is captured on the stream (`graph.rs`), allocations
//! come from a second, graph-private caching allocator, blocks of the
//! general one freed meanwhile are held back until the graph is dropped,
//! queued uploads copy their bytes into page-locked memory the graph keeps
//! (each replay reads them again), and every call that would wait for the
//! GPU is an error.

use super::allocator::{AllocatorStats, Backend, CachingAllocator, EventId, StreamId};
use super::graph::{Captures, FreeTo, PinnedHost};
use super::probe::{probe, CudaInfo};
use super::queued_read::QueuedDownload;
use super::upload_ring::{through, Spans, Through, BATCH_RING_BYTES, RING_BYTES};
use crate::{Device, Error, Result};
use cudarc::driver::{result, sys, CudaContext, CudaStream};
use kernels::device::KernelLibrary;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

/// Locks `m`, recovering the guard when another thread panicked while
/// holding it: the allocator's and staging buffer's state stays usable (a
/// panic cannot interrupt them halfway: they do not call out while
/// mutating), and a drop or an error path must not turn one panic into
/// another.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

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

impl DriverBackend {
    /// Binds the context to the calling thread; the device, for errors.
    fn bind(&self) -> Result<Device> {
        let dev = Device::Cuda(self.ctx.ordinal());
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err(dev, "cuCtxSetCurrent", e))?;
        Ok(dev)
    }
}

impl Backend for DriverBackend {
    fn raw_alloc(&mut self, bytes: usize) -> Result<u64> {
        let dev = self.bind()?;
        // cuMemAlloc counts as "potentially unsafe" while this thread
        // captures a graph (graph.rs): the graph-private pool takes new
        // segments in the relaxed mode, as CUDA's documentation suggests
        // for allocators.
        let _relaxed = super::graph::RelaxedCapture::enter();
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
    fn record_event(&mut self, stream: StreamId) -> Result<EventId> {
        let dev = self.bind()?;
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| driver_err(dev, "cuEventCreate", e))?;
        // SAFETY: a live event; `stream` is a stream of this context
        // (DeviceBlock::record_stream checks).
        if let Err(e) = unsafe { result::event::record(event, stream as sys::CUstream) } {
            // SAFETY: created above and not destroyed.
            let _ = unsafe { result::event::destroy(event) };
            return Err(driver_err(dev, "cuEventRecord", e));
        }
        Ok(event as EventId)
    }
    fn event_done(&mut self, event: EventId) -> Result<bool> {
        let dev = self.bind()?;
        // SAFETY: the event came from record_event and is not destroyed.
        match unsafe { result::event::query(event as sys::CUevent) } {
            Ok(()) => Ok(true),
            Err(result::DriverError(sys::CUresult::CUDA_ERROR_NOT_READY)) => Ok(false),
            Err(e) => Err(driver_err(dev, "cuEventQuery", e)),
        }
    }
    fn wait_event(&mut self, event: EventId) -> Result<()> {
        let dev = self.bind()?;
        // SAFETY: the event came from record_event and is not destroyed.
        unsafe { result::event::synchronize(event as sys::CUevent) }
            .map_err(|e| driver_err(dev, "cuEventSynchronize", e))
    }
    fn destroy_event(&mut self, event: EventId) {
        if self.bind().is_ok() {
            // SAFETY: the event came from record_event and is destroyed
            // once (the allocator forgets it here).
            let _ = unsafe { result::event::destroy(event as sys::CUevent) };
        }
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
    /// The graph-private pool: what a capture allocates (graph.rs).
    graph_alloc: Mutex<CachingAllocator<DriverBackend>>,
    /// Whether a capture is under way or a graph is alive, and what a
    /// capture holds. Locked before `alloc` or `graph_alloc`, never after.
    pub(crate) captures: Mutex<Captures>,
    /// The peak bytes of both pools together, and the library workspaces.
    peaks: Mutex<Peaks>,
    staging: Mutex<Staging>,
    ring: Mutex<Ring>,
    batch_ring: Mutex<Ring>,
    /// Page-locked buffers of queued reads not in flight (addresses as
    /// usize; `queued_read.rs`).
    pub(crate) read_buffers: Mutex<Vec<usize>>,
}

/// A page-locked ring of [`Gpu::upload_queued`] (allocated on first use),
/// its size and its spans in use, each with its event (`sys::CUevent` as
/// usize).
struct Ring {
    ptr: *mut u8,
    cap: usize,
    spans: Spans<usize>,
    /// The page-locked memory could not be had (the batch ring: its
    /// uploads wait instead, and it is not asked for again).
    unavailable: bool,
}

impl Ring {
    fn new(cap: usize) -> Mutex<Ring> {
        Mutex::new(Ring {
            ptr: std::ptr::null_mut(),
            cap,
            spans: Spans::new(cap),
            unavailable: false,
        })
    }
}
// SAFETY: the buffer and the events are only touched under the Gpu's ring
// mutex.
unsafe impl Send for Ring {}

/// The runtime of GPU `ordinal`, opened on first use: the probe's clear
/// error (missing library, no such GPU) when it cannot be.
pub fn gpu(ordinal: usize) -> Result<&'static Gpu> {
    static GPUS: OnceLock<Mutex<Vec<(usize, &'static Gpu)>>> = OnceLock::new();
    let mut opened = lock(GPUS.get_or_init(|| Mutex::new(Vec::new())));
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
        let graph_alloc = CachingAllocator::new(DriverBackend { ctx: ctx.clone() }, device)
            .without_release_on_oom();
        Ok(Gpu {
            ordinal,
            info,
            ctx,
            stream,
            kernels,
            alloc: Mutex::new(alloc),
            graph_alloc: Mutex::new(graph_alloc),
            captures: Mutex::new(Captures::default()),
            peaks: Mutex::new(Peaks::default()),
            staging: Mutex::new(Staging {
                ptr: std::ptr::null_mut(),
                cap: 0,
            }),
            ring: Ring::new(RING_BYTES),
            batch_ring: Ring::new(BATCH_RING_BYTES),
            read_buffers: Mutex::new(Vec::new()),
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

    /// A timing-enabled event recorded on this GPU's stream now: the
    /// profiler brackets each op with two and reads them (`elapsed_ms`)
    /// only when it collects, so timing adds no synchronisation.
    pub fn timing_event(&self) -> Result<cudarc::driver::CudaEvent> {
        self.stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| self.err("cuEventCreate/cuEventRecord (timing)", e))
    }

    /// An error naming `what` when a graph is being captured: the host
    /// cannot wait for work that is only recorded, not run.
    pub(crate) fn no_wait_in_capture(&self, what: &str) -> Result<()> {
        if lock(&self.captures).capturing() {
            return Err(Error::arg(
                "cuda graph capture",
                format!(
                    "{what} waits for the GPU, which a CUDA graph capture cannot record (cuda:{}); run this outside the captured step",
                    self.ordinal
                ),
            ));
        }
        Ok(())
    }

    /// Whether a CUDA graph is being captured on this GPU's stream.
    pub fn capturing(&self) -> bool {
        lock(&self.captures).capturing()
    }

    /// Whether the stream is in no capture, asked of the driver
    /// (`cuStreamIsCapturing`) as well as of the engine's bookkeeping: a
    /// check that a recording always ends.
    pub fn out_of_capture(&self) -> Result<bool> {
        let status = self
            .stream
            .capture_status()
            .map_err(|e| self.err("cuStreamIsCapturing", e))?;
        Ok(
            !self.capturing()
                && status == sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE,
        )
    }

    /// Waits for everything queued so far; reports an asynchronous kernel
    /// error (illegal address, ...) as an error.
    pub fn synchronize(&self) -> Result<()> {
        self.no_wait_in_capture("a stream synchronisation")?;
        // cudarc's calls start by returning an error one of its drops
        // recorded earlier, without making the call; a synchronisation must
        // drain the stream whatever happened before (callers reuse or free
        // memory the queued work used), so the old error is taken first and
        // reported after the stream has been drained
        let earlier = self.ctx.check_err();
        self.bind()?;
        // SAFETY: this GPU's live stream, its context bound.
        unsafe { result::stream::synchronize(self.cu_stream()) }
            .map_err(|e| self.err("cuStreamSynchronize", e))?;
        earlier.map_err(|e| {
            self.err(
                "an earlier CUDA call (reported when its handle was dropped)",
                e,
            )
        })
    }

    /// `bytes` of device memory for work on this GPU's stream (from the
    /// graph-private pool while a graph is captured).
    pub fn alloc(&'static self, bytes: usize) -> Result<DeviceBlock> {
        self.alloc_as(bytes, false)
    }

    /// [`Gpu::alloc`] for a cuDNN or cuBLASLt workspace: counted apart, so
    /// that [`Gpu::memory_stats`] can say how much of the peak was
    /// workspace (`workspace_at_peak`).
    pub fn alloc_workspace(&'static self, bytes: usize) -> Result<DeviceBlock> {
        self.alloc_as(bytes, true)
    }

    fn alloc_as(&'static self, bytes: usize, workspace: bool) -> Result<DeviceBlock> {
        self.bind()?;
        let captures = lock(&self.captures);
        let private = captures.capturing();
        let (mut general, mut graph) = (lock(&self.alloc), lock(&self.graph_alloc));
        let pool = if private { &mut graph } else { &mut general };
        let stream = self.cu_stream() as StreamId;
        let domain = if !private && LASTING.get() {
            stream | LASTING_DOMAIN
        } else {
            stream
        };
        let ptr = match pool.alloc(bytes, domain) {
            // the general pool ran out (after emptying its own cache) while
            // the graph-private pool, with no graph alive, still caches what
            // the last one used: that goes back to the device, then retry
            Err(e) if !private && captures.idle() => {
                if graph.empty_cache() == 0 {
                    return Err(e);
                }
                general.alloc(bytes, domain)?
            }
            r => r?,
        };
        let (a, b) = (general.stats(), graph.stats());
        let mut peaks = lock(&self.peaks);
        if workspace {
            peaks.workspace += bytes;
        }
        if a.allocated + b.allocated > peaks.allocated {
            peaks.allocated = a.allocated + b.allocated;
            peaks.workspace_at_peak = peaks.workspace;
        }
        peaks.reserved = peaks.reserved.max(a.reserved + b.reserved);
        Ok(DeviceBlock {
            gpu: self,
            ptr,
            bytes,
            private,
            workspace,
        })
    }

    /// Allocated / reserved / peak bytes of the caching allocator and the
    /// graph-private one together.
    pub fn memory_stats(&self) -> AllocatorStats {
        let mut s = lock(&self.alloc)
            .stats()
            .plus(&lock(&self.graph_alloc).stats());
        let p = *lock(&self.peaks);
        (s.peak_allocated, s.peak_reserved) = (p.allocated, p.reserved);
        s.workspace_at_peak = p.workspace_at_peak;
        s
    }

    pub fn reset_peak_memory(&self) {
        let (a, b) = (lock(&self.alloc).stats(), lock(&self.graph_alloc).stats());
        let mut p = lock(&self.peaks);
        p.allocated = a.allocated + b.allocated;
        p.reserved = a.reserved + b.reserved;
        p.workspace_at_peak = p.workspace;
    }

    /// Returns the cached, fully free segments to the device (the
    /// graph-private pool's too when no graph is alive); bytes freed.
    pub fn empty_cache(&self) -> usize {
        let _ = self.bind();
        let captures = lock(&self.captures);
        let private = if captures.idle() {
            lock(&self.graph_alloc).empty_cache()
        } else {
            0
        };
        lock(&self.alloc).empty_cache() + private
    }

    /// Frees a block of the general pool now (a graph that held it back
    /// is gone).
    pub(crate) fn release_general(&self, ptr: u64) {
        let _ = lock(&self.alloc).free(ptr);
    }

    /// Fills `bytes` at `dst` with the byte `value` (queued).
    ///
    /// # Safety
    /// `dst..dst + bytes` lies inside an allocation of this GPU that stays
    /// live until the queued memset has run (a block freed after this call
    /// is fine: its reuse is stream-ordered).
    /// [`DeviceBlock::memset`] is the checked form.
    pub unsafe fn memset(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller's contract.
        unsafe { result::memset_d8_async(dst, value, bytes, self.cu_stream()) }
            .map_err(|e| self.err("cuMemsetD8Async", e))
    }

    /// Device-to-device copy of `bytes` (queued).
    ///
    /// # Safety
    /// `src..src + bytes` and `dst..dst + bytes` lie inside allocations of
    /// this GPU that stay live until the queued copy has run (a block freed
    /// after this call is fine: its reuse is stream-ordered).
    /// [`DeviceBlock::copy_from`] is the checked form.
    pub unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller's contract.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.cu_stream()) }
            .map_err(|e| self.err("cuMemcpyDtoDAsync", e))
    }

    fn staging(&self, need: usize) -> Result<std::sync::MutexGuard<'_, Staging>> {
        let mut s = lock(&self.staging);
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
    /// buffer, queued after the work already on this GPU's stream; returns
    /// when the data has arrived.
    ///
    /// Work on other streams that uses the range is not waited for: the
    /// caller orders it (events) for the values to be meaningful.
    ///
    /// # Safety
    /// `dst..dst + src.len()` lies inside live allocations of this GPU while
    /// the call runs (it waits for its copies). [`Gpu::upload_queued`]
    /// takes this path for large uploads.
    pub unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.no_wait_in_capture(&format!("an upload of {} B", src.len()))?;
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
            // SAFETY: the caller's contract.
            unsafe { result::memcpy_htod_async(at, pinned, self.cu_stream()) }
                .map_err(|e| self.err("cuMemcpyHtoDAsync", e))?;
            self.synchronize()?;
        }
        Ok(())
    }

    /// Host bytes -> device address `dst`, queued on this GPU's stream
    /// without waiting for it: the bytes are copied into a page-locked
    /// upload ring first (`upload_ring.rs`: a small one, and one for
    /// batches), so `src` may be dropped at once; work queued after this
    /// call sees them. Uploads above `MAX_BATCH_UPLOAD` bytes take the
    /// waiting [`Gpu::upload`], as does a batch when the batch ring's
    /// page-locked memory cannot be had.
    ///
    /// # Safety
    /// `dst..dst + src.len()` lies inside an allocation of this GPU that
    /// stays live until the queued copy has run (a block freed after this
    /// call is fine: its reuse is stream-ordered).
    /// [`DeviceBlock::upload_queued_at`] is the checked form.
    pub unsafe fn upload_queued(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        {
            let mut captures = lock(&self.captures);
            if captures.capturing() {
                // the graph reads these bytes at every replay: they go to
                // page-locked memory of its own, not to the ring
                let pinned = PinnedHost::copy_of(self, src)?;
                // SAFETY: the caller's contract for dst; the pinned copy
                // lives as long as the graph that records this copy.
                let queued =
                    unsafe { result::memcpy_htod_async(dst, pinned.bytes(), self.cu_stream()) };
                // kept either way: freeing page-locked memory is not
                // allowed while the capture lasts (the capture ends freeing
                // what it kept)
                captures.keep(pinned);
                return queued.map_err(|e| self.err("cuMemcpyHtoDAsync (captured)", e));
            }
        }
        let which = through(src.len());
        let ring = match which {
            Through::Small => &self.ring,
            Through::Batch => &self.batch_ring,
            // SAFETY: the caller's contract (the waiting form needs less).
            Through::Wait => return unsafe { self.upload(dst, src) },
        };
        let mut r = lock(ring);
        if r.ptr.is_null() && !r.unavailable {
            // SAFETY: plain page-locked allocation, kept for the process.
            match unsafe { result::malloc_host(r.cap, 0) } {
                Ok(p) => r.ptr = p.cast(),
                Err(e) if which == Through::Batch => {
                    // said once: the run goes on, its batch uploads wait
                    eprintln!(
                        "warning: cuda:{}: {} MiB of page-locked memory for batch uploads could not be had ({e:?}); batch uploads wait for the GPU",
                        self.ordinal,
                        r.cap >> 20
                    );
                    r.unavailable = true;
                }
                Err(e) => return Err(self.err("cuMemAllocHost (upload ring)", e)),
            }
        }
        if r.unavailable {
            drop(r);
            // SAFETY: the caller's contract (the waiting form needs less).
            return unsafe { self.upload(dst, src) };
        }
        // SAFETY (events): every id in the spans came from event::create
        // below and is destroyed exactly once, when it leaves the spans.
        let done = |ev: usize| unsafe { result::event::query(ev as sys::CUevent) }.is_ok();
        for ev in r.spans.retire(done) {
            let _ = unsafe { result::event::destroy(ev as sys::CUevent) };
        }
        let (start, wait) = r.spans.place(src.len());
        // every event left the spans: each is destroyed, the first failed
        // wait reported after
        let mut waited = Ok(());
        for ev in wait {
            let w = unsafe { result::event::synchronize(ev as sys::CUevent) };
            let _ = unsafe { result::event::destroy(ev as sys::CUevent) };
            waited = waited.and(w);
        }
        waited.map_err(|e| self.err("cuEventSynchronize (upload ring)", e))?;
        // SAFETY: start + src.len() <= r.cap (place keeps spans inside the
        // ring) and no queued copy reads this span any more (waited).
        let pinned = unsafe {
            let at = r.ptr.add(start);
            std::ptr::copy_nonoverlapping(src.as_ptr(), at, src.len());
            std::slice::from_raw_parts(at, src.len())
        };
        // SAFETY: the caller's contract for dst; the pinned span stays
        // untouched until the event recorded below has completed.
        unsafe { result::memcpy_htod_async(dst, pinned, self.cu_stream()) }
            .map_err(|e| self.err("cuMemcpyHtoDAsync", e))?;
        let recorded =
            result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).and_then(|ev| {
                // SAFETY: a live event and this GPU's stream
                match unsafe { result::event::record(ev, self.cu_stream()) } {
                    Ok(()) => Ok(ev),
                    Err(e) => {
                        let _ = unsafe { result::event::destroy(ev) };
                        Err(e)
                    }
                }
            });
        match recorded {
            Ok(ev) => r.spans.queued(start, src.len(), ev as usize),
            // without an event the span cannot be tracked: wait for the copy
            Err(_) => self.synchronize()?,
        }
        Ok(())
    }

    /// Device address `src` -> host bytes, after the work already queued on
    /// this GPU's stream.
    ///
    /// Work on other streams that writes the range is not waited for: the
    /// caller orders it (events) for the values to be meaningful.
    ///
    /// # Safety
    /// `src..src + dst.len()` lies inside live allocations of this GPU while
    /// the call runs (it waits for its copies). [`DeviceBlock::download_at`]
    /// is the checked form.
    pub unsafe fn download(&self, dst: &mut [u8], src: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.no_wait_in_capture(&format!("a download of {} B", dst.len()))?;
        let chunk = dst.len().min(STAGING_BYTES);
        let s = self.staging(chunk)?;
        for (i, part) in dst.chunks_mut(chunk).enumerate() {
            // SAFETY: the staging buffer holds `chunk` bytes.
            let pinned = unsafe { std::slice::from_raw_parts_mut(s.ptr, part.len()) };
            let at = src + (i * chunk) as u64;
            // SAFETY: the caller's contract.
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
/// free list on drop. Its methods queue work on its GPU's stream and check
/// that every byte they touch lies in the block. They take `&self`: device
/// memory is written through shared handles (in-place optimizer updates),
/// ordered by the stream, never by Rust borrows.
pub struct DeviceBlock {
    gpu: &'static Gpu,
    ptr: u64,
    bytes: usize,
    /// From the graph-private pool (allocated during a capture).
    private: bool,
    /// A library workspace ([`Gpu::alloc_workspace`]).
    workspace: bool,
}

thread_local! {
    /// Inside [`lasting`] on this thread.
    static LASTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The allocator hands a block out only to requests of the stream id its
/// segment was made for; lasting allocations use the main stream's id with
/// this bit set (a CUstream is a pointer, far below it), so they never share
/// a segment with a step's tensors. The stream the work runs on is the same.
const LASTING_DOMAIN: StreamId = 1 << 63;

/// Runs `f` with this thread's GPU allocations (outside a CUDA graph
/// recording) taken from segments of their own: for tensors made during a
/// step that outlive it (the SGD momentum, a parameter's bf16 copy). Placed
/// among the step's activations, each would keep a whole freed activation
/// segment from going back to the device, so that the memory a CUDA graph
/// recording needs stays held by the general pool (docs/ENGINE.md, "A
/// training step as a CUDA graph").
pub fn lasting<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LASTING.set(self.0);
        }
    }
    let _restore = Restore(LASTING.replace(true));
    f()
}

/// The peaks of [`Gpu::memory_stats`] and the workspace bytes behind them.
#[derive(Clone, Copy, Debug, Default)]
struct Peaks {
    allocated: usize,
    reserved: usize,
    /// Library workspace bytes held now, and when `allocated` was reached.
    workspace: usize,
    workspace_at_peak: usize,
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

    /// The address of `offset..offset + len`, or an error naming `op` when
    /// that range is not inside the block.
    fn range(&self, op: &'static str, offset: usize, len: usize) -> Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.bytes => Ok(self.ptr + offset as u64),
            _ => Err(Error::arg(
                op,
                format!(
                    "bytes {offset}..{offset}+{len} are outside the {} B block {:#x} on cuda:{}",
                    self.bytes, self.ptr, self.gpu.ordinal
                ),
            )),
        }
    }

    /// Fills the whole block with the byte `value` (queued).
    pub fn memset(&self, value: u8) -> Result<()> {
        self.memset_at(0, self.bytes, value)
    }

    /// Fills `bytes` bytes from `offset` with the byte `value` (queued).
    pub fn memset_at(&self, offset: usize, bytes: usize, value: u8) -> Result<()> {
        let dst = self.range("cuda memset", offset, bytes)?;
        // SAFETY: the range lies in this block, which is not reused before
        // the queued memset has run (stream-ordered reuse).
        unsafe { self.gpu.memset(dst, value, bytes) }
    }

    /// Copies `bytes` bytes from `src_offset` in `src` to `offset` in this
    /// block (queued; both on the same GPU).
    pub fn copy_from(
        &self,
        offset: usize,
        src: &DeviceBlock,
        src_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        if src.gpu.ordinal != self.gpu.ordinal {
            return Err(Error::arg(
                "cuda copy",
                format!(
                    "source on cuda:{}, destination on cuda:{}",
                    src.gpu.ordinal, self.gpu.ordinal
                ),
            ));
        }
        let dst = self.range("cuda copy", offset, bytes)?;
        let from = src.range("cuda copy", src_offset, bytes)?;
        // SAFETY: both ranges lie in blocks of this GPU, which are not
        // reused before the queued copy has run (stream-ordered reuse).
        unsafe { self.gpu.copy(dst, from, bytes) }
    }

    /// Host bytes -> the block from `offset`, queued on the GPU's stream
    /// without waiting (see [`Gpu::upload_queued`]); `src` may be dropped
    /// at once.
    pub fn upload_queued_at(&self, offset: usize, src: &[u8]) -> Result<()> {
        let dst = self.range("cuda upload", offset, src.len())?;
        // SAFETY: the range lies in this block, which is not reused before
        // the queued copy has run (stream-ordered reuse).
        unsafe { self.gpu.upload_queued(dst, src) }
    }

    /// The block's bytes from `offset` -> host, after the work queued on
    /// the GPU's stream.
    pub fn download_at(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        let src = self.range("cuda download", offset, dst.len())?;
        // SAFETY: the range lies in this block, alive for the call.
        unsafe { self.gpu.download(dst, src) }
    }

    /// `len` of the block's bytes from `offset` -> host, queued after the
    /// work on the GPU's stream; the host waits when it takes them
    /// ([`Gpu::download_queued`]).
    pub fn download_queued_at(&self, offset: usize, len: usize) -> Result<QueuedDownload> {
        let src = self.range("cuda download", offset, len)?;
        // SAFETY: the range lies in this block, which is not reused before
        // the queued copy has run (stream-ordered reuse).
        unsafe { self.gpu.download_queued(src, len) }
    }

    /// Notes that work queued on `stream` (another stream of this GPU's
    /// context) uses the block, so that when the block is dropped it only
    /// returns to the free list once that work has run (PyTorch's
    /// `Tensor.record_stream`). Call it after queuing the work and before
    /// the block is dropped.
    pub fn record_stream(&self, stream: &CudaStream) -> Result<()> {
        if !Arc::ptr_eq(stream.context(), &self.gpu.ctx) {
            return Err(Error::arg(
                "cuda record_stream",
                format!("the stream is not a stream of cuda:{}", self.gpu.ordinal),
            ));
        }
        lock(&self.gpu.alloc).record_stream(self.ptr, stream.cu_stream() as StreamId)
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
        if self.workspace {
            lock(&self.gpu.peaks).workspace -= self.bytes;
        }
        // free fails only when recording an event on a stream that used the
        // block fails (a broken device): the block then stays allocated,
        // never reused, which is safe; nothing to report from a drop (nor
        // a panic: a mutex poisoned by another thread's panic is recovered).
        let mut captures = lock(&self.gpu.captures);
        match captures.free_to(self.private, self.ptr) {
            FreeTo::Private => {
                let _ = lock(&self.gpu.graph_alloc).free(self.ptr);
            }
            FreeTo::General => {
                let _ = lock(&self.gpu.alloc).free(self.ptr);
            }
            FreeTo::HeldBack => {}
        }
    }
}
