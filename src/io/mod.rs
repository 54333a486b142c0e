//! The I/O engines: plain Rust on background threads with the `redis`
//! crate's synchronous connections; they never touch Python.

pub mod entries;
pub mod hub;
pub mod links;
pub mod writer;
