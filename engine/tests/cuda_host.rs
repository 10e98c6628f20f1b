//! The CUDA backend's GPU-free parts: the caching allocator's bookkeeping
//! against a simulated address space, and the probe / `--device` flag on a
//! machine without CUDA (these tests adapt when a GPU is present).

use engine::cuda::allocator::{
    round_size, segment_size, CachingAllocator, Pool, LARGE_SEGMENT, MIN_BLOCK, SMALL_SEGMENT,
};
use engine::cuda::{probe, resolve_device, Backend};
use engine::{Device, Error, Result, Tensor};
use std::collections::BTreeMap;

const MIB: usize = 1 << 20;

/// A simulated device of `capacity` bytes, addresses from 0x1_0000_0000,
/// recording every raw call.
struct FakeDevice {
    capacity: usize,
    live: BTreeMap<u64, usize>,
    raw_allocs: Vec<usize>,
    raw_frees: Vec<u64>,
    bad_frees: Vec<u64>,
    next: u64,
}

const BASE: u64 = 0x1_0000_0000;

impl FakeDevice {
    fn new(capacity: usize) -> Self {
        FakeDevice {
            capacity,
            live: BTreeMap::new(),
            raw_allocs: Vec::new(),
            raw_frees: Vec::new(),
            bad_frees: Vec::new(),
            next: BASE,
        }
    }
    fn used(&self) -> usize {
        self.live.values().sum()
    }
}

impl Backend for FakeDevice {
    fn raw_alloc(&mut self, bytes: usize) -> Result<u64> {
        // Capacity-limited, addresses never reused (like cuMemAlloc: the
        // virtual address space is huge, physical memory is the limit).
        if self.used() + bytes > self.capacity {
            return Err(Error::arg("fake cuMemAlloc", "CUDA_ERROR_OUT_OF_MEMORY"));
        }
        let at = self.next;
        self.next += bytes as u64;
        self.live.insert(at, bytes);
        self.raw_allocs.push(bytes);
        Ok(at)
    }
    fn raw_free(&mut self, ptr: u64) {
        if self.live.remove(&ptr).is_none() {
            self.bad_frees.push(ptr);
        }
        self.raw_frees.push(ptr);
    }
    fn free_memory(&self) -> Option<(usize, usize)> {
        Some((self.capacity - self.used(), self.capacity))
    }
}

fn alloc_with(capacity: usize) -> CachingAllocator<FakeDevice> {
    CachingAllocator::new(FakeDevice::new(capacity), Device::Cuda(0))
}

fn ok(a: &CachingAllocator<FakeDevice>) {
    a.check_invariants().unwrap();
    assert!(a.backend().bad_frees.is_empty());
}

#[test]
fn rounding_and_pools() {
    assert_eq!(round_size(0), Some(512));
    assert_eq!(round_size(1), Some(512));
    assert_eq!(round_size(512), Some(512));
    assert_eq!(round_size(513), Some(1024));
    assert_eq!(round_size(usize::MAX), None);
    assert_eq!(engine::cuda::allocator::pool_of(MIB), Pool::Small);
    assert_eq!(engine::cuda::allocator::pool_of(MIB + 512), Pool::Large);
    assert_eq!(segment_size(512), Some(SMALL_SEGMENT));
    assert_eq!(segment_size(MIB), Some(SMALL_SEGMENT));
    assert_eq!(segment_size(MIB + 512), Some(LARGE_SEGMENT));
    assert_eq!(segment_size(10 * MIB), Some(10 * MIB));
    assert_eq!(segment_size(11 * MIB + 1), Some(12 * MIB));

    let mut a = alloc_with(1 << 30);
    let p = a.alloc(100, 0).unwrap();
    assert_eq!(a.block_size(p), Some(MIN_BLOCK));
    let s = a.stats();
    assert_eq!(
        (s.allocated, s.requested, s.reserved),
        (512, 100, SMALL_SEGMENT)
    );
    let q = a.alloc(3 * MIB, 0).unwrap();
    assert_eq!(a.block_size(q), Some(3 * MIB));
    assert_eq!(a.stats().reserved, SMALL_SEGMENT + LARGE_SEGMENT);
    let r = a.alloc(30 * MIB + 1, 0).unwrap();
    assert_eq!(a.block_size(r), Some(30 * MIB + 512));
    assert_eq!(
        a.backend().raw_allocs,
        vec![SMALL_SEGMENT, LARGE_SEGMENT, 32 * MIB]
    );
    ok(&a);
}

