//! Convolution's GPU parity cases: conv2d on odd sizes, channel counts not
//! divisible by 8 and ResNet-50 layers at batch 2; conv_transpose2d (cuDNN
//! backward-data) on odd sizes, stride 2, output_padding, dilation and the
//! Mask R-CNN mask head's 2x2 upsampling. The 1x1 stride-1 ones (cuBLASLt
//! GEMMs, `gemm.rs`: forward with the BIAS epilogue, backward data and
//! backward filter) also get ResNet-50's bottleneck shapes with and
//! without bias, and a 1x1 transposed convolution (backward data + bias).
//! `conv2d_residual`: ResNet-50 blocks whose input gradient is summed at
//! the join, the convolutions adding theirs into the sum in place
//! (cuBLASLt with beta 1 for the 1x1 stride-1 one, cuDNN's blend for the
//! strided ones).

use crate::layout::{Conv2dParams, ConvTranspose2dParams};
use crate::parity::{autograd, dims, Case, Input, DTYPES};
use crate::Rng;

/// A conv2d case: (n, cin, h, w, cout, k, stride, pad, bias).
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize, bool);

/// A conv_transpose2d case: (x, weight [Cin, Cout, kh, kw], stride,
/// padding, output_padding, dilation, bias).
type TransposedCase = (
    &'static [usize],
    &'static [usize],
    usize,
    usize,
    usize,
    usize,
    bool,
);

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // (n, cin, h, w, cout, k, stride, pad, bias)
    let conv: [ConvCase; 11] = [
        (2, 3, 13, 11, 5, 3, 1, 1, false),
        (3, 5, 7, 9, 11, 1, 1, 0, true),
        (3, 12, 9, 7, 20, 3, 2, 1, true),
        (2, 36, 10, 10, 52, 1, 1, 0, false),
        (1, 7, 6, 5, 3, 2, 1, 0, true),
        (2, 3, 32, 32, 64, 7, 2, 3, false),
        (2, 64, 56, 56, 64, 3, 1, 1, false),
        (2, 256, 56, 56, 128, 1, 1, 0, false),
        (2, 128, 56, 56, 128, 3, 2, 1, false),
        (2, 256, 56, 56, 512, 1, 2, 0, false),
        (2, 512, 7, 7, 2048, 1, 1, 0, false),
    ];
    // 1x1 stride 1, the GEMM path (besides the four k = 1, s = 1 cases
    // above): ResNet-50's bottleneck expansions and reductions
    let pointwise: [ConvCase; 6] = [
        (2, 64, 56, 56, 256, 1, 1, 0, false),
        (2, 64, 56, 56, 256, 1, 1, 0, true),
        (2, 512, 7, 7, 2048, 1, 1, 0, true),
        (2, 2048, 7, 7, 512, 1, 1, 0, false),
        (2, 2048, 7, 7, 512, 1, 1, 0, true),
        (2, 1024, 14, 14, 256, 1, 1, 0, true),
    ];
    // (x, weight [Cin, Cout, kh, kw], stride, padding, output_padding,
    // dilation, bias)
    let transposed: [TransposedCase; 7] = [
        (&[2, 5, 7, 9], &[5, 3, 3, 3], 2, 1, 1, 1, true),
        (&[1, 4, 6, 5], &[4, 6, 2, 2], 2, 0, 0, 1, false),
        (&[3, 7, 5, 5], &[7, 4, 3, 3], 1, 1, 0, 1, true),
        (&[2, 6, 5, 7], &[6, 5, 4, 4], 2, 1, 0, 1, false),
        (&[2, 3, 6, 5], &[3, 5, 3, 3], 2, 2, 1, 2, true),
        (&[2, 256, 14, 14], &[256, 256, 2, 2], 2, 0, 0, 1, true),
        (&[2, 6, 5, 7], &[6, 9, 1, 1], 1, 0, 0, 1, true),
    ];
    for dtype in DTYPES {
        residual_joins(rng, dtype, out);
        for (n, ci, h, w, co, k, st, p, bias) in conv.into_iter().chain(pointwise) {
            let (x, wt) = ([n, ci, h, w], [co, ci, k, k]);
            let mut inputs = vec![
                Input::randn("x", &x, 1.0),
                Input::randn("w", &wt, 1.0 / ((ci * k * k) as f64).sqrt()),
            ];
            if bias {
                inputs.push(Input::randn("b", &[co], 1.0));
            }
            let params = Conv2dParams {
                stride: [st, st],
                padding: [p, p],
                ..Conv2dParams::default()
            };
            out.push(autograd(
                "conv2d",
                dtype,
                format!(
                    "{}x{} s{st} p{p}{}",
                    dims(&x),
                    dims(&wt),
                    if bias { " +b" } else { "" }
                ),
                rng.next_u64(),
                inputs,
                move |t| Ok(vec![("y".into(), t[0].conv2d(&t[1], t.get(2), params)?)]),
            ));
        }
        for (x, wt, st, p, op, d, bias) in transposed {
            let fan = (wt[0] * wt[2] * wt[3]) as f64;
            let mut inputs = vec![
                Input::randn("x", x, 1.0),
                Input::randn("w", wt, 1.0 / fan.sqrt()),
            ];
            if bias {
                inputs.push(Input::randn("b", &[wt[1]], 1.0));
            }
            let p = ConvTranspose2dParams {
                stride: [st, st],
                padding: [p, p],
                output_padding: [op, op],
                dilation: [d, d],
                groups: 1,
            };
            out.push(autograd(
                "conv_transpose2d",
                dtype,
                format!(
                    "{}x{} s{st} p{} op{op} d{d}{}",
                    dims(x),
                    dims(wt),
                    p.padding[0],
                    if bias { " +b" } else { "" }
                ),
                rng.next_u64(),
                inputs,
                move |t| {
                    let y = t[0].conv_transpose2d(
                        &t[1],
                        t.get(2),
                        p.stride,
                        p.padding,
                        p.output_padding,
                        p.dilation,
                        p.groups,
                    )?;
                    Ok(vec![("y".into(), y)])
                },
            ));
        }
    }
}

