//! conv_transpose2d and the upsampling ops: forward against direct loops,
//! backward by finite differences, the adjoint relation with conv2d, the
//! nn::ConvTranspose2d layer, the trace, and bad input as errors.

use engine::gradcheck::check_gradients;
use engine::nn::{ConvTranspose2d, Module, Param};
use engine::ops::{Conv2dParams, ConvTranspose2dParams};
use engine::{DType, Rng, Tensor};
use testutil::randn;

fn dims4(t: &Tensor) -> [usize; 4] {
    t.dims().try_into().unwrap()
}

/// Per element |a - b| <= tol * (1 + |b|); NaN fails.
fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    testutil::assert_close(what, a, b, tol, tol);
}

fn ct(
    stride: [usize; 2],
    padding: [usize; 2],
    output_padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
) -> ConvTranspose2dParams {
    ConvTranspose2dParams {
        stride,
        padding,
        output_padding,
        dilation,
        groups,
    }
}

fn run(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: ConvTranspose2dParams,
) -> engine::Result<Tensor> {
    x.conv_transpose2d(
        w,
        b,
        p.stride,
        p.padding,
        p.output_padding,
        p.dilation,
        p.groups,
    )
}

/// The definition, as a scatter: every input pixel adds its weighted kernel
/// onto the output.
fn naive_conv_transpose(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: ConvTranspose2dParams,
) -> (Vec<f64>, [usize; 4]) {
    let ([n, cin, h, wd], [_, cout_g, kh, kw]) = (dims4(x), dims4(w));
    let g = p.groups;
    let (cin_g, cout) = (cin / g, cout_g * g);
    let oh = (h - 1) * p.stride[0] + p.dilation[0] * (kh - 1) + p.output_padding[0] + 1
        - 2 * p.padding[0];
    let ow = (wd - 1) * p.stride[1] + p.dilation[1] * (kw - 1) + p.output_padding[1] + 1
        - 2 * p.padding[1];
    let (xv, wv) = (x.to_vec_f64().unwrap(), w.to_vec_f64().unwrap());
    let mut out = vec![0.0; n * cout * oh * ow];
    for i in 0..n {
        for co in 0..cout {
            let bias = b.map_or(0.0, |b| b.to_vec_f64().unwrap()[co]);
            out[(i * cout + co) * oh * ow..][..oh * ow]
                .iter_mut()
                .for_each(|v| *v = bias);
        }
        for ci in 0..cin {
            let gi = ci / cin_g;
            for iy in 0..h {
                for ix in 0..wd {
                    let xval = xv[((i * cin + ci) * h + iy) * wd + ix];
                    for cg in 0..cout_g {
                        let co = gi * cout_g + cg;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let y = (iy * p.stride[0] + ky * p.dilation[0]) as isize
                                    - p.padding[0] as isize;
                                let xo = (ix * p.stride[1] + kx * p.dilation[1]) as isize
                                    - p.padding[1] as isize;
                                if y < 0 || xo < 0 || y >= oh as isize || xo >= ow as isize {
                                    continue;
                                }
                                let wval = wv[((ci * cout_g + cg) * kh + ky) * kw + kx];
                                out[((i * cout + co) * oh + y as usize) * ow + xo as usize] +=
                                    xval * wval;
                            }
                        }
                    }
                }
            }
        }
    }
    (out, [n, cout, oh, ow])
}

