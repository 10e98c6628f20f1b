//! The PyTorch fixtures under tests/fixtures (written by tools/golden/*.py):
//! a safetensors checkpoint whose metadata holds JSON values.

use engine::checkpoint::{load, Checkpoint};
use engine::Tensor;
use serde_json::Value;
use std::ops::Deref;
use std::path::PathBuf;

/// The workspace's tests/fixtures folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A loaded fixture; derefs to its [`Checkpoint`].
pub struct Golden {
    /// The path below tests/fixtures, for messages.
    pub name: String,
    pub ck: Checkpoint,
}

impl Golden {
    /// Loads tests/fixtures/`path`, e.g. "fpn/fpn.safetensors".
    pub fn load(path: &str) -> Golden {
        let full = fixtures_dir().join(path);
        let ck = load(&full).unwrap_or_else(|e| panic!("fixture {}: {e}", full.display()));
        Golden {
            name: path.to_string(),
            ck,
        }
    }

    /// Loads tests/fixtures/golden/`name`.safetensors.
    pub fn golden(name: &str) -> Golden {
        Golden::load(&format!("golden/{name}.safetensors"))
    }

    /// The tensor `key`; panics naming the fixture when it is missing.
    pub fn get(&self, key: &str) -> &Tensor {
        self.ck
            .tensors
            .get(key)
            .unwrap_or_else(|| panic!("fixture {} has no tensor {key}", self.name))
    }

    /// The tensor `key` as f64 values.
    pub fn f64s(&self, key: &str) -> Vec<f64> {
        self.get(key).to_vec_f64().unwrap()
    }

    /// The metadata entry `key`, parsed as JSON.
    pub fn meta(&self, key: &str) -> Value {
        let text = self
            .ck
            .metadata
            .get(key)
            .unwrap_or_else(|| panic!("fixture {} has no metadata {key}", self.name));
        serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("fixture {}: metadata {key}: {e}", self.name))
    }

    /// The metadata entry `key`, a list of `[h, w]` pairs.
    pub fn meta_pairs(&self, key: &str) -> Vec<(usize, usize)> {
        self.meta(key)
            .as_array()
            .unwrap_or_else(|| panic!("metadata {key}: not a list"))
            .iter()
            .map(pair)
            .collect()
    }
}

impl Deref for Golden {
    type Target = Checkpoint;
    fn deref(&self) -> &Checkpoint {
        &self.ck
    }
}

/// A JSON `[a, b]` of non-negative integers.
pub fn pair(v: &Value) -> (usize, usize) {
    let at = |i: usize| {
        v[i].as_u64()
            .unwrap_or_else(|| panic!("not a pair of integers: {v}")) as usize
    };
    (at(0), at(1))
}
