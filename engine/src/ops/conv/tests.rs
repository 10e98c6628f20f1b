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
/// short last chunk. Each input gradient added onto a given one equals the
/// two summed afterwards.
#[test]
fn batched_and_flipped_paths_match_the_per_image_ones() {
    use super::cpu::{columns, conv_backward, conv_forward, input_grad, Given, Start};
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
        let fwd = |parts, on| conv_forward(&x, &w, Start::Bias(Some(&b)), &g, parts, on);
        let want = fwd(2, false);
        // the batch in 1 part, fewer parts than images, and more
        for (parts, on) in [(2, true), (1, true), (3, true), (8, true), (8, false)] {
            let what = format!("case {i} forward, {parts} parts, batched {on}");
            assert_close(&what, &fwd(parts, on), &want, 1e-10, 1e-10);
        }
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
            let dx = input_grad(&dy, &w, &g, None);
            assert_close(
                &format!("case {i} {what}"),
                &dx,
                &conv_backward(Given::Weight(&w, None), &dy, &g),
                1e-10,
                1e-10,
            );
            let prev = randn(&g.x_dims(), 40 + i as u64).to_vec::<f64>().unwrap();
            let sum: Vec<f64> = prev.iter().zip(&dx).map(|(p, d)| p + d).collect();
            let onto = [
                input_grad(&dy, &w, &g, Some(prev.clone())),
                conv_backward(Given::Weight(&w, Some(prev.clone())), &dy, &g),
            ];
            for (path, got) in ["input_grad", "conv_backward"].iter().zip(onto) {
                let what = format!("case {i} {what}, {path} onto a gradient");
                assert_close(&what, &got, &sum, 1e-10, 1e-10);
            }
        }
    }
}

