//! nn layers, optimizers, LR schedules and loss scaling, checked against
//! hand-computed numbers (the optimizer formulas of torch.optim.SGD and LARS).

use engine::amp::{amp_step, LossScaler, Precision};
use engine::gradcheck::check_gradients;
use engine::nn::{init, BatchNorm, Conv2d, Flatten, Linear, Module, Param, Relu, Sequential};
use engine::ops::Conv2dParams;
use engine::optim::{
    zero_grad, Constant, Cosine, Lars, LrSchedule, Optimizer, Sgd, StepDecay, Warmup,
};
use engine::{no_grad, DType, Rng, Tensor};

fn t64(v: &[f64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
}

fn param(name: &str, v: &[f64], no_wd: bool) -> Param {
    Param::new(name, t64(v), no_wd).unwrap()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Checks entries of a [`run3`] history: `(step, param index, want, tol,
/// what)`, steps counted from 1.
fn check_history(h: &[Vec<Vec<f64>>], checks: &[(usize, usize, [f64; 2], f64, &str)]) {
    for &(step, i, want, tol, what) in checks {
        assert_close(&h[step - 1][i], &want, tol, what);
    }
}

/// Backward from the sum of `y` taken in f32 (for low-precision outputs).
fn backward_of_f32_sum(y: &Tensor) {
    y.to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
}

const GRADS: [[f64; 2]; 3] = [[0.5, 1.0], [-0.25, 0.5], [1.0, -1.0]];

/// Runs 3 steps from p = [1, -2] with GRADS, returning p after each step.
fn run3(opt: &mut dyn Optimizer, params: &[Param], grads: &[[f64; 2]; 3]) -> Vec<Vec<Vec<f64>>> {
    let mut out = Vec::new();
    for g in grads {
        for p in params {
            p.set_grad(Some(t64(g)));
        }
        opt.step(params).unwrap();
        out.push(
            params
                .iter()
                .map(|p| p.get().to_vec_f64().unwrap())
                .collect(),
        );
    }
    out
}

#[test]
fn sgd_momentum_matches_torch_formula() {
    let p = param("w", &[1.0, -2.0], false);
    let mut opt = Sgd::new(0.1, 0.9, 0.0);
    let h = run3(&mut opt, std::slice::from_ref(&p), &GRADS);
    // buf1 = g1; buf2 = 0.9 buf1 + g2; buf3 = 0.9 buf2 + g3; p -= 0.1 buf
    assert_close(&h[0][0], &[0.95, -2.1], 1e-15, "step 1");
    assert_close(&h[1][0], &[0.93, -2.24], 1e-15, "step 2");
    assert_close(&h[2][0], &[0.812, -2.266], 1e-15, "step 3");
    let state = opt.state();
    assert_eq!(state.len(), 1);
    assert_eq!(state[0].0, "momentum.w");
    assert_close(
        &state[0].1.to_vec_f64().unwrap(),
        &[1.18, 0.26],
        1e-15,
        "buffer",
    );
}

#[test]
fn sgd_nesterov_with_weight_decay() {
    let p = param("w", &[1.0, -2.0], false);
    let mut opt = Sgd::new(0.1, 0.9, 0.01).with_nesterov(true);
    let h = run3(&mut opt, &[p], &GRADS);
    check_history(
        &h,
        &[
            (1, 0, [0.9031, -2.1862], 1e-14, "step 1"),
            (2, 0, [0.90757411, -2.35642622], 1e-14, "step 2"),
            (3, 0, [0.698189208191, -2.272120188182], 1e-14, "step 3"),
        ],
    );
}

#[test]
fn sgd_weight_decay_exclusion() {
    let w = param("w", &[1.0, -2.0], false);
    let b = param("b", &[1.0, -2.0], true);
    // PyTorch default: decay applies to every param, no_weight_decay or not.
    let mut all = Sgd::new(0.1, 0.9, 0.1);
    let h = run3(&mut all, &[w.clone(), b.clone()], &GRADS);
    for i in 0..2 {
        assert_close(&h[2][i], &[0.758024, -2.150468], 1e-14, "decayed");
    }
    let w = param("w", &[1.0, -2.0], false);
    let b = param("b", &[1.0, -2.0], true);
    let mut excl = Sgd::new(0.1, 0.9, 0.1).with_exclude_no_wd(true);
    let h = run3(&mut excl, &[w, b], &GRADS);
    assert_close(&h[2][0], &[0.758024, -2.150468], 1e-14, "decayed w");
    assert_close(&h[2][1], &[0.812, -2.266], 1e-14, "excluded b");
}

#[test]
fn sgd_without_momentum_and_skipping_params_without_grad() {
    let a = param("a", &[1.0, -2.0], false);
    let b = param("b", &[5.0, 6.0], false);
    a.set_grad(Some(t64(&[0.5, 1.0])));
    let mut opt = Sgd::new(0.1, 0.0, 0.0);
    opt.step(&[a.clone(), b.clone()]).unwrap();
    assert_close(&a.get().to_vec_f64().unwrap(), &[0.95, -2.1], 1e-15, "a");
    assert_eq!(
        b.get().to_vec_f64().unwrap(),
        vec![5.0, 6.0],
        "a param without grad is untouched"
    );
    assert!(opt.state().is_empty(), "no momentum, no state");
    // the gradient slot survives the update: backward still reaches the param
    let y = a.get().mul(&a.get()).unwrap().sum_all().unwrap();
    zero_grad(&[a.clone()]);
    y.backward().unwrap();
    let grad = a.grad().unwrap().to_vec_f64().unwrap();
    assert_close(&grad, &[1.9, -4.2], 1e-15, "grad after step");
}

#[test]
fn sgd_state_roundtrip_resumes_exactly() {
    let p = param("w", &[1.0, -2.0], false);
    let mut opt = Sgd::new(0.1, 0.9, 0.01).with_nesterov(true);
    let full = run3(&mut opt, &[p], &GRADS);

    let p = param("w", &[1.0, -2.0], false);
    let mut first = Sgd::new(0.1, 0.9, 0.01).with_nesterov(true);
    let two = [GRADS[0], GRADS[1]];
    for g in &two {
        p.set_grad(Some(t64(g)));
        first.step(&[p.clone()]).unwrap();
    }
    let mut resumed = Sgd::new(0.1, 0.9, 0.01).with_nesterov(true);
    resumed.load_state(first.state()).unwrap();
    p.set_grad(Some(t64(&GRADS[2])));
    resumed.step(&[p.clone()]).unwrap();
    assert_eq!(
        p.get().to_vec_f64().unwrap(),
        full[2][0],
        "resume is bit-exact"
    );

    assert!(resumed
        .load_state(vec![("velocity.w".into(), t64(&[0.0, 0.0]))])
        .is_err());
    resumed
        .load_state(vec![("momentum.w".into(), t64(&[0.0, 0.0, 0.0]))])
        .unwrap();
    let err = resumed.step(&[p]).unwrap_err().to_string();
    assert!(err.contains("momentum.w") && err.contains("[3]"), "{err}");
}

#[test]
fn sgd_f32_params_and_bad_inputs() {
    let p = f32_param("w", &[1.0, -2.0]);
    p.set_grad(Some(Tensor::from_vec(vec![0.5f32, 1.0], &[2]).unwrap()));
    let mut opt = Sgd::new(0.1, 0.9, 0.0);
    opt.step(&[p.clone()]).unwrap();
    assert_eq!(p.get().dtype(), DType::F32);
    assert_eq!(p.get().to_vec::<f32>().unwrap(), vec![0.95f32, -2.1]);
    assert_eq!(opt.state()[0].1.dtype(), DType::F32);

    // a gradient of the wrong dtype or shape, a duplicate param, bad hyperparameters
    p.set_grad(Some(t64(&[0.5, 1.0])));
    assert!(opt
        .step(&[p.clone()])
        .unwrap_err()
        .to_string()
        .contains("does not match"));
    p.set_grad(Some(Tensor::zeros(&[3], DType::F32)));
    assert!(opt.step(&[p.clone()]).is_err());
    p.set_grad(Some(Tensor::zeros(&[2], DType::F32)));
    assert!(opt
        .step(&[p.clone(), p.clone()])
        .unwrap_err()
        .to_string()
        .contains("twice"));
    assert!(Sgd::new(-0.1, 0.9, 0.0).step(&[p.clone()]).is_err());
    assert!(Sgd::new(0.1, 0.0, 0.0)
        .with_nesterov(true)
        .step(&[p.clone()])
        .is_err());
    assert!(Sgd::new(f64::NAN, 0.9, 0.0).step(&[p]).is_err());
}

#[test]
fn lars_matches_hand_computation() {
    let lg = [[0.6, 0.8], [0.3, -0.4], [-1.2, 0.5]];
    let w = param("w", &[3.0, 4.0], false);
    let b = param("b", &[3.0, 4.0], true);
    let mut opt = Lars::new(0.1, 0.9, 0.01);
    let h = run3(&mut opt, &[w, b], &lg);
    // step 1 by hand: ||w|| = 5, ||g|| = 1, q = 0.001 * 5 / (1 + 0.01 * 5);
    // d = q (g + 0.01 w) = q [0.63, 0.84]; w -= 0.1 d.
    let q = 0.005 / 1.05;
    let by_hand = [3.0 - 0.1 * q * 0.63, 4.0 - 0.1 * q * 0.84];
    check_history(
        &h,
        &[
            (1, 0, by_hand, 1e-15, "step 1"),
            (1, 0, [2.9997, 3.9996], 1e-15, "step 1"),
            (
                3,
                0,
                [2.9990503211001194, 3.9993378036040346],
                1e-14,
                "step 3 adapted",
            ),
            // the no_weight_decay param: plain momentum SGD, no decay, no trust ratio
            (1, 1, [2.94, 3.92], 1e-15, "excluded step 1"),
            (3, 1, [2.9004, 3.8092], 1e-14, "excluded step 3"),
        ],
    );
    let names: Vec<String> = opt.state().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["momentum.b", "momentum.w"]);

    let w = param("w", &[3.0, 4.0], false);
    let mut opt = Lars::new(0.5, 0.9, 0.01).with_eta(0.02);
    let h = run3(&mut opt, &[w], &lg);
    let eta = [2.904911229438082, 3.933634336980569];
    check_history(&h, &[(3, 0, eta, 1e-14, "eta 0.02")]);

    // a zero weight (or zero grad with no decay) falls back to trust ratio 1
    let z = param("z", &[0.0, 0.0], false);
    z.set_grad(Some(t64(&[1.0, -1.0])));
    Lars::new(0.1, 0.9, 0.0).step(&[z.clone()]).unwrap();
    assert_close(
        &z.get().to_vec_f64().unwrap(),
        &[-0.1, 0.1],
        1e-15,
        "zero weight",
    );
}

#[test]
fn schedules_at_key_steps() {
    let c = Cosine {
        base_lr: 0.1,
        total_steps: 100,
        final_lr: 0.001,
    };
    assert_eq!(c.lr(0), 0.1);
    assert!((c.lr(50) - 0.0505).abs() < 1e-15);
    assert!(
        (c.lr(25) - (0.001 + 0.099 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2))).abs() < 1e-15
    );
    assert_eq!(c.lr(100), 0.001);
    assert_eq!(c.lr(1000), 0.001);
    assert!((1..100).all(|s| c.lr(s) < c.lr(s - 1)), "monotone");

    let s = StepDecay {
        base_lr: 0.02,
        milestones: vec![60, 80],
        gamma: 0.1,
    };
    assert_eq!(s.lr(0), 0.02);
    assert_eq!(s.lr(59), 0.02);
    assert!((s.lr(60) - 0.002).abs() < 1e-15);
    assert!((s.lr(79) - 0.002).abs() < 1e-15);
    assert!((s.lr(80) - 0.0002).abs() < 1e-16);

    let w = Warmup {
        inner: s.clone(),
        warmup_steps: 10,
        start_factor: 0.001,
    };
    assert!((w.lr(0) - 0.02 * 0.001).abs() < 1e-18);
    assert!((w.lr(5) - 0.02 * (0.001 + 0.999 * 0.5)).abs() < 1e-15);
    assert_eq!(w.lr(10), 0.02);
    assert!((w.lr(60) - 0.002).abs() < 1e-15);
    // the inner schedule is not shifted by the warmup
    let wc = Warmup {
        inner: c.clone(),
        warmup_steps: 10,
        start_factor: 0.0,
    };
    assert_eq!(wc.lr(0), 0.0);
    assert_eq!(wc.lr(10), c.lr(10));
    assert!((wc.lr(4) - 0.4 * c.lr(4)).abs() < 1e-15);
    let boxed: Box<dyn LrSchedule> = Box::new(Constant(0.3));
    assert_eq!(boxed.lr(12345), 0.3);
}

