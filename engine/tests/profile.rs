//! The profiler's bookkeeping, on the CPU: exclusive times of nested ops,
//! the algorithm names a library reports for the op that runs it (what the
//! cuDNN / cuBLASLt hooks call), and the searches kept for the process.

use engine::profile::{self, Candidate, Ceiling, Search};
use engine::{trace, DType, Tensor};
use std::time::Duration;

#[test]
fn nested_ops_are_exclusive_and_algorithms_go_to_the_innermost_op() {
    let t = Tensor::zeros(&[2, 3], DType::F32);
    profile::search(Search {
        lib: "cudnn",
        problem: "Forward test".into(),
        method: "find".into(),
        chosen: "fwd_gemm (algo 2)".into(),
        workspace: 64,
        ms: 1.5,
        candidates: vec![Candidate {
            algo: "fwd_gemm".into(),
            status: 0,
            ms: 0.25,
            workspace: 64,
        }],
    });
    // outside a profile nothing is attached (and nothing panics)
    profile::algo_used(|| unreachable!("not profiling: the label is not built"));

    profile::start(Ceiling::new(1e9, 1e9, "test").unwrap()).unwrap();
    for _ in 0..2 {
        trace::op("outer", "forward", "cpu", &[&t], || {
            std::thread::sleep(Duration::from_millis(10));
            profile::algo_used(|| "outer algo".into());
            trace::op("inner", "forward", "cpu", &[&t], || {
                std::thread::sleep(Duration::from_millis(50));
                profile::algo_used(|| "inner algo".into());
                Ok(t.clone())
            })
        })
        .unwrap();
    }
    // a failing op is counted as such, not as a row
    let failed = trace::op(
        "fails",
        "forward",
        "cpu",
        &[&t],
        || -> engine::Result<Tensor> { Err(engine::Error::arg("fails", "on purpose")) },
    );
    assert!(failed.is_err());
    let p = profile::stop(2).unwrap();

    let row = |op: &str| p.rows.iter().find(|r| r.op == op).unwrap();
    let (outer, inner) = (row("outer"), row("inner"));
    assert_eq!((outer.calls, inner.calls), (2, 2));
    assert_eq!(outer.algos.get("outer algo"), Some(&2));
    assert_eq!(outer.algos.get("inner algo"), None);
    assert_eq!(inner.algos.get("inner algo"), Some(&2));
    // exclusive: the outer op is charged its own 2 x 10 ms, not the inner's 2 x 50
    assert!(inner.seconds >= 0.100 && inner.seconds < 1.0, "{inner:?}");
    assert!(
        outer.seconds >= 0.020 && outer.seconds < inner.seconds,
        "{outer:?}"
    );
    assert!(outer.inclusive_seconds >= outer.seconds + inner.seconds - 1e-9);
    assert!((p.op_seconds - outer.inclusive_seconds).abs() < 1e-9);
    assert_eq!(p.errors, 1);
    assert!(p.rows.iter().all(|r| r.op != "fails"));
    // searches made before the profile are in it (they happen in warm-up)
    let s = p
        .searches
        .iter()
        .find(|s| s.problem == "Forward test")
        .unwrap();
    assert_eq!((s.candidates.len(), s.candidates[0].ms), (1, 0.25));
    let j = p.to_json();
    assert!(j["searches"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["chosen"] == "fwd_gemm (algo 2)"));
    assert!(p
        .table(10)
        .contains("cudnn find Forward test: fwd_gemm (algo 2)"));
}
