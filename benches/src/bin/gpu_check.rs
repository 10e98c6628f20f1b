//! slmlp-gpu-check: every CUDA op against the CPU op (DESIGN.md §2).
//!
//! For each op, dtype and shape: fresh random inputs (engine::Rng, seeded
//! from the clock unless `--seed S`), the op and its backward (a random
//! upstream gradient) on the CPU and on GPU 0, then every output, every
//! input gradient and the BN running statistics compared by
//! max|gpu - cpu| / max|cpu|. Thresholds: f32 1e-5 (TF32 off), bf16 1e-2,
//! f16 5e-3; NaN never passes; new GPU buffers are poisoned with NaN so an
//! unwritten element fails. A GPU op that errors or panics is a failure
//! with its message and the check goes on. f16 is tried everywhere; a GPU
//! op that refuses f16 with a dtype error is listed as "unsupported".
//!
//! `slmlp-gpu-check --out DIR --budget-s N [--seed S] [--only op,op]`
//! Exit 0 all passed, 1 a check failed, 3 no usable GPU, 2 crashed.
//! Writes DIR/result.json (rows keyed `parity/<op>/<dtype>/<shape>`).
//! `--cpu-self-test` runs the "GPU" side on the CPU too (no GPU needed):
//! every case must then match exactly, which checks the cases themselves.

mod gpu_common;

use engine::amp::LossScaler;
use engine::cuda::set_poison;
use engine::nn::Param;
use engine::ops::{BatchNormArgs, Conv2dParams};
use engine::optim::{Optimizer, Sgd};
use engine::{DType, Device, Error, Result, Rng, Tensor};
use gpu_common::*;
use serde_json::json;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

const BIN: &str = "slmlp-gpu-check";

/// Named tensors one side produced (outputs, gradients, states).
type Outputs = Vec<(String, Tensor)>;

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

struct Checker {
    rng: Rng,
    rows: Vec<Row>,
    report: Report,
    only: Option<Vec<String>>,
    /// The device under test: GPU 0, or the CPU itself for `--cpu-self-test`.
    dut: Device,
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
    Ok(t.to_device(Device::Cpu)?.to_vec_f64())
}

impl Checker {
    fn wanted(&self, op: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|x| x == op))
    }

    /// Runs `f` on the CPU (the reference) and on the GPU and compares
    /// every named output it returns.
    fn compare(
        &mut self,
        op: &str,
        dtype: &str,
        shape: &str,
        thr: f64,
        f: &dyn Fn(Device) -> Result<Outputs>,
    ) {
        if !self.wanted(op) {
            return;
        }
        let mut row = Row {
            op: op.into(),
            dtype: dtype.into(),
            shape: shape.into(),
            worst: String::new(),
            err: 0.0,
            thr,
            status: "pass",
            items: vec![],
            note: String::new(),
        };
        let label = format!("{op} {dtype} {shape}");
        let cpu = match catch_unwind(AssertUnwindSafe(|| f(Device::Cpu))) {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return self.fail(row, format!("{label}: CPU reference failed: {e}")),
            Err(p) => {
                return self.fail(
                    row,
                    format!("{label}: CPU reference panicked: {}", panic_text(&*p)),
                )
            }
        };
        let gpu = match catch_unwind(AssertUnwindSafe(|| f(self.dut))) {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                if dtype.starts_with("f16") && matches!(e, Error::DType { .. }) {
                    row.status = "unsupported";
                    row.note = e.to_string();
                    self.rows.push(row);
                    return;
                }
                return self.fail(row, format!("{label}: GPU error: {e}"));
            }
            Err(p) => {
                return self.fail(
                    row,
                    format!("{label}: GPU op panicked: {}", panic_text(&*p)),
                )
            }
        };
        let mut bad = Vec::new();
        for (name, c) in &cpu {
            let Some((_, g)) = gpu.iter().find(|(n, _)| n == name) else {
                bad.push(format!("{name} missing on the GPU side"));
                row.items.push(Item {
                    what: name.clone(),
                    err: f64::INFINITY,
                });
                continue;
            };
            if g.dims() != c.dims() || g.dtype() != c.dtype() {
                bad.push(format!(
                    "{name} is {:?} {} on the GPU, {:?} {} on the CPU",
                    g.dims(),
                    dt(g.dtype()),
                    c.dims(),
                    dt(c.dtype())
                ));
                row.items.push(Item {
                    what: name.clone(),
                    err: f64::INFINITY,
                });
                continue;
            }
            let err = match (host(g), host(c)) {
                (Ok(a), Ok(b)) => rel_err(&a, &b),
                (Err(e), _) | (_, Err(e)) => {
                    bad.push(format!("{name}: download failed: {e}"));
                    f64::INFINITY
                }
            };
            if err.is_nan() || err > thr {
                bad.push(format!("{name} rel err {} > {}", sci(err), sci(thr)));
            }
            row.items.push(Item {
                what: name.clone(),
                err,
            });
        }
        if let Some(w) = row.items.iter().max_by(|a, b| a.err.total_cmp(&b.err)) {
            row.worst = w.what.clone();
            row.err = w.err;
        }
        if bad.is_empty() {
            self.rows.push(row);
        } else {
            let msg = format!("{label}: {}", bad.join("; "));
            self.fail(row, msg);
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

    fn randn(&mut self, shape: &[usize], dtype: DType, std: f64) -> Tensor {
        Tensor::randn(shape, 0.0, std, dtype, &mut self.rng)
    }
}

