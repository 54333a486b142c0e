//! `WriterEngine`: the Python face of `crate::io::writer`, GIL released
//! around anything that may wait on Redis.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::args::{opt_seconds, seconds};
use crate::io::writer::{Engine, Kind, Options, RunStatus};

fn kind(complete: bool) -> Kind {
    if complete {
        Kind::Terminal
    } else {
        Kind::Chunk
    }
}

#[pyclass(frozen, module = "sse_redis._core")]
pub struct WriterEngine {
    inner: Engine,
}

impl WriterEngine {
    fn queue(&self, py: Python<'_>, key: &str, data: String, kind: Kind, timeout: Option<f64>) -> PyResult<u64> {
        let timeout = opt_seconds(timeout, "timeout")?;
        let data = match self.inner.try_enqueue(key, data, kind)? {
            Ok(seq) => return Ok(seq),
            Err(data) => data,
        };
        Ok(py.detach(|| self.inner.write(key, data, kind, timeout))?)
    }
}

#[pymethods]
impl WriterEngine {
    #[new]
    #[pyo3(signature = (url, *, flush_size = 50, ttl = Some(10800), max_len = Some(10000),
                        max_pending = 10000, retry_timeout = 30.0, connect_timeout = 5.0,
                        socket_timeout = 10.0, wait_replicas = 0, wait_timeout = 1.0, cluster = false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        url: &str,
        flush_size: usize,
        ttl: Option<u64>,
        max_len: Option<u64>,
        max_pending: usize,
        retry_timeout: f64,
        connect_timeout: f64,
        socket_timeout: f64,
        wait_replicas: u64,
        wait_timeout: f64,
        cluster: bool,
    ) -> PyResult<Self> {
        if flush_size == 0 || max_pending == 0 {
            return Err(PyValueError::new_err("flush_size and max_pending must be positive"));
        }
        let opts = Options {
            flush_size,
            ttl,
            max_len,
            max_pending,
            retry_timeout: seconds(retry_timeout, "retry_timeout")?,
            connect_timeout: seconds(connect_timeout, "connect_timeout")?,
            socket_timeout: seconds(socket_timeout, "socket_timeout")?,
            wait_replicas,
            wait_timeout: seconds(wait_timeout, "wait_timeout")?,
            cluster,
        };
        Ok(WriterEngine { inner: Engine::new(url, opts)? })
    }

    /// Queues without releasing the GIL when it can; waits (released) otherwise.
    #[pyo3(signature = (key, data, complete, timeout = None))]
    fn write(&self, py: Python<'_>, key: &str, data: String, complete: bool, timeout: Option<f64>) -> PyResult<u64> {
        self.queue(py, key, data, kind(complete), timeout)
    }

    /// Queues the run's error terminal, which may end a broken run too.
    #[pyo3(signature = (key, data, timeout = None))]
    fn fail(&self, py: Python<'_>, key: &str, data: String, timeout: Option<f64>) -> PyResult<u64> {
        self.queue(py, key, data, Kind::ErrorTerminal, timeout)
    }

    /// `write` that never waits: `None` when it would have to.
    #[pyo3(signature = (key, data, complete, error = false))]
    fn try_write(&self, key: &str, data: String, complete: bool, error: bool) -> PyResult<Option<u64>> {
        let kind = if error { Kind::ErrorTerminal } else { kind(complete) };
        Ok(self.inner.try_write(key, data, kind)?)
    }

    /// Waits until a write to `key` would not wait; queues nothing.
    #[pyo3(signature = (key, timeout = None))]
    fn wait_writable(&self, py: Python<'_>, key: &str, timeout: Option<f64>) -> PyResult<()> {
        let timeout = opt_seconds(timeout, "timeout")?;
        Ok(py.detach(|| self.inner.wait_writable(key, timeout))?)
    }

    #[pyo3(signature = (timeout = None, key = None))]
    fn flush(&self, py: Python<'_>, timeout: Option<f64>, key: Option<&str>) -> PyResult<()> {
        let timeout = opt_seconds(timeout, "timeout")?;
        Ok(py.detach(|| self.inner.flush(timeout, key))?)
    }

    /// Whether the terminal queued as `seq` found the run already complete
    /// (`RunCancelled` when a cancel ended it).
    fn superseded(&self, key: &str, seq: u64) -> PyResult<bool> {
        Ok(self.inner.superseded(key, seq)?)
    }

    /// Stores `data` as the run's cancel terminal; its seq, or `None` when
    /// the run already ended or is unknown.
    fn cancel(&self, py: Python<'_>, key: &str, data: &str) -> PyResult<Option<u64>> {
        Ok(py.detach(|| self.inner.cancel(key, data))?)
    }

    /// Registers the run as running; `False` when it already ended.
    fn start(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        Ok(py.detach(|| self.inner.start(key))?)
    }

    /// `(state, last_seq, stop_reason, started_at ms, updated_at ms)`, or
    /// `None`: no status and no stream.
    fn status(&self, py: Python<'_>, key: &str) -> PyResult<Option<RunStatus>> {
        Ok(py.detach(|| self.inner.status(key))?)
    }

    fn last_seq(&self, py: Python<'_>, key: &str) -> PyResult<u64> {
        Ok(py.detach(|| self.inner.last_seq(key))?)
    }

    fn delete(&self, py: Python<'_>, key: &str) -> PyResult<()> {
        Ok(py.detach(|| self.inner.delete(key))?)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let dict = PyDict::new(py);
        for (name, value) in [
            ("chunks", s.chunks),
            ("batches", s.batches),
            ("pipelines", s.pipelines),
            ("retries", s.retries),
            ("errors", s.errors),
            ("pending", s.pending),
            ("runs", s.runs),
        ] {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }

    /// The engine's events since the last call, oldest first: `(kind, cause)`.
    fn take_events(&self) -> Vec<(&'static str, String)> {
        self.inner.take_events()
    }

    #[pyo3(signature = (timeout = None))]
    fn close(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let timeout = opt_seconds(timeout, "timeout")?;
        Ok(py.detach(|| self.inner.close(timeout))?)
    }
}