fn f32_param(name: &str, v: &[f32]) -> Param {
    Param::new(
        name,
        Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap(),
        false,
    )
    .unwrap()
}

#[test]
fn loss_scaler_unscales_and_skips_overflowing_steps() {
    let p = f32_param("w", &[1.0, 2.0]);
    let mut scaler = LossScaler::new(8.0);
    p.set_grad(Some(Tensor::from_vec(vec![8.0f32, -4.0], &[2]).unwrap()));
    assert!(scaler.unscale_and_check(&[p.clone()]).unwrap());
    assert_eq!(p.grad().unwrap().to_vec::<f32>().unwrap(), vec![1.0, -0.5]);

    // an inf gradient: no step, scale halved, growth counter reset
    let mut opt = Sgd::new(0.1, 0.9, 0.0);
    let q = f32_param("q", &[3.0, 3.0]);
    p.set_grad(Some(Tensor::from_vec(vec![8.0f32, 8.0], &[2]).unwrap()));
    q.set_grad(Some(
        Tensor::from_vec(vec![f32::INFINITY, 0.0], &[2]).unwrap(),
    ));
    scaler.clean_steps = 1;
    let stepped = amp_step(&mut opt, Some(&mut scaler), &[p.clone(), q.clone()]).unwrap();
    assert!(!stepped);
    assert_eq!(scaler.scale, 4.0);
    assert_eq!(scaler.clean_steps, 0);
    assert_eq!(
        p.get().to_vec::<f32>().unwrap(),
        vec![1.0, 2.0],
        "skipped step leaves params"
    );
    assert!(opt.state().is_empty());
    q.set_grad(Some(Tensor::from_vec(vec![f32::NAN, 0.0], &[2]).unwrap()));
    assert!(
        !scaler.unscale_and_check(&[q.clone()]).unwrap(),
        "NaN counts as overflow"
    );

    // growth after growth_interval clean steps
    let mut scaler = LossScaler {
        growth_interval: 3,
        ..LossScaler::new(4.0)
    };
    for i in 0..3 {
        p.set_grad(Some(Tensor::from_vec(vec![4.0f32, 4.0], &[2]).unwrap()));
        assert!(amp_step(&mut opt, Some(&mut scaler), &[p.clone()]).unwrap());
        assert_eq!(
            scaler.scale,
            if i < 2 { 4.0 } else { 8.0 },
            "after clean step {}",
            i + 1
        );
    }
    assert_eq!(scaler.clean_steps, 0);
    assert!((p.get().to_vec::<f32>().unwrap()[0] - (1.0 - 0.1 * (1.0 + 1.9 + 2.71))).abs() < 1e-6);

    // scale_loss multiplies, and an f16 loss is scaled in f32 (it would overflow)
    let s = LossScaler::default();
    let l = Tensor::scalar(half::f16::from_f32(2.0));
    let scaled = s.scale_loss(&l).unwrap();
    assert_eq!(scaled.dtype(), DType::F32);
    assert_eq!(scaled.item().unwrap(), 131072.0);
    assert!(LossScaler::new(0.0).unscale_and_check(&[p]).is_err());
}

