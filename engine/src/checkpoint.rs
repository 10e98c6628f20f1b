//! safetensors checkpoints: model weights, pretrained backbones and exact
//! training resumes.
//!
//! Files are plain safetensors, readable by Python's `safetensors` (and so by
//! PyTorch); we read theirs. Reading goes through the `safetensors` crate's
//! parser and validator. Writing builds the same header ourselves (with the
//! crate's `TensorInfo` entries) for two reasons: the bytes are identical from
//! run to run (the crate's metadata map is a `HashMap`, so its key order is
//! random per process), and tensors stream to disk without a second copy of
//! the whole model in memory.
//!
//! Every failure is an `Error::Checkpoint { path, msg }` naming the file and
//! what is wrong with it; corrupt or hostile files give errors, never panics.
//! Like the rest of the engine, data are little-endian (the host's order).

use crate::nn::{Buffer, Param};
use crate::{CpuStorage, DType, Device, Error, Result, Storage, Tensor};
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorInfo};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// The contents of a checkpoint file. Maps are keyed by name, so iteration
/// order is sorted and the same for every load (safetensors itself keeps no
/// tensor order).
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

fn ckpt_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

// ---------------------------------------------------------------------------
// dtypes

fn to_st_dtype(d: DType) -> Dtype {
    match d {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::U8 => Dtype::U8,
    }
}

fn from_st_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::U8 => DType::U8,
        _ => return None,
    })
}

/// Writes the logical (row-major) contents; borrows contiguous data.
fn write_data(w: &mut impl Write, t: &Tensor) -> io::Result<()> {
    macro_rules! write_as {
        ($T:ty) => {{
            let d = t.data::<$T>().map_err(io::Error::other)?;
            w.write_all(bytemuck::cast_slice::<$T, u8>(&d))
        }};
    }
    match t.dtype() {
        DType::F64 => write_as!(f64),
        DType::F32 => write_as!(f32),
        DType::F16 => write_as!(half::f16),
        DType::BF16 => write_as!(half::bf16),
        DType::I64 => write_as!(i64),
        DType::U8 => write_as!(u8),
    }
}

// ---------------------------------------------------------------------------
// save

/// Writes `tensors` (any dtype, any layout: views are written as their
/// logical contents) and string `metadata` to `path`, atomically: the data go
/// to `<path>.tmp` in the same directory, which is fsynced and renamed over
/// `path`, and then the directory is fsynced. A crash or error leaves either
/// the old file or the new one, never a mix. Two writers saving the same path
/// at once would share the temporary name: don't.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut seen = BTreeSet::new();
    let mut dups = BTreeSet::new();
    for (name, _) in tensors {
        if name == "__metadata__" {
            return Err(ckpt_err(
                path,
                "`__metadata__` is reserved by safetensors and cannot name a tensor",
            ));
        }
        if !seen.insert(name.as_str()) {
            dups.insert(name.as_str());
        }
    }
    if !dups.is_empty() {
        return Err(ckpt_err(
            path,
            format!(
                "duplicate tensor names: {}",
                dups.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let cpu: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.as_str(), t.to_device(Device::Cpu)?)))
        .collect::<Result<_>>()
        .map_err(|e| ckpt_err(path, e.to_string()))?;

    // Wider elements first (then by name), as Python's safetensors does: with
    // the header padded to 8 bytes every tensor starts aligned to its dtype.
    let mut order: Vec<usize> = (0..cpu.len()).collect();
    order.sort_by_key(|&i| (Reverse(cpu[i].1.dtype().size_in_bytes()), cpu[i].0));

    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())));
        header.insert(
            "__metadata__".into(),
            serde_json::Value::Object(m.collect()),
        );
    }
    let mut offset = 0usize;
    for &i in &order {
        let (name, t) = &cpu[i];
        let n = t.numel() * t.dtype().size_in_bytes();
        let info = TensorInfo {
            dtype: to_st_dtype(t.dtype()),
            shape: t.dims().to_vec(),
            data_offsets: (offset, offset + n),
        };
        offset += n;
        let v = serde_json::to_value(&info)
            .map_err(|e| ckpt_err(path, format!("encoding header: {e}")))?;
        header.insert(name.to_string(), v);
    }
    let mut header =
        serde_json::to_vec(&header).map_err(|e| ckpt_err(path, format!("encoding header: {e}")))?;
    header.resize(header.len().next_multiple_of(8), b' ');

    write_atomic(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for &i in &order {
            write_data(w, &cpu[i].1)?;
        }
        Ok(())
    })
}

fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<()> {
    let Some(file_name) = path.file_name() else {
        return Err(ckpt_err(path, "not a file path"));
    };
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let file = File::create(&tmp).map_err(|e| {
        ckpt_err(
            path,
            format!("cannot create temporary file {}: {e}", tmp.display()),
        )
    })?;
    let written = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(ckpt_err(path, format!("writing {}: {e}", tmp.display())));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(ckpt_err(
            path,
            format!("cannot rename {} over it: {e}", tmp.display()),
        ));
    }
    // The rename is durable only once the directory entry is on disk.
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
            ckpt_err(
                path,
                format!("written, but cannot fsync directory {}: {e}", dir.display()),
            )
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// load

/// Reads a safetensors file (ours or Python's). Tensors of dtypes the engine
/// has no storage for (bool, i8, i32, fp8, ...) are an error, not a cast.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = fs::read(path).map_err(|e| ckpt_err(path, format!("cannot read: {e}")))?;
    // The parser adds the last data offset to the header size unchecked (a
    // panic in debug builds on hostile offsets), so offsets past the end of
    // the file are caught here first.
    if let Some(msg) = offsets_past_end(&bytes) {
        return Err(ckpt_err(path, msg));
    }
    let (n, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| ckpt_err(path, describe(&e, &bytes)))?;
    let data = &bytes[8 + n..];

    let mut unsupported = Vec::new();
    let mut tensors = BTreeMap::new();
    for (name, info) in meta.tensors() {
        let Some(dtype) = from_st_dtype(info.dtype) else {
            unsupported.push(format!("{name} ({:?})", info.dtype));
            continue;
        };
        // Strides multiply the non-zero dims; a zero dim lets the rest be
        // anything while the byte count stays 0.
        if info
            .shape
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_none()
        {
            return Err(ckpt_err(
                path,
                format!(
                    "corrupt header: tensor `{name}` has shape {:?}, too large",
                    info.shape
                ),
            ));
        }
        let (s, e) = info.data_offsets;
        let raw = data.get(s..e).ok_or_else(|| {
            ckpt_err(
                path,
                format!("corrupt header: tensor `{name}` offsets [{s}, {e}] are outside the data"),
            )
        })?;
        let storage = CpuStorage::from_bytes(dtype, raw).ok_or_else(|| {
            ckpt_err(
                path,
                format!(
                    "tensor `{name}`: {} bytes is not a whole number of {dtype}",
                    raw.len()
                ),
            )
        })?;
        let t = Tensor::from_storage(Storage::Cpu(storage), &info.shape)
            .map_err(|e| ckpt_err(path, format!("tensor `{name}`: {e}")))?;
        tensors.insert(name, t);
    }
    if !unsupported.is_empty() {
        unsupported.sort();
        return Err(ckpt_err(
            path,
            format!(
                "unsupported dtypes (the engine holds F64, F32, F16, BF16, I64, U8): {}",
                unsupported.join(", ")
            ),
        ));
    }
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    Ok(Checkpoint {
        tensors,
        metadata: metadata.unwrap_or_default(),
    })
}