/// (x shape, weight shape, bias, params): the mask head's 2x2 stride 2, and
/// odd strides, paddings, output paddings, dilations and groups.
fn cases() -> Vec<([usize; 4], [usize; 4], bool, ConvTranspose2dParams)> {
    vec![
        (
            [3, 8, 5, 4],
            [8, 8, 2, 2],
            true,
            ct([2, 2], [0, 0], [0, 0], [1, 1], 1),
        ),
        (
            [2, 3, 4, 5],
            [3, 2, 3, 3],
            true,
            ct([1, 1], [0, 0], [0, 0], [1, 1], 1),
        ),
        (
            [2, 3, 3, 4],
            [3, 4, 3, 3],
            false,
            ct([2, 2], [1, 1], [1, 1], [1, 1], 1),
        ),
        (
            [1, 4, 4, 3],
            [4, 3, 3, 2],
            true,
            ct([2, 1], [1, 0], [1, 0], [1, 1], 2),
        ),
        (
            [2, 2, 3, 4],
            [2, 3, 3, 3],
            true,
            ct([3, 2], [2, 1], [2, 0], [2, 2], 1),
        ),
        // output padding >= stride, allowed by the larger dilation
        (
            [2, 2, 4, 3],
            [2, 2, 3, 2],
            true,
            ct([1, 1], [1, 0], [1, 2], [2, 3], 1),
        ),
        (
            [2, 3, 3, 4],
            [3, 1, 1, 4],
            false,
            ct([3, 2], [0, 1], [2, 1], [1, 1], 3),
        ),
        (
            [3, 5, 3, 4],
            [5, 4, 1, 1],
            true,
            ct([1, 1], [0, 0], [0, 0], [1, 1], 1),
        ),
        (
            [2, 6, 3, 3],
            [6, 2, 2, 3],
            true,
            ct([2, 3], [1, 2], [0, 2], [1, 1], 3),
        ),
    ]
}

#[test]
fn conv_transpose2d_forward_matches_direct_loops() {
    for (i, (xs, ws, bias, p)) in cases().into_iter().enumerate() {
        let (x, w) = (randn(&xs, 10 + i as u64), randn(&ws, 20 + i as u64));
        let b = bias.then(|| randn(&[ws[1] * p.groups], 30 + i as u64));
        let (expect, shape) = naive_conv_transpose(&x, &w, b.as_ref(), p);
        let y = run(&x, &w, b.as_ref(), p).unwrap();
        assert_eq!(y.dims(), shape, "case {i}: shape");
        assert_close(
            &y.to_vec_f64().unwrap(),
            &expect,
            1e-12,
            &format!("f64 case {i}"),
        );
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let y32 = run(&f(&x), &f(&w), b.as_ref().map(f).as_ref(), p).unwrap();
        assert_eq!(y32.dtype(), DType::F32);
        assert_close(
            &y32.to_vec_f64().unwrap(),
            &expect,
            1e-5,
            &format!("f32 case {i}"),
        );
    }
}

#[test]
fn gradcheck_conv_transpose2d() {
    for (i, (xs, ws, bias, p)) in cases().into_iter().enumerate() {
        let mut inputs = vec![randn(&xs, 40 + i as u64), randn(&ws, 50 + i as u64)];
        if bias {
            inputs.push(randn(&[ws[1] * p.groups], 60 + i as u64));
        }
        let f = move |t: &[Tensor]| run(&t[0], &t[1], t.get(2), p);
        check_gradients(f, &inputs, 1e-6, 1e-7, 1e-5).unwrap_or_else(|e| panic!("case {i}: {e}"));
    }
}

/// <conv2d(y, W), x> = <y, conv_transpose2d(x, W)> for the conv2d with the
/// same weight and hyper-parameters: the transposed conv is the adjoint.
#[test]
fn conv_transpose2d_is_the_adjoint_of_conv2d() {
    let mut checked = 0;
    for (i, (xs, ws, _, p)) in cases().into_iter().enumerate() {
        let (x, w) = (randn(&xs, 70 + i as u64), randn(&ws, 80 + i as u64));
        let t = run(&x, &w, None, p).unwrap();
        let y = randn(t.dims(), 90 + i as u64);
        let cp = Conv2dParams {
            stride: p.stride,
            padding: p.padding,
            dilation: p.dilation,
            groups: p.groups,
        };
        let cy = y.conv2d(&w, None, cp).unwrap();
        // With output_padding >= stride the conv covers one more row than x.
        let dot = |a: &Tensor, b: &Tensor| -> f64 {
            let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
            a.iter().zip(&b).map(|(u, v)| u * v).sum()
        };
        if cy.dims() != x.dims() {
            continue;
        }
        let (l, r) = (dot(&cy, &x), dot(&y, &t));
        assert!(
            (l - r).abs() <= 1e-10 * l.abs().max(1.0),
            "case {i}: <conv2d(y), x> = {l} vs <y, conv_transpose2d(x)> = {r}"
        );
        checked += 1;
    }
    assert_eq!(
        checked,
        cases().len() - 1,
        "only the output_padding >= stride case is skipped"
    );
}