#[test]
fn precision_modes() {
    assert_eq!(Precision::F32.compute_dtype(), DType::F32);
    assert_eq!(Precision::Bf16.compute_dtype(), DType::BF16);
    assert_eq!(Precision::F16.compute_dtype(), DType::F16);
    assert!(Precision::F16.needs_loss_scaling());
    assert!(!Precision::Bf16.needs_loss_scaling() && !Precision::F32.needs_loss_scaling());
    assert!(Precision::Bf16.scaler().is_none() && Precision::F16.scaler().is_some());
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert!("f8".parse::<Precision>().is_err());
    // no scaler: a plain step
    let p = f32_param("w", &[1.0]);
    p.set_grad(Some(Tensor::from_vec(vec![1.0f32], &[1]).unwrap()));
    assert!(amp_step(&mut Sgd::new(0.5, 0.0, 0.0), None, &[p.clone()]).unwrap());
    assert_eq!(p.get().to_vec::<f32>().unwrap(), vec![0.5]);
}

#[test]
fn linear_names_shapes_and_init() {
    let mut rng = Rng::new(1);
    let l = Linear::new("head.fc", 400, 300, true, &mut rng).unwrap();
    let ps = l.params();
    assert_eq!(
        ps.iter().map(|p| p.name()).collect::<Vec<_>>(),
        ["head.fc.weight", "head.fc.bias"]
    );
    assert_eq!(ps[0].dims(), [300, 400]);
    assert_eq!(ps[1].dims(), [300]);
    assert!(!ps[0].no_weight_decay() && ps[1].no_weight_decay());
    assert_eq!(ps[0].get().dtype(), DType::F32);
    // U(-1/20, 1/20): within the bound, variance bound^2 / 3
    let w = ps[0].get().to_vec_f64().unwrap();
    let bound = 1.0 / 20.0;
    assert!(w.iter().all(|v| v.abs() <= bound));
    let var = w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64;
    assert!(
        (var / (bound * bound / 3.0) - 1.0).abs() < 0.02,
        "variance {var}"
    );
    assert!(ps[1]
        .get()
        .to_vec_f64()
        .unwrap()
        .iter()
        .all(|v| v.abs() <= bound));
    assert_eq!(
        Linear::new("fc", 3, 2, false, &mut rng)
            .unwrap()
            .params()
            .len(),
        1
    );

    // same seed, same weights whatever the dtype
    let a = Linear::new("fc", 5, 4, true, &mut Rng::new(7)).unwrap();
    let b = Linear::new_dtype("fc", 5, 4, true, DType::F64, &mut Rng::new(7)).unwrap();
    let (wa, wb) = (
        a.weight.get().to_vec_f64().unwrap(),
        b.weight.get().to_vec_f64().unwrap(),
    );
    assert!(wa.iter().zip(&wb).all(|(x, y)| (x - y).abs() < 1e-7));
}

