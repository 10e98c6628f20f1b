//! Training-loop and numerics faults (issue 15), each reproduced on tiny
//! CPU networks: NaN through ReLU, diverged weights and checkpoints,
//! unrecoverable f16 runs, unreadable images, interrupted epochs, and conv
//! weight gradients under different rayon thread counts.

use engine::amp::{amp_step, LossScaler, Precision};
use engine::checkpoint::{save_training, TrainState};
use engine::nn::{Buffer, Module, Param};
use engine::ops::{BatchNormArgs, Conv2dParams};
use engine::optim::{check_finite, Sgd};
use engine::{DType, Error, Result, Rng, Tensor};
use models::data::{DataLoader, Dataset, Image, Loader, LoaderOptions, SyntheticImages, Transform};
use models::fit::{fit, FitOptions, FitResult, Means, StepLog, Task, TaskState, Validation};
use models::train::{TrainOptions, Trainer};
use models::{NetConfig, ProjectorConfig, Stem, SupervisedNet};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn small_net(seed: u64, projector: bool) -> SupervisedNet {
    let mut c = NetConfig::new("resnet18", 4).unwrap();
    c.width = 4;
    c.stem = Stem::Cifar;
    c.in_channels = 3;
    c.projector = projector.then(|| ProjectorConfig::paper(32));
    SupervisedNet::new(c, &mut Rng::new(seed)).unwrap()
}

/// Generated images of which the indices in `bad` are unreadable.
struct Broken {
    inner: SyntheticImages,
    bad: HashSet<usize>,
}