/// Repeated runs give identical bits; other thread counts split the batch
/// differently (as conv2d: the weight gradient's partial sums are per part),
/// so they agree to rounding.
#[test]
fn conv_transpose2d_is_deterministic() {
    let (x, w, b) = (
        randn(&[9, 6, 5, 4], 1),
        randn(&[6, 4, 2, 2], 2),
        randn(&[4], 3),
    );
    let p = ct([2, 2], [0, 0], [0, 0], [1, 1], 1);
    let (expect, _) = naive_conv_transpose(&x, &w, Some(&b), p);
    let mut grads = Vec::new();
    for threads in [1, 2, 2, 3, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (xr, wr, br) = (
                x.requires_grad_().unwrap(),
                w.requires_grad_().unwrap(),
                b.requires_grad_().unwrap(),
            );
            let y = run(&xr, &wr, Some(&br), p).unwrap();
            assert_close(
                &y.to_vec_f64().unwrap(),
                &expect,
                1e-12,
                &format!("{threads} threads"),
            );
            y.mul(&y).unwrap().sum_all().unwrap().backward().unwrap();
            grads.push([xr, wr, br].map(|t| t.grad().unwrap().to_vec_f64().unwrap()));
        });
    }
    for (k, name) in ["x", "weight", "bias"].iter().enumerate() {
        assert_eq!(
            grads[1][k], grads[2][k],
            "grad {name}: two runs on 2 threads differ"
        );
        assert_eq!(
            grads[3][k], grads[4][k],
            "grad {name}: two runs on 3 threads differ"
        );
        for g in &grads[1..] {
            assert_close(
                &g[k],
                &grads[0][k],
                1e-12,
                &format!("grad {name} vs 1 thread"),
            );
        }
    }
}

#[test]
fn conv_transpose2d_skips_gradients_not_required() {
    let x = randn(&[2, 3, 4, 4], 1);
    let w = randn(&[3, 2, 2, 2], 2).requires_grad_().unwrap();
    let b = randn(&[2], 3);
    let p = ct([2, 2], [0, 0], [0, 0], [1, 1], 1);
    run(&x, &w, Some(&b), p)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(w.grad().is_some());
    assert!(x.grad().is_none() && b.grad().is_none());
}

#[test]
fn conv_transpose2d_in_half_precision_tracks_f32() {
    let (x, w, b) = (
        randn(&[2, 4, 3, 3], 5),
        randn(&[4, 4, 2, 2], 6),
        randn(&[4], 7),
    );
    let p = ct([2, 2], [0, 0], [0, 0], [1, 1], 1);
    let (expect, _) = naive_conv_transpose(&x, &w, Some(&b), p);
    for dt in [DType::BF16, DType::F16] {
        let f = |t: &Tensor| t.to_dtype(dt).unwrap();
        let y = run(&f(&x), &f(&w), Some(&f(&b)), p).unwrap();
        assert_eq!(y.dtype(), dt);
        // inputs rounded to 8 (bf16) or 11 (f16) bits, then the result: each
        // output sums 4 products (stride = kernel) and the bias
        let tol = testutil::rounding_tol(dt, 5);
        testutil::assert_close_with(&format!("{dt:?}"), &y.to_vec_f64().unwrap(), &expect, tol);
    }
}

