//! The `slmlp` binary as a user runs it: every subcommand end to end on
//! small data, the files each one promises, and clear errors on bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

fn slmlp(args: &[&str]) -> (i32, String, String) {
    slmlp_env(args, &[])
}

fn slmlp_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slmlp"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run slmlp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn ok(args: &[&str]) -> String {
    ok_err(args).0
}

/// Runs a command that must succeed; its stdout and stderr.
fn ok_err(args: &[&str]) -> (String, String) {
    let (code, out, err) = slmlp(args);
    assert_eq!(code, 0, "slmlp {args:?}\nstdout: {out}\nstderr: {err}");
    (out, err)
}

fn fails(args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let (code, out, err) = slmlp_env(args, env);
    testutil::assert_clean_failure(&format!("slmlp {args:?}"), code, &out, &err, needles);
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("slmlp-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const SMALL: &[&str] = &[
    "--arch",
    "resnet18",
    "--width",
    "4",
    "--data",
    "synthetic",
    "--per-class",
    "12",
    "--batch",
    "16",
];

fn pretrain(dir: &Path, method: &str, extra: &[&str]) {
    ok(&[
        &[
            "pretrain",
            "--method",
            method,
            "--epochs",
            "2",
            "--out",
            s(dir),
        ],
        SMALL,
        extra,
    ]
    .concat());
}

#[test]
fn pretrain_writes_metrics_checkpoints_and_refuses_a_mismatched_resume() {
    let dir = tmp("pretrain");
    pretrain(&dir, "sl-mlp", &["--checkpoint-every", "3"]);
    for f in [
        "metrics.jsonl",
        "checkpoint.safetensors",
        "model.safetensors",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    // 120 images / batch 16 = 7 steps per epoch, 2 epochs
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let kinds: Vec<String> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "step").count(), 14);
    assert_eq!(kinds.iter().filter(|k| *k == "epoch").count(), 2);
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let acc = last["val_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{last}");

    // resuming a finished run does nothing and keeps the records
    ok(&[
        &[
            "pretrain",
            "--method",
            "sl-mlp",
            "--epochs",
            "2",
            "--resume",
            "--out",
            s(&dir),
        ],
        SMALL,
    ]
    .concat());
    assert_eq!(
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
        metrics
    );
    // a different schedule cannot continue this run
    fails(
        &[
            &[
                "pretrain",
                "--method",
                "sl-mlp",
                "--epochs",
                "3",
                "--resume",
                "--out",
                s(&dir),
            ],
            SMALL,
        ]
        .concat(),
        &[],
        &["checkpoint.safetensors", "total_steps"],
    );
    // every resolved option is recorded; every step record has the
    // timings and the host's peak memory (no GPU peak on the CPU)
    let args: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("args.json")).unwrap()).unwrap();
    assert_eq!(args["command"]["name"], "pretrain");
    let options = &args["command"]["options"];
    for (k, v) in [
        ("lr", "0.1"),
        ("width", "4"),
        ("data", "synthetic"),
        ("epochs", "2"),
    ] {
        assert_eq!(options[k], v, "{k}: {args}");
    }
    assert_eq!(args["version"], env!("CARGO_PKG_VERSION"));
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for k in ["data_s", "step_s", "wall_s", "host_peak_rss_bytes"] {
        assert!(first[k].as_f64().is_some_and(|v| v >= 0.0), "{k}: {first}");
    }
    assert!(first.get("gpu_peak_bytes").is_none(), "{first}");
    // other hyperparameters cannot continue the run unless forced
    let resume_lr = |extra: &[&'static str]| {
        [
            &[
                "pretrain", "--method", "sl-mlp", "--epochs", "2", "--resume", "--lr", "0.05",
                "--out",
            ],
            &[s(&dir)][..],
            SMALL,
            extra,
        ]
        .concat()
    };
    fails(
        &resume_lr(&[]),
        &[],
        &["--lr \"0.1\" (this run: \"0.05\")", "--resume-force"],
    );
    let (code, _, err) = slmlp(&resume_lr(&["--resume-force"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("--resume-force: resuming although --lr"),
        "{err}"
    );
    // a second run while one holds the folder is refused: this test's
    // process stands in for a live run
    let lock = dir.join(".slmlp.lock");
    std::fs::write(&lock, std::process::id().to_string()).unwrap();
    fails(
        &resume_lr(&["--resume-force"]),
        &[],
        &["in use by process", ".slmlp.lock"],
    );
    std::fs::remove_file(&lock).unwrap();
    // a new run into the used folder needs --overwrite, which starts afresh
    let new_run = |extra: &[&'static str]| {
        [
            &["pretrain", "--method", "sl", "--epochs", "1", "--out"],
            &[s(&dir)][..],
            SMALL,
            extra,
        ]
        .concat()
    };
    fails(&new_run(&[]), &[], &["not empty", "--overwrite"]);
    ok(&new_run(&["--overwrite", "--quiet", "--no-val"]));
    let rerun = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        rerun.lines().count(),
        8,
        "7 steps + 1 epoch, nothing appended"
    );
    assert!(!lock.exists());

    // nothing to resume
    let empty = tmp("pretrain-empty");
    fails(
        &[&["pretrain", "--resume", "--out", s(&empty)], SMALL].concat(),
        &[],
        &["nothing to resume"],
    );
}

