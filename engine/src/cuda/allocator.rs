//! The caching device allocator's bookkeeping, as a pure data structure.
//!
//! `cuMemAlloc`/`cuMemFree` synchronise the device and cost tens of
//! microseconds; a training step allocates hundreds of tensors. Like
//! PyTorch's CUDA caching allocator, this one asks the device for big
//! *segments* once and carves *blocks* out of them; a freed block goes back
//! to a free list, not to the device, so a steady training loop does no raw
//! allocation or free at all after its first step.
//!
//! It is generic over a [`Backend`] (the raw allocate / free / query calls),
//! so the bookkeeping is tested without a GPU against a simulated address
//! space (engine/tests/cuda_host.rs, and the stream-use tests below, whose
//! events complete by hand); the CUDA backend plugs in cudarc.
//!
//! Rules (PyTorch's, `c10/cuda/CUDACachingAllocator.cpp`):
//! - every request is rounded up to a multiple of [`MIN_BLOCK`] (512 B);
//!   a zero-byte request takes one 512 B block;
//! - rounded sizes <= [`SMALL_SIZE`] (1 MiB) come from the *small* pool, whose
//!   segments are [`SMALL_SEGMENT`] (2 MiB); larger ones from the *large*
//!   pool, whose segments are [`LARGE_SEGMENT`] (20 MiB) for requests under
//!   [`MIN_LARGE_ALLOC`] (10 MiB) and the request rounded up to
//!   [`ROUND_LARGE`] (2 MiB) otherwise;
//! - best fit: the smallest free block of the pool, on the same stream, that
//!   is large enough (ties: lowest address), from a size-ordered `BTreeSet`;
//! - a block is split when the remainder is >= 512 B (small pool) or
//!   > 1 MiB (large pool); the remainder becomes a free block;
//! - a freed block is merged with its free neighbours in the same segment;
//! - stream-ordered reuse: a segment belongs to the stream that caused its
//!   allocation and its blocks are only handed out for that stream, so work
//!   queued on one stream never sees memory still in use by another stream's
//!   queued work (`Gpu` also uses a stream id of its own for tensors that
//!   outlive a step, to keep them apart: `cuda::lasting`);
//! - a block also used on a second stream is declared with
//!   [`CachingAllocator::record_stream`] (PyTorch's `record_stream`). Freeing
//!   it records an event on each such stream and *parks* the block: it is
//!   neither handed out nor merged until those events have completed, i.e.
//!   until the other streams have run everything queued on them before the
//!   free. Completed parked blocks go back to the free lists at the start of
//!   the next [`CachingAllocator::alloc`]; `allocated` drops at the free,
//!   `reserved` still counts them;
//! - [`CachingAllocator::empty_cache`] waits for the parked blocks' events,
//!   then returns fully free segments to the device;
//! - out of memory: when the device refuses a segment, the cache is emptied
//!   and the request retried once; if it still fails the error says what was
//!   asked, what is allocated, what is reserved (cached) and what the device
//!   reports free / total.
//!
//! Not thread-safe by itself (`&mut self`): the CUDA backend wraps one per
//! device in a `Mutex`.

