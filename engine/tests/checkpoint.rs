//! safetensors checkpoints: bit-exact round trips, atomic writes, corrupt
//! files (errors, never panics), strict model loading and training resumes.

use engine::checkpoint::{
    load, load_into, load_into_with, load_model, load_training, save, save_model, save_training,
    state_tensors, Checkpoint, LoadOptions, TrainState,
};
use engine::nn::{Buffer, Param};
use engine::{DType, Rng, Tensor};
use half::{bf16, f16};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// A fresh scratch directory per test, removed when dropped.
struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("slmlp-ckpt-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn named(pairs: Vec<(&str, Tensor)>) -> Vec<(String, Tensor)> {
    pairs.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
}

/// Bytes of the logical contents, for bit-exact comparisons of any dtype.
fn bits(t: &Tensor) -> Vec<u8> {
    match t.dtype() {
        DType::F64 => t
            .to_vec::<f64>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect(),
        DType::F32 => t
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec::<f16>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec::<bf16>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect(),
        DType::I64 => t
            .to_vec::<i64>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::U8 => t.to_vec::<u8>().unwrap(),
    }
}

fn assert_same(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: dims");
    assert_eq!(a.dtype(), b.dtype(), "{what}: dtype");
    assert_eq!(bits(a), bits(b), "{what}: bits");
}

