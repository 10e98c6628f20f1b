//! slmlp-train-sensitivity: how far two CPU training runs drift apart when
//! they differ only by rounding-sized noise, i.e. how closely a GPU run can
//! be asked to track the CPU one (slmlp-gpu-train-check's tolerances).
//!
//! Trains the train check's model (SL-MLP ResNet-18 width 16, CIFAR stem,
//! 1x28x28 inputs, 10 classes, f32, SGD momentum 0.9, wd 5e-4, warmup 2
//! steps) for 20 steps on fixed random batches, twice: once as is, once
//! with the first conv's weights scaled by (1 + 1e-7), about one f32
//! rounding. Prints both loss curves and their relative difference per
//! step, for a few learning rates and batch sizes.
//!
//! `slmlp-train-sensitivity` (CPU only, ~10 s on 2 cores in release)

use engine::amp::Precision;
use engine::nn::Module;
use engine::{DType, Result, Rng, Tensor};
use models::train::{TrainOptions, Trainer};
use models::{NetConfig, ProjectorConfig, Stem, SupervisedNet};

const STEPS: usize = 20;

fn losses(perturb: f64, lr: f64, batch: usize) -> Result<Vec<f64>> {
    let mut cfg = NetConfig::new("resnet18", 10)?;
    cfg.width = 16;
    cfg.stem = Stem::Cifar;
    cfg.in_channels = 1;
    cfg.projector = Some(ProjectorConfig::parse("d", 128)?);
    let net = SupervisedNet::new(cfg, &mut Rng::new(7))?;
    if perturb != 0.0 {
        let p = &net.params()[0];
        p.set(p.get().scale(1.0 + perturb)?.detach())?;
    }
    let opts = TrainOptions {
        steps: STEPS,
        lr,
        momentum: 0.9,
        weight_decay: 5e-4,
        warmup_steps: 2,
        label_smoothing: 0.0,
        precision: Precision::F32,
    };
    let mut trainer = Trainer::new(&net, opts, Default::default());
    let mut rng = Rng::new(1);
    let mut out = Vec::with_capacity(STEPS);
    for _ in 0..STEPS {
        let x = Tensor::randn(&[batch, 1, 28, 28], 0.0, 1.0, DType::F32, &mut rng);
        let y: Vec<i64> = (0..batch).map(|_| (rng.uniform() * 10.0) as i64).collect();
        out.push(trainer.step(&x, &Tensor::from_vec(y, &[batch])?)?.loss);
    }
    Ok(out)
}

fn main() -> Result<()> {
    for (lr, batch) in [(0.1, 16), (0.01, 16), (0.1, 64)] {
        let (a, b) = (losses(0.0, lr, batch)?, losses(1e-7, lr, batch)?);
        println!("lr {lr}, batch {batch}: step, loss, loss with one weight x (1 + 1e-7), rel diff");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            println!(
                "{:>4}  {x:.6}  {y:.6}  {:.1e}",
                i + 1,
                (x - y).abs() / x.abs()
            );
        }
    }
    Ok(())
}
