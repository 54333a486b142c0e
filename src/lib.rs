//! `sse_redis._core`: the Rust core of sse-redis.

mod codec;
mod io;
mod py;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    use py::codec;
    m.add("MAX_NESTING", crate::codec::json::MAX_NESTING)?;
    m.add_class::<codec::Event>()?;
    m.add_class::<codec::SSEParser>()?;
    m.add_function(wrap_pyfunction!(codec::encode_event, m)?)?;
    m.add_function(wrap_pyfunction!(codec::patch_nulls, m)?)?;
    m.add_function(wrap_pyfunction!(codec::is_terminal, m)?)?;
    m.add_function(wrap_pyfunction!(codec::sniff_stop_reason, m)?)?;
    m.add_function(wrap_pyfunction!(codec::set_event_id, m)?)?;
    m.add_class::<py::writer::WriterEngine>()?;
    m.add_class::<py::hub::ReaderHub>()?;
    Ok(())
}
