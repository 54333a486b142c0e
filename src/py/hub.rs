//! `ReaderHub`: the Python face of `crate::io::hub`, GIL released while waiting.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::sync::Arc;

use super::args::{opt_seconds, seconds};
use crate::io::hub::{Delivery, Hub, HubEntry, Options, Polled, SubState};

/// The members of `sse_redis._states.SubState`, in `SubState::ALL` order:
/// a poll reports the same objects as the pure hub's.
static SUB_STATES: PyOnceLock<Vec<Py<PyAny>>> = PyOnceLock::new();

fn sub_state<'py>(py: Python<'py>, state: SubState) -> PyResult<Bound<'py, PyAny>> {
    let members = SUB_STATES.get_or_try_init(py, || {
        let enum_type = py.import("sse_redis._states")?.getattr("SubState")?;
        SubState::ALL.iter().map(|s| enum_type.call1((s.name(),)).map(Bound::unbind)).collect::<PyResult<Vec<_>>>()
    })?;
    let index = SubState::ALL.iter().position(|&s| s == state).unwrap_or_default();
    Ok(members[index].bind(py).clone())
}

#[pyclass(frozen, module = "sse_redis._core")]
pub struct ReaderHub {
    inner: Hub,
}

fn polled<'py>(py: Python<'py>, (entries, state): Polled) -> PyResult<Bound<'py, PyTuple>> {
    let items = entries
        .iter()
        .map(|e: &Arc<HubEntry>| {
            (e.id.as_str(), e.seq, e.data.as_str(), e.complete, e.broken, e.timestamp).into_pyobject(py)
        })
        .collect::<PyResult<Vec<_>>>()?;
    (PyList::new(py, items)?, sub_state(py, state)?).into_pyobject(py)
}

#[pymethods]
impl ReaderHub {
    #[new]
    #[pyo3(signature = (url, *, queue_size = 256, batch_size = 100, block_ms = None,
                        check_interval = 10.0, retry_timeout = 30.0, connect_timeout = 5.0,
                        socket_timeout = 10.0, cluster = false, delivery = "notify"))]
    #[allow(clippy::too_many_arguments)] // mirrors the pure twin's keyword arguments
    fn new(
        url: &str,
        queue_size: usize,
        batch_size: usize,
        block_ms: Option<u64>,
        check_interval: f64,
        retry_timeout: f64,
        connect_timeout: f64,
        socket_timeout: f64,
        cluster: bool,
        delivery: &str,
    ) -> PyResult<Self> {
        let delivery = match delivery {
            "notify" => Delivery::Notify,
            "xread" => Delivery::Xread,
            other => {
                return Err(PyValueError::new_err(format!("delivery must be one of notify, xread, not '{other}'")))
            }
        };
        let opts = Options {
            queue_size,
            batch_size,
            block_ms,
            check_interval: seconds(check_interval, "check_interval")?,
            cluster,
            retry_timeout: seconds(retry_timeout, "retry_timeout")?,
            connect_timeout: seconds(connect_timeout, "connect_timeout")?,
            socket_timeout: seconds(socket_timeout, "socket_timeout")?,
            delivery,
        };
        if queue_size == 0 || batch_size == 0 {
            return Err(PyValueError::new_err("queue_size and batch_size must be positive"));
        }
        Ok(ReaderHub { inner: Hub::new(url, opts)? })
    }

    #[pyo3(signature = (key, after_seq, waker = None))]
    fn subscribe(&self, key: &str, after_seq: u64, waker: Option<u64>) -> PyResult<u64> {
        Ok(self.inner.subscribe(key, after_seq, waker)?)
    }

    fn unsubscribe(&self, sid: u64) {
        self.inner.unsubscribe(sid)
    }

    fn poll<'py>(&self, py: Python<'py>, sid: u64) -> PyResult<Bound<'py, PyTuple>> {
        let got = self.inner.poll(sid)?;
        polled(py, got)
    }

    #[pyo3(signature = (sid, timeout = None))]
    fn wait<'py>(&self, py: Python<'py>, sid: u64, timeout: Option<f64>) -> PyResult<Bound<'py, PyTuple>> {
        let timeout = opt_seconds(timeout, "timeout")?;
        let got = py.detach(|| self.inner.wait(sid, timeout))?;
        polled(py, got)
    }

    fn add_waker(&self, fd: i32) -> u64 {
        self.inner.add_waker(fd)
    }

    fn remove_waker(&self, wid: u64) {
        self.inner.remove_waker(wid)
    }

    fn take_ready(&self, wid: u64) -> Vec<u64> {
        self.inner.take_ready(wid)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let dict = PyDict::new(py);
        for (name, value) in [
            ("xreads", s.xreads),
            ("fetches", s.fetches),
            ("unblocks", s.unblocks),
            ("checks", s.checks),
            ("reconnects", s.reconnects),
            ("notices", s.notices),
            ("probes", s.probes),
            ("missed", s.missed),
            ("subscriptions", s.subscriptions),
            ("watched", s.watched),
            ("listened", s.listened),
            ("blockers", s.blockers),
            ("listeners", s.listeners),
            ("connections", 1 + s.blockers + s.listeners),
        ] {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }

    /// The engine's events since the last call, oldest first: `(kind, cause)`.
    fn take_events(&self) -> Vec<(&'static str, String)> {
        self.inner.take_events()
    }

    fn close(&self) {
        self.inner.close()
    }
}