fn err_string<T: std::fmt::Debug>(r: engine::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

fn every_dtype() -> Vec<(String, Tensor)> {
    let f32_bits: Vec<u32> = vec![
        0x7fc0_0001, // quiet NaN with a payload
        0x7f80_0001, // signalling NaN
        0xffff_ffff, // negative NaN, full payload
        0x7f80_0000, // inf
        0xff80_0000, // -inf
        0x8000_0000, // -0.0
        0x0000_0001, // smallest subnormal
        0x3f80_0000,
    ];
    let f32s: Vec<f32> = f32_bits.iter().map(|&b| f32::from_bits(b)).collect();
    let f64s = vec![
        f64::from_bits(0x7ff8_0000_0000_0123),
        f64::NEG_INFINITY,
        -0.0,
        f64::MIN_POSITIVE / 3.0,
        1e300,
        -2.5,
    ];
    let f16s: Vec<f16> = [0x7e01u16, 0xfc00, 0x8000, 0x0001, 0x3c00, 0x7bff]
        .iter()
        .map(|&b| f16::from_bits(b))
        .collect();
    let bf16s: Vec<bf16> = [0x7fc1u16, 0xff80, 0x8000, 0x0001, 0x3f80, 0x7f7f]
        .iter()
        .map(|&b| bf16::from_bits(b))
        .collect();
    named(vec![
        ("a.f32", Tensor::from_vec(f32s, &[2, 4]).unwrap()),
        ("b.f64", Tensor::from_vec(f64s, &[3, 2]).unwrap()),
        ("c.f16", Tensor::from_vec(f16s, &[6]).unwrap()),
        ("d.bf16", Tensor::from_vec(bf16s, &[2, 1, 3]).unwrap()),
        (
            "e.i64",
            Tensor::from_vec(vec![i64::MIN, -1, 0, 1, i64::MAX], &[5]).unwrap(),
        ),
        (
            "f.u8",
            Tensor::from_vec((0..=255u8).collect(), &[16, 16]).unwrap(),
        ),
        ("g.scalar", Tensor::scalar(7i64)),
        ("h.empty", Tensor::zeros(&[0, 3], DType::F32)),
    ])
}

#[test]
fn every_dtype_round_trips_bit_exactly() {
    let dir = TempDir::new("dtypes");
    let path = dir.path("all.safetensors");
    let tensors = every_dtype();
    let m = meta(&[("op", "test"), ("note", "ünïcode ok")]);
    save(&path, &tensors, &m).unwrap();
    let ck = load(&path).unwrap();
    assert_eq!(ck.metadata, m);
    assert_eq!(ck.tensors.len(), tensors.len());
    for (name, t) in &tensors {
        assert_same(&ck.tensors[name], t, name);
    }
    // A standard reader agrees, and every tensor starts aligned to its dtype.
    let bytes = fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(header_end % 8, 0);
    for (name, t) in &tensors {
        let v = st.tensor(name).unwrap();
        assert_eq!(v.shape(), t.dims());
        assert_eq!(v.data(), &bits(t)[..], "{name}");
        let start = v.data().as_ptr() as usize - bytes.as_ptr() as usize;
        assert_eq!(
            (start - header_end) % t.dtype().size_in_bytes(),
            0,
            "{name} alignment"
        );
    }
    // Deterministic bytes: saving the same thing again writes the same file.
    let again = dir.path("again.safetensors");
    save(&again, &tensors, &m).unwrap();
    assert_eq!(fs::read(&again).unwrap(), bytes);
    // No metadata at all is fine too.
    save(&again, &tensors[..1], &BTreeMap::new()).unwrap();
    assert!(load(&again).unwrap().metadata.is_empty());
}

#[test]
fn non_contiguous_tensors_are_saved_as_their_logical_contents() {
    let dir = TempDir::new("views");
    let path = dir.path("v.safetensors");
    let x = Tensor::from_vec((0..60).map(|i| i as f32 * 0.5 - 3.0).collect(), &[3, 4, 5]).unwrap();
    let p = x.permute(&[2, 0, 1]).unwrap();
    let n = x.narrow(2, 1, 3).unwrap();
    let e = Tensor::from_vec(vec![1i64, 2, 3], &[3, 1])
        .unwrap()
        .expand(&[3, 4])
        .unwrap();
    assert!(!p.is_contiguous() && !n.is_contiguous());
    save(
        &path,
        &named(vec![("p", p.clone()), ("n", n.clone()), ("e", e.clone())]),
        &BTreeMap::new(),
    )
    .unwrap();
    let ck = load(&path).unwrap();
    for (name, t) in [("p", &p), ("n", &n), ("e", &e)] {
        let got = &ck.tensors[name];
        assert!(got.is_contiguous());
        assert_same(got, t, name);
    }
    assert_eq!(
        ck.tensors["p"].to_vec::<f32>().unwrap()[..3],
        [-3.0, -0.5, 2.0]
    );
}

#[test]
fn writes_are_atomic() {
    let dir = TempDir::new("atomic");
    let path = dir.path("m.safetensors");
    let tmp = dir.path("m.safetensors.tmp");
    let old = named(vec![(
        "w",
        Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap(),
    )]);
    let new = named(vec![(
        "w",
        Tensor::from_vec(vec![9.0f32, 9.0, 9.0], &[3]).unwrap(),
    )]);
    save(&path, &old, &BTreeMap::new()).unwrap();
    assert!(!tmp.exists(), "no temporary file left after success");
    // Overwriting replaces the file.
    save(&path, &new, &BTreeMap::new()).unwrap();
    assert_same(&load(&path).unwrap().tensors["w"], &new[0].1, "overwrite");
    save(&path, &old, &BTreeMap::new()).unwrap();

    // The temporary path can't be created: error naming the file, old file intact.
    fs::create_dir(&tmp).unwrap();
    let e = err_string(save(&path, &new, &BTreeMap::new()));
    assert!(
        e.contains(&path.display().to_string()) && e.contains("temporary"),
        "{e}"
    );
    assert_same(
        &load(&path).unwrap().tensors["w"],
        &old[0].1,
        "old file intact",
    );
    fs::remove_dir(&tmp).unwrap();

    // The target is a directory: the rename fails, the temporary file is removed.
    let d = dir.path("adir");
    fs::create_dir(&d).unwrap();
    let e = err_string(save(&d, &new, &BTreeMap::new()));
    assert!(e.contains("adir"), "{e}");
    assert!(!dir.path("adir.tmp").exists());

    // Missing directory.
    let missing = dir.path("no/such/dir/m.safetensors");
    let e = err_string(save(&missing, &new, &BTreeMap::new()));
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert!(!missing.exists());
}

#[test]
fn bad_names_are_refused() {
    let dir = TempDir::new("names");
    let path = dir.path("m.safetensors");
    let t = Tensor::zeros(&[2], DType::F32);
    let e = err_string(save(
        &path,
        &named(vec![("a", t.clone()), ("b", t.clone()), ("a", t.clone())]),
        &BTreeMap::new(),
    ));
    assert!(e.contains("duplicate") && e.contains('a'), "{e}");
    assert!(save(&path, &named(vec![("__metadata__", t)]), &BTreeMap::new()).is_err());
    assert!(!path.exists());
}

fn small_file(dir: &TempDir) -> (PathBuf, Vec<u8>) {
    let path = dir.path("small.safetensors");
    let t = named(vec![
        (
            "w",
            Tensor::from_vec(vec![1.0f32, -2.0, 3.5], &[3]).unwrap(),
        ),
        ("i", Tensor::from_vec(vec![4i64, 5], &[2]).unwrap()),
        (
            "b",
            Tensor::from_vec(vec![bf16::from_f32(1.5); 3], &[3]).unwrap(),
        ),
    ]);
    save(&path, &t, &meta(&[("k", "v")])).unwrap();
    let bytes = fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn truncated_files_are_errors_naming_the_path() {
    let dir = TempDir::new("trunc");
    let (path, bytes) = small_file(&dir);
    let cut_path = dir.path("cut.safetensors");
    for cut in 0..bytes.len() {
        fs::write(&cut_path, &bytes[..cut]).unwrap();
        let e = err_string(load(&cut_path));
        assert!(
            e.contains(&cut_path.display().to_string()),
            "cut at {cut}: {e}"
        );
    }
    // Cutting inside the data names the size mismatch.
    fs::write(&cut_path, &bytes[..bytes.len() - 3]).unwrap();
    let e = err_string(load(&cut_path));
    assert!(
        e.contains("truncated") && e.contains("size mismatch"),
        "{e}"
    );
    fs::write(&cut_path, &bytes[..5]).unwrap();
    assert!(err_string(load(&cut_path)).contains("truncated"));
    assert!(load(&path).is_ok());
}

/// A file with a hand-written header (padded) followed by `data`.
fn raw_file(path: &Path, header: &str, data: &[u8]) {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend(data);
    fs::write(path, b).unwrap();
}

#[test]
fn corrupt_headers_are_clear_errors() {
    let dir = TempDir::new("corrupt");
    let p = dir.path("bad.safetensors");
    let ps = p.display().to_string();
    let check = |header: &str, data: &[u8], want: &str| {
        raw_file(&p, header, data);
        let e = err_string(load(&p));
        assert!(e.contains(&ps) && e.contains(want), "header {header}: {e}");
    };
    check(
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]"#,
        &[0; 8],
        "invalid JSON",
    );
    check(r#"not json at all"#, &[], "invalid JSON");
    check(
        r#"{"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}"#,
        &[0; 8],
        "invalid JSON",
    );
    check(
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#,
        &[0; 12],
        "offset",
    );
    check(
        r#"{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#,
        &[0; 8],
        "`a`",
    );
    check(
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#,
        &[0; 12],
        "trailing bytes",
    );
    check(
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#,
        &[0; 4],
        "truncated",
    );
    check(
        r#"{"a": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "BOOL", "shape": [1], "data_offsets": [8, 9]}}"#,
        &[0; 9],
        "unsupported dtypes",
    );
    check(
        r#"{"a": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}"#,
        &[0; 8],
        "a (I32)",
    );
    // A zero dim with huge others: 0 bytes, but strides would overflow.
    let huge = 1u64 << 40;
    check(
        &format!(
            r#"{{"a": {{"dtype": "F32", "shape": [{huge}, {huge}, 0], "data_offsets": [0, 0]}}}}"#
        ),
        &[],
        "",
    );
    check(
        &format!(
            r#"{{"a": {{"dtype": "F32", "shape": [0, {huge}, {huge}], "data_offsets": [0, 0]}}}}"#
        ),
        &[],
        "",
    );
    // Offsets summing to u64::MAX overflow the parser's own size arithmetic.
    let mut entries = Vec::new();
    let chunk = 1u64 << 60;
    let mut start = 0u64;
    for i in 0..16 {
        let len = if i == 15 { chunk - 1 } else { chunk };
        entries.push(format!(
            r#""t{i:02}": {{"dtype": "U8", "shape": [{len}], "data_offsets": [{start}, {}]}}"#,
            start + len
        ));
        start += len;
    }
    check(&format!("{{{}}}", entries.join(", ")), &[], "");
    // Header length prefix way past the end, or past the format's limit.
    let mut b = 1000u64.to_le_bytes().to_vec();
    b.extend(b"{}");
    fs::write(&p, &b).unwrap();
    assert!(err_string(load(&p)).contains("truncated or corrupt"));
    fs::write(&p, u64::MAX.to_le_bytes()).unwrap();
    assert!(err_string(load(&p)).contains("corrupt header length"));
    // Missing file.
    let gone = dir.path("nope.safetensors");
    let e = err_string(load(&gone));
    assert!(
        e.contains(&gone.display().to_string()) && e.contains("cannot read"),
        "{e}"
    );
    // An empty header is a valid, empty checkpoint.
    raw_file(&p, "{}", &[]);
    assert!(load(&p).unwrap().tensors.is_empty());
}

#[test]
fn random_corruption_never_panics() {
    let dir = TempDir::new("fuzz");
    let (_, bytes) = small_file(&dir);
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let p = dir.path("fuzz.safetensors");
    let mut rng = Rng::new(2024);
    let (mut ok, mut err) = (0, 0);
    for i in 0..1000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.below(3) {
            // Mostly the header: data bytes only change values.
            let at = if rng.below(4) == 0 {
                rng.below(b.len())
            } else {
                rng.below(header_end)
            };
            b[at] = match rng.below(3) {
                0 => b[at] ^ (1 << rng.below(8)),
                1 => b"0123456789[]{},\":-eE ."[rng.below(22)],
                _ => rng.below(256) as u8,
            };
        }
        if i % 5 == 0 {
            b.truncate(rng.below(b.len() + 1));
        }
        fs::write(&p, &b).unwrap();
        match load(&p) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.to_string().contains("fuzz.safetensors"), "{e}");
                err += 1
            }
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

#[test]
fn reads_python_safetensors_files() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/golden/linear.safetensors");
    let ck = load(&path).unwrap();
    assert_eq!(ck.metadata.get("op").map(String::as_str), Some("linear"));
    let (x, w, b, out) = (
        &ck.tensors["in.x"],
        &ck.tensors["in.weight"],
        &ck.tensors["in.bias"],
        &ck.tensors["out"],
    );
    assert_eq!(
        (x.dims(), w.dims(), b.dims(), out.dims()),
        (&[6, 7][..], &[5, 7][..], &[5][..], &[6, 5][..])
    );
    assert!(ck.tensors.values().all(|t| t.dtype() == DType::F32));
    // out = x W^T + b, computed naively.
    let (xv, wv, bv, ov) = (
        x.to_vec_f64().unwrap(),
        w.to_vec_f64().unwrap(),
        b.to_vec_f64().unwrap(),
        out.to_vec_f64().unwrap(),
    );
    for i in 0..6 {
        for j in 0..5 {
            let y = bv[j] + (0..7).map(|k| xv[i * 7 + k] * wv[j * 7 + k]).sum::<f64>();
            assert!(
                (y - ov[i * 5 + j]).abs() < 1e-5 * (1.0 + y.abs()),
                "out[{i},{j}] {y} vs {}",
                ov[i * 5 + j]
            );
        }
    }
    // Re-saving a Python file and loading it again changes nothing.
    let dir = TempDir::new("python");
    let again = dir.path("linear.safetensors");
    let all: Vec<(String, Tensor)> = ck
        .tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    save(&again, &all, &ck.metadata).unwrap();
    let ck2 = load(&again).unwrap();
    assert_eq!(ck2.metadata, ck.metadata);
    for (k, v) in &ck.tensors {
        assert_same(&ck2.tensors[k], v, k);
    }
}

