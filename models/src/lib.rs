//! Models built on the engine: torchvision-compatible ResNets, the SL-MLP
//! projector and Mask R-CNN (`detection`), data, evaluation, one training
//! loop for every task (`fit`), the studies (`experiment*`) and, in `cli`,
//! the `slmlp` command line over all of them.

pub mod analyze;
pub mod cli;
pub mod data;
pub mod datasets;
pub mod detect;
pub mod detection;
pub mod device;
pub mod dist;
pub mod eval;
pub mod experiment;
pub mod experiment_detection;
pub mod extract;
pub mod fit;
pub mod inspect;
pub mod net;
pub mod pretrain;
pub mod progress;
pub mod projector;
pub mod report;
pub mod resnet;
pub mod run_dir;
pub mod stats;
mod step_graph;
pub mod train;
pub mod transfer;

pub use net::{NetConfig, SupervisedNet};
pub use projector::{Projector, ProjectorConfig};
pub use resnet::{BlockKind, ResNet, ResNetConfig, Stem};
