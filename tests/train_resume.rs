//! End to end on the CPU: SL and SL-MLP networks learn generated data through
//! the real input pipeline, and a run stopped and resumed from its checkpoint
//! continues bit for bit.

use engine::amp::Precision;
use engine::nn::Module;
use engine::Rng;
use models::data::{Loader, LoaderOptions, SyntheticImages, Transform};
use models::fit::{fit, FitOptions, FitResult};
use models::train::{loss_drop, TrainOptions, Trainer};
use models::{NetConfig, ProjectorConfig, Stem, SupervisedNet};
use std::sync::Arc;

fn small_net(seed: u64, projector: bool) -> SupervisedNet {
    let mut c = NetConfig::new("resnet18", 4).unwrap();
    c.width = 4;
    c.stem = Stem::Cifar;
    c.in_channels = 3;
    c.projector = projector.then(|| ProjectorConfig::paper(32));
    SupervisedNet::new(c, &mut Rng::new(seed)).unwrap()
}

fn loader(workers: usize) -> Loader {
    let ds = SyntheticImages::new(4, 3, 8, 0.3, 11)
        .unwrap()
        .with_len(256);
    Loader::new(
        Arc::new(ds),
        // no flips: a mirrored grating is another class's orientation
        Transform::pad_crop(8, 1, false, vec![0.5; 3], vec![0.25; 3]),
        LoaderOptions {
            batch: 16,
            shuffle: true,
            drop_last: true,
            workers,
            prefetch: 2,
            seed: 5,
        },
    )
    .unwrap()
}

fn opts(epochs: usize, precision: Precision) -> TrainOptions {
    TrainOptions {
        steps: epochs * 16,
        lr: 0.05,
        warmup_steps: 3,
        precision,
        ..TrainOptions::default()
    }
}

fn train(net: &SupervisedNet, epochs: usize, precision: Precision) -> FitResult {
    let mut t = Trainer::new(net, opts(epochs, precision), Default::default());
    let fo = FitOptions {
        epochs,
        quiet: true,
        ..FitOptions::default()
    };
    fit(&mut t, &loader(2), None, &fo).unwrap()
}

#[test]
fn sl_and_sl_mlp_learn_generated_data() {
    for projector in [false, true] {
        let net = small_net(1, projector);
        let logs = train(&net, 8, Precision::F32).steps;
        let (first, last) = loss_drop(&logs, 8).unwrap();
        assert!(
            last < 0.6 * first,
            "projector {projector}: loss did not fall enough: {first:.3} -> {last:.3}"
        );
    }
}

#[test]
fn bf16_training_tracks_f32() {
    // bf16 rounding flips a few ReLU decisions, so trajectories drift apart
    // slowly: the first steps must agree closely and the bf16 run must learn.
    let (m32, m16) = (small_net(2, true), small_net(2, true));
    let l32 = train(&m32, 8, Precision::F32).steps;
    let l16 = train(&m16, 8, Precision::Bf16).steps;
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

/// Stops after a mid-epoch checkpoint (step 24 of 32: epoch 2, batch 8),
/// resumes into a differently initialised model with another worker count,
/// and compares every loss, parameter and buffer with an uninterrupted run.
fn resume_is_exact(precision: Precision) {
    let dir =
        std::env::temp_dir().join(format!("slmlp-resume-{precision:?}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let straight = small_net(3, true);
    let full = train(&straight, 2, precision).steps;

    let first = small_net(3, true);
    let mut t = Trainer::new(&first, opts(2, precision), Default::default());
    let fo = FitOptions {
        epochs: 2,
        out_dir: Some(dir.clone()),
        checkpoint_every: 8,
        quiet: true,
        ..FitOptions::default()
    };
    // a complete run writes 32 step and 2 epoch records; then the
    // checkpoint is replaced by the state after step 24, as if the process
    // had died there after its last checkpoint
    fit(&mut t, &loader(1), None, &fo).unwrap();
    let partial = small_net(3, true);
    let mut t = Trainer::new(&partial, opts(2, precision), Default::default());
    for batch in loader(0).epoch(0, 0).chain(loader(0).epoch(1, 0)).take(24) {
        let b = batch.unwrap();
        t.step(&b.images, &b.labels).unwrap();
    }
    t.save(&dir.join("checkpoint.safetensors")).unwrap();

    let resumed = small_net(99, true);
    let mut t = Trainer::new(&resumed, opts(2, precision), Default::default());
    let rest = fit(&mut t, &loader(3), None, &FitOptions { resume: true, ..fo })
        .unwrap()
        .steps;
    assert_eq!(rest.len(), 8);
    for (a, b) in full[24..].iter().zip(&rest) {
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
    // the resumed run dropped the records of steps it redid: one per step
    let lines = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let steps = lines
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .count();
    let epochs = lines
        .lines()
        .filter(|l| l.contains("\"kind\":\"epoch\""))
        .count();
    assert_eq!(
        (steps, epochs),
        (32, 2),
        "one JSONL record per step and per epoch:\n{lines}"
    );
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

/// What the trainer is fed: every image of a batch is the transformed
/// sample the batch's index names, with that sample's label.
#[test]
fn loader_batches_pair_each_image_with_its_label() {
    let ds: Arc<dyn models::data::Dataset> = Arc::new(
        SyntheticImages::new(4, 3, 8, 0.3, 11)
            .unwrap()
            .with_len(256),
    );
    let opts = LoaderOptions {
        batch: 16,
        shuffle: true,
        drop_last: true,
        workers: 2,
        prefetch: 2,
        seed: 5,
    };
    let l = Loader::new(
        ds.clone(),
        Transform::eval(8, vec![0.0; 3], vec![1.0; 3]),
        opts,
    )
    .unwrap();
    for b in l.epoch(0, 0) {
        let b = b.unwrap();
        let labels = b.labels.to_vec::<i64>().unwrap();
        let images = b.images.to_vec::<f32>().unwrap();
        for (j, &i) in b.indices.iter().enumerate() {
            assert_eq!(labels[j] as usize, ds.label(i));
            let img = ds.get(i).unwrap();
            // HWC bytes -> CHW floats in [0, 1]
            for (p, &byte) in img.pixels.iter().enumerate() {
                let (hw, c) = (p / 3, p % 3);
                assert!((images[j * 192 + c * 64 + hw] - byte as f32 / 255.0).abs() < 1e-6);
            }
        }
    }
}
