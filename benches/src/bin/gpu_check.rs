//! slmlp-gpu-check: every op's GPU parity cases against the CPU (docs/DESIGN.md §2).
//!
//! The cases are not here: each op family registers its own in
//! engine/src/ops/<family>/parity.rs (`engine::ops::parity_cases`), and the
//! whole-network cases are `slmlp_benches::gpu_cases`. This runner runs each
//! case (an [`engine::parity::Case`]: fresh random inputs from a seed, the op
//! and its backward) on the CPU, the reference, and on GPU 0, then compares
//! every output it names by max|gpu - cpu| / max|cpu|. Thresholds: the
//! case's own, else f32 1e-5 (TF32 off), bf16 1e-2, f16 5e-3; NaN never
//! passes; new GPU buffers are poisoned with NaN so an unwritten element
//! fails. A side that errors or panics is a failure with its message and
//! the check goes on; a GPU op that refuses f16 with a dtype error is listed
//! as "unsupported", an op with no CUDA implementation
//! (`Error::Unsupported`) as "unsupported (no CUDA path)": neither fails.
//!
//! `slmlp-gpu-check --out DIR --budget-s N [--seed S] [--only op,op]`
//! Exit 0 all passed, 1 a check failed, 3 no usable GPU, 2 crashed.
//! Writes DIR/result.json (rows keyed `parity/<op>/<dtype>/<label>`).
//! `--cpu-self-test` runs the "GPU" side on the CPU too (no GPU needed):
//! every case must then match exactly, which checks the cases themselves
//! (benches/tests/gpu_check_runs.rs runs it in CI).

mod gpu_common;

use engine::cuda::set_poison;
use engine::parity::{Case, Outputs};
use engine::{DType, Device, Error, Result, Tensor};
use gpu_common::*;
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

const BIN: &str = "slmlp-gpu-check";

/// The statuses of a row that are neither a pass nor a failure.
const UNSUPPORTED_F16: &str = "unsupported";
const NO_CUDA_PATH: &str = "unsupported (no CUDA path)";

struct Item {
    what: String,
    err: f64,
}

struct Row {
    op: String,
    dtype: String,
    shape: String,
    /// The worst compared item, its error and the threshold.
    worst: String,
    err: f64,
    thr: f64,
    status: &'static str,
    items: Vec<Item>,
    note: String,
}

fn dt(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F64 => "f64",
        DType::I64 => "i64",
        _ => "?",
    }
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    t.to_vec_f64()
}

/// Compares what the device under test produced against the CPU reference,
/// item by item: every item of `cpu` must be in `dut` with the same shape
/// and dtype and a relative error ([`rel_err`]) of at most `thr`. Returns
/// each item's error and what went wrong (empty: a pass).
fn compare(cpu: &Outputs, dut: &Outputs, thr: f64) -> (Vec<Item>, Vec<String>) {
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for (name, c) in cpu {
        let err = match dut.iter().find(|(n, _)| n == name) {
            None => {
                bad.push(format!("{name} missing on the GPU side"));
                f64::INFINITY
            }
            Some((_, g)) if g.dims() != c.dims() || g.dtype() != c.dtype() => {
                bad.push(format!(
                    "{name} is {:?} {} on the GPU, {:?} {} on the CPU",
                    g.dims(),
                    dt(g.dtype()),
                    c.dims(),
                    dt(c.dtype())
                ));
                f64::INFINITY
            }
            Some((_, g)) => match (host(g), host(c)) {
                (Ok(a), Ok(b)) => {
                    let err = rel_err(&a, &b);
                    if err.is_nan() || err > thr {
                        bad.push(format!("{name} rel err {} > {}", sci(err), sci(thr)));
                    }
                    err
                }
                (Err(e), _) | (_, Err(e)) => {
                    bad.push(format!("{name}: download failed: {e}"));
                    f64::INFINITY
                }
            },
        };
        items.push(Item {
            what: name.clone(),
            err,
        });
    }
    if cpu.is_empty() {
        bad.push("the case returned nothing to compare".into());
    }
    (items, bad)
}

