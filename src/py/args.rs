//! Argument checks shared by the bindings, raising the same exception types
//! as the pure-Python twin, in its order: each argument's type (and a `str`'s
//! UTF-8) in argument order first, then the values.

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString};

/// `TypeError` unless `value` is an `int` (not a `bool`).
pub fn int_type(value: &Bound<'_, PyAny>, name: &str) -> PyResult<()> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!("{name} must be an int, not {}", value.get_type().name()?)));
    }
    Ok(())
}

/// An `int` already type-checked, `ValueError` unless in `0..2**64`.
pub fn u64_value(value: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    value.extract::<u64>().map_err(|_| PyValueError::new_err(format!("{name} must be between 0 and 2**64 - 1")))
}

/// An `int` (not `bool`) in `0..2**64`, or `None`.
pub fn opt_u64_arg(value: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<u64>> {
    match value.filter(|v| !v.is_none()) {
        None => Ok(None),
        Some(v) => {
            int_type(v, name)?;
            u64_value(v, name).map(Some)
        }
    }
}

/// A `str` or `None`, checked in argument order (type, then UTF-8).
pub fn opt_str_arg<'a>(value: Option<&'a Bound<'_, PyAny>>, name: &str) -> PyResult<Option<&'a str>> {
    match value.filter(|v| !v.is_none()) {
        None => Ok(None),
        Some(v) => {
            let s = v.cast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "{name} must be a str, not {}",
                    v.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })?;
            Ok(Some(s.to_str()?))
        }
    }
}

/// A field value that must not contain CR, LF or NUL.
pub fn field_arg(value: &str, name: &str) -> PyResult<()> {
    if crate::codec::sse::breaks_framing(value) {
        return Err(PyValueError::new_err(format!("{name} must not contain CR, LF or NUL")));
    }
    Ok(())
}

/// What "no limit" (`inf`) becomes: about 31 years, which every deadline can
/// still be added to (`Instant + Duration::MAX` would panic). The faces send
/// the same (`sse_redis._options.NO_LIMIT`).
const NO_LIMIT_SECS: f64 = 1e9;

/// Seconds as a `Duration`: `ValueError` for NaN or a negative value; `inf`
/// and anything past `NO_LIMIT_SECS` are held there. The one conversion of
/// every duration the bindings take.
pub fn seconds(value: f64, name: &str) -> PyResult<Duration> {
    if value.is_nan() || value < 0.0 {
        return Err(PyValueError::new_err(format!("{name} must be a number of seconds >= 0, not {value}")));
    }
    Ok(Duration::from_secs_f64(value.min(NO_LIMIT_SECS)))
}

/// `seconds`, or `None` (no limit).
pub fn opt_seconds(value: Option<f64>, name: &str) -> PyResult<Option<Duration>> {
    value.map(|v| seconds(v, name)).transpose()
}
