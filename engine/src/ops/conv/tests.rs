//! Convolutions: the front-end's checks and the CPU primitives one by one.

use super::{ConvOps, ConvTranspose2dParams};
use crate::backend::Cpu;
use crate::layout::Conv2dParams;
use crate::{DType, Rng, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F64, &mut Rng::new(seed))
}

#[test]
fn backward_checks_the_gradient_it_gets() {
    let x = randn(&[1, 2, 5, 5], 1).requires_grad_().unwrap();
    let w = randn(&[3, 2, 3, 3], 2);
    let y = x.conv2d(&w, None, Conv2dParams::default()).unwrap();
    assert_eq!(y.dims(), &[1, 3, 3, 3]);
    let e = y
        .backward_with(Tensor::ones(y.dims(), DType::F32))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gradient") && e.contains("conv2d"), "{e}");
    let y = x
        .conv_transpose2d(
            &randn(&[2, 3, 2, 2], 3),
            None,
            [2, 2],
            [0, 0],
            [0, 0],
            [1, 1],
            1,
        )
        .unwrap();
    let e = y
        .backward_with(Tensor::ones(&[1, 3, 10, 10], DType::F32))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gradient") && e.contains("conv_transpose2d"),
        "{e}"
    );
}

#[test]
fn bias_gradient_sums_batch_and_pixels_per_channel() {
    let dy = randn(&[3, 4, 2, 5], 4);
    let db = Cpu.conv2d_bias_grad(&dy).unwrap().to_vec::<f64>().unwrap();
    let v = dy.to_vec::<f64>().unwrap();
    for (c, got) in db.iter().enumerate() {
        let want: f64 = (0..3)
            .map(|n| v[(n * 4 + c) * 10..][..10].iter().sum::<f64>())
            .sum();
        assert!((got - want).abs() < 1e-12, "channel {c}: {got} vs {want}");
    }
}

#[test]
fn operands_must_share_a_device_and_params_default_alike() {
    let x = randn(&[1, 2, 5, 5], 1);
    let e = x.conv2d(
        &randn(&[3, 2, 3, 3], 2).to_dtype(DType::F32).unwrap(),
        None,
        Conv2dParams::default(),
    );
    assert!(e.unwrap_err().to_string().contains("f64"));
    let t = ConvTranspose2dParams::default();
    assert_eq!(t.output_padding, [0, 0]);
    assert_eq!(t.conv(), Conv2dParams::default());
}
