//! Downloads that do not wait when they are queued: the copy goes on the
//! stream into page-locked memory with an event behind it, and the host
//! waits only when it takes the bytes ([`QueuedDownload::wait`]). A
//! training step's few values are read this way while the next step is
//! already queued behind them (`Tensor::queue_to_host`).
//!
//! The page-locked buffers (`QUEUED_READ_BYTES` each) are allocated on
//! first use and kept by the [`Gpu`] for the process: freeing page-locked
//! memory can synchronise the device. Larger reads wait at once, through
//! the staging buffer ([`Gpu::download`]).

use super::runtime::{lock, Gpu};
use crate::{Error, Result};
use cudarc::driver::{result, sys};

/// The largest download [`Gpu::download_queued`] leaves queued.
pub const QUEUED_READ_BYTES: usize = 64 << 10;

/// A download queued by [`Gpu::download_queued`].
pub struct QueuedDownload {
    gpu: &'static Gpu,
    len: usize,
    state: State,
}

enum State {
    /// The bytes, already on the host (a read too large to queue).
    Waited(Vec<u8>),
    /// A page-locked buffer of the GPU's pool (as usize) the copy writes,
    /// and the event recorded after it (0 until it is recorded: drop then
    /// waits for the whole stream).
    Queued { buf: usize, event: usize },
}

impl Gpu {
    /// Device address `src` -> `len` host bytes, queued after the work
    /// already on this GPU's stream; the host waits only in
    /// [`QueuedDownload::wait`]. Work queued after this call (a kernel that
    /// overwrites the range) does not change what is read. Reads above
    /// [`QUEUED_READ_BYTES`] wait here instead. Refused while a CUDA graph
    /// is captured (the copy and its event would be recorded, not run).
    ///
    /// # Safety
    /// `src..src + len` lies inside an allocation of this GPU that stays
    /// live until the queued copy has run (a block freed after this call
    /// is fine: its reuse is stream-ordered).
    pub unsafe fn download_queued(&'static self, src: u64, len: usize) -> Result<QueuedDownload> {
        if len == 0 || len > QUEUED_READ_BYTES {
            let mut bytes = vec![0u8; len];
            // SAFETY: the caller's contract (the waiting form needs less).
            unsafe { self.download(&mut bytes, src) }?;
            return Ok(QueuedDownload {
                gpu: self,
                len,
                state: State::Waited(bytes),
            });
        }
        if self.capturing() {
            return Err(Error::arg(
                "cuda graph capture",
                format!(
                    "a queued read of {len} B cannot be recorded in a CUDA graph (cuda:{}); queue it after the replay",
                    self.ordinal
                ),
            ));
        }
        self.bind()?;
        let pooled = lock(&self.read_buffers).pop();
        let buf = match pooled {
            Some(b) => b,
            // SAFETY: plain page-locked allocation, kept for the process.
            None => unsafe { result::malloc_host(QUEUED_READ_BYTES, 0) }
                .map_err(|e| self.err("cuMemAllocHost (queued read)", e))?
                as usize,
        };
        // from here on, dropping `read` returns the buffer to the pool
        let mut read = QueuedDownload {
            gpu: self,
            len,
            state: State::Queued { buf, event: 0 },
        };
        // SAFETY: buf holds QUEUED_READ_BYTES >= len bytes, owned by `read`
        // until its drop has waited for the copy.
        let pinned = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, len) };
        // SAFETY: the caller's contract for src.
        unsafe { result::memcpy_dtoh_async(pinned, src, self.cu_stream()) }
            .map_err(|e| self.err("cuMemcpyDtoHAsync (queued read)", e))?;
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| self.err("cuEventCreate (queued read)", e))?;
        // SAFETY: a live event and this GPU's stream.
        if let Err(e) = unsafe { result::event::record(event, self.cu_stream()) } {
            // SAFETY: created above, not recorded, destroyed once.
            let _ = unsafe { result::event::destroy(event) };
            return Err(self.err("cuEventRecord (queued read)", e));
        }
        read.state = State::Queued {
            buf,
            event: event as usize,
        };
        Ok(read)
    }
}

impl QueuedDownload {
    /// Waits for the copy and returns the bytes. An error of the work
    /// queued before it (an illegal address) is reported here.
    pub fn wait(mut self) -> Result<Vec<u8>> {
        match &mut self.state {
            State::Waited(bytes) => Ok(std::mem::take(bytes)),
            // drop then releases the buffer and the event
            &mut State::Queued { buf, event } => {
                self.gpu.bind()?;
                if event != 0 {
                    // SAFETY: a live event recorded by download_queued.
                    unsafe { result::event::synchronize(event as sys::CUevent) }
                        .map_err(|e| self.gpu.err("cuEventSynchronize (queued read)", e))?;
                }
                // SAFETY: the copy into buf's first len bytes has completed.
                Ok(unsafe { std::slice::from_raw_parts(buf as *const u8, self.len) }.to_vec())
            }
        }
    }
}

impl Drop for QueuedDownload {
    /// Waits for the copy (an unread download still writes its buffer)
    /// before the buffer goes back to the pool.
    fn drop(&mut self) {
        let State::Queued { buf, event } = self.state else {
            return;
        };
        if self.gpu.bind().is_err() {
            // the context is gone: the buffer is not handed out again
            return;
        }
        let settled = if event != 0 {
            // SAFETY: a live event recorded by download_queued, destroyed
            // once, here.
            unsafe {
                let waited = result::event::synchronize(event as sys::CUevent);
                let _ = result::event::destroy(event as sys::CUevent);
                waited.is_ok()
            }
        } else {
            // a copy may have been queued without its event
            self.gpu.synchronize().is_ok()
        };
        if settled {
            lock(&self.gpu.read_buffers).push(buf);
        }
    }
}
