//! Batch norm (plain and fused) and the loss ops: forward against naive
//! loops, finite-difference gradients in f64, running stats, mixed precision
//! and bad inputs.

use engine::gradcheck::check_gradients;
use engine::ops::{BatchNormArgs, BatchNormOutput};
use engine::{DType, Result, Rng, Tensor};
use testutil::randn;

fn assert_close(got: &[f64], want: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fuse {
    None,
    Relu,
    AddRelu,
}

struct Naive {
    out: Vec<f64>,
    rm: Vec<f64>,
    rv: Vec<f64>,
}

/// Batch norm straight from the definition, two-pass statistics in f64.
#[allow(clippy::too_many_arguments)]
fn naive_bn(
    x: &[f64],
    dims: &[usize],
    w: &[f64],
    b: &[f64],
    rm: &[f64],
    rv: &[f64],
    training: bool,
    momentum: f64,
    eps: f64,
    fuse: Fuse,
    res: Option<&[f64]>,
) -> Naive {
    let (n, c, s) = (dims[0], dims[1], dims[2..].iter().product::<usize>());
    let at = |i: usize, ch: usize, j: usize| (i * c + ch) * s + j;
    let mut out = vec![0.0; x.len()];
    let (mut nrm, mut nrv) = (rm.to_vec(), rv.to_vec());
    for ch in 0..c {
        let (mean, var) = if training {
            let m = (n * s) as f64;
            let mut mean = 0.0;
            for i in 0..n {
                for j in 0..s {
                    mean += x[at(i, ch, j)];
                }
            }
            mean /= m;
            let mut var = 0.0;
            for i in 0..n {
                for j in 0..s {
                    var += (x[at(i, ch, j)] - mean).powi(2);
                }
            }
            var /= m;
            nrm[ch] = (1.0 - momentum) * rm[ch] + momentum * mean;
            nrv[ch] = (1.0 - momentum) * rv[ch] + momentum * var * m / (m - 1.0);
            (mean, var)
        } else {
            (rm[ch], rv[ch])
        };
        for i in 0..n {
            for j in 0..s {
                let k = at(i, ch, j);
                let mut y = (x[k] - mean) / (var + eps).sqrt() * w[ch] + b[ch];
                if let Some(r) = res {
                    y += r[k];
                }
                out[k] = if fuse == Fuse::None { y } else { y.max(0.0) };
            }
        }
    }
    Naive {
        out,
        rm: nrm,
        rv: nrv,
    }
}

/// Batch-norm arguments with momentum 0.1 and eps 1e-5.
fn bn_args<'a>(
    weight: &'a Tensor,
    bias: &'a Tensor,
    running_mean: &'a Tensor,
    running_var: &'a Tensor,
    training: bool,
) -> BatchNormArgs<'a> {
    BatchNormArgs {
        weight,
        bias,
        running_mean,
        running_var,
        training,
        momentum: 0.1,
        eps: 1e-5,
    }
}

fn args(p: &[Tensor; 4], training: bool) -> BatchNormArgs<'_> {
    bn_args(&p[0], &p[1], &p[2], &p[3], training)
}

/// weight, bias, running_mean, running_var for `c` channels.
fn params(c: usize, dtype: DType, seed: u64) -> [Tensor; 4] {
    let mut rng = Rng::new(seed);
    [
        Tensor::randn(&[c], 1.0, 0.3, dtype, &mut rng),
        Tensor::randn(&[c], 0.0, 0.5, dtype, &mut rng),
        Tensor::randn(&[c], 0.0, 0.5, dtype, &mut rng),
        Tensor::rand(&[c], 0.5, 2.0, dtype, &mut rng),
    ]
}

fn run_bn(
    x: &Tensor,
    res: Option<&Tensor>,
    a: &BatchNormArgs,
    fuse: Fuse,
) -> Result<BatchNormOutput> {
    match fuse {
        Fuse::None => x.batch_norm(a),
        Fuse::Relu => x.batch_norm_relu(a),
        Fuse::AddRelu => x.batch_norm_add_relu(res.unwrap(), a),
    }
}

const SHAPES: [&[usize]; 4] = [&[7, 3], &[3, 4, 5], &[3, 2, 3, 5], &[2, 5, 1, 1]];