use crate::{Device, Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Requests are rounded up to a multiple of this.
pub const MIN_BLOCK: usize = 512;
/// Largest rounded size served by the small pool.
pub const SMALL_SIZE: usize = 1 << 20;
/// Segment size of the small pool.
pub const SMALL_SEGMENT: usize = 2 << 20;
/// Requests below this (and above SMALL_SIZE) get a LARGE_SEGMENT segment.
pub const MIN_LARGE_ALLOC: usize = 10 << 20;
/// Segment size for mid-sized large requests.
pub const LARGE_SEGMENT: usize = 20 << 20;
/// Large requests >= MIN_LARGE_ALLOC get a segment rounded up to this.
pub const ROUND_LARGE: usize = 2 << 20;

/// A stream's identity (the raw CUstream value, or any id the caller uses).
pub type StreamId = u64;

/// An event's identity (the raw CUevent value, or any id the backend uses).
pub type EventId = u64;

/// The raw device calls the allocator needs.
///
/// The event calls are only made for blocks passed to
/// [`CachingAllocator::record_stream`]. Their defaults fit a backend whose
/// work is complete as soon as it is queued (an event is done when
/// recorded), like the simulated devices of the tests; a backend with
/// asynchronous streams (CUDA) overrides all four.
pub trait Backend {
    /// Allocate `bytes` of device memory; the address of the first byte.
    fn raw_alloc(&mut self, bytes: usize) -> Result<u64>;
    /// Release memory returned by `raw_alloc`.
    fn raw_free(&mut self, ptr: u64);
    /// The device's (free, total) bytes, when it can tell.
    fn free_memory(&self) -> Option<(usize, usize)>;
    /// A new event recorded on `stream`: it completes once the work queued
    /// on `stream` so far has run.
    fn record_event(&mut self, _stream: StreamId) -> Result<EventId> {
        Ok(0)
    }
    /// Whether `event` has completed (does not wait).
    fn event_done(&mut self, _event: EventId) -> Result<bool> {
        Ok(true)
    }
    /// Waits until `event` has completed.
    fn wait_event(&mut self, _event: EventId) -> Result<()> {
        Ok(())
    }
    /// Releases an event from `record_event` (completed or not).
    fn destroy_event(&mut self, _event: EventId) {}
}

/// Which pool a block (and its segment) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    Small,
    Large,
}

/// `bytes` rounded up to a multiple of [`MIN_BLOCK`] (0 -> 512); None on overflow.
pub fn round_size(bytes: usize) -> Option<usize> {
    let b = bytes.max(1);
    b.checked_add(MIN_BLOCK - 1)
        .map(|v| v / MIN_BLOCK * MIN_BLOCK)
}

/// The pool a rounded size is served from.
pub fn pool_of(rounded: usize) -> Pool {
    if rounded <= SMALL_SIZE {
        Pool::Small
    } else {
        Pool::Large
    }
}

/// The size of the segment allocated from the device for a rounded request
/// that found no free block; None on overflow.
pub fn segment_size(rounded: usize) -> Option<usize> {
    if rounded <= SMALL_SIZE {
        Some(SMALL_SEGMENT)
    } else if rounded < MIN_LARGE_ALLOC {
        Some(LARGE_SEGMENT)
    } else {
        rounded
            .checked_add(ROUND_LARGE - 1)
            .map(|v| v / ROUND_LARGE * ROUND_LARGE)
    }
}

/// Whether a block of `pool` with `remaining` spare bytes is split.
pub fn should_split(pool: Pool, remaining: usize) -> bool {
    match pool {
        Pool::Small => remaining >= MIN_BLOCK,
        Pool::Large => remaining > SMALL_SIZE,
    }
}

/// Byte counters. `allocated` counts rounded block sizes handed out and not
/// yet freed; `reserved` counts segment bytes held from the device
/// (allocated, cached, and parked: freed but still used by another stream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocatorStats {
    pub allocated: usize,
    pub reserved: usize,
    pub peak_allocated: usize,
    pub peak_reserved: usize,
    /// Bytes the callers asked for (before rounding), currently held.
    pub requested: usize,
    pub num_allocs: u64,
    pub num_frees: u64,
    pub num_raw_allocs: u64,
    pub num_raw_frees: u64,
    /// Times a refused raw allocation emptied the cache and retried.
    pub num_oom_retries: u64,
    /// Requests that failed with out-of-memory.
    pub num_ooms: u64,
    /// Bytes of cuDNN and cuBLASLt workspaces held when `peak_allocated`
    /// was reached (`Gpu::memory_stats`; an allocator alone keeps 0).
    pub workspace_at_peak: usize,
}

impl AllocatorStats {
    /// Two allocators' counters added; the peaks are the larger of the two
    /// (the peak of the sum is only known to whoever saw every change).
    pub fn plus(&self, o: &AllocatorStats) -> AllocatorStats {
        AllocatorStats {
            allocated: self.allocated + o.allocated,
            reserved: self.reserved + o.reserved,
            peak_allocated: self.peak_allocated.max(o.peak_allocated),
            peak_reserved: self.peak_reserved.max(o.peak_reserved),
            requested: self.requested + o.requested,
            num_allocs: self.num_allocs + o.num_allocs,
            num_frees: self.num_frees + o.num_frees,
            num_raw_allocs: self.num_raw_allocs + o.num_raw_allocs,
            num_raw_frees: self.num_raw_frees + o.num_raw_frees,
            num_oom_retries: self.num_oom_retries + o.num_oom_retries,
            num_ooms: self.num_ooms + o.num_ooms,
            workspace_at_peak: self.workspace_at_peak.max(o.workspace_at_peak),
        }
    }
}