#[test]
fn split_and_coalesce() {
    let mut a = alloc_with(1 << 30);
    // Three blocks carved from one small segment.
    let x = a.alloc(1000, 0).unwrap();
    let y = a.alloc(2000, 0).unwrap();
    let z = a.alloc(3000, 0).unwrap();
    assert_eq!(a.num_segments(), 1);
    assert_eq!(y, x + 1024);
    assert_eq!(z, y + 2048);
    ok(&a);
    // Free the middle, then the sides: everything merges into one block.
    a.free(y).unwrap();
    ok(&a);
    a.free(x).unwrap();
    ok(&a);
    a.free(z).unwrap();
    ok(&a);
    // The whole segment is one free block again: a 2 MiB small request
    // would not fit the small pool, but 1 MiB twice does, with no new segment.
    let p = a.alloc(MIB, 0).unwrap();
    let q = a.alloc(MIB, 0).unwrap();
    assert_eq!(p, x);
    assert_eq!(q, x + MIB as u64);
    assert_eq!(a.stats().num_raw_allocs, 1);
    ok(&a);

    // Large pool: remainder <= 1 MiB is not split off.
    let mut b = alloc_with(1 << 30);
    let big = b.alloc(19 * MIB + 512, 0).unwrap();
    assert_eq!(
        b.block_size(big),
        Some(LARGE_SEGMENT),
        "remainder of 1 MiB - 512 stays in the block"
    );
    let big2 = b.alloc(5 * MIB, 0).unwrap();
    assert_eq!(
        b.block_size(big2),
        Some(5 * MIB),
        "15 MiB remainder is split off"
    );
    ok(&b);
}

#[test]
fn best_fit_picks_smallest_sufficient_block() {
    let mut a = alloc_with(1 << 30);
    // Carve holes of 4 KiB, 16 KiB and 8 KiB separated by live blocks.
    let h1 = a.alloc(4096, 0).unwrap();
    let _k1 = a.alloc(512, 0).unwrap();
    let h2 = a.alloc(16384, 0).unwrap();
    let _k2 = a.alloc(512, 0).unwrap();
    let h3 = a.alloc(8192, 0).unwrap();
    let _k3 = a.alloc(512, 0).unwrap();
    a.free(h1).unwrap();
    a.free(h2).unwrap();
    a.free(h3).unwrap();
    ok(&a);
    // 6 KiB: the 8 KiB hole, not the first (4 KiB, too small) nor the 16 KiB.
    let p = a.alloc(6000, 0).unwrap();
    assert_eq!(p, h3);
    // 12 KiB: the 16 KiB hole, split.
    let q = a.alloc(12000, 0).unwrap();
    assert_eq!(q, h2);
    // 4 KiB: the 4 KiB hole exactly (before the 4 KiB remainder of h2: lower address wins the tie).
    let r = a.alloc(4096, 0).unwrap();
    assert_eq!(r, h1);
    assert_eq!(a.stats().num_raw_allocs, 1);
    ok(&a);
}

#[test]
fn streams_do_not_share_freed_blocks() {
    let mut a = alloc_with(1 << 30);
    let p = a.alloc(4096, 1).unwrap();
    a.free(p).unwrap();
    // Another stream: a fresh segment, not the block stream 1 freed.
    let q = a.alloc(4096, 2).unwrap();
    assert_ne!(q, p);
    assert_eq!(a.stats().num_raw_allocs, 2);
    assert_eq!(a.block_stream(q), Some(2));
    // The same stream gets its block back.
    let r = a.alloc(4096, 1).unwrap();
    assert_eq!(r, p);
    assert_eq!(a.stats().num_raw_allocs, 2);
    // A split remainder keeps its segment's stream.
    let s = a.alloc(8192, 2).unwrap();
    assert_eq!(a.block_stream(s), Some(2));
    ok(&a);
}

