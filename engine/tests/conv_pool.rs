//! conv2d and the pools: forward against direct loops, backward by finite
//! differences, bad input as errors.

use engine::gradcheck::check_gradients;
use engine::ops::Conv2dParams;
use engine::{DType, Tensor};
use testutil::randn;

fn params(
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
) -> Conv2dParams {
    Conv2dParams {
        stride,
        padding,
        dilation,
        groups,
    }
}

fn dims4(t: &Tensor) -> [usize; 4] {
    t.dims().try_into().unwrap()
}

/// The textbook seven-loop convolution.
fn naive_conv(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: Conv2dParams,
) -> (Vec<f64>, Vec<usize>) {
    let ([n, cin, h, wd], [cout, cin_g, kh, kw]) = (dims4(x), dims4(w));
    let (xv, wv) = (x.to_vec_f64().unwrap(), w.to_vec_f64().unwrap());
    let bv = b.map(|b| b.to_vec_f64().unwrap());
    let oh = (h + 2 * p.padding[0] - p.dilation[0] * (kh - 1) - 1) / p.stride[0] + 1;
    let ow = (wd + 2 * p.padding[1] - p.dilation[1] * (kw - 1) - 1) / p.stride[1] + 1;
    let cout_g = cout / p.groups;
    let mut out = vec![0.0; n * cout * oh * ow];
    for i in 0..n {
        for co in 0..cout {
            let grp = co / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bv.as_ref().map_or(0.0, |b| b[co]);
                    for ci in 0..cin_g {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let y = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                                    - p.padding[0] as isize;
                                let xx = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                                    - p.padding[1] as isize;
                                if y < 0 || xx < 0 || y >= h as isize || xx >= wd as isize {
                                    continue;
                                }
                                let c = grp * cin_g + ci;
                                s += xv[((i * cin + c) * h + y as usize) * wd + xx as usize]
                                    * wv[((co * cin_g + ci) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    out[((i * cout + co) * oh + oy) * ow + ox] = s;
                }
            }
        }
    }
    let _ = cin;
    (out, vec![n, cout, oh, ow])
}

/// Per element |a - b| <= tol * (1 + |b|); NaN fails.
fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    testutil::assert_close(what, a, b, tol, tol);
}

/// (x shape, weight shape, bias?, params): odd sizes covering every feature.
fn conv_cases() -> Vec<([usize; 4], [usize; 4], bool, Conv2dParams)> {
    vec![
        (
            [2, 3, 5, 6],
            [4, 3, 3, 3],
            true,
            params([1, 1], [1, 1], [1, 1], 1),
        ),
        (
            [2, 3, 7, 9],
            [4, 3, 3, 3],
            true,
            params([2, 2], [1, 1], [1, 1], 1),
        ),
        (
            [1, 2, 9, 7],
            [3, 2, 3, 3],
            true,
            params([1, 1], [2, 2], [2, 2], 1),
        ),
        (
            [2, 4, 5, 7],
            [6, 2, 3, 3],
            true,
            params([1, 2], [1, 0], [1, 1], 2),
        ),
        (
            [2, 3, 6, 5],
            [3, 1, 3, 3],
            true,
            params([1, 1], [1, 1], [1, 1], 3),
        ), // depthwise
        (
            [2, 3, 6, 5],
            [6, 1, 3, 3],
            false,
            params([2, 1], [1, 1], [1, 1], 3),
        ), // depthwise x2
        (
            [2, 3, 5, 7],
            [5, 3, 3, 3],
            false,
            params([1, 1], [0, 0], [1, 1], 1),
        ),
        (
            [2, 4, 5, 3],
            [3, 4, 1, 1],
            true,
            params([1, 1], [0, 0], [1, 1], 1),
        ), // pointwise
        (
            [2, 3, 9, 11],
            [5, 3, 1, 1],
            false,
            params([2, 2], [0, 0], [1, 1], 1),
        ),
        (
            [2, 3, 8, 9],
            [4, 3, 2, 3],
            true,
            params([2, 1], [1, 0], [1, 2], 1),
        ), // asymmetric
        (
            [1, 3, 7, 7],
            [2, 3, 7, 5],
            true,
            params([2, 3], [3, 2], [1, 1], 1),
        ),
        // several images per GEMM chunk and several parts (tiny outputs)
        (
            [7, 3, 4, 3],
            [4, 3, 3, 3],
            true,
            params([1, 1], [1, 1], [1, 1], 1),
        ),
        (
            [5, 4, 3, 3],
            [4, 2, 1, 1],
            true,
            params([1, 1], [0, 0], [1, 1], 2),
        ),
    ]
}

