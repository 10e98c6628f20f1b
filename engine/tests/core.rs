//! Core tensor, view and autograd behaviour, checked by finite differences.

use engine::gradcheck::check_gradients;
use engine::{DType, Tensor};
use testutil::randn;

#[test]
fn views_share_data_and_index_correctly() {
    let x = Tensor::from_vec((0..24).map(|i| i as f32).collect(), &[2, 3, 4]).unwrap();
    let p = x.permute(&[2, 0, 1]).unwrap();
    assert_eq!(p.dims(), &[4, 2, 3]);
    assert!(!p.is_contiguous());
    assert_eq!(
        p.to_vec::<f32>().unwrap()[..6],
        [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]
    );
    let n = x.narrow(2, 1, 2).unwrap();
    assert_eq!(n.to_vec::<f32>().unwrap()[..4], [1.0, 2.0, 5.0, 6.0]);
    let c = Tensor::cat(&[x.clone(), x.clone()], 1).unwrap();
    assert_eq!(c.dims(), &[2, 6, 4]);
    assert_eq!(
        c.narrow(1, 3, 3).unwrap().to_vec::<f32>().unwrap(),
        x.narrow(0, 0, 2).unwrap().to_vec::<f32>().unwrap()
    );
    let s = Tensor::stack(&[x.clone(), x.clone()], 0).unwrap();
    assert_eq!(s.dims(), &[2, 2, 3, 4]);
    assert!(x.reshape(&[5, 5]).is_err());
    assert!(x.permute(&[0, 0, 1]).is_err());
    assert!(x.narrow(1, 2, 2).is_err());
}

#[test]
fn broadcasting_binary_ops() {
    let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3, 1]).unwrap();
    let b = Tensor::from_vec(vec![10.0f32, 20.0], &[2]).unwrap();
    let c = a.add(&b).unwrap();
    assert_eq!(c.dims(), &[3, 2]);
    assert_eq!(
        c.to_vec::<f32>().unwrap(),
        vec![11.0, 21.0, 12.0, 22.0, 13.0, 23.0]
    );
    let bad = Tensor::zeros(&[4], DType::F32);
    assert!(a.add(&Tensor::zeros(&[3, 4, 2], DType::F32)).is_err());
    assert!(b.add(&bad).is_err());
    assert!(
        a.add(&Tensor::zeros(&[3, 1], DType::F64)).is_err(),
        "mixed dtypes are an error"
    );
}

#[test]
fn gradcheck_elementwise_and_reductions() {
    let f = |x: &[Tensor]| x[0].mul(&x[1])?.add(&x[0])?.div(&x[1].exp()?)?.relu();
    check_gradients(f, &[randn(&[3, 5], 1), randn(&[5], 2)], 1e-6, 1e-7, 1e-5).unwrap();
    let f = |x: &[Tensor]| x[0].sub(&x[1])?.sigmoid()?.tanh()?.sum_dims(&[0, 2], true);
    check_gradients(
        f,
        &[randn(&[2, 3, 4], 3), randn(&[3, 1], 4)],
        1e-6,
        1e-7,
        1e-5,
    )
    .unwrap();
    let f = |x: &[Tensor]| {
        x[0].mul(&x[0])?
            .add_scalar(1.0)?
            .sqrt()?
            .log()?
            .powf(1.5)?
            .mean_dims(&[1], false)
    };
    check_gradients(f, &[randn(&[4, 3], 5)], 1e-6, 1e-7, 1e-5).unwrap();
}

#[test]
fn gradcheck_views() {
    let f = |x: &[Tensor]| {
        let p = x[0]
            .permute(&[1, 0, 2])?
            .narrow(2, 1, 3)?
            .reshape(&[3, 6])?;
        Tensor::cat(&[p.clone(), x[1].clone()], 0)?
            .scale(2.0)?
            .expand(&[2, 5, 6])
    };
    check_gradients(
        f,
        &[randn(&[2, 3, 5], 6), randn(&[2, 6], 7)],
        1e-6,
        1e-7,
        1e-5,
    )
    .unwrap();
}

#[test]
fn gradcheck_matmul_and_linear() {
    let f = |x: &[Tensor]| x[0].matmul(&x[1]);
    check_gradients(f, &[randn(&[5, 7], 8), randn(&[7, 3], 9)], 1e-6, 1e-7, 1e-5).unwrap();
    let f = |x: &[Tensor]| x[0].matmul(&x[1]);
    check_gradients(
        f,
        &[randn(&[2, 3, 4], 10), randn(&[2, 4, 5], 11)],
        1e-6,
        1e-7,
        1e-5,
    )
    .unwrap();
    let f = |x: &[Tensor]| x[0].transpose(0, 1)?.linear(&x[1], Some(&x[2]));
    check_gradients(
        f,
        &[randn(&[7, 6], 12), randn(&[5, 7], 13), randn(&[5], 14)],
        1e-6,
        1e-7,
        1e-5,
    )
    .unwrap();
}

#[test]
fn gradients_accumulate_and_graph_is_freed() {
    let w = randn(&[3], 20).requires_grad_().unwrap();
    for _ in 0..2 {
        w.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    }
    let g = w.grad().unwrap().to_vec::<f64>().unwrap();
    let expected: Vec<f64> = w.to_vec::<f64>().unwrap().iter().map(|v| 4.0 * v).collect();
    assert_eq!(g, expected);
    let loss = w.exp().unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    let err = loss.backward().unwrap_err().to_string();
    assert!(err.contains("second time"), "{err}");
}

#[test]
fn no_grad_records_nothing() {
    let w = randn(&[3], 21).requires_grad_().unwrap();
    let y = {
        let _g = engine::no_grad();
        w.mul(&w).unwrap()
    };
    assert!(!y.requires_grad());
    assert!(y.sum_all().unwrap().backward().is_err());
}

#[test]
fn casts_round_trip_and_carry_gradients() {
    let x = Tensor::from_vec(vec![1.0f32, -2.5, 3.140625, 65504.0], &[4]).unwrap();
    for dt in [DType::F64, DType::F16, DType::BF16] {
        let back = x.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(
            back.to_vec::<f32>().unwrap()[..3],
            [1.0, -2.5, 3.140625],
            "{dt}"
        );
    }
    let w = x.requires_grad_().unwrap();
    w.to_dtype(DType::BF16)
        .unwrap()
        .scale(2.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = w.grad().unwrap();
    assert_eq!(g.dtype(), DType::F32);
    assert_eq!(g.to_vec::<f32>().unwrap(), vec![2.0; 4]);
}

#[test]
fn backward_frees_saved_tensors() {
    let x = randn(&[4, 5], 22).requires_grad_().unwrap();
    let y = x.exp().unwrap(); // exp's backward saves its output
    let saved = std::sync::Arc::downgrade(y.storage());
    let loss = y.sum_all().unwrap();
    drop(y);
    assert!(
        saved.upgrade().is_some(),
        "the graph keeps what backward needs"
    );
    loss.backward().unwrap();
    assert!(
        saved.upgrade().is_none(),
        "backward must release saved tensors once used"
    );
    assert!(x.grad().is_some());
}
