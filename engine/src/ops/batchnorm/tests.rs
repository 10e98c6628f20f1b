//! Batch norm: the front-end's checks and the CPU backend on [N, C] rows.

use super::BatchNormArgs;
use crate::{DType, Tensor};

fn params(c: usize) -> [Tensor; 4] {
    [
        Tensor::ones(&[c], DType::F32),
        Tensor::zeros(&[c], DType::F32),
        Tensor::zeros(&[c], DType::F32),
        Tensor::ones(&[c], DType::F32),
    ]
}

fn args(p: &[Tensor; 4], training: bool) -> BatchNormArgs<'_> {
    let [weight, bias, running_mean, running_var] = p;
    // eps 0 so the expected values below are exact
    BatchNormArgs {
        eps: 0.0,
        momentum: 0.1,
        training,
        weight,
        bias,
        running_mean,
        running_var,
    }
}

#[test]
fn rows_are_standardised_per_column() {
    // column 0: 1, 3 (mean 2, var 1); column 1: -2, 2 (mean 0, var 4)
    let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0, 2.0], &[2, 2]).unwrap();
    let p = params(2);
    let o = x.batch_norm_relu(&args(&p, true)).unwrap();
    assert_eq!(o.out.to_vec::<f32>().unwrap(), vec![0.0, 0.0, 1.0, 1.0]);
    let (rm, rv) = o.running.unwrap();
    // running = 0.9*old + 0.1*batch (unbiased variance 2 and 8)
    let rm = rm.to_vec::<f32>().unwrap();
    let rv = rv.to_vec::<f32>().unwrap();
    assert!(
        (rm[0] - 0.2).abs() < 1e-6 && (rm[1] - 0.0).abs() < 1e-6,
        "{rm:?}"
    );
    assert!(
        (rv[0] - 1.1).abs() < 1e-6 && (rv[1] - 1.7).abs() < 1e-6,
        "{rv:?}"
    );
}

#[test]
fn backward_checks_the_gradient_it_gets() {
    let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0, 2.0, 0.5, 1.5], &[3, 2])
        .unwrap()
        .requires_grad_()
        .unwrap();
    let p = params(2);
    let y = x.batch_norm(&args(&p, true)).unwrap().out;
    let e = y
        .backward_with(Tensor::ones(&[3, 2], DType::F64))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gradient") && e.contains("f64"), "{e}");
    // a constant upstream gradient has no effect through the batch mean
    let y = x.batch_norm(&args(&p, true)).unwrap().out;
    y.backward_with(Tensor::ones(&[3, 2], DType::F32)).unwrap();
    let g = x.grad().unwrap().to_vec::<f32>().unwrap();
    assert!(g.iter().all(|v| v.abs() < 1e-5), "{g:?}");
}

#[test]
fn eval_uses_the_running_statistics() {
    let x = Tensor::from_vec(vec![2.0f32, 4.0], &[1, 2]).unwrap();
    let p = params(2);
    let o = x.batch_norm(&args(&p, false)).unwrap();
    assert!(o.running.is_none());
    assert_eq!(o.out.to_vec::<f32>().unwrap(), vec![2.0, 4.0]);
}

#[test]
fn parity_cases_run_on_the_cpu() {
    let mut cases = Vec::new();
    super::parity::cases(&mut crate::Rng::new(7), &mut cases);
    for c in cases.iter().filter(|c| c.dtype == DType::F32) {
        let out = (c.run)(crate::Device::Cpu).unwrap();
        let names: Vec<&str> = out.iter().map(|o| o.0.as_str()).collect();
        assert!(
            names.contains(&"dx") && names.contains(&"dweight"),
            "{}: {names:?}",
            c.label
        );
        assert_eq!(
            names.contains(&"new_running_var"),
            !c.label.ends_with("eval")
        );
    }
}