#[test]
fn bn_forward_matches_naive() {
    let mut seed = 100;
    for dtype in [DType::F64, DType::F32] {
        for shape in SHAPES {
            for training in [true, false] {
                for fuse in [Fuse::None, Fuse::Relu, Fuse::AddRelu] {
                    seed += 1;
                    let mut rng = Rng::new(seed);
                    // offset mean: the normalisation must not lose precision
                    let x = Tensor::randn(shape, 3.0, 2.0, dtype, &mut rng);
                    let r = Tensor::randn(shape, 0.0, 1.0, dtype, &mut rng);
                    let p = params(shape[1], dtype, seed);
                    let a = args(&p, training);
                    let y = run_bn(&x, Some(&r), &a, fuse).unwrap();
                    assert_eq!(y.out.dims(), shape);
                    assert_eq!(y.out.dtype(), dtype);
                    let rv = r.to_vec_f64().unwrap();
                    let v: Vec<Vec<f64>> = p.iter().map(|t| t.to_vec_f64().unwrap()).collect();
                    let res = (fuse == Fuse::AddRelu).then_some(rv.as_slice());
                    let want = naive_bn(
                        &x.to_vec_f64().unwrap(),
                        shape,
                        &v[0],
                        &v[1],
                        &v[2],
                        &v[3],
                        training,
                        0.1,
                        1e-5,
                        fuse,
                        res,
                    );
                    let tol = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
                    assert_close(&y.out.to_vec_f64().unwrap(), &want.out, tol, tol, "bn out");
                    match y.running {
                        Some((m, v)) => {
                            assert!(training);
                            assert_eq!((m.dtype(), v.dtype()), (dtype, dtype));
                            assert_close(
                                &m.to_vec_f64().unwrap(),
                                &want.rm,
                                tol,
                                tol,
                                "running_mean",
                            );
                            assert_close(
                                &v.to_vec_f64().unwrap(),
                                &want.rv,
                                tol,
                                tol,
                                "running_var",
                            );
                        }
                        None => assert!(!training),
                    }
                }
            }
        }
    }
}

/// Training-mode gradients (dx, dw, db, dresidual) from the textbook
/// formulas, looping over each channel.
#[allow(clippy::too_many_arguments)]
fn naive_bn_backward(
    x: &[f64],
    dims: &[usize],
    w: &[f64],
    out: &[f64],
    g: &[f64],
    eps: f64,
    fused: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (n, c, s) = (dims[0], dims[1], dims[2..].iter().product::<usize>());
    let m = (n * s) as f64;
    let idx = |ch: usize| (0..n).flat_map(move |i| (0..s).map(move |j| (i * c + ch) * s + j));
    let dy: Vec<f64> = g
        .iter()
        .zip(out)
        .map(|(&g, &y)| if !fused || y > 0.0 { g } else { 0.0 })
        .collect();
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
    for ch in 0..c {
        let mean = idx(ch).map(|k| x[k]).sum::<f64>() / m;
        let var = idx(ch).map(|k| (x[k] - mean).powi(2)).sum::<f64>() / m;
        let invstd = 1.0 / (var + eps).sqrt();
        db[ch] = idx(ch).map(|k| dy[k]).sum();
        dw[ch] = idx(ch).map(|k| dy[k] * (x[k] - mean) * invstd).sum();
        for k in idx(ch) {
            let xhat = (x[k] - mean) * invstd;
            dx[k] = w[ch] * invstd / m * (m * dy[k] - db[ch] - xhat * dw[ch]);
        }
    }
    (dx, dw, db, dy)
}

