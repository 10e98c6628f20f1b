//! CUDA graphs: a piece of work (a whole training step) recorded once from
//! the GPU's stream and then replayed with one launch, its kernels, copies
//! and cuDNN/cuBLASLt calls exactly as recorded (PyTorch's
//! `torch.cuda.graph`).
//!
//! A replay reads and writes the very addresses the capture saw, so:
//! - **memory**: what the captured work allocates comes from a
//!   graph-private caching allocator ([`Gpu::alloc`] routes there while
//!   [`capture`] runs). Blocks freed during the capture are reused within
//!   it (a replay runs in capture order on one stream), and nothing outside
//!   a capture allocates from that pool, so no other work can overwrite a
//!   graph's memory between or during replays. Blocks of the general pool
//!   freed during the capture (the captured work may be their last user)
//!   are held back until the graph is dropped ([`Captures::free_to`]);
//! - **uploads**: a queued upload during the capture copies its bytes into
//!   page-locked memory the graph keeps, which each replay reads again;
//! - **no waits**: a capture only records work, so every call that waits
//!   for the GPU (a download, a synchronisation, the cuDNN search's
//!   timing) is an error during it, and the capture fails as a whole;
//! - **inputs** are written into tensors the graph already reads (the
//!   trainer copies each batch into its static input tensors), and state
//!   the step replaces on the host must be updated in place instead
//!   (`nn::Buffer::set` copies into the old storage while capturing);
//! - **one graph per GPU** at a time: its private pool is not shared.
//!
//! The capture runs in the thread-local mode: a call on this thread that
//! would break the capture fails instead of silently running once. The
//! allocator's own `cuMemAlloc` switches to the relaxed mode around itself
//! ([`RelaxedCapture`]), as CUDA's documentation prescribes for allocators.

use super::runtime::{driver_err, lock, Gpu};
use crate::{Device, Error, Result};
use cudarc::driver::sys;

/// Whether a CUDA graph is being recorded on `device` (never on the CPU).
pub fn capturing(device: Device) -> Result<bool> {
    match device {
        Device::Cuda(i) => Ok(super::gpu(i)?.capturing()),
        Device::Cpu => Ok(false),
    }
}

/// Where a freed block goes ([`Captures::free_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FreeTo {
    /// The graph-private pool's free lists.
    Private,
    /// The general pool's free lists.
    General,
    /// Nowhere yet: a graph being captured may use it; freed with the graph.
    HeldBack,
}

/// A GPU's graph state: idle, capturing (with what the capture holds), or
/// a graph alive. Pure bookkeeping; [`Gpu`] keeps one under a mutex.
#[derive(Default)]
pub(crate) struct Captures {
    capturing: bool,
    live: bool,
    /// General-pool blocks freed while capturing.
    held: Vec<u64>,
    /// The bytes of the uploads queued while capturing.
    pinned: Vec<PinnedHost>,
}

impl Captures {
    pub(crate) fn capturing(&self) -> bool {
        self.capturing
    }

    /// No capture under way and no graph alive.
    pub(crate) fn idle(&self) -> bool {
        !self.capturing && !self.live
    }

    /// Where the block at `ptr` goes when freed (`private`: it came from
    /// the graph-private pool). Records a held-back one.
    pub(crate) fn free_to(&mut self, private: bool, ptr: u64) -> FreeTo {
        if private {
            FreeTo::Private
        } else if self.capturing {
            self.held.push(ptr);
            FreeTo::HeldBack
        } else {
            FreeTo::General
        }
    }

    pub(crate) fn keep(&mut self, p: PinnedHost) {
        self.pinned.push(p);
    }

    /// Starts a capture: an error when one is under way or a graph lives.
    fn begin(&mut self, ordinal: usize) -> Result<()> {
        if !self.idle() {
            return Err(Error::arg(
                "cuda graph capture",
                format!(
                    "cuda:{ordinal} already {} a CUDA graph; drop it first (one graph per GPU)",
                    if self.capturing { "captures" } else { "holds" }
                ),
            ));
        }
        self.capturing = true;
        Ok(())
    }

