//! Data parallelism in the library: the sharded sampler reads exactly the
//! global batches of the unsharded one, a two-rank run stopped and resumed
//! from rank 0's checkpoint continues bit for bit, synchronised BatchNorm
//! over two ranks matches one rank with the whole batch, and the gradient
//! reduction overlapped with the backward pass gives the bits of the one
//! after it.

use engine::nn::Module;
use engine::{Rng, Tensor};
use models::data::{Loader, LoaderOptions, SyntheticImages, Transform};
use models::dist::hub::threads;
use models::dist::reducer::{Accumulator, GradReducer, BUCKET_BYTES};
use models::dist::{Communicator, Shared};
use models::fit::{fit, FitOptions};
use models::train::{StepLog, TrainOptions, Trainer};
use models::{NetConfig, ProjectorConfig, Stem, SupervisedNet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn loader(batch: usize, rank: usize, world: usize) -> Loader {
    let ds = SyntheticImages::new(4, 3, 8, 0.3, 11).unwrap().with_len(96);
    Loader::new(
        Arc::new(ds),
        Transform::pad_crop(8, 1, true, vec![0.5; 3], vec![0.25; 3]),
        LoaderOptions {
            batch,
            shuffle: true,
            drop_last: true,
            workers: 1,
            prefetch: 2,
            seed: 5,
        },
    )
    .unwrap()
    .shard(rank, world)
    .unwrap()
}

#[test]
fn shards_read_the_global_batches_of_the_unsharded_order() {
    let whole = loader(12, 0, 1);
    for world in [2, 3, 4] {
        let shards: Vec<Loader> = (0..world).map(|r| loader(12 / world, r, world)).collect();
        assert_eq!(shards[0].batches_per_epoch(), whole.batches_per_epoch());
        for epoch in 0..2 {
            let mut iters: Vec<_> = shards.iter().map(|s| s.epoch(epoch, 1)).collect();
            for g in whole.epoch(epoch, 1) {
                let g = g.unwrap();
                let parts: Vec<_> = iters
                    .iter_mut()
                    .map(|i| i.next().unwrap().unwrap())
                    .collect();
                let indices: Vec<usize> = parts.iter().flat_map(|p| p.indices.clone()).collect();
                assert_eq!(indices, g.indices, "epoch {epoch} batch {}", g.index);
                // each sample's augmentation depends on the sample, not the rank
                let images: Vec<f32> = parts
                    .iter()
                    .flat_map(|p| p.images.to_vec::<f32>().unwrap())
                    .collect();
                assert_eq!(images, g.images.to_vec::<f32>().unwrap());
            }
            assert!(iters.iter_mut().all(|i| i.next().is_none()));
        }
    }
    // a shard must drop the last partial batch; a rank must be in the group
    let opts = LoaderOptions {
        drop_last: false,
        ..LoaderOptions::default()
    };
    let ds = Arc::new(SyntheticImages::new(4, 3, 8, 0.3, 11).unwrap().with_len(10));
    let t = Transform::pad_crop(8, 1, true, vec![0.5; 3], vec![0.25; 3]);
    assert!(Loader::new(ds.clone(), t.clone(), opts)
        .unwrap()
        .shard(0, 2)
        .is_err());
    assert!(loader(4, 0, 1).shard(2, 2).is_err());
}

fn small_net(seed: u64) -> SupervisedNet {
    let mut c = NetConfig::new("resnet18", 4).unwrap();
    c.width = 4;
    c.stem = Stem::Cifar;
    c.in_channels = 3;
    SupervisedNet::new(c, &mut Rng::new(seed)).unwrap()
}

const STEPS: usize = 2 * 96 / 16;

fn trainer(net: &SupervisedNet, comm: Box<dyn Communicator>) -> Trainer<'_> {
    let opts = TrainOptions {
        steps: STEPS,
        lr: 0.05,
        warmup_steps: 2,
        ..TrainOptions::default()
    };
    Trainer::new(net, opts, Default::default()).with_data_parallel(comm, 1)
}