#[test]
fn conv2d_forward_matches_direct_loops() {
    for (i, (xs, ws, bias, p)) in conv_cases().into_iter().enumerate() {
        let x = randn(&xs, 100 + i as u64);
        let w = randn(&ws, 200 + i as u64);
        let b = bias.then(|| randn(&[ws[0]], 300 + i as u64));
        let (expect, shape) = naive_conv(&x, &w, b.as_ref(), p);
        let y = x.conv2d(&w, b.as_ref(), p).unwrap();
        assert_eq!(y.dims(), shape.as_slice(), "case {i}");
        assert_close(
            &y.to_vec_f64().unwrap(),
            &expect,
            1e-12,
            &format!("f64 case {i}"),
        );
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let y32 = f(&x).conv2d(&f(&w), b.as_ref().map(f).as_ref(), p).unwrap();
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
fn conv2d_does_not_depend_on_thread_count() {
    let (x, w, b) = (
        randn(&[9, 5, 6, 5], 1),
        randn(&[6, 5, 3, 3], 2),
        randn(&[6], 3),
    );
    let p = params([2, 1], [1, 1], [1, 1], 1);
    let (expect, _) = naive_conv(&x, &w, Some(&b), p);
    let mut grads = Vec::new();
    for threads in [1, 2, 3, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (xr, wr) = (x.requires_grad_().unwrap(), w.requires_grad_().unwrap());
            let y = xr.conv2d(&wr, Some(&b), p).unwrap();
            assert_close(
                &y.to_vec_f64().unwrap(),
                &expect,
                1e-12,
                &format!("{threads} threads"),
            );
            y.sum_all().unwrap().backward().unwrap();
            grads.push((
                xr.grad().unwrap().to_vec_f64().unwrap(),
                wr.grad().unwrap().to_vec_f64().unwrap(),
            ));
        });
    }
    for g in &grads[1..] {
        assert_close(&g.0, &grads[0].0, 1e-12, "grad x");
        assert_close(&g.1, &grads[0].1, 1e-12, "grad w");
    }
}

#[test]
fn gradcheck_conv2d() {
    for (i, (xs, ws, bias, p)) in conv_cases().into_iter().enumerate() {
        let mut inputs = vec![randn(&xs, 400 + i as u64), randn(&ws, 500 + i as u64)];
        if bias {
            inputs.push(randn(&[ws[0]], 600 + i as u64));
        }
        let f = move |t: &[Tensor]| t[0].conv2d(&t[1], t.get(2), p);
        check_gradients(f, &inputs, 1e-6, 1e-7, 1e-5).unwrap_or_else(|e| panic!("case {i}: {e}"));
    }
}

/// Residual joins: x feeds a 3x3 convolution, a strided or 1x1 one and the
/// identity, so its gradient is summed from three ops, the convolutions
/// adding their input gradients into the sum so far (in place when no other
/// tensor holds it, out of place when the add's gradient is still shared).
#[test]
fn gradcheck_conv2d_residual_joins() {
    let p3 = params([1, 1], [1, 1], [1, 1], 1);
    for (i, (p2, w2)) in [
        (params([1, 1], [0, 0], [1, 1], 1), [4, 4, 1, 1]),
        (params([1, 1], [1, 1], [1, 1], 1), [4, 4, 3, 3]),
    ]
    .into_iter()
    .enumerate()
    {
        let inputs = [
            randn(&[2, 4, 6, 6], 700 + i as u64),
            randn(&[4, 4, 3, 3], 710 + i as u64),
            randn(&w2, 720 + i as u64),
        ];
        let f = move |t: &[Tensor]| {
            let x = t[0].scale(1.5)?;
            let a = x.conv2d(&t[1], None, p3)?.tanh()?;
            a.add(&x.conv2d(&t[2], None, p2)?)?.add(&x)
        };
        check_gradients(f, &inputs, 1e-6, 1e-7, 1e-5).unwrap_or_else(|e| panic!("case {i}: {e}"));
    }
    // a strided join (a downsampling block's input): x feeds two stride-2
    // convolutions whose outputs are summed
    let s2 = params([2, 2], [1, 1], [1, 1], 1);
    let d2 = params([2, 2], [0, 0], [1, 1], 1);
    let inputs = [
        randn(&[2, 3, 7, 7], 730),
        randn(&[5, 3, 3, 3], 731),
        randn(&[5, 3, 1, 1], 732),
    ];
    let f = move |t: &[Tensor]| {
        let x = t[0].tanh()?;
        x.conv2d(&t[1], None, s2)?
            .sigmoid()?
            .add(&x.conv2d(&t[2], None, d2)?)
    };
    check_gradients(f, &inputs, 1e-6, 1e-7, 1e-5).unwrap();
}

