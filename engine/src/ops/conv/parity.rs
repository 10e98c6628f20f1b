//! Convolution's GPU parity cases: conv2d on odd sizes, channel counts not
//! divisible by 8 and ResNet-50 layers at batch 2; conv_transpose2d (cuDNN
//! backward-data) on odd sizes, stride 2, output_padding, dilation and the
//! Mask R-CNN mask head's 2x2 upsampling. The 1x1 stride-1 ones run on the
//! route `gemm::Pointwise::Auto` times (cuBLASLt GEMMs, `gemm.rs`: forward
//! with the BIAS epilogue, backward data and backward filter; or cuDNN),
//! and again with each route forced (`conv2d_1x1_gemm`,
//! `conv2d_1x1_cudnn`) on ResNet-50's bottleneck shapes with and without
//! bias, a 1x1 transposed convolution (backward data + bias) and the
//! residual joins.
//! `conv2d_residual`: ResNet-50 blocks whose input gradient is summed at
//! the join, the convolutions adding theirs into the sum in place
//! (cuBLASLt with beta 1 for the 1x1 stride-1 one, cuDNN's blend for the
//! strided ones). `conv2d_graph_api`, `conv2d_legacy_api` and
//! `conv2d_graph_api_timed`: a subset run with one cuDNN API forced
//! (`cudnn_apis`), since the other cases run whichever the timed search
//! picks.

use super::{scoped_pointwise, Pointwise};
use crate::cuda::dnn::{self, Api, Rtc};
use crate::layout::{Conv2dParams, ConvTranspose2dParams};
use crate::parity::{autograd, dims, Case, Input, DTYPES};
use crate::{DType, Rng};

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
    // 1x1 stride 1 with the route forced (`pointwise_forced`; the four
    // k = 1, s = 1 cases above take the timed choice): ResNet-50's
    // bottleneck expansions and reductions
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
        for c in conv {
            out.push(conv2d_case("conv2d", dtype, c, 1, rng.next_u64()));
        }
        for c in transposed {
            out.push(transposed_case(
                "conv_transpose2d",
                dtype,
                c,
                rng.next_u64(),
            ));
        }
    }
    cudnn_apis(rng, out);
    for route in [Pointwise::Gemm, Pointwise::Cudnn] {
        pointwise_forced(rng, route, &pointwise, transposed[6], out);
    }
}

/// `conv2d` of case `c` with `groups` groups, as op `op`.
fn conv2d_case(op: &'static str, dtype: DType, c: ConvCase, groups: usize, seed: u64) -> Case {
    let (n, ci, h, w, co, k, st, p, bias) = c;
    let (x, wt) = ([n, ci, h, w], [co, ci / groups, k, k]);
    let fan = ((ci / groups) * k * k) as f64;
    let mut inputs = vec![
        Input::randn("x", &x, 1.0),
        Input::randn("w", &wt, 1.0 / fan.sqrt()),
    ];
    if bias {
        inputs.push(Input::randn("b", &[co], 1.0));
    }
    let params = Conv2dParams {
        stride: [st, st],
        padding: [p, p],
        groups,
        ..Conv2dParams::default()
    };
    autograd(
        op,
        dtype,
        format!(
            "{}x{} s{st} p{p}{}{}",
            dims(&x),
            dims(&wt),
            if groups > 1 {
                format!(" g{groups}")
            } else {
                String::new()
            },
            if bias { " +b" } else { "" }
        ),
        seed,
        inputs,
        move |t| Ok(vec![("y".into(), t[0].conv2d(&t[1], t.get(2), params)?)]),
    )
}

/// `conv_transpose2d` of case `c`, as op `op`.
fn transposed_case(op: &'static str, dtype: DType, c: TransposedCase, seed: u64) -> Case {
    let (x, wt, st, p, op_, d, bias) = c;
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
        output_padding: [op_, op_],
        dilation: [d, d],
        groups: 1,
    };
    autograd(
        op,
        dtype,
        format!(
            "{}x{} s{st} p{} op{op_} d{d}{}",
            dims(x),
            dims(wt),
            p.padding[0],
            if bias { " +b" } else { "" }
        ),
        seed,
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
    )
}

