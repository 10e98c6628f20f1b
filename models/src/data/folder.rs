//! ImageNet-style folders: `root/<class>/**/<image>`, as torchvision's
//! `ImageFolder` reads them. Images are decoded on demand (JPEG or PNG, by
//! content, not by extension) and converted to 8-bit RGB.

use super::{Dataset, Image};
use engine::{Error, Result};
use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    files: Vec<PathBuf>,
    labels: Vec<u32>,
}

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

impl ImageFolder {
    /// Lists `root`: classes are the names of its subdirectories, sorted
    /// bytewise (label `k` = `k`-th name; a name that is not UTF-8 is shown
    /// with U+FFFD in place of its invalid bytes); samples are the files
    /// under each class folder (recursively, following symlinks, each real
    /// directory once, so a symlink loop or a second link to the same
    /// folder adds nothing) whose extension is jpg/jpeg/png in any case,
    /// sorted by path within their class. Nothing is decoded here. A
    /// missing root, a root with no class folders, and a class folder with
    /// no image files are errors naming them.
    pub fn open(root: &Path) -> Result<ImageFolder> {
        let class_dirs: Vec<PathBuf> = read_dir_sorted(root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        if class_dirs.is_empty() {
            return Err(Error::arg(
                "image folder",
                format!(
                    "{}: no class subdirectories (expected root/<class>/<image>)",
                    root.display()
                ),
            ));
        }
        let classes: Vec<String> = class_dirs
            .iter()
            .map(|d| {
                d.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let mut files = Vec::new();
        let mut labels = Vec::new();
        let mut empty = Vec::new();
        for (label, dir) in class_dirs.iter().enumerate() {
            let before = files.len();
            collect_images(dir, &mut HashSet::new(), &mut files)?;
            if files.len() == before {
                empty.push(classes[label].as_str());
            }
            labels.resize(files.len(), label as u32);
        }
        if !empty.is_empty() {
            return Err(Error::arg(
                "image folder",
                format!(
                    "{}: no .jpg/.jpeg/.png files in class folder(s) {}",
                    root.display(),
                    empty.join(", ")
                ),
            ));
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            files,
            labels,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of sample `index`.
    pub fn path(&self, index: usize) -> &Path {
        &self.files[index]
    }
}

/// The entries of `dir`, sorted by path. A missing or unreadable folder is
/// an error naming it.
fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<Vec<_>>>()?;
    paths.sort();
    Ok(paths)
}

/// Appends the image files under `dir` to `out`, depth first in sorted
/// order. `seen` holds the canonical paths of the directories already
/// listed: a directory reached again (through a symlink) is skipped.
fn collect_images(dir: &Path, seen: &mut HashSet<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    let real = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    if !seen.insert(real) {
        return Ok(());
    }
    for path in read_dir_sorted(dir)? {
        if path.is_dir() {
            collect_images(&path, seen, out)?;
        } else if path.is_file() && has_image_extension(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, index: usize) -> usize {
        self.labels[index] as usize
    }
    fn channels(&self) -> usize {
        3
    }
    fn get(&self, index: usize) -> Result<Image> {
        let path = self.files.get(index).ok_or_else(|| {
            Error::arg(
                "image folder",
                format!(
                    "{}: index {index} out of range for {} images",
                    self.root.display(),
                    self.files.len()
                ),
            )
        })?;
        decode_image(path, 3, "image folder")
    }
    fn describe(&self, index: usize) -> String {
        self.files[index].display().to_string()
    }
}

/// Largest image side the decoder accepts, and the most it may allocate
/// (a 16384 x 10922 RGB image): larger images are errors, which loaders
/// report as unreadable samples and skip.
const MAX_DECODED_SIDE: u32 = 16_384;
const MAX_DECODED_BYTES: u64 = 512 << 20;

/// Decodes the JPEG/PNG at `path` to `channels` (1: gray, 3: RGB) channels;
/// `op` names the caller in the error. Images over `MAX_DECODED_SIDE` or
/// `MAX_DECODED_BYTES`, and JPEGs cut short (no end-of-image marker after
/// their last scan, which the decoder would fill with grey), are errors.
pub(crate) fn decode_image(path: &Path, channels: usize, op: &'static str) -> Result<Image> {
    let bad = |msg: String| Error::arg(op, format!("{}: {msg}", path.display()));
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if size > MAX_DECODED_BYTES {
        return Err(bad(format!(
            "file of {size} bytes exceeds {MAX_DECODED_BYTES}"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut reader = image::ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format() == Some(image::ImageFormat::Jpeg) && jpeg_truncated(&bytes) {
        return Err(bad(
            "truncated JPEG (no end-of-image marker after its last scan)".into(),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODED_SIDE);
    limits.max_image_height = Some(MAX_DECODED_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let decoded = reader
        .decode()
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    let (height, width) = (decoded.height() as usize, decoded.width() as usize);
    let pixels = if channels == 1 {
        decoded.into_luma8().into_raw()
    } else {
        decoded.into_rgb8().into_raw()
    };
    Ok(Image {
        channels,
        height,
        width,
        pixels,
    })
}

/// Whether a JPEG lacks the end-of-image marker (FF D9) after its last
/// start-of-scan (FF DA). Entropy-coded data stuffs every FF byte, so
/// neither marker can occur inside a scan; an embedded thumbnail's markers
/// come before the main image's scans.
fn jpeg_truncated(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi < sos,
        (_, None) => true,
        (None, Some(_)) => false,
    }
}
