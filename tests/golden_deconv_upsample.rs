//! conv_transpose2d, upsample_nearest2d and upsample_bilinear2d against
//! PyTorch (tools/golden/make_upsample_deconv_fixtures.py): forward and the
//! gradients of sum(out * grad_out) for every input, the engine run in f64
//! (relative error <= 1e-6 of the float64 reference) and in f32 (<= 1e-5).

use engine::{DType, Tensor};
use slmlp_tests::{rel_err, run_with_grads, Fixture};

const TOL_F64: f64 = 1e-6;
const TOL_F32: f64 = 1e-5;

const DECONV: [&str; 8] = [
    "deconv_mask_head",
    "deconv_basic",
    "deconv_s2_p1_op1",
    "deconv_groups",
    "deconv_dilation",
    "deconv_outpad_dilation",
    "deconv_depthwise_nobias",
    "deconv_1x1",
];

const NEAREST: [&str; 8] = [
    "upsample_nearest_5x7_10x14",
    "upsample_nearest_13x17_25x34",
    "upsample_nearest_6x4_18x12",
    "upsample_nearest_9x11_5x4",
    "upsample_nearest_14x21_46x69",
    "upsample_nearest_2x45_3x129_f32ref",
    "upsample_nearest_scale2",
    "upsample_nearest_scale3",
];

fn bilinear_cases() -> Vec<String> {
    let mut v = Vec::new();
    for a in [0, 1] {
        for s in ["5x7_11x16", "13x17_6x9", "7x6_1x13", "14x14_28x28"] {
            v.push(format!("upsample_bilinear_{s}_ac{a}"));
        }
    }
    v
}

/// Runs `f` on the fixture's inputs `names` (cast to `dtype`), compares the
/// output and every gradient the fixture holds, and returns the worst
/// relative error.
fn check(
    case: &str,
    names: &[&str],
    dtype: DType,
    tol: f64,
    f: impl Fn(&Fixture, &[Tensor]) -> engine::Result<Tensor>,
) -> f64 {
    let fx = Fixture::load(case);
    let inputs: Vec<Tensor> = names
        .iter()
        .map(|n| fx.get(&format!("in.{n}")).to_dtype(dtype).unwrap())
        .collect();
    let grad_out = fx.get("grad_out").to_dtype(dtype).unwrap();
    let (out, leaves) = run_with_grads(&inputs, &grad_out, |xs| f(&fx, xs))
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(out.dtype(), dtype, "{case}: output dtype");
    let n_fixture_grads = fx.tensors.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        n_fixture_grads,
        names.len(),
        "{case}: fixture gradients and compared inputs differ"
    );
    let mut worst = 0f64;
    let mut compare = |what: &str, actual: &Tensor, expected: &Tensor| {
        let e = rel_err(actual, expected);
        assert!(
            e <= tol,
            "{case} ({dtype:?}): {what}: relative error {e:.3e} > {tol:.0e}"
        );
        worst = worst.max(e);
    };
    compare("out", &out, fx.get("out"));
    for (name, leaf) in names.iter().zip(&leaves) {
        let g = leaf
            .grad()
            .unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
        compare(&format!("grad.{name}"), &g, fx.get(&format!("grad.{name}")));
    }
    worst
}

fn deconv(fx: &Fixture, x: &[Tensor]) -> engine::Result<Tensor> {
    x[0].conv_transpose2d(
        &x[1],
        x.get(2),
        fx.param_pair("stride"),
        fx.param_pair("padding"),
        fx.param_pair("output_padding"),
        fx.param_pair("dilation"),
        fx.params["groups"].as_u64().unwrap() as usize,
    )
}

fn nearest(fx: &Fixture, x: &[Tensor]) -> engine::Result<Tensor> {
    match fx.params["scale"].as_u64() {
        Some(s) => x[0].upsample_nearest2d_scale(s as usize),
        None => x[0].upsample_nearest2d(fx.param_pair("out_hw")),
    }
}

fn bilinear(fx: &Fixture, x: &[Tensor]) -> engine::Result<Tensor> {
    let ac = fx.params["align_corners"].as_bool().unwrap();
    x[0].upsample_bilinear2d(fx.param_pair("out_hw"), ac)
}

fn run_all(
    cases: &[String],
    names_of: impl Fn(&Fixture) -> Vec<&'static str>,
    f: impl Fn(&Fixture, &[Tensor]) -> engine::Result<Tensor> + Copy,
) -> [f64; 2] {
    let mut worst = [0f64; 2];
    for case in cases {
        let names = names_of(&Fixture::load(case));
        worst[0] = worst[0].max(check(case, &names, DType::F64, TOL_F64, f));
        worst[1] = worst[1].max(check(case, &names, DType::F32, TOL_F32, f));
    }
    worst
}

#[test]
fn conv_transpose2d_matches_torch() {
    let cases: Vec<String> = DECONV.iter().map(|s| s.to_string()).collect();
    let worst = run_all(
        &cases,
        |fx| {
            if fx.opt("in.bias").is_some() {
                vec!["x", "weight", "bias"]
            } else {
                vec!["x", "weight"]
            }
        },
        deconv,
    );
    println!(
        "conv_transpose2d: worst relative error f64 {:.2e}, f32 {:.2e}",
        worst[0], worst[1]
    );
}

#[test]
fn deconv_mask_head_shape() {
    // ConvTranspose2d(C, C, 2, 2): exactly doubles the plane
    let fx = Fixture::load("deconv_mask_head");
    assert_eq!(fx.get("in.x").dims(), [3, 12, 6, 6]);
    assert_eq!(fx.get("in.weight").dims(), [12, 12, 2, 2]);
    assert_eq!(fx.get("out").dims(), [3, 12, 12, 12]);
    assert_eq!(fx.param_pair("stride"), [2, 2]);
}

#[test]
fn upsample_nearest_matches_torch() {
    let cases: Vec<String> = NEAREST.iter().map(|s| s.to_string()).collect();
    let worst = run_all(&cases, |_| vec!["x"], nearest);
    println!(
        "upsample_nearest2d: worst relative error f64 {:.2e}, f32 {:.2e}",
        worst[0], worst[1]
    );
    // copies: the forward is exact in both dtypes
    for case in NEAREST {
        let fx = Fixture::load(case);
        let y = nearest(&fx, &[fx.get("in.x").to_dtype(DType::F64).unwrap()]).unwrap();
        assert_eq!(
            rel_err(&y, fx.get("out")),
            0.0,
            "{case}: nearest must copy exactly"
        );
    }
}

#[test]
fn upsample_bilinear_matches_torch() {
    let worst = run_all(&bilinear_cases(), |_| vec!["x"], bilinear);
    println!(
        "upsample_bilinear2d: worst relative error f64 {:.2e}, f32 {:.2e}",
        worst[0], worst[1]
    );
}
