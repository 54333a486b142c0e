//! The SSE codec: pure functions over `&str`, no Python and no I/O, so the
//! bindings in `crate::py` and a fuzz target can share them.

pub mod json;
pub mod lines;
pub mod sse;

#[cfg(test)]
mod vectors;
