//! Data-parallel pretraining through the `slmlp` binary: `--grad-accum 2`,
//! `--ranks 2` (threads) and two processes over TCP on loopback (launched
//! with torchrun's environment variables) end with bit-identical
//! parameters; a rank that never comes is a clear error within the
//! timeout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("slmlp-dist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `slmlp pretrain` on tiny synthetic data (width 4, 3 steps of a global
/// batch of 16) into `out`, with `extra` options and `env`.
fn pretrain(out: &Path, extra: &[&str], env: &[(&str, String)]) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slmlp"));
    cmd.args([
        "pretrain",
        "--arch",
        "resnet18",
        "--width",
        "4",
        "--data",
        "synthetic",
        "--per-class",
        "5",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--no-val",
        "--quiet",
        "--out",
    ])
    .arg(out)
    .args(extra)
    .env("SLMLP_DIST_TIMEOUT", "60")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("run slmlp")
}

fn check(o: Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The trained parameters (BN running statistics are per rank: left out).
fn params(out: &Path) -> BTreeMap<String, Vec<u32>> {
    let ckpt = engine::checkpoint::load(&out.join("model.safetensors")).unwrap();
    ckpt.tensors
        .into_iter()
        .filter(|(k, _)| !k.contains("running_") && !k.contains("num_batches"))
        .map(|(k, t)| {
            let bits = t
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (k, bits)
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn torchrun_env(rank: usize, world: usize, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("WORLD_SIZE", world.to_string()),
        ("RANK", rank.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("MASTER_ADDR", "127.0.0.1".into()),
        ("MASTER_PORT", port.to_string()),
    ]
}

#[test]
fn grad_accum_threads_and_tcp_processes_train_bit_identically() {
    let accum = tmp("accum");
    check(
        pretrain(&accum, &["--batch", "8", "--grad-accum", "2"], &[])
            .wait_with_output()
            .unwrap(),
        "--grad-accum 2",
    );
    let threads = tmp("threads");
    check(
        pretrain(&threads, &["--batch", "8", "--ranks", "2"], &[])
            .wait_with_output()
            .unwrap(),
        "--ranks 2",
    );
    let tcp = tmp("tcp");
    let port = free_port();
    let procs: Vec<_> = (0..2)
        .map(|r| {
            pretrain(
                &tcp,
                &["--batch", "8", "--dist-backend", "tcp"],
                &torchrun_env(r, 2, port),
            )
        })
        .collect();
    for (r, p) in procs.into_iter().enumerate() {
        check(p.wait_with_output().unwrap(), &format!("TCP rank {r}"));
    }
    let reference = params(&accum);
    assert!(!reference.is_empty());
    assert_eq!(
        params(&threads),
        reference,
        "--ranks 2 differs from --grad-accum 2"
    );
    assert_eq!(
        params(&tcp),
        reference,
        "two TCP processes differ from --grad-accum 2"
    );
    // only rank 0 wrote the metrics: one record per step
    let steps = std::fs::read_to_string(tcp.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .count();
    assert_eq!(steps, 3);
    for d in [accum, threads, tcp] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_rank_that_never_comes_is_a_clear_error_within_the_timeout() {
    let out = tmp("alone");
    let t0 = std::time::Instant::now();
    let mut env = torchrun_env(0, 2, free_port());
    env.push(("SLMLP_DIST_TIMEOUT", "2".into()));
    let o = pretrain(&out, &["--batch", "8"], &env)
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    testutil::assert_clean_failure(
        "rank 0 alone",
        o.status.code().unwrap_or(-1),
        &String::from_utf8_lossy(&o.stdout),
        &err,
        &["rank(s) 1 did not connect", "within 2 s"],
    );
    assert!(t0.elapsed().as_secs() < 30);
    let _ = std::fs::remove_dir_all(out);
}