/// An autograd case: upload the inputs (leaves; `grad` marks those that
/// need a gradient), run `op`, backpropagate a random upstream gradient
/// (the same on both sides) from the first output, and return every output
/// and every input gradient.
fn autograd(
    inputs: Vec<(&'static str, Tensor, bool)>,
    seed: u64,
    op: impl Fn(&[Tensor]) -> Result<Outputs>,
) -> impl Fn(Device) -> Result<Outputs> {
    let upstream: RefCell<Option<Tensor>> = RefCell::new(None);
    move |device| {
        let mut leaves = Vec::new();
        for (_, t, grad) in &inputs {
            let t = t.to_device(device)?;
            leaves.push(if *grad {
                t.detach().requires_grad_()?
            } else {
                t
            });
        }
        let mut outs = op(&leaves)?;
        if inputs.iter().any(|i| i.2) {
            let primary = &outs[0].1;
            let up = upstream
                .borrow_mut()
                .get_or_insert_with(|| {
                    let mut rng = Rng::new(seed);
                    Tensor::randn(primary.dims(), 0.0, 1.0, primary.dtype(), &mut rng)
                })
                .clone();
            primary.backward_with(up.to_device(device)?)?;
            for ((name, _, grad), leaf) in inputs.iter().zip(&leaves) {
                if *grad {
                    let g = leaf.grad().ok_or_else(|| {
                        Error::Autograd(format!("no gradient reached input {name}"))
                    })?;
                    outs.push((format!("d{name}"), g));
                }
            }
        }
        Ok(outs)
    }
}

fn s(v: &[usize]) -> String {
    format!("{v:?}").replace(' ', "")
}

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

// ---- the ops -------------------------------------------------------------------

/// (n, cin, h, w, cout, k, stride, pad, bias)
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize, bool);

fn conv(c: &mut Checker, dl: &Deadline) {
    // (n, cin, h, w, cout, k, stride, pad, bias): odd sizes, channel counts
    // not divisible by 8, and ResNet-50 layers at batch 2.
    let shapes: [ConvCase; 11] = [
        (2, 3, 13, 11, 5, 3, 1, 1, false),
        (3, 5, 7, 9, 11, 1, 1, 0, true),
        (3, 12, 9, 7, 20, 3, 2, 1, true),
        (2, 36, 10, 10, 52, 1, 1, 0, false),
        (1, 7, 6, 5, 3, 2, 1, 0, true),
        (2, 3, 32, 32, 64, 7, 2, 3, false),
        (2, 64, 56, 56, 64, 3, 1, 1, false),
        (2, 256, 56, 56, 128, 1, 1, 0, false),
        (2, 128, 56, 56, 128, 3, 2, 1, false),
        (2, 256, 56, 56, 512, 1, 2, 0, false),
        (2, 512, 7, 7, 2048, 1, 1, 0, false),
    ];
    for dtype in DTYPES {
        for &(n, ci, h, w, co, k, st, p, bias) in &shapes {
            if dl.left() < 1.0 {
                return;
            }
            let x = c.randn(&[n, ci, h, w], dtype, 1.0);
            let wt = c.randn(&[co, ci, k, k], dtype, 1.0 / ((ci * k * k) as f64).sqrt());
            let mut inputs = vec![("x", x, true), ("w", wt, true)];
            if bias {
                inputs.push(("b", c.randn(&[co], dtype, 1.0), true));
            }
            let params = Conv2dParams {
                stride: [st, st],
                padding: [p, p],
                ..Conv2dParams::default()
            };
            let seed = c.rng.next_u64();
            let f = autograd(inputs, seed, move |t| {
                Ok(vec![("y".into(), t[0].conv2d(&t[1], t.get(2), params)?)])
            });
            let shape = format!(
                "{}x{} s{st} p{p}{}",
                s(&[n, ci, h, w]),
                s(&[co, ci, k, k]),
                if bias { " +b" } else { "" }
            );
            c.compare("conv2d", dt(dtype), &shape, threshold(dtype), &f);
        }
    }
}

fn matmul_linear(c: &mut Checker, dl: &Deadline) {
    let mm: [(&[usize], &[usize]); 5] = [
        (&[7, 13], &[13, 5]),
        (&[64, 72], &[72, 40]),
        (&[256, 2048], &[2048, 2048]),
        (&[3, 17, 9], &[3, 9, 11]),
        (&[1, 33], &[33, 1]),
    ];
    let lin: [(usize, usize, usize, bool); 5] = [
        (5, 7, 3, true),
        (64, 100, 36, false),
        (16, 2048, 2048, true),
        (32, 2048, 1000, true),
        (1, 9, 1, true),
    ];
    for dtype in DTYPES {
        for (a, b) in mm {
            if dl.left() < 1.0 {
                return;
            }
            let k = a[a.len() - 1] as f64;
            let inputs = vec![
                ("a", c.randn(a, dtype, 1.0), true),
                ("b", c.randn(b, dtype, 1.0 / k.sqrt()), true),
            ];
            let f = autograd(inputs, c.rng.next_u64(), |t| {
                Ok(vec![("y".into(), t[0].matmul(&t[1])?)])
            });
            c.compare(
                "matmul",
                dt(dtype),
                &format!("{}x{}", s(a), s(b)),
                threshold(dtype),
                &f,
            );
        }
        for (n, i, o, bias) in lin {
            if dl.left() < 1.0 {
                return;
            }
            let mut inputs = vec![
                ("x", c.randn(&[n, i], dtype, 1.0), true),
                ("w", c.randn(&[o, i], dtype, 1.0 / (i as f64).sqrt()), true),
            ];
            if bias {
                inputs.push(("b", c.randn(&[o], dtype, 1.0), true));
            }
            let f = autograd(inputs, c.rng.next_u64(), |t| {
                Ok(vec![("y".into(), t[0].linear(&t[1], t.get(2))?)])
            });
            let shape = format!(
                "x{} w{}{}",
                s(&[n, i]),
                s(&[o, i]),
                if bias { " +b" } else { "" }
            );
            c.compare("linear", dt(dtype), &shape, threshold(dtype), &f);
        }
    }
}

