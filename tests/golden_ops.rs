//! Every CPU op against PyTorch (float64 reference rounded to f32): forward
//! and the gradients of sum(out * grad_out), per element within 1e-5 + 1e-4 |expected|.

use engine::ops::{BatchNormArgs, Conv2dParams};
use engine::{Result, Tensor};
use slmlp_tests::{run_with_grads, Fixture};

/// Per element |a - b| <= ATOL + RTOL |b|: f32 ops (sums of at most a few
/// hundred O(1) terms) against the f64 reference rounded to f32.
const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-4;

/// Asserts `actual` is within ATOL + RTOL of `expected` element by element.
fn assert_close(what: &str, actual: &Tensor, expected: &Tensor) {
    testutil::assert_tensor_close(what, actual, expected, ATOL, RTOL);
}

/// Loads `case`, runs `f` over the named inputs, and compares the output and
/// every `grad.<name>` the fixture has.
fn check(case: &str, names: &[&str], f: impl Fn(&Fixture, &[Tensor]) -> Result<Tensor>) {
    let fx = Fixture::load(case);
    let inputs: Vec<Tensor> = names
        .iter()
        .map(|n| fx.get(&format!("in.{n}")).clone())
        .collect();
    let (out, leaves) = run_with_grads(&inputs, fx.get("grad_out"), |xs| f(&fx, xs))
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_close(&format!("{case}: out"), &out, fx.get("out"));
    // every gradient the fixture holds must be one we compare
    let n_fixture_grads = fx.tensors.keys().filter(|k| k.starts_with("grad.")).count();
    let n_compared = names
        .iter()
        .filter(|n| fx.opt(&format!("grad.{n}")).is_some())
        .count();
    assert_eq!(
        n_compared, n_fixture_grads,
        "{case}: fixture has gradients this test does not check"
    );
    for (name, leaf) in names.iter().zip(&leaves) {
        if let Some(expected) = fx.opt(&format!("grad.{name}")) {
            let g = leaf
                .grad()
                .unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
            assert_close(&format!("{case}: grad.{name}"), &g, expected);
        }
    }
}

#[test]
fn matmul_and_linear() {
    for case in ["matmul", "matmul_batched"] {
        check(case, &["x", "w"], |_, x| x[0].matmul(&x[1]));
    }
    check("linear", &["x", "weight", "bias"], |_, x| {
        x[0].linear(&x[1], Some(&x[2]))
    });
}

#[test]
fn conv2d() {
    for case in [
        "conv2d_basic",
        "conv2d_stride2",
        "conv2d_dilation",
        "conv2d_groups",
        "conv2d_7x7_stem",
        "conv2d_3x5_asym",
        "conv2d_1x1_stride2_nobias",
    ] {
        let has_bias = Fixture::load(case).opt("in.bias").is_some();
        let names: &[&str] = if has_bias {
            &["x", "weight", "bias"]
        } else {
            &["x", "weight"]
        };
        check(case, names, |fx, x| {
            let p = Conv2dParams {
                stride: fx.param_pair("stride"),
                padding: fx.param_pair("padding"),
                dilation: fx.param_pair("dilation"),
                groups: fx.params["groups"].as_u64().unwrap() as usize,
            };
            x[0].conv2d(&x[1], x.get(2), p)
        });
    }
}

fn bn_args<'a>(fx: &Fixture, x: &'a [Tensor], rm: &'a Tensor, rv: &'a Tensor) -> BatchNormArgs<'a> {
    BatchNormArgs {
        weight: &x[1],
        bias: &x[2],
        running_mean: rm,
        running_var: rv,
        training: fx.params["training"].as_bool().unwrap(),
        momentum: fx.param_f64("momentum"),
        eps: fx.param_f64("eps"),
    }
}

