//! Records the commit the binaries are built from as `SLMLP_COMMIT`, for the
//! provenance that run folders and results files carry (`run_dir.rs`):
//! `git rev-parse HEAD`, with `-dirty` when tracked files differed from it
//! when this script last ran (it reruns whenever HEAD, a branch or the index
//! changes). Outside a git checkout nothing is set and the commit reads null.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let Some(commit) = git(&["rev-parse", "HEAD"]) else {
        return;
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!(
        "cargo:rustc-env=SLMLP_COMMIT={commit}{}",
        if dirty { "-dirty" } else { "" }
    );
    for dir in ["--git-dir", "--git-common-dir"] {
        if let Some(d) = git(&["rev-parse", dir]) {
            for f in ["HEAD", "index", "refs/heads", "packed-refs"] {
                println!("cargo:rerun-if-changed={d}/{f}");
            }
        }
    }
}
