//! Helpers shared by the integration tests: PyTorch golden fixtures and an
//! error measure (comparisons: the `testutil` crate).

use engine::{Result, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A golden fixture written by tools/golden/make_fixtures.py.
pub struct Fixture {
    pub name: String,
    pub op: String,
    pub params: serde_json::Value,
    pub tensors: BTreeMap<String, Tensor>,
}

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden")
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let path = fixture_dir().join(format!("{name}.safetensors"));
        let ckpt =
            engine::checkpoint::load(&path).unwrap_or_else(|e| panic!("fixture {name}: {e}"));
        let meta = &ckpt.metadata;
        let params = meta
            .get("params")
            .map(|p| serde_json::from_str(p).expect("params JSON"));
        Fixture {
            name: name.to_string(),
            op: meta.get("op").cloned().unwrap_or_default(),
            params: params.unwrap_or(serde_json::Value::Null),
            tensors: ckpt.tensors.into_iter().collect(),
        }
    }

    pub fn get(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("fixture {} has no tensor {key}", self.name))
    }

    pub fn opt(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    pub fn param_f64(&self, key: &str) -> f64 {
        self.params[key]
            .as_f64()
            .unwrap_or_else(|| panic!("fixture {}: param {key}", self.name))
    }

    pub fn param_pair(&self, key: &str) -> [usize; 2] {
        let v = &self.params[key];
        [
            v[0].as_u64().expect("pair") as usize,
            v[1].as_u64().expect("pair") as usize,
        ]
    }
}

/// max |a - b| / max |b|: the error relative to the reference's scale, a
/// summary measure (NaN counts as infinite). Per-element checks are
/// `testutil::assert_tensor_close`.
pub fn rel_err(actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.dims(), expected.dims(), "shape mismatch");
    let (a, b) = (actual.to_vec_f64().unwrap(), expected.to_vec_f64().unwrap());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    let diff = a.iter().zip(&b).fold(0f64, |m, (x, y)| {
        if (x - y).is_nan() {
            f64::INFINITY
        } else {
            m.max((x - y).abs())
        }
    });
    diff / scale
}

/// Runs `f` and its backward with the fixture's `grad_out`; returns the
/// output and the inputs made leaves, so their `.grad()` can be compared.
pub fn run_with_grads(
    inputs: &[Tensor],
    grad_out: &Tensor,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<(Tensor, Vec<Tensor>)> {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            if t.dtype().is_float() {
                t.requires_grad_()
            } else {
                Ok(t.clone())
            }
        })
        .collect::<Result<_>>()?;
    let out = f(&leaves)?;
    out.mul(grad_out)?.sum_all()?.backward()?;
    Ok((out, leaves))
}
