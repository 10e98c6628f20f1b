//! Models built on the engine.
