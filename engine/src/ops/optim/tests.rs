use super::*;
use crate::backend::Cpu;
use crate::Device;

fn param(v: &[f32]) -> Param {
    Param::new(
        "w",
        Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap(),
        false,
    )
    .unwrap()
}

#[test]
fn sgd_step_writes_the_param_and_creates_the_momentum() {
    let p = param(&[1.0, -2.0]);
    let g = Tensor::from_vec(vec![0.5f32, 1.0], &[2]).unwrap();
    let h = SgdHyper {
        lr: 0.5,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    };
    let mut buf = None;
    Cpu.sgd_step(&p, &g, &mut buf, &h).unwrap();
    assert_eq!(p.get().to_vec::<f32>().unwrap(), vec![0.75, -2.5]);
    assert_eq!(
        buf.as_ref().unwrap().to_vec::<f32>().unwrap(),
        vec![0.5, 1.0]
    );
    // second step: buf = 0.9 * buf + d
    Cpu.sgd_step(&p, &g, &mut buf, &h).unwrap();
    assert_eq!(buf.unwrap().to_vec::<f32>().unwrap(), vec![0.95, 1.9]);
    // no momentum: no buffer
    let mut none = None;
    let plain = SgdHyper { momentum: 0.0, ..h };
    Cpu.sgd_step(&p, &g, &mut none, &plain).unwrap();
    assert!(none.is_none());
}

#[test]
fn unscale_writes_each_gradient_and_reports_overflow() {
    let (a, b) = (param(&[0.0, 0.0]), param(&[0.0]));
    let ga = Tensor::from_vec(vec![2.0f32, 4.0], &[2]).unwrap();
    let gb = Tensor::from_vec(vec![f32::INFINITY], &[1]).unwrap();
    let grads = [(a.clone(), ga), (b, gb)];
    assert!(!Cpu.unscale_and_check_finite(&grads, 0.5).unwrap());
    assert_eq!(a.grad().unwrap().to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
}

#[test]
fn parity_cases_run_on_the_cpu_reproducibly() {
    let mut cases = Vec::new();
    parity::cases(&mut crate::Rng::new(5), &mut cases);
    assert_eq!(cases.len(), 25);
    for c in &cases {
        let (a, b) = ((c.run)(Device::Cpu).unwrap(), (c.run)(Device::Cpu).unwrap());
        assert_eq!(a.len(), b.len());
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            let (x, y) = (x.to_vec_f64().unwrap(), y.to_vec_f64().unwrap());
            // NaN != NaN: compare bits
            let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&x), bits(&y), "{} {} {n}", c.op, c.label);
        }
    }
    // the overflow case (the last AMP one) skips the step and halves the scale
    let overflow = cases.iter().rfind(|c| c.op == "amp_step").unwrap();
    assert!(overflow.label.contains("inf"));
    let out = (overflow.run)(Device::Cpu).unwrap();
    let get = |name: &str| {
        out.iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .item()
            .unwrap()
    };
    assert_eq!((get("stepped"), get("scale_after")), (0.0, 512.0));
    // the finite checks flag exactly the cases with a NaN or an infinity
    for c in cases.iter().filter(|c| c.op == "non_finite_found") {
        let out = (c.run)(Device::Cpu).unwrap();
        let want = if c.label == "all finite" { 0.0 } else { 1.0 };
        assert_eq!(out[0].1.to_vec_f64().unwrap(), vec![want], "{}", c.label);
    }
    // the kept-copy cases: 3 steps of 4 copies each, every one its cast
    let kept: Vec<_> = cases
        .iter()
        .filter(|c| c.label.contains("copies kept"))
        .collect();
    assert_eq!(kept.len(), 2);
    for c in kept {
        let out = (c.run)(Device::Cpu).unwrap();
        assert_eq!(out.len(), 12);
        for (n, d) in &out {
            assert!(d.to_vec_f64().unwrap().iter().all(|&v| v == 0.0), "{n}");
        }
    }
}