/// Where a block is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a free set: can be handed out or merged.
    Free,
    /// Handed out to a caller.
    Allocated,
    /// Freed by its caller, but other streams' queued work may still use
    /// it: waits in `parked` for their events.
    Parked,
}

#[derive(Debug, Clone)]
struct Block {
    size: usize,
    requested: usize,
    stream: StreamId,
    segment: u64,
    state: State,
    /// Streams other than `stream` that used the block since it was handed
    /// out ([`CachingAllocator::record_stream`]); empty unless allocated.
    stream_uses: Vec<StreamId>,
    prev: Option<u64>,
    next: Option<u64>,
}

#[derive(Debug, Clone)]
struct Segment {
    size: usize,
    pool: Pool,
    stream: StreamId,
}

/// Free-list key: best fit is the first key >= (stream, size, 0).
type FreeKey = (StreamId, usize, u64);

/// The caching allocator over a raw [`Backend`].
pub struct CachingAllocator<B: Backend> {
    backend: B,
    device: Device,
    /// Every block (free or allocated), by its address.
    blocks: HashMap<u64, Block>,
    /// Every segment, by its base address (ordered: address -> segment lookup).
    segments: BTreeMap<u64, Segment>,
    free_small: BTreeSet<FreeKey>,
    free_large: BTreeSet<FreeKey>,
    /// Parked blocks, by address: the events they still wait for.
    parked: BTreeMap<u64, Vec<EventId>>,
    stats: AllocatorStats,
    /// Whether a refused segment empties the cache and retries (see
    /// [`CachingAllocator::without_release_on_oom`]).
    release_on_oom: bool,
}

impl<B: Backend> CachingAllocator<B> {
    /// An empty allocator; `device` names the device in error messages.
    pub fn new(backend: B, device: Device) -> Self {
        CachingAllocator {
            backend,
            device,
            blocks: HashMap::new(),
            segments: BTreeMap::new(),
            free_small: BTreeSet::new(),
            free_large: BTreeSet::new(),
            parked: BTreeMap::new(),
            stats: AllocatorStats::default(),
            release_on_oom: true,
        }
    }

    /// An allocator whose refused segment is an out-of-memory error at
    /// once, without emptying the cache first: a CUDA graph's private pool,
    /// which only allocates while a graph is recorded, when its free
    /// segments hold blocks the recorded work uses at every replay (and
    /// `cuMemFree` may not be called). PyTorch releases cached blocks only
    /// when no capture is under way.
    pub fn without_release_on_oom(mut self) -> Self {
        self.release_on_oom = false;
        self
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }
    pub fn stats(&self) -> AllocatorStats {
        self.stats
    }
    /// Peaks restart from the current values.
    pub fn reset_peak_stats(&mut self) {
        self.stats.peak_allocated = self.stats.allocated;
        self.stats.peak_reserved = self.stats.reserved;
    }
    /// Number of segments held from the device.
    pub fn num_segments(&self) -> usize {
        self.segments.len()
    }
    /// The rounded size of the allocated block at `ptr`, if there is one.
    pub fn block_size(&self, ptr: u64) -> Option<usize> {
        self.blocks
            .get(&ptr)
            .filter(|b| b.state == State::Allocated)
            .map(|b| b.size)
    }
    /// The stream the allocated block at `ptr` belongs to.
    pub fn block_stream(&self, ptr: u64) -> Option<StreamId> {
        self.blocks
            .get(&ptr)
            .filter(|b| b.state == State::Allocated)
            .map(|b| b.stream)
    }

