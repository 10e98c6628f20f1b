//! CUDA C++ kernel sources and their launchers.
//!
//! This crate sits at the bottom of the layering (models -> engine -> kernels)
//! and knows nothing about tensors or autograd: it will hold the `.cu` sources
//! (embedded with `include_str!`), their NVRTC compilation with an on-disk
//! cache keyed by source hash + GPU arch, and typed launch functions over raw
//! device buffers. The CPU reference backend in `engine` does not need it; the
//! CUDA backend (issue "CUDA backend") fills it.