#[test]
fn linear_forward_matches_direct_loops_and_rejects_bad_input() {
    let mut rng = Rng::new(2);
    let l = Linear::new_dtype("fc", 3, 2, true, DType::F64, &mut rng).unwrap();
    let x = Tensor::randn(&[4, 3], 0.0, 1.0, DType::F64, &mut rng);
    let y = l.forward(&x).unwrap().to_vec_f64().unwrap();
    let (w, b, xv) = (
        l.weight.get().to_vec_f64().unwrap(),
        l.bias.as_ref().unwrap().get().to_vec_f64().unwrap(),
        x.to_vec_f64().unwrap(),
    );
    for n in 0..4 {
        for o in 0..2 {
            let want = b[o] + (0..3).map(|i| xv[n * 3 + i] * w[o * 3 + i]).sum::<f64>();
            assert!((y[n * 2 + o] - want).abs() < 1e-12);
        }
    }
    let err = l
        .forward(&Tensor::zeros(&[4, 5], DType::F64))
        .unwrap_err()
        .to_string();
    assert!(err.contains("fc.weight") && err.contains("[4, 5]"), "{err}");
    let bad_bias = Param::new("b", Tensor::zeros(&[3], DType::F32), true).unwrap();
    assert!(Linear::from_params(l.weight.clone(), Some(bad_bias)).is_err());
}

#[test]
fn bf16_forward_gives_f32_master_grads() {
    let mut rng = Rng::new(3);
    let l = Linear::new("fc", 8, 4, true, &mut rng).unwrap();
    let x = Tensor::randn(&[5, 8], 0.0, 1.0, DType::BF16, &mut rng);
    let y = l.forward(&x).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    backward_of_f32_sum(&y);
    let gw = l.weight.grad().expect("master weight gets a grad");
    assert_eq!(gw.dtype(), DType::F32);
    assert_eq!(gw.dims(), [4, 8]);
    // d sum / dW[o, i] = sum_n x[n, i] (rounded through bf16)
    let xv = x.to_vec_f64().unwrap();
    let g = gw.to_vec_f64().unwrap();
    for i in 0..8 {
        let want: f64 = (0..5).map(|n| xv[n * 8 + i]).sum();
        assert!(
            (g[i] - want).abs() < 0.05 * (1.0 + want.abs()),
            "{} vs {want}",
            g[i]
        );
    }
    assert_eq!(
        l.bias
            .as_ref()
            .unwrap()
            .grad()
            .unwrap()
            .to_vec_f64()
            .unwrap(),
        vec![5.0; 4]
    );
}

