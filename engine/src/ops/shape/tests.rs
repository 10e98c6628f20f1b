//! Shape ops: views, cat and the checks of narrow's backward.

use crate::{DType, Tensor};

fn iota(shape: &[usize]) -> Tensor {
    let n = shape.iter().product::<usize>();
    Tensor::from_vec((0..n).map(|i| i as f32).collect(), shape).unwrap()
}

#[test]
fn cat_joins_and_splits_its_gradient() {
    let a = iota(&[2, 2]).requires_grad_().unwrap();
    let b = iota(&[2, 1]).requires_grad_().unwrap();
    let y = Tensor::cat(&[a.clone(), b.clone()], 1).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), [0.0, 1.0, 0.0, 2.0, 3.0, 1.0]);
    y.backward_with(iota(&[2, 3])).unwrap();
    assert_eq!(
        a.grad().unwrap().to_vec::<f32>().unwrap(),
        [0.0, 1.0, 3.0, 4.0]
    );
    assert_eq!(b.grad().unwrap().to_vec::<f32>().unwrap(), [2.0, 5.0]);
    assert!(Tensor::cat(&[], 0).is_err());
    assert!(Tensor::cat(&[iota(&[2, 2]), iota(&[3, 1])], 1).is_err());
}

#[test]
fn narrow_backward_checks_the_gradient_it_gets() {
    let x = iota(&[3, 4]).requires_grad_().unwrap();
    let y = x.narrow(1, 1, 2).unwrap();
    let e = y
        .backward_with(Tensor::ones(&[3, 2], DType::F64))
        .unwrap_err()
        .to_string();
    assert!(e.contains("narrow") && e.contains("gradient"), "{e}");
    let y = x.narrow(1, 1, 2).unwrap();
    y.backward_with(Tensor::ones(&[3, 2], DType::F32)).unwrap();
    let g = x.grad().unwrap().to_vec::<f32>().unwrap();
    assert_eq!(
        g,
        [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    );
}
