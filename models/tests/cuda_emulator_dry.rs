//! `slmlp pretrain` at the ImageNet preset (ResNet-50 SL-MLP, 224 px,
//! batch 256, bf16, the device-mode loader) on a GPU of a given size, in a
//! dry run of the CUDA emulator (tools/cuda_emu, docs/GPU_CHECK.md): nothing
//! is computed, but every allocation the engine makes is real, so whether a
//! step fits a device of that size is the engine's own answer (up to the
//! cuDNN workspaces a real GPU adds). One test profiles a small model on
//! the emulator instead, to see which cuDNN engines compete. Needs g++ and
//! NVRTC, as the emulated GPU check in benches/tests/gpu_check_runs.rs does.

use std::path::Path;
use std::process::{Command, Output};
use testutil::cuda_emu::dry_run;
use testutil::{output_text, TempDir};

/// LD_LIBRARY_PATH with the emulator first, built in a folder of this
/// test's own (benches/tests/gpu_check_runs.rs self-tests it).
fn emulator_library_path() -> String {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda_emu_models");
    testutil::cuda_emu::cuda_emulator_library_path(&out, false)
}

fn slmlp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_slmlp"))
}

/// One epoch of three steps on a device of `gib` GiB, with `env` set, in a
/// folder named after `name` (unique among the tests, which run at once):
/// the run, and what the emulator counted (`SLMLP_CUDA_EMU_COUNTS`).
fn dry_pretrain(name: &str, gib: u32, extra: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let tmp = TempDir::new(&format!("dry-pretrain-{name}"));
    let counts = tmp.0.join("counts");
    let run = dry_run(&mut slmlp(), &emulator_library_path(), gib)
        .env("SLMLP_CUDA_EMU_COUNTS", &counts)
        .env_remove("SLMLP_CONV_1X1")
        .envs(env.iter().copied())
        .args(["pretrain", "--preset", "imagenet", "--data", "synthetic"])
        .args(["--per-class", "80", "--epochs", "1", "--no-val"])
        .args(extra)
        .arg("--out")
        .arg(tmp.0.join("run"))
        .output()
        .expect("slmlp runs");
    (run, std::fs::read_to_string(&counts).unwrap_or_default())
}

