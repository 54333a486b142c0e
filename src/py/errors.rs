//! The exception classes live in `sse_redis.errors`; the core raises those
//! same classes, so callers catch one set of types whatever the backend.

use pyo3::PyErr;

use crate::io::writer::WriteError;

pyo3::import_exception!(sse_redis.errors, SSERedisError);
pyo3::import_exception!(sse_redis.errors, RunClosedError);
pyo3::import_exception!(sse_redis.errors, StaleWriterError);
pyo3::import_exception!(sse_redis.errors, WriteTimeout);
pyo3::import_exception!(sse_redis.errors, RedisUnavailable);
pyo3::import_exception!(sse_redis.errors, StreamNotFound);

impl From<WriteError> for PyErr {
    fn from(err: WriteError) -> PyErr {
        match err {
            WriteError::Closed(m) => RunClosedError::new_err(m),
            WriteError::Stale(m) => StaleWriterError::new_err(m),
            WriteError::Timeout(m) => WriteTimeout::new_err(m),
            WriteError::Unavailable(m) => RedisUnavailable::new_err(m),
            WriteError::Redis(m) => SSERedisError::new_err(m),
            WriteError::EngineClosed => SSERedisError::new_err("the writer is closed"),
        }
    }
}