    /// Ends the capture: what it held, and whether a graph now lives.
    fn end(&mut self, live: bool) -> (Vec<u64>, Vec<PinnedHost>) {
        self.capturing = false;
        self.live = live;
        (
            std::mem::take(&mut self.held),
            std::mem::take(&mut self.pinned),
        )
    }

    fn graph_dropped(&mut self) {
        self.live = false;
    }
}

/// Page-locked host bytes a captured upload reads at every replay.
pub(crate) struct PinnedHost {
    ptr: *mut u8,
    len: usize,
}
// SAFETY: the bytes are written once, before the copy that reads them is
// recorded, and only read by the GPU afterwards.
unsafe impl Send for PinnedHost {}

impl PinnedHost {
    /// A page-locked copy of `src` (not empty).
    pub(crate) fn copy_of(gpu: &Gpu, src: &[u8]) -> Result<PinnedHost> {
        // an allocation, not work on the stream: allowed in the relaxed mode
        let _relaxed = RelaxedCapture::enter();
        // SAFETY: plain page-locked allocation in the bound context.
        let p = unsafe { cudarc::driver::result::malloc_host(src.len(), 0) }
            .map_err(|e| gpu.err("cuMemAllocHost (captured upload)", e))?;
        let ptr: *mut u8 = p.cast();
        // SAFETY: ptr holds src.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), ptr, src.len()) };
        Ok(PinnedHost {
            ptr,
            len: src.len(),
        })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: ptr holds len initialised bytes, alive with self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host; the graph that read it is gone
        // (or never ran).
        let _ = unsafe { cudarc::driver::result::free_host(self.ptr.cast()) };
    }
}

/// The calling thread in the relaxed capture mode until dropped (then the
/// mode it had). Outside a capture this changes nothing.
pub(crate) struct RelaxedCapture(Option<sys::CUstreamCaptureMode>);

impl RelaxedCapture {
    pub(crate) fn enter() -> RelaxedCapture {
        let mut mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        // SAFETY: exchanges a thread-local setting through a valid pointer.
        let r = unsafe { sys::cuThreadExchangeStreamCaptureMode(&mut mode) };
        RelaxedCapture((r == sys::CUresult::CUDA_SUCCESS).then_some(mode))
    }
}

impl Drop for RelaxedCapture {
    fn drop(&mut self) {
        if let Some(mut mode) = self.0 {
            // SAFETY: as in enter.
            let _ = unsafe { sys::cuThreadExchangeStreamCaptureMode(&mut mode) };
        }
    }
}

/// A captured, instantiated graph of one GPU, with the memory and upload
/// bytes it needs; [`Graph::replay`] queues it on the GPU's stream.
pub struct Graph {
    gpu: &'static Gpu,
    exec: Option<cudarc::driver::CudaGraph>,
    held: Vec<u64>,
    _pinned: Vec<PinnedHost>,
}

// SAFETY: CUDA graph objects may be used from any thread as long as no two
// threads use one at the same time; `Graph` is not `Sync`, so its owner's
// thread is the only one using it (cudarc leaves its handles `!Send` by
// default, being raw pointers).
unsafe impl Send for Graph {}

impl Graph {
    /// Queues one replay on the GPU's stream (does not wait).
    pub fn replay(&self) -> Result<()> {
        let exec = self.exec.as_ref().expect("a live graph has its exec");
        exec.launch().map_err(|e| self.gpu.err("cuGraphLaunch", e))
    }

    pub fn gpu(&self) -> &'static Gpu {
        self.gpu
    }
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Graph(cuda:{})", self.gpu.ordinal)
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // no replay may still run when its memory goes back
        let _ = self.gpu.synchronize();
        drop(self.exec.take());
        for &ptr in &self.held {
            self.gpu.release_general(ptr);
        }
        lock(&self.gpu.captures).graph_dropped();
    }
}

