//! Losses: the front-end's checks and the CPU backend against direct sums.

use crate::{DType, Tensor};

#[test]
fn targets_are_checked_before_anything_runs() {
    let logits = Tensor::zeros(&[3, 4], DType::F32);
    let t = Tensor::from_vec(vec![0i64, 4, 1], &[3]).unwrap();
    let e = logits.cross_entropy(&t, 0.0, None).unwrap_err().to_string();
    assert!(e.contains("target[1] = 4 is outside [0, 4)"), "{e}");
    let t = Tensor::from_vec(vec![-1i64, -1, -1], &[3]).unwrap();
    let e = logits
        .cross_entropy(&t, 0.0, Some(-1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("every one of the 3 rows is ignored"), "{e}");
}

#[test]
fn uniform_logits_cost_log_c() {
    let logits = Tensor::zeros(&[2, 4], DType::F32).requires_grad_().unwrap();
    let t = Tensor::from_vec(vec![1i64, 3], &[2]).unwrap();
    let loss = logits.cross_entropy(&t, 0.0, None).unwrap();
    assert!((loss.item().unwrap() - 4f64.ln()).abs() < 1e-6);
    loss.backward().unwrap();
    // (softmax - onehot) / N: 0.125 off target, -0.375 on it
    let g = logits.grad().unwrap().to_vec::<f32>().unwrap();
    assert_eq!(
        g,
        vec![0.125, -0.375, 0.125, 0.125, 0.125, 0.125, 0.125, -0.375]
    );
}

#[test]
fn loss_gradients_are_checked() {
    let x = Tensor::from_vec(vec![0.5f32, -1.0, 2.0], &[3])
        .unwrap()
        .requires_grad_()
        .unwrap();
    let t = Tensor::zeros(&[3], DType::F32);
    let loss = x.smooth_l1(&t, 1.0).unwrap();
    let e = loss
        .backward_with(Tensor::ones(&[], DType::F64))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gradient [] f64"), "{e}");
    let loss = x.smooth_l1(&t, 1.0).unwrap();
    // (0.125 + 0.5 + 1.5) / 3
    assert!((loss.item().unwrap() - 2.125 / 3.0).abs() < 1e-6);
    loss.backward().unwrap();
    let g = x.grad().unwrap().to_vec::<f32>().unwrap();
    let want = [0.5 / 3.0, -1.0 / 3.0, 1.0 / 3.0];
    assert!(
        g.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
        "{g:?}"
    );
}

#[test]
fn softmax_gradient_shape_is_checked() {
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2])
        .unwrap()
        .requires_grad_()
        .unwrap();
    let y = x.log_softmax(1).unwrap();
    let e = y
        .backward_with(Tensor::ones(&[2, 2], DType::BF16))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gradient [2, 2] bf16"), "{e}");
    assert!(x.softmax(2).is_err());
}

#[test]
fn parity_cases_run_on_the_cpu() {
    let mut cases = Vec::new();
    super::parity::cases(&mut crate::Rng::new(7), &mut cases);
    let ce = cases.iter().filter(|c| c.op == "cross_entropy").count();
    // 4 shapes x 3 dtypes x targets on the device or the host
    assert_eq!(ce, 24);
    assert!(
        cases.len() > ce,
        "softmax, bce and smooth-L1 cases are registered"
    );
    for c in &cases {
        let out = (c.run)(crate::Device::Cpu).unwrap();
        assert!(!out.is_empty(), "{} {}", c.op, c.label);
        if c.op == "cross_entropy" {
            let names: Vec<&str> = out.iter().map(|o| o.0.as_str()).collect();
            assert_eq!(names, ["loss", "dlogits"], "{}", c.label);
        }
    }
}
