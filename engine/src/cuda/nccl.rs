//! NCCL collectives on GPU tensors: all-reduce (sum), broadcast, all-gather.
//!
//! NCCL is opened at run time by the name `libnccl.so.2` (what the pip
//! wheel `nvidia-nccl-cu13` ships, in `site-packages/nvidia/nccl/lib`; put
//! that folder on `LD_LIBRARY_PATH` like the other CUDA libraries, see
//! `probe`). cudarc's own NCCL module looks for other names (`libnccl.so`,
//! `libnccl.so.13`, ...) and panics when none is there, so the few entry
//! points used here are bound by hand; a missing library is an error value.
//!
//! Collectives are queued on the GPU's one stream (`Gpu::stream`), so they
//! are ordered after the backward pass that produced their inputs and
//! before the optimizer that reads their outputs, with no extra events.
//! Each call then waits for its collective with a watchdog: a peer that
//! died or hangs makes NCCL wait forever, so after `timeout` the
//! communicator is aborted (`ncclCommAbort`) and the call returns an error.
//!
//! [`NcclComm::all_reduce_sum_start`] instead queues an all-reduce on a
//! second stream of the GPU and returns at once, so that gradient buckets
//! are summed while the backward pass goes on (the engine's stream rules,
//! `cuda::runtime`): the side stream first waits for an event of the GPU's
//! stream (what produced the input is done), the input and output blocks
//! are marked as used on the side stream (`DeviceBlock::record_stream`, so
//! their memory is not handed out again before the side stream ran), and
//! [`NcclComm::finish`] waits for the side stream with the watchdog and
//! makes the GPU's stream wait for an event recorded after the sum.
//!
//! Unverified on a GPU in this repository's CI (no GPU there).

use super::runtime::{gpu, Gpu};
use super::tensor::{block_of, contiguous, empty, ptr};
use crate::{DType, Device, Error, Result, Tensor};
use cudarc::driver::{sys, CudaEvent, CudaStream};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const LIB: &str = "libnccl.so.2";
/// `ncclFloat32` and `ncclSum` of nccl.h.
const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

/// `ncclUniqueId`: what rank 0 creates and every rank needs to join.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId(pub [u8; 128]);

type Comm = *mut c_void;
type Stream = sys::CUstream;

/// The entry points used, resolved once.
struct Api {
    _lib: libloading::Library,
    get_version: unsafe extern "C" fn(*mut c_int) -> c_int,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int,
    init_all: unsafe extern "C" fn(*mut Comm, c_int, *const c_int) -> c_int,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        Comm,
        Stream,
    ) -> c_int,
    broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        Comm,
        Stream,
    ) -> c_int,
    all_gather:
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, Comm, Stream) -> c_int,
    async_error: unsafe extern "C" fn(Comm, *mut c_int) -> c_int,
    abort: unsafe extern "C" fn(Comm) -> c_int,
    destroy: unsafe extern "C" fn(Comm) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
}

fn nccl_error(msg: impl Into<String>) -> Error {
    Error::arg("nccl", msg)
}

/// NCCL, loaded on first use; the error says where to get it.
fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(load)
        .as_ref()
        .map_err(|e| nccl_error(e.clone()))
}

fn load() -> std::result::Result<Api, String> {
    // SAFETY: loading NCCL runs no initialisers beyond its own.
    let lib = unsafe { libloading::Library::new(LIB) }.map_err(|e| {
        format!("cannot load {LIB} ({e}); install the pip wheel nvidia-nccl-cu13 and put its nvidia/nccl/lib folder on LD_LIBRARY_PATH, or use --dist-backend tcp")
    })?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the symbol has the C signature of nccl.h that the
            // field it is stored in declares.
            *unsafe { lib.get($name) }.map_err(|e| {
                format!(
                    "{LIB} lacks {}: {e}",
                    String::from_utf8_lossy(&$name[..$name.len() - 1])
                )
            })?
        };
    }
    Ok(Api {
        get_version: sym!(b"ncclGetVersion\0"),
        get_unique_id: sym!(b"ncclGetUniqueId\0"),
        init_rank: sym!(b"ncclCommInitRank\0"),
        init_all: sym!(b"ncclCommInitAll\0"),
        all_reduce: sym!(b"ncclAllReduce\0"),
        broadcast: sym!(b"ncclBroadcast\0"),
        all_gather: sym!(b"ncclAllGather\0"),
        async_error: sym!(b"ncclCommGetAsyncError\0"),
        abort: sym!(b"ncclCommAbort\0"),
        destroy: sym!(b"ncclCommDestroy\0"),
        error_string: sym!(b"ncclGetErrorString\0"),
        _lib: lib,
    })
}

