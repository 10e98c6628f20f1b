//! Data parallelism in the library: the sharded sampler reads exactly the
//! global batches of the unsharded one, and a two-rank run stopped and
//! resumed from rank 0's checkpoint continues bit for bit.

use engine::nn::Module;
use engine::Rng;
use models::data::{Loader, LoaderOptions, SyntheticImages, Transform};
use models::dist::hub::threads;
use models::dist::Communicator;
use models::fit::{fit, FitOptions};
use models::train::{StepLog, TrainOptions, Trainer};
use models::{NetConfig, Stem, SupervisedNet};
use std::sync::Arc;
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

fn bits(net: &SupervisedNet) -> Vec<Vec<u32>> {
    net.params()
        .iter()
        .map(|p| {
            p.get()
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        })
        .collect()
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