// ---- model state ----

fn param(name: &str, shape: &[usize], dtype: DType, seed: u64) -> Param {
    Param::new(
        name,
        Tensor::randn(shape, 0.0, 1.0, dtype, &mut Rng::new(seed)),
        false,
    )
    .unwrap()
}

/// A tiny "encoder" as torchvision would name it.
fn encoder(seed: u64) -> (Vec<Param>, Vec<Buffer>) {
    let params = vec![
        param("conv1.weight", &[4, 3, 3, 3], DType::F32, seed),
        param("bn1.weight", &[4], DType::F32, seed + 1),
        param("bn1.bias", &[4], DType::F32, seed + 2),
        param("layer1.0.conv1.weight", &[4, 4, 3, 3], DType::F32, seed + 3),
    ];
    let buffers = vec![
        Buffer::new(
            "bn1.running_mean",
            Tensor::randn(&[4], 0.0, 1.0, DType::F32, &mut Rng::new(seed + 4)),
        ),
        Buffer::new(
            "bn1.running_var",
            Tensor::rand(&[4], 0.5, 2.0, DType::F32, &mut Rng::new(seed + 5)),
        ),
        Buffer::new("bn1.num_batches_tracked", Tensor::scalar(seed as i64)),
    ];
    (params, buffers)
}