    fn free_set(&mut self, pool: Pool) -> &mut BTreeSet<FreeKey> {
        match pool {
            Pool::Small => &mut self.free_small,
            Pool::Large => &mut self.free_large,
        }
    }

    fn pool_of_block(&self, b: &Block) -> Pool {
        self.segments[&b.segment].pool
    }

    fn oom_error(&self, bytes: usize, rounded: usize, detail: &str) -> Error {
        let fmt = |b: usize| format_bytes(b);
        let dev = match self.backend.free_memory() {
            Some((free, total)) => {
                format!("device reports {} free of {} total", fmt(free), fmt(total))
            }
            None => "device free/total memory unknown".to_string(),
        };
        Error::DeviceUnavailable {
            device: self.device,
            msg: format!(
                "out of memory: tried to allocate {} ({} bytes, {} rounded); {} allocated by tensors, {} reserved by the caching allocator ({} cached, free for reuse); {dev}; {detail}",
                fmt(bytes),
                bytes,
                fmt(rounded),
                fmt(self.stats.allocated),
                fmt(self.stats.reserved),
                fmt(self.stats.reserved - self.stats.allocated),
            ),
        }
    }

    /// `bytes` of device memory for work on `stream`; the block's address.
    /// Parked blocks whose events have completed are freed first.
    pub fn alloc(&mut self, bytes: usize, stream: StreamId) -> Result<u64> {
        self.unpark(false)?;
        let size = round_size(bytes)
            .ok_or_else(|| self.oom_error(bytes, bytes, "the size overflows the address space"))?;
        let pool = pool_of(size);
        let found = self
            .free_set(pool)
            .range((stream, size, 0)..=(stream, usize::MAX, u64::MAX))
            .next()
            .copied();
        let ptr = match found {
            Some(key) => {
                self.free_set(pool).remove(&key);
                key.2
            }
            None => self.new_segment(bytes, size, pool, stream)?,
        };
        // Split off the remainder.
        let (block_size, segment, next) = {
            let b = &self.blocks[&ptr];
            (b.size, b.segment, b.next)
        };
        let remaining = block_size - size;
        if should_split(pool, remaining) {
            let rest = ptr + size as u64;
            self.blocks.insert(
                rest,
                Block {
                    size: remaining,
                    requested: 0,
                    stream,
                    segment,
                    state: State::Free,
                    stream_uses: Vec::new(),
                    prev: Some(ptr),
                    next,
                },
            );
            if let Some(n) = next {
                self.blocks.get_mut(&n).expect("next block").prev = Some(rest);
            }
            self.free_set(pool).insert((stream, remaining, rest));
            let b = self.blocks.get_mut(&ptr).expect("block");
            b.size = size;
            b.next = Some(rest);
        }
        let b = self.blocks.get_mut(&ptr).expect("block");
        b.state = State::Allocated;
        b.requested = bytes;
        let given = b.size;
        let s = &mut self.stats;
        s.allocated += given;
        s.requested += bytes;
        s.peak_allocated = s.peak_allocated.max(s.allocated);
        s.num_allocs += 1;
        Ok(ptr)
    }

    /// A new segment holding one free block (not in the free set); its base.
    fn new_segment(
        &mut self,
        bytes: usize,
        size: usize,
        pool: Pool,
        stream: StreamId,
    ) -> Result<u64> {
        let seg_size = segment_size(size)
            .ok_or_else(|| self.oom_error(bytes, size, "the size overflows the address space"))?;
        let base = match self.backend.raw_alloc(seg_size) {
            Ok(p) => p,
            Err(first) if !self.release_on_oom => {
                self.stats.num_ooms += 1;
                let detail = format!(
                    "a {} segment was refused ({first}); a CUDA graph's pool releases nothing while it records",
                    format_bytes(seg_size)
                );
                return Err(self.oom_error(bytes, size, &detail));
            }
            Err(first) => {
                // Give the cached segments back and try once more.
                self.stats.num_oom_retries += 1;
                let released = self.empty_cache();
                match self.backend.raw_alloc(seg_size) {
                    Ok(p) => p,
                    Err(second) => {
                        self.stats.num_ooms += 1;
                        let detail = format!(
                            "a {} segment was refused ({first}), {} of cached segments were released and the retry was refused too ({second})",
                            format_bytes(seg_size),
                            format_bytes(released)
                        );
                        return Err(self.oom_error(bytes, size, &detail));
                    }
                }
            }
        };
        self.stats.num_raw_allocs += 1;
        self.stats.reserved += seg_size;
        self.stats.peak_reserved = self.stats.peak_reserved.max(self.stats.reserved);
        self.segments.insert(
            base,
            Segment {
                size: seg_size,
                pool,
                stream,
            },
        );
        self.blocks.insert(
            base,
            Block {
                size: seg_size,
                requested: 0,
                stream,
                segment: base,
                state: State::Free,
                stream_uses: Vec::new(),
                prev: None,
                next: None,
            },
        );
        Ok(base)
    }