#[test]
fn conv2d_skips_gradients_not_required() {
    let x = randn(&[2, 3, 5, 5], 1);
    let w = randn(&[4, 3, 3, 3], 2).requires_grad_().unwrap();
    let b = randn(&[4], 3);
    let p = params([1, 1], [1, 1], [1, 1], 1);
    x.conv2d(&w, Some(&b), p)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(w.grad().unwrap().dims(), &[4, 3, 3, 3]);
    // Only the input requiring grad (the weight is frozen).
    let xr = x.requires_grad_().unwrap();
    xr.conv2d(&w.detach(), None, p)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(xr.grad().unwrap().dims(), &[2, 3, 5, 5]);
    // Only the bias.
    let br = b.requires_grad_().unwrap();
    x.conv2d(&w.detach(), Some(&br), p)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(br.grad().unwrap().to_vec_f64().unwrap(), vec![50.0; 4]);
}

#[test]
fn conv2d_bad_input_is_an_error() {
    let x = Tensor::zeros(&[2, 4, 5, 5], DType::F32);
    let w = Tensor::zeros(&[6, 4, 3, 3], DType::F32);
    let p = Conv2dParams::default();
    let err = |r: engine::Result<Tensor>| r.unwrap_err().to_string();
    let e = err(Tensor::zeros(&[4, 5, 5], DType::F32).conv2d(&w, None, p));
    assert!(e.contains("4 dims"), "{e}");
    let e = err(x.conv2d(&Tensor::zeros(&[6, 3, 3, 3], DType::F32), None, p));
    assert!(e.contains("weight"), "{e}");
    let e = err(x.conv2d(
        &Tensor::zeros(&[6, 4, 3, 3], DType::F32),
        None,
        params([1, 1], [0, 0], [1, 1], 3),
    ));
    assert!(e.contains("groups"), "{e}");
    let e = err(x.conv2d(
        &Tensor::zeros(&[5, 2, 3, 3], DType::F32),
        None,
        params([1, 1], [0, 0], [1, 1], 2),
    ));
    assert!(e.contains("groups"), "{e}");
    let e = err(x.conv2d(
        &Tensor::zeros(&[6, 4, 8, 3], DType::F32),
        None,
        params([1, 1], [1, 1], [1, 1], 1),
    ));
    assert!(e.contains("larger than the padded input"), "{e}");
    let e = err(x.conv2d(&w, None, params([1, 1], [0, 0], [3, 3], 1)));
    assert!(e.contains("larger than the padded input"), "{e}");
    let e = err(x.conv2d(&w.to_dtype(DType::F64).unwrap(), None, p));
    assert!(e.contains("dtype"), "{e}");
    let e = err(x.conv2d(&w, Some(&Tensor::zeros(&[6], DType::BF16)), p));
    assert!(e.contains("dtype"), "{e}");
    let e = err(x.conv2d(&w, Some(&Tensor::zeros(&[5], DType::F32)), p));
    assert!(e.contains("bias"), "{e}");
    let e = err(x.conv2d(&w, None, params([0, 1], [0, 0], [1, 1], 1)));
    assert!(e.contains("stride"), "{e}");
    let e = err(x.conv2d(&w, None, params([1, 1], [0, 0], [1, 1], 0)));
    assert!(e.contains("groups"), "{e}");
    let xi = Tensor::zeros(&[2, 4, 5, 5], DType::I64);
    assert!(xi
        .conv2d(&Tensor::zeros(&[6, 4, 3, 3], DType::I64), None, p)
        .is_err());
}

