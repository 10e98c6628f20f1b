//! `pretrain --resume` after a real `kill -9`: the process is killed while
//! it trains (after a step checkpoint was written, before the run ended),
//! resumed from what is on disk, and its final checkpoint (weights,
//! momentum buffers, loss-scaler state, step) and model must equal an
//! uninterrupted run's byte for byte. CPU, one rayon thread count.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ARGS: &[&str] = &[
    "pretrain",
    "--method",
    "sl-mlp",
    "--arch",
    "resnet18",
    "--width",
    "4",
    "--data",
    "synthetic",
    "--per-class",
    "40",
    "--batch",
    "8",
    "--epochs",
    "3",
    "--checkpoint-every",
    "1",
    "--no-val",
    "--quiet",
];

fn run(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slmlp"));
    cmd.args(ARGS)
        .args(["--out", out.to_str().unwrap()])
        .args(extra)
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn finish(mut cmd: Command) {
    let o = cmd.output().expect("run slmlp");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn steps_logged(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .map(|s| s.lines().filter(|l| l.contains("\"step\"")).count())
        .unwrap_or(0)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("slmlp-kill-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn f16_or_f32(precision: &str) {
    let (whole, killed) = (
        tmp(&format!("whole-{precision}")),
        tmp(&format!("killed-{precision}")),
    );
    finish(run(&whole, &["--precision", precision]));
    let total = steps_logged(&whole);
    assert!(total >= 20, "{total} steps: too few to kill in between");

    // kill -9 once a few step checkpoints are on disk, well before the end
    let mut child = run(&killed, &["--precision", precision]).spawn().unwrap();
    let t0 = Instant::now();
    while steps_logged(&killed) < 4 || !killed.join("checkpoint.safetensors").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed run reported success");
    let at_kill = steps_logged(&killed);
    assert!(
        at_kill < total,
        "killed after the last step ({at_kill} of {total})"
    );

    finish(run(&killed, &["--precision", precision, "--resume"]));
    for f in ["checkpoint.safetensors", "model.safetensors"] {
        let (a, b) = (
            std::fs::read(whole.join(f)).unwrap(),
            std::fs::read(killed.join(f)).unwrap(),
        );
        assert!(
            a == b,
            "{f} differs after kill -9 at step {at_kill} and --resume"
        );
    }
    assert_eq!(steps_logged(&killed), total, "step records after resume");
    let _ = std::fs::remove_dir_all(&whole);
    let _ = std::fs::remove_dir_all(&killed);
}

#[test]
fn resume_after_kill_9_is_byte_identical_f32() {
    f16_or_f32("f32");
}

#[test]
fn resume_after_kill_9_is_byte_identical_f16() {
    f16_or_f32("f16");
}