    /// Notes that the allocated block at `ptr` is also used by work queued
    /// on `stream`, so that freeing it waits for that work (PyTorch's
    /// `record_stream`). The block's own stream needs no record.
    pub fn record_stream(&mut self, ptr: u64, stream: StreamId) -> Result<()> {
        match self.blocks.get_mut(&ptr) {
            Some(b) if b.state == State::Allocated => {
                if b.stream != stream && !b.stream_uses.contains(&stream) {
                    b.stream_uses.push(stream);
                }
                Ok(())
            }
            _ => Err(Error::arg(
                "cuda allocator record_stream",
                format!("{ptr:#x} is not a block this allocator has handed out"),
            )),
        }
    }

    /// Return the block at `ptr` to the cache (never to the device). A block
    /// used on other streams ([`Self::record_stream`]) is parked until the
    /// events recorded now on those streams have completed. On error
    /// nothing has changed.
    pub fn free(&mut self, ptr: u64) -> Result<()> {
        let state = self.blocks.get(&ptr).map(|b| b.state);
        if state != Some(State::Allocated) {
            return Err(self.bad_free(ptr, state.is_some()));
        }
        let mut events = Vec::new();
        for &stream in &self.blocks[&ptr].stream_uses {
            match self.backend.record_event(stream) {
                Ok(e) => events.push(e),
                Err(err) => {
                    for e in events {
                        self.backend.destroy_event(e);
                    }
                    return Err(err);
                }
            }
        }
        let b = self.blocks.get_mut(&ptr).expect("checked");
        b.stream_uses.clear();
        self.stats.allocated -= b.size;
        self.stats.requested -= b.requested;
        self.stats.num_frees += 1;
        if events.is_empty() {
            self.release(ptr);
        } else {
            b.state = State::Parked;
            self.parked.insert(ptr, events);
        }
        Ok(())
    }

    /// Frees the parked blocks whose events have all completed; with
    /// `wait`, waits for every event first. An event error leaves its block
    /// parked.
    fn unpark(&mut self, wait: bool) -> Result<()> {
        let ptrs: Vec<u64> = self.parked.keys().copied().collect();
        for ptr in ptrs {
            let events = self.parked.get_mut(&ptr).expect("parked");
            while let Some(&e) = events.last() {
                let done = if wait {
                    self.backend.wait_event(e).map(|()| true)?
                } else {
                    self.backend.event_done(e)?
                };
                if !done {
                    break;
                }
                self.backend.destroy_event(e);
                events.pop();
            }
            if events.is_empty() {
                self.parked.remove(&ptr);
                self.release(ptr);
            }
        }
        Ok(())
    }

