//! Models built on the engine: torchvision-compatible ResNets, datasets, the
//! training loop and the binaries users run.

pub mod data;
pub mod resnet;
pub mod train;

pub use resnet::{BlockKind, ResNet, ResNetConfig, Stem};
