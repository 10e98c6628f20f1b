//! scripts/slmlp.sh fetches only the built-in datasets a command line uses:
//! a GPU machine without apt or npm must be able to run `pretrain --data
//! folder:PATH`. The script runs from a copy of scripts/ whose
//! fetch-data.sh records what it was asked for, with a `cargo` on PATH that
//! only records that it ran.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// What fetch-data.sh was asked to fetch (None: not called) for `args`.
fn fetched(sandbox: &Path, args: &[&str]) -> Option<String> {
    let log = sandbox.join("fetch.log");
    let _ = std::fs::remove_file(&log);
    let path = format!(
        "{}:{}",
        sandbox.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(sandbox.join("scripts/slmlp.sh"))
        .args(args)
        .env("PATH", path)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("cargo run"),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&log)
        .ok()
        .map(|s| s.trim().to_string())
}

fn write_exe(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn fetches_only_the_datasets_the_command_uses() {
    let sandbox = std::env::temp_dir().join(format!("slmlp-script-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&sandbox);
    std::fs::create_dir_all(sandbox.join("scripts")).unwrap();
    std::fs::copy(
        repo().join("scripts/slmlp.sh"),
        sandbox.join("scripts/slmlp.sh"),
    )
    .unwrap();
    let log = sandbox.join("fetch.log");
    write_exe(
        &sandbox.join("scripts/fetch-data.sh"),
        &format!("echo \"$*\" > '{}'", log.display()),
    );
    write_exe(&sandbox.join("bin/cargo"), "echo cargo \"$@\"");

    for (args, want) in [
        (
            &[
                "pretrain",
                "--data",
                "folder:/imagenet/train",
                "--device",
                "cuda",
            ][..],
            None,
        ),
        (
            &["detect", "train", "--data", "coco", "--preset", "coco"],
            None,
        ),
        (&["--help"], None),
        (
            &["experiment", "--quick"],
            Some("digits fashion-mnist mnist"),
        ),
        (&["detection-data", "--out", "d"], Some("fashion-mnist")),
        (&["pretrain", "--epochs", "1"], Some("fashion-mnist")),
        (
            &[
                "--threads",
                "2",
                "transfer",
                "--checkpoint",
                "c",
                "--data",
                "mnist:test",
            ],
            Some("mnist"),
        ),
        (&["analyze", "--data=folder:x", "--checkpoint", "c"], None),
        (
            &[
                "transfer",
                "--checkpoint",
                "c",
                "--data",
                "folder:x",
                "--test-data=fashion-mnist:test",
            ],
            Some("fashion-mnist"),
        ),
    ] {
        assert_eq!(fetched(&sandbox, args).as_deref(), want, "{args:?}");
    }
    std::fs::remove_dir_all(&sandbox).unwrap();
}
