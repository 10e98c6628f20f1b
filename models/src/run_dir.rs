//! A training run's output folder and what it records about itself:
//! - a lock file (`.slmlp.lock`, created with `create_new`, holding the
//!   pid) so two runs never share a folder; a lock left by a process that
//!   is gone (Linux: no `/proc/<pid>`) is taken over with a warning;
//! - the refusal to start a new run in a non-empty folder without
//!   `--overwrite`, and to `--resume` a run whose recorded options differ
//!   without `--resume-force`;
//! - `args.json`: the command with every resolved option (defaults
//!   included), the version and, when the build recorded it
//!   (`SLMLP_COMMIT`, set by `models/build.rs`), the commit; results
//!   files add the machine and the time ([`provenance`]);
//! - the resource figures `metrics.jsonl` records: host peak RSS
//!   (`VmHWM` of `/proc/self/status`, Linux only) and the CUDA caching
//!   allocator's peak.

use engine::{Device, Error, Result};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The lock file's name.
pub const LOCK: &str = ".slmlp.lock";
/// The configuration snapshot's name.
pub const ARGS: &str = "args.json";
/// What a run writes; `--overwrite` removes these (other files stay).
const RUN_FILES: [&str; 4] = [
    "metrics.jsonl",
    "checkpoint.safetensors",
    "model.safetensors",
    ARGS,
];
/// Options a resumed run may change: they do not alter what is computed
/// (`epochs`: the task's own settings say whether a longer schedule may
/// continue, e.g. detection's step schedule can, a cosine one cannot).
const FREE_ON_RESUME: [&str; 13] = [
    "augment_on",
    "cuda_graph",
    "epochs",
    "resume",
    "resume_force",
    "overwrite",
    "quiet",
    "log_every",
    "checkpoint_every",
    "workers",
    "threads",
    "device",
    "out",
];

static COMMAND: OnceLock<Value> = OnceLock::new();

/// Records the process's command (`{"name": "detect train", "options":
/// {"lr": "0.02", ...}}`) for `args.json`; the CLI calls it once.
pub fn set_command(command: Value) {
    let _ = COMMAND.set(command);
}

/// What `args.json` holds: the command and its options (null when the run
/// was started from the library, not the CLI), the command line, the
/// version and the commit when known.
pub fn snapshot() -> Value {
    json!({
        "command": COMMAND.get().cloned().unwrap_or(Value::Null),
        "argv": std::env::args().collect::<Vec<_>>(),
        "version": env!("CARGO_PKG_VERSION"),
        "commit": option_env!("SLMLP_COMMIT"),
    })
}

/// Where a results file came from: [`snapshot`] (command line, version,
/// commit) plus the machine (host name, CPU model and logical cores, OS and
/// architecture) and the UTC time it was written.
pub fn provenance() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string());
    let mut v = snapshot();
    v["machine"] = json!({
        "host": host,
        "cpu": cpu,
        "logical_cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    });
    v["utc"] = utc_now().into();
    v
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    utc(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()))
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// How a run may treat an existing output folder.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FolderPolicy {
    /// Continue the run in the folder (its checkpoint must exist).
    pub resume: bool,
    /// Resume even when the recorded options differ.
    pub resume_force: bool,
    /// Start a new run in a non-empty folder, replacing its run files.
    pub overwrite: bool,
}

