//! `slmlp profile` as a user runs it: the table, the JSON, bounded flags.

use std::process::Command;

fn slmlp(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slmlp"))
        .args(args)
        .output()
        .expect("run slmlp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const SMALL: &[&str] = &[
    "profile",
    "--arch",
    "resnet18",
    "--width",
    "4",
    "--image-size",
    "12",
    "--in-channels",
    "1",
    "--classes",
    "3",
    "--batch",
    "4",
    "--warmup",
    "1",
    "--steps",
    "2",
];

#[test]
fn profile_prints_the_table_and_writes_json() {
    let dir = std::env::temp_dir().join(format!("slmlp-profile-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("sub/p.json");
    let mut args = SMALL.to_vec();
    args.extend(["--top", "6", "--out", out.to_str().unwrap()]);
    let (code, stdout, stderr) = slmlp(&args);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    for needle in [
        "sl-mlp resnet18 width 4",
        "step:",
        "conv2d forward [cpu:im2col+gemm] f32",
        "other (",
        "% peak",
        "f32 FMA peak measured now",
        "copy bandwidth measured now",
    ] {
        assert!(stdout.contains(needle), "{needle:?} in\n{stdout}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(j["steps"], 2);
    assert_eq!(j["model"]["arch"], "resnet18");
    assert_eq!(j["model"]["batch"], 4);
    assert_eq!(j["timing"], "cpu wall clock");
    assert!(j["ceiling"]["flops_per_s"].as_f64().unwrap() > 1e9);
    assert!(j["ceiling"]["bytes_per_s"].as_f64().unwrap() > 1e8);
    let rows = j["rows"].as_array().unwrap();
    assert!(rows
        .iter()
        .any(|r| r["op"] == "conv2d" && r["phase"] == "backward"));
    assert!(rows.iter().all(|r| r["calls"].as_u64().unwrap() > 0));
    // given ceilings replace the defaults
    let mut args = SMALL.to_vec();
    args.extend(["--peak-tflops", "1", "--peak-gbps", "100", "--method", "sl"]);
    let (code, stdout, stderr) = slmlp(&args);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("--peak-tflops") && stdout.contains("--peak-gbps"),
        "{stdout}"
    );
    assert!(stdout.starts_with("sl resnet18"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn profile_bounds_its_flags() {
    for (flag, value) in [
        ("--batch", "0"),
        ("--steps", "0"),
        ("--steps", "1001"),
        ("--warmup", "5000"),
        ("--width", "100000"),
        ("--image-size", "0"),
        ("--in-channels", "1000"),
        ("--classes", "0"),
        ("--top", "0"),
        ("--peak-tflops", "0"),
        ("--peak-gbps", "inf"),
    ] {
        let mut args = SMALL.to_vec();
        args.extend([flag, value]);
        let (code, stdout, stderr) = slmlp(&args);
        testutil::assert_clean_failure(
            &format!("slmlp profile {flag} {value}"),
            code,
            &stdout,
            &stderr,
            &[&flag[2..]],
        );
    }
    // an input batch too large to allocate is refused before it is
    let mut args = SMALL.to_vec();
    args.extend([
        "--batch",
        "65536",
        "--image-size",
        "4096",
        "--in-channels",
        "3",
    ]);
    let (code, stdout, stderr) = slmlp(&args);
    testutil::assert_clean_failure("huge batch", code, &stdout, &stderr, &["input elements"]);
}