#[test]
fn transfer_analyze_and_forward_on_pretrained_encoders() {
    let (sl, mlp) = (tmp("sl"), tmp("mlp"));
    pretrain(&sl, "sl", &[]);
    pretrain(&mlp, "sl-mlp", &[]);
    let sl_model = sl.join("model.safetensors");
    let mlp_model = mlp.join("model.safetensors");

    let json = mlp.join("transfer.json");
    let out = ok(&[
        "transfer",
        "--checkpoint",
        s(&mlp_model),
        "--data",
        "synthetic",
        "--per-class",
        "10",
        "--classes",
        "5-9",
        "--mode",
        "linear,knn,finetune",
        "--finetune-epochs",
        "1",
        "--batch",
        "16",
        "--probe-epochs",
        "5",
        "--k",
        "5",
        "--out",
        s(&json),
    ]);
    assert!(
        out.contains("linear probe") && out.contains("k-NN") && out.contains("fine-tune"),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in ["linear_test_accuracy", "knn_accuracy", "finetune_accuracy"] {
        let a = v[k].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&a), "{k}: {v}");
    }
    assert_eq!(v["classes"].as_array().unwrap().len(), 5);

    let plot = sl.join("tsne.png");
    let metrics = sl.join("analyze.json");
    let out = ok(&[
        "analyze",
        "--checkpoint",
        s(&sl_model),
        "--checkpoint",
        s(&mlp_model),
        "--data",
        "synthetic:test",
        "--per-class",
        "10",
        "--plot",
        s(&plot),
        "--plot-per-class",
        "8",
        "--perplexity",
        "5",
        "--out",
        s(&metrics),
    ]);
    assert!(
        out.contains("discriminative ratio") && out.contains("SL-MLP"),
        "{out}"
    );
    assert!(std::fs::read(&plot).unwrap().starts_with(b"\x89PNG"));
    // the t-SNE coordinates beside the picture: 8 points x 10 classes x 2 panels
    let csv = std::fs::read_to_string(sl.join("tsne.csv")).unwrap();
    let mut rows = csv.lines();
    assert_eq!(rows.next(), Some("panel,index,class,x,y"));
    let rows: Vec<Vec<&str>> = rows.map(|r| r.split(',').collect()).collect();
    assert_eq!(rows.len(), 160);
    assert!(rows
        .iter()
        .all(|r| r.len() == 5 && r[3].parse::<f64>().unwrap().is_finite()));

    // eval: Acc@1 is the last epoch's validation accuracy (same images,
    // same transform), Acc@5 is at least that
    let eval_json = sl.join("eval.json");
    let out = ok(&[
        "eval",
        "--checkpoint",
        s(&sl_model),
        "--data",
        "synthetic:test",
        "--out",
        s(&eval_json),
    ]);
    assert!(out.contains("Acc@1") && out.contains("Acc@5"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&eval_json).unwrap()).unwrap();
    let last_epoch: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(sl.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let val = 100.0 * last_epoch["val_accuracy"].as_f64().unwrap();
    let (acc1, acc5) = (v["acc1"].as_f64().unwrap(), v["acc5"].as_f64().unwrap());
    assert!((acc1 - val).abs() < 1e-9, "Acc@1 {acc1} vs val {val}");
    assert!(acc5 >= acc1 && acc5 <= 100.0, "{v}");
    fails(
        &[
            "eval",
            "--checkpoint",
            s(&sl_model),
            "--data",
            "fashion-mnist:test",
            "--classes",
            "Bag",
        ],
        &[],
        &["checkpoint", "--classes"],
    );

    // plot: both runs' curves in one PNG
    let curves = sl.join("curves.png");
    let out = ok(&["plot", s(&sl), s(&mlp), "--output", s(&curves)]);
    assert!(out.contains("2 runs"), "{out}");
    let png = image::open(&curves).unwrap();
    assert!(png.width() >= 1000 && png.height() >= 1000);
    fails(&["plot", s(&tmp("no-run"))], &[], &["metrics.jsonl"]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2);

    // forward: logits, features and every layer's output of an input file
    let input = sl.join("input.safetensors");
    let x = engine::Tensor::randn(
        &[2, 1, 28, 28],
        0.0,
        1.0,
        engine::DType::F32,
        &mut engine::Rng::new(3),
    );
    engine::checkpoint::save(&input, &[("input".to_string(), x)], &Default::default()).unwrap();
    let output = sl.join("out.safetensors");
    ok(&[
        "forward",
        "--checkpoint",
        s(&mlp_model),
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--dump-activations",
    ]);
    let got = engine::checkpoint::load(&output).unwrap().tensors;
    assert_eq!(got["logits"].dims(), [2, 10]);
    assert_eq!(got["features"].dims(), [2, 32]);
    for name in [
        "act.relu",
        "act.layer1.0",
        "act.layer4.1",
        "act.avgpool",
        "act.projector.2",
        "act.fc",
    ] {
        assert!(
            got.contains_key(name),
            "{name} missing: {:?}",
            got.keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(
        got["act.fc"].to_vec::<f32>().unwrap(),
        got["logits"].to_vec::<f32>().unwrap()
    );
    // the same batch in bf16 on the CPU, and on the GPU (f32 and bf16) where
    // there is one; without one, --device cuda is the probe's error naming it
    let logits = |extra: &[&str]| {
        let o = sl.join("out2.safetensors");
        let base = [
            "forward",
            "--checkpoint",
            s(&mlp_model),
            "--input",
            s(&input),
            "--output",
            s(&o),
        ];
        ok(&[&base[..], extra].concat());
        let t = engine::checkpoint::load(&o).unwrap().tensors;
        assert_eq!(t["logits"].dtype(), engine::DType::F32);
        t["logits"].to_vec::<f32>().unwrap()
    };
    let f32_logits = got["logits"].to_vec::<f32>().unwrap();
    let close = |got: &[f32], rel: f32| {
        let scale = f32_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(&f32_logits) {
            assert!((a - b).abs() <= rel * scale, "{a} vs {b} (scale {scale})");
        }
    };
    // bf16 keeps 8 bits: ~20 rounded layers move logits by a few % of their scale
    close(&logits(&["--precision", "bf16"]), 0.1);
    if engine::cuda::probe(0).is_ok() {
        close(&logits(&["--device", "cuda"]), 1e-3);
        close(&logits(&["--device", "cuda", "--precision", "bf16"]), 0.1);
    } else {
        for cmd in [
            &["forward", "--input", s(&input), "--output", s(&output)][..],
            &["transfer", "--data", "synthetic", "--per-class", "4"],
            &["analyze", "--data", "synthetic:test", "--per-class", "4"],
        ] {
            fails(
                &[cmd, &["--checkpoint", s(&sl_model), "--device", "cuda"]].concat(),
                &[],
                &["cuda:0"],
            );
        }
    }

    // bad inputs name what is wrong
    let corrupt = sl.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"not a checkpoint").unwrap();
    fails(
        &[
            "transfer",
            "--checkpoint",
            s(&corrupt),
            "--data",
            "synthetic",
        ],
        &[],
        &["corrupt.safetensors"],
    );
    fails(
        &[
            "forward",
            "--checkpoint",
            s(&sl_model),
            "--input",
            s(&corrupt),
            "--output",
            s(&output),
        ],
        &[],
        &["corrupt.safetensors"],
    );
    fails(
        &[
            "transfer",
            "--checkpoint",
            s(&sl_model),
            "--data",
            "synthetic",
            "--classes",
            "Sandal",
        ],
        &[],
        &["Sandal", "class0"],
    );
}

#[test]
fn bad_arguments_and_missing_data_are_clear_errors() {
    let out = tmp("bad");
    // no GPU here: the probe's error naming the device; with one, the
    // device test below trains on it
    if engine::cuda::probe(0).is_err() {
        fails(
            &[&["pretrain", "--device", "cuda", "--out", s(&out)], SMALL].concat(),
            &[],
            &["cuda:0"],
        );
    } else {
        eprintln!("skipped: --device cuda without a GPU (a GPU is present)");
    }
    fails(
        &[&["pretrain", "--precision", "f8", "--out", s(&out)], SMALL].concat(),
        &[],
        &["f8"],
    );
    fails(
        &["pretrain", "--data", "imagenet", "--out", s(&out)],
        &[],
        &["imagenet", "fashion-mnist"],
    );
    fails(
        &[
            "pretrain",
            "--data",
            "folder:/nonexistent/slmlp",
            "--out",
            s(&out),
        ],
        &[],
        &["/nonexistent/slmlp"],
    );
    fails(
        &["pretrain", "--data", "fashion-mnist", "--out", s(&out)],
        &[("SLMLP_FASHION_MNIST", "/nonexistent/fm")],
        &["/nonexistent/fm", "fetch-data.sh"],
    );
    fails(
        &[&["pretrain", "--projector", "0", "--out", s(&out)], SMALL].concat(),
        &[],
        &["projector"],
    );
    // a CUDA graph step needs a GPU model
    fails(
        &[
            &[
                "pretrain",
                "--device",
                "cpu",
                "--cuda-graph",
                "--out",
                s(&out),
            ],
            SMALL,
        ]
        .concat(),
        &[],
        &["CUDA graph", "not a GPU"],
    );
    let (code, out, _) = slmlp(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["pretrain", "transfer", "analyze", "forward", "experiment"] {
        assert!(out.contains(sub), "--help should list {sub}: {out}");
    }
}

/// The README's study on a few hundred real images for one epoch: every
/// output file appears, the table has both methods, and `--resume` keeps
/// the finished runs and reproduces the same numbers.
#[test]
fn experiment_produces_every_output_file() {
    let dir = tmp("experiment");
    let tiny = [
        "--width",
        "4",
        "--epochs",
        "1",
        "--per-class",
        "40",
        "--transfer-per-class",
        "20",
        "--eval-per-class",
        "20",
        "--plot-per-class",
        "10",
        "--batch",
        "32",
    ];
    let out = ok(&[&["experiment", "--quick", "--out", s(&dir)], &tiny[..]].concat());
    assert!(out.contains("| quantity | SL | SL-MLP |"), "{out}");
    for f in [
        "results.md",
        "results.json",
        "tsne_unseen_test.png",
        "tsne_seen_test.png",
        "tsne_mnist_test.png",
        "tsne_digits_test.png",
        "split0/seed0/sl.json",
        "split0/seed0/sl/model.safetensors",
        "split0/seed0/sl-mlp/model.safetensors",
        "split0/seed0/sl/metrics.jsonl",
        "split0/seed0/sl-mlp/checkpoint.safetensors",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let read = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
    };
    let v = read();
    assert!(v["provenance"]["machine"]["logical_cores"]
        .as_u64()
        .is_some());
    for k in [
        "transfer",
        "unseen.linear",
        "unseen.knn",
        "mnist.linear",
        "digits.knn",
        "digits.linear_raw",
        "seen.phi",
        "unseen.redundancy",
        "mnist.distance",
    ] {
        let c = &v["comparison"][k];
        for side in ["a", "b"] {
            let x = c[side]["mean"].as_f64();
            assert!(x.is_some_and(f64::is_finite), "{k}: {c}");
        }
    }
    assert_eq!(v["comparison"]["transfer"]["kind"], "primary");
    let (_, err) = ok_err(
        &[
            &["experiment", "--quick", "--resume", "--out", s(&dir)],
            &tiny[..],
        ]
        .concat(),
    );
    assert_eq!(err.matches("kept the finished run").count(), 2, "{err}");
    assert_eq!(read()["comparison"], v["comparison"]);
}

/// `--image-size` and `--stem` reach pretraining and every measurement:
/// the trained networks record them, and the results' settings too.
#[test]
fn experiment_at_another_input_size() {
    let dir = tmp("experiment-size");
    ok(&[
        "experiment",
        "--quick",
        "--out",
        s(&dir),
        "--width",
        "4",
        "--epochs",
        "1",
        "--per-class",
        "20",
        "--transfer-per-class",
        "10",
        "--eval-per-class",
        "10",
        "--plot-per-class",
        "10",
        "--batch",
        "32",
        "--image-size",
        "40",
        "--stem",
        "imagenet",
    ]);
    for m in ["sl", "sl-mlp"] {
        let meta =
            engine::checkpoint::load(&dir.join(format!("split0/seed0/{m}/model.safetensors")))
                .unwrap()
                .metadata;
        assert_eq!(
            meta.get("data.size").map(String::as_str),
            Some("40"),
            "{m}: {meta:?}"
        );
        assert!(
            meta.values()
                .any(|v| v.contains("ImageNet") || v == "imagenet"),
            "{m}: {meta:?}"
        );
    }
    fails(
        &[
            "experiment",
            "--detection",
            "--image-size",
            "40",
            "--out",
            s(&dir),
        ],
        &[],
        &["--image-size"],
    );
}

/// `--ablation` trains every projector variant once (the matched-parameter
/// control reuses SL-MLP's network) and `--curve` measures every epoch.
#[test]
fn experiment_ablation_and_curve() {
    let tiny = [
        "--width",
        "4",
        "--per-class",
        "30",
        "--transfer-per-class",
        "10",
        "--eval-per-class",
        "10",
        "--batch",
        "32",
        "--seeds",
        "1",
    ];
    let dir = tmp("ablation");
    let out = ok(&[
        &[
            "experiment",
            "--ablation",
            "--epochs",
            "1",
            "--out",
            s(&dir),
        ],
        &tiny[..],
    ]
    .concat());
    assert!(out.contains("matched-parameter SL"), "{out}");
    for v in [
        "sl",
        "linear",
        "linear-relu",
        "sl-mlp",
        "two-blocks",
        "hidden-2d",
    ] {
        assert!(
            dir.join(format!("split0/seed0/{v}/model.safetensors"))
                .is_file(),
            "{v}"
        );
    }
    assert!(!dir.join("split0/seed0/sl-mlp-kept").exists());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ablation.json")).unwrap()).unwrap();
    assert_eq!(
        v["comparisons"].as_object().unwrap().len(),
        6,
        "{}",
        v["comparisons"]
    );
    let dir = tmp("curve");
    let out = ok(&[
        &["experiment", "--curve", "--epochs", "2", "--out", s(&dir)],
        &tiny[..],
    ]
    .concat());
    assert!(out.contains("| 2 |"), "{out}");
    assert!(
        dir.join("curve.png").is_file()
            && dir
                .join("split0/seed0/sl/model-epoch1.safetensors")
                .is_file()
    );
}

#[test]
fn coco_eval_prints_pycocotools_summary() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/coco_eval");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("mixed_expected.json")).unwrap())
            .unwrap();
    let gt = fx.join("mixed_gt.json");
    for e in expected["evals"].as_array().unwrap() {
        let (iou, dt) = (
            e["iou_type"].as_str().unwrap(),
            fx.join(e["dt"].as_str().unwrap()),
        );
        let out = ok(&[
            "coco-eval",
            "--gt",
            s(&gt),
            "--dt",
            s(&dt),
            "--iou-type",
            iou,
        ]);
        assert_eq!(out.lines().count(), 12, "{out}");
        let want = e["summary"].as_str().unwrap();
        assert_eq!(
            out.trim_end(),
            want.trim_end(),
            "{iou} summary differs from pycocotools'"
        );
    }
    let dt = fx.join("mixed_dt.json");
    let bad = tmp("coco");
    std::fs::create_dir_all(&bad).unwrap();
    let broken = bad.join("gt.json");
    std::fs::write(
        &broken,
        r#"{"images": [{"id": 1}], "annotations": [], "categories": []}"#,
    )
    .unwrap();
    fails(
        &["coco-eval", "--gt", s(&broken), "--dt", s(&dt)],
        &[],
        &["gt.json", "images[0]"],
    );
}

/// The built-in detection benchmark, then COCO evaluation of its own ground
/// truth as detections: every AP and AR@100 is 1 (or -1 where an area
/// range has no objects).
#[test]
fn detection_data_round_trips_through_coco_eval() {
    let dir = tmp("detdata");
    let out = ok(&[
        "detection-data",
        "--out",
        s(&dir),
        "--train",
        "6",
        "--val",
        "3",
        "--seed",
        "4",
    ]);
    assert!(
        out.contains("train: 6 images") && out.contains("val: 3 images"),
        "{out}"
    );
    let gt_path = dir.join("val/annotations.json");
    let gt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&gt_path).unwrap()).unwrap();
    for img in gt["images"].as_array().unwrap() {
        let f = dir
            .join("val/images")
            .join(img["file_name"].as_str().unwrap());
        assert!(
            std::fs::read(&f).unwrap().starts_with(b"\x89PNG"),
            "{}",
            f.display()
        );
    }
    let dets: Vec<serde_json::Value> = gt["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            serde_json::json!({"image_id": a["image_id"], "category_id": a["category_id"],
                "bbox": a["bbox"], "segmentation": a["segmentation"], "score": 1.0})
        })
        .collect();
    assert!(!dets.is_empty());
    let dt_path = dir.join("dets.json");
    std::fs::write(&dt_path, serde_json::to_string(&dets).unwrap()).unwrap();
    for iou in ["bbox", "segm"] {
        let out = ok(&[
            "coco-eval",
            "--gt",
            s(&gt_path),
            "--dt",
            s(&dt_path),
            "--iou-type",
            iou,
        ]);
        // AP and AR@100 are perfect; AR@1 and AR@10 are capped by the
        // number of objects per image
        for line in out
            .lines()
            .filter(|l| l.contains("(AP)") || l.contains("maxDets=100"))
        {
            let v: f64 = line.rsplit('=').next().unwrap().trim().parse().unwrap();
            assert!(v == 1.0 || v == -1.0, "{iou}: {line}");
        }
        assert!(out.lines().next().unwrap().ends_with("= 1.000"), "{out}");
    }
}

