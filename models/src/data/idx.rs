//! Fashion-MNIST from its IDX files (gzip-compressed as distributed, or
//! already decompressed under the same name without `.gz`).
//!
//! IDX format: big-endian u32 magic `0x0000TTNN` (TT = element type, 0x08 for
//! u8; NN = number of dimensions), then NN big-endian u32 sizes, then the
//! elements in row-major order. Images are `0x00000803` [N, rows, cols],
//! labels `0x00000801` [N].

use super::memory::InMemory;
use engine::{Error, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Fashion-MNIST's class names; label `k` is `FASHION_MNIST_CLASSES[k]`.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn file_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// An IDX file of u8 elements: its dimensions and row-major data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Where Fashion-MNIST is looked for: `$SLMLP_FASHION_MNIST` when set, else
/// `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist`)
/// when that folder exists, else `<repo>/.cache/data/fashion-mnist`, where
/// `scripts/fetch-data.sh` puts it.
pub fn default_fashion_mnist_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLMLP_FASHION_MNIST") {
        return PathBuf::from(dir);
    }
    let system = Path::new("/usr/share/datasets/fashion-mnist");
    if system.is_dir() {
        return system.to_path_buf();
    }
    repo_root().join(".cache/data/fashion-mnist")
}

/// The workspace root, fixed at compile time (models/..).
pub(crate) fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Loads one split of Fashion-MNIST from `dir`
/// (`{train,t10k}-images-idx3-ubyte[.gz]` and `...-labels-idx1-ubyte[.gz]`)
/// as gray HxW images (28x28 in the real files) with labels 0..9. The image
/// and label files must agree on the sample count and every label must be
/// below 10. The dataset is named `fashion-mnist/{train,test}`.
pub fn fashion_mnist(dir: &Path, split: Split) -> Result<InMemory> {
    let prefix = split.file_prefix();
    let images_path = find_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&images_path, 3)?;
    let labels = read_idx(&labels_path, 1)?;
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n {
        return Err(Error::shape(
            "fashion-mnist",
            format!(
                "{} holds {n} images but {} holds {} labels",
                images_path.display(),
                labels_path.display(),
                labels.dims[0]
            ),
        ));
    }
    if h == 0 || w == 0 {
        return Err(Error::shape(
            "fashion-mnist",
            format!("{}: images are {h}x{w}", images_path.display()),
        ));
    }
    if let Some((i, &l)) = labels.data.iter().enumerate().find(|&(_, &l)| l >= 10) {
        return Err(Error::arg(
            "fashion-mnist",
            format!(
                "{}: label {l} of sample {i} is not in 0..=9",
                labels_path.display()
            ),
        ));
    }
    InMemory::new(
        format!("fashion-mnist/{}", split.name()),
        FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        1,
        h,
        w,
        images.data,
        labels.data.iter().map(|&l| l as u16).collect(),
    )
}

/// `dir/<stem>.gz` if it exists, else `dir/<stem>`.
fn find_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{stem}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let raw = dir.join(stem);
    if raw.is_file() {
        return Ok(raw);
    }
    Err(Error::arg(
        "fashion-mnist",
        format!(
            "neither {} nor {} exists (run scripts/fetch-data.sh, or set SLMLP_FASHION_MNIST to the folder holding the IDX files)",
            gz.display(),
            raw.display()
        ),
    ))
}

/// Reads an IDX file of u8 elements with exactly `ndims` dimensions,
/// gunzipping it first when its name ends in `.gz`. A wrong magic number,
/// element type or dimension count, a truncated header or body, trailing
/// bytes, and a corrupt gzip stream are errors naming the file.
pub fn read_idx(path: &Path, ndims: usize) -> Result<IdxArray> {
    let bytes = read_maybe_gz(path)?;
    parse_idx(&bytes, ndims).map_err(|msg| Error::arg("idx", format!("{}: {msg}", path.display())))
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
    {
        GzDecoder::new(std::io::BufReader::new(file))
            .read_to_end(&mut bytes)
            .map_err(|e| {
                Error::arg(
                    "idx",
                    format!("{}: corrupt or truncated gzip stream: {e}", path.display()),
                )
            })?;
    } else {
        std::io::BufReader::new(file)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(bytes)
}

fn parse_idx(bytes: &[u8], ndims: usize) -> std::result::Result<IdxArray, String> {
    let expected_magic = 0x0800 | ndims as u32;
    if bytes.len() < 4 {
        return Err(format!(
            "truncated: {} bytes, an IDX header needs at least 4",
            bytes.len()
        ));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != expected_magic {
        return Err(format!(
            "bad magic number 0x{magic:08x}, expected 0x{expected_magic:08x} (u8 elements, {ndims} dimension{})",
            if ndims == 1 { "" } else { "s" }
        ));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(format!(
            "truncated header: {} bytes, {ndims} dimensions need {header}",
            bytes.len()
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("dimensions {dims:?} overflow"))?;
    let body = bytes.len() - header;
    if body < count {
        return Err(format!(
            "truncated: dimensions {dims:?} need {count} data bytes, the file has {body}"
        ));
    }
    if body > count {
        return Err(format!(
            "{} trailing bytes after the {count} data bytes of dimensions {dims:?}",
            body - count
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}
