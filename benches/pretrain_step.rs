//! One pretraining step of the experiment's quick model, exactly as
//! `slmlp pretrain` runs it (`models::train::Trainer::step`: forward,
//! cross-entropy, accuracy, backward, SGD lr 0.1 / momentum 0.9 / weight
//! decay 5e-4 with BN and biases excluded), f32 on the CPU, for SL (no
//! projector) and SL-MLP (Linear(128,128) -> BatchNorm1d -> ReLU projector).
//!
//! The quick model: CIFAR-stem ResNet-18 of width 16 (stages 16/32/64/128),
//! 1 input channel, 5 classes, batch 128 of 28x28 images. Each case prints
//! our median ms/step, img/s and GFLOP/s beside PyTorch's median for the same
//! network on the same machine, the two timed in alternating rounds
//! (`slmlp_benches::compare_rounds`), when python with torch is available
//! (`SLMLP_TORCH_PYTHON` names the interpreter; default `python3`), and the
//! ratio per round. Target (issue 16): at most 1.2x PyTorch's step time.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use engine::{DType, Rng, Tensor};
use models::train::{TrainOptions, Trainer};
use models::{NetConfig, ProjectorConfig, Stem, SupervisedNet};
use slmlp_benches::{compare_rounds, TorchResNet18};
use std::collections::BTreeMap;
use std::time::Duration;

/// The quick model and batch, in the form the PyTorch script takes too.
fn quick(projector: bool) -> TorchResNet18 {
    TorchResNet18 {
        batch: 128,
        width: 16,
        in_channels: 1,
        size: 28,
        classes: 5,
        projector,
        wd_exclude_1d: true,
        // timed steps per round, ours and PyTorch's alike
        iters: 6,
    }
}

/// Alternating rounds of `iters` steps per side.
const ROUNDS: usize = 5;
/// Our step time over PyTorch's, at most.
const TARGET: f64 = 1.2;

fn quick_config(q: &TorchResNet18) -> NetConfig {
    NetConfig {
        arch: "resnet18".into(),
        width: q.width,
        stem: Stem::Cifar,
        in_channels: q.in_channels,
        projector: q.projector.then(|| ProjectorConfig::paper(8 * q.width)),
        num_classes: q.classes,
        zero_init_residual: false,
    }
}

fn bench_case(c: &mut Criterion, projector: bool) {
    let q = quick(projector);
    let config = quick_config(&q);
    let method = config.method();
    let net = SupervisedNet::new(config, &mut Rng::new(0)).expect("quick model config is valid");
    let mut rng = Rng::new(1);
    let images = Tensor::randn(
        &[q.batch, q.in_channels, q.size, q.size],
        0.0,
        1.0,
        DType::F32,
        &mut rng,
    );
    let labels = Tensor::from_vec(
        (0..q.batch as i64).map(|i| i % q.classes as i64).collect(),
        &[q.batch],
    )
    .unwrap();
    // A long run keeps the schedule's lr near 0.1 for every step timed here.
    let opts = TrainOptions {
        steps: 1_000_000,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&net, opts, BTreeMap::new());
    let mut step = || {
        trainer
            .step(&images, &labels)
            .unwrap_or_else(|e| panic!("{method} train step failed: {e}"))
    };
    step(); // warm-up: first-touch allocations, momentum buffers

    let rounds = compare_rounds(&q, ROUNDS, || {
        step();
    });
    let ours = rounds.ours_ms();
    // training FLOPs: forward MACs x 2 FLOPs x 3 (forward, grad input, grad weight)
    let flops = net.macs(q.size, q.size) as f64 * 2.0 * 3.0 * q.batch as f64;
    println!(
        "quick {method} pretrain step (resnet18 w{} cifar-stem, {}x{}x{}, {} classes), batch {}: \
         {ours:.1} ms median, {:.1} img/s, {:.1} GFLOP/s ({:.2} GFLOP/step)",
        q.width,
        q.in_channels,
        q.size,
        q.size,
        q.classes,
        q.batch,
        q.batch as f64 / ours * 1e3,
        flops / ours / 1e6,
        flops / 1e9
    );
    println!("{}", rounds.report(method, q.batch, TARGET));

    let mut g = c.benchmark_group("quick_pretrain_step");
    // steps take a few hundred ms: one step per iteration, 10 samples
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function(format!("{method}_b{}_f32", q.batch), |b| b.iter(&mut step));
    g.finish();
}

fn bench(c: &mut Criterion) {
    // as `slmlp` does at start-up (SLMLP_KEEP_FREED_MEMORY=0 leaves malloc as it is)
    engine::host_memory::keep_freed_memory();
    bench_case(c, false);
    bench_case(c, true);
}

criterion_group!(benches, bench);
criterion_main!(benches);
