//! slmlp-gpu-check with `--device cuda` on the CUDA emulator
//! (tools/cuda_emu, docs/GPU_CHECK.md): every registered case runs the real
//! CUDA backend (launch code, our kernels compiled from the .cu sources, stream
//! capture into CUDA graphs, the caching allocator) against the CPU backend.
//! First the emulator's own self-test (tools/cuda_emu/self_test.cpp) shows
//! each of its checks firing.
//!
//! Needs g++ and NVRTC (scripts/install-nvrtc.sh, which the README's test
//! command runs); without them the test FAILS with the reason, as the kernel
//! compile check does.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

const SEED: u64 = 11;

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

    let out = std::env::temp_dir().join(format!("slmlp-gpu-check-emulated-{}", std::process::id()));
    let lib = emu.join("lib");
    let path = match std::env::var("LD_LIBRARY_PATH") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", lib.display()),
        _ => lib.display().to_string(),
    };
    let run = Command::new(env!("CARGO_BIN_EXE_slmlp-gpu-check"))
        .env("LD_LIBRARY_PATH", path)
        .args(["--seed", &SEED.to_string(), "--budget-s", "900"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("slmlp-gpu-check runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        log.contains("slmlp CUDA emulator (CPU)"),
        "the GPU opened is not the emulator (is NVRTC installed? scripts/install-nvrtc.sh):\n{log}"
    );
    assert_eq!(run.status.code(), Some(0), "{log}");

    let text = std::fs::read_to_string(out.join("result.json")).expect("result.json written");
    let result: Value = serde_json::from_str(&text).expect("result.json parses");
    assert_eq!(result["status"], "pass", "{log}");
    let rows = result["rows"].as_array().expect("rows");
    assert_eq!(
        rows.len(),
        slmlp_benches::gpu_cases::all_cases(SEED).len(),
        "one row per registered case\n{log}"
    );
    for row in rows {
        assert_eq!(row["status"], "pass", "{row}");
    }
    std::fs::remove_dir_all(&out).ok();
}