#[test]
fn peak_stats_and_reset() {
    let mut a = alloc_with(1 << 30);
    let p = a.alloc(3 * MIB, 0).unwrap();
    let q = a.alloc(4 * MIB, 0).unwrap();
    a.free(p).unwrap();
    a.free(q).unwrap();
    let s = a.stats();
    assert_eq!(s.allocated, 0);
    assert_eq!(s.requested, 0);
    assert_eq!(s.peak_allocated, 7 * MIB);
    assert_eq!(s.reserved, LARGE_SEGMENT);
    assert_eq!(s.peak_reserved, LARGE_SEGMENT);
    assert_eq!((s.num_allocs, s.num_frees), (2, 2));
    a.reset_peak_stats();
    assert_eq!(a.stats().peak_allocated, 0);
    assert_eq!(a.stats().peak_reserved, LARGE_SEGMENT);
    let _ = a.alloc(MIB, 0).unwrap();
    assert_eq!(a.stats().peak_allocated, MIB);
    assert_eq!(a.stats().peak_reserved, LARGE_SEGMENT + SMALL_SEGMENT);
    ok(&a);
}

#[test]
fn empty_cache_releases_only_fully_free_segments() {
    let mut a = alloc_with(1 << 30);
    let keep = a.alloc(1000, 0).unwrap(); // small segment, stays busy
    let tmp = a.alloc(2000, 0).unwrap(); // same small segment
    let big = a.alloc(12 * MIB, 0).unwrap(); // its own 12 MiB segment
    a.free(tmp).unwrap();
    a.free(big).unwrap();
    assert_eq!(a.stats().reserved, SMALL_SEGMENT + 12 * MIB);
    let released = a.empty_cache();
    assert_eq!(released, 12 * MIB);
    assert_eq!(a.stats().reserved, SMALL_SEGMENT);
    assert_eq!(a.stats().num_raw_frees, 1);
    assert_eq!(a.backend().live.len(), 1);
    ok(&a);
    a.free(keep).unwrap();
    assert_eq!(a.empty_cache(), SMALL_SEGMENT);
    assert_eq!(a.stats().reserved, 0);
    assert!(a.backend().live.is_empty());
    assert_eq!(a.empty_cache(), 0);
    ok(&a);
}

/// A CUDA graph's pool: a refused segment is an error at once, and the
/// cached segments (the recorded work's memory) stay.
#[test]
fn a_pool_without_release_keeps_its_cache_on_oom() {
    let mut a = alloc_with(64 * MIB).without_release_on_oom();
    let p = a.alloc(30 * MIB, 0).unwrap();
    let _q = a.alloc(20 * MIB, 0).unwrap();
    a.free(p).unwrap();
    let e = a.alloc(40 * MIB, 0).unwrap_err().to_string();
    assert!(
        e.contains("out of memory") && e.contains("releases nothing"),
        "{e}"
    );
    let s = a.stats();
    assert_eq!((s.num_oom_retries, s.num_raw_frees, s.num_ooms), (0, 0, 1));
    assert_eq!(s.reserved, 50 * MIB);
    // the cached block is still handed out
    assert_eq!(a.alloc(30 * MIB, 0).unwrap(), p);
    ok(&a);
}