#[test]
fn init_helpers() {
    assert_eq!(init::fans(&[64, 32, 3, 3]).unwrap(), (288, 576));
    assert_eq!(init::fans(&[10, 20]).unwrap(), (20, 10));
    assert!(init::fans(&[5]).is_err());
    let w = init::kaiming_normal_fan_out(&[256, 64, 3, 3], DType::F32, &mut Rng::new(4))
        .unwrap()
        .to_vec_f64()
        .unwrap();
    let mean = w.iter().sum::<f64>() / w.len() as f64;
    let std = (w.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    let want = (2.0f64 / (256.0 * 9.0)).sqrt();
    assert!(
        (std / want - 1.0).abs() < 0.02 && mean.abs() < 0.02 * want,
        "std {std} vs {want}, mean {mean}"
    );
}

/// A fixed synthetic regression: y = relu(x0 - x1) + 0.5 x2 x3.
fn synthetic(n: usize, rng: &mut Rng) -> (Tensor, Tensor) {
    let x: Vec<f32> = (0..n * 4).map(|_| rng.normal() as f32).collect();
    let y: Vec<f32> = x
        .chunks(4)
        .map(|r| (r[0] - r[1]).max(0.0) + 0.5 * r[2] * r[3])
        .collect();
    (
        Tensor::from_vec(x, &[n, 4]).unwrap(),
        Tensor::from_vec(y, &[n, 1]).unwrap(),
    )
}

#[test]
fn tiny_mlp_learns_with_sgd() {
    let mut rng = Rng::new(5);
    let mlp = Sequential::default()
        .push(Linear::new("0", 4, 32, true, &mut rng).unwrap())
        .push(Relu)
        .push(Linear::new("2", 32, 32, true, &mut rng).unwrap())
        .push(Relu)
        .push(Flatten::default())
        .push(Linear::new("4", 32, 1, true, &mut rng).unwrap());
    let names: Vec<String> = mlp.params().iter().map(|p| p.name().to_string()).collect();
    assert_eq!(
        names,
        ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    );
    let (x, y) = synthetic(128, &mut rng);
    let params = mlp.params();
    let mut opt = Sgd::new(0.05, 0.9, 1e-4);
    let sched = Warmup {
        inner: Cosine {
            base_lr: 0.05,
            total_steps: 300,
            final_lr: 0.001,
        },
        warmup_steps: 20,
        start_factor: 0.1,
    };
    let mut losses = Vec::new();
    for step in 0..300 {
        opt.set_lr(sched.lr(step));
        zero_grad(&params);
        let d = mlp.forward(&x).unwrap().sub(&y).unwrap();
        let loss = d.mul(&d).unwrap().mean_all().unwrap();
        losses.push(loss.item().unwrap());
        loss.backward().unwrap();
        opt.step(&params).unwrap();
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.05 * first, "loss {first} -> {last}");
}

fn stats(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (
        mean,
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt(),
    )
}

#[test]
fn conv2d_names_shapes_and_init() {
    let mut rng = Rng::new(6);
    let p = Conv2dParams {
        stride: [2, 2],
        padding: [1, 1],
        ..Default::default()
    };
    let c = Conv2d::new("layer1.0.conv1", 64, 256, [3, 3], p, true, &mut rng).unwrap();
    let ps = c.params();
    assert_eq!(
        ps.iter().map(|p| p.name()).collect::<Vec<_>>(),
        ["layer1.0.conv1.weight", "layer1.0.conv1.bias"]
    );
    assert_eq!(ps[0].dims(), [256, 64, 3, 3]);
    assert!(!ps[0].no_weight_decay() && ps[1].no_weight_decay());
    assert_eq!(ps[1].get().to_vec_f64().unwrap(), vec![0.0; 256]);
    let (mean, std) = stats(&ps[0].get().to_vec_f64().unwrap());
    let want = (2.0f64 / (256.0 * 9.0)).sqrt();
    assert!(
        (std / want - 1.0).abs() < 0.01 && mean.abs() < 0.01 * want,
        "std {std} vs {want}"
    );
    // grouped: weight [out, in/groups, kh, kw], fan_out still out * kh * kw
    let g = Conv2d::new(
        "g",
        8,
        4,
        [1, 3],
        Conv2dParams {
            groups: 2,
            ..Default::default()
        },
        false,
        &mut rng,
    )
    .unwrap();
    assert_eq!(g.params().len(), 1);
    assert_eq!(g.weight.dims(), [4, 4, 1, 3]);
    let err = Conv2d::new(
        "bad",
        6,
        4,
        [3, 3],
        Conv2dParams {
            groups: 4,
            ..Default::default()
        },
        false,
        &mut rng,
    );
    assert!(err
        .err()
        .unwrap()
        .to_string()
        .contains("divisible by groups"));
    assert!(Conv2d::new(
        "bad",
        6,
        4,
        [0, 3],
        Conv2dParams::default(),
        false,
        &mut rng
    )
    .is_err());
}

#[test]
fn conv2d_forward_matches_direct_loops() {
    let mut rng = Rng::new(7);
    let p = Conv2dParams {
        stride: [1, 2],
        padding: [1, 0],
        ..Default::default()
    };
    let c = Conv2d::new_dtype("c", 2, 3, [3, 2], p, true, DType::F64, &mut rng).unwrap();
    c.bias
        .as_ref()
        .unwrap()
        .set(Tensor::from_vec(vec![0.5, -1.0, 2.0], &[3]).unwrap())
        .unwrap();
    let x = Tensor::randn(&[2, 2, 5, 7], 0.0, 1.0, DType::F64, &mut rng);
    let y = c.forward(&x).unwrap();
    let (ho, wo) = ((5 + 2 - 3) + 1, (7 - 2) / 2 + 1);
    assert_eq!(y.dims(), [2, 3, ho, wo]);
    let (xv, wv, yv) = (
        x.to_vec_f64().unwrap(),
        c.weight.get().to_vec_f64().unwrap(),
        y.to_vec_f64().unwrap(),
    );
    let bv = [0.5, -1.0, 2.0];
    for n in 0..2 {
        for o in 0..3 {
            for i in 0..ho {
                for j in 0..wo {
                    let mut acc = bv[o];
                    for ci in 0..2 {
                        for ki in 0..3 {
                            for kj in 0..2 {
                                let (h, w) = ((i + ki) as isize - 1, (j * 2 + kj) as isize);
                                if h >= 0 && h < 5 && w < 7 {
                                    acc += xv[((n * 2 + ci) * 5 + h as usize) * 7 + w as usize]
                                        * wv[((o * 2 + ci) * 3 + ki) * 2 + kj];
                                }
                            }
                        }
                    }
                    let got = yv[((n * 3 + o) * ho + i) * wo + j];
                    assert!(
                        (got - acc).abs() < 1e-12,
                        "y[{n},{o},{i},{j}] = {got}, want {acc}"
                    );
                }
            }
        }
    }
    assert!(
        c.forward(&Tensor::zeros(&[2, 3, 5, 7], DType::F64))
            .is_err(),
        "wrong channel count"
    );
}

#[test]
fn bf16_conv_gives_f32_master_grads() {
    let mut rng = Rng::new(8);
    let c = Conv2d::new(
        "c",
        3,
        4,
        [3, 3],
        Conv2dParams {
            padding: [1, 1],
            ..Default::default()
        },
        true,
        &mut rng,
    )
    .unwrap();
    let x = Tensor::randn(&[2, 3, 6, 6], 0.0, 1.0, DType::BF16, &mut rng);
    let y = c.forward(&x).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    backward_of_f32_sum(&y);
    let gw = c.weight.grad().unwrap();
    assert_eq!((gw.dtype(), gw.dims()), (DType::F32, &[4, 3, 3, 3][..]));
    // d sum / d bias[o] = N * Ho * Wo
    assert_eq!(
        c.bias
            .as_ref()
            .unwrap()
            .grad()
            .unwrap()
            .to_vec_f64()
            .unwrap(),
        vec![72.0; 4]
    );
}

/// Per-channel values of an [N, C, S] tensor.
fn channel(v: &[f64], dims: &[usize], ch: usize) -> Vec<f64> {
    let (c, s) = (dims[1], dims[2..].iter().product::<usize>());
    (0..dims[0])
        .flat_map(|n| v[(n * c + ch) * s..(n * c + ch + 1) * s].to_vec())
        .collect()
}

#[test]
fn batchnorm_train_updates_buffers_and_eval_uses_them() {
    let bn = BatchNorm::new("bn1", 3).unwrap();
    let names: Vec<String> = bn.params().iter().map(|p| p.name().to_string()).collect();
    assert_eq!(names, ["bn1.weight", "bn1.bias"]);
    let bnames: Vec<String> = bn.buffers().iter().map(|b| b.name().to_string()).collect();
    assert_eq!(bnames, ["bn1.running_mean", "bn1.running_var"]);
    assert!(bn.params().iter().all(|p| p.no_weight_decay()));
    assert_eq!(bn.weight.get().to_vec_f64().unwrap(), vec![1.0; 3]);
    assert_eq!(bn.running_var.get().to_vec_f64().unwrap(), vec![1.0; 3]);

    let mut rng = Rng::new(9);
    let x = Tensor::randn(&[4, 3, 5, 5], 2.0, 3.0, DType::F32, &mut rng);
    let xv = x.to_vec_f64().unwrap();
    let y = bn.forward(&x).unwrap().to_vec_f64().unwrap();
    let (rm, rv) = (
        bn.running_mean.get().to_vec_f64().unwrap(),
        bn.running_var.get().to_vec_f64().unwrap(),
    );
    for c in 0..3 {
        let xc = channel(&xv, x.dims(), c);
        let (mean, std) = stats(&xc);
        let n = xc.len() as f64;
        assert!((rm[c] - 0.1 * mean).abs() < 1e-5, "running_mean[{c}]");
        assert!(
            (rv[c] - (0.9 + 0.1 * std * std * n / (n - 1.0))).abs() < 1e-4,
            "running_var[{c}]"
        );
        let (ym, ys) = stats(&channel(&y, x.dims(), c));
        assert!(
            ym.abs() < 1e-5 && (ys - 1.0).abs() < 1e-3,
            "train output normalised by batch stats"
        );
    }

    // eval: (x - running_mean) / sqrt(running_var + eps) * w + b, stats untouched
    bn.weight
        .set(Tensor::from_vec(vec![2.0f32, 0.5, -1.0], &[3]).unwrap())
        .unwrap();
    bn.bias
        .set(Tensor::from_vec(vec![0.0f32, 1.0, 3.0], &[3]).unwrap())
        .unwrap();
    let seq = Sequential::default().push(bn);
    seq.set_training(false);
    let y = seq.forward(&x).unwrap().to_vec_f64().unwrap();
    let bn = &seq.layers[0];
    let (w, b) = ([2.0, 0.5, -1.0], [0.0, 1.0, 3.0]);
    for (i, (&xi, &yi)) in xv.iter().zip(&y).enumerate() {
        let c = (i / 25) % 3;
        let want = (xi - rm[c]) / (rv[c] + 1e-5).sqrt() * w[c] + b[c];
        assert!(
            (yi - want).abs() < 1e-4 * (1.0 + want.abs()),
            "eval y[{i}] = {yi}, want {want}"
        );
    }
    let bufs = bn.buffers();
    assert_eq!(
        bufs[0].get().to_vec_f64().unwrap(),
        rm,
        "eval leaves running stats"
    );
    assert_eq!(bufs[1].get().to_vec_f64().unwrap(), rv);
}

#[test]
fn batchnorm_fused_entry_points_and_modes() {
    let mut rng = Rng::new(10);
    let mut bn = BatchNorm::new("bn", 4).unwrap();
    let x = Tensor::randn(&[3, 4, 2, 3], 0.0, 1.0, DType::F32, &mut rng);
    let r = Tensor::randn(&[3, 4, 2, 3], 0.0, 1.0, DType::F32, &mut rng);
    bn.set_training(false);
    let plain = bn.forward(&x).unwrap();
    assert_eq!(
        bn.forward_relu(&x).unwrap().to_vec_f64().unwrap(),
        plain.relu().unwrap().to_vec_f64().unwrap()
    );
    let add = bn.forward_add_relu(&x, &r).unwrap().to_vec_f64().unwrap();
    let want = plain.add(&r).unwrap().relu().unwrap().to_vec_f64().unwrap();
    assert!(add.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));

    // train mode updates running stats even under no_grad, as PyTorch does
    bn.set_training(true);
    assert!(bn.is_training());
    {
        let _ng = no_grad();
        bn.forward_relu(&x).unwrap();
    }
    assert!(bn
        .running_mean
        .get()
        .to_vec_f64()
        .unwrap()
        .iter()
        .any(|&v| v != 0.0));
    bn.momentum = 1.0;
    let before = bn.running_var.get().to_vec_f64().unwrap();
    bn.forward(&x).unwrap();
    assert_ne!(bn.running_var.get().to_vec_f64().unwrap(), before);

    bn.zero_init().unwrap();
    assert_eq!(bn.weight.get().to_vec_f64().unwrap(), vec![0.0; 4]);
    let y = bn.forward(&x).unwrap().to_vec_f64().unwrap();
    assert!(
        y.iter().all(|&v| v == 0.0),
        "zero gamma and beta give zeros"
    );

    let err = bn
        .forward(&Tensor::zeros(&[3, 5, 2], DType::F32))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bn.weight") && err.contains("[N, 4, ...]"),
        "{err}"
    );
    assert!(
        bn.forward(&Tensor::zeros(&[1, 4], DType::F32)).is_err(),
        "one value per channel in train mode"
    );
}

