//! Layers with named parameters (torchvision names and layouts).

mod param;
pub use param::{join, Buffer, Param};