#[test]
fn conv_transpose2d_bad_input_is_an_error() {
    let x = randn(&[1, 4, 3, 3], 1);
    let w = randn(&[4, 2, 3, 3], 2);
    let ok = ct([2, 2], [1, 1], [1, 1], [1, 1], 1);
    assert!(run(&x, &w, None, ok).is_ok());
    let err =
        |x: &Tensor, w: &Tensor, b: Option<&Tensor>, p| run(x, w, b, p).unwrap_err().to_string();
    let e = err(&x, &w, None, ct([2, 2], [1, 1], [2, 0], [1, 1], 1));
    assert!(e.contains("output_padding"), "{e}");
    let e = err(&x, &w, None, ct([1, 1], [0, 0], [0, 0], [1, 1], 3));
    assert!(e.contains("groups"), "{e}");
    let e = err(&x, &randn(&[3, 2, 3, 3], 3), None, ok);
    assert!(e.contains("weight"), "{e}");
    let e = err(&x, &w, Some(&randn(&[3], 4)), ok);
    assert!(e.contains("bias"), "{e}");
    // 1x1 kernel, 1x1 input, padding 1: (1-1)*1 - 2 + 0 + 1 <= 0
    let e = err(
        &randn(&[1, 4, 1, 1], 5),
        &randn(&[4, 2, 1, 1], 6),
        None,
        ct([1, 1], [1, 1], [0, 0], [1, 1], 1),
    );
    assert!(e.contains("not positive"), "{e}");
    let e = err(&x, &w, None, ct([0, 1], [0, 0], [0, 0], [1, 1], 1));
    assert!(e.contains("stride"), "{e}");
    let e = err(&randn(&[4, 3, 3], 7), &w, None, ok);
    assert!(e.contains("4 dims"), "{e}");
    let e = err(&x, &w.to_dtype(DType::F32).unwrap(), None, ok);
    assert!(
        e.to_lowercase().contains("f32") || e.to_lowercase().contains("dtype"),
        "{e}"
    );
    let xi = Tensor::zeros(&[1, 4, 3, 3], DType::I64);
    assert!(run(&xi, &Tensor::zeros(&[4, 2, 3, 3], DType::I64), None, ok).is_err());
}

#[test]
fn conv_transpose_layer_has_torch_layout_and_init() {
    let mut rng = Rng::new(3);
    let p = ct([2, 2], [0, 0], [0, 0], [1, 1], 1);
    let layer =
        ConvTranspose2d::new("mask_fcn_logits_up", 6, 4, [2, 2], p, true, &mut rng).unwrap();
    let params = layer.params();
    assert_eq!(params.len(), 2);
    assert_eq!(params[0].name(), "mask_fcn_logits_up.weight");
    assert_eq!(params[0].dims(), [6, 4, 2, 2]);
    assert_eq!(params[1].name(), "mask_fcn_logits_up.bias");
    assert_eq!(params[1].dims(), [4]);
    assert!(params[1].no_weight_decay() && !params[0].no_weight_decay());
    // PyTorch: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = weight dim 1 * kh * kw
    let bound = 1.0 / ((4 * 2 * 2) as f64).sqrt();
    for prm in &params {
        let v = prm.get().to_vec_f64().unwrap();
        assert!(
            v.iter().all(|e| e.abs() <= bound),
            "{} outside the bound",
            prm.name()
        );
        // spread over the range, not squeezed into a corner of it
        let max = v.iter().fold(0f64, |m, e| m.max(e.abs()));
        assert!(
            max > bound * 0.5,
            "{}: max |w| {max} vs bound {bound}",
            prm.name()
        );
    }
    let x = Tensor::randn(&[2, 6, 3, 3], 0.0, 1.0, DType::F32, &mut rng);
    let y = layer.forward(&x).unwrap();
    assert_eq!(y.dims(), [2, 4, 6, 6]);
    let direct = run(
        &x,
        &layer.weight.get(),
        Some(&layer.bias.as_ref().unwrap().get()),
        p,
    )
    .unwrap();
    assert_eq!(y.to_vec_f64().unwrap(), direct.to_vec_f64().unwrap());
    // grouped, no bias
    let g = ConvTranspose2d::new(
        "up",
        6,
        9,
        [3, 3],
        ct([1, 1], [1, 1], [0, 0], [1, 1], 3),
        false,
        &mut rng,
    )
    .unwrap();
    assert_eq!(g.params().len(), 1);
    assert_eq!(g.weight.dims(), [6, 3, 3, 3]);
    assert_eq!(g.forward(&x).unwrap().dims(), [2, 9, 3, 3]);
    // same seed, same layer
    let again = ConvTranspose2d::new(
        "mask_fcn_logits_up",
        6,
        4,
        [2, 2],
        p,
        true,
        &mut Rng::new(3),
    )
    .unwrap();
    assert_eq!(
        again.weight.get().to_vec_f64().unwrap(),
        layer.weight.get().to_vec_f64().unwrap()
    );
}