    /// Puts the (no longer allocated) block at `ptr` into its free set,
    /// merged with its free neighbours.
    fn release(&mut self, ptr: u64) {
        let (stream, prev, next) = {
            let b = self.blocks.get_mut(&ptr).expect("block");
            b.state = State::Free;
            (b.stream, b.prev, b.next)
        };
        let pool = self.pool_of_block(&self.blocks[&ptr]);
        let mut start = ptr;
        // Merge with the free next neighbour.
        if let Some(n) = next {
            if self.blocks[&n].state == State::Free {
                let nb = self.blocks.remove(&n).expect("next");
                self.free_set(pool).remove(&(nb.stream, nb.size, n));
                if let Some(nn) = nb.next {
                    self.blocks.get_mut(&nn).expect("block").prev = Some(ptr);
                }
                let b = self.blocks.get_mut(&ptr).expect("block");
                b.size += nb.size;
                b.next = nb.next;
            }
        }
        // Merge into the free previous neighbour.
        if let Some(p) = prev {
            if self.blocks[&p].state == State::Free {
                let b = self.blocks.remove(&ptr).expect("block");
                let psize = self.blocks[&p].size;
                self.free_set(pool).remove(&(stream, psize, p));
                if let Some(n) = b.next {
                    self.blocks.get_mut(&n).expect("block").prev = Some(p);
                }
                let pb = self.blocks.get_mut(&p).expect("prev");
                pb.size += b.size;
                pb.next = b.next;
                start = p;
            }
        }
        let fsize = self.blocks[&start].size;
        self.free_set(pool).insert((stream, fsize, start));
    }

    fn bad_free(&self, ptr: u64, is_block: bool) -> Error {
        let seg = self
            .segments
            .range(..=ptr)
            .next_back()
            .filter(|(base, s)| ptr < **base + s.size as u64);
        let msg = if is_block {
            format!("double free: {ptr:#x} is a block of this allocator that is already free")
        } else if let Some((base, s)) = seg {
            let inside_free = self.blocks.iter().any(|(p, b)| {
                b.state != State::Allocated
                    && b.segment == *base
                    && *p <= ptr
                    && ptr < *p + b.size as u64
            });
            if inside_free {
                format!(
                    "double free: {ptr:#x} lies in a free region of the {} segment at {base:#x} (freed already, then merged with a neighbour)",
                    format_bytes(s.size)
                )
            } else {
                format!(
                    "{ptr:#x} lies inside an allocated block of the segment at {base:#x} but is not the address the allocator returned"
                )
            }
        } else {
            format!("{ptr:#x} was never allocated by this allocator (or its segment was already released)")
        };
        Error::arg("cuda allocator free", msg)
    }

    /// Wait for the parked blocks' events, then release every fully free
    /// segment to the device; the bytes released. (A failed wait, which
    /// only a broken device gives, leaves its block parked: the next
    /// `alloc` reports the error.)
    pub fn empty_cache(&mut self) -> usize {
        let _ = self.unpark(true);
        let idle: Vec<(u64, usize, Pool, StreamId)> = self
            .segments
            .iter()
            .filter(|(base, s)| {
                let b = &self.blocks[*base];
                b.state == State::Free && b.size == s.size
            })
            .map(|(base, s)| (*base, s.size, s.pool, s.stream))
            .collect();
        let mut released = 0;
        for (base, size, pool, stream) in idle {
            self.free_set(pool).remove(&(stream, size, base));
            self.blocks.remove(&base);
            self.segments.remove(&base);
            self.backend.raw_free(base);
            self.stats.num_raw_frees += 1;
            self.stats.reserved -= size;
            released += size;
        }
        released
    }