#[test]
fn batchnorm_mixed_precision() {
    let mut rng = Rng::new(11);
    let bn = BatchNorm::new("bn", 5).unwrap();
    let x = Tensor::randn(&[8, 5], 1.0, 2.0, DType::BF16, &mut rng);
    let y = bn.forward(&x).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    assert_eq!(bn.running_mean.get().dtype(), DType::F32);
    let wv = Tensor::randn(&[8, 5], 0.0, 1.0, DType::BF16, &mut rng);
    y.mul(&wv)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(bn.weight.grad().unwrap().dtype(), DType::F32);
    assert_eq!(bn.bias.grad().unwrap().dtype(), DType::F32);
    // an f64 input through an f32 layer is computed in f64; state stays f32
    let bn = BatchNorm::new("bn", 5).unwrap();
    let x = Tensor::randn(&[8, 5], 1.0, 2.0, DType::F64, &mut rng)
        .requires_grad_()
        .unwrap();
    let y = bn.forward(&x).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(bn.weight.grad().unwrap().dtype(), DType::F32);
    assert_eq!(bn.running_var.get().dtype(), DType::F32);
    assert!(bn
        .running_mean
        .get()
        .to_vec_f64()
        .unwrap()
        .iter()
        .all(|v| (v - 0.1).abs() < 0.1));
}

