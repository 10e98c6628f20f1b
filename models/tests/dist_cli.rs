//! Data-parallel training through the `slmlp` binary: for `pretrain` and
//! for `detect train`, `--grad-accum 2`, `--ranks 2` (threads) and two
//! processes over TCP on loopback (launched with torchrun's environment
//! variables) end with bit-identical parameters; a rank that never comes is
//! a clear error within the timeout; `--sync-bn` on two ranks trains like
//! one rank with the whole batch.

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
    let args = [
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
    ];
    slmlp(&args, out, extra, env)
}

/// `slmlp ARGS --out OUT EXTRA` with `env`, its output captured.
fn slmlp(args: &[&str], out: &Path, extra: &[&str], env: &[(&str, String)]) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slmlp"));
    cmd.args(args)
        .arg("--out")
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

/// Runs `run(out, extra, env)` with `--grad-accum 2`, with `--ranks 2` and
/// as two TCP processes (`extra` holds the per-micro-batch `--batch`), and
/// checks that all three end with the same parameters and that only rank 0
/// wrote the `steps` step records.
fn three_ways_bit_identical(
    name: &str,
    batch: &[&str],
    steps: usize,
    run: impl Fn(&Path, &[&str], &[(&str, String)]) -> std::process::Child,
) {
    let with = |more: &[&str]| -> Vec<String> {
        batch.iter().chain(more).map(|s| s.to_string()).collect()
    };
    let accum = tmp(&format!("{name}-accum"));
    let a = with(&["--grad-accum", "2"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    check(
        run(&accum, &a, &[]).wait_with_output().unwrap(),
        "--grad-accum 2",
    );
    let threads = tmp(&format!("{name}-threads"));
    let t = with(&["--ranks", "2"]);
    let t: Vec<&str> = t.iter().map(String::as_str).collect();
    check(
        run(&threads, &t, &[]).wait_with_output().unwrap(),
        "--ranks 2",
    );
    let tcp = tmp(&format!("{name}-tcp"));
    let port = free_port();
    let p = with(&["--dist-backend", "tcp"]);
    let p: Vec<&str> = p.iter().map(String::as_str).collect();
    let procs: Vec<_> = (0..2)
        .map(|r| run(&tcp, &p, &torchrun_env(r, 2, port)))
        .collect();
    for (r, p) in procs.into_iter().enumerate() {
        check(p.wait_with_output().unwrap(), &format!("TCP rank {r}"));
    }
    let reference = params(&accum);
    assert!(!reference.is_empty());
    assert_eq!(
        params(&threads),
        reference,
        "{name}: --ranks 2 differs from --grad-accum 2"
    );
    assert_eq!(
        params(&tcp),
        reference,
        "{name}: two TCP processes differ from --grad-accum 2"
    );
    // only rank 0 wrote the metrics: one record per step
    let records = std::fs::read_to_string(tcp.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .count();
    assert_eq!(records, steps);
    for d in [accum, threads, tcp] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn grad_accum_threads_and_tcp_processes_train_bit_identically() {
    three_ways_bit_identical("pretrain", &["--batch", "8"], 3, pretrain);
}

/// `slmlp detect train` of a tiny Mask R-CNN (width 4) for one epoch of
/// the 8 training images of a `detection-data` benchmark in `data`.
fn detect_train(
    data: &Path,
) -> impl Fn(&Path, &[&str], &[(&str, String)]) -> std::process::Child + '_ {
    move |out, extra, env| {
        let args = [
            "detect",
            "train",
            "--data",
            data.to_str().unwrap(),
            "--width",
            "4",
            "--min-size",
            "64",
            "--max-size",
            "107",
            "--fpn-channels",
            "16",
            "--representation-size",
            "32",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--quiet",
        ];
        slmlp(&args, out, extra, env)
    }
}

#[test]
fn detect_train_grad_accum_threads_and_tcp_processes_bit_identically() {
    let data = tmp("detect-data");
    let made = Command::new(env!("CARGO_BIN_EXE_slmlp"))
        .args([
            "detection-data",
            "--train",
            "8",
            "--val",
            "2",
            "--canvas",
            "64",
            "--out",
        ])
        .arg(&data)
        .output()
        .unwrap();
    check(made, "detection-data");
    // global batch 2: 4 steps
    three_ways_bit_identical("detect", &["--batch", "1"], 4, detect_train(&data));
    let _ = std::fs::remove_dir_all(data);
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

/// A rank killed mid-run: the other one stops with an error naming it
/// (closed connection, or nothing received within the timeout), not a hang.
#[test]
fn a_rank_that_dies_is_a_clear_error_for_the_others() {
    let port = free_port();
    let outs = [tmp("dies-0"), tmp("dies-1")];
    let long = ["--batch", "4", "--epochs", "5000"];
    let mut ranks: Vec<_> = (0..2)
        .map(|r| {
            let mut env = torchrun_env(r, 2, port);
            env.push(("SLMLP_DIST_TIMEOUT", "5".into()));
            pretrain(&outs[r], &long, &env)
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(3));
    ranks[1].kill().unwrap();
    let _ = ranks[1].wait();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = ranks[0].try_wait().unwrap() {
            break s;
        }
        if t0.elapsed().as_secs() > 60 {
            ranks[0].kill().unwrap();
            panic!("rank 0 still running 60 s after rank 1 was killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let o = ranks.swap_remove(0).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    testutil::assert_clean_failure(
        "rank 0 after rank 1 died",
        status.code().unwrap_or(-1),
        &String::from_utf8_lossy(&o.stdout),
        &err,
        &["1"],
    );
    assert!(
        ["closed its connection", "sent nothing", "did not connect"]
            .iter()
            .any(|m| err.contains(m)),
        "{err}"
    );
    for out in outs {
        let _ = std::fs::remove_dir_all(out);
    }
}

#[test]
fn sync_bn_on_two_ranks_trains_like_one_rank_with_the_whole_batch() {
    let whole = tmp("sync-whole");
    check(
        pretrain(&whole, &["--batch", "16"], &[])
            .wait_with_output()
            .unwrap(),
        "--batch 16",
    );
    let synced = tmp("sync-ranks");
    check(
        pretrain(&synced, &["--batch", "8", "--ranks", "2", "--sync-bn"], &[])
            .wait_with_output()
            .unwrap(),
        "--ranks 2 --sync-bn",
    );
    let own = tmp("sync-off");
    check(
        pretrain(&own, &["--batch", "8", "--ranks", "2"], &[])
            .wait_with_output()
            .unwrap(),
        "--ranks 2",
    );
    let values = |out: &Path| -> Vec<f32> {
        let ckpt = engine::checkpoint::load(&out.join("model.safetensors")).unwrap();
        // running statistics included: with --sync-bn rank 0's are the
        // global batch's
        ckpt.tensors
            .values()
            .flat_map(|t| t.to_vec::<f32>().unwrap())
            .collect()
    };
    let reference = values(&whole);
    // three SGD steps (lr 0.1, momentum) on gradients equal up to float
    // summation order (see tests/dist.rs): measured differences at most
    // 3.1e-5 (conv1.weight, which per-rank statistics move by 0.33)
    let tol = testutil::Tol::new(1e-4, 1e-4);
    testutil::assert_close_with("--sync-bn parameters", &values(&synced), &reference, tol);
    // per-rank statistics (the default) train measurably differently
    assert!(testutil::check_close("per-rank BN", &values(&own), &reference, tol).is_err());
    for d in [whole, synced, own] {
        let _ = std::fs::remove_dir_all(d);
    }
}
