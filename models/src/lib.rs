//! Models built on the engine: torchvision-compatible ResNets, the SL-MLP
//! projector, datasets, evaluation, training and the `slmlp` commands.

pub mod analyze;
pub mod data;
pub mod datasets;
pub mod detect;
pub mod detection;
pub mod eval;
pub mod experiment;
pub mod experiment_detection;
pub mod extract;
pub mod fit;
pub mod inspect;
pub mod net;
pub mod pretrain;
pub mod projector;
pub mod report;
pub mod resnet;
pub mod train;
pub mod transfer;

pub use net::{NetConfig, SupervisedNet};
pub use projector::{Projector, ProjectorConfig};
pub use resnet::{BlockKind, ResNet, ResNetConfig, Stem};
