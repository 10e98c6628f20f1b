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
    assert_eq!(cases.len(), 6);
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
    // the overflow case (the last) skips the step and halves the scale
    let overflow = cases.last().unwrap();
    assert_eq!(overflow.op, "amp_step");
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
}
