//! Bindings of the codec: `Event`, `SSEParser` and the five functions.

use pyo3::prelude::*;
use pyo3::types::PyString;

use super::args::{field_arg, int_type, opt_str_arg, opt_u64_arg, u64_value};
use crate::codec::{json, sse};

/// One dispatched Server-Sent Event.
#[pyclass(frozen, eq, hash, skip_from_py_object, module = "sse_redis._core")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Event {
    #[pyo3(get)]
    event: String,
    #[pyo3(get)]
    data: String,
    #[pyo3(get)]
    id: String,
    #[pyo3(get)]
    retry: Option<u64>,
}

/// `Event(data, event, id, retry)`: what unpickling calls.
type EventArgs = (String, String, String, Option<u64>);

#[pymethods]
impl Event {
    #[new]
    #[pyo3(signature = (data, event = "message".to_owned(), id = String::new(), retry = None))]
    fn new(data: String, event: String, id: String, retry: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        Ok(Event { event, data, id, retry: opt_u64_arg(retry, "retry")? })
    }

    /// Pickles like the pure twin's `Event`.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, EventArgs)> {
        let e = slf.get();
        Ok((slf.get_type().into_any(), (e.data.clone(), e.event.clone(), e.id.clone(), e.retry)))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let r = |s: &str| -> PyResult<String> { Ok(PyString::new(py, s).repr()?.to_str()?.to_owned()) };
        let retry = self.retry.map_or_else(|| "None".to_owned(), |r| r.to_string());
        Ok(format!("Event(event={}, data={}, id={}, retry={retry})", r(&self.event)?, r(&self.data)?, r(&self.id)?))
    }
}

impl From<sse::ParsedEvent> for Event {
    fn from(e: sse::ParsedEvent) -> Self {
        Event { event: e.event, data: e.data, id: e.id, retry: e.retry }
    }
}

/// Incremental parser following the WHATWG event-stream rules.
#[pyclass(module = "sse_redis._core")]
#[derive(Default)]
pub struct SSEParser {
    inner: sse::Parser,
}

#[pymethods]
impl SSEParser {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn feed(&mut self, text: &str) -> Vec<Event> {
        self.inner.feed(text).into_iter().map(Event::from).collect()
    }

    #[getter]
    fn last_event_id(&self) -> &str {
        self.inner.last_event_id()
    }
}

#[pyfunction]
#[pyo3(signature = (data, *, event = None, id = None, retry = None))]
pub fn encode_event(
    data: &str,
    event: Option<&str>,
    id: Option<&str>,
    retry: Option<&Bound<'_, PyAny>>,
) -> PyResult<String> {
    let retry = retry.filter(|r| !r.is_none());
    if let Some(retry) = retry {
        int_type(retry, "retry")?; // types before values, as the pure twin checks
    }
    if let Some(event) = event {
        field_arg(event, "event")?;
    }
    if let Some(id) = id {
        field_arg(id, "id")?;
    }
    let retry = retry.map(|r| u64_value(r, "retry")).transpose()?;
    Ok(sse::encode_event(data, event, id, retry))
}

/// Returns `text` itself when nothing matched: no copy on the common path.
#[pyfunction]
#[pyo3(signature = (text, run_id, seq_id))]
pub fn patch_nulls<'py>(
    text: Bound<'py, PyString>,
    run_id: Option<&Bound<'py, PyAny>>,
    seq_id: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyString>> {
    let text_str = text.to_str()?;
    let run_id = opt_str_arg(run_id, "run_id")?;
    let seq_id = opt_u64_arg(seq_id, "seq_id")?;
    match json::patch_nulls(text_str, run_id, seq_id) {
        None => Ok(text),
        Some(patched) => Ok(PyString::new(text.py(), &patched)),
    }
}

#[pyfunction]
pub fn is_terminal(chunk: &str) -> bool {
    sse::is_terminal(chunk)
}

#[pyfunction]
pub fn sniff_stop_reason(chunk: &str) -> Option<String> {
    json::sniff_stop_reason(chunk)
}

#[pyfunction]
pub fn set_event_id(chunk: &str, event_id: &str) -> PyResult<String> {
    field_arg(event_id, "event_id")?;
    Ok(sse::set_event_id(chunk, event_id))
}
