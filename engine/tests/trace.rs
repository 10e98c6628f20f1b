//! The audit trace logs every op of a training step, forward and backward,
//! with shapes, dtypes, layouts, what ran it and its time; off, it logs nothing.

use engine::nn::{BatchNorm, Conv2d, Module};
use engine::ops::Conv2dParams;
use engine::{trace, DType, Rng, Tensor};

fn step(conv: &Conv2d, bn: &BatchNorm, x: &Tensor, y: &Tensor) {
    let h = bn.forward_relu(&conv.forward(x).unwrap()).unwrap();
    let logits = h.adaptive_avg_pool2d([1, 1]).unwrap().flatten(1).unwrap();
    logits
        .cross_entropy(y, 0.0, None)
        .unwrap()
        .backward()
        .unwrap();
}

#[test]
fn trace_follows_a_training_step() {
    let mut rng = Rng::new(0);
    let p = Conv2dParams {
        padding: [1, 1],
        ..Default::default()
    };
    let conv = Conv2d::new("conv1", 3, 4, [3, 3], p, false, &mut rng).unwrap();
    let bn = BatchNorm::new("bn1", 4).unwrap();
    let x = Tensor::randn(&[2, 3, 6, 6], 0.0, 1.0, DType::F32, &mut rng);
    let y = Tensor::from_vec(vec![1i64, 3], &[2]).unwrap();

    trace::to_writer(None);
    step(&conv, &bn, &x, &y); // off: nothing is written anywhere

    let ((), t) = testutil::trace::capture(|| step(&conv, &bn, &x, &y));
    let find = |op: &str, phase: &str| t.find(op, phase);
    let c = find("conv2d", "forward");
    assert_eq!(c["ran"], "cpu:im2col+gemm");
    assert_eq!(c["inputs"][0]["shape"], serde_json::json!([2, 3, 6, 6]));
    assert_eq!(c["inputs"][0]["dtype"], "f32");
    assert_eq!(c["inputs"][1]["shape"], serde_json::json!([4, 3, 3, 3]));
    assert_eq!(c["outputs"][0]["shape"], serde_json::json!([2, 4, 6, 6]));
    assert!(c["us"].as_f64().unwrap() >= 0.0);
    find("batch_norm_relu", "forward");
    find("cross_entropy", "forward");
    for op in ["cross_entropy", "batch_norm_relu", "conv2d"] {
        find(op, "backward");
    }
    // backward runs in reverse: the loss's backward is traced before conv's
    let pos = |op: &str| t.position(op, "backward", None).unwrap();
    assert!(
        pos("cross_entropy") < pos("batch_norm_relu") && pos("batch_norm_relu") < pos("conv2d")
    );
    assert!(
        !t.lines.iter().any(|l| l["op"] == "cast"),
        "no-op casts are not traced"
    );
}