    /// Check the internal invariants (for tests): blocks tile each segment,
    /// neighbours are linked both ways, no two free neighbours, the free
    /// sets hold exactly the free blocks, `parked` exactly the parked ones
    /// (each waiting for at least one event), only allocated blocks carry
    /// stream uses, and the counters match.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut allocated = 0;
        let mut reserved = 0;
        let mut nblocks = 0;
        let mut nfree = 0;
        let mut nparked = 0;
        for (base, s) in &self.segments {
            reserved += s.size;
            let mut p = Some(*base);
            let mut prev: Option<u64> = None;
            let mut end = *base;
            let mut prev_free = false;
            while let Some(a) = p {
                let b = self.blocks.get(&a).ok_or(format!("missing block {a:#x}"))?;
                nblocks += 1;
                if a != end {
                    return Err(format!("gap or overlap at {a:#x}"));
                }
                if b.prev != prev || b.segment != *base || b.stream != s.stream {
                    return Err(format!("bad links at {a:#x}"));
                }
                if b.state != State::Allocated && !b.stream_uses.is_empty() {
                    return Err(format!("stream uses on unallocated block {a:#x}"));
                }
                match b.state {
                    State::Free => {
                        nfree += 1;
                        if prev_free {
                            return Err(format!("two free neighbours at {a:#x}"));
                        }
                        let set = match s.pool {
                            Pool::Small => &self.free_small,
                            Pool::Large => &self.free_large,
                        };
                        if !set.contains(&(b.stream, b.size, a)) {
                            return Err(format!("free block {a:#x} not in free set"));
                        }
                    }
                    State::Allocated => allocated += b.size,
                    State::Parked => {
                        nparked += 1;
                        if self.parked.get(&a).is_none_or(|e| e.is_empty()) {
                            return Err(format!("parked block {a:#x} waits for no event"));
                        }
                    }
                }
                prev_free = b.state == State::Free;
                end = a + b.size as u64;
                prev = Some(a);
                p = b.next;
            }
            if end != base + s.size as u64 {
                return Err(format!("segment {base:#x} not tiled"));
            }
        }
        if nblocks != self.blocks.len() {
            return Err("blocks outside segments".into());
        }
        if nfree != self.free_small.len() + self.free_large.len() {
            return Err("stale entries in free sets".into());
        }
        if nparked != self.parked.len() {
            return Err("stale entries in parked".into());
        }
        if allocated != self.stats.allocated || reserved != self.stats.reserved {
            return Err(format!(
                "counters: allocated {allocated} vs {}, reserved {reserved} vs {}",
                self.stats.allocated, self.stats.reserved
            ));
        }
        Ok(())
    }
}

impl<B: Backend> Drop for CachingAllocator<B> {
    /// Everything goes back to the device: the allocator dies with its context.
    fn drop(&mut self) {
        for e in std::mem::take(&mut self.parked).into_values().flatten() {
            self.backend.destroy_event(e);
        }
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        for base in bases {
            self.backend.raw_free(base);
        }
    }
}

