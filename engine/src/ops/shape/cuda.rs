//! The GPU has no copy primitive of the shape ops yet: cat and narrow's
//! backward are unsupported there (the views work on any device).

use super::ShapeOps;
use crate::backend::Cuda;

impl ShapeOps for Cuda {}
