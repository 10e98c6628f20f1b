//! The fault corpus: bad inputs generated at test time (images, COCO JSON,
//! checkpoints and their metadata, command-line sizes, numeric faults), each
//! run through the `slmlp` binary under a timeout and an address-space cap.
//! Every case must end without a panic, an abort or a signal, and within
//! the timeout; a bad input must give a one-line `error:`; the files of a
//! good run already on disk (its checkpoints and metrics.jsonl) must come
//! out unchanged. The counts are printed (`cargo test -p models --test
//! fault_corpus -- --nocapture`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Per case; a debug build on 2 cores runs each in about a second.
const TIMEOUT: Duration = Duration::from_secs(60);
/// `ulimit -v` in KiB: 3 GiB of address space (the failed allocations this
/// corpus was built from asked for 23.6 GB and 720 GB).
const MEMORY_KIB: u64 = 3 << 20;

/// What a case must end with (beyond no panic, abort, signal or timeout).
enum Expect {
    /// Exit code non-zero and one `error:` line mentioning the text.
    Error(&'static str),
    /// Exit code 0, and stdout + stderr mention the text.
    Success(&'static str),
    /// Either; for faults whose handling belongs to the training loop.
    Survives,
}

struct Case {
    name: String,
    args: Vec<String>,
    expect: Expect,
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

/// Runs the binary with `args` under `sh -c 'ulimit -v ..; exec ..'`, killing
/// it after `TIMEOUT`.
fn run(args: &[String]) -> Outcome {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {MEMORY_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_slmlp"))
        .args(args)
        // few malloc arenas: the address-space cap is for the data
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let (status, timed_out) = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break (s, false);
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            break (child.wait().expect("wait"), true);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        timed_out,
    }
}

/// The problems with `o` for a case expecting `expect`; empty if none.
fn judge(o: &Outcome, expect: &Expect) -> Vec<String> {
    let mut bad = Vec::new();
    if o.timed_out {
        bad.push(format!("no exit within {TIMEOUT:?} (hang)"));
    }
    match o.code {
        None if !o.timed_out => bad.push("killed by a signal (abort?)".into()),
        Some(101) => bad.push("exit code 101 (panic)".into()),
        _ => {}
    }
    if o.stderr.contains("panicked at") {
        bad.push("panicked".into());
    }
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    match expect {
        Expect::Error(needle) => {
            if o.code == Some(0) {
                bad.push("succeeded, expected an error".into());
            }
            match errors.as_slice() {
                [line] if line.contains(needle) => {}
                [line] => bad.push(format!("error does not mention {needle:?}: {line}")),
                _ => bad.push(format!("expected one `error:` line, got {}", errors.len())),
            }
        }
        Expect::Success(needle) => {
            if o.code != Some(0) {
                bad.push(format!("exit code {:?}, expected 0", o.code));
            }
            if !(o.stdout.contains(needle) || o.stderr.contains(needle)) {
                bad.push(format!("output does not mention {needle:?}"));
            }
        }
        Expect::Survives => {}
    }
    bad
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

/// `transfer` by 1-NN on the folder `spec` (train and test), two threads.
fn knn_transfer(checkpoint: &Path, spec: &str) -> Vec<String> {
    let c = s(checkpoint);
    args(&[
        "--threads",
        "2",
        "transfer",
        "--checkpoint",
        &c,
        "--mode",
        "knn",
        "--k",
        "1",
        "--workers",
        "0",
        "--data",
        spec,
        "--test-data",
        spec,
    ])
}

// ---------------------------------------------------------------------------
// images

fn rgb_image(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let v = (x * 37 + y * 91 + seed * 53) as u8;
        image::Rgb([v, v.wrapping_mul(3), v ^ 0x5a])
    })
}

fn encoded(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(kind);
    out.extend(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend(crc.sum().to_be_bytes());
}

/// A PNG whose header claims `w x h` gray pixels, with a few bytes of data.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A 2-class image folder of 8x8 RGB PNGs (two per class) plus `extra`
/// files written into class `a`.
fn folder(root: &Path, extra: &[(&str, Vec<u8>)]) -> PathBuf {
    for (c, class) in ["a", "b"].iter().enumerate() {
        let d = root.join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..2 {
            let png = encoded(
                &rgb_image(8, 8, (c * 2 + i) as u32),
                image::ImageFormat::Png,
            );
            std::fs::write(d.join(format!("{i}.png")), png).unwrap();
        }
    }
    for (name, bytes) in extra {
        std::fs::write(root.join("a").join(name), bytes).unwrap();
    }
    root.to_path_buf()
}

// ---------------------------------------------------------------------------
// checkpoints

/// `good` with its metadata changed as `edit` says, at `out`.
fn edited_checkpoint(
    good: &Path,
    out: &Path,
    edit: impl Fn(&mut std::collections::BTreeMap<String, String>),
) -> PathBuf {
    let mut c = engine::checkpoint::load(good).unwrap();
    edit(&mut c.metadata);
    let tensors: Vec<(String, engine::Tensor)> = c.tensors.into_iter().collect();
    engine::checkpoint::save(out, &tensors, &c.metadata).unwrap();
    out.to_path_buf()
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    files.sort();
    files
}

// ---------------------------------------------------------------------------
// COCO

fn coco(images: serde_json::Value, annotations: serde_json::Value) -> String {
    serde_json::json!({
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    })
    .to_string()
}

fn image_entry(h: u64, w: u64, file_name: &str) -> serde_json::Value {
    serde_json::json!([{"id": 1, "height": h, "width": w, "file_name": file_name}])
}

fn ann(bbox: [f64; 4], segmentation: serde_json::Value) -> serde_json::Value {
    serde_json::json!([{
        "id": 1, "image_id": 1, "category_id": 1, "bbox": bbox,
        "area": bbox[2] * bbox[3], "iscrowd": 0, "segmentation": segmentation,
    }])
}

#[test]
fn fault_corpus_ends_cleanly_and_loses_nothing() {
    let root = std::env::temp_dir().join(format!("slmlp-fault-corpus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let p = |name: &str| root.join(name);

    // a good run: its files must survive every case below
    let data = folder(&p("data"), &[]);
    let data_spec = format!("folder:{}", s(&data));
    let good = p("good");
    let small = |extra: &[&str]| -> Vec<String> {
        let mut a = args(&[
            "--threads",
            "2",
            "pretrain",
            "--method",
            "sl-mlp",
            "--arch",
            "resnet18",
            "--width",
            "2",
            "--stem",
            "cifar",
            "--image-size",
            "8",
            "--epochs",
            "1",
            "--batch",
            "2",
            "--workers",
            "0",
            "--no-val",
            "--quiet",
            "--data",
        ]);
        a.push(data_spec.clone());
        a.extend(args(extra));
        a
    };
    let first = run(&[small(&[]), args(&["--out", &s(&good)])].concat());
    assert_eq!(first.code, Some(0), "the good run failed: {}", first.stderr);
    let model = good.join("model.safetensors");
    let before = snapshot(&good);

    let input = p("input.safetensors");
    let x = engine::Tensor::randn(
        &[2, 3, 8, 8],
        0.0,
        1.0,
        engine::DType::F32,
        &mut engine::Rng::new(0),
    );
    engine::checkpoint::save(&input, &[("input".to_string(), x)], &Default::default()).unwrap();
    let nan = p("nan.safetensors");
    let x = engine::Tensor::from_vec(vec![f32::NAN; 2 * 3 * 8 * 8], &[2, 3, 8, 8]).unwrap();
    engine::checkpoint::save(&nan, &[("input".to_string(), x)], &Default::default()).unwrap();

    let mut cases: Vec<Case> = Vec::new();
    let mut case = |name: &str, args: Vec<String>, expect: Expect| {
        cases.push(Case {
            name: name.to_string(),
            args,
            expect,
        })
    };

    // ---- images: a bad file in a class folder is skipped with a warning
    let jpeg = encoded(&rgb_image(32, 32, 9), image::ImageFormat::Jpeg);
    let png = encoded(&rgb_image(8, 8, 9), image::ImageFormat::Png);
    let strip = encoded(&rgb_image(1, 30000, 1), image::ImageFormat::Png);
    let image_faults: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "huge-dimension PNG header",
            "huge.png",
            png_claiming(100_000, 100_000),
        ),
        ("zero-size PNG", "empty.png", Vec::new()),
        ("zero-size JPEG", "empty.jpg", Vec::new()),
        ("truncated PNG", "cut.png", png[..png.len() / 2].to_vec()),
        (
            "truncated JPEG",
            "cut.jpg",
            jpeg[..jpeg.len() * 2 / 3].to_vec(),
        ),
        ("text named .jpg", "text.jpg", b"not an image".to_vec()),
        ("0x0 PNG header", "zero.png", png_claiming(0, 0)),
    ];
    for (i, (what, file, bytes)) in image_faults.into_iter().enumerate() {
        let dir = folder(&p(&format!("img{i}")), &[(file, bytes)]);
        let spec = format!("folder:{}", s(&dir));
        case(
            &format!("transfer: {what}"),
            knn_transfer(&model, &spec),
            Expect::Success("skipping unreadable sample"),
        );
    }
    // a JPEG named .png is decoded by content
    let dir = folder(&p("wrongext"), &[("jpeg.png", jpeg.clone())]);
    let spec = format!("folder:{}", s(&dir));
    case(
        "transfer: JPEG named .png",
        knn_transfer(&model, &spec),
        Expect::Success("(5 train / 5 test images)"),
    );
    // the 1x30000 strip at 224 px (evaluation resizes the shorter side to
    // 256 first: 23.6 GB before the bound) through transfer, analyze and
    // pretrain's validation
    let at224 = edited_checkpoint(&model, &p("at224.safetensors"), |m| {
        m.insert("data.size".into(), "224".into());
    });
    let dir = folder(&p("strip"), &[("strip.png", strip)]);
    let spec = format!("folder:{}", s(&dir));
    case(
        "transfer: 1x30000 PNG at 224 px",
        knn_transfer(&at224, &spec),
        Expect::Success("skipping unreadable sample"),
    );
    case(
        "analyze: 1x30000 PNG at 224 px",
        args(&[
            "--threads",
            "2",
            "analyze",
            "--checkpoint",
            &s(&at224),
            "--workers",
            "0",
            "--plot-per-class",
            "2",
            "--data",
            &spec,
        ]),
        Expect::Success("skipping unreadable sample"),
    );
    case(
        "pretrain --val-data: 1x30000 PNG at 224 px",
        args(&[
            "--threads",
            "2",
            "pretrain",
            "--method",
            "sl",
            "--arch",
            "resnet18",
            "--width",
            "2",
            "--image-size",
            "224",
            "--epochs",
            "1",
            "--batch",
            "2",
            "--workers",
            "0",
            "--quiet",
            "--data",
            &data_spec,
            "--val-data",
            &spec,
            "--out",
            &s(&p("val-strip")),
        ]),
        Expect::Success("skipping unreadable sample"),
    );
    // a symlink loop inside a class folder adds nothing
    #[cfg(unix)]
    {
        let dir = folder(&p("loop"), &[]);
        std::os::unix::fs::symlink("../a", dir.join("a").join("again")).unwrap();
        std::os::unix::fs::symlink(".", dir.join("b").join("self")).unwrap();
        let spec = format!("folder:{}", s(&dir));
        case(
            "transfer: symlink loops in class folders",
            knn_transfer(&model, &spec),
            Expect::Success("(4 train / 4 test images)"),
        );
        // a class folder whose name is not UTF-8
        use std::os::unix::ffi::OsStrExt;
        let dir = folder(&p("latin1"), &[]);
        let odd = dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        std::fs::rename(dir.join("b"), &odd).unwrap();
        let spec = format!("folder:{}", s(&dir));
        case(
            "transfer: non-UTF-8 class folder",
            knn_transfer(&model, &spec),
            Expect::Success("(4 train / 4 test images)"),
        );
    }

    // ---- checkpoints and their metadata (forward builds the network)
    let forward = |ckpt: &Path| {
        args(&[
            "forward",
            "--checkpoint",
            &s(ckpt),
            "--input",
            &s(&input),
            "--output",
            &s(&p("fwd.safetensors")),
        ])
    };
    case(
        "forward: the good model",
        forward(&model),
        Expect::Success("logits"),
    );
    let bytes = std::fs::read(&model).unwrap();
    for (what, cut) in [
        ("truncated checkpoint", bytes.len() / 2),
        ("header only", 20),
        ("8 bytes", 8),
        ("empty checkpoint", 0),
    ] {
        let f = p(&format!("cut{cut}.safetensors"));
        std::fs::write(&f, &bytes[..cut]).unwrap();
        case(&format!("forward: {what}"), forward(&f), Expect::Error(""));
    }
    let f = p("hugeheader.safetensors");
    std::fs::write(&f, [u64::MAX.to_le_bytes().as_slice(), b"{}"].concat()).unwrap();
    case(
        "forward: header length 2^64-1",
        forward(&f),
        Expect::Error("header"),
    );
    let many_blocks = vec!["4"; 1000].join(",");
    let metadata_faults: Vec<(&str, &str, &str, &str)> = vec![
        ("width 100000", "net.width", "100000", "width"),
        ("width 0", "net.width", "0", "width"),
        ("width 3 (misshaped tensors)", "net.width", "3", "disagree"),
        (
            "num_classes 4e9",
            "net.num_classes",
            "4000000000",
            "num_classes",
        ),
        (
            "num_classes 7 (misshaped fc)",
            "net.num_classes",
            "7",
            "fc.weight",
        ),
        ("num_classes -1", "net.num_classes", "-1", "net.num_classes"),
        (
            "in_channels 1e6",
            "net.in_channels",
            "1000000",
            "in_channels",
        ),
        ("projector 1e8", "net.projector", "100000000", "projector"),
        (
            "projector of 1000 blocks",
            "net.projector",
            &many_blocks,
            "blocks",
        ),
        ("arch resnet1000", "net.arch", "resnet1000", "architecture"),
        ("data.size 100000", "data.size", "100000", "data.size"),
        ("data.size 0", "data.size", "0", "data.size"),
    ];
    for (i, (what, key, value, needle)) in metadata_faults.into_iter().enumerate() {
        let f = edited_checkpoint(&model, &p(&format!("meta{i}.safetensors")), |m| {
            m.insert(key.to_string(), value.to_string());
        });
        case(
            &format!("forward: metadata {what}"),
            forward(&f),
            Expect::Error(needle),
        );
        if i < 2 {
            let spec = data_spec.clone();
            case(
                &format!("transfer: metadata {what}"),
                args(&[
                    "transfer",
                    "--checkpoint",
                    &s(&f),
                    "--data",
                    &spec,
                    "--test-data",
                    &spec,
                ]),
                Expect::Error(needle),
            );
            case(
                &format!("analyze: metadata {what}"),
                args(&["analyze", "--checkpoint", &s(&f), "--data", &spec]),
                Expect::Error(needle),
            );
        }
    }
    let f = edited_checkpoint(&model, &p("nometa.safetensors"), |m| m.clear());
    case(
        "forward: no metadata",
        forward(&f),
        Expect::Error("metadata"),
    );
    case(
        "forward: input of the wrong shape",
        args(&[
            "forward",
            "--checkpoint",
            &s(&model),
            "--input",
            &s(&model),
            "--output",
            &s(&p("o.safetensors")),
        ]),
        Expect::Error(""),
    );
    case(
        "forward: all-NaN input",
        args(&[
            "forward",
            "--checkpoint",
            &s(&model),
            "--input",
            &s(&nan),
            "--output",
            &s(&p("o.safetensors")),
        ]),
        Expect::Survives,
    );

    // ---- COCO JSON through coco-eval (bbox and segm)
    let square = serde_json::json!([[1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]]);
    let dt = |seg: bool| {
        let d = if seg {
            serde_json::json!([{"image_id": 1, "category_id": 1, "score": 0.9,
                "segmentation": {"size": [8, 8], "counts": [9, 4, 4, 4, 4, 4, 35]}}])
        } else {
            serde_json::json!([{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [1, 1, 4, 4]}])
        };
        d.to_string()
    };
    let coco_faults: Vec<(&str, String, bool, Expect)> = vec![
        (
            "good",
            coco(
                image_entry(8, 8, "a.png"),
                ann([1.0, 1.0, 4.0, 4.0], square.clone()),
            ),
            true,
            Expect::Success("Average Precision"),
        ),
        (
            "broken JSON",
            "{\"images\": [".into(),
            false,
            Expect::Error("not valid JSON"),
        ),
        (
            "images not a list",
            r#"{"images": "x", "annotations": [], "categories": []}"#.into(),
            false,
            Expect::Error("images"),
        ),
        (
            "height a string",
            coco(
                serde_json::json!([{"id": 1, "height": "8", "width": 8}]),
                serde_json::json!([]),
            ),
            false,
            Expect::Error("height"),
        ),
        (
            "bbox of 3 numbers",
            coco(
                image_entry(8, 8, "a.png"),
                serde_json::json!([{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "area": 1}]),
            ),
            false,
            Expect::Error("bbox"),
        ),
        (
            "negative bbox",
            coco(
                image_entry(8, 8, "a.png"),
                ann([1.0, 1.0, -4.0, 4.0], square.clone()),
            ),
            false,
            Expect::Error("negative"),
        ),
        (
            "height 1e12",
            coco(
                image_entry(1_000_000_000_000, 8, "a.png"),
                serde_json::json!([]),
            ),
            false,
            Expect::Error("height"),
        ),
        (
            "65536x65536 image (2^32 pixels)",
            coco(
                image_entry(65536, 65536, "a.png"),
                ann([1.0, 1.0, 4.0, 4.0], square.clone()),
            ),
            true,
            Expect::Error("pixels"),
        ),
        (
            "absolute file_name",
            coco(image_entry(8, 8, "/etc/passwd"), serde_json::json!([])),
            false,
            Expect::Error("file_name"),
        ),
        (
            "file_name with ..",
            coco(image_entry(8, 8, "../../x.png"), serde_json::json!([])),
            false,
            Expect::Error("file_name"),
        ),
        (
            "zero-size box",
            coco(
                image_entry(8, 8, "a.png"),
                ann([1.0, 1.0, 0.0, 0.0], square.clone()),
            ),
            false,
            Expect::Success("Average Precision"),
        ),
        (
            "polygon of 4 numbers in a list of polygons",
            coco(
                image_entry(8, 8, "a.png"),
                ann(
                    [1.0, 1.0, 4.0, 4.0],
                    serde_json::json!([[1, 1, 5, 5], [1, 1, 5, 1, 5, 5]]),
                ),
            ),
            true,
            Expect::Success("left out of segm evaluation"),
        ),
        (
            "polygon of 2 numbers",
            coco(
                image_entry(8, 8, "a.png"),
                ann([1.0, 1.0, 4.0, 4.0], serde_json::json!([[1, 1]])),
            ),
            true,
            Expect::Success("left out of segm evaluation"),
        ),
        (
            "empty polygon list",
            coco(
                image_entry(8, 8, "a.png"),
                ann([1.0, 1.0, 4.0, 4.0], serde_json::json!([])),
            ),
            true,
            Expect::Success("left out of segm evaluation"),
        ),
        (
            "polygon with huge coordinates",
            coco(
                image_entry(8, 8, "a.png"),
                ann(
                    [1.0, 1.0, 4.0, 4.0],
                    serde_json::json!([[0, 0, 1e15, 0, 1e15, 1e15]]),
                ),
            ),
            true,
            Expect::Success("Average Precision"),
        ),
        (
            "RLE counts not adding up",
            coco(
                image_entry(8, 8, "a.png"),
                ann(
                    [1.0, 1.0, 4.0, 4.0],
                    serde_json::json!({"size": [8, 8], "counts": [1, 2]}),
                ),
            ),
            true,
            Expect::Error("add up"),
        ),
        (
            "RLE size 2^32 pixels",
            coco(
                image_entry(8, 8, "a.png"),
                ann(
                    [1.0, 1.0, 4.0, 4.0],
                    serde_json::json!({"size": [65536, 65536], "counts": [0]}),
                ),
            ),
            true,
            Expect::Error("pixels"),
        ),
    ];
    for (i, (what, gt, segm, expect)) in coco_faults.into_iter().enumerate() {
        let g = p(&format!("gt{i}.json"));
        std::fs::write(&g, gt).unwrap();
        let d = p(&format!("dt{i}.json"));
        std::fs::write(&d, dt(segm)).unwrap();
        let iou = if segm { "segm" } else { "bbox" };
        case(
            &format!("coco-eval {iou}: {what}"),
            args(&[
                "coco-eval",
                "--gt",
                &s(&g),
                "--dt",
                &s(&d),
                "--iou-type",
                iou,
            ]),
            expect,
        );
    }

    // ---- sizes and counts on the command line, pointed at the good run's
    // folder: refused before anything is written there
    let out = s(&good);
    for (what, extra, needle) in [
        ("--width 100000", vec!["--width", "100000"], "--width"),
        ("--width 0", vec!["--width", "0"], "--width"),
        (
            "--projector 100000000",
            vec!["--projector", "100000000"],
            "projector",
        ),
        ("--projector 0", vec!["--projector", "0"], "projector"),
        (
            "--image-size 100000",
            vec!["--image-size", "100000"],
            "--image-size",
        ),
        ("--image-size 0", vec!["--image-size", "0"], "--image-size"),
        ("--batch 0", vec!["--batch", "0"], "--batch"),
        ("--batch 1e12", vec!["--batch", "1000000000000"], "--batch"),
        ("--batch -1", vec!["--batch", "-1"], "-1"),
        (
            "--workers 1e9",
            vec!["--workers", "1000000000"],
            "--workers",
        ),
        ("--per-class 0", vec!["--per-class", "0"], "--per-class"),
    ] {
        case(
            &format!("pretrain {what}"),
            [small(&extra), args(&["--out", &out])].concat(),
            Expect::Error(needle),
        );
    }
    case(
        "--threads 0",
        [
            args(&["--threads", "0"]),
            small(&[])[2..].to_vec(),
            args(&["--out", &out]),
        ]
        .concat(),
        Expect::Error("--threads"),
    );
    let spec = data_spec.clone();
    for (what, a, needle) in [
        (
            "transfer --k 0",
            vec![
                "transfer",
                "--checkpoint",
                &s(&model),
                "--data",
                &spec,
                "--k",
                "0",
            ],
            "--k",
        ),
        (
            "transfer --batch 1e9",
            vec![
                "transfer",
                "--checkpoint",
                &s(&model),
                "--data",
                &spec,
                "--batch",
                "1000000000",
            ],
            "--batch",
        ),
        (
            "analyze --plot-per-class 1e9",
            vec![
                "analyze",
                "--checkpoint",
                &s(&model),
                "--data",
                &spec,
                "--plot-per-class",
                "1000000000",
            ],
            "--plot-per-class",
        ),
        (
            "experiment --width 100000",
            vec!["experiment", "--width", "100000", "--out", &out],
            "--width",
        ),
        (
            "experiment --pretrain-size 100000",
            vec!["experiment", "--pretrain-size", "100000", "--out", &out],
            "--pretrain-size",
        ),
        (
            "detect train --width 100000",
            vec![
                "detect", "train", "--data", &out, "--width", "100000", "--out", &out,
            ],
            "--width",
        ),
        (
            "detect train --max-size 100000",
            vec![
                "detect",
                "train",
                "--data",
                &out,
                "--max-size",
                "100000",
                "--out",
                &out,
            ],
            "--max-size",
        ),
        (
            "detect train --fpn-channels 1e8",
            vec![
                "detect",
                "train",
                "--data",
                &out,
                "--fpn-channels",
                "100000000",
                "--out",
                &out,
            ],
            "--fpn-channels",
        ),
        (
            "detect eval --batch 0",
            vec![
                "detect",
                "eval",
                "--checkpoint",
                &s(&model),
                "--data",
                &out,
                "--batch",
                "0",
            ],
            "--batch",
        ),
        (
            "detection-data --canvas 100000",
            vec![
                "detection-data",
                "--out",
                &s(&p("dd")),
                "--canvas",
                "100000",
            ],
            "--canvas",
        ),
        (
            "detection-data --max-objects 1e9",
            vec![
                "detection-data",
                "--out",
                &s(&p("dd")),
                "--max-objects",
                "1000000000",
            ],
            "--max-objects",
        ),
    ] {
        case(what, args(&a), Expect::Error(needle));
    }

    // ---- numeric faults in training (the training loop's to handle:
    // here they must only end cleanly)
    for (i, extra) in [
        vec!["--lr", "1e30"],
        vec!["--lr", "NaN"],
        vec!["--lr", "inf"],
        vec!["--momentum", "5"],
        vec!["--label-smoothing", "2"],
        vec!["--weight-decay", "-1e30"],
    ]
    .into_iter()
    .enumerate()
    {
        case(
            &format!("pretrain {}", extra.join(" ")),
            [small(&extra), args(&["--out", &s(&p(&format!("num{i}")))])].concat(),
            Expect::Survives,
        );
    }

    // ---- run them all
    let start = Instant::now();
    let (mut errors, mut successes, mut failures) = (0, 0, Vec::new());
    for c in &cases {
        let o = run(&c.args);
        let bad = judge(&o, &c.expect);
        if o.code == Some(0) {
            successes += 1;
        } else {
            errors += 1;
        }
        if !bad.is_empty() {
            let tail: Vec<&str> = o.stderr.lines().rev().take(4).collect();
            failures.push(format!(
                "{}: {}\n    stderr tail: {:?}",
                c.name,
                bad.join("; "),
                tail
            ));
        }
    }
    let after = snapshot(&good);
    let changed: Vec<String> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(b, _)| b.0.display().to_string())
        .collect();
    println!(
        "fault corpus: {} cases in {:.0} s: {errors} errors, {successes} successes, {} problems",
        cases.len(),
        start.elapsed().as_secs_f64(),
        failures.len()
    );
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        before.len() == after.len() && changed.is_empty(),
        "the good run's files changed: {changed:?} ({} files before, {} after)",
        before.len(),
        after.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
