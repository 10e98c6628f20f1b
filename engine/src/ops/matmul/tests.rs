//! Matrix products: the CPU gemm's bounds checks, the front-end's argument
//! and gradient checks, and linear against matmul + add.

use super::{gemm, gemm_strided, MatRef};
use crate::{DType, Rng, Tensor};

fn mat(data: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef {
        data,
        rows,
        cols,
        row_stride: cols,
        col_stride: 1,
    }
}

#[test]
fn gemm_refuses_slices_too_short_for_their_shapes() {
    let (a, b) = ([1.0f32; 6], [1.0f32; 6]);
    let mut dst = [0.0f32; 4];
    gemm(&mut dst, mat(&a, 2, 3), mat(&b, 3, 2), false, 1).unwrap();
    assert_eq!(dst, [3.0; 4]);
    // a claims 3 rows of 3 in 6 elements
    let e = gemm(&mut [0.0; 6], mat(&a, 3, 3), mat(&b, 3, 2), false, 1).unwrap_err();
    assert!(e.to_string().contains("gemm"), "{e}");
    // a stride that steps past b's data
    let strided = MatRef {
        row_stride: 4,
        ..mat(&b, 3, 2)
    };
    assert!(gemm(&mut dst, mat(&a, 2, 3), strided, false, 1).is_err());
    // inner dims that do not chain, an output of the wrong size
    assert!(gemm(&mut dst, mat(&a, 2, 3), mat(&b, 2, 3), false, 1).is_err());
    assert!(gemm(&mut [0.0; 3], mat(&a, 2, 3), mat(&b, 3, 2), false, 1).is_err());
    // a destination too short for its row stride, a row stride < n
    assert!(gemm_strided(&mut [0.0; 4], 3, mat(&a, 2, 3), mat(&b, 3, 2), false, 1).is_err());
    assert!(gemm_strided(&mut [0.0; 6], 1, mat(&a, 2, 3), mat(&b, 3, 2), false, 1).is_err());
    let mut tile = [0.0f32; 5];
    gemm_strided(&mut tile, 3, mat(&a, 2, 3), mat(&b, 3, 2), false, 1).unwrap();
    assert_eq!(tile, [3.0, 3.0, 0.0, 3.0, 3.0]);
}

#[test]
fn linear_checks_its_arguments_once() {
    let x = Tensor::zeros(&[2, 3], DType::F32);
    let e = x
        .linear(&Tensor::zeros(&[4], DType::F32), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("weight must have 2 dims"), "{e}");
    let w = Tensor::zeros(&[4, 3], DType::F32);
    let e = x
        .linear(&w, Some(&Tensor::zeros(&[3], DType::F32)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match 4 output features"), "{e}");
    let e = x
        .linear(&Tensor::zeros(&[4, 3], DType::BF16), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("like the first operand"), "{e}");
    let e = x
        .linear(&Tensor::zeros(&[4, 2], DType::F32), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("inner dims differ"), "{e}");
    // a one-element bias broadcasts
    let y = x.linear(&w, Some(&Tensor::ones(&[1], DType::F32))).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), [1.0; 8]);
}

#[test]
fn linear_matches_matmul_plus_bias_with_gradients() {
    let mut rng = Rng::new(3);
    let leaf = |s: &[usize], rng: &mut Rng| {
        Tensor::randn(s, 0.0, 1.0, DType::F32, rng)
            .requires_grad_()
            .unwrap()
    };
    let (x, w, b) = (
        leaf(&[2, 3, 5], &mut rng),
        leaf(&[4, 5], &mut rng),
        leaf(&[4], &mut rng),
    );
    let up = Tensor::randn(&[2, 3, 4], 0.0, 1.0, DType::F32, &mut rng);
    let y = x.linear(&w, Some(&b)).unwrap();
    y.backward_with(up.clone()).unwrap();
    let fused: Vec<Vec<f32>> = [
        &y,
        &x.grad().unwrap(),
        &w.grad().unwrap(),
        &b.grad().unwrap(),
    ]
    .iter()
    .map(|t| t.to_vec::<f32>().unwrap())
    .collect();
    let (x2, w2, b2) = (
        x.detach().requires_grad_().unwrap(),
        w.detach().requires_grad_().unwrap(),
        b.detach().requires_grad_().unwrap(),
    );
    let y2 = x2
        .matmul(&w2.transpose(0, 1).unwrap())
        .unwrap()
        .add(&b2)
        .unwrap();
    y2.backward_with(up).unwrap();
    let plain = [
        &y2,
        &x2.grad().unwrap(),
        &w2.grad().unwrap(),
        &b2.grad().unwrap(),
    ];
    for (f, p) in fused.iter().zip(plain) {
        let p = p.to_vec::<f32>().unwrap();
        assert_eq!(f.len(), p.len());
        for (a, b) in f.iter().zip(&p) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}

#[test]
fn matmul_backward_checks_the_gradient_it_gets() {
    let a = Tensor::ones(&[2, 3, 4], DType::F32)
        .requires_grad_()
        .unwrap();
    let b = Tensor::ones(&[4, 5], DType::F32).requires_grad_().unwrap();
    let y = a.matmul(&b).unwrap();
    assert_eq!(y.dims(), &[2, 3, 5]);
    let e = y
        .backward_with(Tensor::ones(&[2, 3, 5], DType::F64))
        .unwrap_err()
        .to_string();
    assert!(e.contains("matmul") && e.contains("gradient"), "{e}");
    let y = a.matmul(&b).unwrap();
    y.backward_with(Tensor::ones(&[2, 3, 5], DType::F32))
        .unwrap();
    assert_eq!(a.grad().unwrap().to_vec::<f32>().unwrap(), [5.0; 24]);
    assert_eq!(b.grad().unwrap().to_vec::<f32>().unwrap(), [6.0; 20]);
    let e = a.matmul(&Tensor::ones(&[3, 4, 5], DType::F32)).unwrap_err();
    assert!(e.to_string().contains("batch dims differ"), "{e}");
}