/// Two bottleneck-like blocks at batch 2, x' = x/2 (so that x' is an op's
/// output whose gradient the engine sums): an identity block,
/// `conv1x1(relu(conv1x1(x'))) + x'`, and a downsampling one,
/// `conv1x1(relu(conv3x3 s2(x'))) + conv1x1 s2(x')`.
fn residual_joins(rng: &mut Rng, dtype: crate::DType, out: &mut Vec<Case>) {
    let p = |stride: usize, padding: usize| Conv2dParams {
        stride: [stride; 2],
        padding: [padding; 2],
        ..Conv2dParams::default()
    };
    let w = |name, co: usize, ci: usize, k: usize| {
        Input::randn(name, &[co, ci, k, k], 1.0 / ((ci * k * k) as f64).sqrt())
    };
    out.push(autograd(
        "conv2d_residual",
        dtype,
        "identity [2,256,14,14]: 1x1 256->64, 1x1 64->256".into(),
        rng.next_u64(),
        vec![
            Input::randn("x", &[2, 256, 14, 14], 1.0),
            w("w1", 64, 256, 1),
            w("w2", 256, 64, 1),
        ],
        move |t| {
            let x = t[0].scale(0.5)?;
            let h = x.conv2d(&t[1], None, p(1, 0))?.relu()?;
            let y = h.conv2d(&t[2], None, p(1, 0))?.add(&x)?;
            Ok(vec![("y".into(), y)])
        },
    ));
    out.push(autograd(
        "conv2d_residual",
        dtype,
        "downsample [2,64,28,28]: 3x3 s2 64->32, 1x1 32->128; 1x1 s2 64->128".into(),
        rng.next_u64(),
        vec![
            Input::randn("x", &[2, 64, 28, 28], 1.0),
            w("w1", 32, 64, 3),
            w("w2", 128, 32, 1),
            w("wd", 128, 64, 1),
        ],
        move |t| {
            let x = t[0].scale(0.5)?;
            let h = x.conv2d(&t[1], None, p(2, 1))?.relu()?;
            let y = h
                .conv2d(&t[2], None, p(1, 0))?
                .add(&x.conv2d(&t[3], None, p(2, 0))?)?;
            Ok(vec![("y".into(), y)])
        },
    ));
}
