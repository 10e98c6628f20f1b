//! ImageNet-style folders: `root/<class>/**/<image>`, as torchvision's
//! `ImageFolder` reads them. Images are decoded on demand (JPEG or PNG, by
//! content, not by extension) and converted to 8-bit RGB.

use super::{Dataset, Image};
use engine::{Error, Result};
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
    /// bytewise (label `k` = `k`-th name); samples are the files under each
    /// class folder (recursively, following symlinks) whose extension is
    /// jpg/jpeg/png in any case, sorted by path within their class. Nothing
    /// is decoded here. A missing root, a root with no class folders, and a
    /// class folder with no image files are errors naming them.
    pub fn open(root: &Path) -> Result<ImageFolder> {
        let mut classes = Vec::new();
        for entry in read_dir_sorted(root)? {
            if entry.is_dir() {
                let name = entry.file_name().unwrap_or_default().to_string_lossy();
                classes.push(name.into_owned());
            }
        }
        if classes.is_empty() {
            return Err(Error::arg(
                "image folder",
                format!(
                    "{}: no class subdirectories (expected root/<class>/<image>)",
                    root.display()
                ),
            ));
        }
        let mut files = Vec::new();
        let mut labels = Vec::new();
        let mut empty = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let before = files.len();
            collect_images(&root.join(class), &mut files)?;
            if files.len() == before {
                empty.push(class.as_str());
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

/// Appends the image files under `dir` to `out`, depth first in sorted order.
fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in read_dir_sorted(dir)? {
        if path.is_dir() {
            collect_images(&path, out)?;
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

/// Decodes the JPEG/PNG at `path` to `channels` (1: gray, 3: RGB) channels;
/// `op` names the caller in the error.
pub(crate) fn decode_image(path: &Path, channels: usize, op: &'static str) -> Result<Image> {
    let decoded = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::arg(op, format!("{}: cannot decode: {e}", path.display())))?;
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