#[test]
fn projector_mlp_with_batchnorm_learns() {
    // Linear -> BatchNorm1d -> ReLU -> Linear, the SL-MLP projector shape.
    let mut rng = Rng::new(12);
    let net = Sequential::default()
        .push(Linear::new("proj.0", 4, 32, true, &mut rng).unwrap())
        .push(BatchNorm::new("proj.1", 32).unwrap())
        .push(Relu)
        .push(Linear::new("head", 32, 1, true, &mut rng).unwrap());
    assert_eq!(net.buffers().len(), 2);
    let (x, y) = synthetic(128, &mut rng);
    let params = net.params();
    let mut opt = Lars::new(0.5, 0.9, 1e-4).with_eta(0.02);
    let mse = |net: &Sequential| -> f64 {
        let d = net.forward(&x).unwrap().sub(&y).unwrap();
        d.mul(&d).unwrap().mean_all().unwrap().item().unwrap()
    };
    net.set_training(false);
    let first = mse(&net);
    net.set_training(true);
    for _ in 0..300 {
        zero_grad(&params);
        let d = net.forward(&x).unwrap().sub(&y).unwrap();
        d.mul(&d).unwrap().mean_all().unwrap().backward().unwrap();
        opt.step(&params).unwrap();
    }
    net.set_training(false);
    let last = mse(&net);
    assert!(last < 0.1 * first, "eval loss {first} -> {last}");
}

