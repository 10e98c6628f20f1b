//! Datasets the binaries train on.

mod synthetic;
pub use synthetic::SyntheticImages;
