//! Output files (results, records, images): written whole under a
//! temporary name and renamed over the target, so neither a reader nor a
//! killed process (`kill -9`) ever leaves or sees half a file. (Not synced
//! to disk: the checkpoints are, `engine::checkpoint`; a synthetic
//! dataset's thousands of images need not be.)

use engine::{Error, Result};
use std::path::Path;

/// Writes `bytes` to `path` in one piece (see the module doc), into a
/// folder that exists.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let Some(name) = path.file_name() else {
        return Err(Error::arg(
            "write",
            format!("{}: not a file path", path.display()),
        ));
    };
    let tmp = path.with_file_name(format!(
        "{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// [`write_bytes`] of `text`, the folder created if missing.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write_bytes(path, text.as_bytes())
}

/// An 8-bit PNG of `pixels` (rows of `w` pixels of `color`), written as
/// [`write_bytes`] does; `op` names the caller in errors.
pub fn write_png(
    path: &Path,
    pixels: &[u8],
    (w, h): (usize, usize),
    color: png::ColorType,
    op: &'static str,
) -> Result<()> {
    let mut bytes = Vec::new();
    let encoded = (|| -> std::result::Result<(), png::EncodingError> {
        let mut enc = png::Encoder::new(&mut bytes, w as u32, h as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(pixels)?;
        writer.finish()
    })();
    encoded.map_err(|e| Error::arg(op, format!("{}: PNG encoding failed: {e}", path.display())))?;
    write_bytes(path, &bytes)
}

pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::arg("write_json", e.to_string()))?;
    write_text(path, &(text + "\n"))
}

/// The run record at `path` (a JSON object with a `settings` field), if
/// it exists and was written with `settings` (`--resume`'s check); `None`
/// means the run must be done. An unreadable record is an error naming it.
pub fn read_record(path: &Path, settings: &serde_json::Value) -> Result<Option<serde_json::Value>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path: path.display().to_string(),
        msg: format!("not a run record: {e}"),
    })?;
    Ok((&v["settings"] == settings).then_some(v))
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_replaced_whole_and_nothing_is_left_aside() {
        let tmp = testutil::TempDir::new("report");
        let dir = &tmp.0;
        let path = dir.join("sub").join("r.json");
        write_text(&path, "first\n").unwrap();
        write_text(&path, "second\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["r.json"]);

        // a folder that is not there is an error naming the file
        let missing = dir.join("none").join("x.png");
        let e = write_bytes(&missing, b"x").unwrap_err().to_string();
        assert!(e.contains("none"), "{e}");
        // a path that is a folder: the rename fails, the aside file goes
        let e = write_bytes(&dir.join("sub"), b"x").unwrap_err().to_string();
        assert!(e.contains("sub"), "{e}");
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);

        let gray = [0u8, 64, 128, 255, 1, 2];
        write_png(
            &dir.join("g.png"),
            &gray,
            (3, 2),
            png::ColorType::Grayscale,
            "t",
        )
        .unwrap();
        let img = image::open(dir.join("g.png")).unwrap().to_luma8();
        assert_eq!((img.width(), img.height()), (3, 2));
        assert_eq!(img.into_raw(), gray);
        let e = write_png(
            &dir.join("bad.png"),
            &gray,
            (4, 2),
            png::ColorType::Grayscale,
            "t",
        );
        assert!(e.unwrap_err().to_string().contains("PNG encoding failed"));
        assert!(!dir.join("bad.png").exists());
    }
}
