//! The CUDA emulator (tools/cuda_emu, docs/GPU_CHECK.md) for tests that run
//! the CUDA backend without a GPU.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds the emulator into `out` (and runs its self-test when `self_test`),
/// once per test process, and returns LD_LIBRARY_PATH with its `lib` folder
/// first, for the child processes that are to find it as their CUDA driver.
/// Every call of a process must ask for the same build. Panics with the
/// build's output when it fails: it needs python3, g++ and NVRTC
/// (scripts/install-nvrtc.sh, which the README's test command runs).
pub fn cuda_emulator_library_path(out: &Path, self_test: bool) -> String {
    static BUILT: OnceLock<(PathBuf, bool, String)> = OnceLock::new();
    let (dir, tested, path) = BUILT.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut build = Command::new("python3");
        build
            .arg(repo.join("tools/cuda_emu/build.py"))
            .arg("--out")
            .arg(out);
        if self_test {
            build.arg("--self-test");
        }
        let built = build
            .output()
            .expect("python3 runs tools/cuda_emu/build.py");
        assert!(
            built.status.success(),
            "building the CUDA emulator (it needs g++ and NVRTC) or its self-test failed:\n{}",
            crate::output_text(&built)
        );
        let lib = out.join("lib");
        let path = match std::env::var("LD_LIBRARY_PATH") {
            Ok(p) if !p.is_empty() => format!("{}:{p}", lib.display()),
            _ => lib.display().to_string(),
        };
        (out.to_path_buf(), self_test, path)
    });
    assert_eq!(
        (dir.as_path(), *tested),
        (out, self_test),
        "the emulator was built differently earlier in this process"
    );
    path.clone()
}

/// `cmd` set to run on the emulator found through `library_path` (from
/// [`cuda_emulator_library_path`]) in a dry run: nothing is computed, every
/// allocation is real (docs/GPU_CHECK.md), on a device of `gib` GiB with
/// the 132 SMs of an H100 or H200, which size the grids.
pub fn dry_run<'c>(cmd: &'c mut Command, library_path: &str, gib: u32) -> &'c mut Command {
    cmd.env("LD_LIBRARY_PATH", library_path)
        .env("SLMLP_CUDA_EMU_DRY", "1")
        .env("SLMLP_CUDA_EMU_SMS", "132")
        .env("SLMLP_CUDA_EMU_MEM_GIB", gib.to_string())
}
