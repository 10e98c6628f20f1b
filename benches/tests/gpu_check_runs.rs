//! slmlp-gpu-check run whole, without a GPU, two ways:
//!
//! - `--cpu-self-test`: the runner over every registered parity case with
//!   both sides on the CPU. Both sides then run the same code on the same
//!   inputs, so every case must match bit for bit; this checks the cases and
//!   the runner.
//! - `--device cuda` on the CUDA emulator (tools/cuda_emu, docs/GPU_CHECK.md):
//!   every registered case runs the real CUDA backend (launch code, our
//!   kernels compiled from the .cu sources, stream capture into CUDA graphs,
//!   the caching allocator, the cuBLASLt and cuDNN calls) against the CPU
//!   backend. First the emulator's own self-test (tools/cuda_emu/self_test.cpp)
//!   shows each of its checks firing. Needs g++ and NVRTC
//!   (scripts/install-nvrtc.sh, which the README's test command runs);
//!   without them the test FAILS with the reason, as the kernel compile check
//!   does.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

const SEED: u64 = 7;

/// Runs slmlp-gpu-check with `args` (and `env`) into a fresh folder; its exit
/// code 0, a passing result.json with one row per registered case, each
/// passing. Returns the log and the rows.
fn run_check(tag: &str, args: &[&str], env: &[(&str, String)]) -> (String, Vec<Value>) {
    let out = std::env::temp_dir().join(format!("slmlp-gpu-check-{tag}-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_slmlp-gpu-check"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["--seed", &SEED.to_string(), "--budget-s", "900"])
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("slmlp-gpu-check runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(run.status.code(), Some(0), "{log}");
    let text = std::fs::read_to_string(out.join("result.json")).expect("result.json written");
    std::fs::remove_dir_all(&out).ok();
    let result: Value = serde_json::from_str(&text).expect("result.json parses");
    assert_eq!(result["status"], "pass", "{log}");
    let rows = result["rows"].as_array().expect("rows").clone();
    let expected = slmlp_benches::gpu_cases::all_cases(SEED).len();
    assert!(expected > 0);
    assert_eq!(rows.len(), expected, "one row per registered case\n{log}");
    for row in &rows {
        assert_eq!(row["status"], "pass", "{row}");
    }
    (log, rows)
}

#[test]
fn cpu_self_test_passes_every_registered_case_exactly() {
    let (_, rows) = run_check("self-test", &["--cpu-self-test"], &[]);
    for row in rows {
        assert_eq!(row["max_rel_err"].as_f64(), Some(0.0), "{row}");
        let items = row["items"].as_array().expect("items");
        assert!(!items.is_empty(), "{row}");
        for item in items {
            assert_eq!(item["rel_err"].as_f64(), Some(0.0), "{row}");
        }
    }
}

#[test]
fn every_cuda_op_matches_the_cpu_on_the_emulator() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let emu = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda_emu");
    let build = Command::new("python3")
        .arg(repo.join("tools/cuda_emu/build.py"))
        .arg("--out")
        .arg(&emu)
        .arg("--self-test")
        .output()
        .expect("python3 runs tools/cuda_emu/build.py");
    assert!(
        build.status.success(),
        "building the CUDA emulator (it needs g++) or its self-test failed:\n{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let lib = emu.join("lib");
    let path = match std::env::var("LD_LIBRARY_PATH") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", lib.display()),
        _ => lib.display().to_string(),
    };
    let (log, _) = run_check("emulated", &[], &[("LD_LIBRARY_PATH", path)]);
    assert!(
        log.contains("slmlp CUDA emulator (CPU)"),
        "the GPU opened is not the emulator:\n{log}"
    );
}