#[test]
fn batch_norm_family() {
    for case in [
        "batch_norm2d_train",
        "batch_norm2d_eval",
        "batch_norm1d_train",
        "batch_norm1d_eval",
        "bn_relu_train",
        "bn_add_relu_train",
    ] {
        let fx = Fixture::load(case);
        let (rm, rv) = (
            fx.get("in.running_mean").clone(),
            fx.get("in.running_var").clone(),
        );
        let fused_add = fx.op == "bn_add_relu";
        let names: &[&str] = if fused_add {
            &["x", "weight", "bias", "residual"]
        } else {
            &["x", "weight", "bias"]
        };
        let run = |fx: &Fixture, x: &[Tensor]| {
            let a = bn_args(fx, x, &rm, &rv);
            match fx.op.as_str() {
                "batch_norm" => x[0].batch_norm(&a),
                "bn_relu" => x[0].batch_norm_relu(&a),
                "bn_add_relu" => x[0].batch_norm_add_relu(&x[3], &a),
                other => panic!("unexpected op {other}"),
            }
        };
        check(case, names, |fx, x| Ok(run(fx, x)?.out));
        // the running statistics, from a separate forward on the same inputs
        let inputs: Vec<Tensor> = names
            .iter()
            .map(|n| fx.get(&format!("in.{n}")).clone())
            .collect();
        let running = run(&fx, &inputs).unwrap().running;
        match (fx.opt("running_mean_after"), running) {
            (Some(m), Some((rm2, rv2))) => {
                assert_close(&format!("{case}: running_mean"), &rm2, m);
                assert_close(
                    &format!("{case}: running_var"),
                    &rv2,
                    fx.get("running_var_after"),
                );
            }
            (None, None) => {}
            (m, r) => panic!(
                "{case}: running stats present in fixture: {}, returned: {}",
                m.is_some(),
                r.is_some()
            ),
        }
    }
}

#[test]
fn elementwise() {
    check("relu", &["x"], |_, x| x[0].relu());
    check("add_broadcast", &["a", "b"], |_, x| x[0].add(&x[1]));
    check("mul_broadcast", &["a", "b"], |_, x| x[0].mul(&x[1]));
}

#[test]
fn pooling() {
    check("max_pool2d", &["x"], |fx, x| {
        x[0].max_pool2d(
            fx.param_pair("kernel_size"),
            fx.param_pair("stride"),
            fx.param_pair("padding"),
        )
    });
    check("avg_pool2d", &["x"], |fx, x| {
        let cip = fx.params["count_include_pad"].as_bool().unwrap();
        x[0].avg_pool2d(
            fx.param_pair("kernel_size"),
            fx.param_pair("stride"),
            fx.param_pair("padding"),
            cip,
        )
    });
    for case in ["adaptive_avg_pool2d_1", "adaptive_avg_pool2d_3"] {
        check(case, &["x"], |fx, x| {
            x[0].adaptive_avg_pool2d(fx.param_pair("output_size"))
        });
    }
}

#[test]
fn losses() {
    for case in [
        "cross_entropy",
        "cross_entropy_smooth",
        "cross_entropy_ignore",
        "cross_entropy_ignore_nosmooth",
    ] {
        check(case, &["x", "target"], |fx, x| {
            let ignore = fx.params["ignore_index"].as_i64();
            x[0].cross_entropy(&x[1], fx.param_f64("label_smoothing"), ignore)
        });
    }
    check("bce_with_logits", &["x", "target"], |_, x| {
        x[0].bce_with_logits(&x[1].detach())
    });
    for case in ["smooth_l1_beta0.111", "smooth_l1_beta1"] {
        check(case, &["x", "target"], |fx, x| {
            x[0].smooth_l1(&x[1].detach(), fx.param_f64("beta"))
        });
    }
    check("log_softmax", &["x"], |fx, x| {
        x[0].log_softmax(fx.params["dim"].as_u64().unwrap() as usize)
    });
}

#[test]
fn reductions() {
    check("sum_dim", &["x"], |fx, x| {
        let dim = fx.params["dim"][0].as_u64().unwrap() as usize;
        x[0].sum_dims(&[dim], fx.params["keepdim"].as_bool().unwrap_or(false))
    });
    check("mean_all", &["x"], |_, x| x[0].mean_all());
}