#[test]
fn bn_parallel_sizes_match_naive_forward_and_backward() {
    // big enough for the parallel paths: [N, C] rows, odd planes, one plane
    // larger than a task
    for (i, shape) in [
        &[300, 130][..],
        &[3, 50, 131],
        &[2, 3, 9001],
        &[5, 64, 7, 9],
    ]
    .into_iter()
    .enumerate()
    {
        for fuse in [Fuse::None, Fuse::Relu, Fuse::AddRelu] {
            let seed = 300 + 10 * i as u64 + fuse as u64;
            let mut rng = Rng::new(seed);
            let x = Tensor::randn(shape, -1.0, 2.0, DType::F64, &mut rng)
                .requires_grad_()
                .unwrap();
            let r = Tensor::randn(shape, 0.0, 1.0, DType::F64, &mut rng)
                .requires_grad_()
                .unwrap();
            let p = params(shape[1], DType::F64, seed);
            let (w, b) = (
                p[0].requires_grad_().unwrap(),
                p[1].requires_grad_().unwrap(),
            );
            let a = bn_args(&w, &b, &p[2], &p[3], true);
            let y = run_bn(&x, Some(&r), &a, fuse).unwrap();
            let v: Vec<Vec<f64>> = p.iter().map(|t| t.to_vec_f64().unwrap()).collect();
            let rv = r.to_vec_f64().unwrap();
            let res = (fuse == Fuse::AddRelu).then_some(rv.as_slice());
            let xv = x.to_vec_f64().unwrap();
            let want = naive_bn(
                &xv, shape, &v[0], &v[1], &v[2], &v[3], true, 0.1, 1e-5, fuse, res,
            );
            assert_close(&y.out.to_vec_f64().unwrap(), &want.out, 1e-10, 1e-10, "out");
            let (m, var) = y.running.as_ref().unwrap();
            assert_close(
                &m.to_vec_f64().unwrap(),
                &want.rm,
                1e-12,
                1e-12,
                "running_mean",
            );
            assert_close(
                &var.to_vec_f64().unwrap(),
                &want.rv,
                1e-12,
                1e-12,
                "running_var",
            );

            let g = Tensor::randn(shape, 0.0, 1.0, DType::F64, &mut rng);
            y.out.backward_with(g.clone()).unwrap();
            let (dx, dw, db, dy) = naive_bn_backward(
                &xv,
                shape,
                &v[0],
                &want.out,
                &g.to_vec_f64().unwrap(),
                1e-5,
                fuse != Fuse::None,
            );
            assert_close(
                &x.grad().unwrap().to_vec_f64().unwrap(),
                &dx,
                1e-9,
                1e-8,
                "dx",
            );
            assert_close(
                &w.grad().unwrap().to_vec_f64().unwrap(),
                &dw,
                1e-9,
                1e-9,
                "dw",
            );
            assert_close(
                &b.grad().unwrap().to_vec_f64().unwrap(),
                &db,
                1e-9,
                1e-9,
                "db",
            );
            match fuse {
                Fuse::AddRelu => assert_close(
                    &r.grad().unwrap().to_vec_f64().unwrap(),
                    &dy,
                    0.0,
                    0.0,
                    "dresidual",
                ),
                _ => assert!(r.grad().is_none()),
            }
        }
    }
}

