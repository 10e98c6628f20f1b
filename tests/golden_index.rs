//! The indexing ops against PyTorch (tools/golden/make_index_fixtures.py):
//! index_select and its input gradient (f64 and f32 runs against the
//! float64 reference), and the exact values and indices of a stable sort
//! (ties and NaN, both directions) and of topk.

use engine::{DType, Tensor};
use slmlp_tests::{rel_err, run_with_grads, Fixture};

/// Values with NaN replaced by a sentinel (NaN == NaN at the same place).
fn marked(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64()
        .unwrap()
        .into_iter()
        .map(|v| if v.is_nan() { f64::MAX } else { v })
        .collect()
}

#[test]
fn index_select_and_gradient_match_torch() {
    for dim in 0..3 {
        let fx = Fixture::load(&format!("index_select_dim{dim}"));
        let index = fx.get("in.index").clone();
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
            let cast = |k: &str| fx.get(k).to_dtype(dtype).unwrap();
            let (out, leaves) = run_with_grads(&[cast("in.x")], &cast("grad_out"), |x| {
                x[0].index_select(dim, &index)
            })
            .unwrap();
            let g = leaves[0].grad().expect("index_select gives x a gradient");
            let (eo, eg) = (rel_err(&out, fx.get("out")), rel_err(&g, fx.get("grad.x")));
            assert!(
                eo <= tol && eg <= tol,
                "dim {dim} {dtype}: out {eo:.2e}, grad {eg:.2e}"
            );
        }
    }
}

#[test]
fn sort_matches_torch_stable_sort() {
    for (case, descending) in [("index_sort_desc", true), ("index_sort_asc", false)] {
        let fx = Fixture::load(case);
        assert_eq!(fx.params["descending"].as_bool(), Some(descending));
        let (v, i) = fx.get("in.x").sort(descending).unwrap();
        assert_eq!(marked(&v), marked(fx.get("values")), "{case} values");
        assert_eq!(
            i.to_vec::<i64>().unwrap(),
            fx.get("indices").to_vec::<i64>().unwrap(),
            "{case}"
        );
        let a = fx.get("in.x").argsort(descending).unwrap();
        assert_eq!(
            a.to_vec::<i64>().unwrap(),
            i.to_vec::<i64>().unwrap(),
            "{case} argsort"
        );
    }
}

#[test]
fn topk_matches_torch() {
    let fx = Fixture::load("index_topk");
    let k = fx.params["k"].as_u64().unwrap() as usize;
    let (v, i) = fx.get("in.x").topk(k).unwrap();
    assert_eq!(
        v.to_vec_f64().unwrap(),
        fx.get("values").to_vec_f64().unwrap()
    );
    assert_eq!(
        i.to_vec::<i64>().unwrap(),
        fx.get("indices").to_vec::<i64>().unwrap()
    );
}