/// "1.50 MiB" style sizes for messages.
pub fn format_bytes(b: usize) -> String {
    const K: f64 = 1024.0;
    let f = b as f64;
    if f >= K * K * K {
        format!("{:.2} GiB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.2} MiB", f / (K * K))
    } else if f >= K {
        format!("{:.2} KiB", f / K)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S0: StreamId = 10;
    const S1: StreamId = 11;
    const S2: StreamId = 12;

    /// A simulated device whose events complete only when the test says
    /// so (`complete`), or when the allocator waits for them.
    #[derive(Default)]
    struct Sim {
        next: u64,
        /// Live events: the stream each was recorded on, and whether done.
        events: HashMap<EventId, (StreamId, bool)>,
        next_event: EventId,
        /// Every event call made.
        event_calls: usize,
        /// Whether record_event fails.
        refuse_events: bool,
    }

    impl Sim {
        /// Runs everything queued on `stream` so far.
        fn complete(&mut self, stream: StreamId) {
            for (s, done) in self.events.values_mut() {
                *done |= *s == stream;
            }
        }
    }

    impl Backend for Sim {
        fn raw_alloc(&mut self, bytes: usize) -> Result<u64> {
            let at = 0x1_0000_0000 + self.next;
            self.next += bytes as u64;
            Ok(at)
        }
        fn raw_free(&mut self, _ptr: u64) {}
        fn free_memory(&self) -> Option<(usize, usize)> {
            None
        }
        fn record_event(&mut self, stream: StreamId) -> Result<EventId> {
            self.event_calls += 1;
            if self.refuse_events {
                return Err(Error::arg("sim cuEventRecord", "refused"));
            }
            self.next_event += 1;
            self.events.insert(self.next_event, (stream, false));
            Ok(self.next_event)
        }
        fn event_done(&mut self, event: EventId) -> Result<bool> {
            self.event_calls += 1;
            Ok(self.events[&event].1)
        }
        fn wait_event(&mut self, event: EventId) -> Result<()> {
            self.event_calls += 1;
            let stream = self.events[&event].0;
            self.complete(stream);
            Ok(())
        }
        fn destroy_event(&mut self, event: EventId) {
            self.event_calls += 1;
            self.events.remove(&event).expect("a live event");
        }
    }

    fn sim() -> CachingAllocator<Sim> {
        CachingAllocator::new(Sim::default(), Device::Cuda(0))
    }

    fn ok(a: &CachingAllocator<Sim>) {
        a.check_invariants().unwrap();
    }

    #[test]
    fn a_block_used_on_another_stream_waits_for_its_event() {
        let mut a = sim();
        let x = a.alloc(1000, S0).unwrap();
        a.record_stream(x, S1).unwrap();
        a.free(x).unwrap();
        ok(&a);
        assert_eq!(a.stats().allocated, 0);
        assert_eq!(a.stats().reserved, SMALL_SEGMENT);
        assert_eq!(a.backend().events.len(), 1);
        // S1 has not run yet: the block is not handed out, nor merged.
        let y = a.alloc(1000, S0).unwrap();
        assert_ne!(y, x);
        a.free(y).unwrap();
        ok(&a);
        let z = a.alloc(1000, S0).unwrap();
        assert_eq!(z, y);
        a.free(z).unwrap();
        // Once S1 has run, the next alloc frees it first.
        a.backend_mut().complete(S1);
        let w = a.alloc(1000, S0).unwrap();
        assert_eq!(w, x);
        assert!(a.backend().events.is_empty(), "events destroyed");
        ok(&a);
        a.free(w).unwrap();
        ok(&a);
        // Everything merged back into one free segment.
        assert_eq!(a.empty_cache(), SMALL_SEGMENT);
        assert_eq!(a.stats().reserved, 0);
    }

    #[test]
    fn a_block_waits_for_every_stream_that_used_it() {
        let mut a = sim();
        let x = a.alloc(4096, S0).unwrap();
        a.record_stream(x, S1).unwrap();
        a.record_stream(x, S2).unwrap();
        a.record_stream(x, S2).unwrap();
        a.free(x).unwrap();
        assert_eq!(a.backend().events.len(), 2, "one event per stream");
        a.backend_mut().complete(S2);
        assert_ne!(a.alloc(4096, S0).unwrap(), x);
        ok(&a);
        a.backend_mut().complete(S1);
        assert_eq!(a.alloc(4096, S0).unwrap(), x);
        ok(&a);
    }

    #[test]
    fn a_block_never_recorded_behaves_as_before() {
        let mut a = sim();
        let x = a.alloc(1000, S0).unwrap();
        a.free(x).unwrap();
        assert_eq!(a.alloc(1000, S0).unwrap(), x);
        // Its own stream needs no event either.
        a.record_stream(x, S0).unwrap();
        a.free(x).unwrap();
        assert_eq!(a.alloc(1000, S0).unwrap(), x);
        assert_eq!(a.backend().event_calls, 0);
        ok(&a);
    }

    #[test]
    fn empty_cache_waits_for_parked_blocks() {
        let mut a = sim();
        let x = a.alloc(1000, S0).unwrap();
        a.record_stream(x, S1).unwrap();
        a.free(x).unwrap();
        assert_eq!(a.empty_cache(), SMALL_SEGMENT);
        assert_eq!(a.num_segments(), 0);
        assert!(a.backend().events.is_empty());
        ok(&a);
    }

    #[test]
    fn misuse_is_an_error() {
        let mut a = sim();
        assert!(a.record_stream(0x1234, S1).is_err());
        let x = a.alloc(1000, S0).unwrap();
        a.record_stream(x, S1).unwrap();
        a.free(x).unwrap();
        let e = a.free(x).unwrap_err().to_string();
        assert!(e.contains("double free"), "{e}");
        assert!(a.record_stream(x, S1).is_err(), "parked: not handed out");
        ok(&a);
    }

    #[test]
    fn a_refused_event_leaves_the_block_allocated() {
        let mut a = sim();
        let x = a.alloc(1000, S0).unwrap();
        a.record_stream(x, S1).unwrap();
        a.backend_mut().refuse_events = true;
        assert!(a.free(x).is_err());
        assert_eq!(a.block_size(x), Some(1024));
        assert_eq!(a.stats().allocated, 1024);
        ok(&a);
        a.backend_mut().refuse_events = false;
        a.free(x).unwrap();
        assert_eq!(a.backend().events.len(), 1, "S1 still recorded");
        ok(&a);
    }
}