/// [`dry_pretrain`] that must succeed: its output, and the GiB it reserved
/// at its peak.
fn pretrain_on(gib: u32, extra: &[&str]) -> (String, f64) {
    let (run, _) = dry_pretrain(&format!("{gib}{}", extra.join("")), gib, extra, &[]);
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

/// How many calls of `what` the emulator counted ("321 library
/// cublasLtMatmul"), 0 when none.
fn count(counts: &str, what: &str) -> u64 {
    counts
        .lines()
        .find_map(|l| l.split_once(' ').filter(|(_, w)| *w == what))
        .map_or(0, |(n, _)| n.parse().expect("a count"))
}

/// `SLMLP_CONV_1X1` routes the 1x1 stride-1 convolutions. ResNet-50 has
/// 33 of them (two in each of the 16 bottlenecks, and layer1's projection
/// shortcut): `cudnn` makes the 3 steps' 33 x 3 directions x 3 cuBLASLt
/// calls of `gemm` cuDNN calls, and the Linear layers keep theirs; the
/// default (`auto`) times both libraries on each new problem, so it calls
/// cuBLASLt more than `cudnn` does and cuDNN more than `gemm` does. Any
/// other value is a clear error before the first step.
#[test]
fn slmlp_conv_1x1_routes_the_pointwise_convolutions() {
    let (gemm_run, gemm) = dry_pretrain("gemm", 12, &[], &[("SLMLP_CONV_1X1", "gemm")]);
    let (cudnn_run, cudnn) = dry_pretrain("cudnn", 12, &[], &[("SLMLP_CONV_1X1", "cudnn")]);
    let (auto_run, auto) = dry_pretrain("auto", 12, &[], &[]);
    for run in [&gemm_run, &cudnn_run, &auto_run] {
        assert!(run.status.success(), "{}", output_text(run));
    }
    let matmuls = |c: &str| count(c, "library cublasLtMatmul");
    let forwards = |c: &str| count(c, "library cudnn convolution forward");
    assert_eq!(
        matmuls(&gemm) - matmuls(&cudnn),
        33 * 3 * 3,
        "{gemm}\n{cudnn}"
    );
    assert!(forwards(&cudnn) > forwards(&gemm), "{gemm}\n{cudnn}");
    assert!(matmuls(&auto) > matmuls(&cudnn), "{auto}\n{cudnn}");
    assert!(forwards(&auto) > forwards(&gemm), "{auto}\n{gemm}");
    let (bad, _) = dry_pretrain("bad-route", 12, &[], &[("SLMLP_CONV_1X1", "cublas")]);
    let log = output_text(&bad);
    assert!(!bad.status.success(), "{log}");
    assert!(
        log.contains("SLMLP_CONV_1X1 must be auto, gemm or cudnn, got \"cublas\""),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// Where the ResNet-50 SL-MLP bf16 step at batch 256 holds the most memory
/// (`slmlp profile`, dry run): inside the last block's BN+add+ReLU
/// backward, the first large op of the backward, whose two outputs join
/// the forward's saved activations. No cuDNN call is running then, and the
/// only library workspace held is cuBLASLt's persistent 32 MiB, so the
/// cuDNN workspaces a GPU adds (the emulator asks for none) do not raise
/// this peak.
#[test]
fn the_resnet50_steps_peak_is_inside_the_last_blocks_batchnorm_backward() {
    let tmp = TempDir::new("dry-profile");
    let run = dry_run(&mut slmlp(), &emulator_library_path(), 16)
        .args(["profile", "--method", "sl-mlp", "--arch", "resnet50"])
        .args(["--image-size", "224", "--classes", "1000", "--batch", "256"])
        .args(["--precision", "bf16", "--device", "cuda", "--card", "h200"])
        .args(["--warmup", "2", "--steps", "1", "--out"])
        .arg(tmp.0.join("profile.json"))
        .output()
        .expect("slmlp runs");
    let log = output_text(&run);
    assert!(run.status.success(), "{log}");
    let memory = log
        .lines()
        .find(|l| l.starts_with("memory (cuda allocator): "))
        .unwrap_or_else(|| panic!("no memory line:\n{log}"));
    assert!(
        memory.ends_with(" inside batch_norm_add_relu backward [256, 2048, 7, 7]"),
        "{memory}"
    );
    assert!(
        log.contains("cuDNN and cuBLASLt workspaces held at the allocator's peak: 32.0 MiB"),
        "{log}"
    );
}

/// The cuDNN searches of a small bf16 step (`slmlp profile`, emulated, the
/// graph API only), with `SLMLP_CUDNN_RTC` set to `rtc` (unset: `None`):
/// each search's candidates and method, and the run's output.
fn graph_searches(rtc: Option<&str>) -> (Vec<(Vec<String>, String)>, String) {
    let tmp = TempDir::new(&format!("rtc-{}", rtc.unwrap_or("unset")));
    let json = tmp.0.join("profile.json");
    let mut cmd = slmlp();
    cmd.env("LD_LIBRARY_PATH", emulator_library_path())
        .env("SLMLP_CUDNN_API", "graph")
        .env("SLMLP_CONV_1X1", "cudnn")
        .env_remove("SLMLP_CUDNN_RTC");
    if let Some(v) = rtc {
        cmd.env("SLMLP_CUDNN_RTC", v);
    }
    let run = cmd
        .args([
            "profile", "--method", "sl", "--arch", "resnet18", "--width", "8",
        ])
        .args(["--image-size", "16", "--classes", "4", "--batch", "2"])
        .args(["--precision", "bf16", "--device", "cuda", "--card", "h200"])
        .args(["--warmup", "1", "--steps", "1", "--out"])
        .arg(&json)
        .output()
        .expect("slmlp runs");
    let log = output_text(&run);
    if !run.status.success() {
        return (Vec::new(), log);
    }
    let profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the profile")).unwrap();
    let searches = profile["searches"]
        .as_array()
        .expect("searches")
        .iter()
        .filter(|s| s["lib"] == "cudnn")
        .map(|s| {
            let algos = s["candidates"].as_array().expect("candidates");
            let algos = algos
                .iter()
                .map(|c| c["algo"].as_str().unwrap().to_string());
            (algos.collect(), s["method"].as_str().unwrap().to_string())
        })
        .collect();
    (searches, log)
}

/// Engines cuDNN compiles at run time (the emulator's engine 2 says it is
/// one) are left out of the graph API's timed searches by default, each
/// search saying how many it passed over, and compete with
/// `SLMLP_CUDNN_RTC=any`. (A shape only they serve still gets one: the
/// emulator's dilated parity cases, `conv2d_graph_api`.)
#[test]
fn runtime_compiled_cudnn_engines_compete_only_when_asked() {
    let (default, log) = graph_searches(None);
    assert!(!default.is_empty(), "no cuDNN search:\n{log}");
    for (algos, method) in &default {
        let mut sorted = algos.clone();
        sorted.sort();
        assert_eq!(sorted, ["graph eng0", "graph eng1"], "{method}");
        assert!(method.contains("runtime_compiled: 1,"), "{method}");
    }
    let (any, log) = graph_searches(Some("any"));
    assert_eq!(any.len(), default.len(), "{log}");
    for (algos, method) in &any {
        assert!(
            algos.iter().any(|a| a == "graph eng2_rtc"),
            "{algos:?} {method}"
        );
        assert!(method.contains("runtime_compiled: 0,"), "{method}");
    }
    let (none, log) = graph_searches(Some("always"));
    assert!(none.is_empty(), "{log}");
    assert!(
        log.contains("SLMLP_CUDNN_RTC must be fallback or any, got \"always\""),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