impl Api {
    fn check(&self, what: &str, code: c_int) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: NCCL returns a static string for any code.
        let s = unsafe { CStr::from_ptr((self.error_string)(code)) };
        Err(nccl_error(format!(
            "{what} failed: {} (code {code})",
            s.to_string_lossy()
        )))
    }
}

/// The loaded NCCL's version, e.g. 22703 for 2.27.3.
pub fn version() -> Result<i32> {
    let api = api()?;
    let mut v = 0;
    // SAFETY: writes one int.
    api.check("ncclGetVersion", unsafe { (api.get_version)(&mut v) })?;
    Ok(v)
}

/// A new id for a group (rank 0 makes it and sends it to the others).
pub fn unique_id() -> Result<UniqueId> {
    let api = api()?;
    let mut id = UniqueId([0; 128]);
    // SAFETY: writes the 128-byte id.
    api.check("ncclGetUniqueId", unsafe { (api.get_unique_id)(&mut id) })?;
    Ok(id)
}

/// One rank's NCCL communicator, bound to one GPU.
pub struct NcclComm {
    comm: Comm,
    gpu: &'static Gpu,
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Set once aborted: every later call is an error.
    broken: bool,
    /// The stream of `all_reduce_sum_start`, created on first use.
    side: Option<Arc<CudaStream>>,
}

/// An all-reduce queued by [`NcclComm::all_reduce_sum_start`]: its output
/// (valid once [`NcclComm::finish`] returned it) and the event recorded on
/// the side stream after it.
pub struct PendingSum {
    out: Tensor,
    done: CudaEvent,
}

// SAFETY: an NCCL communicator may be used from any one thread at a time;
// `&mut self` on every call ensures that.
unsafe impl Send for NcclComm {}

impl NcclComm {
    /// Rank `rank` of `world` on GPU `ordinal`, joining the group `id`
    /// (blocks until every rank has joined).
    pub fn init_rank(
        id: UniqueId,
        rank: usize,
        world: usize,
        ordinal: usize,
        timeout: Duration,
    ) -> Result<NcclComm> {
        let api = api()?;
        let g = gpu(ordinal)?;
        g.bind()?;
        let mut comm: Comm = std::ptr::null_mut();
        // SAFETY: `comm` receives the new communicator.
        api.check("ncclCommInitRank", unsafe {
            (api.init_rank)(&mut comm, world as c_int, id, rank as c_int)
        })?;
        Ok(NcclComm {
            comm,
            gpu: g,
            rank,
            world,
            timeout,
            broken: false,
            side: None,
        })
    }

