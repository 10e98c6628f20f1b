//! Errors are values: every failure says what was wrong and what was expected.

use crate::{DType, Device};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {msg}")]
    Shape { op: &'static str, msg: String },

    #[error("{op}: expected dtype {expected}, got {got}")]
    DType {
        op: &'static str,
        expected: String,
        got: DType,
    },

    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },

    #[error("device {device} is not available: {msg}")]
    DeviceUnavailable { device: Device, msg: String },

    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },

    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },

    #[error("autograd: {0}")]
    Autograd(String),

    /// The op has no implementation on this backend (the op family's
    /// default method; docs/OPS.md lists what each device runs).
    #[error("op {op} is not implemented on device {backend}: move its inputs with to_device(Device::Cpu)")]
    Unsupported {
        op: &'static str,
        backend: &'static str,
    },
}

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub fn arg(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
    pub fn dtype(op: &'static str, expected: impl Into<String>, got: DType) -> Self {
        Error::DType {
            op,
            expected: expected.into(),
            got,
        }
    }
    pub fn unsupported(op: &'static str, backend: &'static str) -> Self {
        Error::Unsupported { op, backend }
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