/// The input gradient added to a gradient no other tensor holds is written
/// into that gradient's own buffer; a shared one is left as it was. Either
/// way the result is the sum (f32: within 1e-5 of adding afterwards, which
/// rounds once more and sums in another order), on the paths the CPU
/// takes: a padded stride-1 3x3 (a forward convolution), a stride-2 3x3
/// (col2im through padded planes) and a pointwise one.
#[test]
fn backward_data_adds_in_place_only_into_a_sole_owned_gradient() {
    use testutil::assert_close;
    let p = |stride, padding| Conv2dParams {
        stride: [stride; 2],
        padding: [padding; 2],
        ..Conv2dParams::default()
    };
    let f32s = |t: Tensor| t.to_dtype(DType::F32).unwrap();
    for (i, (ws, params)) in [
        ([8, 6, 3, 3], p(1, 1)),
        ([8, 6, 3, 3], p(2, 1)),
        ([8, 6, 1, 1], p(1, 0)),
    ]
    .into_iter()
    .enumerate()
    {
        let (x, w) = (
            f32s(randn(&[3, 6, 9, 9], 50 + i as u64)),
            f32s(randn(&ws, 60 + i as u64)),
        );
        let g = super::geometry(&x, &w, None, params).unwrap();
        let dy = f32s(randn(&g.y_dims(), 70 + i as u64));
        let acc = f32s(randn(&g.x_dims(), 80 + i as u64));
        let acc_values = acc.to_vec::<f32>().unwrap();
        let dx = Cpu.conv2d_backward_data(&dy, &w, &g, None).unwrap();
        let want = acc.add(&dx).unwrap().to_vec::<f32>().unwrap();

        let held = acc.clone();
        let shared = Cpu.conv2d_backward_data(&dy, &w, &g, Some(acc)).unwrap();
        assert_eq!(
            held.to_vec::<f32>().unwrap(),
            acc_values,
            "case {i}: a shared gradient changed"
        );
        assert_ne!(
            shared.data::<f32>().unwrap().as_ptr(),
            held.data::<f32>().unwrap().as_ptr()
        );
        assert_close(
            &format!("case {i} shared"),
            &shared.to_vec::<f32>().unwrap(),
            &want,
            1e-5,
            1e-5,
        );

        let at = held.data::<f32>().unwrap().as_ptr();
        let own = Cpu.conv2d_backward_data(&dy, &w, &g, Some(held)).unwrap();
        assert_eq!(
            own.data::<f32>().unwrap().as_ptr(),
            at,
            "case {i}: not in place"
        );
        assert_close(
            &format!("case {i} in place"),
            &own.to_vec::<f32>().unwrap(),
            &want,
            1e-5,
            1e-5,
        );
    }
    // a gradient of another shape or dtype is an error, not a write
    let (x, w) = (randn(&[1, 2, 5, 5], 1), randn(&[3, 2, 3, 3], 2));
    let g = super::geometry(&x, &w, None, p(1, 1)).unwrap();
    let dy = randn(&g.y_dims(), 3);
    for bad in [randn(&[1, 2, 5, 4], 4), f32s(randn(&[1, 2, 5, 5], 4))] {
        let e = Cpu
            .conv2d_backward_data(&dy, &w, &g, Some(bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gradient to add to"), "{e}");
    }
}

// ---- the 1x1 stride-1 convolutions the CUDA backend runs as GEMMs ----

mod gemm_path {
    use super::super::gemm::{gemm_plan, pointwise, Direction, GemmPlan, Operand};
    use super::super::{Conv2dGeom, ConvOps};
    use super::randn;
    use crate::backend::Cpu;
    use crate::cuda::blas::{lt_problem, Matrix};
    use crate::layout::{gpu_strides, Conv2dParams, Layout};
    use crate::Tensor;
    use testutil::assert_close;

    const DIRS: [Direction; 3] = [
        Direction::Forward,
        Direction::BackwardData,
        Direction::BackwardFilter,
    ];

    fn params(stride: usize, padding: usize, dilation: usize, groups: usize) -> Conv2dParams {
        Conv2dParams {
            stride: [stride; 2],
            padding: [padding; 2],
            dilation: [dilation; 2],
            groups,
        }
    }

    /// The geometry the front-end derives for x [n, cin, h, w] and a
    /// [cout, cin/groups, k, k] weight.
    fn geom(x: [usize; 4], cout: usize, k: usize, p: Conv2dParams) -> Conv2dGeom {
        let xt = Tensor::zeros(&x, crate::DType::F32);
        let wt = Tensor::zeros(&[cout, x[1] / p.groups, k, k], crate::DType::F32);
        super::super::geometry(&xt, &wt, None, p).unwrap()
    }

    fn gpu(dims: [usize; 4]) -> Layout {
        Layout {
            shape: dims.to_vec(),
            strides: gpu_strides(&dims),
            offset: 0,
        }
    }

    fn nchw(dims: [usize; 4]) -> Layout {
        Layout::contiguous(&dims)
    }

    /// The two inputs' dims of direction `dir`, in the primitive's order.
    fn inputs(dir: Direction, g: &Conv2dGeom) -> [[usize; 4]; 2] {
        match dir {
            Direction::Forward => [g.x_dims(), g.w_dims()],
            Direction::BackwardData => [g.y_dims(), g.w_dims()],
            Direction::BackwardFilter => [g.x_dims(), g.y_dims()],
        }
    }

    fn plan(dir: Direction, g: &Conv2dGeom) -> Option<GemmPlan> {
        let [a, b] = inputs(dir, g);
        gemm_plan(dir, g, [&gpu(a), &gpu(b)])
    }

    #[test]
    fn only_pointwise_stride_1_default_layout_convs_qualify() {
        // ResNet-50's 1x1 stride-1 layers (batch 2) and an odd one
        for (x, cout) in [
            ([2, 64, 56, 56], 256),
            ([2, 256, 56, 56], 64),
            ([2, 512, 7, 7], 2048),
            ([2, 2048, 7, 7], 512),
            ([3, 5, 7, 9], 11),
        ] {
            let g = geom(x, cout, 1, params(1, 0, 1, 1));
            assert!(pointwise(&g), "{g:?}");
            for dir in DIRS {
                assert!(plan(dir, &g).is_some(), "{dir:?} {g:?}");
            }
        }
        // not a GEMM: stride 2 (ResNet's downsampling 1x1), 3x3, padding
        // (a larger output plane), dilation, groups
        for (k, p) in [
            (1, params(2, 0, 1, 1)),
            (3, params(1, 1, 1, 1)),
            (3, params(1, 0, 1, 1)),
            (1, params(1, 1, 1, 1)),
            (1, params(1, 0, 2, 1)),
            (1, params(1, 0, 1, 2)),
        ] {
            let g = geom([2, 8, 9, 9], 16, k, p);
            assert!(!pointwise(&g), "{g:?}");
            for dir in DIRS {
                assert!(plan(dir, &g).is_none(), "{dir:?} {g:?}");
            }
        }
        // an empty batch or channel count: cuDNN's path makes the zeros
        for (x, cout) in [([0, 8, 5, 5], 4), ([2, 8, 5, 5], 0), ([2, 0, 5, 5], 4)] {
            let g = geom(x, cout, 1, params(1, 0, 1, 1));
            for dir in DIRS {
                assert!(plan(dir, &g).is_none(), "{dir:?} {g:?}");
            }
        }
    }

    #[test]
    fn operands_must_be_in_the_gpu_default_layout() {
        let g = geom([2, 6, 5, 4], 10, 1, params(1, 0, 1, 1));
        for dir in DIRS {
            let [a, b] = inputs(dir, &g);
            assert!(gemm_plan(dir, &g, [&gpu(a), &gpu(b)]).is_some());
            // an NCHW activation (as a CPU tensor has) is not [P, C]
            // row-major; the weight is a 1x1 filter, same bytes either way
            let act_nchw = match dir {
                Direction::Forward | Direction::BackwardData => [nchw(a), gpu(b)],
                Direction::BackwardFilter => [gpu(a), nchw(b)],
            };
            assert!(gemm_plan(dir, &g, [&act_nchw[0], &act_nchw[1]]).is_none());
            if dir != Direction::BackwardFilter {
                assert!(gemm_plan(dir, &g, [&nchw(a), &gpu(b)]).is_none());
                assert!(gemm_plan(dir, &g, [&gpu(a), &nchw(b)]).is_some());
            } else {
                assert!(gemm_plan(dir, &g, [&nchw(a), &gpu(b)]).is_none());
            }
            // a view with other strides (here: the H and W steps swapped)
            let mut odd = gpu(a);
            odd.strides.swap(2, 3);
            assert!(gemm_plan(dir, &g, [&odd, &gpu(b)]).is_none());
            // layouts of other shapes than the geometry's
            assert!(gemm_plan(dir, &g, [&gpu(b), &gpu(a)]).is_none());
        }
        // with a 1x1 plane NCHW and NHWC are the same bytes
        let g = geom([4, 6, 1, 1], 3, 1, params(1, 0, 1, 1));
        assert!(gemm_plan(
            Direction::Forward,
            &g,
            [&nchw(g.x_dims()), &nchw(g.w_dims())]
        )
        .is_some());
    }

    #[test]
    fn each_direction_maps_to_its_gemm_shape_and_transposes() {
        // 512 -> 2048 at 7x7, batch 2: P = 98
        let g = geom([2, 512, 7, 7], 2048, 1, params(1, 0, 1, 1));
        let (p, cin, cout) = (98, 512, 2048);
        let mat = |rows, cols, ld, transposed| Matrix {
            ptr: 0,
            rows,
            cols,
            ld,
            transposed,
            batch_stride: if transposed { 0 } else { rows * cols },
        };
        // forward: Y [P, Cout] = X [P, Cin] @ W^T, W^T read from W [Cout, Cin]
        let f = plan(Direction::Forward, &g).unwrap();
        assert_eq!(f.a, (Operand::X, mat(p, cin, cin, false)));
        assert_eq!(
            f.b,
            (
                Operand::W,
                Matrix {
                    batch_stride: cout * cin,
                    ..mat(cin, cout, cin, true)
                }
            )
        );
        assert_eq!(f.d, mat(p, cout, cout, false));
        // backward data: dX [P, Cin] = dY [P, Cout] @ W [Cout, Cin]
        let bd = plan(Direction::BackwardData, &g).unwrap();
        assert_eq!(bd.a, (Operand::Dy, mat(p, cout, cout, false)));
        assert_eq!(bd.b, (Operand::W, mat(cout, cin, cin, false)));
        assert_eq!(bd.d, mat(p, cin, cin, false));
        // backward filter: dW [Cout, Cin] = dY^T (dY [P, Cout]) @ X [P, Cin]
        let bf = plan(Direction::BackwardFilter, &g).unwrap();
        assert_eq!(
            bf.a,
            (
                Operand::Dy,
                Matrix {
                    batch_stride: p * cout,
                    ..mat(cout, p, cout, true)
                }
            )
        );
        assert_eq!(bf.b, (Operand::X, mat(p, cin, cin, false)));
        assert_eq!(bf.d, mat(cout, cin, cin, false));
        // and cuBLASLt's column-major problems: m and n swapped, the
        // transposes on its A (our B) and B (our A)
        let lt = |pl: &GemmPlan| lt_problem(&pl.a.1, &pl.b.1, &pl.d, 1).unwrap();
        let (l, ld, lf) = (lt(&f), lt(&bd), lt(&bf));
        assert_eq!((l.m, l.n, l.k), (cout as u64, p as u64, cin as u64));
        assert_eq!((l.a.trans, l.b.trans), (true, false));
        assert_eq!((ld.m, ld.n, ld.k), (cin as u64, p as u64, cout as u64));
        assert_eq!((ld.a.trans, ld.b.trans), (false, false));
        assert_eq!((lf.m, lf.n, lf.k), (cin as u64, cout as u64, p as u64));
        assert_eq!((lf.a.trans, lf.b.trans), (false, true));
        assert_eq!(
            (l.a.ld, l.b.ld, l.d.ld),
            (cin as i64, cin as i64, cout as i64)
        );
        assert_eq!(
            (lf.a.ld, lf.b.ld, lf.d.ld),
            (cin as i64, cout as i64, cin as i64)
        );
    }

    /// D = A B computed on the host exactly as cuda::blas documents its
    /// operands: element (i, j) of a matrix at `i*ld + j` of its buffer, or
    /// at `j*ld + i` when transposed; D row-major.
    fn host_gemm(a: &Matrix, av: &[f64], b: &Matrix, bv: &[f64], d: &Matrix) -> Vec<f64> {
        let at = |m: &Matrix, v: &[f64], i: usize, j: usize| {
            v[if m.transposed {
                j * m.ld + i
            } else {
                i * m.ld + j
            }]
        };
        assert_eq!(
            (a.cols, b.rows, d.rows, d.cols),
            (b.rows, a.cols, a.rows, b.cols)
        );
        let mut out = vec![f64::NAN; d.rows * d.ld];
        for i in 0..d.rows {
            for j in 0..d.cols {
                out[i * d.ld + j] = (0..a.cols).map(|k| at(a, av, i, k) * at(b, bv, k, j)).sum();
            }
        }
        out
    }

    /// A 4-D CPU tensor's values in the GPU default layout (NHWC, KRSC).
    fn channels_last(t: &Tensor) -> Vec<f64> {
        t.permute(&[0, 2, 3, 1])
            .unwrap()
            .contiguous()
            .unwrap()
            .to_vec::<f64>()
            .unwrap()
    }

    /// The plans, run as host GEMMs on channels-last buffers, give the CPU
    /// convolution's output, input gradient and weight gradient (f64,
    /// within 1e-12), bias included.
    #[test]
    fn plans_compute_the_cpu_convolution() {
        for (i, (x, cout)) in [([2, 5, 3, 4], 7), ([1, 16, 2, 3], 4), ([3, 3, 1, 1], 6)]
            .into_iter()
            .enumerate()
        {
            let s = 100 + 10 * i as u64;
            let g = geom(x, cout, 1, params(1, 0, 1, 1));
            let (xt, wt, dyt) = (
                randn(&g.x_dims(), s),
                randn(&g.w_dims(), s + 1),
                randn(&g.y_dims(), s + 2),
            );
            let bias = randn(&[cout], s + 3).reshape(&[cout]).unwrap();
            let (xv, wv, dyv) = (channels_last(&xt), channels_last(&wt), channels_last(&dyt));
            let bv = bias.to_vec::<f64>().unwrap();
            let buf = |op: Operand| match op {
                Operand::X => &xv,
                Operand::W => &wv,
                Operand::Dy => &dyv,
            };
            let run = |dir| {
                let pl = plan(dir, &g).unwrap();
                host_gemm(&pl.a.1, buf(pl.a.0), &pl.b.1, buf(pl.b.0), &pl.d)
            };
            // forward, with the bias per column of Y as the epilogue adds it
            let mut y = run(Direction::Forward);
            for (j, v) in y.iter_mut().enumerate() {
                *v += bv[j % cout];
            }
            let want = Cpu.conv2d_forward(&xt, &wt, Some(&bias), &g).unwrap();
            assert_close(
                &format!("{i} forward"),
                &y,
                &channels_last(&want),
                1e-12,
                1e-12,
            );
            let dx = run(Direction::BackwardData);
            let want = Cpu.conv2d_backward_data(&dyt, &wt, &g, None).unwrap();
            assert_close(&format!("{i} dx"), &dx, &channels_last(&want), 1e-12, 1e-12);
            let dw = run(Direction::BackwardFilter);
            let want = Cpu.conv2d_backward_filter(&xt, &dyt, &g).unwrap();
            assert_close(&format!("{i} dw"), &dw, &channels_last(&want), 1e-12, 1e-12);
        }
    }

    /// The route switch: "auto", "gemm" and "cudnn" only, an error naming
    /// the variable otherwise; a scoped route is restored when dropped.
    #[test]
    fn the_pointwise_route_parses_and_is_restored() {
        use super::super::{pointwise_route, scoped_pointwise, Pointwise};
        assert_eq!(Pointwise::parse("auto").unwrap(), Pointwise::Auto);
        assert_eq!(Pointwise::parse("gemm").unwrap(), Pointwise::Gemm);
        assert_eq!(Pointwise::parse("cudnn").unwrap(), Pointwise::Cudnn);
        for bad in ["", "GEMM", "cublas", "gemm "] {
            let e = Pointwise::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("SLMLP_CONV_1X1 must be auto, gemm or cudnn"),
                "{e}"
            );
        }
        let before = pointwise_route().unwrap();
        {
            let _cudnn = scoped_pointwise(Pointwise::Cudnn);
            assert_eq!(pointwise_route().unwrap(), Pointwise::Cudnn);
            {
                let _gemm = scoped_pointwise(Pointwise::Gemm);
                assert_eq!(pointwise_route().unwrap(), Pointwise::Gemm);
                let _auto = scoped_pointwise(Pointwise::Auto);
                assert_eq!(pointwise_route().unwrap(), Pointwise::Auto);
            }
            assert_eq!(pointwise_route().unwrap(), Pointwise::Cudnn);
        }
        assert_eq!(pointwise_route().unwrap(), before);
    }
}