struct Runner {
    rows: Vec<Row>,
    report: Report,
    /// The device under test: GPU 0, or the CPU itself for `--cpu-self-test`.
    dut: Device,
}

impl Runner {
    /// The rows as result.json has them.
    fn json_rows(&self) -> Vec<Value> {
        self.rows
            .iter()
            .map(|r| {
                json!({"key": format!("parity/{}/{}/{}", r.op, r.dtype, r.shape), "op": r.op, "dtype": r.dtype,
                       "shape": r.shape, "worst": r.worst, "max_rel_err": r.err, "threshold": r.thr,
                       "status": r.status, "note": r.note,
                       "items": r.items.iter().map(|i| json!({"what": i.what, "rel_err": i.err})).collect::<Vec<_>>()})
            })
            .collect()
    }

    /// Runs `case` on the CPU (the reference) and on the device under test,
    /// panics caught, and records its row.
    fn run(&mut self, case: &Case) {
        let thr = case.threshold.unwrap_or_else(|| threshold(case.dtype));
        let mut row = Row {
            op: case.op.into(),
            dtype: dt(case.dtype).into(),
            shape: case.label.clone(),
            worst: String::new(),
            err: 0.0,
            thr,
            status: "pass",
            items: vec![],
            note: String::new(),
        };
        let label = format!("{} {} {}", case.op, row.dtype, case.label);
        let cpu = match catch_unwind(AssertUnwindSafe(|| (case.run)(Device::Cpu))) {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return self.fail(row, format!("{label}: CPU reference failed: {e}")),
            Err(p) => {
                let msg = format!("{label}: CPU reference panicked: {}", panic_text(&*p));
                return self.fail(row, msg);
            }
        };
        let dut = match catch_unwind(AssertUnwindSafe(|| (case.run)(self.dut))) {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                row.status = match e {
                    Error::Unsupported { .. } => NO_CUDA_PATH,
                    Error::DType { .. } if case.dtype == DType::F16 => UNSUPPORTED_F16,
                    _ => return self.fail(row, format!("{label}: GPU error: {e}")),
                };
                row.note = e.to_string();
                self.rows.push(row);
                return;
            }
            Err(p) => {
                let msg = format!("{label}: GPU op panicked: {}", panic_text(&*p));
                return self.fail(row, msg);
            }
        };
        let (items, bad) = compare(&cpu, &dut, thr);
        row.items = items;
        if let Some(w) = row.items.iter().max_by(|a, b| a.err.total_cmp(&b.err)) {
            row.worst = w.what.clone();
            row.err = w.err;
        }
        if bad.is_empty() {
            self.rows.push(row);
        } else {
            self.fail(row, format!("{label}: {}", bad.join("; ")));
        }
    }

    fn fail(&mut self, mut row: Row, msg: String) {
        row.status = "FAIL";
        if row.err == 0.0 && row.items.is_empty() {
            row.err = f64::INFINITY;
        }
        row.note = msg.clone();
        println!("FAIL {msg}");
        self.report.failures.push(msg);
        self.rows.push(row);
    }

    fn count(&self, status: &str) -> usize {
        self.rows.iter().filter(|r| r.status == status).count()
    }
}