/// Held while a run uses its folder; removes the lock file when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Writes `args.json` beside the lock: at the start of a new run, and
    /// once a resumed run has loaded its checkpoint (so a refused resume
    /// leaves the record as it was).
    pub fn write_args(&self) -> Result<()> {
        let path = self.path.with_file_name(ARGS);
        let text = serde_json::to_string_pretty(&snapshot()).unwrap_or_default();
        crate::report::write_text(&path, &(text + "\n"))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Prepares `dir` for a run under `policy`: creates and locks it, refuses
/// what the policy does not allow (the message names the difference or the
/// flag to pass), and for a new run clears the old run files under
/// `--overwrite` and writes `args.json` (a resumed run writes it with
/// [`RunLock::write_args`] once its checkpoint is loaded). The lock lasts
/// as long as the returned value.
pub fn open(dir: &Path, policy: FolderPolicy) -> Result<RunLock> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let lock = lock(dir)?;
    if policy.resume {
        let checkpoint = dir.join("checkpoint.safetensors");
        if !checkpoint.is_file() {
            return Err(Error::arg(
                "--resume",
                format!("{} does not exist; nothing to resume", checkpoint.display()),
            ));
        }
        if let Some(diff) = recorded_difference(&dir.join(ARGS), &snapshot())? {
            if !policy.resume_force {
                return Err(Error::arg(
                    "--resume",
                    format!(
                        "{} was written by a run with {diff}; resume with the same settings, or pass --resume-force",
                        checkpoint.display()
                    ),
                ));
            }
            eprintln!("warning: --resume-force: resuming although {diff}");
        }
        return Ok(lock);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut others: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != LOCK)
        .collect();
    others.sort();
    if !others.is_empty() && !policy.overwrite {
        return Err(Error::arg(
            "--out",
            format!(
                "{} is not empty ({} entries, e.g. {}): pass --overwrite to replace its run, --resume to continue it, or choose another folder",
                dir.display(),
                others.len(),
                others[0]
            ),
        ));
    }
    for name in RUN_FILES {
        let p = dir.join(name);
        if p.is_file() {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    lock.write_args()?;
    Ok(lock)
}

/// Takes `dir`'s lock: refuses while a live process holds it, takes over
/// one whose process is gone.
fn lock(dir: &Path) -> Result<RunLock> {
    let path = dir.join(LOCK);
    let in_use = |msg: String| Error::arg("--out", format!("{} {msg}", dir.display()));
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                write!(f, "{}", std::process::id()).map_err(|e| Error::io(&path, e))?;
                return Ok(RunLock { path });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let pid = text.trim().parse::<u32>().ok();
                match pid.map(|p| (p, alive(p))) {
                    Some((p, Some(false))) => {
                        eprintln!(
                            "warning: taking over {}: process {p} that made it is gone",
                            path.display()
                        );
                        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                    }
                    Some((p, Some(true))) => {
                        return Err(in_use(format!(
                            "is in use by process {p} (lock file {}); wait for it to end or choose another folder",
                            path.display()
                        )))
                    }
                    _ => {
                        return Err(in_use(format!(
                            "is locked by {} ({}); if no run uses the folder, remove that file",
                            path.display(),
                            pid.map_or("no readable pid".into(), |p| format!("pid {p}, not checkable here"))
                        )))
                    }
                }
            }
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Err(in_use(format!(
        "lock {} was taken by another run meanwhile",
        path.display()
    )))
}

/// Whether process `pid` runs (`None`: cannot tell on this system).
fn alive(pid: u32) -> Option<bool> {
    cfg!(target_os = "linux").then(|| Path::new(&format!("/proc/{pid}")).exists())
}

/// The first differences (at most 3) between the options recorded in
/// `args_path` and `now`'s, those a resume may change left out; `None` when
/// they agree or either run has no recorded command.
fn recorded_difference(args_path: &Path, now: &Value) -> Result<Option<String>> {
    let text = match std::fs::read_to_string(args_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(args_path, e)),
    };
    let then: Value = serde_json::from_str(&text)
        .map_err(|e| Error::arg("--resume", format!("{}: {e}", args_path.display())))?;
    let (a, b) = (&then["command"], &now["command"]);
    if a.is_null() || b.is_null() {
        return Ok(None);
    }
    if a["name"] != b["name"] {
        return Ok(Some(format!(
            "command {} (this run: {})",
            a["name"], b["name"]
        )));
    }
    let empty = Map::new();
    let (a, b) = (
        a["options"].as_object().unwrap_or(&empty),
        b["options"].as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| !FREE_ON_RESUME.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
            format!(
                "--{} {} (this run: {})",
                k.replace('_', "-"),
                show(a.get(k)),
                show(b.get(k))
            )
        })
        .take(3)
        .collect();
    Ok((!diffs.is_empty()).then(|| diffs.join(", ")))
}

