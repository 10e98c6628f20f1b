//! Resizing: the front-end's checks.

use crate::{DType, Tensor};

#[test]
fn backward_checks_the_gradient_it_gets() {
    let x = Tensor::ones(&[1, 2, 3, 3], DType::F32)
        .requires_grad_()
        .unwrap();
    let y = x.upsample_nearest2d_scale(2).unwrap();
    let e = y
        .backward_with(Tensor::ones(y.dims(), DType::F64))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gradient") && e.contains("upsample_nearest2d"),
        "{e}"
    );
    let y = x.upsample_bilinear2d([4, 5], false).unwrap();
    y.backward_with(Tensor::ones(y.dims(), DType::F32)).unwrap();
    // bilinear weights sum to one per output: the gradient's total is kept
    let g = x.grad().unwrap().to_vec::<f32>().unwrap();
    assert!((g.iter().sum::<f32>() - 40.0).abs() < 1e-4, "{g:?}");
}

#[test]
fn bad_sizes_are_errors() {
    let x = Tensor::ones(&[1, 2, 3, 3], DType::F32);
    assert!(x.upsample_nearest2d([0, 2]).is_err());
    assert!(x.upsample_nearest2d_scale(0).is_err());
    let e = Tensor::ones(&[2, 3], DType::F32).upsample_bilinear2d([2, 2], true);
    assert!(e.unwrap_err().to_string().contains("4 dims"));
}
