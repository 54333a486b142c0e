//! Argument checks shared by the bindings, raising the same exception types
//! as the pure-Python twin.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt};

/// An `int` (not `bool`) in `0..2**64`.
pub fn u64_arg(value: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not {}",
            value.get_type().name()?
        )));
    }
    value
        .extract::<u64>()
        .map_err(|_| PyValueError::new_err(format!("{name} must be between 0 and 2**64 - 1")))
}

pub fn opt_u64_arg(value: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<u64>> {
    value.filter(|v| !v.is_none()).map(|v| u64_arg(v, name)).transpose()
}

/// A field value that must not contain CR, LF or NUL.
pub fn field_arg(value: &str, name: &str) -> PyResult<()> {
    if crate::codec::sse::breaks_framing(value) {
        return Err(PyValueError::new_err(format!("{name} must not contain CR, LF or NUL")));
    }
    Ok(())
}