#[test]
fn conv_transpose_layer_rejects_bad_configs() {
    let mut rng = Rng::new(0);
    let p = ConvTranspose2dParams::default();
    assert!(ConvTranspose2d::new(
        "a",
        6,
        4,
        [2, 2],
        ct([1, 1], [0, 0], [0, 0], [1, 1], 4),
        true,
        &mut rng
    )
    .is_err());
    assert!(ConvTranspose2d::new("a", 6, 4, [0, 2], p, true, &mut rng).is_err());
    assert!(ConvTranspose2d::new(
        "a",
        6,
        4,
        [2, 2],
        ct([2, 2], [0, 0], [2, 0], [1, 1], 1),
        true,
        &mut rng
    )
    .is_err());
    assert!(ConvTranspose2d::new_dtype("a", 6, 4, [2, 2], p, true, DType::I64, &mut rng).is_err());
    let w = Param::new("w", Tensor::zeros(&[6, 2, 2, 2], DType::F32), false).unwrap();
    let b = Param::new("b", Tensor::zeros(&[2], DType::F32), true).unwrap();
    // groups 2: Cout = 4, so a bias of 2 does not fit
    let e = ConvTranspose2d::from_params(
        w.clone(),
        Some(b.clone()),
        ct([1, 1], [0, 0], [0, 0], [1, 1], 2),
    );
    assert!(e.is_err());
    assert!(ConvTranspose2d::from_params(w, Some(b), p).is_ok());
}

// ---------------------------------------------------------------------------
// upsampling
// ---------------------------------------------------------------------------

/// A plane whose value is its column index (rows: 1000 * row), to read back
/// which source pixel each output copied.
fn index_plane(h: usize, w: usize) -> Tensor {
    let v: Vec<f64> = (0..h * w).map(|i| (i / w * 1000 + i % w) as f64).collect();
    Tensor::from_vec(v, &[1, 1, h, w]).unwrap()
}

fn picked(y: &Tensor) -> (Vec<usize>, Vec<usize>) {
    let [_, _, oh, ow] = dims4(y);
    let v = y.to_vec_f64().unwrap();
    let rows = (0..oh).map(|r| (v[r * ow] / 1000.0) as usize).collect();
    let cols = (0..ow).map(|c| (v[c] as usize) % 1000).collect();
    (rows, cols)
}

#[test]
fn upsample_nearest_picks_pytorchs_source_pixels() {
    // 2x and 1x are exact; 3x goes through the f32 ratio and still floors to d/3
    let (r, c) = picked(&index_plane(5, 7).upsample_nearest2d([10, 7]).unwrap());
    assert_eq!(r, (0..10).map(|d| d / 2).collect::<Vec<_>>());
    assert_eq!(c, (0..7).collect::<Vec<_>>());
    let (r, _) = picked(&index_plane(6, 2).upsample_nearest2d([18, 2]).unwrap());
    assert_eq!(r, (0..18).map(|d| d / 3).collect::<Vec<_>>());
    // 14 -> 46: f32(23) * f32(14/46) = 6.9999995, so PyTorch (and we) pick
    // row 6 where exact arithmetic gives 7; likewise 21 -> 69 at 23 and 46.
    let (r, c) = picked(&index_plane(14, 21).upsample_nearest2d([46, 69]).unwrap());
    assert_eq!(r[23], 6);
    assert_eq!((c[23], c[46]), (6, 13));
    let exact: Vec<usize> = (0..46).map(|d| d * 14 / 46).collect();
    let differ: Vec<usize> = (0..46).filter(|&d| r[d] != exact[d]).collect();
    assert_eq!(differ, [23]);
    // downsampling 9 -> 5: floor(d * 1.8)
    let (r, _) = picked(&index_plane(9, 1).upsample_nearest2d([5, 1]).unwrap());
    assert_eq!(r, [0, 1, 3, 5, 7]);
    // the same rule in f32
    let y32 = index_plane(14, 21)
        .to_dtype(DType::F32)
        .unwrap()
        .upsample_nearest2d([46, 69])
        .unwrap();
    assert_eq!(y32.dtype(), DType::F32);
    assert_eq!(picked(&y32).0[23], 6);
}