/// What a parse failure means for this file, in the reader's terms.
fn describe(e: &SafeTensorError, bytes: &[u8]) -> String {
    let len = bytes.len();
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    match e {
        SafeTensorError::HeaderTooSmall => {
            format!("truncated: the file is {len} bytes, too short for the 8-byte header length")
        }
        SafeTensorError::HeaderTooLarge => {
            format!("corrupt header length {} (over the 100 MB safetensors limit)", n.unwrap_or(0))
        }
        SafeTensorError::InvalidHeaderLength => format!(
            "truncated or corrupt: the header is said to be {} bytes but only {} follow the length prefix",
            n.unwrap_or(0),
            len.saturating_sub(8)
        ),
        SafeTensorError::InvalidHeader(u) => format!("corrupt header: not UTF-8 ({u})"),
        SafeTensorError::InvalidHeaderDeserialization(j) => format!("corrupt header: invalid JSON ({j})"),
        SafeTensorError::MetadataIncompleteBuffer | SafeTensorError::TensorInvalidInfo => {
            diagnose(bytes).unwrap_or_else(|| format!("corrupt header: {e}"))
        }
        _ => format!("corrupt header: {e}"),
    }
}

/// What a checkpoint's header says, read without its data: every tensor's
/// shape by name, and the metadata.
#[derive(Clone, Debug, Default)]
pub struct Header {
    pub shapes: BTreeMap<String, Vec<usize>>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads only the header of a safetensors file (at most 100 MB, the
/// format's own limit), so that what it describes can be checked before
/// anything is allocated for it.
pub fn read_header(path: &Path) -> Result<Header> {
    const MAX_HEADER: u64 = 100_000_000;
    let mut f = File::open(path).map_err(|e| ckpt_err(path, format!("cannot read: {e}")))?;
    let mut len = [0u8; 8];
    io::Read::read_exact(&mut f, &mut len)
        .map_err(|e| ckpt_err(path, format!("cannot read the header length: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(ckpt_err(
            path,
            format!("corrupt header: its length {n} exceeds {MAX_HEADER} bytes"),
        ));
    }
    let mut json = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(&mut f, n), &mut json)
        .map_err(|e| ckpt_err(path, format!("cannot read the header: {e}")))?;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&json)
        .map_err(|e| ckpt_err(path, format!("corrupt header: {e}")))?;
    let metadata = match header.remove("__metadata__") {
        Some(m) => serde_json::from_value(m)
            .map_err(|e| ckpt_err(path, format!("corrupt header metadata: {e}")))?,
        None => BTreeMap::new(),
    };
    let shapes = header
        .into_iter()
        .map(|(name, v)| {
            let info: TensorInfo = serde_json::from_value(v)
                .map_err(|e| ckpt_err(path, format!("corrupt header: tensor `{name}`: {e}")))?;
            Ok((name, info.shape))
        })
        .collect::<Result<_>>()?;
    Ok(Header { shapes, metadata })
}

/// The header's length and tensor entries, if it parses; parse errors are
/// left to the safetensors parser to report.
fn header_entries(bytes: &[u8]) -> Option<(usize, Vec<(String, TensorInfo)>)> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    let entries = header.into_iter().filter(|(k, _)| k != "__metadata__");
    let infos = entries.map(|(k, v)| Some((k, serde_json::from_value::<TensorInfo>(v).ok()?)));
    Some((n, infos.collect::<Option<_>>()?))
}

fn offsets_past_end(bytes: &[u8]) -> Option<String> {
    let (n, infos) = header_entries(bytes)?;
    let actual = bytes.len().checked_sub(8 + n)?;
    let (name, info) = infos.iter().max_by_key(|(_, i)| i.data_offsets.1)?;
    let end = info.data_offsets.1;
    (end > actual).then(|| {
        format!("size mismatch between header and data (truncated?): tensor `{name}` ends at data byte {end}, the file holds {actual}")
    })
}

/// Finds the offending tensor or the size mismatch for errors where the
/// parser doesn't say which.
fn diagnose(bytes: &[u8]) -> Option<String> {
    let (n, infos) = header_entries(bytes)?;
    let mut declared = 0usize;
    for (name, info) in &infos {
        let (s, e) = info.data_offsets;
        let numel = info
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))?;
        let nbytes = numel.checked_mul(info.dtype.bitsize())? / 8;
        if e.checked_sub(s) != Some(nbytes) {
            return Some(format!(
                "corrupt header: tensor `{name}` ({:?} {:?}) needs {nbytes} bytes but its data offsets [{s}, {e}] disagree",
                info.dtype, info.shape
            ));
        }
        declared = declared.max(e);
    }
    let actual = bytes.len().checked_sub(8 + n)?;
    let why = if actual < declared {
        "truncated"
    } else {
        "trailing bytes"
    };
    Some(format!(
        "size mismatch between header and data ({why}): the header describes {declared} data bytes, the file holds {actual}"
    ))
}

