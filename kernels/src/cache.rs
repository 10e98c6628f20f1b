//! On-disk CUBIN cache: one file per (kernel, arch, key), written atomically.
//!
//! The key (compile::cache_key) is a SHA-256 of the kernel's source, the
//! shared headers, the compile options, the arch and NVRTC's version, so any
//! change to what would be compiled misses. A file holds the key again, the
//! NVRTC log (its ptxas figures stay available on a hit) and the CUBIN; a
//! file that is truncated, foreign or for another key reads as a miss and is
//! overwritten by the next put. Writers go through a temporary file + fsync +
//! rename, so concurrent processes never see a half-written entry.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8; 8] = b"SLMLPKC1";

/// Where cached CUBINs live.
#[derive(Debug, Clone)]
pub struct KernelCache {
    dir: PathBuf,
}

/// What a cache file holds besides its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub cubin: Vec<u8>,
    pub log: String,
}

impl KernelCache {
    pub fn new(dir: impl Into<PathBuf>) -> KernelCache {
        KernelCache { dir: dir.into() }
    }

    /// `$SLMLP_KERNEL_CACHE`, else `$XDG_CACHE_HOME/slmlp/kernels`, else
    /// `$HOME/.cache/slmlp/kernels`; None when none of them is set.
    pub fn default_dir() -> Option<PathBuf> {
        let var = |n: &str| {
            std::env::var_os(n)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("SLMLP_KERNEL_CACHE")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("slmlp/kernels")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/slmlp/kernels")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of one entry: readable names, the key's prefix to tell
    /// versions apart (the full key is checked inside).
    pub fn path(&self, kernel: &str, arch: u32, key: &str) -> PathBuf {
        let short = &key[..key.len().min(32)];
        self.dir.join(format!("{kernel}-sm{arch}-{short}.cubin"))
    }

    /// The entry for `key`, or None (absent, truncated, or another key's).
    pub fn get(&self, kernel: &str, arch: u32, key: &str) -> Result<Option<CacheEntry>> {
        let path = self.path(kernel, arch, key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Cache {
                    path,
                    what: "reading",
                    source: e,
                })
            }
        };
        Ok(decode(&bytes, key))
    }

    pub fn put(&self, kernel: &str, arch: u32, key: &str, entry: &CacheEntry) -> Result<PathBuf> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = self.path(kernel, arch, key);
        let io = |what: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Cache {
                path: p,
                what,
                source,
            }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("creating the folder", &self.dir))?;
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&encode(key, entry))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("writing", &path)(e));
        }
        Ok(path)
    }
}

fn encode(key: &str, e: &CacheEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 8 + key.len() + 16 + e.log.len() + e.cubin.len());
    out.extend_from_slice(MAGIC);
    for field in [key.as_bytes(), e.log.as_bytes(), &e.cubin] {
        out.extend_from_slice(&(field.len() as u64).to_le_bytes());
        out.extend_from_slice(field);
    }
    out
}

fn decode(bytes: &[u8], key: &str) -> Option<CacheEntry> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let mut fields = Vec::with_capacity(3);
    let mut rest = rest;
    for _ in 0..3 {
        let (len, r) = rest.split_first_chunk::<8>()?;
        let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
        if r.len() < len {
            return None;
        }
        fields.push(&r[..len]);
        rest = &r[len..];
    }
    if !rest.is_empty() || fields[0] != key.as_bytes() {
        return None;
    }
    Some(CacheEntry {
        log: String::from_utf8(fields[1].to_vec()).ok()?,
        cubin: fields[2].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "slmlp-kcache-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn entry() -> CacheEntry {
        CacheEntry {
            cubin: vec![0x7f, b'E', b'L', b'F', 1, 2, 3],
            log: "ptxas info    : Used 8 registers".into(),
        }
    }

    #[test]
    fn miss_then_hit() {
        let dir = temp_dir("hit");
        let c = KernelCache::new(&dir);
        let key = "a".repeat(64);
        assert_eq!(c.get("k", 90, &key).unwrap(), None);
        c.put("k", 90, &key, &entry()).unwrap();
        assert_eq!(c.get("k", 90, &key).unwrap(), Some(entry()));
        // other key, other arch: misses
        assert_eq!(c.get("k", 90, &"b".repeat(64)).unwrap(), None);
        assert_eq!(c.get("k", 80, &key).unwrap(), None);
        // no temporary files left behind
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].ends_with(".cubin"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn same_prefix_other_key_is_a_miss() {
        // Keys that share the 32 characters in the file name: the full key
        // inside the file decides.
        let dir = temp_dir("prefix");
        let c = KernelCache::new(&dir);
        let k1 = format!("{}{}", "c".repeat(32), "1".repeat(32));
        let k2 = format!("{}{}", "c".repeat(32), "2".repeat(32));
        assert_eq!(c.path("k", 90, &k1), c.path("k", 90, &k2));
        c.put("k", 90, &k1, &entry()).unwrap();
        assert_eq!(c.get("k", 90, &k2).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_or_truncated_files_are_misses_and_get_replaced() {
        let dir = temp_dir("corrupt");
        let c = KernelCache::new(&dir);
        let key = "d".repeat(64);
        c.put("k", 90, &key, &entry()).unwrap();
        let p = c.path("k", 90, &key);
        let full = std::fs::read(&p).unwrap();
        for cut in [0, 4, 8, 20, full.len() - 1] {
            std::fs::write(&p, &full[..cut]).unwrap();
            assert_eq!(c.get("k", 90, &key).unwrap(), None, "cut at {cut}");
        }
        let mut extra = full.clone();
        extra.push(0);
        std::fs::write(&p, &extra).unwrap();
        assert_eq!(c.get("k", 90, &key).unwrap(), None, "trailing byte");
        c.put("k", 90, &key, &entry()).unwrap();
        assert_eq!(c.get("k", 90, &key).unwrap(), Some(entry()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_folder_is_a_clear_error() {
        let dir = temp_dir("unwritable");
        std::fs::write(&dir, b"a file, not a folder").unwrap();
        let c = KernelCache::new(dir.join("sub"));
        let err = c.put("k", 90, &"e".repeat(64), &entry()).unwrap_err();
        assert!(err.to_string().contains("kernel cache"), "{err}");
        std::fs::remove_file(&dir).unwrap();
    }
}
