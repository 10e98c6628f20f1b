//! Pooling: the front-end's checks and the CPU backend against direct sums.

use crate::{DType, Tensor};

fn input() -> Tensor {
    let v: Vec<f32> = (0..2 * 3 * 5 * 4)
        .map(|i| ((i * 7) % 11) as f32 - 5.0)
        .collect();
    Tensor::from_vec(v, &[2, 3, 5, 4]).unwrap()
}

#[test]
fn adaptive_bins_that_divide_equal_plain_windows() {
    let x = Tensor::from_vec(
        (0..2 * 3 * 6 * 4).map(|i| i as f32).collect(),
        &[2, 3, 6, 4],
    )
    .unwrap();
    let a = x
        .adaptive_avg_pool2d([3, 2])
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let w = x
        .avg_pool2d([2, 2], [2, 2], [0, 0], false)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(a, w);
}

#[test]
fn global_average_is_the_plane_mean() {
    let x = input();
    let y = x.adaptive_avg_pool2d([1, 1]).unwrap();
    assert_eq!(y.dims(), &[2, 3, 1, 1]);
    let v = x.to_vec::<f32>().unwrap();
    for (p, m) in y.to_vec::<f32>().unwrap().iter().enumerate() {
        let want = v[p * 20..(p + 1) * 20].iter().sum::<f32>() / 20.0;
        assert!((m - want).abs() <= 1e-6, "plane {p}: {m} vs {want}");
    }
}

#[test]
fn backward_checks_the_gradient_it_gets() {
    let x = input().requires_grad_().unwrap();
    let y = x.max_pool2d([2, 2], [2, 2], [0, 0]).unwrap();
    assert_eq!(y.dims(), &[2, 3, 2, 2]);
    let bad = Tensor::ones(y.dims(), DType::F64);
    let e = y.backward_with(bad).unwrap_err().to_string();
    assert!(e.contains("gradient"), "{e}");
    let y = x.max_pool2d([2, 2], [2, 2], [0, 0]).unwrap();
    y.backward_with(Tensor::ones(y.dims(), DType::F32)).unwrap();
    // each window's maximum gets its one gradient: 2*3*2*2 windows
    let g = x.grad().unwrap().to_vec::<f32>().unwrap();
    assert_eq!(g.iter().sum::<f32>(), 24.0);
}

#[test]
fn bad_geometry_is_an_error() {
    let x = input();
    assert!(x.max_pool2d([0, 2], [1, 1], [0, 0]).is_err());
    assert!(x.avg_pool2d([2, 2], [1, 1], [2, 0], true).is_err());
    assert!(x.adaptive_avg_pool2d([0, 1]).is_err());
    let e = Tensor::zeros(&[2, 3], DType::F32).max_pool2d([1, 1], [1, 1], [0, 0]);
    assert!(e.unwrap_err().to_string().contains("4 dims"));
}