// ---------------------------------------------------------------------------
// model state

/// The model's tensors under their own names (torchvision style:
/// `layer1.0.conv1.weight`, `bn1.running_mean`), params then buffers.
pub fn state_tensors(params: &[Param], buffers: &[Buffer]) -> Vec<(String, Tensor)> {
    let p = params
        .iter()
        .map(|p| (p.name().to_string(), p.get().detach()));
    p.chain(buffers.iter().map(|b| (b.name().to_string(), b.get())))
        .collect()
}

/// How `load_into_with` matches checkpoint names to the model's.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Consider only checkpoint tensors named `<prefix>.<rest>`, as `<rest>`;
    /// the others are ignored (neither loaded nor unexpected). A trailing dot
    /// is implied: `"encoder"` selects `encoder.conv1.weight`, not `encoder2.x`.
    pub prefix: Option<String>,
    /// Model tensors absent from the checkpoint keep their values.
    pub allow_missing: bool,
    /// Checkpoint tensors the model doesn't have are skipped.
    pub allow_unexpected: bool,
}

impl LoadOptions {
    /// Every model tensor, and nothing else, must be in the checkpoint.
    pub fn strict() -> LoadOptions {
        LoadOptions::default()
    }
    /// An encoder out of a pretraining checkpoint that also holds a projector
    /// and a classifier: all model tensors required, extra ones skipped.
    pub fn backbone() -> LoadOptions {
        LoadOptions {
            allow_unexpected: true,
            ..LoadOptions::default()
        }
    }
}

/// What `load_into_with` did; names are the model's, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// Model tensors the checkpoint lacked (kept their values).
    pub missing: Vec<String>,
    /// Checkpoint tensors (after the prefix) the model doesn't have.
    pub unexpected: Vec<String>,
}

/// Strict load: every model tensor must be in the checkpoint with the same
/// shape and dtype, and the checkpoint (within `prefix_filter`, see
/// `LoadOptions::prefix`) must have nothing else. Nothing is modified unless
/// everything matches; the error lists every missing, unexpected and
/// mismatched tensor.
pub fn load_into(
    ckpt: &Checkpoint,
    params: &[Param],
    buffers: &[Buffer],
    prefix_filter: Option<&str>,
) -> Result<()> {
    let opts = LoadOptions {
        prefix: prefix_filter.map(str::to_string),
        ..LoadOptions::strict()
    };
    load_into_with(ckpt, params, buffers, &opts).map(|_| ())
}