/// The host's peak resident set size in bytes (`VmHWM`); `None` where
/// `/proc/self/status` does not exist (not Linux).
pub fn host_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The CUDA caching allocator's peak allocated bytes on `device` (`None`
/// on the CPU).
pub fn gpu_peak(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(i) => engine::cuda::gpu(i)
            .ok()
            .map(|g| g.memory_stats().peak_allocated as u64),
        Device::Cpu => None,
    }
}

/// Adds the resource fields to a metrics record: `host_peak_rss_bytes`
/// and `gpu_peak_bytes` where known.
pub fn add_memory(record: &mut Value, device: Device) {
    if let Some(b) = host_peak_rss() {
        record["host_peak_rss_bytes"] = b.into();
    }
    if let Some(b) = gpu_peak(device) {
        record["gpu_peak_bytes"] = b.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("slmlp-run-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(utc(1_796_169_661), "2026-12-02T00:01:01Z");
        let p = provenance();
        assert!(p["machine"]["logical_cores"].as_u64().unwrap() >= 1);
        assert!(p["utc"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn lock_refuses_a_second_run_and_takes_over_a_dead_one() {
        let d = tmp("lock");
        let first = open(&d, FolderPolicy::default()).unwrap();
        assert!(d.join(ARGS).is_file());
        let e = lock(&d).unwrap_err().to_string();
        assert!(e.contains("in use by process"), "{e}");
        drop(first);
        assert!(!d.join(LOCK).exists());
        // a pid above the kernel's maximum is never alive
        std::fs::write(d.join(LOCK), "4194305").unwrap();
        let taken = lock(&d).unwrap();
        let pid = std::fs::read_to_string(d.join(LOCK)).unwrap();
        assert_eq!(pid, std::process::id().to_string());
        drop(taken);
        std::fs::write(d.join(LOCK), "garbage").unwrap();
        let e = lock(&d).unwrap_err().to_string();
        assert!(e.contains("remove that file"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn non_empty_folder_needs_overwrite_and_resume_a_checkpoint() {
        let d = tmp("policy");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("metrics.jsonl"), "{}\n").unwrap();
        std::fs::write(d.join("notes.txt"), "mine").unwrap();
        let e = open(&d, FolderPolicy::default()).unwrap_err().to_string();
        assert!(e.contains("not empty") && e.contains("--overwrite"), "{e}");
        let e = open(
            &d,
            FolderPolicy {
                resume: true,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nothing to resume"), "{e}");
        let policy = FolderPolicy {
            overwrite: true,
            ..Default::default()
        };
        drop(open(&d, policy).unwrap());
        assert!(!d.join("metrics.jsonl").exists());
        assert!(d.join("notes.txt").is_file() && d.join(ARGS).is_file());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn differences_name_the_option() {
        let d = tmp("diff");
        std::fs::create_dir_all(&d).unwrap();
        let args = d.join(ARGS);
        let rec = |lr: &str, quiet: bool| json!({"command": {"name": "pretrain", "options": {"lr": lr, "quiet": quiet, "data": "mnist"}}});
        std::fs::write(&args, rec("0.1", false).to_string()).unwrap();
        assert_eq!(recorded_difference(&args, &rec("0.1", true)).unwrap(), None);
        let diff = recorded_difference(&args, &rec("0.05", false))
            .unwrap()
            .unwrap();
        assert_eq!(diff, "--lr \"0.1\" (this run: \"0.05\")");
        assert_eq!(
            recorded_difference(&d.join("none.json"), &rec("1", false)).unwrap(),
            None
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(host_peak_rss().unwrap() > 1 << 20);
        } else {
            assert_eq!(host_peak_rss(), None);
        }
    }
}
