//! An event loop's wake-up (twin of `python/sse_redis/_pure/hub/waker.py`):
//! the write end of its socket pair, which the hub writes one byte to, and
//! the subscriptions that became ready since the loop last looked.

use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

pub struct Waker {
    fd: i32,
    ready: Vec<u64>,
}

impl Waker {
    pub fn new(fd: i32) -> Waker {
        Waker { fd, ready: Vec::new() }
    }

    /// Notes `sid` as ready; the first one since the loop looked wakes it.
    pub fn mark_ready(&mut self, sid: u64) {
        self.ready.push(sid);
        if self.ready.len() == 1 {
            wake(self.fd);
        }
    }

    pub fn forget(&mut self, sid: u64) {
        self.ready.retain(|&i| i != sid);
    }

    pub fn take(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.ready)
    }
}

/// Writes one byte to the loop's socket; a full or closed socket means the
/// loop is awake already.
fn wake(fd: i32) {
    // SAFETY: the fd belongs to the event loop's socket pair, kept open while
    // the waker is registered; ManuallyDrop never closes it.
    let mut sock = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(fd) });
    let _ = sock.write(&[0]);
}
