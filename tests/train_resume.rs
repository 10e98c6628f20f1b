//! End to end on the CPU: a small ResNet learns generated data, and a run
//! stopped and resumed from its checkpoint continues bit for bit.

use engine::amp::Precision;
use engine::nn::Module;
use engine::Rng;
use models::data::SyntheticImages;
use models::train::{loss_drop, run, TrainOptions, Trainer};
use models::{ResNet, ResNetConfig, Stem};

fn small_model(seed: u64) -> ResNet {
    let config = ResNetConfig::resnet18(4)
        .with_stem(Stem::Cifar)
        .with_widths([4, 8, 8, 16]);
    ResNet::new("", config, &mut Rng::new(seed)).unwrap()
}

fn opts(steps: usize, precision: Precision) -> TrainOptions {
    TrainOptions {
        steps,
        batch: 16,
        lr: 0.05,
        warmup_steps: 3,
        precision,
        seed: 5,
        ..TrainOptions::default()
    }
}

#[test]
fn loss_falls_on_generated_data() {
    let data = SyntheticImages::new(4, 3, 8, 0.3, 11).unwrap();
    let model = small_model(1);
    let mut t = Trainer::new(&model, opts(60, Precision::F32));
    let logs = run(&mut t, &data, None, usize::MAX, usize::MAX).unwrap();
    let (first, last) = loss_drop(&logs, 8).unwrap();
    assert!(
        last < 0.6 * first,
        "loss did not fall enough: {first:.3} -> {last:.3}"
    );
}

#[test]
fn bf16_training_tracks_f32() {
    // bf16 rounding flips a few ReLU decisions, so trajectories drift apart
    // slowly: the first steps must agree closely and the bf16 run must learn.
    let data = SyntheticImages::new(4, 3, 8, 0.3, 11).unwrap();
    let (m32, m16) = (small_model(2), small_model(2));
    let l32 = run(
        &mut Trainer::new(&m32, opts(60, Precision::F32)),
        &data,
        None,
        usize::MAX,
        usize::MAX,
    )
    .unwrap();
    let l16 = run(
        &mut Trainer::new(&m16, opts(60, Precision::Bf16)),
        &data,
        None,
        usize::MAX,
        usize::MAX,
    )
    .unwrap();
    for (a, b) in l32.iter().zip(&l16).take(3) {
        let rel = (a.loss - b.loss).abs() / a.loss;
        assert!(
            rel < 0.02,
            "step {}: f32 loss {} vs bf16 loss {}",
            a.step,
            a.loss,
            b.loss
        );
    }
    let (first, last) = loss_drop(&l16, 5).unwrap();
    let (f32_first, f32_last) = loss_drop(&l32, 5).unwrap();
    eprintln!("f32 {f32_first:.3} -> {f32_last:.3}, bf16 {first:.3} -> {last:.3}");
    assert!(
        f32_last < 0.6 * f32_first,
        "f32 run did not learn: {f32_first:.3} -> {f32_last:.3}"
    );
    assert!(
        last < 0.6 * first,
        "bf16 run did not learn: {first:.3} -> {last:.3}"
    );
}

fn resume_is_exact(precision: Precision) {
    let dir =
        std::env::temp_dir().join(format!("slmlp-resume-{precision:?}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = SyntheticImages::new(4, 3, 8, 0.3, 11).unwrap();

    let straight = small_model(3);
    let full = run(
        &mut Trainer::new(&straight, opts(6, precision)),
        &data,
        None,
        usize::MAX,
        usize::MAX,
    )
    .unwrap();

    let first = small_model(3);
    let mut t = Trainer::new(&first, opts(6, precision));
    t.opts.steps = 3;
    run(&mut t, &data, Some(&dir), usize::MAX, 3).unwrap();

    // a differently initialised model: the checkpoint must overwrite it all
    let resumed = small_model(99);
    let mut t = Trainer::new(&resumed, opts(6, precision));
    t.resume(&dir.join("checkpoint.safetensors")).unwrap();
    assert_eq!(t.step, 3);
    let rest = run(&mut t, &data, None, usize::MAX, usize::MAX).unwrap();

    for (a, b) in full[3..].iter().zip(&rest) {
        assert_eq!(
            a.loss.to_bits(),
            b.loss.to_bits(),
            "step {} loss differs after resume",
            a.step
        );
    }
    for (p, q) in straight.params().iter().zip(resumed.params()) {
        assert_eq!(
            p.get().to_vec::<f32>().unwrap(),
            q.get().to_vec::<f32>().unwrap(),
            "{} differs",
            p.name()
        );
    }
    for (p, q) in straight.buffers().iter().zip(resumed.buffers()) {
        assert_eq!(
            p.get().to_vec::<f32>().unwrap(),
            q.get().to_vec::<f32>().unwrap(),
            "{} differs",
            p.name()
        );
    }
    let lines = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3, "one JSONL record per step");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_continues_bit_identically_f32() {
    resume_is_exact(Precision::F32);
}

#[test]
fn resume_continues_bit_identically_f16_with_loss_scaling() {
    resume_is_exact(Precision::F16);
}
