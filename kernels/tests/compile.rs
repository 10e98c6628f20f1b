//! CI check of every CUDA kernel, no GPU needed: NVRTC (the pinned pip
//! wheels, scripts/install-nvrtc.sh) compiles each registry file to an sm_90
//! CUBIN, and the test fails on
//! - a compile error (the NVRTC log is printed),
//! - any register spill (ptxas spill stores or loads > 0),
//! - a stack frame in an entry point not in STACK_ALLOWED,
//! - an entry point listed in the registry but not exported, or exported
//!   but not listed.
//!
//! Without NVRTC the test FAILS (never skips): run scripts/install-nvrtc.sh.
//!
//! `cargo test -p kernels --test compile -- --nocapture` prints the
//! per-entry-point ptxas table that docs/KERNELS.md records.

use kernels::{Compiler, Error, KernelCache, Toolchain, DEFAULT_ARCH, KERNELS};
use std::collections::BTreeSet;
use std::time::Instant;

/// Entry points allowed a non-zero stack frame, each with the reason. A
/// stack frame means local memory (arrays indexed at run time, big structs):
/// slow, and in these bandwidth-bound kernels always avoidable, so the list
/// is empty. Format: ("entry_point_name", "why it needs a stack").
const STACK_ALLOWED: &[(&str, &str)] = &[];

fn toolchain_or_fail() -> &'static Toolchain {
    match Toolchain::get() {
        Ok(t) => t,
        Err(e) => panic!(
            "\n\nthe kernel compile check needs NVRTC and found none:\n  {e}\n\
             fix: scripts/install-nvrtc.sh (then `source .cache/nvrtc/env.sh`, or \
             rely on the default .cache/nvrtc location)\n"
        ),
    }
}