/// Params of mixed sizes (one empty) and dtypes, with fresh gradients.
fn mixed_params(rng: &mut crate::Rng) -> Vec<Param> {
    use crate::DType;
    let spec: [(&[usize], DType); 8] = [
        (&[1], DType::F32),
        (&[7], DType::F32),
        (&[0, 3], DType::F32),
        (&[4097], DType::F32),
        (&[3, 100, 11], DType::F32),
        (&[33], DType::F16),
        (&[5, 9], DType::BF16),
        (&[6], DType::F64),
    ];
    spec.iter()
        .enumerate()
        .map(|(i, (shape, dt))| {
            let v = Tensor::randn(shape, 0.0, 1.0, *dt, rng);
            Param::new(format!("p{i}"), v, i.is_multiple_of(3)).unwrap()
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
fn sgd_step_many_is_the_per_param_step_bit_for_bit() {
    let mut rng = crate::Rng::new(11);
    let (many, one) = (
        mixed_params(&mut rng),
        mixed_params(&mut crate::Rng::new(11)),
    );
    let hyper = |p: &Param, momentum: f64, nesterov: bool| SgdHyper {
        lr: 0.1,
        momentum,
        dampening: if nesterov { 0.0 } else { 0.25 },
        // decay excluded for the no_weight_decay params
        weight_decay: if p.no_weight_decay() { 0.0 } else { 1e-2 },
        nesterov,
    };
    for (momentum, nesterov) in [(0.9, false), (0.9, true), (0.0, false)] {
        let mut bufs_many: Vec<Option<Tensor>> = many.iter().map(|_| None).collect();
        let mut bufs_one: Vec<Option<Tensor>> = one.iter().map(|_| None).collect();
        // first step (momentum created), then two with momentum
        for step in 0..3 {
            let grads: Vec<Tensor> = many
                .iter()
                .map(|p| {
                    let v = p.get();
                    Tensor::randn(v.dims(), 0.0, 0.5, v.dtype(), &mut rng)
                })
                .collect();
            let mut items: Vec<SgdItem<'_>> = many
                .iter()
                .zip(&grads)
                .zip(bufs_many.iter_mut())
                .map(|((p, g), m)| SgdItem {
                    p,
                    g,
                    m,
                    h: hyper(p, momentum, nesterov),
                    lr_at: None,
                    skip_if: None,
                })
                .collect();
            Cpu.sgd_step_many(&mut items).unwrap();
            for ((p, g), m) in one.iter().zip(&grads).zip(bufs_one.iter_mut()) {
                Cpu.sgd_step(p, g, m, &hyper(p, momentum, nesterov))
                    .unwrap();
            }
            for (i, (a, b)) in many.iter().zip(&one).enumerate() {
                let what = format!("momentum {momentum} nesterov {nesterov} step {step} p{i}");
                assert_eq!(a.get().dtype(), b.get().dtype(), "{what}");
                assert_eq!(bits(&a.get()), bits(&b.get()), "{what}");
                match (&bufs_many[i], &bufs_one[i]) {
                    (Some(x), Some(y)) => assert_eq!(bits(x), bits(y), "{what} momentum"),
                    (None, None) => assert_eq!(momentum, 0.0, "{what}"),
                    _ => panic!("{what}: one has momentum, the other not"),
                }
            }
        }
    }
    // an error (a gradient of another dtype) names the op and leaves that
    // param and its momentum as they were
    let p = param(&[1.0, 2.0]);
    let g = Tensor::from_vec(vec![1u8, 2], &[2]).unwrap();
    let mut m = None;
    let before = bits(&p.get());
    let h = hyper(&p, 0.9, false);
    let mut items = [SgdItem {
        p: &p,
        g: &g,
        m: &mut m,
        h,
        lr_at: None,
        skip_if: None,
    }];
    assert!(Cpu.sgd_step_many(&mut items).is_err());
    assert_eq!(bits(&p.get()), before);
    assert!(m.is_none());
    // no items: nothing to do
    assert!(Cpu.sgd_step_many(&mut []).is_ok());
}

#[test]
fn an_items_lr_tensor_replaces_its_lr() {
    let h = |lr: f64| SgdHyper {
        lr,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 1e-2,
        nesterov: false,
    };
    let g = Tensor::from_vec(vec![0.5f32, -1.5, 2.0], &[3]).unwrap();
    let (a, b) = (param(&[1.0, 2.0, 3.0]), param(&[1.0, 2.0, 3.0]));
    let (mut ma, mut mb) = (None, None);
    let lr = Tensor::from_vec(vec![0.05f32], &[1]).unwrap();
    Cpu.sgd_step(&a, &g, &mut ma, &h(0.05f32 as f64)).unwrap();
    let mut items = [SgdItem {
        p: &b,
        g: &g,
        m: &mut mb,
        h: h(99.0),
        lr_at: Some(&lr),
        skip_if: None,
    }];
    Cpu.sgd_step_many(&mut items).unwrap();
    assert_eq!(bits(&a.get()), bits(&b.get()));
    // not one f32 value: an error, the param untouched
    let before = bits(&b.get());
    for bad in [
        Tensor::from_vec(vec![0.05f32, 0.05], &[2]).unwrap(),
        Tensor::from_vec(vec![0.05f64], &[1]).unwrap(),
    ] {
        let mut m = None;
        let mut items = [SgdItem {
            p: &b,
            g: &g,
            m: &mut m,
            h: h(0.1),
            lr_at: Some(&bad),
            skip_if: None,
        }];
        let e = Cpu.sgd_step_many(&mut items).unwrap_err().to_string();
        assert!(e.contains("learning rate tensor"), "{e}");
        assert_eq!(bits(&b.get()), before);
    }
}

/// A raised skip flag leaves the param and its (missing) momentum as they
/// were, a lowered one is the plain step; a skippable item needs an f32
/// param and dampening 0, and the flag must be one f32.
#[test]
fn an_items_skip_flag_skips_its_step() {
    let h = |dampening: f64| SgdHyper {
        lr: 0.1,
        momentum: 0.9,
        dampening,
        weight_decay: 1e-2,
        nesterov: false,
    };
    let g = Tensor::from_vec(vec![0.5f32, -1.5, 2.0], &[3]).unwrap();
    let flag = |v: f32| Tensor::from_vec(vec![v], &[1]).unwrap();
    let (raised, lowered) = (flag(1.0), flag(0.0));
    let step = |p: &Param, m: &mut Option<Tensor>, skip: &Tensor, damp: f64| {
        let mut items = [SgdItem {
            p,
            g: &g,
            m,
            h: h(damp),
            lr_at: None,
            skip_if: Some(skip),
        }];
        Cpu.sgd_step_many(&mut items)
    };
    let (a, b) = (param(&[1.0, 2.0, 3.0]), param(&[1.0, 2.0, 3.0]));
    let (mut ma, mut mb) = (None, None);
    let before = bits(&a.get());
    step(&a, &mut ma, &raised, 0.0).unwrap();
    assert_eq!(bits(&a.get()), before);
    assert!(ma.is_none(), "a skipped first step makes no momentum");
    step(&a, &mut ma, &lowered, 0.0).unwrap();
    Cpu.sgd_step(&b, &g, &mut mb, &h(0.0)).unwrap();
    assert_eq!(bits(&a.get()), bits(&b.get()));
    assert_eq!(bits(ma.as_ref().unwrap()), bits(mb.as_ref().unwrap()));
    // refused, the param untouched
    let before = bits(&a.get());
    let e = step(&a, &mut ma, &lowered, 0.5).unwrap_err().to_string();
    assert!(e.contains("dampening 0"), "{e}");
    let e = step(
        &a,
        &mut ma,
        &flag(0.0).to_dtype(crate::DType::F64).unwrap(),
        0.0,
    );
    assert!(e.unwrap_err().to_string().contains("skip flag tensor"));
    let half = Param::new("h", a.get().to_dtype(crate::DType::F16).unwrap(), false).unwrap();
    let e = step(&half, &mut None, &lowered, 0.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("f32 parameter"), "{e}");
    assert_eq!(bits(&a.get()), before);
}

/// `unscale_found` is `unscale_and_check_finite` by the state's scale,
/// its answer an f32 flag; a state of another form is an error.
#[test]
fn unscale_found_unscales_by_the_state_and_flags_overflow() {
    let (a, b) = (param(&[0.0, 0.0]), param(&[0.0]));
    let state = Tensor::from_vec(vec![4.0f32, 0.0, 0.0], &[3]).unwrap();
    let grads = |inf: bool| {
        let gb = if inf { f32::INFINITY } else { 8.0 };
        [
            (
                a.clone(),
                Tensor::from_vec(vec![2.0f32, 4.0], &[2]).unwrap(),
            ),
            (b.clone(), Tensor::from_vec(vec![gb], &[1]).unwrap()),
        ]
    };
    let found = Cpu.unscale_found(&grads(false), &state).unwrap();
    assert_eq!(found.to_vec::<f32>().unwrap(), [0.0]);
    assert_eq!(a.grad().unwrap().to_vec::<f32>().unwrap(), [0.5, 1.0]);
    assert_eq!(b.grad().unwrap().to_vec::<f32>().unwrap(), [2.0]);
    let found = Cpu.unscale_found(&grads(true), &state).unwrap();
    assert_eq!(found.to_vec::<f32>().unwrap(), [1.0]);
    let e = Cpu.unscale_found(&grads(false), &state.narrow(0, 0, 2).unwrap());
    assert!(e.unwrap_err().to_string().contains("scale state"));
}