/// `load_into` with the checks relaxed as `opts` says. Shape and dtype
/// mismatches are always errors: dtypes are not cast, because a silent
/// f16 -> f32 (or back) on load hides a wrong checkpoint or a lossy round
/// trip; cast the checkpoint's tensors explicitly if that is what you mean.
/// Errors are `Error::InvalidArgument` ("load_into"); `load_model` and
/// `load_training` re-raise them with the file's path.
pub fn load_into_with(
    ckpt: &Checkpoint,
    params: &[Param],
    buffers: &[Buffer],
    opts: &LoadOptions,
) -> Result<LoadReport> {
    let prefix = match opts.prefix.as_deref() {
        Some(p) if !p.is_empty() && !p.ends_with('.') => format!("{p}."),
        Some(p) => p.to_string(),
        None => String::new(),
    };
    let selected: BTreeMap<&str, &Tensor> = ckpt
        .tensors
        .iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix.as_str()).map(|k| (k, t)))
        .collect();

    enum Target<'a> {
        P(&'a Param),
        B(&'a Buffer),
    }
    let mut model: BTreeMap<&str, (Target, Tensor)> = BTreeMap::new();
    let mut dups = BTreeSet::new();
    let entries = params.iter().map(|p| (p.name(), Target::P(p), p.get()));
    for (name, target, current) in
        entries.chain(buffers.iter().map(|b| (b.name(), Target::B(b), b.get())))
    {
        if model.insert(name, (target, current)).is_some() {
            dups.insert(name);
        }
    }
    if !dups.is_empty() {
        let d: Vec<&str> = dups.into_iter().collect();
        return Err(Error::arg(
            "load_into",
            format!("the model has duplicate tensor names: {}", d.join(", ")),
        ));
    }

    let mut report = LoadReport::default();
    let mut mismatched = Vec::new();
    let mut updates = Vec::new();
    for (name, (target, current)) in &model {
        let Some(&found) = selected.get(name) else {
            report.missing.push(name.to_string());
            continue;
        };
        if found.dims() != current.dims() || found.dtype() != current.dtype() {
            mismatched.push(format!(
                "{prefix}{name}: model has {:?} {}, checkpoint has {:?} {}",
                current.dims(),
                current.dtype(),
                found.dims(),
                found.dtype()
            ));
            continue;
        }
        updates.push((target, found.to_device(current.device())?));
        report.loaded.push(name.to_string());
    }
    report.unexpected = selected
        .keys()
        .filter(|k| !model.contains_key(*k))
        .map(|k| k.to_string())
        .collect();

    let missing_bad = !opts.allow_missing && !report.missing.is_empty();
    let unexpected_bad = !opts.allow_unexpected && !report.unexpected.is_empty();
    if missing_bad || unexpected_bad || !mismatched.is_empty() {
        let mut msg = String::from("checkpoint does not match the model");
        if !prefix.is_empty() {
            msg += &format!(" (checkpoint names under prefix `{prefix}`)");
        }
        if missing_bad {
            msg += &format!(
                "\n  {} missing (in the model, not in the checkpoint): {}",
                report.missing.len(),
                report.missing.join(", ")
            );
        }
        if unexpected_bad {
            let u: Vec<String> = report
                .unexpected
                .iter()
                .map(|k| format!("{prefix}{k}"))
                .collect();
            msg += &format!(
                "\n  {} unexpected (in the checkpoint, not in the model): {}",
                u.len(),
                u.join(", ")
            );
        }
        if !mismatched.is_empty() {
            msg += &format!(
                "\n  {} mismatched shape/dtype:\n    {}",
                mismatched.len(),
                mismatched.join("\n    ")
            );
        }
        return Err(Error::arg("load_into", msg));
    }
    for (target, value) in updates {
        match target {
            Target::P(p) => p.set(value)?,
            Target::B(b) => b.set(value)?,
        }
    }
    Ok(report)
}

/// Saves the model's params and buffers (no metadata beyond `metadata`).
pub fn save_model(
    path: &Path,
    params: &[Param],
    buffers: &[Buffer],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    save(path, &state_tensors(params, buffers), metadata)
}

/// `load` then `load_into_with`, errors naming the file.
pub fn load_model(
    path: &Path,
    params: &[Param],
    buffers: &[Buffer],
    opts: &LoadOptions,
) -> Result<LoadReport> {
    let ckpt = load(path)?;
    load_into_with(&ckpt, params, buffers, opts).map_err(|e| with_path(path, e))
}

fn with_path(path: &Path, e: Error) -> Error {
    match e {
        Error::InvalidArgument { msg, .. } => ckpt_err(path, msg),
        e @ Error::Checkpoint { .. } => e,
        e => ckpt_err(path, e.to_string()),
    }
}

// ---------------------------------------------------------------------------
// training state

/// The `format` metadata value of training checkpoints.
pub const TRAIN_FORMAT: &str = "slmlp-train-v1";
/// Optimizer state tensors are stored under this prefix.
pub const OPTIM_PREFIX: &str = "optim.";