#[test]
fn conv2d_in_half_precision_matches_f32() {
    let (x, w, b) = (
        randn(&[2, 8, 9, 9], 1),
        randn(&[16, 8, 3, 3], 2),
        randn(&[16], 3),
    );
    let p = params([1, 1], [1, 1], [1, 1], 1);
    let to = |t: &Tensor, d| t.to_dtype(d).unwrap();
    let reference = to(&x, DType::F32)
        .conv2d(&to(&w, DType::F32), Some(&to(&b, DType::F32)), p)
        .unwrap();
    for dt in [DType::BF16, DType::F16] {
        let y = to(&x, dt)
            .conv2d(&to(&w, dt), Some(&to(&b, dt)), p)
            .unwrap();
        assert_eq!(y.dtype(), dt);
        // per element (NaN fails): 8 * 3 * 3 products and the bias rounded
        let tol = testutil::rounding_tol(dt, 8 * 3 * 3 + 1);
        testutil::check_tensor_close(&format!("{dt}"), &y, &reference, tol)
            .unwrap_or_else(|r| panic!("{r}"));
    }
}

// ---- pooling ----

/// Direct pooling loops: `mode` 0 = max, 1 = avg incl. pad, 2 = avg excl. pad.
fn naive_pool(x: &Tensor, k: [usize; 2], s: [usize; 2], p: [usize; 2], mode: u8) -> Vec<f64> {
    let [n, c, h, w] = dims4(x);
    let xv = x.to_vec_f64().unwrap();
    let oh = (h + 2 * p[0] - k[0]) / s[0] + 1;
    let ow = (w + 2 * p[1] - k[1]) / s[1] + 1;
    let mut out = Vec::new();
    for pl in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut m, mut sum, mut cnt) = (f64::NEG_INFINITY, 0.0, 0);
                for ky in 0..k[0] {
                    for kx in 0..k[1] {
                        let y = (oy * s[0] + ky) as isize - p[0] as isize;
                        let xx = (ox * s[1] + kx) as isize - p[1] as isize;
                        if y >= 0 && xx >= 0 && y < h as isize && xx < w as isize {
                            let v = xv[(pl * h + y as usize) * w + xx as usize];
                            m = m.max(v);
                            sum += v;
                            cnt += 1;
                        }
                    }
                }
                out.push(match mode {
                    0 => m,
                    1 => sum / (k[0] * k[1]) as f64,
                    _ => sum / cnt as f64,
                });
            }
        }
    }
    out
}

#[test]
fn pools_forward_match_direct_loops() {
    let cases = [
        ([2, 3, 9, 9], [3, 3], [2, 2], [1, 1]),
        ([1, 2, 7, 10], [2, 3], [1, 2], [1, 0]),
        ([2, 1, 6, 5], [2, 2], [2, 2], [0, 0]),
        ([3, 2, 5, 8], [3, 2], [3, 1], [1, 1]),
    ];
    for (i, (xs, k, s, p)) in cases.into_iter().enumerate() {
        let x = randn(&xs, 700 + i as u64);
        let got = [
            x.max_pool2d(k, s, p).unwrap(),
            x.avg_pool2d(k, s, p, true).unwrap(),
            x.avg_pool2d(k, s, p, false).unwrap(),
        ];
        for (mode, y) in got.iter().enumerate() {
            assert_close(
                &y.to_vec_f64().unwrap(),
                &naive_pool(&x, k, s, p, mode as u8),
                1e-12,
                &format!("case {i} mode {mode}"),
            );
        }
    }
}

#[test]
fn adaptive_avg_pool_uses_pytorch_bins() {
    // 7 -> 3 bins are [0,3) [2,5) [4,7); 8 -> 3 are [0,3) [2,6) [5,8).
    let x = Tensor::from_vec((0..56).map(|v| v as f64).collect(), &[1, 1, 7, 8]).unwrap();
    let y = x.adaptive_avg_pool2d([3, 3]).unwrap();
    let mean = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
        let (nr, nc) = (rows.len(), cols.len());
        rows.flat_map(|r| cols.clone().map(move |c| (r * 8 + c) as f64))
            .sum::<f64>()
            / (nr * nc) as f64
    };
    let (rb, cb) = ([0..3, 2..5, 4..7], [0..3, 2..6, 5..8]);
    let expect: Vec<f64> = rb
        .iter()
        .flat_map(|r| cb.iter().map(|c| mean(r.clone(), c.clone())))
        .collect();
    assert_close(&y.to_vec_f64().unwrap(), &expect, 1e-12, "adaptive 3x3");
    let g = x.adaptive_avg_pool2d([1, 1]).unwrap();
    assert_eq!(g.dims(), &[1, 1, 1, 1]);
    assert_close(&g.to_vec_f64().unwrap(), &[27.5], 1e-12, "global");
}