/// Records what `f` queues on `gpu`'s stream as a graph, without running
/// it: replay it (at least once) to run it. `f`'s result comes back with
/// the graph; the tensors it returns live in the graph-private pool and
/// are rewritten by each replay.
///
/// Everything `f` needs must be ready before (warm caches: the cuDNN and
/// cuBLASLt searches, kernel modules, optimizer state), since a call that
/// waits for the GPU fails the capture. On any error (or a panic in `f`,
/// which goes on once the capture has ended) the capture is abandoned,
/// nothing has run, and memory freed during it is released.
pub fn capture<R>(gpu: &'static Gpu, f: impl FnOnce() -> Result<R>) -> Result<(Graph, R)> {
    // work queued before the capture runs first; an earlier fault shows here
    gpu.synchronize()?;
    // the general pool's cached free memory goes back to the device, where
    // the graph-private pool can take it
    gpu.empty_cache();
    lock(&gpu.captures).begin(gpu.ordinal)?;
    let begun = gpu
        .stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| driver_err(gpu.device(), "cuStreamBeginCapture", e));
    if let Err(e) = begun {
        lock(&gpu.captures).end(false);
        return Err(e);
    }
    // a panic in `f` must not leave the stream capturing (every later
    // allocation would go to the private pool): end the capture, then
    // let the panic go on
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    // cudarc's end_capture would first return an error one of its drops
    // recorded during `f`, and leave the stream capturing: take that error
    // here, so that the capture always ends, and fail the capture with it
    let earlier = gpu.ctx.check_err();
    let ended = gpu
        .stream
        .end_capture(sys::CUgraphInstantiate_flags(0))
        .and_then(|g| earlier.map(|()| g));
    let ok = matches!((&out, &ended), (Ok(Ok(_)), Ok(Some(_))));
    let (held, pinned) = lock(&gpu.captures).end(ok);
    match (out, ended) {
        (Ok(Ok(r)), Ok(Some(exec))) => Ok((
            Graph {
                gpu,
                exec: Some(exec),
                held,
                _pinned: pinned,
            },
            r,
        )),
        (out, ended) => {
            // nothing recorded ran: what was held back is free now
            for ptr in held {
                gpu.release_general(ptr);
            }
            drop(pinned);
            Err(match (out, ended) {
                (Err(panic), _) => std::panic::resume_unwind(panic),
                (Ok(Err(e)), _) => e,
                (Ok(Ok(_)), Err(e)) => driver_err(
                    gpu.device(),
                    "cuStreamEndCapture/cuGraphInstantiate (a call during the capture could not be recorded)",
                    e,
                ),
                (Ok(Ok(_)), Ok(_)) => {
                    Error::arg("cuda graph capture", "the capture recorded no graph")
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frees_go_where_the_capture_state_says() {
        let mut c = Captures::default();
        assert!(c.idle());
        assert_eq!(c.free_to(false, 1), FreeTo::General);
        assert_eq!(c.free_to(true, 2), FreeTo::Private);
        c.begin(0).unwrap();
        assert!(c.capturing() && !c.idle());
        // a general block freed while capturing waits for the graph
        assert_eq!(c.free_to(false, 3), FreeTo::HeldBack);
        assert_eq!(c.free_to(true, 4), FreeTo::Private);
        assert!(c.begin(0).is_err(), "no capture inside a capture");
        let (held, pinned) = c.end(true);
        assert_eq!(held, vec![3]);
        assert!(pinned.is_empty());
        assert!(!c.capturing() && !c.idle());
        assert_eq!(c.free_to(false, 5), FreeTo::General);
        let e = c.begin(0).unwrap_err().to_string();
        assert!(e.contains("holds a CUDA graph"), "{e}");
        c.graph_dropped();
        assert!(c.idle());
        c.begin(0).unwrap();
        let (held, _) = c.end(false);
        assert!(
            held.is_empty() && c.idle(),
            "a failed capture leaves no graph"
        );
    }
}
