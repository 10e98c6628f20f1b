//! `slmlp pretrain` at the ImageNet preset (ResNet-50 SL-MLP, 224 px,
//! batch 256, bf16, the device-mode loader) on a GPU of a given size, in a
//! dry run of the CUDA emulator (tools/cuda_emu, docs/GPU_CHECK.md): nothing
//! is computed, but every allocation the engine makes is real, so whether a
//! step fits a device of that size is the engine's own answer (up to the
//! cuDNN workspaces a real GPU adds). Needs g++ and NVRTC, as the emulated
//! GPU check in benches/tests/gpu_check_runs.rs does.

use std::path::Path;
use std::process::Command;
use testutil::{output_text, TempDir};

/// LD_LIBRARY_PATH with the emulator first, built in a folder of this
/// test's own (benches/tests/gpu_check_runs.rs self-tests it).
fn emulator_library_path() -> String {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda_emu_models");
    testutil::cuda_emu::cuda_emulator_library_path(&out, false)
}

/// One epoch of three steps on a device of `gib` GiB; the run's output, and
/// the GiB it reserved at its peak.
fn pretrain_on(gib: u32, extra: &[&str]) -> (String, f64) {
    let tmp = TempDir::new(&format!("dry-pretrain-{gib}{}", extra.join("")));
    let run = Command::new(env!("CARGO_BIN_EXE_slmlp"))
        .env("LD_LIBRARY_PATH", emulator_library_path())
        .env("SLMLP_CUDA_EMU_DRY", "1")
        .env("SLMLP_CUDA_EMU_SMS", "132")
        .env("SLMLP_CUDA_EMU_MEM_GIB", gib.to_string())
        .args(["pretrain", "--preset", "imagenet", "--data", "synthetic"])
        .args(["--per-class", "80", "--epochs", "1", "--no-val"])
        .args(extra)
        .arg("--out")
        .arg(tmp.0.join("run"))
        .output()
        .expect("slmlp runs");
    let log = output_text(&run);
    assert!(run.status.success(), "on {gib} GiB:\n{log}");
    assert!(log.contains("slmlp CUDA emulator"), "{log}");
    // "cuda:0: peak memory 10.97 GiB allocated, 13.40 GiB reserved"
    let reserved = log
        .lines()
        .find_map(|l| l.strip_prefix("cuda:0: peak memory "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" GiB reserved"))
        .and_then(|r| r.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no peak memory line:\n{log}"));
    (log, reserved)
}

/// The ordinary step trains on 12 GiB. The recorded one on 14: before the
/// tensors that outlive a step (momentum, bf16 weight copies) were given
/// segments of their own (`engine::cuda::lasting`), they kept 6 GiB of
/// the ordinary steps' segments from going back to the device, and the
/// recording ran out of memory on 18 GiB (docs/ENGINE.md).
#[test]
fn the_imagenet_preset_trains_on_12_gib_and_with_a_cuda_graph_on_14() {
    let (_, reserved) = pretrain_on(12, &[]);
    assert!(reserved <= 12.0, "{reserved}");
    let (log, reserved) = pretrain_on(14, &["--cuda-graph"]);
    assert!(
        log.contains("CUDA graph: 1 steps replayed, 1 recording(s)"),
        "{log}"
    );
    assert!(reserved <= 14.0, "{reserved}");
}
