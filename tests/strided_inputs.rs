//! Ops take views (permuted, narrowed, expanded) as readily as contiguous
//! tensors: same values and, by finite differences, correct gradients
//! through the view.

use engine::gradcheck::check_gradients;
use engine::ops::{BatchNormArgs, Conv2dParams};
use engine::{DType, Result, Tensor};
use testutil::randn;

/// [N, C, W, H] stored, viewed as [N, C, H, W] (non-contiguous), then the
/// last column dropped (an offset/narrowed view).
fn view(x: &Tensor) -> Result<Tensor> {
    let w = x.dims()[2];
    x.permute(&[0, 1, 3, 2])?.narrow(3, 0, w - 1)
}

#[test]
fn views_match_contiguous_copies() {
    let x = randn(&[2, 3, 7, 6], 1);
    let v = view(&x).unwrap();
    assert!(!v.is_contiguous());
    let c = Tensor::from_vec(v.to_vec::<f64>().unwrap(), v.dims()).unwrap();
    let w = randn(&[4, 3, 3, 3], 2);
    let p = Conv2dParams {
        stride: [2, 1],
        padding: [1, 1],
        ..Default::default()
    };
    let same =
        |a: Tensor, b: Tensor| assert_eq!(a.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap());
    same(
        v.conv2d(&w, None, p).unwrap(),
        c.conv2d(&w, None, p).unwrap(),
    );
    same(
        v.max_pool2d([3, 3], [2, 2], [1, 1]).unwrap(),
        c.max_pool2d([3, 3], [2, 2], [1, 1]).unwrap(),
    );
    same(v.relu().unwrap(), c.relu().unwrap());
    let (g, b, rm, rv) = (
        Tensor::ones(&[3], DType::F64),
        Tensor::zeros(&[3], DType::F64),
        Tensor::zeros(&[3], DType::F64),
        Tensor::ones(&[3], DType::F64),
    );
    let a = BatchNormArgs {
        weight: &g,
        bias: &b,
        running_mean: &rm,
        running_var: &rv,
        training: true,
        momentum: 0.1,
        eps: 1e-5,
    };
    same(v.batch_norm(&a).unwrap().out, c.batch_norm(&a).unwrap().out);
    let wt = randn(&[5, 6], 3).transpose(0, 1).unwrap(); // [6, 5] view
    same(
        v.flatten(2)
            .unwrap()
            .narrow(2, 0, 6)
            .unwrap()
            .matmul(&wt)
            .unwrap(),
        c.flatten(2)
            .unwrap()
            .narrow(2, 0, 6)
            .unwrap()
            .matmul(&wt)
            .unwrap(),
    );
}

#[test]
fn gradients_flow_through_views_into_ops() {
    let p = Conv2dParams {
        stride: [1, 2],
        padding: [1, 0],
        groups: 1,
        ..Default::default()
    };
    let f = |x: &[Tensor]| {
        view(&x[0])?
            .conv2d(&x[1], Some(&x[2]), p)?
            .avg_pool2d([2, 2], [1, 1], [0, 0], true)
    };
    check_gradients(
        f,
        &[
            randn(&[2, 3, 6, 5], 4),
            randn(&[2, 3, 3, 3], 5),
            randn(&[2], 6),
        ],
        1e-6,
        1e-7,
        1e-5,
    )
    .unwrap();
    let f = |x: &[Tensor]| {
        x[0].expand(&[4, 3, 5])?
            .mul(&x[1].transpose(0, 2)?)?
            .log_softmax(1)
    };
    check_gradients(
        f,
        &[randn(&[3, 1], 7), randn(&[5, 3, 4], 8)],
        1e-6,
        1e-7,
        1e-5,
    )
    .unwrap();
}
