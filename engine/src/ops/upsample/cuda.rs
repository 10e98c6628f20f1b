//! Resizing on the GPU: no kernel yet, so every primitive keeps the
//! trait's default (unsupported); move the tensor to the CPU to resize it.

use super::UpsampleOps;
use crate::backend::Cuda;

impl UpsampleOps for Cuda {}