/// Cases run with one cuDNN API chosen on purpose (`dnn::scoped`), so that
/// both are checked whichever the timed searches of the other cases pick:
/// `conv2d_graph_api` and `conv2d_legacy_api` untimed (each API's
/// heuristic choice), `conv2d_graph_api_timed` through the graph API's
/// timed search, and `conv2d_graph_api_rtc` through the same search with
/// the engines cuDNN compiles at run time competing (`dnn::Rtc::Any`;
/// by default they run only for a shape no other engine serves). Forward,
/// backward-data (also a transposed convolution's forward, one of them
/// dilated) and backward-filter, beta 0 and 1 (the residual joins), a
/// grouped convolution; no 1x1 stride-1 one, which runs as a GEMM.
fn cudnn_apis(rng: &mut Rng, out: &mut Vec<Case>) {
    // (n, cin, h, w, cout, k, stride, pad, bias)
    let conv: [ConvCase; 4] = [
        (2, 64, 28, 28, 64, 3, 1, 1, false),
        (2, 3, 32, 32, 64, 7, 2, 3, false),
        (3, 12, 9, 7, 20, 3, 2, 1, true),
        (2, 256, 28, 28, 512, 1, 2, 0, false),
    ];
    let grouped: ConvCase = (2, 12, 9, 9, 8, 3, 1, 1, true);
    let transposed: [TransposedCase; 2] = [
        (&[2, 5, 7, 9], &[5, 3, 3, 3], 2, 1, 1, 1, true),
        (&[2, 3, 6, 5], &[3, 5, 3, 3], 2, 2, 1, 2, true),
    ];
    let runs: [(&'static str, Api, bool, Rtc, &[DType]); 4] = [
        (
            "conv2d_graph_api",
            Api::Graph,
            false,
            Rtc::Fallback,
            &DTYPES,
        ),
        (
            "conv2d_legacy_api",
            Api::Legacy,
            false,
            Rtc::Fallback,
            &DTYPES,
        ),
        (
            "conv2d_graph_api_timed",
            Api::Graph,
            true,
            Rtc::Fallback,
            &[DType::BF16],
        ),
        (
            "conv2d_graph_api_rtc",
            Api::Graph,
            true,
            Rtc::Any,
            &[DType::BF16],
        ),
    ];
    for (op, api, timed, rtc, dtypes) in runs {
        for &dtype in dtypes {
            let mut cases: Vec<Case> = conv
                .iter()
                .map(|&c| conv2d_case(op, dtype, c, 1, rng.next_u64()))
                .collect();
            cases.push(conv2d_case(op, dtype, grouped, 4, rng.next_u64()));
            for t in transposed {
                cases.push(transposed_case(op, dtype, t, rng.next_u64()));
            }
            residual_joins(rng, dtype, &mut cases);
            let scope = move || (dnn::scoped(api, timed), dnn::scoped_rtc(rtc));
            forced(op, cases, scope, out);
        }
    }
}

/// The 1x1 stride-1 cases with their route forced (`gemm::Pointwise`):
/// `conv2d_1x1_gemm` on cuBLASLt, `conv2d_1x1_cudnn` on cuDNN, so that both
/// are checked whichever the other cases' timed choice (`Pointwise::Auto`)
/// picks: ResNet-50's bottleneck shapes with and without bias, a 1x1
/// transposed convolution (backward data + bias), and the residual joins
/// (cuBLASLt's beta 1 or cuDNN's blend adding into the sum).
fn pointwise_forced(
    rng: &mut Rng,
    route: Pointwise,
    pointwise: &[ConvCase],
    transposed: TransposedCase,
    out: &mut Vec<Case>,
) {
    let op = match route {
        Pointwise::Cudnn => "conv2d_1x1_cudnn",
        _ => "conv2d_1x1_gemm",
    };
    for dtype in DTYPES {
        let mut cases: Vec<Case> = pointwise
            .iter()
            .map(|&c| conv2d_case(op, dtype, c, 1, rng.next_u64()))
            .collect();
        cases.push(transposed_case(op, dtype, transposed, rng.next_u64()));
        residual_joins(rng, dtype, &mut cases);
        forced(op, cases, move || scoped_pointwise(route), out);
    }
}

/// `cases` as op `op`, each run with what `scope` returns held: a setting
/// forced for the case and restored after it.
fn forced<G>(
    op: &'static str,
    cases: Vec<Case>,
    scope: impl Fn() -> G + Copy + 'static,
    out: &mut Vec<Case>,
) {
    for mut case in cases {
        case.op = op;
        let run = case.run;
        case.run = Box::new(move |device| {
            let _setting = scope();
            run(device)
        });
        out.push(case);
    }
}

/// Two bottleneck-like blocks at batch 2, x' = x/2 (so that x' is an op's
/// output whose gradient the engine sums): an identity block,
/// `conv1x1(conv1x1(x')) + x'`, and a downsampling one,
/// `conv1x1(conv3x3 s2(x')) + conv1x1 s2(x')`. No ReLU between the
/// convolutions: a pre-activation within the two devices' rounding of
/// zero would pass its whole gradient on one and none on the other (seen
/// once on the emulator: dx 3.2e-2 against a 1e-2 bound in bf16). What
/// the joins check is the sum, which needs no mask.
fn residual_joins(rng: &mut Rng, dtype: DType, out: &mut Vec<Case>) {
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
            let h = x.conv2d(&t[1], None, p(1, 0))?;
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
            let h = x.conv2d(&t[1], None, p(2, 1))?;
            let y = h
                .conv2d(&t[2], None, p(1, 0))?
                .add(&x.conv2d(&t[3], None, p(2, 0))?)?;
            Ok(vec![("y".into(), y)])
        },
    ));
}
