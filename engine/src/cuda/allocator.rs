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
//! space (engine/tests/cuda_host.rs); the CUDA backend plugs in cudarc.
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
//!   queued work. Using a block on a second stream (PyTorch's
//!   `record_stream`) is out of scope: the caller must synchronise the
//!   streams itself before freeing such a block;
//! - [`CachingAllocator::empty_cache`] returns fully free segments to the
//!   device;
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

/// The raw device calls the allocator needs.
pub trait Backend {
    /// Allocate `bytes` of device memory; the address of the first byte.
    fn raw_alloc(&mut self, bytes: usize) -> Result<u64>;
    /// Release memory returned by `raw_alloc`.
    fn raw_free(&mut self, ptr: u64);
    /// The device's (free, total) bytes, when it can tell.
    fn free_memory(&self) -> Option<(usize, usize)>;
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

/// Byte counters. `allocated` counts rounded block sizes handed out;
/// `reserved` counts segment bytes held from the device (allocated + cached).
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
}

#[derive(Debug, Clone)]
struct Block {
    size: usize,
    requested: usize,
    stream: StreamId,
    segment: u64,
    allocated: bool,
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
    stats: AllocatorStats,
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
            stats: AllocatorStats::default(),
        }
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
            .filter(|b| b.allocated)
            .map(|b| b.size)
    }
    /// The stream the allocated block at `ptr` belongs to.
    pub fn block_stream(&self, ptr: u64) -> Option<StreamId> {
        self.blocks
            .get(&ptr)
            .filter(|b| b.allocated)
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
    pub fn alloc(&mut self, bytes: usize, stream: StreamId) -> Result<u64> {
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
                    allocated: false,
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
        b.allocated = true;
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
                allocated: false,
                prev: None,
                next: None,
            },
        );
        Ok(base)
    }

    /// Return the block at `ptr` to the cache (never to the device).
    pub fn free(&mut self, ptr: u64) -> Result<()> {
        let state = self.blocks.get(&ptr).map(|b| b.allocated);
        if state != Some(true) {
            return Err(self.bad_free(ptr, state.is_some()));
        }
        let (size, requested, stream, prev, next) = {
            let b = self.blocks.get_mut(&ptr).expect("checked");
            b.allocated = false;
            (b.size, b.requested, b.stream, b.prev, b.next)
        };
        self.stats.allocated -= size;
        self.stats.requested -= requested;
        self.stats.num_frees += 1;
        let pool = self.pool_of_block(&self.blocks[&ptr]);
        let mut start = ptr;
        // Merge with the free next neighbour.
        if let Some(n) = next {
            if !self.blocks[&n].allocated {
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
            if !self.blocks[&p].allocated {
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
        Ok(())
    }

    fn bad_free(&self, ptr: u64, is_free_block: bool) -> Error {
        let seg = self
            .segments
            .range(..=ptr)
            .next_back()
            .filter(|(base, s)| ptr < **base + s.size as u64);
        let msg = if is_free_block {
            format!("double free: {ptr:#x} is a block of this allocator that is already free")
        } else if let Some((base, s)) = seg {
            let inside_free = self.blocks.iter().any(|(p, b)| {
                !b.allocated && b.segment == *base && *p <= ptr && ptr < *p + b.size as u64
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

    /// Release every fully free segment to the device; the bytes released.
    pub fn empty_cache(&mut self) -> usize {
        let idle: Vec<(u64, usize, Pool, StreamId)> = self
            .segments
            .iter()
            .filter(|(base, s)| {
                let b = &self.blocks[*base];
                !b.allocated && b.size == s.size
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
    /// sets hold exactly the free blocks, and the counters match.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut allocated = 0;
        let mut reserved = 0;
        let mut nblocks = 0;
        let mut nfree = 0;
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
                if !b.allocated {
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
                } else {
                    allocated += b.size;
                }
                prev_free = !b.allocated;
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
