//! `experiment --detection` end to end at toy sizes: two encoders
//! pretrained on Fashion-MNIST, three Mask R-CNN fine-tunings and their COCO
//! evaluation, and the result files with one table row per backbone.

use engine::amp::Precision;
use models::experiment_detection::{detection_experiment, DetectionConfig, BACKBONES};

fn micro_config(out: std::path::PathBuf) -> DetectionConfig {
    DetectionConfig {
        out,
        quick: true,
        seeds: 1,
        first_seed: 3,
        seen: vec![0, 1, 2, 3, 4],
        arch: "resnet18".into(),
        width: 4,
        pretrain_epochs: 1,
        pretrain_per_class: Some(16),
        pretrain_size: 32,
        pretrain_batch: 40,
        pretrain_lr: 0.1,
        precision: Precision::F32,
        device: models::device::DeviceArg::Cpu,
        train_canvases: 6,
        val_canvases: 3,
        canvas: 64,
        det_epochs: 1,
        det_batch: 2,
        det_lr: 0.01,
        det_warmup_steps: 2,
        fpn_channels: 8,
        representation_size: 16,
        trainable_layers: 5,
        min_size: 64,
        max_size: 107,
        workers: 1,
        quiet: true,
        resume: false,
    }
}

#[test]
fn micro_detection_experiment_writes_the_ap_table() {
    let dir = std::env::temp_dir().join(format!("slmlp-detexp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let c = micro_config(dir.clone());
    assert_eq!(c.unseen(), vec![5, 6, 7, 8, 9]);
    let r = detection_experiment(&c).unwrap();

    // one run per backbone, each with AP values a COCO evaluation can give
    assert_eq!(r.runs.len(), BACKBONES.len());
    for (run, (key, _)) in r.runs.iter().zip(BACKBONES) {
        assert_eq!(run.backbone, key);
        assert_eq!(run.pretrain_accuracy.is_some(), key != "random");
        for (name, v) in run.aps() {
            assert!(
                v.is_finite() && (0.0..=1.0).contains(&v),
                "{key} {name} = {v}"
            );
        }
    }
    // the encoders were trained and fed to the detectors
    for m in ["sl", "sl-mlp"] {
        assert!(dir
            .join(format!("seed3/pretrain-{m}/model.safetensors"))
            .is_file());
    }
    for (key, _) in BACKBONES {
        assert!(dir
            .join(format!("seed3/detect-{key}/eval_val.json"))
            .is_file());
    }
    // the benchmark holds only the unseen classes (category ids label + 1)
    let ann: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("benchmark/train/annotations.json")).unwrap(),
    )
    .unwrap();
    let anns = ann["annotations"].as_array().unwrap();
    assert!(!anns.is_empty());
    assert!(anns
        .iter()
        .all(|a| (6..=10).contains(&a["category_id"].as_i64().unwrap())));

    let md = std::fs::read_to_string(dir.join("detection.md")).unwrap();
    assert_eq!(md, r.markdown);
    for row in [
        "| random |",
        "| SL |",
        "| SL-MLP |",
        "| SL-MLP − SL |",
        "| 3 | SL-MLP |",
    ] {
        assert!(md.contains(row), "no row {row:?} in:\n{md}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("detection.json")).unwrap())
            .unwrap();
    assert_eq!(json, r.json);
    assert_eq!(
        json["config"]["benchmark_classes"],
        serde_json::json!([5, 6, 7, 8, 9])
    );
    for (key, _) in BACKBONES {
        for q in ["box_ap", "box_ap50", "mask_ap", "mask_ap50"] {
            let v = json["summary"][key][q]["mean"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} {q} = {v}");
        }
    }
    assert_eq!(json["runs"].as_array().unwrap().len(), 3);

    // --resume keeps every recorded run: same numbers and timings, and no
    // encoder is pretrained again
    let encoder = dir.join("seed3/pretrain-sl/model.safetensors");
    let written = std::fs::metadata(&encoder).unwrap().modified().unwrap();
    let kept = detection_experiment(&DetectionConfig {
        resume: true,
        ..c.clone()
    })
    .unwrap();
    assert_eq!(kept.runs, r.runs);
    assert_eq!(
        std::fs::metadata(&encoder).unwrap().modified().unwrap(),
        written
    );
    // a record written with other settings is run again, and rewritten
    let record = dir.join("seed3/sl.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    v["settings"]["commit"] = "another commit".into();
    std::fs::write(&record, v.to_string()).unwrap();
    let rerun = detection_experiment(&DetectionConfig { resume: true, ..c }).unwrap();
    assert_eq!(rerun.runs[0], r.runs[0]);
    assert_ne!(rerun.runs[1].train_seconds, r.runs[1].train_seconds);
    assert_ne!(
        std::fs::metadata(&encoder).unwrap().modified().unwrap(),
        written
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_ne!(v["settings"]["commit"], "another commit");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn detection_experiment_rejects_bad_settings() {
    let dir = std::env::temp_dir().join(format!("slmlp-detexp-bad-{}", std::process::id()));
    let mut c = micro_config(dir.clone());
    c.det_epochs = 0;
    let e = detection_experiment(&c).unwrap_err().to_string();
    assert!(e.contains("--det-epochs"), "{e}");
    let mut c = micro_config(dir.clone());
    c.seen = (0..9).collect();
    let e = detection_experiment(&c).unwrap_err().to_string();
    assert!(e.contains("unseen"), "{e}");
    assert!(!dir.exists(), "a rejected config wrote {}", dir.display());
}