#[test]
fn upsample_nearest_scale_is_the_size_rule_with_one_over_scale() {
    let x = randn(&[2, 3, 5, 6], 11);
    let two = x.upsample_nearest2d_scale(2).unwrap();
    assert_eq!(two.dims(), [2, 3, 10, 12]);
    assert_eq!(
        two.to_vec_f64().unwrap(),
        x.upsample_nearest2d([10, 12])
            .unwrap()
            .to_vec_f64()
            .unwrap()
    );
    let (r, c) = picked(&index_plane(7, 5).upsample_nearest2d_scale(3).unwrap());
    assert_eq!(r, (0..21).map(|d| d / 3).collect::<Vec<_>>());
    assert_eq!(c, (0..15).map(|d| d / 3).collect::<Vec<_>>());
    assert!(x.upsample_nearest2d_scale(0).is_err());
}

#[test]
fn upsample_nearest_backward_sums_the_copies() {
    // 3 -> 7 along the width: sources 0,0,0,1,1,2,2 (floor(d * 3/7))
    let x = randn(&[1, 1, 1, 3], 1).requires_grad_().unwrap();
    let y = x.upsample_nearest2d([1, 7]).unwrap();
    let g = Tensor::from_vec(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0], &[1, 1, 1, 7]).unwrap();
    y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f64().unwrap(), [7.0, 24.0, 96.0]);
}

#[test]
fn gradcheck_upsample() {
    let shapes: [([usize; 4], [usize; 2]); 5] = [
        ([2, 2, 5, 7], [10, 14]),
        ([1, 2, 13, 17], [25, 34]),
        ([1, 1, 9, 11], [5, 4]),
        ([2, 1, 4, 3], [11, 7]),
        ([1, 2, 3, 3], [1, 8]),
    ];
    for (i, (xs, out)) in shapes.into_iter().enumerate() {
        let x = randn(&xs, 100 + i as u64);
        let f = move |t: &[Tensor]| t[0].upsample_nearest2d(out);
        check_gradients(f, std::slice::from_ref(&x), 1e-6, 1e-7, 1e-5)
            .unwrap_or_else(|e| panic!("nearest case {i}: {e}"));
        for ac in [false, true] {
            let f = move |t: &[Tensor]| t[0].upsample_bilinear2d(out, ac);
            check_gradients(f, std::slice::from_ref(&x), 1e-6, 1e-7, 1e-5)
                .unwrap_or_else(|e| panic!("bilinear case {i} align_corners={ac}: {e}"));
        }
    }
    let f = |t: &[Tensor]| t[0].upsample_nearest2d_scale(3);
    check_gradients(f, &[randn(&[1, 2, 3, 4], 7)], 1e-6, 1e-7, 1e-5).unwrap();
}

#[test]
fn upsample_bilinear_matches_its_definition() {
    // 2 -> 4 along the width without align_corners: src = max((d+0.5)/2 - 0.5, 0)
    // = 0, 0.25, 0.75, 1.25 -> clamped to the last pixel
    let x = Tensor::from_vec(vec![1.0, 5.0], &[1, 1, 1, 2]).unwrap();
    let y = x.upsample_bilinear2d([1, 4], false).unwrap();
    assert_eq!(y.to_vec_f64().unwrap(), [1.0, 2.0, 4.0, 5.0]);
    // align_corners: src = d * (2-1)/(4-1)
    let y = x.upsample_bilinear2d([1, 4], true).unwrap();
    assert_close(
        &y.to_vec_f64().unwrap(),
        &[1.0, 1.0 + 4.0 / 3.0, 1.0 + 8.0 / 3.0, 5.0],
        1e-15,
        "align",
    );
    // same size copies
    let x = randn(&[2, 3, 4, 5], 9);
    assert_eq!(
        x.upsample_bilinear2d([4, 5], false)
            .unwrap()
            .to_vec_f64()
            .unwrap(),
        x.to_vec_f64().unwrap()
    );
    // one output row with align_corners samples row 0
    let y = x.upsample_bilinear2d([1, 5], true).unwrap();
    let xv = x.to_vec_f64().unwrap();
    assert_eq!(y.to_vec_f64().unwrap()[..5], xv[..5]);
}