impl Dataset for Broken {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn label(&self, index: usize) -> usize {
        self.inner.label(index)
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn get(&self, index: usize) -> Result<Image> {
        if self.bad.contains(&index) {
            return Err(Error::arg("broken", format!("image {index} is corrupt")));
        }
        self.inner.get(index)
    }
    fn describe(&self, index: usize) -> String {
        format!("broken#{index}")
    }
}

fn loader(len: usize, bad: &[usize], batch: usize, shuffle: bool) -> Loader {
    let ds = Broken {
        inner: SyntheticImages::new(4, 3, 8, 0.3, 11)
            .unwrap()
            .with_len(len),
        bad: bad.iter().copied().collect(),
    };
    Loader::new(
        Arc::new(ds),
        Transform::pad_crop(8, 1, false, vec![0.5; 3], vec![0.25; 3]),
        LoaderOptions {
            batch,
            shuffle,
            drop_last: true,
            workers: 0,
            prefetch: 2,
            seed: 5,
        },
    )
    .unwrap()
}

/// The error `fit` stops with (a run that ends well fails the test).
fn fit_error<T: Task>(t: &mut T, train: &DataLoader<T::Source>, fo: &FitOptions) -> String {
    match fit(t, train, None, fo) {
        Ok(r) => panic!("fit ended without an error after {} steps", r.total_steps),
        Err(e) => e.to_string(),
    }
}

fn opts(steps: usize, lr: f64, precision: Precision) -> TrainOptions {
    TrainOptions {
        steps,
        lr,
        warmup_steps: 0,
        precision,
        ..TrainOptions::default()
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("slmlp-numeric-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Runs `f` on another thread and fails the test if it takes over `secs`
/// (the faults here used to hang).
fn within<R: Send + 'static>(secs: u64, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("did not finish in time (hang)")
}

fn all_finite(ts: &[Tensor]) -> bool {
    ts.iter()
        .all(|t| t.to_vec_f64().unwrap().iter().all(|v| v.is_finite()))
}

#[test]
fn relu_and_fused_bn_relu_propagate_nan_as_pytorch() {
    let x = Tensor::from_vec(vec![f32::NAN, -1.0, 2.0], &[3])
        .unwrap()
        .requires_grad_()
        .unwrap();
    let y = x.relu().unwrap();
    let v = y.to_vec::<f32>().unwrap();
    assert!(v[0].is_nan() && v[1] == 0.0 && v[2] == 2.0, "{v:?}");
    // threshold_backward: dy where the output is NaN
    y.backward_with(Tensor::from_vec(vec![5.0f32, 6.0, 7.0], &[3]).unwrap())
        .unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f32>().unwrap(), [5.0, 0.0, 7.0]);

    let x = Tensor::from_vec(vec![f32::NAN, -2.0, 3.0, 4.0], &[2, 2])
        .unwrap()
        .requires_grad_()
        .unwrap();
    let (w, b) = (
        Tensor::ones(&[2], DType::F32),
        Tensor::zeros(&[2], DType::F32),
    );
    let (rm, rv) = (
        Tensor::zeros(&[2], DType::F32),
        Tensor::ones(&[2], DType::F32),
    );
    let args = BatchNormArgs {
        eps: 0.0,
        momentum: 0.1,
        training: false,
        weight: &w,
        bias: &b,
        running_mean: &rm,
        running_var: &rv,
    };
    let y = x.batch_norm_relu(&args).unwrap().out;
    let v = y.to_vec::<f32>().unwrap();
    assert!(v[0].is_nan() && v[1..] == [0.0, 3.0, 4.0], "{v:?}");
    y.backward_with(Tensor::ones(&[2, 2], DType::F32)).unwrap();
    // not zeroed where the output is NaN (the eval affine backward's
    // 0 * (x - mean) makes it NaN there)
    let g = x.grad().unwrap().to_vec::<f32>().unwrap();
    assert!(g[0] != 0.0 && g[1..] == [0.0, 1.0, 1.0], "{g:?}");
}

#[test]
fn an_all_nan_input_gives_nan_logits() {
    for projector in [false, true] {
        let net = small_net(1, projector);
        net.set_training(false);
        let x = Tensor::full(&[2, 3, 8, 8], f64::NAN, DType::F32);
        let logits = net.forward(&x).unwrap().to_vec::<f32>().unwrap();
        assert!(
            logits.iter().all(|v| v.is_nan()),
            "projector {projector}: {logits:?}"
        );
    }
}

#[test]
fn check_finite_names_the_tensor() {
    let p = Param::new(
        "layer.weight",
        Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap(),
        false,
    )
    .unwrap();
    let b = Buffer::new(
        "bn.running_var",
        Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap(),
    );
    check_finite(&[p.clone()], &[b.clone()]).unwrap();
    b.set(Tensor::from_vec(vec![f32::INFINITY, 2.0], &[2]).unwrap())
        .unwrap();
    let e = check_finite(&[p], &[b]).unwrap_err().to_string();
    assert!(e.contains("bn.running_var") && e.contains("1 of 2"), "{e}");
}

/// `--lr 1e3` and `--momentum 5` used to train on to a NaN model and exit 0.
#[test]
fn a_diverging_run_stops_and_keeps_its_last_good_checkpoint() {
    let settings = [(1e3, 0.9, false), (1e6, 0.9, false), (0.5, 5.0, false)];
    // overlapped steps: the error comes one step later, before any save
    let overlapped = [(1e3, 0.9, true), (0.5, 5.0, true)];
    for (lr, momentum, overlap) in settings.into_iter().chain(overlapped) {
        let dir = tmp(&format!("diverge-{lr}-{momentum}-{overlap}"));
        let net = small_net(2, true);
        let mut o = opts(64, lr, Precision::F32);
        o.momentum = momentum;
        let mut t = Trainer::new(&net, o, Default::default());
        if overlap {
            t = t.with_overlapped_steps();
        }
        let fo = FitOptions {
            epochs: 4,
            out_dir: Some(dir.clone()),
            checkpoint_every: 1,
            quiet: true,
            ..FitOptions::default()
        };
        let e = fit_error(&mut t, &loader(256, &[], 16, true), &fo);
        assert!(
            e.contains("non-finite") || e.contains("loss became"),
            "lr {lr} momentum {momentum} overlapped {overlap}: {e}"
        );
        assert!(!dir.join("model.safetensors").exists());
        let ckpt = dir.join("checkpoint.safetensors");
        if ckpt.exists() {
            let c = engine::checkpoint::load(&ckpt).unwrap();
            let ts: Vec<Tensor> = c.tensors.into_values().collect();
            assert!(
                all_finite(&ts),
                "lr {lr} momentum {momentum}: non-finite checkpoint"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_non_finite_state_never_replaces_a_checkpoint() {
    let dir = tmp("keep");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    let net = small_net(3, false);
    let t = Trainer::new(&net, opts(8, 0.1, Precision::F32), Default::default());
    t.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let p = &net.params()[0];
    let mut v = p.get().to_vec::<f32>().unwrap();
    v[0] = f32::NAN;
    p.set(Tensor::from_vec(v, p.get().dims()).unwrap()).unwrap();
    let e = t.save(&path).unwrap_err().to_string();
    assert!(e.contains(p.name()) && e.contains("not written"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn f16_stops_after_the_bounded_run_of_overflowed_steps() {
    let p = Param::new("w", Tensor::from_vec(vec![1.0f32], &[1]).unwrap(), false).unwrap();
    let mut opt = Sgd::new(0.1, 0.0, 0.0);
    let mut scaler = LossScaler {
        max_skipped: 3,
        ..LossScaler::default()
    };
    let overflow = |opt: &mut Sgd, scaler: &mut LossScaler| {
        p.set_grad(Some(Tensor::from_vec(vec![f32::INFINITY], &[1]).unwrap()));
        amp_step(opt, Some(scaler), &[p.clone()])
    };
    assert!(!overflow(&mut opt, &mut scaler).unwrap());
    assert!(!overflow(&mut opt, &mut scaler).unwrap());
    let e = overflow(&mut opt, &mut scaler).unwrap_err().to_string();
    assert!(e.contains("3 steps in a row"), "{e}");
    // a clean step resets the count
    let mut scaler = LossScaler {
        max_skipped: 2,
        ..LossScaler::default()
    };
    assert!(!overflow(&mut opt, &mut scaler).unwrap());
    p.set_grad(Some(Tensor::from_vec(vec![1.0f32], &[1]).unwrap()));
    assert!(amp_step(&mut opt, Some(&mut scaler), &[p.clone()]).unwrap());
    assert!(!overflow(&mut opt, &mut scaler).unwrap());
    assert_eq!(scaler.skipped_steps, 1);
    assert_eq!(
        engine::amp::DEFAULT_MAX_SKIPPED,
        LossScaler::default().max_skipped
    );
}

#[test]
fn f16_resume_refuses_a_bad_loss_scale() {
    let dir = tmp("scale");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    let net = small_net(4, false);
    let mut t = Trainer::new(&net, opts(8, 0.1, Precision::F16), Default::default());
    for bad in ["inf", "NaN", "0", "-4"] {
        let TaskState {
            optim,
            rng,
            mut extra,
        } = t.state();
        extra.insert("loss_scale".into(), bad.into());
        let state = TrainState {
            step: 1,
            rng,
            extra,
        };
        save_training(&path, &net.params(), &net.buffers(), &optim, &state).unwrap();
        let e = t.resume(&path).unwrap_err().to_string();
        assert!(e.contains("loss_scale"), "{bad}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn epochs_times_steps_overflow_is_an_error() {
    let net = small_net(5, false);
    let mut t = Trainer::new(&net, opts(8, 0.1, Precision::F32), Default::default());
    let fo = FitOptions {
        epochs: usize::MAX,
        quiet: true,
        ..FitOptions::default()
    };
    let e = fit_error(&mut t, &loader(64, &[], 16, true), &fo);
    assert!(e.contains("too many steps"), "{e}");
}

/// The last batch of each epoch unreadable (both images of the second
/// batch of two): the run ends; every image unreadable: a clear error.
#[test]
fn unreadable_batches_end_the_epoch_and_an_unreadable_dataset_fails() {
    let r = within(120, || {
        let net = small_net(6, false);
        let mut t = Trainer::new(&net, opts(4, 0.05, Precision::F32), Default::default());
        let fo = FitOptions {
            epochs: 2,
            quiet: true,
            ..FitOptions::default()
        };
        fit(&mut t, &loader(4, &[2, 3], 2, false), None, &fo)
            .map(|r| (r.total_steps, r.steps.len()))
    });
    assert_eq!(r.unwrap(), (4, 2));
    let e = within(120, || {
        let net = small_net(6, false);
        let mut t = Trainer::new(&net, opts(4, 0.05, Precision::F32), Default::default());
        let fo = FitOptions {
            epochs: 2,
            quiet: true,
            ..FitOptions::default()
        };
        fit(&mut t, &loader(4, &[0, 1, 2, 3], 2, false), None, &fo).map(|r| r.total_steps)
    });
    let e = e.unwrap_err().to_string();
    assert!(e.contains("every sample was unreadable"), "{e}");
}

/// SL-MLP: a batch that one unreadable image leaves with a single sample is
/// skipped with a warning (the projector's BatchNorm1d cannot train on it).
#[test]
fn a_batch_left_with_one_image_is_skipped_for_sl_mlp() {
    let mut logs = Vec::new();
    for overlap in [false, true] {
        let net = small_net(7, true);
        let mut t = Trainer::new(&net, opts(4, 0.05, Precision::F32), Default::default());
        t.min_batch = 2;
        if overlap {
            t = t.with_overlapped_steps();
        }
        let fo = FitOptions {
            epochs: 2,
            quiet: true,
            ..FitOptions::default()
        };
        let r = fit(&mut t, &loader(4, &[1], 2, false), None, &fo).unwrap();
        let batches: Vec<usize> = r.steps.iter().map(|s| s.batch).collect();
        assert_eq!(batches, [0, 2, 0, 2]);
        assert!(r
            .epochs
            .iter()
            .all(|e| e.get("train_loss").unwrap().is_finite()));
        assert!(all_finite(
            &net.params().iter().map(|p| p.get()).collect::<Vec<_>>()
        ));
        // the logs but their timing
        let steps: Vec<(usize, u64, usize, Option<bool>)> = r
            .steps
            .iter()
            .map(|s| (s.step, s.loss.to_bits(), s.batch, s.skipped))
            .collect();
        logs.push(steps);
    }
    assert_eq!(logs[0], logs[1]);
}

/// A Trainer that fails at step `fail_at` (as a killed process would stop
/// there) or, when `fail_validation`, in its first validation, and hands
/// the logs its steps return through `edit` (`true`: from `Task::step`,
/// `false`: from `Task::finish_steps`).
struct Interrupted<'m> {
    inner: Trainer<'m>,
    fail_at: Option<usize>,
    fail_validation: bool,
    edit: fn(Vec<StepLog>, bool) -> Vec<StepLog>,
}

impl<'m> Interrupted<'m> {
    /// `inner` as it is: no failure, the logs untouched.
    fn relay(inner: Trainer<'m>, edit: fn(Vec<StepLog>, bool) -> Vec<StepLog>) -> Self {
        Interrupted {
            inner,
            fail_at: None,
            fail_validation: false,
            edit,
        }
    }
}

impl Task for Interrupted<'_> {
    type Source = <Trainer<'static> as Task>::Source;
    type Val = <Trainer<'static> as Task>::Val;
    const EPOCH_PREFIX: &'static str = "train_";
    fn tensors(&self) -> (Vec<Param>, Vec<Buffer>) {
        self.inner.tensors()
    }
    fn schedule_len(&self) -> usize {
        self.inner.schedule_len()
    }
    fn step(&mut self, step: usize, batch: &models::data::Batch) -> Result<Vec<StepLog>> {
        if Some(step) == self.fail_at {
            return Err(Error::arg("test", "killed"));
        }
        let logs = Task::step(&mut self.inner, step, batch)?;
        Ok((self.edit)(logs, true))
    }
    fn finish_steps(&mut self) -> Result<Vec<StepLog>> {
        let logs = self.inner.finish_steps()?;
        Ok((self.edit)(logs, false))
    }
    fn validate(&mut self, val: Option<&Loader>) -> Result<Validation> {
        if std::mem::take(&mut self.fail_validation) {
            return Err(Error::arg("test", "killed during validation"));
        }
        self.inner.validate(val)
    }
    fn part_names(&self) -> &'static [&'static str] {
        self.inner.part_names()
    }
    fn describe(&self, means: &Means) -> String {
        self.inner.describe(means)
    }
    fn metadata(&self) -> BTreeMap<String, String> {
        self.inner.metadata()
    }
    fn settings(&self) -> BTreeMap<String, String> {
        self.inner.settings()
    }
    fn state(&self) -> TaskState {
        self.inner.state()
    }
    fn restore(&mut self, optim: Vec<(String, Tensor)>, state: &TrainState) -> Result<()> {
        self.inner.restore(optim, state)
    }
}

/// How `run` trains.
#[derive(Clone, Copy)]
struct Run {
    precision: Precision,
    /// `Trainer::with_overlapped_steps`
    overlap: bool,
}

fn run(
    dir: &Path,
    seed: u64,
    how: Run,
    fail_at: Option<usize>,
    fail_validation: bool,
    resume: bool,
) -> Result<FitResult> {
    let net = small_net(seed, true);
    let mut inner = Trainer::new(&net, opts(32, 0.05, how.precision), Default::default());
    if how.overlap {
        inner = inner.with_overlapped_steps();
    }
    let mut t = Interrupted {
        inner,
        fail_at,
        fail_validation,
        edit: |logs, _| logs,
    };
    let fo = FitOptions {
        epochs: 2,
        out_dir: Some(dir.to_path_buf()),
        checkpoint_every: 8,
        resume,
        quiet: true,
        ..FitOptions::default()
    };
    fit(&mut t, &loader(256, &[], 16, true), None, &fo)
}

/// The `kind` records of a run's metrics.jsonl, all but their timings and
/// memory readings.
fn records(dir: &Path, kind: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!("\"kind\":\"{kind}\"")))
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in [
                "seconds",
                "images_per_s",
                "wall_s",
                "data_s",
                "step_s",
                "host_peak_rss_bytes",
                "gpu_peak_bytes",
            ] {
                v.as_object_mut().unwrap().remove(k);
            }
            v.to_string()
        })
        .collect()
}

fn epoch_records(dir: &Path) -> Vec<String> {
    records(dir, "epoch")
}

/// Stopped mid-epoch (after the checkpoint at step 24) or during the
/// validation at the end of epoch 1 (after the checkpoint at step 16), then
/// resumed into a differently initialised model: the epoch records and the
/// final checkpoint and model files are byte for byte an uninterrupted
/// run's (momentum and, under f16, the loss scaler's state included).
///
/// Overlapped steps (`Trainer::with_overlapped_steps`, each step queued
/// before the last one is read back) write the same step and epoch records
/// and the same checkpoint and model bytes as ordinary steps, and resume
/// alike.
#[test]
fn an_interrupted_run_resumes_to_the_same_records_and_bytes() {
    for precision in [Precision::F32, Precision::F16] {
        let straight = tmp(&format!("straight-{precision:?}"));
        let plain = Run {
            precision,
            overlap: false,
        };
        run(&straight, 3, plain, None, false, false).unwrap();
        let overlapped = tmp(&format!("overlapped-{precision:?}"));
        let how = Run {
            precision,
            overlap: true,
        };
        run(&overlapped, 3, how, None, false, false).unwrap();
        assert_eq!(records(&overlapped, "step"), records(&straight, "step"));
        assert_eq!(records(&straight, "step").len(), 32);
        assert_eq!(epoch_records(&overlapped), epoch_records(&straight));
        for f in ["checkpoint.safetensors", "model.safetensors"] {
            assert!(
                std::fs::read(overlapped.join(f)).unwrap()
                    == std::fs::read(straight.join(f)).unwrap(),
                "{precision:?} overlapped: {f} differs"
            );
        }
        std::fs::remove_dir_all(&overlapped).unwrap();
        for (fail_at, fail_validation, overlap) in [
            (Some(26), false, false),
            (None, true, false),
            (Some(26), false, true),
        ] {
            let dir = tmp(&format!("cut-{precision:?}-{fail_validation}-{overlap}"));
            let how = Run { precision, overlap };
            assert!(run(&dir, 3, how, fail_at, fail_validation, false).is_err());
            let rest = run(&dir, 99, how, None, false, true).unwrap();
            let what = format!(
                "{precision:?}, fail at {fail_at:?}, in validation {fail_validation}, overlapped {overlap}"
            );
            assert_eq!(epoch_records(&dir), epoch_records(&straight), "{what}");
            assert_eq!(
                rest.epochs.first().map(|e| e.epoch),
                Some(if fail_validation { 1 } else { 2 })
            );
            for f in ["checkpoint.safetensors", "model.safetensors"] {
                assert!(
                    std::fs::read(dir.join(f)).unwrap() == std::fs::read(straight.join(f)).unwrap(),
                    "{what}: {f} differs"
                );
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::remove_dir_all(&straight).unwrap();
    }
}

/// The conv backward's summation order does not depend on the thread
/// count: the same bits under rayon pools of 1, 2 and 3 threads, for a
/// weight gradient summed in 8 parts of the batch (8x8 planes, 128 images:
/// waves of 1, 2 and 3 parts) and for one summed in a single part whose
/// GEMMs run on all the threads (7x7 planes, 4 images: too few output
/// pixels to split).
#[test]
fn conv_gradients_are_the_same_bits_under_any_thread_count() {
    let mut rng = Rng::new(9);
    let mut rand = |dims: &[usize]| {
        let n: usize = dims.iter().product();
        Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect(), dims).unwrap()
    };
    let cases = [
        ([128, 6, 8, 8], [8, 6, 3, 3]),
        ([4, 64, 7, 7], [96, 64, 3, 3]),
    ];
    for (i, (x_dims, w_dims)) in cases.into_iter().enumerate() {
        let (x, w) = (rand(&x_dims), rand(&w_dims));
        let dy = rand(&[x_dims[0], w_dims[0], x_dims[2], x_dims[3]]);
        let grads = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (x, w) = (
                    x.clone().requires_grad_().unwrap(),
                    w.clone().requires_grad_().unwrap(),
                );
                let p = Conv2dParams {
                    padding: [1, 1],
                    ..Conv2dParams::default()
                };
                let y = x.conv2d(&w, None, p).unwrap();
                y.backward_with(dy.clone()).unwrap();
                let bits = |t: Tensor| -> Vec<u32> {
                    t.to_vec::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                (bits(w.grad().unwrap()), bits(x.grad().unwrap()))
            })
        };
        let one = grads(1);
        for threads in [2, 3] {
            let g = grads(threads);
            assert!(
                g.0 == one.0,
                "case {i}, {threads} threads: the weight gradient differs"
            );
            assert!(
                g.1 == one.1,
                "case {i}, {threads} threads: the input gradient differs"
            );
        }
    }
}

/// `fit` takes each step's log once: a task that never reports its steps,
/// or reports one twice, stops the run with an error before the epoch
/// ends (nothing is saved from it).
#[test]
fn a_task_that_misreports_its_steps_is_an_error() {
    for (extra, overlap) in [(false, false), (false, true), (true, false), (true, true)] {
        let dir = tmp(&format!("misreport-{extra}-{overlap}"));
        let net = small_net(8, false);
        let mut inner = Trainer::new(&net, opts(4, 0.05, Precision::F32), Default::default());
        if overlap {
            inner = inner.with_overlapped_steps();
        }
        let edit: fn(Vec<StepLog>, bool) -> Vec<StepLog> = match extra {
            // each log twice
            true => |logs, _| logs.iter().chain(&logs).cloned().collect(),
            // none
            false => |_, _| Vec::new(),
        };
        let mut t = Interrupted::relay(inner, edit);
        let fo = FitOptions {
            epochs: 1,
            out_dir: Some(dir.clone()),
            quiet: true,
            ..FitOptions::default()
        };
        let e = fit_error(&mut t, &loader(16, &[], 4, false), &fo);
        let want = if extra {
            "more step logs"
        } else {
            "never reported"
        };
        assert!(e.contains(want), "extra {extra}, overlapped {overlap}: {e}");
        assert!(!dir.join("checkpoint.safetensors").exists());
        assert!(!dir.join("model.safetensors").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Data-parallel steps are read back at once even when overlapping is
/// asked for: every rank must stop at the same step.
#[test]
fn data_parallel_steps_are_not_overlapped() {
    let comm = models::dist::hub::threads(1, Duration::from_secs(60))
        .unwrap()
        .pop()
        .unwrap();
    let net = small_net(9, false);
    let inner = Trainer::new(&net, opts(4, 0.05, Precision::F32), Default::default())
        .with_data_parallel(Box::new(comm), 1)
        .with_overlapped_steps();
    let edit: fn(Vec<StepLog>, bool) -> Vec<StepLog> = |logs, from_step| {
        // each step's own log comes back from its call, none is left over
        assert_eq!(logs.len(), usize::from(from_step));
        logs
    };
    let mut t = Interrupted::relay(inner, edit);
    let fo = FitOptions {
        epochs: 1,
        quiet: true,
        ..FitOptions::default()
    };
    let r = fit(&mut t, &loader(16, &[], 4, false), None, &fo).unwrap();
    assert_eq!(r.steps.len(), 4);
}