fn print_table(rows: &[Row]) {
    let header = [
        "op",
        "dtype",
        "shape",
        "worst",
        "max rel err",
        "threshold",
        "pass",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.op.clone(),
                r.dtype.clone(),
                r.shape.clone(),
                r.worst.clone(),
                sci(r.err),
                sci(r.thr),
                r.status.to_string(),
            ]
        })
        .collect();
    let mut w = header.map(|h| h.len());
    for c in &cells {
        for (i, v) in c.iter().enumerate() {
            w[i] = w[i].max(v.len());
        }
    }
    let line = |v: &[String]| {
        v.iter()
            .enumerate()
            .map(|(i, x)| format!("{x:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(&header.map(String::from)));
    for c in &cells {
        println!("{}", line(c));
    }
}

fn main() {
    let args = Args::parse(BIN, " [--seed S] [--only op,op,...] [--cpu-self-test]");
    use_bundled_nvrtc();
    let dl = Deadline::new(args.budget_s);
    let self_test = args.flag("--cpu-self-test");
    let g = if self_test {
        None
    } else {
        Some(open_gpu_or_exit(BIN, &args.out))
    };
    set_poison(true);
    let seed = match args.value("--seed") {
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{BIN}: --seed needs an integer, got {v:?}");
            std::process::exit(EXIT_CRASH)
        }),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    let info = g.map_or_else(
        || "--cpu-self-test: both sides on the CPU".to_string(),
        |g| g.info.summary(),
    );
    println!("{BIN}: seed {seed}, budget {} s; {info}", args.budget_s);
    let mut r = Runner {
        rows: vec![],
        report: Report::default(),
        dut: if self_test {
            Device::Cpu
        } else {
            Device::Cuda(0)
        },
    };
    let mut cases = slmlp_benches::gpu_cases::all_cases(seed);
    if let Some(only) = args.value("--only") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        for op in &only {
            if !cases.iter().any(|c| c.op == *op) {
                let msg = format!("--only {op}: no case of that op is registered");
                println!("FAIL {msg}");
                r.report.failures.push(msg);
            }
        }
        cases.retain(|c| only.contains(&c.op));
    }
    // (op, cases run, seconds), in the order the ops come
    let mut per_op: Vec<(&str, usize, f64)> = Vec::new();
    let mut cut: Vec<&str> = Vec::new();
    let mut written = Instant::now();
    for case in &cases {
        if dl.left() < 1.0 {
            cut.push(case.op);
            continue;
        }
        let t = Instant::now();
        r.run(case);
        // the cases checked so far, every few seconds, in case the stage
        // is stopped at its timeout
        if written.elapsed().as_secs_f64() > 5.0 {
            r.report.rows = r.json_rows();
            r.report.write_so_far(&args.out);
            written = Instant::now();
        }
        let i = match per_op.iter().position(|(op, _, _)| *op == case.op) {
            Some(i) => i,
            None => {
                per_op.push((case.op, 0, 0.0));
                per_op.len() - 1
            }
        };
        per_op[i].1 += 1;
        per_op[i].2 += t.elapsed().as_secs_f64();
    }
    for (op, n, s) in &per_op {
        println!("{BIN}: {op}: {n} cases in {s:.1} s");
    }
    print_table(&r.rows);
    let n = r.rows.len();
    let passed = r.count("pass");
    let unsupported = r.count(UNSUPPORTED_F16);
    let no_cuda = r.count(NO_CUDA_PATH);
    if !cut.is_empty() {
        let mut ops: Vec<&str> = Vec::new();
        for op in &cut {
            if !ops.contains(op) {
                ops.push(op);
            }
        }
        let msg = format!(
            "budget ran out before {} of {} cases: {} (not checked)",
            cut.len(),
            cases.len(),
            ops.join(", ")
        );
        println!("FAIL {msg}");
        r.report.failures.push(msg);
    }
    let line = g.map_or_else(|| "no GPU used (--cpu-self-test)".to_string(), gpu_line);
    println!("{BIN}: {line}");
    r.report.notes.push(line);
    r.report.notes.push(format!("seed {seed}"));
    r.report.figure(
        "parity cases passed",
        format!("{passed}/{n}"),
        "cases",
        "all must pass",
    );
    if unsupported > 0 {
        r.report.figure(
            "f16 cases unsupported",
            unsupported as u64,
            "cases",
            "GPU op refused f16",
        );
    }
    if no_cuda > 0 {
        r.report.figure(
            "cases with no CUDA path",
            no_cuda as u64,
            "cases",
            "op not implemented on the GPU",
        );
    }
    let worst_ratio = r
        .rows
        .iter()
        .filter(|r| r.status != UNSUPPORTED_F16 && r.status != NO_CUDA_PATH)
        .map(|r| r.err / r.thr)
        .fold(0.0, f64::max);
    r.report
        .figure("worst error / threshold", sig(worst_ratio), "x", "<= 1");
    r.report.figure(
        "parity wall time",
        sig(dl.elapsed()),
        "s",
        &format!("budget {}", args.budget_s),
    );
    r.report.search_figures();
    r.report.rows = r.json_rows();
    r.report.write(&args.out, None);
    let mut not_run = String::new();
    if unsupported > 0 {
        not_run += &format!(", {unsupported} f16 unsupported");
    }
    if no_cuda > 0 {
        not_run += &format!(", {no_cuda} with no CUDA path");
    }
    println!(
        "{BIN}: {passed}/{n} cases passed, {} failure(s){not_run}",
        r.report.failures.len()
    );
    std::process::exit(if r.report.failures.is_empty() {
        EXIT_PASS
    } else {
        EXIT_FAIL
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn outputs(v: &[f64]) -> Outputs {
        vec![(
            "y".into(),
            Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap(),
        )]
    }

    #[test]
    fn compare_passes_equal_outputs_and_fails_wrong_ones() {
        let cpu = outputs(&[1.0, -2.0, 4.0]);
        let (items, bad) = compare(&cpu, &outputs(&[1.0, -2.0, 4.0]), 0.0);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(items[0].err, 0.0);
        // one element off by 1e-4 of the largest: over f32's 1e-5
        let (items, bad) = compare(&cpu, &outputs(&[1.0, -2.0004, 4.0]), 1e-5);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!((items[0].err - 1e-4).abs() < 1e-12);
        // a NaN (an unwritten, poisoned element) fails at any threshold
        let (items, bad) = compare(&cpu, &outputs(&[1.0, f64::NAN, 4.0]), 1e9);
        assert_eq!((bad.len(), items[0].err), (1, f64::INFINITY));
        // a missing item, another shape, nothing to compare
        assert_eq!(compare(&cpu, &vec![], 1.0).1.len(), 1);
        assert_eq!(compare(&cpu, &outputs(&[1.0, -2.0]), 1.0).1.len(), 1);
        assert_eq!(compare(&vec![], &vec![], 1.0).1.len(), 1);
    }

    /// A case whose second run (the device under test; both are the CPU
    /// here) returns `dut`.
    fn case(dtype: DType, dut: impl Fn() -> Result<Outputs> + 'static) -> Case {
        let calls = Cell::new(0);
        Case {
            op: "test_op",
            dtype,
            label: "[3]".into(),
            threshold: None,
            run: Box::new(move |_| {
                calls.set(calls.get() + 1);
                if calls.get() == 1 {
                    Ok(outputs(&[1.0, 2.0, 3.0]))
                } else {
                    dut()
                }
            }),
        }
    }

    #[test]
    fn runner_fails_a_wrong_device_side_and_skips_unsupported_ones() {
        let mut r = Runner {
            rows: vec![],
            report: Report::default(),
            dut: Device::Cpu,
        };
        r.run(&case(DType::F32, || Ok(outputs(&[1.0, 2.0, 3.0]))));
        r.run(&case(DType::F32, || Ok(outputs(&[1.0, 2.0, 3.001]))));
        r.run(&case(DType::F32, || panic!("kernel blew up")));
        r.run(&case(DType::F32, || Err(Error::arg("test_op", "bad"))));
        r.run(&case(DType::F32, || {
            Err(Error::unsupported("test_op", "cuda"))
        }));
        r.run(&case(DType::F16, || {
            Err(Error::dtype("test_op", "f32", DType::F16))
        }));
        r.run(&case(DType::BF16, || {
            Err(Error::dtype("test_op", "f32", DType::BF16))
        }));
        let status: Vec<&str> = r.rows.iter().map(|r| r.status).collect();
        assert_eq!(
            status,
            [
                "pass",
                "FAIL",
                "FAIL",
                "FAIL",
                NO_CUDA_PATH,
                UNSUPPORTED_F16,
                "FAIL"
            ]
        );
        assert_eq!(r.report.failures.len(), 4);
        assert!(r.report.failures[1].contains("kernel blew up"));
    }
}