fn snapshot(params: &[Param], buffers: &[Buffer]) -> Vec<Vec<u8>> {
    state_tensors(params, buffers)
        .iter()
        .map(|(_, t)| bits(t))
        .collect()
}

#[test]
fn model_state_round_trips_into_a_fresh_model() {
    let dir = TempDir::new("model");
    let path = dir.path("enc.safetensors");
    let (p1, b1) = encoder(1);
    save_model(&path, &p1, &b1, &meta(&[("arch", "tiny")])).unwrap();
    let (p2, b2) = encoder(100);
    assert_ne!(snapshot(&p1, &b1), snapshot(&p2, &b2));
    let report = load_model(&path, &p2, &b2, &LoadOptions::strict()).unwrap();
    assert_eq!(report.loaded.len(), 7);
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    assert_eq!(snapshot(&p1, &b1), snapshot(&p2, &b2));
    assert!(
        p2.iter().all(|p| p.get().requires_grad()),
        "params stay trainable leaves"
    );
    let names: Vec<String> = state_tensors(&p1, &b1)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names[0], "conv1.weight");
    assert_eq!(names[6], "bn1.num_batches_tracked");
}

#[test]
fn a_different_architecture_is_refused_with_every_difference_listed() {
    let (params, buffers) = encoder(1);
    let before = snapshot(&params, &buffers);
    let mut ck = Checkpoint::default();
    for (n, t) in state_tensors(&params, &buffers) {
        ck.tensors.insert(n, t);
    }
    // Another net: wider conv1, f64 bn1.weight, no bn1.bias / running_var, and extras.
    ck.tensors.insert(
        "conv1.weight".into(),
        Tensor::zeros(&[8, 3, 7, 7], DType::F32),
    );
    ck.tensors
        .insert("bn1.weight".into(), Tensor::zeros(&[4], DType::F64));
    ck.tensors.remove("bn1.bias");
    ck.tensors.remove("bn1.running_var");
    ck.tensors.insert(
        "projector.0.weight".into(),
        Tensor::zeros(&[4, 4], DType::F32),
    );
    ck.tensors
        .insert("fc.bias".into(), Tensor::zeros(&[10], DType::F32));
    let e = err_string(load_into(&ck, &params, &buffers, None));
    for want in [
        "2 missing",
        "bn1.bias",
        "bn1.running_var",
        "2 unexpected",
        "projector.0.weight",
        "fc.bias",
        "2 mismatched",
        "conv1.weight: model has [4, 3, 3, 3] f32, checkpoint has [8, 3, 7, 7] f32",
        "bn1.weight: model has [4] f32, checkpoint has [4] f64",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    // Nothing changed, including the tensors that did match.
    assert_eq!(snapshot(&params, &buffers), before);
    // Relaxing missing/unexpected still refuses the misshaped ones.
    let lax = LoadOptions {
        allow_missing: true,
        allow_unexpected: true,
        prefix: None,
    };
    let e = err_string(load_into_with(&ck, &params, &buffers, &lax));
    assert!(
        e.contains("conv1.weight") && !e.contains("missing") && !e.contains("unexpected"),
        "{e}"
    );
    assert_eq!(snapshot(&params, &buffers), before);
    // Duplicate names in the model are ambiguous.
    let dup = vec![params[0].clone(), params[0].clone()];
    assert!(err_string(load_into(&ck, &dup, &[], None)).contains("duplicate"));
}

#[test]
fn a_backbone_loads_out_of_a_pretraining_checkpoint() {
    let (enc, enc_b) = encoder(1);
    let mut full = Checkpoint::default();
    for (n, t) in state_tensors(&enc, &enc_b) {
        full.tensors.insert(format!("encoder.{n}"), t);
    }
    full.tensors.insert(
        "projector.0.weight".into(),
        Tensor::zeros(&[4, 4], DType::F32),
    );
    full.tensors
        .insert("fc.weight".into(), Tensor::zeros(&[10, 4], DType::F32));

    // Strict within the prefix; names outside it are ignored.
    let (p, b) = encoder(50);
    load_into(&full, &p, &b, Some("encoder")).unwrap();
    assert_eq!(snapshot(&p, &b), snapshot(&enc, &enc_b));
    // The prefix is a whole name component.
    let (p, b) = encoder(51);
    assert!(err_string(load_into(&full, &p, &b, Some("enc"))).contains("7 missing"));

    // Same names as the checkpoint, head and projector skipped.
    let (p, b) = encoder(60);
    let renamed: Vec<Param> = p
        .iter()
        .map(|x| Param::new(format!("encoder.{}", x.name()), x.get(), false).unwrap())
        .collect();
    let renamed_b: Vec<Buffer> = b
        .iter()
        .map(|x| Buffer::new(format!("encoder.{}", x.name()), x.get()))
        .collect();
    assert!(
        load_into(&full, &renamed, &renamed_b, None).is_err(),
        "strict refuses the extra head"
    );
    let r = load_into_with(&full, &renamed, &renamed_b, &LoadOptions::backbone()).unwrap();
    assert_eq!(
        r.unexpected,
        vec!["fc.weight".to_string(), "projector.0.weight".to_string()]
    );
    assert_eq!(snapshot(&renamed, &renamed_b), snapshot(&enc, &enc_b));

    // allow_missing: a model with a new head keeps the head's init.
    let (p, b) = encoder(70);
    let mut with_head = p.clone();
    let head = param("head.weight", &[3, 4], DType::F32, 9);
    let head_before = bits(&head.get());
    with_head.push(head.clone());
    let opts = LoadOptions {
        prefix: Some("encoder.".into()),
        allow_missing: true,
        allow_unexpected: false,
    };
    let r = load_into_with(&full, &with_head, &b, &opts).unwrap();
    assert_eq!(r.missing, vec!["head.weight".to_string()]);
    assert_eq!(bits(&head.get()), head_before);
    assert_eq!(snapshot(&p, &b), snapshot(&enc, &enc_b));
}

#[test]
fn training_state_round_trips_for_an_exact_resume() {
    let dir = TempDir::new("train");
    let path = dir.path("step.safetensors");
    let (params, buffers) = encoder(3);
    let mut rng = Rng::new(11);
    for _ in 0..5 {
        rng.next_u64();
    }
    let momentum: Vec<(String, Tensor)> = params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                format!("momentum.{}", p.name()),
                Tensor::randn(
                    p.get().dims(),
                    0.0,
                    1.0,
                    DType::F32,
                    &mut Rng::new(i as u64),
                ),
            )
        })
        .collect();
    let state = TrainState {
        step: u64::MAX - 1,
        rng: rng.state(),
        extra: meta(&[
            ("epoch", "3"),
            ("lr", "0.1"),
            ("format", "not the real one"),
        ]),
    };
    save_training(&path, &params, &buffers, &momentum, &state).unwrap();
    let raw = load(&path).unwrap();
    assert_eq!(raw.metadata["format"], "slmlp-train-v1");
    assert!(raw.tensors.contains_key("optim.momentum.conv1.weight"));

    let (p2, b2) = encoder(99);
    let (optim, st) = load_training(&path, &p2, &b2).unwrap();
    assert_eq!(st, state);
    assert_eq!(snapshot(&p2, &b2), snapshot(&params, &buffers));
    let mut want = momentum.clone();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(optim.len(), want.len());
    for ((n1, t1), (n2, t2)) in optim.iter().zip(&want) {
        assert_eq!(n1, n2);
        assert_same(t1, t2, n1);
    }
    let mut resumed = Rng::from_state(st.rng);
    assert_eq!(resumed.next_u64(), rng.next_u64());

    // A model-only file, another format version, and a wrong model are refused.
    let model_only = dir.path("model.safetensors");
    save_model(&model_only, &params, &buffers, &BTreeMap::new()).unwrap();
    assert!(err_string(load_training(&model_only, &p2, &b2)).contains("not a training checkpoint"));
    let mut ck = load(&path).unwrap();
    ck.metadata.insert("format".into(), "slmlp-train-v2".into());
    let v2 = dir.path("v2.safetensors");
    save(
        &v2,
        &ck.tensors.clone().into_iter().collect::<Vec<_>>(),
        &ck.metadata,
    )
    .unwrap();
    let e = err_string(load_training(&v2, &p2, &b2));
    assert!(
        e.contains("slmlp-train-v2") && e.contains("slmlp-train-v1"),
        "{e}"
    );
    ck.metadata.insert("format".into(), "slmlp-train-v1".into());
    ck.metadata.insert("rng".into(), "1,2,3".into());
    save(
        &v2,
        &ck.tensors.clone().into_iter().collect::<Vec<_>>(),
        &ck.metadata,
    )
    .unwrap();
    assert!(err_string(load_training(&v2, &p2, &b2)).contains("rng"));
    let other = vec![param("conv1.weight", &[2, 3, 3, 3], DType::F32, 0)];
    let before = bits(&other[0].get());
    let e = err_string(load_training(&path, &other, &[]));
    assert!(
        e.contains(&path.display().to_string())
            && e.contains("conv1.weight")
            && e.contains("unexpected"),
        "{e}"
    );
    assert_eq!(bits(&other[0].get()), before);

    // Model names can't collide with the optimizer namespace.
    let clash = vec![param("optim.x", &[2], DType::F32, 0)];
    assert!(err_string(save_training(
        &dir.path("c.safetensors"),
        &clash,
        &[],
        &[],
        &state
    ))
    .contains("optim."));
}