#[test]
fn every_kernel_compiles_for_sm90_without_spills_or_stack() {
    let tc = toolchain_or_fail();
    println!("{}; include {:?}", tc.describe(), tc.include_dirs);
    let start = Instant::now();
    // No cache: ptxas must run for its report to be checked. NVRTC programs
    // are independent, so files compile on as many threads as there are
    // cores (more threads than cores measured slower: 11 s vs 7 s on 2).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(KERNELS.len());
    let mut results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(k) = KERNELS.get(i) else { break done };
                        done.push((i, k, Compiler::new(None).compile(k, DEFAULT_ARCH)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("compile thread"))
            .collect()
    });
    results.sort_by_key(|r| r.0);
    let results: Vec<_> = results.into_iter().map(|(_, k, r)| (k, r)).collect();
    let total = start.elapsed();

    let mut failures = Vec::new();
    let mut table = vec![format!(
        "{:<24} {:>5} {:>6} {:>6} {:>7} {:>7}",
        "entry point", "regs", "smem", "stack", "spill.st", "spill.ld"
    )];
    for (k, r) in &results {
        let c = match r {
            Ok(c) => c,
            Err(Error::Compile { log, .. }) => {
                failures.push(format!("{}: compile error:\n{log}", k.file));
                continue;
            }
            Err(e) => {
                failures.push(format!("{}: {e}", k.file));
                continue;
            }
        };
        println!(
            "{:<14} {:>8.0} ms  {:>7} bytes CUBIN  {} entry points",
            k.file,
            c.elapsed.as_secs_f64() * 1e3,
            c.cubin.len(),
            k.entry_points.len()
        );
        if !c.cubin.starts_with(b"\x7fELF") {
            failures.push(format!("{}: CUBIN is not an ELF image", k.file));
        }
        let listed: BTreeSet<&str> = k.entry_points.iter().copied().collect();
        let exported: BTreeSet<&str> = c
            .entries
            .iter()
            .filter(|e| e.is_entry)
            .map(|e| e.name.as_str())
            .collect();
        for missing in listed.difference(&exported) {
            failures.push(format!(
                "{}: registry lists {missing} but the CUBIN has no such entry point",
                k.file
            ));
        }
        for extra in exported.difference(&listed) {
            failures.push(format!(
                "{}: exports {extra}, which the registry does not list",
                k.file
            ));
        }
        for e in &c.entries {
            if e.spills() {
                failures.push(format!(
                    "{}: {} spills ({} bytes stores, {} bytes loads, {:?} registers)",
                    k.file, e.name, e.spill_store_bytes, e.spill_load_bytes, e.registers
                ));
            }
            let stack = e.stack_frame_bytes.max(e.cumulative_stack_bytes);
            if stack > 0 && !STACK_ALLOWED.iter().any(|(n, _)| *n == e.name) {
                failures.push(format!(
                    "{}: {} has a {stack}-byte stack frame and is not in STACK_ALLOWED",
                    k.file, e.name
                ));
            }
            if e.is_entry {
                table.push(format!(
                    "{:<24} {:>5} {:>6} {:>6} {:>7} {:>7}",
                    e.name,
                    e.registers.map_or("?".into(), |r| r.to_string()),
                    e.shared_mem_bytes,
                    e.stack_frame_bytes,
                    e.spill_store_bytes,
                    e.spill_load_bytes
                ));
            }
        }
    }
    println!(
        "compiled {} files in {:.2} s (wall)",
        results.len(),
        total.as_secs_f64()
    );
    println!("{}", table.join("\n"));
    assert!(
        failures.is_empty(),
        "\n{} kernel check failure(s):\n{}\n",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_broken_kernel_reports_the_nvrtc_log() {
    toolchain_or_fail();
    let broken = kernels::Kernel {
        name: "broken",
        file: "broken.cu",
        source: "#include \"common.cuh\"\nextern \"C\" __global__ void k(float* x) { x[0] = undefined_thing; }\n",
        entry_points: &["k"],
    };
    match Compiler::new(None).compile(&broken, DEFAULT_ARCH) {
        Err(Error::Compile { kernel, arch, log }) => {
            assert_eq!((kernel.as_str(), arch), ("broken", 90));
            assert!(log.contains("broken.cu(2)"), "{log}");
            assert!(log.contains("undefined_thing"), "{log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn cache_misses_then_hits_and_keys_on_arch() {
    toolchain_or_fail();
    let dir = std::env::temp_dir().join(format!("slmlp-kernels-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let compiler = Compiler::new(Some(KernelCache::new(&dir)));
    let k = kernels::registry::kernel("sgd").unwrap();

    let first = compiler.compile(k, 90).unwrap();
    assert!(!first.cache_hit);
    let second = compiler.compile(k, 90).unwrap();
    assert!(second.cache_hit);
    assert_eq!(first.cubin, second.cubin);
    assert_eq!(
        first.entries, second.entries,
        "ptxas figures survive the cache"
    );

    let other_arch = compiler.compile(k, 80).unwrap();
    assert!(
        !other_arch.cache_hit,
        "sm_80 must not reuse the sm_90 CUBIN"
    );
    assert_ne!(other_arch.cubin, first.cubin);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs in a child process with SLMLP_NVRTC_LIB_DIR pointing nowhere: the
/// toolchain must come back as an error naming the fix, not a panic inside
/// cudarc. (A child, because the env var and the loaded library are
/// process-wide.)
#[test]
fn missing_nvrtc_is_a_clear_error_not_a_panic() {
    if std::env::var_os("SLMLP_TEST_CHILD").is_some() {
        let err = Toolchain::get().expect_err("no NVRTC in /nonexistent");
        let msg = err.to_string();
        assert!(msg.contains("scripts/install-nvrtc.sh"), "{msg}");
        assert!(msg.contains("/nonexistent"), "{msg}");
        let broken = kernels::registry::kernel("sgd").unwrap();
        assert!(matches!(
            Compiler::new(None).compile(broken, 90),
            Err(Error::NvrtcNotFound { .. })
        ));
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "missing_nvrtc_is_a_clear_error_not_a_panic",
            "--test-threads=1",
        ])
        .env("SLMLP_TEST_CHILD", "1")
        .env("SLMLP_NVRTC_LIB_DIR", "/nonexistent/nvrtc/lib")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "child ran no test:\n{text}");
}
