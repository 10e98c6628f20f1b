//! The documented torchvision ResNet path: a torchvision `.pth` converted by
//! tools/convert_torchvision.py, run by `slmlp forward`, gives torchvision's
//! logits (tools/golden/make_convert_fixtures.py).
//!
//! The fixture holds the converter's metadata as it wrote it and torch's
//! logits; the 45 MB of resnet18 weights are not committed: the script
//! checked that every converted tensor is the counter hash of its name
//! (testutil::hash), so this test rebuilds the converter's output exactly.

use engine::Tensor;
use std::collections::BTreeMap;
use std::process::Command;
use testutil::hash::hash_init_value;
use testutil::{assert_close, check_close, Golden, TempDir, Tol};

#[test]
fn converted_torchvision_resnet_runs_in_forward_with_torchvisions_logits() {
    let ck = Golden::golden("convert_resnet18");
    let meta: BTreeMap<String, String> = serde_json::from_value(ck.meta("converted")).unwrap();
    let names: BTreeMap<String, Vec<usize>> =
        serde_json::from_value(ck.meta("param_names")).unwrap();
    let tensors: Vec<(String, Tensor)> = names
        .iter()
        .map(|(n, d)| (n.clone(), hash_init_value(n, d)))
        .collect();
    let tmp = TempDir::new("convert-cli");
    let model = tmp.0.join("resnet18.safetensors");
    engine::checkpoint::save(&model, &tensors, &meta).unwrap();

    // what forward, transfer and analyze read back
    let loaded = models::pretrain::load_trained(&model, engine::Device::Cpu).unwrap();
    assert_eq!(loaded.input.size, 224);
    assert_eq!(
        loaded.input.norm,
        models::datasets::Normalization::imagenet()
    );
    assert_eq!(loaded.net.config.num_classes, 1000);

    let input = tmp.0.join("input.safetensors");
    let x = ck.get("input").clone();
    engine::checkpoint::save(&input, &[("input".to_string(), x)], &BTreeMap::new()).unwrap();
    let output = tmp.0.join("out.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_slmlp"))
        .args(["forward", "--checkpoint"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "slmlp forward: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logits = engine::checkpoint::load(&output).unwrap().tensors["logits"]
        .to_vec_f64()
        .unwrap();
    let want64 = ck.f64s("logits64");
    let want32 = ck.f64s("logits");
    // float32 against torch's float64 run of the same weights, relative to
    // the largest logit; torch's own float32 for scale
    let scale = want64.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let r = assert_close(
        "logits vs torch float64",
        &logits,
        &want64,
        1e-4 * scale,
        1e-4,
    );
    let t = check_close(
        "torch f32 vs f64",
        &want32,
        &want64,
        Tol::new(1e-4 * scale, 1e-4),
    )
    .unwrap_or_else(|e| e);
    eprintln!(
        "logits: ours worst |diff| / bound {:.3}, torchvision float32 {:.3}",
        r.ratio(),
        t.ratio()
    );
}
