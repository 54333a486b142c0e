//! The Python faces of the Rust core: argument checks and conversions only.

pub mod args;
pub mod codec;
pub mod errors;
pub mod hub;
pub mod writer;