/// Inputs for a fused BN+ReLU check whose pre-activations stay at least
/// 1/16 away from 0, so rounding differences between the two sides can
/// never flip the ReLU mask (a flip is a legitimate difference of O(1) in
/// dx that no threshold could tell from a bug). x (and the residual) lie on
/// a 1/8 grid; per channel, weight = ±std and bias put the zero crossing of
/// w*x̂ + b (+ r) halfway between grid points. Returns (x, r, weight, bias).
fn bn_relu_inputs(
    c: &mut Checker,
    shape: &[usize],
    dtype: DType,
    residual: bool,
) -> (Tensor, Option<Tensor>, Tensor, Tensor) {
    let (n, ch) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let grid = |v: f64| (v * 8.0).round() / 8.0;
    let mut x = vec![0f64; n * ch * inner];
    let mut r = vec![0f64; if residual { x.len() } else { 0 }];
    let (mut w, mut b) = (vec![0f32; ch], vec![0f32; ch]);
    for k in 0..ch {
        let (mu, sd) = (grid(c.rng.normal()), 0.5 + c.rng.uniform() * 1.5);
        let (mut sum, mut sq) = (0.0, 0.0);
        for i in 0..n {
            for j in 0..inner {
                let v = grid((mu + sd * c.rng.normal()).clamp(-15.0, 15.0));
                x[(i * ch + k) * inner + j] = v;
                sum += v;
                sq += v * v;
            }
        }
        let m = (n * inner) as f64;
        let mean = sum / m;
        let std = ((sq / m - mean * mean).max(0.0) + 1e-5).sqrt();
        let sign = if c.rng.uniform() < 0.5 { -1.0 } else { 1.0 };
        let mid = ((mean * 8.0).floor() + 0.5) / 8.0;
        // y = sign*std*(x - mean)/std + sign*(mean - mid) = sign*(x - mid)
        w[k] = (sign * std) as f32;
        b[k] = (sign * (mean - mid)) as f32;
    }
    for v in r.iter_mut() {
        *v = grid(c.rng.normal().clamp(-4.0, 4.0));
    }
    let mk = |v: Vec<f64>| -> Tensor {
        Tensor::from_vec(v, shape)
            .and_then(|t| t.to_dtype(dtype))
            .expect("host tensor of a valid shape")
    };
    let rt = residual.then(|| mk(r));
    (
        mk(x),
        rt,
        Tensor::from_vec(w, &[ch]).expect("[C]"),
        Tensor::from_vec(b, &[ch]).expect("[C]"),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Bn {
    Plain,
    Relu,
    AddRelu,
}

fn batchnorm(c: &mut Checker, dl: &Deadline) {
    let shapes: [&[usize]; 7] = [
        &[2, 3, 5, 7],
        &[4, 13, 6, 6],
        &[8, 64, 14, 14],
        &[2, 256, 28, 28],
        &[2, 2048, 7, 7],
        &[16, 2048],
        &[7, 13],
    ];
    for dtype in DTYPES {
        for kind in [Bn::Plain, Bn::Relu, Bn::AddRelu] {
            for (si, &shape) in shapes.iter().enumerate() {
                // eval mode once per kind and dtype, on the second shape
                for training in [true, false] {
                    if (!training && si != 1) || (kind == Bn::AddRelu && shape.len() != 4) {
                        continue;
                    }
                    if dl.left() < 1.0 {
                        return;
                    }
                    let ch = shape[1];
                    let (x, r, w, b) = if kind == Bn::Plain {
                        (
                            c.randn(shape, dtype, 1.5),
                            None,
                            c.randn(&[ch], DType::F32, 1.0),
                            c.randn(&[ch], DType::F32, 1.0),
                        )
                    } else {
                        bn_relu_inputs(c, shape, dtype, kind == Bn::AddRelu)
                    };
                    let rm = c.randn(&[ch], DType::F32, 0.5);
                    let rv = Tensor::rand(&[ch], 0.5, 2.0, DType::F32, &mut c.rng);
                    let mut inputs = vec![("x", x, true), ("weight", w, true), ("bias", b, true)];
                    if let Some(r) = r {
                        inputs.push(("residual", r, true));
                    }
                    inputs.push(("running_mean", rm, false));
                    inputs.push(("running_var", rv, false));
                    let f = autograd(inputs, c.rng.next_u64(), move |t| {
                        let nr = t.len() - 2;
                        let a = BatchNormArgs {
                            weight: &t[1],
                            bias: &t[2],
                            running_mean: &t[nr],
                            running_var: &t[nr + 1],
                            training,
                            momentum: 0.1,
                            eps: 1e-5,
                        };
                        let o = match kind {
                            Bn::Plain => t[0].batch_norm(&a)?,
                            Bn::Relu => t[0].batch_norm_relu(&a)?,
                            Bn::AddRelu => t[0].batch_norm_add_relu(&t[3], &a)?,
                        };
                        let mut v = vec![("y".to_string(), o.out)];
                        if let Some((m, var)) = o.running {
                            v.push(("new_running_mean".into(), m));
                            v.push(("new_running_var".into(), var));
                        }
                        Ok(v)
                    });
                    let op = match kind {
                        Bn::Plain => "batch_norm",
                        Bn::Relu => "batch_norm_relu",
                        Bn::AddRelu => "batch_norm_add_relu",
                    };
                    let shape_s = format!("{}{}", s(shape), if training { "" } else { " eval" });
                    c.compare(
                        op,
                        &format!("{}/f32 params", dt(dtype)),
                        &shape_s,
                        threshold(dtype),
                        &f,
                    );
                }
            }
        }
    }
}

fn elementwise(c: &mut Checker, dl: &Deadline) {
    let shapes: [&[usize]; 5] = [
        &[2, 3, 5, 7],
        &[4, 64, 14, 14],
        &[7, 13],
        &[1000],
        &[2, 13, 9, 7],
    ];
    for dtype in DTYPES {
        for &shape in &shapes {
            if dl.left() < 1.0 {
                return;
            }
            let inputs = vec![
                ("a", c.randn(shape, dtype, 1.0), true),
                ("b", c.randn(shape, dtype, 1.0), true),
            ];
            let f = autograd(inputs, c.rng.next_u64(), |t| {
                Ok(vec![("y".into(), t[0].add(&t[1])?)])
            });
            c.compare("add", dt(dtype), &s(shape), threshold(dtype), &f);
            let f = autograd(
                vec![("x", c.randn(shape, dtype, 1.0), true)],
                c.rng.next_u64(),
                |t| Ok(vec![("y".into(), t[0].relu()?)]),
            );
            c.compare("relu", dt(dtype), &s(shape), threshold(dtype), &f);
        }
    }
}

fn pooling(c: &mut Checker, dl: &Deadline) {
    // (input, kernel, stride, padding)
    let max: [(&[usize], usize, usize, usize); 4] = [
        (&[2, 64, 56, 56], 3, 2, 1),
        (&[3, 5, 11, 9], 3, 2, 1),
        (&[2, 7, 8, 6], 2, 2, 0),
        (&[1, 13, 5, 5], 3, 1, 1),
    ];
    let adaptive: [(&[usize], [usize; 2]); 4] = [
        (&[2, 2048, 7, 7], [1, 1]),
        (&[3, 13, 5, 7], [1, 1]),
        (&[2, 5, 9, 9], [3, 3]),
        (&[2, 6, 7, 5], [2, 3]),
    ];
    for dtype in DTYPES {
        for (shape, k, st, p) in max {
            if dl.left() < 1.0 {
                return;
            }
            let f = autograd(
                vec![("x", c.randn(shape, dtype, 1.0), true)],
                c.rng.next_u64(),
                move |t| {
                    Ok(vec![(
                        "y".into(),
                        t[0].max_pool2d([k, k], [st, st], [p, p])?,
                    )])
                },
            );
            c.compare(
                "max_pool2d",
                dt(dtype),
                &format!("{} k{k} s{st} p{p}", s(shape)),
                threshold(dtype),
                &f,
            );
        }
        for (shape, out) in adaptive {
            if dl.left() < 1.0 {
                return;
            }
            let f = autograd(
                vec![("x", c.randn(shape, dtype, 1.0), true)],
                c.rng.next_u64(),
                move |t| Ok(vec![("y".into(), t[0].adaptive_avg_pool2d(out)?)]),
            );
            c.compare(
                "adaptive_avg_pool2d",
                dt(dtype),
                &format!("{} -> {out:?}", s(shape)),
                threshold(dtype),
                &f,
            );
        }
    }
}

fn loss_and_sum(c: &mut Checker, dl: &Deadline) {
    // (N, classes, label smoothing, rows with the ignore index)
    let ce: [(usize, usize, f64, usize); 4] = [
        (8, 10, 0.0, 0),
        (64, 1000, 0.1, 0),
        (13, 7, 0.0, 3),
        (256, 1000, 0.0, 0),
    ];
    for dtype in DTYPES {
        for (n, k, ls, ignored) in ce {
            if dl.left() < 1.0 {
                return;
            }
            let logits = c.randn(&[n, k], dtype, 2.0);
            let mut tg: Vec<i64> = (0..n).map(|_| c.rng.below(k) as i64).collect();
            for t in tg.iter_mut().take(ignored) {
                *t = -100;
            }
            c.rng.shuffle(&mut tg);
            let targets = Tensor::from_vec(tg, &[n]).expect("[N] targets");
            let ignore = (ignored > 0).then_some(-100);
            let f = autograd(
                vec![("logits", logits, true), ("targets", targets, false)],
                c.rng.next_u64(),
                move |t| {
                    Ok(vec![(
                        "loss".into(),
                        t[0].cross_entropy(&t[1], ls, ignore)?,
                    )])
                },
            );
            let shape = format!(
                "[{n},{k}] ls{ls}{}",
                if ignored > 0 {
                    format!(" ignore {ignored}")
                } else {
                    String::new()
                }
            );
            c.compare("cross_entropy", dt(dtype), &shape, threshold(dtype), &f);
        }
        // (shape, dims summed (empty: all), keepdim)
        let sums: [(&[usize], &[usize], bool); 5] = [
            (&[2, 13, 9, 7], &[], false),
            (&[5, 100], &[], false),
            (&[7, 13], &[1], false),
            (&[4, 13, 6, 6], &[0, 2, 3], true),
            (&[3, 5, 4, 6], &[1], false),
        ];
        for (shape, dims, keep) in sums {
            if dl.left() < 1.0 {
                return;
            }
            let f = autograd(
                vec![("x", c.randn(shape, dtype, 1.0), true)],
                c.rng.next_u64(),
                move |t| {
                    let y = if dims.is_empty() {
                        t[0].sum_all()?
                    } else {
                        t[0].sum_dims(dims, keep)?
                    };
                    Ok(vec![("y".into(), y)])
                },
            );
            // a sum of n values rounds once at the end in a 16-bit dtype:
            // the same bound as any other 16-bit output
            c.compare(
                "sum",
                dt(dtype),
                &format!(
                    "{} dims {dims:?}{}",
                    s(shape),
                    if keep { " keep" } else { "" }
                ),
                threshold(dtype),
                &f,
            );
        }
    }
}

/// Random RoIAlign boxes [k, 5] for an input [n, .., h, w] seen at
/// `scale`: most inside the image, some reaching past its borders, one
/// inverted and one empty box (the CPU op's edge cases).
fn roi_boxes(c: &mut Checker, n: usize, h: usize, w: usize, scale: f64, k: usize) -> Vec<f64> {
    let (ih, iw) = (h as f64 / scale, w as f64 / scale);
    let mut v = Vec::with_capacity(5 * k);
    for i in 0..k {
        let b = c.rng.below(n) as f64;
        let x1 = c.rng.uniform() * 1.2 * iw - 0.1 * iw;
        let y1 = c.rng.uniform() * 1.2 * ih - 0.1 * ih;
        let (bw, bh) = (c.rng.uniform() * 0.6 * iw, c.rng.uniform() * 0.6 * ih);
        match i {
            0 => v.extend([b, x1, y1, x1 - bw, y1 - bh]), // inverted
            1 => v.extend([b, x1, y1, x1, y1]),           // empty
            _ => v.extend([b, x1, y1, x1 + bw, y1 + bh]),
        }
    }
    v
}

/// NMS boxes [k, 4] in a few clusters (heavy overlap, so suppression
/// chains cross the kernel's 64-box blocks), plus a duplicate pair and an
/// empty box; scores quantized to `step` (ties) when step > 0.
fn nms_inputs(c: &mut Checker, k: usize, step: f64) -> (Vec<f64>, Vec<f64>) {
    let centers: Vec<(f64, f64)> = (0..4)
        .map(|_| (c.rng.uniform() * 200.0, c.rng.uniform() * 200.0))
        .collect();
    let mut b = Vec::with_capacity(4 * k);
    let mut sc = Vec::with_capacity(k);
    for i in 0..k {
        let (cx, cy) = centers[c.rng.below(centers.len())];
        let x = cx + c.rng.normal() * 8.0;
        let y = cy + c.rng.normal() * 8.0;
        let (bw, bh) = (10.0 + c.rng.uniform() * 30.0, 10.0 + c.rng.uniform() * 30.0);
        if i == 1 && k > 2 {
            let p = b[..4].to_vec();
            b.extend(p); // duplicate of box 0: IoU 1
        } else if i == 2 && k > 2 {
            b.extend([x, y, x, y]); // empty: IoU 0 (or NaN with itself)
        } else {
            b.extend([x, y, x + bw, y + bh]);
        }
        let u = c.rng.uniform();
        sc.push(if step > 0.0 {
            (u / step).floor() * step
        } else {
            u
        });
    }
    (b, sc)
}

fn detection(c: &mut Checker, dl: &Deadline) {
    // (input, boxes, output, spatial_scale, sampling_ratio, aligned)
    type RoiCase = (&'static [usize], usize, [usize; 2], f64, i64, bool);
    let roi: [RoiCase; 4] = [
        (&[2, 8, 12, 10], 6, [3, 3], 0.5, 2, true),
        (&[1, 5, 9, 7], 5, [2, 4], 1.0, 0, false),
        (&[2, 64, 25, 34], 20, [7, 7], 0.0625, -1, true),
        (&[1, 3, 6, 6], 4, [2, 2], 1.0, 3, false),
    ];
    // (boxes, iou threshold, score quantum: > 0 makes ties)
    let nms: [(usize, f64, f64); 5] = [
        (1, 0.5, 0.0),
        (50, 0.5, 0.0),
        (200, 0.3, 0.05),
        (257, 0.7, 0.0),
        (1500, 0.5, 0.01),
    ];
    for dtype in DTYPES {
        for (shape, k, out, scale, sr, aligned) in roi {
            if dl.left() < 1.0 {
                return;
            }
            let bx = roi_boxes(c, shape[0], shape[2], shape[3], scale, k);
            let f = autograd(
                vec![("x", c.randn(shape, dtype, 1.0), true)],
                c.rng.next_u64(),
                move |t| {
                    // boxes in x's dtype, on x's device (no gradient)
                    let boxes = Tensor::from_vec(bx.clone(), &[k, 5])?
                        .to_dtype(dtype)?
                        .to_device(t[0].device())?;
                    Ok(vec![(
                        "y".into(),
                        t[0].roi_align(&boxes, out, scale, sr, aligned)?,
                    )])
                },
            );
            c.compare(
                "roi_align",
                dt(dtype),
                &format!(
                    "{} k{k} -> {out:?} s{scale} r{sr} a{}",
                    s(shape),
                    aligned as u8
                ),
                threshold(dtype),
                &f,
            );
        }
        for (k, thr, step) in nms {
            if dl.left() < 1.0 {
                return;
            }
            let (bx, mut sc) = nms_inputs(c, k, step);
            if k >= 200 {
                sc[k / 2] = f64::NAN; // NaN scores are visited first
            }
            let f = move |dev: Device| -> Result<Outputs> {
                let boxes = Tensor::from_vec(bx.clone(), &[k, 4])?.to_dtype(dtype)?;
                let scores = Tensor::from_vec(sc.clone(), &[k])?.to_dtype(dtype)?;
                let keep = engine::ops::nms(&boxes.to_device(dev)?, &scores.to_device(dev)?, thr)?;
                let n = keep.len();
                let v: Vec<i64> = keep.into_iter().map(|i| i as i64).collect();
                Ok(vec![("keep".into(), Tensor::from_vec(v, &[n])?)])
            };
            // the kept indices must be identical
            c.compare(
                "nms",
                dt(dtype),
                &format!("k{k} iou>{thr} q{step}"),
                0.0,
                &f,
            );
        }
    }
}

fn casts(c: &mut Checker, dl: &Deadline) {
    let pairs = [
        (DType::F32, DType::BF16),
        (DType::BF16, DType::F32),
        (DType::F32, DType::F16),
        (DType::F16, DType::F32),
        (DType::BF16, DType::F16),
        (DType::F16, DType::BF16),
    ];
    for (from, to) in pairs {
        for shape in [&[2usize, 13, 9, 7][..], &[1000][..], &[3, 7][..]] {
            if dl.left() < 1.0 {
                return;
            }
            let f = autograd(
                vec![("x", c.randn(shape, from, 3.0), true)],
                c.rng.next_u64(),
                move |t| Ok(vec![("y".into(), t[0].to_dtype(to)?)]),
            );
            // both sides round to nearest even: the results must agree to
            // f32 precision
            c.compare(
                "cast",
                &format!("{}->{}", dt(from), dt(to)),
                &s(shape),
                threshold(DType::F32),
                &f,
            );
        }
    }
}

/// Params (one of each kind the models have) with random values, on `device`.
fn make_params(values: &[(String, Tensor, bool)], device: Device) -> Result<Vec<Param>> {
    values
        .iter()
        .map(|(n, v, nwd)| Param::new(n.clone(), v.to_device(device)?, *nwd))
        .collect()
}

/// A whole network's forward and backward: the loss, the logits and every
/// parameter's gradient (SL-MLP ResNet-18, narrow, both stems). Catches what
/// single-op cases cannot: gradient accumulation across branches, layouts
/// handed from op to op, the model's dtype casts.
///
/// How it is judged (measured on the H100, 2026-11-26):
/// - every item's error is relative to the largest value of the whole case
///   (floored at 1e-3 of it), not to the item's own: the Linear bias in
///   front of a BatchNorm has an exactly-zero gradient, so both sides hold
///   rounding noise there (~1e-9) and an item-relative error is ~1;
/// - f32 against the CPU f32 at 1e-4 (summation order through ~20 layers);
/// - bf16 against the CPU **f32** truth, next to the CPU's own bf16 error:
///   rounding every activation to bf16 moves deep gradients by 10-50 % on
///   either device, so the GPU passes when its bf16 error is at most 3x
///   the CPU's (+1e-2); the worst of 62 items measured was 2.2x
///   (dlayer4.1.conv2.weight, narrow CIFAR-stem net).
fn model_grads(c: &mut Checker, dl: &Deadline) {
    use engine::nn::Module;
    use models::{NetConfig, ProjectorConfig, Stem, SupervisedNet};
    if !c.wanted("model_grads") {
        return;
    }
    let dut = c.dut;
    for (stem, hw) in [(Stem::Cifar, 12usize), (Stem::ImageNet, 32)] {
        if dl.left() < 5.0 {
            return;
        }
        let x = c.randn(&[8, 3, hw, hw], DType::F32, 1.0);
        let labels: Vec<i64> = (0..8).map(|i| (i * 3 % 10) as i64).collect();
        let labels = Tensor::from_vec(labels, &[8]).expect("8 labels");
        let run = |device: Device, dtype: DType| -> Result<Vec<(String, Vec<f64>)>> {
            let mut cfg = NetConfig::new("resnet18", 10)?;
            cfg.width = 8;
            cfg.stem = stem;
            cfg.projector = Some(ProjectorConfig::parse("d", 64)?);
            let net = SupervisedNet::new(cfg, &mut Rng::new(3))?;
            net.to_device(device)?;
            net.set_training(true);
            let input = x.to_device(device)?.to_dtype(dtype)?;
            let logits = net.forward(&input)?.to_dtype(DType::F32)?;
            let loss = logits.cross_entropy(&labels.to_device(device)?, 0.1, None)?;
            loss.backward()?;
            let mut outs = vec![
                ("loss".to_string(), host(&loss.detach())?),
                ("logits".to_string(), host(&logits.detach())?),
            ];
            for p in net.params() {
                let g = p
                    .get()
                    .grad()
                    .ok_or_else(|| Error::Autograd(format!("no gradient reached {}", p.name())))?;
                outs.push((format!("d{}", p.name()), host(&g)?));
            }
            Ok(outs)
        };
        let shape = format!("resnet18 w8 {stem:?} sl-mlp [8,3,{hw},{hw}]");
        let attempt = |device, dtype| match catch_unwind(AssertUnwindSafe(|| run(device, dtype))) {
            Ok(r) => r,
            Err(p) => Err(Error::Autograd(format!("panicked: {}", panic_text(&*p)))),
        };
        let truth = attempt(Device::Cpu, DType::F32);
        for dtype in [DType::F32, DType::BF16] {
            let mut row = Row {
                op: "model_grads".into(),
                dtype: dt(dtype).into(),
                shape: shape.clone(),
                worst: String::new(),
                err: 0.0,
                thr: if dtype == DType::F32 { 1e-4 } else { 3.0 },
                status: "pass",
                items: vec![],
                note: String::new(),
            };
            let label = format!("model_grads {} {shape}", dt(dtype));
            let sides = (|| -> Result<_> {
                let truth = truth
                    .as_ref()
                    .map_err(|e| Error::Autograd(format!("CPU f32: {e}")))?;
                let gpu = attempt(dut, dtype).map_err(|e| Error::Autograd(format!("GPU: {e}")))?;
                let cpu = if dtype == DType::F32 {
                    None
                } else {
                    Some(
                        attempt(Device::Cpu, dtype)
                            .map_err(|e| Error::Autograd(format!("CPU {}: {e}", dt(dtype))))?,
                    )
                };
                Ok((truth.clone(), gpu, cpu))
            })();
            let (truth, gpu, cpu) = match sides {
                Ok(v) => v,
                Err(e) => {
                    c.fail(row, format!("{label}: {e}"));
                    continue;
                }
            };
            let scale = truth
                .iter()
                .flat_map(|(_, v)| v.iter())
                .fold(0.0f64, |m, v| m.max(v.abs()));
            // error of `a` against the truth, relative to the item's largest
            // value floored at 1e-3 of the case's
            let err = |a: &[f64], b: &[f64]| -> f64 {
                let item = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                rel_err(a, b) * item.max(1e-30) / item.max(1e-3 * scale).max(1e-30)
            };
            let mut bad = Vec::new();
            for (i, (name, t)) in truth.iter().enumerate() {
                let Some((_, g)) = gpu.iter().find(|(n, _)| n == name) else {
                    bad.push(format!("{name} missing on the GPU side"));
                    continue;
                };
                let e_gpu = err(g, t);
                // bf16: the ratio to the CPU's own bf16 error (+1e-2)
                let e = match &cpu {
                    None => e_gpu,
                    Some(cpu) => e_gpu / (err(&cpu[i].1, t) + 1e-2),
                };
                if e.is_nan() || e > row.thr {
                    bad.push(format!("{name} error {} > {}", sci(e), sci(row.thr)));
                }
                row.items.push(Item {
                    what: name.clone(),
                    err: e,
                });
            }
            if let Some(w) = row.items.iter().max_by(|a, b| a.err.total_cmp(&b.err)) {
                row.worst = w.what.clone();
                row.err = w.err;
            }
            if dtype != DType::F32 {
                row.note =
                    "err = GPU bf16 error / (CPU bf16 error + 1e-2), both against CPU f32".into();
            }
            if bad.is_empty() {
                c.rows.push(row);
            } else {
                c.fail(row, format!("{label}: {}", bad.join("; ")));
            }
        }
    }
}

fn optimizer(c: &mut Checker, dl: &Deadline) {
    let spec: [(&str, &[usize], bool); 5] = [
        ("conv.weight", &[13, 7, 3, 3], false),
        ("fc.weight", &[37, 100], false),
        ("fc.bias", &[37], true),
        ("bn.weight", &[64], true),
        ("proj.weight", &[256, 256], false),
    ];
    for (nesterov, exclude) in [(false, false), (true, true)] {
        if dl.left() < 1.0 {
            return;
        }
        let values: Vec<(String, Tensor, bool)> = spec
            .iter()
            .map(|(n, sh, nwd)| (n.to_string(), c.randn(sh, DType::F32, 1.0), *nwd))
            .collect();
        // three steps, fresh gradients each (the second and third use momentum)
        let grads: Vec<Vec<Tensor>> = (0..3)
            .map(|_| {
                spec.iter()
                    .map(|(_, sh, _)| c.randn(sh, DType::F32, 0.5))
                    .collect()
            })
            .collect();
        let f = |device: Device| -> Result<Outputs> {
            let params = make_params(&values, device)?;
            let mut opt = Sgd::new(0.1, 0.9, 1e-4)
                .with_nesterov(nesterov)
                .with_exclude_no_wd(exclude);
            for step in &grads {
                for (p, g) in params.iter().zip(step) {
                    p.set_grad(Some(g.to_device(device)?));
                }
                opt.step(&params)?;
            }
            let mut out: Outputs = params
                .iter()
                .map(|p| (p.name().to_string(), p.get()))
                .collect();
            out.extend(opt.state());
            Ok(out)
        };
        let shape = format!(
            "5 params, 3 steps{}{}",
            if nesterov { ", nesterov" } else { "" },
            if exclude { ", no wd on 1-d" } else { "" }
        );
        c.compare("sgd_step", "f32", &shape, threshold(DType::F32), &f);
    }
    // AMP: the scaled loss, the unscale with and without an overflow, and
    // amp_step (which must skip the step on an overflow).
    for overflow in [false, true] {
        if dl.left() < 1.0 {
            return;
        }
        let values: Vec<(String, Tensor, bool)> = spec
            .iter()
            .map(|(n, sh, nwd)| (n.to_string(), c.randn(sh, DType::F32, 1.0), *nwd))
            .collect();
        let mut grads: Vec<Tensor> = spec
            .iter()
            .map(|(_, sh, _)| c.randn(sh, DType::F32, 4096.0))
            .collect();
        if overflow {
            let mut v = grads[1].to_vec::<f32>().expect("f32 grads");
            v[17] = f32::INFINITY;
            grads[1] = Tensor::from_vec(v, &[37, 100]).expect("[37, 100]");
        }
        let loss = c.randn(&[], DType::BF16, 3.0);
        let f = |device: Device| -> Result<Outputs> {
            let params = make_params(&values, device)?;
            let mut scaler = LossScaler::new(1024.0);
            let scaled = scaler.scale_loss(&loss.to_device(device)?)?;
            for (p, g) in params.iter().zip(&grads) {
                p.set_grad(Some(g.to_device(device)?));
            }
            let mut opt = Sgd::new(0.1, 0.9, 1e-4);
            let stepped = engine::amp::amp_step(&mut opt, Some(&mut scaler), &params)?;
            let mut out: Outputs = vec![
                ("scaled_loss".into(), scaled),
                ("stepped".into(), Tensor::scalar(stepped as u8 as f32)),
                ("scale_after".into(), Tensor::scalar(scaler.scale as f32)),
            ];
            for p in &params {
                out.push((
                    format!("{}.grad", p.name()),
                    p.grad()
                        .ok_or_else(|| Error::Autograd("grad dropped".into()))?,
                ));
                out.push((p.name().to_string(), p.get()));
            }
            Ok(out)
        };
        let shape = if overflow {
            "5 params, inf in fc.weight grad"
        } else {
            "5 params, finite grads"
        };
        c.compare(
            "amp_step",
            "f32 master/bf16 loss",
            shape,
            threshold(DType::F32),
            &f,
        );
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
    let mut c = Checker {
        rng: Rng::new(seed),
        rows: vec![],
        report: Report::default(),
        only: args
            .value("--only")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect()),
        dut: if self_test {
            Device::Cpu
        } else {
            Device::Cuda(0)
        },
    };
    type Group = fn(&mut Checker, &Deadline);
    // cheap groups first; the conv and BN shapes take the longest on the CPU side
    let groups: [(&[&str], Group); 9] = [
        (&["cast"], casts),
        (&["roi_align", "nms"], detection),
        (&["add", "relu"], elementwise),
        (&["cross_entropy", "sum"], loss_and_sum),
        (&["sgd_step", "amp_step"], optimizer),
        (&["max_pool2d", "adaptive_avg_pool2d"], pooling),
        (&["matmul", "linear"], matmul_linear),
        (
            &[
                "batch_norm",
                "batch_norm_relu",
                "batch_norm_add_relu",
                "conv2d",
            ],
            |c, dl| {
                batchnorm(c, dl);
                conv(c, dl)
            },
        ),
        (&["model_grads"], model_grads),
    ];
    let mut cut = Vec::new();
    for (ops, run) in groups {
        if !ops.iter().any(|o| c.wanted(o)) {
            continue;
        }
        if dl.left() < 1.0 {
            cut.extend(ops.iter().map(|s| s.to_string()));
            continue;
        }
        let (before, t) = (c.rows.len(), std::time::Instant::now());
        run(&mut c, &dl);
        println!(
            "{BIN}: {} done: {} cases in {:.1} s",
            ops.join("/"),
            c.rows.len() - before,
            t.elapsed().as_secs_f64()
        );
        if dl.left() < 1.0 {
            cut.push(format!("(part of) {}", ops.join("/")));
        }
    }
    print_table(&c.rows);
    let n = c.rows.len();
    let passed = c.rows.iter().filter(|r| r.status == "pass").count();
    let unsupported = c.rows.iter().filter(|r| r.status == "unsupported").count();
    if !cut.is_empty() {
        let msg = format!("budget ran out before: {} (not checked)", cut.join(", "));
        println!("FAIL {msg}");
        c.report.failures.push(msg);
    }
    let line = g.map_or_else(|| "no GPU used (--cpu-self-test)".to_string(), gpu_line);
    println!("{BIN}: {line}");
    c.report.notes.push(line);
    c.report.notes.push(format!("seed {seed}"));
    c.report.figure(
        "parity cases passed",
        format!("{passed}/{n}"),
        "cases",
        "all must pass",
    );
    if unsupported > 0 {
        c.report.figure(
            "f16 cases unsupported",
            unsupported as u64,
            "cases",
            "GPU op refused f16",
        );
    }
    let worst_ratio = c
        .rows
        .iter()
        .filter(|r| r.status != "unsupported")
        .map(|r| r.err / r.thr)
        .fold(0.0, f64::max);
    c.report
        .figure("worst error / threshold", sig(worst_ratio), "x", "<= 1");
    c.report.figure(
        "parity wall time",
        sig(dl.elapsed()),
        "s",
        &format!("budget {}", args.budget_s),
    );
    c.report.rows = c
        .rows
        .iter()
        .map(|r| {
            json!({"key": format!("parity/{}/{}/{}", r.op, r.dtype, r.shape), "op": r.op, "dtype": r.dtype,
                   "shape": r.shape, "worst": r.worst, "max_rel_err": r.err, "threshold": r.thr,
                   "status": r.status, "note": r.note,
                   "items": r.items.iter().map(|i| json!({"what": i.what, "rel_err": i.err})).collect::<Vec<_>>()})
        })
        .collect();
    c.report.write(&args.out, None);
    println!(
        "{BIN}: {passed}/{n} cases passed, {} failure(s){}",
        c.report.failures.len(),
        if unsupported > 0 {
            format!(", {unsupported} f16 unsupported")
        } else {
            String::new()
        }
    );
    std::process::exit(if c.report.failures.is_empty() {
        EXIT_PASS
    } else {
        EXIT_FAIL
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused-BN inputs keep every pre-activation w*x̂ + b (+ r) at least
    /// 1/16 from zero, in the dtypes the check uses.
    #[test]
    fn bn_relu_inputs_keep_preactivations_off_zero() {
        let mut c = Checker {
            rng: Rng::new(9),
            rows: vec![],
            report: Report::default(),
            only: None,
            dut: Device::Cpu,
        };
        for (shape, dtype, residual) in [
            (&[4usize, 13, 6, 6][..], DType::BF16, true),
            (&[16, 37][..], DType::F32, false),
            (&[2, 5, 3, 7][..], DType::F16, true),
        ] {
            let (x, r, w, b) = bn_relu_inputs(&mut c, shape, dtype, residual);
            let (xv, wv, bv) = (x.to_vec_f64(), w.to_vec_f64(), b.to_vec_f64());
            let rv = r.map(|r| r.to_vec_f64());
            let (n, ch) = (shape[0], shape[1]);
            let inner: usize = shape[2..].iter().product();
            let mut closest = f64::MAX;
            for k in 0..ch {
                let idx: Vec<usize> = (0..n)
                    .flat_map(|i| (0..inner).map(move |j| (i * ch + k) * inner + j))
                    .collect();
                let m = idx.len() as f64;
                let mean = idx.iter().map(|&i| xv[i]).sum::<f64>() / m;
                let var = idx.iter().map(|&i| (xv[i] - mean).powi(2)).sum::<f64>() / m;
                for &i in &idx {
                    let y = wv[k] * (xv[i] - mean) / (var + 1e-5).sqrt()
                        + bv[k]
                        + rv.as_ref().map_or(0.0, |r| r[i]);
                    closest = closest.min(y.abs());
                }
            }
            assert!(
                closest > 0.0624,
                "{shape:?}: a pre-activation {closest} is too close to 0"
            );
        }
    }
}
