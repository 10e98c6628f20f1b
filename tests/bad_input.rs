//! Bad input across the layers gets a clear error, never a panic: a
//! checkpoint from another architecture, truncated and corrupt training
//! checkpoints, wrong input shapes and dtypes into a network.

use engine::checkpoint::{load_model, save_model, LoadOptions};
use engine::nn::Module;
use engine::{DType, Rng, Tensor};
use models::train::{TrainOptions, Trainer};
use models::{NetConfig, ResNet, ResNetConfig, Stem, SupervisedNet};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("slmlp-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn net(config: ResNetConfig) -> ResNet {
    ResNet::new(
        "",
        config.with_stem(Stem::Cifar).with_widths([4, 8, 8, 16]),
        &mut Rng::new(0),
    )
    .unwrap()
}

#[test]
fn checkpoint_from_another_architecture_names_every_difference() {
    let path = tmp("r18.safetensors");
    let r18 = net(ResNetConfig::resnet18(10));
    save_model(&path, &r18.params(), &r18.buffers(), &BTreeMap::new()).unwrap();

    // ResNet-34 has more blocks (missing names); 7 classes makes fc misshaped
    let r34 = net(ResNetConfig::resnet34(7));
    let before: Vec<Vec<f32>> = r34
        .params()
        .iter()
        .map(|p| p.get().to_vec().unwrap())
        .collect();
    let err = load_model(&path, &r34.params(), &r34.buffers(), &LoadOptions::strict())
        .unwrap_err()
        .to_string();
    for needle in [
        "r18.safetensors",
        "layer1.2.conv1.weight",
        "layer3.5.bn2.running_var",
        "fc.weight",
        "[7, 16]",
        "[10, 16]",
    ] {
        assert!(err.contains(needle), "error should mention {needle}: {err}");
    }
    let after: Vec<Vec<f32>> = r34
        .params()
        .iter()
        .map(|p| p.get().to_vec().unwrap())
        .collect();
    assert_eq!(before, after, "a failed load must not modify the model");

    // the other way round: names the checkpoint has that the model lacks
    let path34 = tmp("r34.safetensors");
    save_model(&path34, &r34.params(), &r34.buffers(), &BTreeMap::new()).unwrap();
    let err = load_model(
        &path34,
        &r18.params(),
        &r18.buffers(),
        &LoadOptions::strict(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("layer2.3.conv2.weight"),
        "unexpected names listed: {err}"
    );
}

#[test]
fn truncated_or_corrupt_training_checkpoint_is_an_error() {
    let mut c = NetConfig::new("resnet18", 3).unwrap();
    c.width = 4;
    c.stem = Stem::Cifar;
    let model = SupervisedNet::new(c, &mut Rng::new(0)).unwrap();
    let dir = tmp("run");
    let opts = TrainOptions {
        steps: 1,
        ..TrainOptions::default()
    };
    let images = Tensor::randn(&[4, 3, 8, 8], 0.0, 1.0, DType::F32, &mut Rng::new(1));
    let labels = Tensor::from_vec(vec![0i64, 1, 2, 1], &[4]).unwrap();
    let mut t = Trainer::new(&model, opts.clone(), BTreeMap::new());
    t.step(&images, &labels).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("checkpoint.safetensors");
    t.save(&ckpt).unwrap();
    let bytes = std::fs::read(&ckpt).unwrap();

    let fresh = || Trainer::new(&model, opts.clone(), BTreeMap::new());
    for cut in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&ckpt, &bytes[..cut]).unwrap();
        let err = fresh().resume(&ckpt).unwrap_err().to_string();
        assert!(
            err.contains("checkpoint.safetensors"),
            "cut at {cut}: error should name the file: {err}"
        );
    }
    let mut corrupt = bytes.clone();
    corrupt[8..16].copy_from_slice(b"{garbage");
    std::fs::write(&ckpt, &corrupt).unwrap();
    assert!(fresh().resume(&ckpt).is_err());

    // a checkpoint of a run with other options is refused, not half-used
    std::fs::write(&ckpt, &bytes).unwrap();
    let other = TrainOptions {
        steps: 7,
        ..opts.clone()
    };
    let err = Trainer::new(&model, other, BTreeMap::new())
        .resume(&ckpt)
        .unwrap_err()
        .to_string();
    assert!(err.contains("total_steps"), "{err}");

    std::fs::remove_file(&ckpt).unwrap();
    let err = fresh().resume(&ckpt).unwrap_err().to_string();
    assert!(err.contains("checkpoint.safetensors"), "{err}");
}

#[test]
fn wrong_inputs_to_a_network_are_errors() {
    let model = net(ResNetConfig::resnet18(3));
    let mut rng = Rng::new(0);
    let gray = Tensor::randn(&[2, 1, 8, 8], 0.0, 1.0, DType::F32, &mut rng);
    let err = model.forward(&gray).unwrap_err().to_string();
    assert!(
        err.contains("[N, 3, H, W]") && err.contains("[2, 1, 8, 8]"),
        "{err}"
    );
    let flat = Tensor::randn(&[2, 192], 0.0, 1.0, DType::F32, &mut rng);
    assert!(model.forward(&flat).is_err());
    let ints = Tensor::zeros(&[2, 3, 8, 8], DType::I64);
    assert!(model.forward(&ints).is_err());
    let logits = model
        .forward(&Tensor::randn(
            &[2, 3, 8, 8],
            0.0,
            1.0,
            DType::F32,
            &mut rng,
        ))
        .unwrap();
    let bad_target = Tensor::from_vec(vec![0i64, 3], &[2]).unwrap();
    let err = logits
        .cross_entropy(&bad_target, 0.0, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains('3'),
        "out-of-range class should be named: {err}"
    );
}
