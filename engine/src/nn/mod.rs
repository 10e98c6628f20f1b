//! Layers with named parameters (torchvision names and layouts).

mod param;
pub use param::{join, Buffer, Param};

mod batchnorm;
mod conv;
mod conv_transpose;
pub mod init;
mod linear;
mod module;
mod sequential;

pub use batchnorm::{BatchNorm, StatSync};
pub use conv::Conv2d;
pub use conv_transpose::ConvTranspose2d;
pub use linear::Linear;
pub use module::{move_to_device, Flatten, Module, Relu};
pub use sequential::Sequential;