#[test]
fn device_auto_falls_back_to_the_cpu_with_one_notice() {
    if engine::cuda::probe(0).is_ok() {
        eprintln!("skipped: a GPU is present, so --device auto does not fall back (the device test trains on it)");
        return;
    }
    let out = tmp("auto");
    let (code, stdout, err) = slmlp(
        &[
            &[
                "pretrain",
                "--device",
                "auto",
                "--epochs",
                "1",
                "--no-val",
                "--quiet",
                "--out",
                s(&out),
            ],
            SMALL,
        ]
        .concat(),
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {err}");
    let notices: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("--device auto"))
        .collect();
    assert_eq!(notices.len(), 1, "{err}");
    assert!(notices[0].contains("CPU"), "{err}");
    assert!(out.join("model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn augmentation_on_the_device_trains_the_same_weights_as_on_the_host() {
    // generated images (uploaded per batch) and a Fashion-MNIST subset (the
    // in-memory dataset resident on the device); the CPU stands in for the
    // device, running the same op the GPU runs
    let fashion = [
        "--data",
        "fashion-mnist",
        "--classes",
        "0-3",
        "--per-class",
        "6",
    ];
    for (tag, data) in [("synthetic", &[][..]), ("fashion", &fashion[..])] {
        let weights = |on: &str| {
            let dir = tmp(&format!("augment-{tag}-{on}"));
            let (_, err) = ok_err(
                &[
                    &[
                        "pretrain", "--method", "sl-mlp", "--epochs", "1", "--no-val",
                    ][..],
                    &["--augment-on", on, "--out", s(&dir)],
                    SMALL,
                    data,
                ]
                .concat(),
            );
            assert_eq!(err.contains("augmentation on cpu"), on == "device", "{err}");
            if on == "device" {
                let how = if tag == "fashion" {
                    "resident"
                } else {
                    "uploaded per batch"
                };
                assert!(err.contains(how), "{err}");
            }
            let ck = engine::checkpoint::load(&dir.join("model.safetensors")).unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            ck.tensors
        };
        let (host, device) = (weights("host"), weights("device"));
        assert!(!host.is_empty());
        for (name, t) in &host {
            assert_eq!(
                t.to_vec_f64().unwrap(),
                device[name].to_vec_f64().unwrap(),
                "{tag}: {name}"
            );
        }
    }
}