#[test]
fn running_stats_use_momentum_and_unbiased_variance() {
    // channel 0: {1, 3, 5, 7} -> mean 4, biased var 5, unbiased var 20/3
    let x = Tensor::from_vec(vec![1.0f32, 10.0, 3.0, 10.0, 5.0, 10.0, 7.0, 10.0], &[4, 2]).unwrap();
    let p = [
        Tensor::ones(&[2], DType::F32),
        Tensor::zeros(&[2], DType::F32),
        Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap(),
        Tensor::from_vec(vec![3.0f32, 4.0], &[2]).unwrap(),
    ];
    let mut a = args(&p, true);
    a.momentum = 0.25;
    a.eps = 0.0;
    let y = x.batch_norm(&a).unwrap();
    let (m, v) = y.running.unwrap();
    assert_close(
        &m.to_vec_f64().unwrap(),
        &[0.75 * 1.0 + 0.25 * 4.0, 0.75 * 2.0 + 0.25 * 10.0],
        1e-6,
        0.0,
        "rm",
    );
    assert_close(
        &v.to_vec_f64().unwrap(),
        &[0.75 * 3.0 + 0.25 * 20.0 / 3.0, 0.75 * 4.0],
        1e-6,
        0.0,
        "rv",
    );
    // normalised with the biased variance: (1 - 4) / sqrt(5)
    assert!((y.out.to_vec_f64().unwrap()[0] + 3.0 / 5f64.sqrt()).abs() < 1e-6);
    // the inputs are untouched (functional update)
    assert_eq!(p[2].to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
}

fn gradcheck_bn(shape: &[usize], training: bool, fuse: Fuse, seed: u64) {
    let c = shape[1];
    let p = params(c, DType::F64, seed);
    let (rm, rv) = (p[2].clone(), p[3].clone());
    let x = randn(shape, seed + 1);
    let r = randn(shape, seed + 2);
    let f = move |t: &[Tensor]| -> Result<Tensor> {
        let a = bn_args(&t[1], &t[2], &rm, &rv, training);
        let res = t.get(3);
        Ok(run_bn(&t[0], res, &a, fuse)?.out)
    };
    let mut inputs = vec![x.clone(), p[0].clone(), p[1].clone()];
    if fuse == Fuse::AddRelu {
        inputs.push(r.clone());
    }
    if fuse != Fuse::None {
        // finite differences must not straddle the ReLU kink
        let plain = bn_args(&p[0], &p[1], &p[2], &p[3], training);
        let mut pre = x.batch_norm(&plain).unwrap().out;
        if fuse == Fuse::AddRelu {
            pre = pre.add(&r).unwrap();
        }
        let min = pre
            .to_vec_f64()
            .unwrap()
            .iter()
            .fold(f64::INFINITY, |m, v| m.min(v.abs()));
        assert!(
            min > 1e-4,
            "seed {seed}: pre-activation {min} too close to the kink"
        );
    }
    check_gradients(f, &inputs, 1e-6, 1e-7, 1e-5)
        .unwrap_or_else(|e| panic!("{shape:?} training={training} fused={}: {e}", fuse as u8));
}

#[test]
fn bn_gradcheck_all_variants() {
    let mut seed = 200;
    for shape in [&[7, 3][..], &[3, 4, 5], &[3, 2, 3, 5]] {
        for training in [true, false] {
            for fuse in [Fuse::None, Fuse::Relu, Fuse::AddRelu] {
                seed += 10;
                gradcheck_bn(shape, training, fuse, seed);
            }
        }
    }
}

#[test]
fn bn_grads_only_for_inputs_that_need_them() {
    let p = params(3, DType::F64, 7);
    let x = randn(&[4, 3, 2], 8).requires_grad_().unwrap();
    let y = x.batch_norm(&args(&p, true)).unwrap();
    y.out.sum_all().unwrap().backward().unwrap();
    // sum of a training-mode BN output does not depend on x
    assert!(x
        .grad()
        .unwrap()
        .to_vec_f64()
        .unwrap()
        .iter()
        .all(|v| v.abs() < 1e-12));
    // running stats carry no graph
    let (m, v) = y.running.unwrap();
    assert!(!m.requires_grad() && !v.requires_grad());
}

#[test]
fn bn_add_relu_residual_grad_without_x_grad() {
    let shape = [4, 3, 5];
    let p = params(3, DType::F64, 60);
    let x = randn(&shape, 61);
    let r = randn(&shape, 62).requires_grad_().unwrap();
    let y = x.batch_norm_add_relu(&r, &args(&p, true)).unwrap();
    let g = randn(&shape, 63);
    y.out.backward_with(g.clone()).unwrap();
    let want: Vec<f64> = g
        .to_vec_f64()
        .unwrap()
        .iter()
        .zip(y.out.to_vec_f64().unwrap())
        .map(|(&g, o)| if o > 0.0 { g } else { 0.0 })
        .collect();
    assert_eq!(r.grad().unwrap().to_vec_f64().unwrap(), want);
}

#[test]
fn bn_mixed_precision_bf16_x_f32_params() {
    let shape = [4, 3, 5, 6];
    for xdt in [DType::BF16, DType::F16] {
        let mut rng = Rng::new(31);
        let x = Tensor::randn(&shape, 0.5, 1.5, xdt, &mut rng);
        let r = Tensor::randn(&shape, 0.0, 1.0, xdt, &mut rng);
        let p = params(3, DType::F32, 32);
        let w = p[0].requires_grad_().unwrap();
        let b = p[1].requires_grad_().unwrap();
        let xg = x.requires_grad_().unwrap();
        let a = bn_args(&w, &b, &p[2], &p[3], true);
        let y = xg.batch_norm_add_relu(&r, &a).unwrap();
        assert_eq!(y.out.dtype(), xdt);
        let (m, v) = y.running.as_ref().unwrap();
        assert_eq!((m.dtype(), v.dtype()), (DType::F32, DType::F32));
        let g = Tensor::randn(&shape, 0.0, 1.0, xdt, &mut rng);
        y.out.backward_with(g.clone()).unwrap();
        assert_eq!(xg.grad().unwrap().dtype(), xdt);
        assert_eq!(w.grad().unwrap().dtype(), DType::F32);
        assert_eq!(b.grad().unwrap().dtype(), DType::F32);

        // the same computation in f64 from the rounded inputs
        let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (x64, w64, b64, r64) = (
            to64(&x).requires_grad_().unwrap(),
            to64(&p[0]).requires_grad_().unwrap(),
            to64(&p[1]).requires_grad_().unwrap(),
            to64(&r),
        );
        let (rm64, rv64) = (to64(&p[2]), to64(&p[3]));
        let a64 = bn_args(&w64, &b64, &rm64, &rv64, true);
        let y64 = x64.batch_norm_add_relu(&r64, &a64).unwrap();
        y64.out.backward_with(to64(&g)).unwrap();
        let tol = if xdt == DType::BF16 { 1e-2 } else { 2e-3 };
        assert_close(
            &y.out.to_vec_f64().unwrap(),
            &y64.out.to_vec_f64().unwrap(),
            tol,
            tol,
            "mixed out",
        );
        assert_close(
            &m.to_vec_f64().unwrap(),
            &y64.running.as_ref().unwrap().0.to_vec_f64().unwrap(),
            1e-5,
            1e-5,
            "mixed rm",
        );
        assert_close(
            &xg.grad().unwrap().to_vec_f64().unwrap(),
            &x64.grad().unwrap().to_vec_f64().unwrap(),
            4.0 * tol,
            tol,
            "mixed dx",
        );
        // dw/db are sums over 120 elements of rounded values: relative to their scale
        let wg = w64.grad().unwrap().to_vec_f64().unwrap();
        let scale = wg.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert_close(
            &w.grad().unwrap().to_vec_f64().unwrap(),
            &wg,
            4.0 * tol * scale,
            0.0,
            "mixed dw",
        );
    }
}

#[test]
fn bn_is_deterministic_on_parallel_sizes() {
    let mut rng = Rng::new(41);
    let x = Tensor::randn(&[8, 16, 24, 24], 0.0, 1.0, DType::F32, &mut rng)
        .requires_grad_()
        .unwrap();
    let p = params(16, DType::F32, 42);
    let w = p[0].requires_grad_().unwrap();
    let g = Tensor::randn(x.dims(), 0.0, 1.0, DType::F32, &mut rng);
    let run = || {
        x.set_grad(None);
        w.set_grad(None);
        let a = bn_args(&w, &p[1], &p[2], &p[3], true);
        let y = x.batch_norm_relu(&a).unwrap();
        y.out.backward_with(g.clone()).unwrap();
        (
            y.out.to_vec::<f32>().unwrap(),
            x.grad().unwrap().to_vec::<f32>().unwrap(),
            w.grad().unwrap().to_vec::<f32>().unwrap(),
        )
    };
    let first = run();
    for _ in 0..3 {
        assert!(run() == first, "results differ between runs");
    }
}

#[test]
fn bn_bad_inputs_are_errors() {
    let x = Tensor::zeros(&[4, 3, 2, 2], DType::F32);
    let p = params(3, DType::F32, 50);
    let p4 = params(4, DType::F32, 51);
    let err = |r: Result<BatchNormOutput>| match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };

    let e = err(x.batch_norm(&args(&p4, true)));
    assert!(e.contains("weight") && e.contains("[3]"), "{e}");
    let e = err(Tensor::zeros(&[4], DType::F32).batch_norm(&args(&p, true)));
    assert!(e.contains("at least 2 dims"), "{e}");
    let e = err(Tensor::zeros(&[4, 3], DType::I64).batch_norm(&args(&p, true)));
    assert!(e.contains("i64"), "{e}");
    // f32 params with f64 x, f64 params with f32 x, bf16 params with f16 x
    let e = err(x.to_dtype(DType::F64).unwrap().batch_norm(&args(&p, true)));
    assert!(e.contains("f64") && e.contains("weight"), "{e}");
    let p64 = params(3, DType::F64, 52);
    assert!(x.batch_norm(&args(&p64, true)).is_err());
    let pb: Vec<Tensor> = p.iter().map(|t| t.to_dtype(DType::BF16).unwrap()).collect();
    let pb = [pb[0].clone(), pb[1].clone(), pb[2].clone(), pb[3].clone()];
    let xh = x.to_dtype(DType::F16).unwrap();
    let e = err(xh.batch_norm(&args(&pb, true)));
    assert!(e.contains("bf16"), "{e}");
    // residual shape and dtype
    let e = err(x.batch_norm_add_relu(&Tensor::zeros(&[4, 3, 2, 1], DType::F32), &args(&p, true)));
    assert!(e.contains("residual"), "{e}");
    let e = err(x.batch_norm_add_relu(&Tensor::zeros(&[4, 3, 2, 2], DType::F64), &args(&p, true)));
    assert!(e.contains("residual"), "{e}");
    // one value per channel cannot be normalised in training (eval is fine)
    let one = Tensor::zeros(&[1, 3], DType::F32);
    let e = err(one.batch_norm(&args(&p, true)));
    assert!(e.contains("more than one value"), "{e}");
    assert!(one.batch_norm(&args(&p, false)).is_ok());
    let mut a = args(&p, true);
    a.eps = -1.0;
    assert!(err(x.batch_norm(&a)).contains("eps"));
}

