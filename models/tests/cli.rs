//! The demo binary as a user runs it: it trains, writes metrics and a
//! checkpoint, resumes, and rejects bad arguments with a message.

use std::process::Command;

fn demo(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slmlp-demo"))
        .args(args)
        .output()
        .expect("run slmlp-demo");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn trains_writes_metrics_and_resumes() {
    let dir = std::env::temp_dir().join(format!("slmlp-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let common = [
        "--width",
        "4",
        "--size",
        "8",
        "--classes",
        "3",
        "--batch",
        "8",
        "--steps",
        "4",
        "--log-every",
        "1",
        "--out",
        d,
    ];
    let (code, out, err) = demo(&[&common[..], &["--checkpoint-every", "2"]].concat());
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("step     4/4") && out.contains("loss") && out.contains("img/s"),
        "{out}"
    );
    assert!(dir.join("checkpoint.safetensors").exists());
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(first["step"], 1);
    assert!(first["loss"].as_f64().unwrap() > 0.0);

    // resuming a finished run does nothing more; with more steps it continues
    let (code, out, err) = demo(&[&common[..], &["--resume"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("resumed from") && out.contains("at step 4"),
        "{out}"
    );
    let mut more = common.to_vec();
    more[9] = "6";
    let (code, out, err) = demo(&[&more[..], &["--resume"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("step     6/6"), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        6
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_are_reported() {
    let (code, _, err) = demo(&["--steps", "many"]);
    assert_eq!(code, 2);
    assert!(err.contains("--steps") && err.contains("many"), "{err}");
    let (code, _, err) = demo(&["--precision", "fp8"]);
    assert_eq!(code, 2);
    assert!(err.contains("fp8"), "{err}");
    let (code, _, err) = demo(&["--resume"]);
    assert_eq!(code, 2);
    assert!(err.contains("--out"), "{err}");
    let (code, _, err) = demo(&["--arch", "vgg16"]);
    assert_eq!(code, 1);
    assert!(err.contains("vgg16"), "{err}");
    // no CUDA on this machine: auto falls back with a notice, cuda is an error
    let (code, _, err) = demo(&["--device", "cuda"]);
    assert_eq!(code, 1);
    assert!(err.contains("cuda"), "{err}");
    let (code, _, err) = demo(&[
        "--device", "auto", "--steps", "1", "--width", "4", "--size", "8", "--batch", "2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("running on the CPU"), "{err}");
    let (code, out, _) = demo(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--precision"));
}
