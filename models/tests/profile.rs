//! The profiler on real training steps: two SGD steps of a small SL-MLP
//! ResNet-18 on the CPU, checked against the network's analytic FLOPs.

use engine::profile::{self, Ceiling};
use engine::{DType, Rng, Tensor};
use models::train::{TrainOptions, Trainer};
use models::{NetConfig, ProjectorConfig, Stem, SupervisedNet};

#[test]
fn a_profile_of_two_cpu_steps_counts_the_models_flops() {
    let (width, in_ch, classes, n, s) = (4, 1, 3, 4, 12);
    let mut config = NetConfig::new("resnet18", classes).unwrap();
    config.width = width;
    config.stem = Stem::Cifar;
    config.in_channels = in_ch;
    let d = config.resnet().unwrap().feature_dim();
    config.projector = Some(ProjectorConfig::parse("d", d).unwrap());
    let net = SupervisedNet::new(config, &mut Rng::new(0)).unwrap();
    let opts = TrainOptions {
        steps: 3,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&net, opts, Default::default());
    trainer.min_batch = 2;
    let mut rng = Rng::new(1);
    let x = Tensor::randn(&[n, in_ch, s, s], 0.0, 1.0, DType::F32, &mut rng);
    let y = Tensor::from_vec(vec![0i64, 1, 2, 1], &[n]).unwrap();

    // off: stop without start is an error, not a panic
    assert!(profile::stop(1).is_err());
    trainer.step(&x, &y).unwrap(); // warm-up, not profiled
    profile::start(Ceiling::new(345e9, 20e9, "test ceiling").unwrap()).unwrap();
    assert!(
        profile::start(Ceiling::new(1.0, 1.0, "x").unwrap()).is_err(),
        "one profile at a time"
    );
    let t0 = std::time::Instant::now();
    for _ in 0..2 {
        trainer.step(&x, &y).unwrap();
    }
    let wall = t0.elapsed().as_secs_f64();
    let p = profile::stop(2).unwrap();

    // the convolutions' FLOPs are the network's: per image, forward MACs M
    // of every conv (the encoder has no fc); the backward computes every
    // weight gradient and every data gradient but the stem's (the images
    // need none). The stem: 3x3 stride 1 on s x s, in_ch -> width.
    let m = net.encoder.macs(s, s) as f64;
    let stem = (width * in_ch * 9 * s * s) as f64;
    let per_step = 2.0 * n as f64 * (m + m + (m - stem));
    assert_eq!(p.flops_of("conv2d"), Some(2.0 * per_step));
    // the projector's Linear(d, d) and the classifier Linear(d, classes):
    // forward, input and weight gradients, 2 FLOPs per MAC each
    let linear_macs = (d * d + d * classes) as f64;
    assert_eq!(
        p.flops_of("linear"),
        Some(2.0 * 3.0 * 2.0 * n as f64 * linear_macs)
    );
    // all 20 convolutions ran forward and backward in both steps
    let calls = |op: &str, phase: &str| -> u64 {
        p.rows
            .iter()
            .filter(|r| r.op == op && r.phase == phase)
            .map(|r| r.calls)
            .sum()
    };
    assert_eq!(calls("conv2d", "forward"), 2 * 20);
    assert_eq!(calls("conv2d", "backward"), 2 * 20);
    assert!(calls("batch_norm_relu", "forward") > 0);
    for r in &p.rows {
        // views (a reshape's backward) move no bytes
        assert!(
            r.calls > 0 && (r.bytes > 0.0 || r.formula.starts_with("a view")),
            "{r:?}"
        );
        assert!(
            r.seconds >= 0.0 && r.inclusive_seconds >= r.seconds,
            "{r:?}"
        );
    }
    // the flatten after pooling is a view: its backward moves no bytes
    assert!(p
        .rows
        .iter()
        .any(|r| r.op == "reshape" && r.bytes == 0.0 && r.achieved().is_none()));
    for r in p.rows.iter().filter(|r| r.op == "conv2d") {
        assert!(r.seconds > 0.0, "{r:?}");
        let pct = r.percent_of(&p.ceiling).unwrap();
        assert!(pct > 0.0 && pct.is_finite(), "{r:?}");
    }
    // sorted by time; exclusive times add up to the time in ops, which
    // fits in the steps' wall time
    assert!(p.rows.windows(2).all(|w| w[0].seconds >= w[1].seconds));
    let sum: f64 = p.rows.iter().map(|r| r.seconds).sum();
    assert!(sum > 0.0 && (sum - p.op_seconds).abs() <= 1e-6 * p.op_seconds.max(1.0));
    assert!(p.op_seconds <= p.wall_seconds && p.op_seconds <= wall + 1e-3);
    assert_eq!((p.steps, p.timing), (2, "cpu wall clock"));
    assert_eq!((p.dropped, p.untimed, p.errors), (0, 0, 0));

    // the table: the top rows, "other", the totals
    let t = p.table(5);
    assert!(t.contains("conv2d backward [cpu"), "{t}");
    assert!(t.contains("other ("), "{t}");
    assert!(t.contains("% peak") && t.contains("test ceiling"), "{t}");
    let ranked = |l: &&str| l.trim_start().starts_with(|c: char| c.is_ascii_digit());
    assert_eq!(
        t.lines()
            .filter(ranked)
            .filter(|l| l.contains(" [cpu"))
            .count(),
        5,
        "{t}"
    );
    // per op, all shapes: conv2d's FLOPs again, 20 calls a step each way
    let by = p.by_op();
    let conv_b = by
        .iter()
        .find(|t| t.op == "conv2d" && t.phase == "backward")
        .unwrap();
    assert_eq!(conv_b.calls, 2 * 20);
    let conv_f = by
        .iter()
        .find(|t| t.op == "conv2d" && t.phase == "forward")
        .unwrap();
    assert_eq!(
        conv_f.flops.unwrap() + conv_b.flops.unwrap(),
        2.0 * per_step
    );
    assert!(by
        .iter()
        .any(|t| t.op == "batch_norm_relu" && t.flops.is_none()));
    assert!(t.contains("by op (all shapes):"), "{t}");
    // the JSON round-trips with every row
    let j: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&p.to_json()).unwrap()).unwrap();
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), p.rows.len());
    let conv: f64 = rows
        .iter()
        .filter(|r| r["op"] == "conv2d")
        .map(|r| r["flops"].as_f64().unwrap())
        .sum();
    assert_eq!(conv, 2.0 * per_step);
    assert_eq!(j["ceiling"]["flops_per_s"], 345e9);

    // memory, from glibc's counters: the forward leaves at least the
    // stem's output for its BatchNorm's backward ([4, 4, 12, 12] f32)
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let m = p.memory.as_ref().unwrap();
        assert_eq!(m.source, "host malloc");
        let stem_out = (n * width * s * s * 4) as f64;
        assert!(m.after_forward - m.start >= stem_out, "{m:?}");
        assert!(m.peak >= m.after_forward, "{m:?}");
        assert!(t.contains("memory (host malloc): "), "{t}");
        assert_eq!(j["memory_bytes"]["after_forward"], m.after_forward);
    }

    // after stop nothing is recorded
    trainer.step(&x, &y).unwrap();
    assert!(!profile::active());
    assert!(profile::stop(1).is_err());
}
