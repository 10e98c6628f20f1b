//! Sums: the front-end's checks and the CPU backend.

use crate::{DType, Tensor};

#[test]
fn sums_keep_or_drop_the_reduced_dims() {
    let x = Tensor::from_vec((0..6).map(|i| i as f32).collect(), &[2, 3]).unwrap();
    let y = x.sum_dims(&[1, 1], true).unwrap();
    assert_eq!(y.dims(), &[2, 1]);
    assert_eq!(y.to_vec::<f32>().unwrap(), [3.0, 12.0]);
    assert_eq!(x.sum_dims(&[0], false).unwrap().dims(), &[3]);
    let e = x.sum_dims(&[2], false).unwrap_err().to_string();
    assert!(e.contains("dim 2 out of range"), "{e}");
}

#[test]
fn backward_checks_the_gradient_it_gets() {
    let x = Tensor::ones(&[2, 3], DType::F32).requires_grad_().unwrap();
    let y = x.sum_dims(&[0], false).unwrap();
    let e = y
        .backward_with(Tensor::ones(&[3], DType::BF16))
        .unwrap_err()
        .to_string();
    assert!(e.contains("sum") && e.contains("gradient"), "{e}");
    let y = x.sum_dims(&[0], false).unwrap();
    y.backward_with(Tensor::ones(&[3], DType::F32)).unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f32>().unwrap(), [1.0; 6]);
}