#[test]
fn layer_stack_input_gradients_match_finite_differences() {
    let mut rng = Rng::new(13);
    let p = Conv2dParams {
        stride: [2, 1],
        padding: [1, 1],
        ..Default::default()
    };
    let net = Sequential::default()
        .push(Conv2d::new_dtype("c", 3, 4, [3, 3], p, true, DType::F64, &mut rng).unwrap())
        .push(BatchNorm::new_dtype("bn", 4, DType::F64).unwrap())
        .push(Relu)
        .push(Flatten::default())
        .push(Linear::new_dtype("fc", 4 * 3 * 5, 3, true, DType::F64, &mut rng).unwrap());
    let boxed: Box<dyn Module> = Box::new(net);
    let x = Tensor::randn(&[2, 3, 5, 5], 0.0, 1.0, DType::F64, &mut rng);
    check_gradients(|xs| boxed.forward(&xs[0]), &[x.clone()], 1e-6, 1e-7, 1e-5).unwrap();
    boxed.set_training(false);
    check_gradients(|xs| boxed.forward(&xs[0]), &[x], 1e-6, 1e-7, 1e-5).unwrap();
}

/// Params of mixed dtypes and sizes (one empty), the 1-d ones without decay.
fn mixed_params(seed: u64) -> Vec<Param> {
    let mut rng = Rng::new(seed);
    let spec: [(&[usize], DType); 7] = [
        (&[3], DType::F64),
        (&[4, 5], DType::F32),
        (&[0], DType::F32),
        (&[1], DType::F32),
        (&[70_000], DType::F32),
        (&[9, 2], DType::F16),
        (&[13], DType::BF16),
    ];
    spec.iter()
        .enumerate()
        .map(|(i, (shape, dt))| {
            let v = Tensor::randn(shape, 0.0, 1.0, *dt, &mut rng);
            Param::new(format!("p{i}"), v, shape.len() == 1).unwrap()
        })
        .collect()
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_vec_f64()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn sgd_step_of_many_params_equals_stepping_them_one_by_one() {
    let new = || {
        Sgd::new(0.05, 0.9, 1e-2)
            .with_nesterov(true)
            .with_exclude_no_wd(true)
    };
    let (all, each) = (mixed_params(3), mixed_params(3));
    let (mut opt_all, mut opt_each) = (new(), new());
    let mut rng = Rng::new(4);
    for step in 0..3 {
        for (a, b) in all.iter().zip(&each) {
            let v = a.get();
            let g = Tensor::randn(v.dims(), 0.0, 0.5, v.dtype(), &mut rng);
            a.set_grad(Some(g.clone()));
            b.set_grad(Some(g));
        }
        // the last param has no gradient on the second step: skipped, its
        // momentum kept
        if step == 1 {
            all[6].zero_grad();
            each[6].zero_grad();
        }
        opt_all.step(&all).unwrap();
        for p in &each {
            opt_each.step(std::slice::from_ref(p)).unwrap();
        }
        for (a, b) in all.iter().zip(&each) {
            assert_eq!(a.get().dtype(), b.get().dtype());
            assert_eq!(bits(&a.get()), bits(&b.get()), "step {step} {}", a.name());
        }
        let (sa, sb) = (opt_all.state(), opt_each.state());
        assert_eq!(
            sa.len(),
            all.len(),
            "one buffer per param, the empty one too"
        );
        for ((na, ta), (nb, tb)) in sa.iter().zip(&sb) {
            assert_eq!(na, nb);
            assert_eq!(bits(ta), bits(tb), "step {step} {na}");
        }
    }
}

#[test]
fn sgd_state_error_steps_no_param_and_keeps_every_buffer() {
    let ps = mixed_params(5);
    let mut opt = Sgd::new(0.1, 0.9, 0.0);
    let grads: Vec<Tensor> = ps
        .iter()
        .map(|p| Tensor::ones(p.get().dims(), p.get().dtype()))
        .collect();
    for (p, g) in ps.iter().zip(&grads) {
        p.set_grad(Some(g.clone()));
    }
    opt.step(&ps).unwrap();
    // p4's buffer from another model: the step fails before stepping any
    // param, the other buffers stay
    let mut state = opt.state();
    let i = state.iter().position(|(n, _)| n == "momentum.p4").unwrap();
    state[i].1 = Tensor::zeros(&[3], DType::F32);
    opt.load_state(state).unwrap();
    let values: Vec<Vec<u64>> = ps.iter().map(|p| bits(&p.get())).collect();
    let before: Vec<(String, Vec<u64>)> = opt
        .state()
        .iter()
        .map(|(n, t)| (n.clone(), bits(t)))
        .collect();
    let err = opt.step(&ps).unwrap_err().to_string();
    assert!(
        err.contains("momentum.p4") && err.contains("[70000]"),
        "{err}"
    );
    for (p, v) in ps.iter().zip(&values) {
        assert_eq!(&bits(&p.get()), v, "{} unchanged", p.name());
    }
    let after: Vec<(String, Vec<u64>)> = opt
        .state()
        .iter()
        .map(|(n, t)| (n.clone(), bits(t)))
        .collect();
    assert_eq!(after, before);
}
