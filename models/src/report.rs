//! Result files: written whole to a temporary name, then renamed, so a
//! reader never sees half a file.

use engine::{Error, Result};
use std::path::Path;

pub fn write_text(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
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