/// Everything beyond tensors that an exact resume needs. Stored in the
/// safetensors metadata: `format`, `step` and `rng` (four decimal u64s,
/// comma-separated), and each `extra` entry as `extra.<key>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrainState {
    pub step: u64,
    pub rng: [u64; 4],
    pub extra: BTreeMap<String, String>,
}

/// One file for an exact resume: model params and buffers under their names,
/// optimizer state (e.g. `momentum.<param>`) under `optim.`, and `state` in
/// the metadata. Model names starting with `optim.` are refused so the two
/// namespaces cannot collide.
pub fn save_training(
    path: &Path,
    params: &[Param],
    buffers: &[Buffer],
    optim_state: &[(String, Tensor)],
    state: &TrainState,
) -> Result<()> {
    let mut tensors = state_tensors(params, buffers);
    if let Some((n, _)) = tensors.iter().find(|(n, _)| n.starts_with(OPTIM_PREFIX)) {
        return Err(ckpt_err(
            path,
            format!(
                "model tensor `{n}` uses the `{OPTIM_PREFIX}` prefix reserved for optimizer state"
            ),
        ));
    }
    tensors.extend(
        optim_state
            .iter()
            .map(|(n, t)| (format!("{OPTIM_PREFIX}{n}"), t.detach())),
    );
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), TRAIN_FORMAT.to_string());
    meta.insert("step".to_string(), state.step.to_string());
    meta.insert(
        "rng".to_string(),
        state.rng.map(|x| x.to_string()).join(","),
    );
    meta.extend(
        state
            .extra
            .iter()
            .map(|(k, v)| (format!("extra.{k}"), v.clone())),
    );
    save(path, &tensors, &meta)
}

/// Reads a `save_training` file: loads the model strictly (validated first;
/// nothing changes on error) and returns the optimizer state (names without
/// `optim.`, sorted) and the training state.
pub fn load_training(
    path: &Path,
    params: &[Param],
    buffers: &[Buffer],
) -> Result<(Vec<(String, Tensor)>, TrainState)> {
    let ckpt = load(path)?;
    let state = parse_train_state(&ckpt.metadata).map_err(|m| ckpt_err(path, m))?;
    let mut model = Checkpoint {
        tensors: BTreeMap::new(),
        metadata: BTreeMap::new(),
    };
    let mut optim = Vec::new();
    for (name, t) in ckpt.tensors {
        match name.strip_prefix(OPTIM_PREFIX) {
            Some(n) => optim.push((n.to_string(), t)),
            None => {
                model.tensors.insert(name, t);
            }
        }
    }
    load_into(&model, params, buffers, None).map_err(|e| with_path(path, e))?;
    Ok((optim, state))
}

fn parse_train_state(meta: &BTreeMap<String, String>) -> std::result::Result<TrainState, String> {
    match meta.get("format").map(String::as_str) {
        Some(TRAIN_FORMAT) => {}
        Some(f) => return Err(format!("training checkpoint format `{f}` is not supported (this build reads `{TRAIN_FORMAT}`)")),
        None => {
            return Err(format!(
                "not a training checkpoint: no `format` metadata (expected `{TRAIN_FORMAT}`; a model-only file loads with `load_model`)"
            ))
        }
    }
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| format!("training checkpoint has no `{k}` metadata"))
    };
    let step = get("step")?;
    let step = step
        .parse::<u64>()
        .map_err(|_| format!("bad `step` metadata {step:?}: expected a decimal u64"))?;
    let rng_s = get("rng")?;
    let words: Vec<u64> = rng_s
        .split(',')
        .map(|w| w.parse::<u64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            format!("bad `rng` metadata {rng_s:?}: expected four comma-separated decimal u64s")
        })?;
    let rng: [u64; 4] = words.try_into().map_err(|_| {
        format!("bad `rng` metadata {rng_s:?}: expected four comma-separated decimal u64s")
    })?;
    let extra = meta
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("extra.").map(|k| (k.to_string(), v.clone())))
        .collect();
    Ok(TrainState { step, rng, extra })
}