#[test]
fn oom_empties_cache_retries_and_reports() {
    // 64 MiB device.
    let mut a = alloc_with(64 * MIB);
    let p = a.alloc(30 * MIB, 0).unwrap(); // 30 MiB segment
    let q = a.alloc(20 * MIB, 0).unwrap(); // 20 MiB segment
    a.free(p).unwrap();
    // 40 MiB: no cached block fits, the device has 14 MiB free; the cached
    // 30 MiB segment is released and the retry succeeds.
    let r = a.alloc(40 * MIB, 0).unwrap();
    let s = a.stats();
    assert_eq!(s.num_oom_retries, 1);
    assert_eq!(s.num_raw_frees, 1);
    assert_eq!(s.reserved, 60 * MIB);
    ok(&a);
    // Now nothing can be freed: a clear error, not a panic, state intact.
    let e = a.alloc(10 * MIB, 0).unwrap_err();
    let m = e.to_string();
    assert!(
        matches!(
            e,
            Error::DeviceUnavailable {
                device: Device::Cuda(0),
                ..
            }
        ),
        "{m}"
    );
    assert!(m.contains("out of memory"), "{m}");
    assert!(m.contains("tried to allocate 10.00 MiB"), "{m}");
    assert!(m.contains("60.00 MiB allocated"), "{m}");
    assert!(m.contains("60.00 MiB reserved"), "{m}");
    assert!(m.contains("4.00 MiB free of 64.00 MiB total"), "{m}");
    assert_eq!(a.stats().num_ooms, 1);
    ok(&a);
    // After freeing, the request goes through by reusing cached memory.
    a.free(q).unwrap();
    let t = a.alloc(10 * MIB, 0).unwrap();
    assert_eq!(t, q);
    a.free(r).unwrap();
    a.free(t).unwrap();
    ok(&a);
    // A size no device can hold.
    let e = a.alloc(usize::MAX - 3, 0).unwrap_err();
    assert!(e.to_string().contains("out of memory"), "{e}");
}

#[test]
fn bad_frees_are_errors() {
    let mut a = alloc_with(1 << 30);
    let p = a.alloc(4096, 0).unwrap();
    let q = a.alloc(4096, 0).unwrap();
    let _r = a.alloc(4096, 0).unwrap();
    a.free(q).unwrap();
    // q is still a (free) block of its own: double free.
    let e = a.free(q).unwrap_err().to_string();
    assert!(e.contains("double free"), "{e}");
    // p freed, it merges with q's block; q's address is now inside a free region.
    a.free(p).unwrap();
    let e = a.free(q).unwrap_err().to_string();
    assert!(e.contains("double free"), "{e}");
    let e = a.free(p).unwrap_err().to_string();
    assert!(e.contains("double free"), "{e}");
    // Not an address we returned.
    let e = a.free(0xdead_beef).unwrap_err().to_string();
    assert!(e.contains("never allocated"), "{e}");
    let e = a.free(_r + 8).unwrap_err().to_string();
    assert!(e.contains("not the address the allocator returned"), "{e}");
    ok(&a);
    assert_eq!(a.stats().num_frees, 2);
}

#[test]
fn steady_training_loop_does_no_raw_allocation() {
    let mut a = alloc_with(4 << 30);
    // Weights that live across steps.
    let weights: Vec<u64> = [9408, 147456, 2359296, 8 * MIB, 4 * 2048 * 1000]
        .iter()
        .map(|&b| a.alloc(b, 7).unwrap())
        .collect();
    let mut raw_after = Vec::new();
    for _step in 0..8 {
        // Forward: activations kept for backward, temporaries freed at once.
        let mut saved = Vec::new();
        for (i, &bytes) in [
            25 * MIB,
            12 * MIB,
            6 * MIB,
            6 * MIB,
            3 * MIB,
            800_000,
            100_000,
            4000,
        ]
        .iter()
        .enumerate()
        {
            saved.push(a.alloc(bytes, 7).unwrap());
            let tmp = a.alloc(bytes / 2 + 1000 * i, 7).unwrap();
            let ws = a.alloc(32 * MIB, 7).unwrap(); // cuDNN workspace
            a.free(ws).unwrap();
            a.free(tmp).unwrap();
        }
        // Backward: gradients, freeing saved activations in reverse.
        let mut grads = Vec::new();
        while let Some(s) = saved.pop() {
            let g = a.alloc(a.block_size(s).unwrap(), 7).unwrap();
            a.free(s).unwrap();
            grads.push(g);
        }
        let wgrads: Vec<u64> = weights
            .iter()
            .map(|&w| a.alloc(a.block_size(w).unwrap(), 7).unwrap())
            .collect();
        for g in grads.into_iter().chain(wgrads) {
            a.free(g).unwrap();
        }
        ok(&a);
        raw_after.push(a.stats().num_raw_allocs);
    }
    assert!(raw_after[0] > 0);
    assert!(
        raw_after.iter().all(|&n| n == raw_after[0]),
        "raw allocations kept growing after step 1: {raw_after:?}"
    );
    assert_eq!(a.stats().num_raw_frees, 0);
    for w in weights {
        a.free(w).unwrap();
    }
    assert_eq!(a.stats().allocated, 0);
    ok(&a);
}

