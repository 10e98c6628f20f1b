//! The UCI optical recognition of handwritten digits (test set) as
//! scikit-learn ships it: `sklearn/datasets/data/digits.csv.gz` of the
//! scikit-learn 1.7.2 wheel, which `scripts/fetch-data.sh digits` extracts.
//! 1,797 lines, each 64 pixel counts in 0..=16 (an 8x8 image, row-major: the
//! number of set pixels in each 4x4 block of the original 32x32 bitmap) and
//! then the digit 0..9; 174 to 183 per class, classes interleaved.

use super::idx::repo_root;
use super::memory::InMemory;
use engine::{Error, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

const SIDE: usize = 8;
const PIXELS: usize = SIDE * SIDE;
/// Largest pixel count (a 4x4 block fully set).
const MAX_COUNT: f64 = 16.0;
/// The decompressed csv is about 280 kB; anything past this is not it.
const MAX_CSV_BYTES: u64 = 16 << 20;

/// `$SLMLP_DIGITS` when set, else `<repo>/.cache/data/digits/digits.csv.gz`,
/// where `scripts/fetch-data.sh` puts it.
pub fn default_digits_path() -> PathBuf {
    match std::env::var_os("SLMLP_DIGITS") {
        Some(path) => PathBuf::from(path),
        None => repo_root().join(".cache/data/digits/digits.csv.gz"),
    }
}

/// Loads every digit of the gzipped csv at `path`, in file order, as gray
/// 8x8 images with pixel `round(count * 255 / 16)`, labelled `"0"`..`"9"`;
/// the dataset is named `uci-digits`. A missing or unreadable file, a line
/// without exactly 65 numbers, a pixel count outside 0..=16, a label that
/// is not an integer 0..9 or a file past 16 MiB decompressed is an error
/// naming the file (and line).
pub fn uci_digits(path: &Path) -> Result<InMemory> {
    let fail = |msg: String| Error::arg("digits", format!("{}: {msg}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| {
        fail(format!(
            "{e} (run scripts/fetch-data.sh digits, or set SLMLP_DIGITS to the digits.csv.gz file)"
        ))
    })?;
    let mut text = String::new();
    GzDecoder::new(std::io::BufReader::new(file))
        .take(MAX_CSV_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(format!("not a gzipped text file: {e}")))?;
    if text.len() as u64 > MAX_CSV_BYTES {
        return Err(fail(format!(
            "decompresses to more than {MAX_CSV_BYTES} bytes"
        )));
    }
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |msg: String| fail(format!("line {}: {msg}", n + 1));
        let values = line
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| at(format!("{v:?} is not a number")))
            })
            .collect::<Result<Vec<f64>>>()?;
        if values.len() != PIXELS + 1 {
            return Err(at(format!(
                "{} values, expected {} (64 pixels and the label)",
                values.len(),
                PIXELS + 1
            )));
        }
        for &v in &values[..PIXELS] {
            if !(0.0..=MAX_COUNT).contains(&v) {
                return Err(at(format!("pixel count {v} is outside 0..=16")));
            }
            pixels.push((v * 255.0 / MAX_COUNT).round() as u8);
        }
        let label = values[PIXELS];
        if label.fract() != 0.0 || !(0.0..=9.0).contains(&label) {
            return Err(at(format!("label {label} is not a digit 0..9")));
        }
        labels.push(label as u16);
    }
    if labels.is_empty() {
        return Err(fail("no digits in the file".into()));
    }
    InMemory::new(
        "uci-digits",
        (0..10).map(|d| d.to_string()).collect(),
        1,
        SIDE,
        SIDE,
        pixels,
        labels,
    )
}