#[test]
fn upsample_keeps_half_dtypes_and_rejects_bad_input() {
    let x = randn(&[1, 2, 3, 4], 1);
    for dt in [DType::F32, DType::BF16, DType::F16] {
        let xd = x.to_dtype(dt).unwrap();
        let n = xd.upsample_nearest2d([6, 8]).unwrap();
        assert_eq!(n.dtype(), dt);
        // nearest copies: exact in any dtype
        assert_eq!(
            n.to_vec_f64().unwrap(),
            xd.to_dtype(DType::F64)
                .unwrap()
                .upsample_nearest2d([6, 8])
                .unwrap()
                .to_vec_f64()
                .unwrap()
        );
        let b = xd.upsample_bilinear2d([5, 7], false).unwrap();
        assert_eq!(b.dtype(), dt);
        let want = x
            .upsample_bilinear2d([5, 7], false)
            .unwrap()
            .to_vec_f64()
            .unwrap();
        // input and output rounded to dt; 4 taps with weights summing to 1
        let tol = testutil::rounding_tol(dt, 4);
        testutil::assert_close_with(
            &format!("bilinear {dt:?}"),
            &b.to_vec_f64().unwrap(),
            &want,
            tol,
        );
    }
    assert!(x.upsample_nearest2d([0, 3]).is_err());
    assert!(randn(&[2, 3, 4], 1).upsample_nearest2d([3, 3]).is_err());
    assert!(Tensor::zeros(&[1, 1, 0, 3], DType::F64)
        .upsample_bilinear2d([2, 2], false)
        .is_err());
    assert!(Tensor::zeros(&[1, 1, 2, 2], DType::I64)
        .upsample_nearest2d([4, 4])
        .is_err());
    let e = randn(&[2, 3, 4], 1)
        .upsample_nearest2d_scale(2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 dims"), "{e}");
}

#[test]
fn ops_report_through_the_trace() {
    let x = randn(&[1, 2, 3, 3], 1).requires_grad_().unwrap();
    let w = randn(&[2, 2, 2, 2], 2);
    let ((), t) = testutil::trace::capture(|| {
        let y = run(&x, &w, None, ct([2, 2], [0, 0], [0, 0], [1, 1], 1)).unwrap();
        let z = y
            .upsample_nearest2d_scale(2)
            .unwrap()
            .upsample_bilinear2d([5, 5], false)
            .unwrap();
        z.sum_all().unwrap().backward().unwrap();
    });
    let (text, lines) = (&t.text, &t.lines);
    let has = |op: &str, phase: &str, ran: Option<&str>| t.has(op, phase, ran);
    assert!(
        has("conv_transpose2d", "forward", Some("cpu:col2im+gemm")),
        "{text}"
    );
    assert!(
        has(
            "upsample_nearest2d",
            "forward",
            Some("cpu:upsample_nearest")
        ),
        "{text}"
    );
    assert!(
        has(
            "upsample_bilinear2d",
            "forward",
            Some("cpu:upsample_bilinear")
        ),
        "{text}"
    );
    for op in [
        "conv_transpose2d",
        "upsample_nearest2d",
        "upsample_bilinear2d",
    ] {
        assert!(
            has(op, "backward", None),
            "{op} backward not traced: {text}"
        );
    }
    // Other tests run concurrently and may add lines: pick this one's op.
    let fwd = lines
        .iter()
        .find(|l| {
            l["op"] == "conv_transpose2d"
                && l["inputs"][1]["shape"] == serde_json::json!([2, 2, 2, 2])
                && l["inputs"][0]["shape"] == serde_json::json!([1, 2, 3, 3])
        })
        .unwrap_or_else(|| panic!("no conv_transpose2d line for this test's shapes: {text}"));
    assert_eq!(fwd["outputs"][0]["shape"], serde_json::json!([1, 2, 6, 6]));
}