// ---------------------------------------------------------------- losses

/// Row-wise log-softmax of [n, c] data, straight from the definition.
fn naive_log_softmax(x: &[f64], c: usize) -> Vec<f64> {
    x.chunks(c)
        .flat_map(|row| {
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            row.iter().map(move |v| v - lse).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn softmax_forward_and_gradcheck_every_dim() {
    let x = randn(&[3, 4, 5], 60);
    for dim in 0..3 {
        let ls = x.log_softmax(dim).unwrap();
        let sm = x.softmax(dim).unwrap();
        // compare with the row-wise naive version after moving `dim` last
        let mut perm: Vec<usize> = (0..3).filter(|&d| d != dim).collect();
        perm.push(dim);
        let xp = x.permute(&perm).unwrap().to_vec_f64().unwrap();
        let want = naive_log_softmax(&xp, x.dims()[dim]);
        assert_close(
            &ls.permute(&perm).unwrap().to_vec_f64().unwrap(),
            &want,
            1e-12,
            1e-12,
            "log_softmax",
        );
        let want_sm: Vec<f64> = want.iter().map(|v| v.exp()).collect();
        assert_close(
            &sm.permute(&perm).unwrap().to_vec_f64().unwrap(),
            &want_sm,
            1e-12,
            1e-12,
            "softmax",
        );
        let grads_ok = |f: &dyn Fn(&Tensor) -> engine::Result<Tensor>| {
            check_gradients(|t| f(&t[0]), std::slice::from_ref(&x), 1e-6, 1e-7, 1e-5).unwrap()
        };
        grads_ok(&|t| t.log_softmax(dim));
        grads_ok(&|t| t.softmax(dim));
    }
    // large logits do not overflow
    let big = Tensor::from_vec(vec![1000.0f32, 0.0, -1000.0], &[1, 3]).unwrap();
    let ls = big.log_softmax(1).unwrap().to_vec_f64().unwrap();
    assert_eq!(ls[0], 0.0);
    assert!((ls[2] + 2000.0).abs() < 1e-3);
    assert!(x.log_softmax(3).is_err());
    assert!(Tensor::zeros(&[2, 2], DType::I64).softmax(1).is_err());
}

/// F.cross_entropy with label smoothing and ignore index, from the definition.
fn naive_ce(x: &[f64], c: usize, t: &[i64], eps: f64, ignore: i64) -> f64 {
    let lp = naive_log_softmax(x, c);
    let (mut sum, mut count) = (0.0, 0);
    for (i, &ti) in t.iter().enumerate() {
        if ti == ignore {
            continue;
        }
        let row = &lp[i * c..(i + 1) * c];
        sum += (1.0 - eps) * -row[ti as usize] + eps * -row.iter().sum::<f64>() / c as f64;
        count += 1;
    }
    sum / count as f64
}

#[test]
fn cross_entropy_forward_smoothing_ignore_and_gradcheck() {
    let (n, c) = (7, 5);
    let x = randn(&[n, c], 70).scale(2.0).unwrap();
    let t = Tensor::from_vec(vec![0i64, 4, -100, 2, 1, -100, 3], &[n]).unwrap();
    let xv = x.to_vec_f64().unwrap();
    let tv = t.to_vec::<i64>().unwrap();
    for eps in [0.0, 0.1, 1.0] {
        let loss = x.cross_entropy(&t, eps, Some(-100)).unwrap();
        assert_eq!(loss.dims(), &[] as &[usize]);
        assert!(
            (loss.item().unwrap() - naive_ce(&xv, c, &tv, eps, -100)).abs() < 1e-12,
            "eps {eps}"
        );
        check_gradients(
            |a| a[0].cross_entropy(&a[1], eps, Some(-100)),
            &[x.clone(), t.clone()],
            1e-6,
            1e-7,
            1e-5,
        )
        .unwrap();
    }
    // ignored rows get exactly zero gradient
    let xg = x.requires_grad_().unwrap();
    xg.cross_entropy(&t, 0.1, Some(-100))
        .unwrap()
        .backward()
        .unwrap();
    let g = xg.grad().unwrap().to_vec_f64().unwrap();
    assert!(g[2 * c..3 * c]
        .iter()
        .chain(&g[5 * c..6 * c])
        .all(|&v| v == 0.0));
    // a custom ignore index; with no ignore index, every row counts
    let t2 = Tensor::from_vec(vec![0i64, 4, 3, 2, 1, 3, 3], &[n]).unwrap();
    let l = x.cross_entropy(&t2, 0.0, Some(3)).unwrap().item().unwrap();
    assert!((l - naive_ce(&xv, c, &t2.to_vec::<i64>().unwrap(), 0.0, 3)).abs() < 1e-12);
    let l = x.cross_entropy(&t2, 0.0, None).unwrap().item().unwrap();
    assert!((l - naive_ce(&xv, c, &t2.to_vec::<i64>().unwrap(), 0.0, -12345)).abs() < 1e-12);
    // f32 logits: f32 loss, stable for huge logits
    let big = Tensor::from_vec(vec![1e4f32, 0.0, 0.0, -1e4], &[2, 2]).unwrap();
    let l = big
        .cross_entropy(&Tensor::from_vec(vec![0i64, 1], &[2]).unwrap(), 0.0, None)
        .unwrap();
    assert_eq!(l.dtype(), DType::F32);
    assert!(
        (l.item().unwrap() - 0.5 * 1e4).abs() < 1e-2,
        "{}",
        l.item().unwrap()
    );
}

#[test]
fn cross_entropy_bad_inputs_are_errors() {
    let x = Tensor::zeros(&[3, 4], DType::F32);
    let t = |v: Vec<i64>| Tensor::from_vec(v.clone(), &[v.len()]).unwrap();
    let err = |r: Result<Tensor>| match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    let e = err(x.cross_entropy(&t(vec![0, 4, 1]), 0.0, Some(-100)));
    assert!(e.contains("target[1] = 4") && e.contains("[0, 4)"), "{e}");
    let e = err(x.cross_entropy(&t(vec![0, -1, 1]), 0.0, Some(-100)));
    assert!(e.contains("-1"), "{e}");
    let e = err(x.cross_entropy(&t(vec![-100, -100, -100]), 0.0, Some(-100)));
    assert!(e.contains("ignored") && e.contains("NaN"), "{e}");
    let e = err(x.cross_entropy(&t(vec![0, 1]), 0.0, None));
    assert!(e.contains("[3]"), "{e}");
    let e = err(x.cross_entropy(&Tensor::zeros(&[3], DType::F32), 0.0, None));
    assert!(e.contains("i64"), "{e}");
    let e = err(Tensor::zeros(&[3, 4], DType::I64).cross_entropy(&t(vec![0, 1, 2]), 0.0, None));
    assert!(e.contains("float"), "{e}");
    let e = err(Tensor::zeros(&[3, 4, 1], DType::F32).cross_entropy(&t(vec![0, 1, 2]), 0.0, None));
    assert!(e.contains("2 dims"), "{e}");
    let e = err(x.cross_entropy(&t(vec![0, 1, 2]), 1.5, None));
    assert!(e.contains("label_smoothing"), "{e}");
}

#[test]
fn bce_with_logits_forward_and_gradcheck() {
    let x = randn(&[4, 7], 80).scale(3.0).unwrap();
    let t = Tensor::rand(&[4, 7], 0.0, 1.0, DType::F64, &mut Rng::new(81));
    let (xv, tv) = (x.to_vec_f64().unwrap(), t.to_vec_f64().unwrap());
    let want: f64 = xv
        .iter()
        .zip(&tv)
        .map(|(&x, &t)| {
            let s = 1.0 / (1.0 + (-x).exp());
            -(t * s.ln() + (1.0 - t) * (1.0 - s).ln())
        })
        .sum::<f64>()
        / xv.len() as f64;
    let l = x.bce_with_logits(&t).unwrap();
    assert_eq!(l.dims(), &[] as &[usize]);
    assert!((l.item().unwrap() - want).abs() < 1e-12);
    let tc = t.clone();
    check_gradients(
        move |a| a[0].bce_with_logits(&tc),
        std::slice::from_ref(&x),
        1e-6,
        1e-7,
        1e-5,
    )
    .unwrap();
    // stable where the naive formula overflows
    let big = Tensor::from_vec(vec![200.0f32, -200.0], &[2]).unwrap();
    let l = big
        .bce_with_logits(&Tensor::from_vec(vec![0.0f32, 0.0], &[2]).unwrap())
        .unwrap();
    assert!((l.item().unwrap() - 100.0).abs() < 1e-3);
    // errors: shape, dtype, integer logits, empty
    assert!(x
        .bce_with_logits(&Tensor::zeros(&[4, 6], DType::F64))
        .unwrap_err()
        .to_string()
        .contains("differ"));
    assert!(x
        .bce_with_logits(&Tensor::zeros(&[4, 7], DType::F32))
        .is_err());
    assert!(Tensor::zeros(&[2], DType::I64)
        .bce_with_logits(&Tensor::zeros(&[2], DType::I64))
        .is_err());
    assert!(Tensor::zeros(&[0], DType::F32)
        .bce_with_logits(&Tensor::zeros(&[0], DType::F32))
        .is_err());
}

#[test]
fn smooth_l1_forward_and_gradcheck() {
    let n = 40;
    // differences spread over both branches, away from 0 and from beta
    let mut rng = Rng::new(90);
    let t = Tensor::randn(&[5, 8], 0.0, 1.0, DType::F64, &mut rng);
    for beta in [1.0 / 9.0, 1.0, 0.0] {
        let d: Vec<f64> = (0..n)
            .map(|i| {
                let mag = 0.05 + 2.5 * (i as f64 / n as f64);
                let mag = if beta > 0.0 && (mag - beta).abs() < 0.02 {
                    mag + 0.05
                } else {
                    mag
                };
                if i % 2 == 0 {
                    mag
                } else {
                    -mag
                }
            })
            .collect();
        let x = Tensor::from_vec(d.clone(), &[5, 8])
            .unwrap()
            .add(&t)
            .unwrap();
        let want = d
            .iter()
            .map(|&d| {
                if d.abs() < beta {
                    0.5 * d * d / beta
                } else {
                    d.abs() - 0.5 * beta
                }
            })
            .sum::<f64>()
            / n as f64;
        let l = x.smooth_l1(&t, beta).unwrap();
        assert!((l.item().unwrap() - want).abs() < 1e-12, "beta {beta}");
        let tc = t.clone();
        check_gradients(
            move |a| a[0].smooth_l1(&tc, beta),
            std::slice::from_ref(&x),
            1e-6,
            1e-7,
            1e-5,
        )
        .unwrap();
    }
    let e = t
        .smooth_l1(&Tensor::zeros(&[5, 7], DType::F64), 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("differ"), "{e}");
    assert!(t
        .smooth_l1(&t, -1.0)
        .unwrap_err()
        .to_string()
        .contains("beta"));
    assert!(Tensor::zeros(&[2], DType::I64)
        .smooth_l1(&Tensor::zeros(&[2], DType::I64), 1.0)
        .is_err());
}

#[test]
fn losses_give_no_gradient_to_targets() {
    let x = randn(&[3, 4], 95).requires_grad_().unwrap();
    let t = randn(&[3, 4], 96).requires_grad_().unwrap();
    x.smooth_l1(&t, 0.5)
        .unwrap()
        .add(&x.bce_with_logits(&t.sigmoid().unwrap()).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    assert!(x.grad().is_some());
    assert!(t.grad().is_none());
}

/// BN+ReLU's backward recomputes the ReLU mask from x instead of reading its
/// output: the fused op must equal batch_norm then relu bit for bit, in
/// every float dtype, where many outputs are zero or, in f16, underflow
/// (tiny weights), in training and eval, on [N, C] and on planes.
#[test]
fn bn_relu_equals_bn_then_relu_bitwise() {
    for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
        for (shape, training) in [
            (&[64usize, 8][..], true),
            (&[8, 6, 5, 7][..], true),
            (&[8, 6, 5, 7][..], false),
            (&[4, 16, 24, 24][..], true),
        ] {
            let c = shape[1];
            let mut rng = Rng::new(c as u64 + shape.len() as u64);
            let x = Tensor::randn(shape, 0.1, 1.0, dtype, &mut rng);
            let g = Tensor::randn(shape, 0.0, 1.0, dtype, &mut rng);
            // half the channels with weights near f16's smallest normals:
            // their products round to zero or to subnormals
            let w: Vec<f64> = (0..c)
                .map(|i| {
                    if i % 2 == 0 {
                        3e-6 * (i + 1) as f64
                    } else {
                        0.5 + i as f64
                    }
                })
                .collect();
            let w = Tensor::from_vec(w, &[c]).unwrap().to_dtype(dtype).unwrap();
            let p = params(c, dtype, 7);
            let run = |fused: bool| {
                let (xg, wg, bg) = (
                    x.requires_grad_().unwrap(),
                    w.requires_grad_().unwrap(),
                    p[1].requires_grad_().unwrap(),
                );
                let a = bn_args(&wg, &bg, &p[2], &p[3], training);
                let y = if fused {
                    xg.batch_norm_relu(&a).unwrap().out
                } else {
                    xg.batch_norm(&a).unwrap().out.relu().unwrap()
                };
                y.backward_with(g.clone()).unwrap();
                [
                    y,
                    xg.grad().unwrap(),
                    wg.grad().unwrap(),
                    bg.grad().unwrap(),
                ]
                .map(|t| t.to_vec_f64().unwrap())
            };
            let (fused, plain) = (run(true), run(false));
            let zeros = fused[0].iter().filter(|&&v| v == 0.0).count();
            assert!(
                zeros > fused[0].len() / 3,
                "{dtype} {shape:?}: {zeros} zeros"
            );
            for (k, what) in ["y", "dx", "dweight", "dbias"].iter().enumerate() {
                let same = fused[k]
                    .iter()
                    .zip(&plain[k])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{dtype} {shape:?} training={training}: {what} differs"
                );
            }
        }
    }
}
