//! GPU-vs-CPU parity cases, registered by each op family
//! (`ops/<family>/parity.rs`, listed by `ops::parity_cases`) and run by
//! `slmlp-gpu-check`
//! (benches/src/bin/gpu_check.rs): the same op on fresh random inputs on
//! the CPU (the reference) and on the device under test, every output and
//! input gradient compared.

use crate::{DType, Device, Error, Result, Rng, Tensor};

/// Named tensors one side produced (outputs, gradients, states).
pub type Outputs = Vec<(String, Tensor)>;

/// One parity case: `run(device)` builds its inputs from `seed` (so both
/// sides see the same values), runs the op there and returns what to compare.
pub struct Case {
    pub op: &'static str,
    pub dtype: DType,
    /// Shapes and settings, for the report.
    pub label: String,
    /// The error bound when it differs from the dtype's default (see the
    /// runner), with the reason in the family's parity.rs.
    pub threshold: Option<f64>,
    pub run: Box<dyn Fn(Device) -> Result<Outputs>>,
}

/// The float dtypes every case is tried in (f16 may be refused by an op
/// with a dtype error; the runner reports it as unsupported).
pub const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// `[2,3,4]`-style shape text.
pub fn dims(v: &[usize]) -> String {
    format!("{v:?}").replace(' ', "")
}

/// Input `i` of an autograd case: a name, how to draw it and whether it
/// needs a gradient.
pub struct Input {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub mean: f64,
    pub std: f64,
    pub grad: bool,
}

impl Input {
    /// A standard-normal (times `std`) input that needs a gradient.
    pub fn randn(name: &'static str, shape: &[usize], std: f64) -> Input {
        Input {
            name,
            shape: shape.to_vec(),
            mean: 0.0,
            std,
            grad: true,
        }
    }

    /// The same drawn around `mean` instead of 0.
    pub fn around(self, mean: f64) -> Input {
        Input { mean, ..self }
    }
}

/// An autograd case: draws the inputs from `seed` in `dtype` on the host,
/// uploads them (leaves; `grad` marks those that need a gradient), runs
/// `op`, backpropagates a random upstream gradient from the first output,
/// and returns every output and every input gradient (`d<name>`).
pub fn autograd(
    op: &'static str,
    dtype: DType,
    label: String,
    seed: u64,
    inputs: Vec<Input>,
    f: impl Fn(&[Tensor]) -> Result<Outputs> + 'static,
) -> Case {
    let draw = move |rng: &mut Rng| {
        inputs
            .iter()
            .map(|i| {
                let t = Tensor::randn(&i.shape, i.mean, i.std, dtype, rng);
                (i.name, t, i.grad)
            })
            .collect()
    };
    autograd_with(op, dtype, label, seed, draw, f)
}

/// [`autograd`] over inputs that `draw` makes from the case's generator on
/// the host: (name, tensor of any dtype, whether it needs a gradient).
pub fn autograd_with(
    op: &'static str,
    dtype: DType,
    label: String,
    seed: u64,
    draw: impl Fn(&mut Rng) -> Vec<(&'static str, Tensor, bool)> + 'static,
    f: impl Fn(&[Tensor]) -> Result<Outputs> + 'static,
) -> Case {
    autograd_up(op, dtype, label, seed, draw, 0.0, f)
}

/// [`autograd_with`], the upstream gradient drawn from N(`up_mean`, 1)
/// instead of N(0, 1). A gradient that sums the upstream over many
/// elements (a broadcast operand's) is a cancellation near 0 when the
/// upstream has mean 0, and a single such value is judged against itself:
/// the two sides' summation orders alone then fail it (`sub` f32 of a
/// scalar, 60 terms: 2.5e-4 against 1e-5 on one emulated seed). With mean
/// 1 it is about n.
pub fn autograd_up(
    op: &'static str,
    dtype: DType,
    label: String,
    seed: u64,
    draw: impl Fn(&mut Rng) -> Vec<(&'static str, Tensor, bool)> + 'static,
    up_mean: f64,
    f: impl Fn(&[Tensor]) -> Result<Outputs> + 'static,
) -> Case {
    let run = move |device: Device| {
        let mut rng = Rng::new(seed);
        let inputs = draw(&mut rng);
        let mut leaves = Vec::new();
        for (_, t, grad) in &inputs {
            let t = t.to_device(device)?;
            leaves.push(if *grad { t.requires_grad_()? } else { t });
        }
        let mut outs = f(&leaves)?;
        if inputs.iter().any(|i| i.2) {
            let primary = &outs[0].1;
            let up = Tensor::randn(primary.dims(), up_mean, 1.0, primary.dtype(), &mut rng);
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
    };
    Case {
        op,
        dtype,
        label,
        threshold: None,
        run: Box::new(run),
    }
}