#[test]
fn gradcheck_pools() {
    let x = randn(&[2, 3, 7, 6], 800);
    let check = |f: &dyn Fn(&Tensor) -> engine::Result<Tensor>, what: &str| {
        check_gradients(|t| f(&t[0]), std::slice::from_ref(&x), 1e-6, 1e-7, 1e-5)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    };
    check(&|x| x.max_pool2d([3, 3], [2, 2], [1, 1]), "max 3x3 s2 p1");
    check(&|x| x.max_pool2d([2, 3], [1, 2], [1, 0]), "max 2x3");
    check(
        &|x| x.avg_pool2d([3, 3], [2, 2], [1, 1], true),
        "avg incl pad",
    );
    check(
        &|x| x.avg_pool2d([3, 2], [2, 1], [1, 1], false),
        "avg excl pad",
    );
    check(&|x| x.adaptive_avg_pool2d([3, 4]), "adaptive 3x4");
    check(
        &|x| x.adaptive_avg_pool2d([9, 5]),
        "adaptive 9x5 (overlapping bins)",
    );
    check(&|x| x.adaptive_avg_pool2d([1, 1]), "global");
}

#[test]
fn max_pool_ties_go_to_the_first_max() {
    let x = Tensor::ones(&[1, 1, 4, 4], DType::F32)
        .requires_grad_()
        .unwrap();
    x.max_pool2d([2, 2], [2, 2], [0, 0])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = x.grad().unwrap().to_vec::<f32>().unwrap();
    #[rustfmt::skip]
    let expect = [1.0, 0.0, 1.0, 0.0,
                  0.0, 0.0, 0.0, 0.0,
                  1.0, 0.0, 1.0, 0.0,
                  0.0, 0.0, 0.0, 0.0];
    assert_eq!(g, expect);
    // Overlapping windows accumulate at a shared argmax; padding is never picked.
    let x = Tensor::from_vec(vec![-5.0f32, -1.0, -3.0, -4.0], &[1, 1, 1, 4])
        .unwrap()
        .requires_grad_()
        .unwrap();
    let y = x.max_pool2d([1, 3], [1, 1], [0, 1]).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![-1.0, -1.0, -1.0, -3.0]);
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(
        x.grad().unwrap().to_vec::<f32>().unwrap(),
        vec![0.0, 3.0, 1.0, 0.0]
    );
}

#[test]
fn pools_keep_half_dtypes() {
    let x = randn(&[2, 3, 6, 6], 9).to_dtype(DType::BF16).unwrap();
    for y in [
        x.max_pool2d([2, 2], [2, 2], [0, 0]).unwrap(),
        x.avg_pool2d([3, 3], [1, 1], [1, 1], true).unwrap(),
        x.adaptive_avg_pool2d([1, 1]).unwrap(),
    ] {
        assert_eq!(y.dtype(), DType::BF16);
    }
}

#[test]
fn pool_bad_input_is_an_error() {
    let x = Tensor::zeros(&[2, 3, 5, 5], DType::F32);
    let err = |r: engine::Result<Tensor>| r.unwrap_err().to_string();
    let e = err(Tensor::zeros(&[3, 5, 5], DType::F32).max_pool2d([2, 2], [2, 2], [0, 0]));
    assert!(e.contains("4 dims"), "{e}");
    let e = err(x.max_pool2d([3, 3], [1, 1], [2, 2]));
    assert!(e.contains("half the kernel"), "{e}");
    let e = err(x.avg_pool2d([2, 2], [1, 1], [2, 0], true));
    assert!(e.contains("half the kernel"), "{e}");
    let e = err(x.avg_pool2d([7, 2], [1, 1], [0, 0], false));
    assert!(e.contains("larger than the padded input"), "{e}");
    let e = err(x.max_pool2d([2, 2], [0, 1], [0, 0]));
    assert!(e.contains("stride"), "{e}");
    let e = err(x.adaptive_avg_pool2d([0, 1]));
    assert!(e.contains("output size"), "{e}");
    let e = err(Tensor::zeros(&[5, 5], DType::F32).adaptive_avg_pool2d([1, 1]));
    assert!(e.contains("4 dims"), "{e}");
    assert!(Tensor::zeros(&[2, 3, 5, 5], DType::I64)
        .max_pool2d([2, 2], [2, 2], [0, 0])
        .is_err());
}
