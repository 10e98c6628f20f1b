//! Helpers shared by the workspace's tests (a dev-dependency only).
//!
//! - [`close`]: per-element `|actual - expected| <= atol + rtol * |expected|`
//!   comparisons in which NaN and infinities must match, slice based (so
//!   unit tests inside `engine`, which see their own `Tensor` type, can use
//!   them too) with [`Tensor`](engine::Tensor) conveniences on top;
//! - [`randn`]: the seeded f64 normal inputs of the finite-difference tests;
//! - [`hash`]: the counter-hash weight init shared with
//!   tools/golden/export_resnet50.py;
//! - [`golden`]: the PyTorch fixtures under tests/fixtures;
//! - [`trace`]: capturing the engine's JSONL audit trace;
//! - [`cuda_emu`]: the CUDA emulator, built for tests that run the CUDA
//!   backend without a GPU.

pub mod close;
pub mod cuda_emu;
pub mod golden;
pub mod hash;
pub mod trace;

pub use close::{
    assert_close, assert_close_with, assert_grad_close, assert_tensor_close, check_close,
    check_tensor_close, rounding_tol, Report, Tol,
};
pub use golden::Golden;

use engine::{DType, Rng, Tensor};

/// An f64 tensor of `shape` with N(0, 1) entries from `Rng::new(seed)`.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F64, &mut Rng::new(seed))
}

/// A fresh, empty folder `slmlp-<name>-<pid>` under the system temp dir,
/// removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("slmlp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A finished command's standard output, then its standard error, as text
/// (for the messages of assertions on it).
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The message of an expected error; panics on `Ok`.
pub fn err_text<T>(r: engine::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Asserts that a command (`what`, for messages) failed cleanly: a nonzero
/// exit `code`, every needle in `stderr`, and no panic.
pub fn assert_clean_failure(what: &str, code: i32, stdout: &str, stderr: &str, needles: &[&str]) {
    assert_ne!(code, 0, "{what} should fail\nstdout: {stdout}");
    for n in needles {
        assert!(
            stderr.contains(n),
            "{what}: error should mention {n:?}: {stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
}

/// Asserts that the Fashion-MNIST folder `dir` holds each idx file of
/// `stems` (plain or `.gz`), pointing at scripts/fetch-data.sh if not.
pub fn assert_fashion_mnist_present(dir: &std::path::Path, stems: &[&str]) {
    let present = stems
        .iter()
        .all(|f| dir.join(format!("{f}.gz")).is_file() || dir.join(f).is_file());
    assert!(
        present,
        "Fashion-MNIST is not in {}: run scripts/fetch-data.sh (or set SLMLP_FASHION_MNIST)",
        dir.display()
    );
}
