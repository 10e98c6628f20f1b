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

/// The forward's batched plan (whole images per GEMM for narrow layers)
/// gives the per-image plan's output, and the stride-1 input gradient as a
/// forward convolution gives the GEMM + col2im one, up to summation order
/// (f64: within 1e-10), on shapes that take each path: 3x3 padded, stride
/// 2, pointwise, grouped, dilated and wide, with batch sizes that leave a
/// short last chunk.
#[test]
fn batched_and_flipped_paths_match_the_per_image_ones() {
    use super::cpu::{columns, conv_backward, conv_forward, input_grad, Given};
    use testutil::assert_close;
    let p = |stride, padding, dilation, groups| Conv2dParams {
        stride: [stride; 2],
        padding: [padding; 2],
        dilation: [dilation; 2],
        groups,
    };
    // (x dims, w dims, params, forward takes the batched plan)
    let cases = [
        ([5, 16, 28, 28], [16, 16, 3, 3], p(1, 1, 1, 1), true),
        ([7, 16, 28, 28], [32, 16, 3, 3], p(2, 1, 1, 1), true),
        ([6, 16, 28, 28], [16, 16, 1, 1], p(1, 0, 1, 1), true),
        ([3, 8, 14, 14], [16, 4, 3, 3], p(1, 1, 1, 2), true),
        ([4, 6, 11, 9], [8, 6, 3, 3], p(1, 1, 2, 1), true),
        ([2, 5, 10, 10], [6, 5, 5, 5], p(1, 0, 1, 1), true),
        ([3, 64, 8, 8], [256, 64, 3, 3], p(1, 1, 1, 1), false),
    ];
    for (i, (xd, wd, params, batched)) in cases.into_iter().enumerate() {
        let (x, w) = (randn(&xd, 10 + i as u64), randn(&wd, 20 + i as u64));
        let g = super::geometry(&x, &w, None, params).unwrap();
        let dy = randn(&g.y_dims(), 30 + i as u64);
        assert_eq!(
            columns(&g, true) > columns(&g, false),
            batched,
            "case {i}: {g:?}"
        );
        let (x, w, dy) = (
            x.to_vec::<f64>().unwrap(),
            w.to_vec::<f64>().unwrap(),
            dy.to_vec::<f64>().unwrap(),
        );
        let b: Vec<f64> = (0..g.cout).map(|c| c as f64 / 7.0).collect();
        let fwd = |on| conv_forward(&x, &w, Some(&b), &g, 2, on);
        assert_close(
            &format!("case {i} forward"),
            &fwd(true),
            &fwd(false),
            1e-10,
            1e-10,
        );
        // and with a row and a column no window reaches, as a transposed
        // convolution's output padding leaves them
        let padded = super::Conv2dGeom {
            h: g.h + 1,
            w: g.w + 1,
            ..g
        };
        // (not for 1x1 kernels, whose direct path takes equal planes)
        let variants = if g.kh * g.kw > 1 { 2 } else { 1 };
        for (g, what) in [(g, "input gradient"), (padded, "output-padded")]
            .into_iter()
            .take(variants)
        {
            assert_close(
                &format!("case {i} {what}"),
                &input_grad(&dy, &w, &g),
                &conv_backward(Given::Weight(&w), &dy, &g),
                1e-10,
                1e-10,
            );
        }
    }
}