/// Runs `f(rank, comm)` for two ranks on threads.
fn two_ranks<T: Send>(f: impl Fn(usize, Box<dyn Communicator>) -> T + Sync) -> Vec<T> {
    let comms = threads(2, Duration::from_secs(120)).unwrap();
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(r, c)| s.spawn(move || f(r, Box::new(c))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The bits of each of `tensors`' f32 values.
fn bits_of(tensors: impl Iterator<Item = Tensor>) -> Vec<Vec<u32>> {
    tensors
        .map(|t| {
            t.to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        })
        .collect()
}

fn bits(net: &SupervisedNet) -> Vec<Vec<u32>> {
    bits_of(net.params().iter().map(|p| p.get()))
}

#[test]
fn a_two_rank_run_resumes_bit_exactly() {
    let dir = std::env::temp_dir().join(format!("slmlp-dist-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fo = FitOptions {
        epochs: 2,
        quiet: true,
        ..FitOptions::default()
    };
    let full: Vec<(Vec<Vec<u32>>, Vec<StepLog>)> = two_ranks(|r, c| {
        let net = small_net(3);
        let steps = fit(&mut trainer(&net, c), &loader(8, r, 2), None, &fo)
            .unwrap()
            .steps;
        (bits(&net), steps)
    });
    assert_eq!(full[0].0, full[1].0, "the ranks' parameters differ");

    // stopped after step 8 (epoch 2, batch 2): rank 0 writes the checkpoint
    two_ranks(|r, c| {
        let net = small_net(3);
        let mut t = trainer(&net, c);
        let l = loader(8, r, 2);
        for b in l.epoch(0, 0).chain(l.epoch(1, 0)).take(8) {
            let b = b.unwrap();
            t.step(&b.images, &b.labels).unwrap();
        }
        if r == 0 {
            std::fs::create_dir_all(&dir).unwrap();
            t.save(&dir.join("checkpoint.safetensors")).unwrap();
        }
    });
    // resumed into differently initialised nets
    let resumed = two_ranks(|r, c| {
        let net = small_net(99);
        let opts = FitOptions {
            out_dir: Some(dir.clone()),
            resume: true,
            ..fo.clone()
        };
        let steps = fit(&mut trainer(&net, c), &loader(8, r, 2), None, &opts)
            .unwrap()
            .steps;
        (bits(&net), steps)
    });
    for (r, (params, steps)) in resumed.iter().enumerate() {
        assert_eq!(
            params, &full[0].0,
            "rank {r}'s parameters differ after the resume"
        );
        assert_eq!(steps.len(), STEPS - 8);
        for (a, b) in full[0].1[8..].iter().zip(steps) {
            assert_eq!(
                a.loss.to_bits(),
                b.loss.to_bits(),
                "step {} loss differs",
                a.step
            );
        }
    }
    // rank 0 alone wrote the metrics of the steps after the resume
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"kind\":\"step\""))
            .count(),
        STEPS - 8
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What one rank's training forward and backward produced: logits,
/// gradients (summed over the ranks) and the BN running statistics.
struct Pass {
    logits: Vec<f32>,
    grads: Vec<Vec<f32>>,
    running: Vec<Vec<f32>>,
}

/// Forward and backward of `images` / `labels` on a fresh SL-MLP net (BN2d
/// in every block, fused with ReLU and with the residual add, BN1d in the
/// projector), the mean loss weighted by `weight`; the gradients summed
/// over `comm`'s ranks; BN statistics over all ranks when `sync`.
fn pass(
    images: &Tensor,
    labels: &Tensor,
    weight: f64,
    comm: Box<dyn Communicator>,
    sync: bool,
) -> Pass {
    let mut c = NetConfig::new("resnet18", 4).unwrap();
    c.width = 4;
    c.stem = Stem::Cifar;
    c.in_channels = 3;
    c.projector = Some(ProjectorConfig::parse("d", 32).unwrap());
    let net = SupervisedNet::new(c, &mut Rng::new(7)).unwrap();
    let comm = Shared::new(comm);
    if sync {
        net.set_batch_norm_sync(Some(Arc::new(comm.clone())));
    }
    let logits = net.forward(images).unwrap();
    let loss = logits.cross_entropy(labels, 0.0, None).unwrap();
    loss.scale(weight).unwrap().backward().unwrap();
    let params = net.params();
    GradReducer::new(&params, BUCKET_BYTES)
        .reduce(&params, &mut **comm.lock().unwrap())
        .unwrap();
    Pass {
        logits: logits.detach().to_vec().unwrap(),
        grads: params
            .iter()
            .map(|p| p.grad().unwrap().to_vec().unwrap())
            .collect(),
        running: net
            .buffers()
            .iter()
            .map(|b| b.get().to_vec().unwrap())
            .collect(),
    }
}

#[test]
fn synced_batch_norm_over_two_ranks_matches_one_rank_with_the_whole_batch() {
    let batch = loader(8, 0, 1).epoch(0, 0).next().unwrap().unwrap();
    let whole = pass(
        &batch.images,
        &batch.labels,
        1.0,
        Box::new(models::dist::Single),
        false,
    );
    let half = |r: usize, t: &Tensor| t.narrow(0, 4 * r, 4).unwrap();
    let ranks = |sync: bool| {
        two_ranks(|r, c| {
            pass(
                &half(r, &batch.images),
                &half(r, &batch.labels),
                0.5,
                c,
                sync,
            )
        })
    };
    // float sums in another order (per rank, then over the ranks; the
    // composed f32 ops against the fused kernel), grown through 18 layers
    // of backward: measured at most 5e-6 of a tensor's largest value (the
    // composed ops on one rank alone differ from the fused kernel by 4e-6);
    // 1e-7 covers the noise of gradients that are zero in exact arithmetic
    // (a bias followed by BatchNorm)
    let close = |what: &str, got: &[f32], want: &[f32]| {
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        testutil::assert_close(what, got, want, 2e-5 * scale + 1e-7, 1e-4);
    };
    let synced = ranks(true);
    let logits: Vec<f32> = synced.iter().flat_map(|p| p.logits.clone()).collect();
    close("logits", &logits, &whole.logits);
    for p in &synced {
        for (i, (g, w)) in p.grads.iter().zip(&whole.grads).enumerate() {
            close(&format!("gradient {i}"), g, w);
        }
        for (i, (m, w)) in p.running.iter().zip(&whole.running).enumerate() {
            close(&format!("running statistic {i}"), m, w);
        }
    }
    // every rank ends with the same running statistics
    assert_eq!(synced[0].running, synced[1].running);
    // without --sync-bn each rank normalises its own 4 images: far off
    let own = ranks(false);
    let logits: Vec<f32> = own.iter().flat_map(|p| p.logits.clone()).collect();
    let scale = whole.logits.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    let tol = testutil::Tol::new(2e-5 * scale, 1e-4);
    assert!(testutil::check_close("logits", &logits, &whole.logits, tol).is_err());
}

/// A communicator that logs its all-reduces.
struct Logged {
    inner: Box<dyn Communicator>,
    log: Arc<Mutex<Vec<&'static str>>>,
}

impl Communicator for Logged {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn all_reduce_sum(&mut self, t: &Tensor) -> engine::Result<Tensor> {
        self.log.lock().unwrap().push("all-reduce");
        self.inner.all_reduce_sum(t)
    }
    fn broadcast(&mut self, t: &Tensor, root: usize) -> engine::Result<Tensor> {
        self.inner.broadcast(t, root)
    }
    fn all_gather(&mut self, t: &Tensor) -> engine::Result<Tensor> {
        self.inner.all_gather(t)
    }
    fn barrier(&mut self) -> engine::Result<()> {
        self.inner.barrier()
    }
}

#[test]
fn reduction_overlapped_with_backward_gives_the_same_bits_and_starts_before_it_ends() {
    let batch = loader(8, 0, 1).epoch(0, 0).next().unwrap().unwrap();
    let results = two_ranks(|r, c| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let comm = Shared::new(Box::new(Logged {
            inner: c,
            log: log.clone(),
        }));
        // two micro-batches of 2 images on each rank
        let part = |k: usize, t: &Tensor| t.narrow(0, 4 * r + 2 * k, 2).unwrap();
        let run = |overlap: bool| {
            let net = small_net(3);
            let params = net.params();
            // buckets of 1024 floats: many of them
            let reducer = Arc::new(GradReducer::new(&params, 4096));
            let backward = |k: usize| -> engine::Result<()> {
                let logits = net.forward(&part(k, &batch.images))?;
                let loss = logits.cross_entropy(&part(k, &batch.labels), 0.0, None)?;
                loss.scale(0.25)?.backward()?;
                log.lock().unwrap().push("backward ended");
                Ok(())
            };
            backward(0).unwrap();
            let mut acc = Accumulator::default();
            acc.add(&params).unwrap();
            if overlap {
                reducer
                    .reduce_during(&params, &comm, acc, || backward(1))
                    .unwrap();
            } else {
                backward(1).unwrap();
                acc.add(&params).unwrap();
                acc.finish(&params).unwrap();
                reducer
                    .reduce(&params, &mut **comm.lock().unwrap())
                    .unwrap();
            }
            let buckets = reducer.buckets().len();
            let events = std::mem::take(&mut *log.lock().unwrap());
            let grads = bits_of(params.iter().map(|p| p.grad().unwrap()));
            (grads, buckets, events)
        };
        (run(false), run(true))
    });
    for (after, during) in &results {
        assert_eq!(during.0, after.0, "overlapped gradients differ");
        let (buckets, events) = (during.1, &during.2);
        assert!(buckets > 4, "{buckets} buckets");
        // one all-reduce per bucket, the first ones before the last
        // micro-batch's backward pass ended
        assert_eq!(
            events.iter().filter(|e| **e == "all-reduce").count(),
            buckets
        );
        let ended = events.iter().rposition(|e| *e == "backward ended").unwrap();
        let before = events[..ended]
            .iter()
            .filter(|e| **e == "all-reduce")
            .count();
        assert!(
            before > buckets / 2,
            "only {before} of {buckets} buckets summed during backward: {events:?}"
        );
        // the reference ran them all after it
        assert_eq!(after.2.iter().position(|e| *e == "all-reduce"), Some(2));
    }
    assert_eq!(
        results[0].1 .0, results[1].1 .0,
        "the ranks' gradients differ"
    );
}
