//! A whole network against PyTorch: the tiny CIFAR-stem ResNet of
//! tools/golden (torchvision names and forward) — logits, loss, every
//! parameter gradient, then three SGD steps (params and BN buffers).
//! Tensors per element within 1e-5 + 1e-3 |expected|; losses to 1e-4
//! relative.

use engine::nn::{Module, Param};
use engine::optim::{zero_grad, Optimizer, Sgd};
use engine::Rng;
use engine::Tensor;
use models::{BlockKind, ResNet, ResNetConfig, Stem};
use slmlp_tests::Fixture;

const TOL: f64 = 1e-4;

/// Per element |a - b| <= 1e-5 + 1e-3 |b|: a small f32 network (forward,
/// backward, SGD steps) against PyTorch.
fn assert_close(what: &str, actual: &Tensor, expected: &Tensor) {
    testutil::assert_tensor_close(what, actual, expected, 1e-5, 1e-3);
}

fn tiny_resnet() -> ResNet {
    let config = ResNetConfig {
        block: BlockKind::Basic,
        layers: [1, 1, 1, 1],
        widths: [4, 8, 16, 32],
        stem: Stem::Cifar,
        in_channels: 3,
        num_classes: Some(5),
        zero_init_residual: false,
    };
    ResNet::new("", config, &mut Rng::new(7)).unwrap()
}

#[test]
fn tiny_resnet_matches_pytorch() {
    let fx = Fixture::load("tiny_resnet");
    let model = tiny_resnet();
    let (params, buffers) = (model.params(), model.buffers());
    // every fixture tensor maps onto exactly one of ours, and vice versa
    let n_fixture_params = fx
        .tensors
        .keys()
        .filter(|k| k.starts_with("param."))
        .count();
    let n_fixture_buffers = fx
        .tensors
        .keys()
        .filter(|k| k.starts_with("buffer."))
        .count();
    assert_eq!(
        (params.len(), buffers.len()),
        (n_fixture_params, n_fixture_buffers)
    );
    for p in &params {
        p.set(fx.get(&format!("param.{}", p.name())).clone())
            .unwrap();
    }
    for b in &buffers {
        b.set(fx.get(&format!("buffer.{}", b.name())).clone())
            .unwrap();
    }
    model.set_training(true);
    let (input, target) = (fx.get("input"), fx.get("target"));

    let logits = model.forward(input).unwrap();
    assert_close("logits", &logits, fx.get("logits"));
    let loss = logits.cross_entropy(target, 0.0, None).unwrap();
    assert_close("loss", &loss, fx.get("loss"));
    loss.backward().unwrap();
    for p in &params {
        let g = p
            .grad()
            .unwrap_or_else(|| panic!("no grad for {}", p.name()));
        assert_close(
            &format!("grad {}", p.name()),
            &g,
            fx.get(&format!("grad.{}", p.name())),
        );
    }

    // Three SGD steps from the same start. The fixture's first forward also
    // updated the BN running stats, exactly like the one above did, so the
    // state here matches PyTorch's after its first forward; step 1 reuses
    // the gradients just computed.
    let mut opt = Sgd::new(0.05, 0.9, 5e-4);
    let step_loss = fx.get("step_loss").to_vec::<f32>().unwrap();
    for (i, &expected) in step_loss.iter().enumerate() {
        if i > 0 {
            zero_grad(&params);
            let loss = model
                .forward(input)
                .unwrap()
                .cross_entropy(target, 0.0, None)
                .unwrap();
            let rel = (loss.item().unwrap() - expected as f64).abs() / (expected as f64).abs();
            assert!(
                rel <= TOL,
                "step {i} loss {} vs {expected}",
                loss.item().unwrap()
            );
            loss.backward().unwrap();
        }
        opt.step(&params).unwrap();
    }
    for p in &params {
        assert_close(
            &format!("final {}", p.name()),
            &p.get(),
            fx.get(&format!("final.param.{}", p.name())),
        );
    }
    for b in &buffers {
        assert_close(
            &format!("final {}", b.name()),
            &b.get(),
            fx.get(&format!("final.buffer.{}", b.name())),
        );
    }
}

#[test]
fn params_follow_torchvision_names() {
    let names: Vec<String> = tiny_resnet()
        .params()
        .iter()
        .map(|p: &Param| p.name().to_string())
        .collect();
    for expected in [
        "conv1.weight",
        "bn1.weight",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.0.bn2.bias",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing {expected} in {names:?}"
        );
    }
    let r50 = ResNet::new("", ResNetConfig::resnet50(1000), &mut Rng::new(0)).unwrap();
    let n: usize = r50.params().iter().map(|p| p.get().numel()).sum();
    assert_eq!(
        n, 25_557_032,
        "ResNet-50 parameter count (torchvision: 25,557,032)"
    );
    assert_eq!(r50.buffers().len(), 2 * 53);
}
