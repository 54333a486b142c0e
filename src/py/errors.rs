//! The one conversion of the engines' typed errors into Python exceptions.
//! The exception classes live in `sse_redis.errors`; the core raises those
//! same classes, so callers catch one set of types whatever the backend. The
//! message is the error's `Display`, the same text the pure twin raises.

use pyo3::PyErr;

use crate::io::hub::HubError;
use crate::io::links::TargetError;
use crate::io::writer::WriteError;

pyo3::import_exception!(sse_redis.errors, SSERedisError);
pyo3::import_exception!(sse_redis.errors, RunClosedError);
pyo3::import_exception!(sse_redis.errors, RunCancelled);
pyo3::import_exception!(sse_redis.errors, StaleWriterError);
pyo3::import_exception!(sse_redis.errors, WriteTimeout);
pyo3::import_exception!(sse_redis.errors, RedisUnavailable);

impl From<WriteError> for PyErr {
    fn from(err: WriteError) -> PyErr {
        let message = err.to_string();
        match err {
            WriteError::AlreadyComplete { .. } | WriteError::CompletedElsewhere { .. } => {
                RunClosedError::new_err(message)
            }
            WriteError::Cancelled { .. } => RunCancelled::new_err(message),
            WriteError::Vanished { .. } | WriteError::Overwritten { .. } | WriteError::Diverged { .. } => {
                StaleWriterError::new_err(message)
            }
            WriteError::OpenTimeout { .. } | WriteError::NoRoom { .. } | WriteError::FlushTimeout { .. } => {
                WriteTimeout::new_err(message)
            }
            WriteError::Unreachable(_) | WriteError::UnreachableFor { .. } => RedisUnavailable::new_err(message),
            WriteError::CommandRefused(_)
            | WriteError::BatchRefused(_)
            | WriteError::RunBatchRefused { .. }
            | WriteError::ReadRefused(_)
            | WriteError::ChunkRefused { .. }
            | WriteError::OutOfMemory { .. }
            | WriteError::NotAStream { .. }
            | WriteError::UnexpectedReply(_)
            | WriteError::Target(_)
            | WriteError::Thread(_)
            | WriteError::NoRandomness(_)
            | WriteError::EngineClosed => SSERedisError::new_err(message),
        }
    }
}

impl From<HubError> for PyErr {
    fn from(err: HubError) -> PyErr {
        match err {
            HubError::Closed | HubError::NoSubscription(_) | HubError::Target(_) | HubError::Thread(_) => {
                SSERedisError::new_err(err.to_string())
            }
        }
    }
}

impl From<TargetError> for PyErr {
    fn from(err: TargetError) -> PyErr {
        SSERedisError::new_err(err.to_string())
    }
}
