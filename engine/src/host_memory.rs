//! How the host allocator treats the memory tensors free.
//!
//! A CPU training step allocates and frees tensors of a few MiB each, the
//! same sizes every step. glibc's malloc serves blocks above its mmap
//! threshold (dynamic, 128 KiB to 32 MiB) with fresh mappings and returns
//! the heap's free top to the kernel past its trim threshold, so many of
//! those tensors start on pages the kernel must fault in and zero again:
//! kernel time that grows with the step's allocations, not its compute.
//! [`keep_freed_memory`] makes freed blocks stay in the process for reuse,
//! as a caching allocator does; the process keeps its peak footprint.

/// Makes glibc's malloc serve blocks up to 32 MiB (its largest mmap
/// threshold) from its heaps and never trim them, so that freed tensor
/// memory is reused instead of being unmapped and faulted in again.
/// Returns whether both settings took (false off glibc, or with the
/// environment variable `SLMLP_KEEP_FREED_MEMORY=0`, where nothing is
/// changed). Call it at start-up, before the first large allocation.
pub fn keep_freed_memory() -> bool {
    if std::env::var_os("SLMLP_KEEP_FREED_MEMORY").is_some_and(|v| v == "0") {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's parameters; both values are
        // in range (32 MiB is glibc's maximum mmap threshold on 64-bit; -1
        // disables trimming).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The bytes the host's malloc has handed out and not taken back: glibc's
/// `mallinfo2`, heap chunks in use in every arena plus blocks mapped on
/// their own. None off glibc.
pub fn bytes_in_use() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads malloc's counters.
        let m = unsafe { libc::mallinfo2() };
        Some(m.uordblks + m.hblkhd)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    /// On glibc both settings are accepted (a value out of range would make
    /// mallopt return 0).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_both_settings() {
        let off = std::env::var_os("SLMLP_KEEP_FREED_MEMORY").is_some_and(|v| v == "0");
        assert_eq!(super::keep_freed_memory(), !off);
    }
}