#[test]
fn drop_returns_every_segment() {
    // Drop runs the backend's raw_free for each segment; observe via a shared log.
    use std::sync::{Arc, Mutex};
    struct Logged(FakeDevice, Arc<Mutex<Vec<u64>>>);
    impl Backend for Logged {
        fn raw_alloc(&mut self, bytes: usize) -> Result<u64> {
            self.0.raw_alloc(bytes)
        }
        fn raw_free(&mut self, ptr: u64) {
            self.1.lock().unwrap().push(ptr);
            self.0.raw_free(ptr)
        }
        fn free_memory(&self) -> Option<(usize, usize)> {
            self.0.free_memory()
        }
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    {
        let mut a = CachingAllocator::new(
            Logged(FakeDevice::new(1 << 30), log.clone()),
            Device::Cuda(0),
        );
        a.alloc(100, 0).unwrap();
        a.alloc(5 * MIB, 0).unwrap();
    }
    assert_eq!(log.lock().unwrap().len(), 2);
}

// ---- probe and the --device flag ----

/// Whether this machine has a usable GPU (then the no-CUDA tests check the
/// other branch instead).
fn gpu() -> bool {
    probe(0).is_ok()
}

#[test]
fn probe_without_cuda_is_a_clear_error() {
    match probe(0) {
        Ok(info) => {
            assert!(!info.name.is_empty());
            assert!(info.total_memory > 0 && info.sm_count > 0);
        }
        Err(e) => {
            let m = e.to_string();
            eprintln!("probe(0): {m}");
            assert!(matches!(
                e,
                Error::DeviceUnavailable {
                    device: Device::Cuda(0),
                    ..
                }
            ));
            assert!(!m.contains('\n'), "{m}");
            if !unsafe { cudarc::driver::sys::is_culib_present() } {
                assert!(m.contains("libcuda.so"), "{m}");
                assert!(m.contains("LD_LIBRARY_PATH"), "{m}");
            }
        }
    }
    // An ordinal far beyond any machine.
    let e = probe(4096).unwrap_err().to_string();
    assert!(e.contains("cuda:4096"), "{e}");
}

#[test]
fn resolve_device_flag() {
    assert_eq!(resolve_device("cpu").unwrap(), (Device::Cpu, None));
    let (d, notice) = resolve_device("auto").unwrap();
    if gpu() {
        assert_eq!((d, notice), (Device::Cuda(0), None));
    } else {
        assert_eq!(d, Device::Cpu);
        let n = notice.expect("a notice when auto falls back");
        eprintln!("auto: {n}");
        assert!(n.contains("CPU") && !n.contains('\n'), "{n}");
        let e = resolve_device("cuda").unwrap_err().to_string();
        assert!(e.contains("cuda:0") && e.contains("not available"), "{e}");
        assert!(resolve_device("cuda:1").is_err());
    }
    let e = resolve_device("tpu").unwrap_err().to_string();
    assert!(e.contains("auto, cpu, cuda or cuda:N"), "{e}");
    assert!(resolve_device("cuda:x").is_err());
    assert!(resolve_device("").is_err());
}

#[test]
fn to_device_cuda_moves_the_tensor_or_is_the_probe_error() {
    let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap();
    match t.to_device(Device::Cuda(0)) {
        Ok(d) => {
            eprintln!("a GPU is present: checked the round trip instead of the no-GPU error");
            assert_eq!(d.device(), Device::Cuda(0));
            let back = d.to_device(Device::Cpu).unwrap();
            assert_eq!(back.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
        }
        Err(e) => assert!(
            matches!(
                e,
                Error::DeviceUnavailable {
                    device: Device::Cuda(0),
                    ..
                }
            ),
            "{e}"
        ),
    }
    assert_eq!(
        t.to_device(Device::Cpu).unwrap().to_vec::<f32>().unwrap(),
        vec![1.0, 2.0, 3.0]
    );
}
