//! One training step (forward, cross-entropy, backward, SGD) of a CIFAR-stem
//! ResNet-18, batch 64, 32x32, f32 on the CPU — side by side with PyTorch
//! on the same machine, the two timed in alternating rounds
//! (`slmlp_benches::compare_rounds`), when python3 with torch is available
//! (`SLMLP_TORCH_PYTHON` names the interpreter; default `python3`).
//! Target: at most 1.5x PyTorch's step time.

use criterion::{criterion_group, criterion_main, Criterion};
use engine::nn::Module;
use engine::optim::{zero_grad, Optimizer, Sgd};
use engine::{DType, Rng, Tensor};
use models::{ResNet, ResNetConfig, Stem};
use std::time::Duration;

const BATCH: usize = 64;
/// Alternating rounds of `iters` (5) steps per side.
const ROUNDS: usize = 3;
/// Our step time over PyTorch's, at most.
const TARGET: f64 = 1.5;
/// Forward + backward FLOPs of this network per image (2 * MACs * 3).
fn step_flops(model: &ResNet) -> f64 {
    slmlp_benches::conv_net_train_flops(model, [3, 32, 32])
}

struct Step {
    model: ResNet,
    opt: Sgd,
    x: Tensor,
    y: Tensor,
}

impl Step {
    fn new() -> Step {
        let config = ResNetConfig::resnet18(10).with_stem(Stem::Cifar);
        let model = ResNet::new("", config, &mut Rng::new(0)).unwrap();
        let mut rng = Rng::new(1);
        let x = Tensor::randn(&[BATCH, 3, 32, 32], 0.0, 1.0, DType::F32, &mut rng);
        let y = Tensor::from_vec((0..BATCH as i64).map(|i| i % 10).collect(), &[BATCH]).unwrap();
        Step {
            model,
            opt: Sgd::new(0.1, 0.9, 5e-4),
            x,
            y,
        }
    }
    fn run(&mut self) {
        let params = self.model.params();
        zero_grad(&params);
        let loss = self
            .model
            .forward(&self.x)
            .unwrap()
            .cross_entropy(&self.y, 0.0, None)
            .unwrap();
        loss.backward().unwrap();
        self.opt.step(&params).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let mut step = Step::new();
    // the ops run on a pool thread, as `slmlp`'s do (docs/ENGINE.md, "CPU threads")
    let pool = engine::ops::CpuPool::new().expect("rayon pool");
    pool.run(|| step.run()); // warm-up: first-touch allocations
    let net = slmlp_benches::TorchResNet18::cifar(BATCH);
    let rounds = pool.run(|| slmlp_benches::compare_rounds(&net, ROUNDS, || step.run()));
    let ours = rounds.ours_ms();
    let flops = step_flops(&step.model) * BATCH as f64;
    println!(
        "resnet18-cifar train step, batch {BATCH}: {ours:.1} ms median, {:.1} img/s, {:.1} GFLOP/s ({:.1} GFLOP/step)",
        BATCH as f64 / ours * 1e3,
        flops / ours / 1e6,
        flops / 1e9
    );
    println!("{}", rounds.report("resnet18-cifar", BATCH, TARGET));
    let mut g = c.benchmark_group("resnet18_cifar_step");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(2));
    g.bench_function("train_step_b64_f32", |b| b.iter(|| pool.run(|| step.run())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
