//! Elementwise ops: the front-end's gradient checks and the CPU backend.

use crate::{DType, Tensor};

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape).unwrap()
}

#[test]
fn relu_backward_checks_the_gradient_it_gets() {
    let x = t(&[-1.0, 2.0, 0.0, 3.0], &[4]).requires_grad_().unwrap();
    let y = x.relu().unwrap();
    let e = y
        .backward_with(Tensor::ones(&[4], DType::F64))
        .unwrap_err()
        .to_string();
    assert!(e.contains("relu") && e.contains("gradient"), "{e}");
    let y = x.relu().unwrap();
    y.backward_with(t(&[1.0, 2.0, 3.0, 4.0], &[4])).unwrap();
    assert_eq!(
        x.grad().unwrap().to_vec::<f32>().unwrap(),
        [0.0, 2.0, 0.0, 4.0]
    );
}

#[test]
fn sub_and_neg_broadcast_and_backpropagate() {
    let a = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])
        .requires_grad_()
        .unwrap();
    let b = t(&[1.0, 1.0, 2.0], &[3]).requires_grad_().unwrap();
    let y = b.sub(&a).unwrap().neg().unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), [0.0, 1.0, 1.0, 3.0, 4.0, 4.0]);
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(a.grad().unwrap().to_vec::<f32>().unwrap(), [1.0; 6]);
    assert_eq!(b.grad().unwrap().to_vec::<f32>().unwrap(), [-2.0; 3]);
}

#[test]
fn mixed_dtypes_are_an_error() {
    let e = t(&[1.0], &[1])
        .add(&Tensor::ones(&[1], DType::F64))
        .unwrap_err()
        .to_string();
    assert!(e.contains("like the first operand"), "{e}");
}