    /// One communicator per GPU of `ordinals` (rank `r` on `ordinals[r]`),
    /// for ranks that are threads of this process.
    pub fn init_all(ordinals: &[usize], timeout: Duration) -> Result<Vec<NcclComm>> {
        let api = api()?;
        let gpus = ordinals
            .iter()
            .map(|&o| gpu(o))
            .collect::<Result<Vec<_>>>()?;
        let devs: Vec<c_int> = ordinals.iter().map(|&o| o as c_int).collect();
        let mut comms: Vec<Comm> = vec![std::ptr::null_mut(); devs.len()];
        // SAFETY: `comms` has one slot per device.
        api.check("ncclCommInitAll", unsafe {
            (api.init_all)(comms.as_mut_ptr(), devs.len() as c_int, devs.as_ptr())
        })?;
        Ok(comms
            .into_iter()
            .zip(gpus)
            .enumerate()
            .map(|(rank, (comm, gpu))| NcclComm {
                comm,
                gpu,
                rank,
                world: ordinals.len(),
                timeout,
                broken: false,
                side: None,
            })
            .collect())
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world(&self) -> usize {
        self.world
    }

    /// A contiguous f32 copy-free view of `t` on this communicator's GPU.
    fn input(&self, t: &Tensor) -> Result<Tensor> {
        if self.broken {
            return Err(nccl_error(
                "the communicator was aborted after an earlier failure",
            ));
        }
        if t.device() != self.gpu.device() || t.dtype() != DType::F32 || t.rank() != 1 {
            return Err(nccl_error(format!(
                "expected a flat f32 tensor on {}, got {:?} {:?} on {}",
                self.gpu.device(),
                t.dtype(),
                t.dims(),
                t.device()
            )));
        }
        contiguous(t)
    }

    /// Waits for the collectives queued on `stream` (the GPU's or the side
    /// stream); aborts after the timeout or on an asynchronous NCCL error
    /// (a peer failed).
    fn wait(&mut self, what: &str, stream: Stream) -> Result<()> {
        let api = api()?;
        let t0 = Instant::now();
        loop {
            // SAFETY: queries a live stream of this GPU.
            match unsafe { sys::cuStreamQuery(stream) } {
                sys::CUresult::CUDA_SUCCESS => return Ok(()),
                sys::CUresult::CUDA_ERROR_NOT_READY => {}
                e => return Err(self.gpu.err(what, e)),
            }
            let mut state = 0;
            // SAFETY: reads the communicator's state into one int.
            let code = unsafe { (api.async_error)(self.comm, &mut state) };
            let failed = api
                .check("ncclCommGetAsyncError", code)
                .and_then(|_| api.check(what, state));
            let late = t0.elapsed() > self.timeout;
            if failed.is_err() || late {
                self.broken = true;
                // SAFETY: aborting ends the pending collective; the handle
                // is not used again (`broken`).
                unsafe { (api.abort)(self.comm) };
                return Err(failed.err().unwrap_or_else(|| {
                    nccl_error(format!(
                        "{what} did not finish within {:.0} s: a rank is dead or stuck; aborted",
                        self.timeout.as_secs_f64()
                    ))
                }));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Queues `call(api, input, output, input count, comm, stream)` on a
    /// contiguous copy of `t` and an output of `t.numel() * out_per_in`
    /// f32, then waits for it.
    fn collective(
        &mut self,
        what: &str,
        t: &Tensor,
        out_per_in: usize,
        call: impl FnOnce(&Api, *const c_void, *mut c_void, usize, Comm, Stream) -> c_int,
    ) -> Result<Tensor> {
        let x = self.input(t)?;
        let out = empty(self.gpu, &[x.numel() * out_per_in], DType::F32)?;
        let api = api()?;
        self.gpu.bind()?;
        let (src, dst) = (ptr(&x)? as *const c_void, ptr(&out)? as *mut c_void);
        let code = call(api, src, dst, x.numel(), self.comm, self.gpu.cu_stream());
        api.check(what, code)?;
        // `x` and `out` stay alive until the collective has run
        self.wait(what, self.gpu.cu_stream())?;
        Ok(out)
    }

    /// The side stream, created on first use.
    fn side(&mut self) -> Result<Arc<CudaStream>> {
        if self.side.is_none() {
            let s = self
                .gpu
                .ctx
                .new_stream()
                .map_err(|e| self.gpu.err("cuStreamCreate", e))?;
            self.side = Some(s);
        }
        Ok(self.side.clone().expect("created above"))
    }

    /// Queues the element-wise sum over the ranks of the flat f32 `t` on
    /// the side stream, after everything queued so far on the GPU's stream,
    /// and returns at once (see the module notes). Every rank starts the
    /// same sums in the same order.
    pub fn all_reduce_sum_start(&mut self, t: &Tensor) -> Result<PendingSum> {
        let x = self.input(t)?;
        let out = empty(self.gpu, &[x.numel()], DType::F32)?;
        let side = self.side()?;
        let err = |what: &str, e| self.gpu.err(what, e);
        side.join(&self.gpu.stream)
            .map_err(|e| err("cuStreamWaitEvent", e))?;
        let api = api()?;
        self.gpu.bind()?;
        let (src, dst) = (ptr(&x)? as *const c_void, ptr(&out)? as *mut c_void);
        // SAFETY: `src` and `dst` hold `x.numel()` f32 each on this GPU and
        // stay allocated until the side stream ran (record_stream below).
        let code = unsafe {
            (api.all_reduce)(
                src,
                dst,
                x.numel(),
                NCCL_FLOAT32,
                NCCL_SUM,
                self.comm,
                side.cu_stream(),
            )
        };
        api.check("ncclAllReduce", code)?;
        for b in [&x, &out] {
            block_of(b)?.0.record_stream(&side)?;
        }
        let done = side
            .record_event(None)
            .map_err(|e| err("cuEventRecord", e))?;
        Ok(PendingSum { out, done })
    }

    /// The result of a sum started by [`NcclComm::all_reduce_sum_start`]:
    /// waits for the side stream (with the watchdog), and orders the GPU's
    /// stream after the sum.
    pub fn finish(&mut self, p: PendingSum) -> Result<Tensor> {
        let side = self.side()?;
        self.wait("ncclAllReduce", side.cu_stream())?;
        self.gpu
            .stream
            .wait(&p.done)
            .map_err(|e| self.gpu.err("cuStreamWaitEvent", e))?;
        Ok(p.out)
    }

    /// Element-wise sum over the ranks of the flat f32 `t`.
    pub fn all_reduce_sum(&mut self, t: &Tensor) -> Result<Tensor> {
        self.collective("ncclAllReduce", t, 1, |api, src, dst, n, comm, stream| {
            // SAFETY: `src` and `dst` hold `n` f32 on this GPU (see collective).
            unsafe { (api.all_reduce)(src, dst, n, NCCL_FLOAT32, NCCL_SUM, comm, stream) }
        })
    }

    /// Rank `root`'s `t` on every rank.
    pub fn broadcast(&mut self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world {
            return Err(nccl_error(format!(
                "broadcast root {root} is not a rank of a group of {}",
                self.world
            )));
        }
        self.collective("ncclBroadcast", t, 1, |api, src, dst, n, comm, stream| {
            // SAFETY: as in all_reduce_sum.
            unsafe { (api.broadcast)(src, dst, n, NCCL_FLOAT32, root as c_int, comm, stream) }
        })
    }

    /// Every rank's `t`, concatenated in rank order.
    pub fn all_gather(&mut self, t: &Tensor) -> Result<Tensor> {
        let world = self.world;
        self.collective(
            "ncclAllGather",
            t,
            world,
            |api, src, dst, n, comm, stream| {
                // SAFETY: `dst` holds world x `n` f32 on this GPU.
                unsafe { (api.all_gather)(src, dst, n, NCCL_FLOAT32, comm, stream) }
            },
        )
    }

    /// Returns once every rank got here (an all-reduce of one value).
    pub fn barrier(&mut self) -> Result<()> {
        let one = Tensor::from_vec(vec![1f32], &[1])?.to_device(self.gpu.device())?;
        self.all_reduce_sum(&one).map(|_| ())
    }

    pub fn device(&self) -> Device {
        self.gpu.device()
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        if let (Ok(api), false) = (api(), self.broken) {
            let _ = self.gpu.bind();
            // SAFETY: the handle came from NCCL and is released once.
            unsafe { (api.destroy)(self.comm) };
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_library_is_an_error_value() {
        // on a machine with NCCL this loads it; without, the error names it
        match super::version() {
            Ok(v) => assert!(v >= 20000, "NCCL version {v}"),
            Err(e) => assert!(e.to_string().contains("libnccl.so.2"), "{e}"),
        }
    }
}
