//! `slmlp detect train | eval | predict` as a user runs them, on a tiny
//! benchmark written by `slmlp detection-data`: the files each promises,
//! resume, loading a pretrained encoder, and clear errors on bad input.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use testutil::{assert_clean_failure, TempDir};

fn slmlp(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slmlp"))
        .args(args)
        .output()
        .expect("run slmlp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Runs `args`, asserting success; returns (stdout, stderr).
fn ok(args: &[&str]) -> (String, String) {
    let (code, out, err) = slmlp(args);
    assert_eq!(code, 0, "slmlp {args:?}\nstdout: {out}\nstderr: {err}");
    (out, err)
}

fn fails(args: &[&str], needles: &[&str]) {
    let (code, out, err) = slmlp(args);
    assert_clean_failure(&format!("slmlp {args:?}"), code, &out, &err, needles);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The benchmark, written once for all tests of this file.
fn data() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("slmlp-detect-data-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        ok(&[
            "detection-data",
            "--out",
            s(&d),
            "--train",
            "8",
            "--val",
            "4",
            "--canvas",
            "64",
        ]);
        d
    })
}

/// A tiny Mask R-CNN at backbone width `width`.
fn small(width: &'static str) -> Vec<&'static str> {
    vec![
        "--width",
        width,
        "--batch",
        "2",
        "--min-size",
        "64",
        "--max-size",
        "107",
        "--fpn-channels",
        "16",
        "--representation-size",
        "32",
        "--log-every",
        "1",
    ]
}

/// `slmlp pretrain` of a width-4 SL ResNet-18 for one quiet epoch (batch
/// 8, no validation) into `out`, with `extra` arguments.
fn pretrain(out: &Path, extra: &[&str]) {
    let mut args = vec![
        "pretrain",
        "--method",
        "sl",
        "--arch",
        "resnet18",
        "--width",
        "4",
        "--epochs",
        "1",
        "--batch",
        "8",
        "--no-val",
        "--quiet",
        "--out",
        s(out),
    ];
    args.extend(extra);
    ok(&args);
}

fn train(out: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec!["detect", "train", "--data", s(data()), "--out", s(out)];
    args.extend(small("4"));
    args.extend(extra);
    ok(&args)
}

/// The benchmark's `split` in the COCO 2017 layout under `root`:
/// (annotations/instances_<split>2017.json, <split>2017/).
fn coco_layout(root: &Path, split: &str) -> (PathBuf, PathBuf) {
    let ann = root.join(format!("annotations/instances_{split}2017.json"));
    let images = root.join(format!("{split}2017"));
    std::fs::create_dir_all(ann.parent().unwrap()).unwrap();
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(data().join(split).join("annotations.json"), &ann).unwrap();
    for f in std::fs::read_dir(data().join(split).join("images")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, images.join(f.file_name().unwrap())).unwrap();
    }
    (ann, images)
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

const LOSSES: [&str; 5] = [
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "loss_objectness",
    "loss_rpn_box_reg",
];

#[test]
fn train_eval_predict_and_resume() {
    let tmp = TempDir::new("detect-run");
    let run = tmp.0.join("run");
    let (_, err) = train(&run, &["--epochs", "1"]);
    // 8 images / batch 2: 4 steps, each with a progress line
    for needle in ["epoch 1/1 4/4", "img/s", "ETA", "cls ", "mask ", "rpn "] {
        assert!(
            err.contains(needle),
            "progress should show {needle:?}: {err}"
        );
    }
    for f in [
        "metrics.jsonl",
        "checkpoint.safetensors",
        "model.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let m = metrics(&run);
    assert_eq!(m.len(), 5, "4 step records + 1 epoch record: {m:?}");
    for (i, rec) in m[..4].iter().enumerate() {
        assert_eq!(rec["kind"], "step");
        assert_eq!(rec["step"], i + 1);
        for k in ["data_s", "step_s", "wall_s", "host_peak_rss_bytes"] {
            assert!(rec[k].as_f64().is_some_and(|v| v >= 0.0), "{k}: {rec}");
        }
        let parts: f64 = LOSSES.iter().map(|k| rec[*k].as_f64().unwrap()).sum();
        let total = rec["loss"].as_f64().unwrap();
        assert!(total.is_finite() && total > 0.0);
        assert!((parts - total).abs() < 1e-4 * total.max(1.0), "{rec}");
    }
    assert_eq!(m[4]["kind"], "epoch");
    assert_eq!(m[4]["epoch"], 1);
    // linear warmup: the rate grows over the first steps
    assert!(m[0]["lr"].as_f64().unwrap() < m[1]["lr"].as_f64().unwrap());

    let ckpt = engine::checkpoint::load(&run.join("model.safetensors")).unwrap();
    let meta = &ckpt.metadata;
    assert_eq!(meta["detect.arch"], "resnet18");
    assert_eq!(meta["detect.width"], "4");
    assert_eq!(meta["detect.channels"], "3");
    assert_eq!(meta["detect.min_size"], "64");
    assert_eq!(meta["detect.max_size"], "107");
    let gt = read_json(&data().join("train/annotations.json"));
    let cats: Vec<i64> = gt["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert_eq!(meta["detect.num_classes"], (cats.len() + 1).to_string());
    let stored: Vec<i64> = serde_json::from_str(&meta["detect.category_ids"]).unwrap();
    let mut sorted = cats.clone();
    sorted.sort();
    assert_eq!(stored, sorted);
    assert!(ckpt
        .tensors
        .keys()
        .any(|k| k.starts_with("backbone.body.layer4.")));

    let args = read_json(&run.join("args.json"));
    assert_eq!(args["command"]["name"], "detect train");
    assert_eq!(args["command"]["options"]["width"], "4");
    assert_eq!(args["command"]["options"]["lr"], "0.02");
    // a new run into the used folder needs --overwrite
    let mut rerun = vec!["detect", "train", "--data", s(data()), "--out", s(&run)];
    rerun.extend(small("4"));
    fails(&rerun, &["not empty", "--overwrite", "--resume"]);

    // same seed, same run: the data given in the COCO 2017 layout
    let coco = tmp.0.join("coco");
    let (train_ann, train_images) = coco_layout(&coco, "train");
    let (val_ann, val_images) = coco_layout(&coco, "val");
    let again = tmp.0.join("again");
    let mut args = vec![
        "detect",
        "train",
        "--train-ann",
        s(&train_ann),
        "--train-images",
        s(&train_images),
        "--out",
        s(&again),
        "--epochs",
        "1",
        "--quiet",
    ];
    args.extend(small("4"));
    ok(&args);
    let m2 = metrics(&again);
    for (a, b) in m[..4].iter().zip(&m2[..4]) {
        assert_eq!(
            a["loss"], b["loss"],
            "same seed should give the same losses"
        );
    }

    // eval: both 12-line summaries, detections and results files
    let (out, _) = ok(&[
        "detect",
        "eval",
        "--checkpoint",
        s(&run.join("model.safetensors")),
        "--data",
        s(data()),
    ]);
    let bbox_at = out.find("bbox:").expect("bbox summary");
    let segm_at = out.find("segm:").expect("segm summary");
    assert!(bbox_at < segm_at);
    for part in [&out[bbox_at..segm_at], &out[segm_at..]] {
        let lines = part.lines().filter(|l| l.contains("IoU=")).count();
        assert_eq!(lines, 12, "a 12-line summary: {part}");
    }
    let res = read_json(&run.join("eval_val.json"));
    for k in ["bbox", "segm"] {
        let v = res[k].as_array().unwrap();
        assert_eq!(v.len(), 12);
        assert!(v
            .iter()
            .all(|x| (-1.0..=1.0).contains(&x.as_f64().unwrap())));
    }
    assert_eq!(res["images"], 4);
    let dets = read_json(&run.join("detections_val.json"));
    let dets = dets.as_array().unwrap();
    assert_eq!(res["detections"], dets.len());
    let val_ids: Vec<i64> = read_json(&data().join("val/annotations.json"))["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    for d in dets {
        assert!(cats.contains(&d["category_id"].as_i64().unwrap()), "{d}");
        assert!(val_ids.contains(&d["image_id"].as_i64().unwrap()), "{d}");
        assert_eq!(d["bbox"].as_array().unwrap().len(), 4);
        assert!(
            d["segmentation"]["counts"].is_string(),
            "compressed RLE: {d}"
        );
        assert_eq!(d["segmentation"]["size"], serde_json::json!([64, 64]));
    }
    // the bbox numbers agree with `slmlp coco-eval` on the written file
    let (coco, _) = ok(&[
        "coco-eval",
        "--gt",
        s(&data().join("val/annotations.json")),
        "--dt",
        s(&run.join("detections_val.json")),
        "--iou-type",
        "bbox",
    ]);
    assert_eq!(coco.trim(), out[bbox_at + 5..segm_at].trim());
    // the same evaluation from the COCO 2017 layout
    let coco_eval = tmp.0.join("coco-eval");
    let (again_out, _) = ok(&[
        "detect",
        "eval",
        "--checkpoint",
        s(&run.join("model.safetensors")),
        "--val-ann",
        s(&val_ann),
        "--val-images",
        s(&val_images),
        "--out",
        s(&coco_eval),
    ]);
    assert!(again_out.contains("bbox:"), "{again_out}");
    let again_res = read_json(&coco_eval.join("eval_val.json"));
    assert_eq!(
        (&again_res["bbox"], &again_res["segm"]),
        (&res["bbox"], &res["segm"])
    );

    // predict: a PNG of the image's size
    let img = std::fs::read_dir(data().join("val/images"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let png = tmp.0.join("pred.png");
    ok(&[
        "detect",
        "predict",
        "--checkpoint",
        s(&run.join("model.safetensors")),
        "--image",
        s(&img),
        "--out",
        s(&png),
        "--threshold",
        "0",
    ]);
    let drawn = image::open(&png).unwrap();
    assert_eq!((drawn.width(), drawn.height()), (64, 64));
    assert_ne!(
        drawn.to_rgb8().into_raw(),
        image::open(&img).unwrap().to_rgb8().into_raw(),
        "detections should be drawn on the image"
    );

    // predict --json: the image's detections as COCO results, the entries
    // `detect eval` wrote for that image, and accepted by `coco-eval`
    let file_name = img.file_name().unwrap().to_str().unwrap();
    let image_id = read_json(&data().join("val/annotations.json"))["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["file_name"].as_str().unwrap().ends_with(file_name))
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let json = tmp.0.join("pred.json");
    let probs_path = tmp.0.join("probs.safetensors");
    let id = image_id.to_string();
    let model = run.join("model.safetensors");
    // `detect predict` of the image with its id, writing --json OUT
    let predict = |out: &Path, extra: &[&str]| {
        let base = [
            "detect",
            "predict",
            "--checkpoint",
            s(&model),
            "--image",
            s(&img),
            "--out",
            s(&png),
            "--json",
            s(out),
            "--image-id",
            id.as_str(),
        ];
        ok(&[&base[..], extra].concat());
    };
    predict(&json, &["--mask-probs", s(&probs_path)]);
    let mine = read_json(&json);
    let mine = mine.as_array().unwrap();
    let evals: Vec<&Value> = dets.iter().filter(|d| d["image_id"] == image_id).collect();
    assert!(!mine.is_empty(), "the model should detect something");
    assert_eq!(
        mine.len(),
        evals.len(),
        "predict --json vs detect eval's entries"
    );
    for (a, b) in mine.iter().zip(&evals) {
        assert_eq!(a["image_id"], image_id);
        assert_eq!(a["category_id"], b["category_id"], "{a} vs {b}");
        let nums = |v: &Value, k: &str| -> Vec<f64> {
            match &v[k] {
                Value::Array(x) => x.iter().map(|n| n.as_f64().unwrap()).collect(),
                n => vec![n.as_f64().unwrap()],
            }
        };
        for k in ["bbox", "score"] {
            testutil::assert_close(k, &nums(a, k), &nums(b, k), 1e-4, 1e-4);
        }
        assert!(
            a["segmentation"]["counts"].is_string(),
            "compressed RLE: {a}"
        );
        assert_eq!(a["segmentation"]["size"], serde_json::json!([64, 64]));
    }
    // --mask-probs: the same detections with their pasted probabilities,
    // whose > 0.5 masks are --json's RLE
    let probs = engine::checkpoint::load(&probs_path).unwrap().tensors;
    let k = mine.len();
    assert_eq!(probs["masks"].dims(), [k, 1, 64, 64]);
    assert_eq!(probs["boxes"].dims(), [k, 4]);
    assert_eq!(probs["labels"].dims(), [k]);
    let masks = probs["masks"].to_vec_f64().unwrap();
    assert!(masks.iter().all(|p| (0.0..=1.0).contains(p)));
    let boxes = probs["boxes"].to_vec_f64().unwrap();
    let scores = probs["scores"].to_vec_f64().unwrap();
    for (i, a) in mine.iter().enumerate() {
        let b = &boxes[i * 4..][..4];
        let bbox: Vec<f64> = a["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // JSON's decimal text: equal to the last few bits
        let want = [b[0], b[1], b[2] - b[0], b[3] - b[1], scores[i]];
        let got = [&bbox[..], &[a["score"].as_f64().unwrap()]].concat();
        testutil::assert_close("bbox, score", &got, &want, 0.0, 1e-12);
        let bin: Vec<u8> = masks[i * 64 * 64..][..64 * 64]
            .iter()
            .map(|&p| u8::from(p > 0.5))
            .collect();
        assert_eq!(
            models::detection::Rle::encode(&bin, 64, 64)
                .unwrap()
                .to_compressed(),
            a["segmentation"]["counts"].as_str().unwrap()
        );
    }
    // --device: on a GPU the same detections as the CPU's; without one,
    // every detect command gives the probe's error before reading data
    let predict_on = |device: &str| {
        let out = tmp.0.join(format!("pred-{device}.json"));
        predict(&out, &["--device", device]);
        read_json(&out)
    };
    assert!(
        predict_on("cpu").as_array().unwrap() == mine,
        "--device cpu changed the detections"
    );
    if engine::cuda::probe(0).is_ok() {
        let gpu = predict_on("cuda");
        let gpu = gpu.as_array().unwrap();
        assert_eq!(gpu.len(), mine.len(), "detections on the GPU vs the CPU");
        for (a, b) in gpu.iter().zip(mine) {
            assert_eq!(a["category_id"], b["category_id"], "{a} vs {b}");
            let nums = |v: &Value| -> Vec<f64> {
                let mut n: Vec<f64> = v["bbox"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                n.push(v["score"].as_f64().unwrap());
                n
            };
            testutil::assert_close("GPU bbox, score", &nums(a), &nums(b), 1e-2, 1e-3);
        }
    } else {
        for cmd in [
            vec![
                "detect",
                "train",
                "--data",
                s(data()),
                "--out",
                s(&again),
                "--overwrite",
            ],
            vec![
                "detect",
                "eval",
                "--checkpoint",
                s(&model),
                "--data",
                s(data()),
            ],
            vec![
                "detect",
                "predict",
                "--checkpoint",
                s(&model),
                "--image",
                s(&img),
                "--out",
                s(&png),
            ],
        ] {
            fails(&[&cmd[..], &["--device", "cuda"]].concat(), &["cuda:0"]);
        }
    }
    for iou in ["bbox", "segm"] {
        let (summary, _) = ok(&[
            "coco-eval",
            "--gt",
            s(&data().join("val/annotations.json")),
            "--dt",
            s(&json),
            "--iou-type",
            iou,
        ]);
        assert!(summary.contains("Average Precision"), "{summary}");
    }

    // resuming a finished run changes nothing
    let before = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let (_, err) = train(&run, &["--epochs", "1", "--resume"]);
    assert!(err.contains("resumed at step 4/4"), "{err}");
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(),
        before
    );
    // ...and with more epochs continues from step 4
    let (_, err) = train(&run, &["--epochs", "2", "--resume"]);
    assert!(err.contains("resumed at step 4/8"), "{err}");
    let m3 = metrics(&run);
    assert_eq!(m3.len(), 10);
    assert_eq!(&m3[..5], &m[..]);
    assert_eq!(m3[5]["step"], 5);
    assert_eq!(m3[9]["epoch"], 2);
    // a resume with another architecture is refused: by the recorded
    // options, and with --resume-force by the checkpoint's shapes
    let mut args = vec!["detect", "train", "--data", s(data()), "--out", s(&run)];
    args.extend(small("8"));
    args.extend(["--epochs", "3", "--resume"]);
    fails(
        &args,
        &["--width \"4\" (this run: \"8\")", "--resume-force"],
    );
    args.push("--resume-force");
    fails(
        &args,
        &["checkpoint.safetensors", "backbone.body.conv1.weight"],
    );
    // the COCO layout's flags go in pairs, and not with --data
    let mut half = vec![
        "detect",
        "train",
        "--train-ann",
        s(&train_ann),
        "--out",
        s(&again),
    ];
    half.extend(small("4"));
    fails(&half, &["--train-images"]);
    let mut both = half.clone();
    both.extend(["--train-images", s(&train_images), "--data", s(data())]);
    fails(&both, &["--data"]);
}

#[test]
fn backbone_from_pretrain() {
    let tmp = TempDir::new("detect-backbone");
    let pre = tmp.0.join("pre");
    let pretrain_stem =
        |out: &Path, stem: &str| pretrain(out, &["--stem", stem, "--per-class", "2"]);
    pretrain_stem(&pre, "imagenet");
    let run = tmp.0.join("run");
    let model = pre.join("model.safetensors");
    train(&run, &["--epochs", "1", "--quiet", "--backbone", s(&model)]);
    let enc = engine::checkpoint::load(&model).unwrap();
    let det = engine::checkpoint::load(&run.join("model.safetensors")).unwrap();
    // Fashion-MNIST is gray: the detector takes 1-channel images
    assert_eq!(det.metadata["detect.channels"], "1");
    // conv1 and layer1 are frozen (3 trainable layers): still the encoder's
    for k in ["conv1.weight", "layer1.0.conv1.weight", "bn1.running_mean"] {
        assert_eq!(
            enc.tensors[k].to_vec_f64().unwrap(),
            det.tensors[&format!("backbone.body.{k}")]
                .to_vec_f64()
                .unwrap(),
            "{k}"
        );
    }
    let mut args = vec!["detect", "train", "--data", s(data()), "--out", s(&run)];
    args.extend(small("4"));
    let with = |extra: &[&'static str]| {
        let mut a = args.clone();
        a.extend(["--backbone", s(&model)]);
        a.extend(extra);
        a
    };
    fails(&with(&["--channels", "3"]), &["--channels 3", "1-channel"]);
    let mut wide = vec!["detect", "train", "--data", s(data()), "--out", s(&run)];
    wide.extend(small("8"));
    wide.extend(["--backbone", s(&model)]);
    fails(&wide, &["conv1.weight", "[4, 1, 7, 7]", "[8, 1, 7, 7]"]);
    let cifar = tmp.0.join("cifar");
    pretrain_stem(&cifar, "cifar");
    let mut a = args.clone();
    let cm = cifar.join("model.safetensors");
    a.extend(["--backbone", s(&cm)]);
    fails(&a, &["imagenet stem"]);
}

#[test]
fn bad_paths_give_clear_errors() {
    let tmp = TempDir::new("detect-bad");
    let nowhere = tmp.0.join("nowhere");
    let out = tmp.0.join("out");
    fails(
        &["detect", "train", "--data", s(&nowhere), "--out", s(&out)],
        &["train/annotations.json", "detection-data"],
    );
    // `detect train` on the benchmark into `out` with `extra` fails naming `needles`
    let train_fails = |extra: &[&str], needles: &[&str]| {
        let mut args = vec!["detect", "train", "--data", s(data()), "--out", s(&out)];
        args.extend(extra);
        fails(&args, needles);
    };
    train_fails(&["--resume"], &["--resume", "nothing to resume"]);
    train_fails(
        &["--backbone", s(&nowhere)],
        &["--backbone", "no such file"],
    );
    fails(
        &[
            "detect",
            "eval",
            "--checkpoint",
            s(&nowhere),
            "--data",
            s(data()),
        ],
        &["--checkpoint", "no such file"],
    );
    fails(
        &[
            "detect",
            "predict",
            "--checkpoint",
            s(&nowhere),
            "--image",
            s(&nowhere),
            "--out",
            s(&out),
        ],
        &["no such file"],
    );
    // a pretrain model is not a detector
    let pre = tmp.0.join("pre");
    pretrain(&pre, &["--per-class", "1"]);
    fails(
        &[
            "detect",
            "eval",
            "--checkpoint",
            s(&pre.join("model.safetensors")),
            "--data",
            s(data()),
        ],
        &["detect.", "slmlp detect train"],
    );
}

/// `detect train --init`: a whole detector as the start, its class heads
/// left out when the number of classes changes, the rest loaded (checked on
/// the frozen stem, which training does not move, with another seed than
/// the source's); a shape mismatch names the flags.
#[test]
fn init_from_a_whole_detector() {
    let tmp = TempDir::new("detect-init");
    let src = tmp.0.join("src");
    train(&src, &["--epochs", "1"]);
    let three = tmp.0.join("data3");
    ok(&[
        "detection-data",
        "--out",
        s(&three),
        "--train",
        "4",
        "--val",
        "2",
        "--canvas",
        "64",
        "--classes",
        "0,1,2",
    ]);
    // the benchmark lists every Fashion-MNIST category: keep the ones the
    // training split uses, in both splits
    let read = |split: &str| -> serde_json::Value {
        let path = three.join(split).join("annotations.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let used: std::collections::BTreeSet<i64> = read("train")["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["category_id"].as_i64().unwrap())
        .collect();
    for split in ["train", "val"] {
        let mut v = read(split);
        v["categories"]
            .as_array_mut()
            .unwrap()
            .retain(|c| used.contains(&c["id"].as_i64().unwrap()));
        v["annotations"]
            .as_array_mut()
            .unwrap()
            .retain(|a| used.contains(&a["category_id"].as_i64().unwrap()));
        std::fs::write(three.join(split).join("annotations.json"), v.to_string()).unwrap();
    }
    let kept = used.len();
    assert!((1..=3).contains(&kept), "{kept} categories used");
    let dst = tmp.0.join("dst");
    let from = src.join("model.safetensors");
    let mut args = vec!["detect", "train", "--data", s(&three), "--out", s(&dst)];
    args.extend(small("4"));
    args.extend(["--epochs", "1", "--seed", "1", "--init", s(&from)]);
    ok(&args);
    let a = engine::checkpoint::load(&from).unwrap();
    let b = engine::checkpoint::load(&dst.join("model.safetensors")).unwrap();
    let stem = "backbone.body.conv1.weight";
    assert_eq!(
        a.tensors[stem].to_vec_f64().unwrap(),
        b.tensors[stem].to_vec_f64().unwrap(),
        "{stem} loaded"
    );
    let cls = "roi_heads.box_predictor.cls_score.weight";
    assert_eq!(a.tensors[cls].dims(), [11, 32]);
    assert_eq!(
        b.tensors[cls].dims(),
        [kept + 1, 32],
        "a fresh {kept}-class head"
    );
    // another width than the --init detector's is refused, naming the flags
    let mut args = vec!["detect", "train", "--data", s(&three), "--out", s(&dst)];
    args.extend(small("8"));
    args.extend(["--epochs", "1", "--init", s(&from)]);
    fails(&args, &["--init", "--width"]);
}

/// `--precision`: f16 training (dynamic loss scale, saved with the
/// checkpoint and resumed), bf16 evaluation and prediction, and the f32
/// weights they all keep; a resume in another precision is refused.
#[test]
fn precision_flags() {
    let tmp = TempDir::new("detect-precision");
    let out = tmp.0.join("f16");
    train(&out, &["--epochs", "1", "--precision", "f16"]);
    let steps: Vec<Value> = metrics(&out)
        .into_iter()
        .filter(|m| m["kind"] == "step")
        .collect();
    assert!(!steps.is_empty());
    for m in &steps {
        assert!(
            m["skipped"].is_boolean(),
            "f16 steps say whether they were skipped: {m}"
        );
        for l in LOSSES {
            assert!(m[l].as_f64().is_some_and(f64::is_finite), "{l} in {m}");
        }
    }
    let ck = engine::checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    assert!(
        ck.tensors.values().all(|t| t.dtype() != engine::DType::F16),
        "weights and momentum stay f32"
    );
    let scale: f64 = ck.metadata["extra.loss_scale"].parse().unwrap();
    assert!(scale > 0.0 && scale <= 65536.0, "loss scale {scale}");
    // one more epoch from the checkpoint, in f16 only
    train(&out, &["--epochs", "2", "--precision", "f16", "--resume"]);
    let mut args = vec!["detect", "train", "--data", s(data()), "--out", s(&out)];
    args.extend(small("4"));
    args.extend(["--epochs", "3", "--resume"]);
    fails(&args, &["precision"]);

    let model = out.join("model.safetensors");
    let ev = tmp.0.join("eval");
    ok(&[
        "detect",
        "eval",
        "--checkpoint",
        s(&model),
        "--data",
        s(data()),
        "--out",
        s(&ev),
        "--precision",
        "bf16",
    ]);
    let e = read_json(&ev.join("eval_val.json"));
    assert!(e["bbox"].as_array().is_some_and(|a| a.len() == 12), "{e}");
    let image = std::fs::read_dir(data().join("val/images"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    ok(&[
        "detect",
        "predict",
        "--checkpoint",
        s(&model),
        "--image",
        s(&image),
        "--out",
        s(&tmp.0.join("p.png")),
        "--precision",
        "bf16",
    ]);
    fails(
        &[
            "detect",
            "eval",
            "--checkpoint",
            s(&model),
            "--data",
            s(data()),
            "--precision",
            "f8",
        ],
        &["precision"],
    );
}
