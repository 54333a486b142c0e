//! The writer engine (twin of `python/sse_redis/_pure/writer.py`).
//!
//! One background thread owns the pipeline connection. `write` only queues a
//! chunk and wakes it; the thread sends everything queued as one pipeline of
//! `append.lua` calls (one per run per `flush_size` chunks), and while that
//! pipeline is in flight new chunks gather for the next one (group commit).
//! A single sender means pipelines of one run never overlap, so chunks land
//! in seq order; the script makes each batch all-or-nothing and fenced, so a
//! retry after a lost reply never stores a chunk twice.
//!
//! The same thread opens runs (reads each new run's top in its pipeline), so
//! a caller waits for an answer on a condition variable, never on a socket,
//! and its own timeout always holds. A seq id handed out is never given
//! again: a run whose batch failed stays broken for this writer (its later
//! writes raise the error) and only its error terminal may still be stored.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Cmd, RedisError, RedisResult, Value};
use thiserror::Error;

use super::entries::parse_range;
use super::links::{self, Events, Link, Target, TargetError};

const APPEND_SCRIPT: &str = include_str!("../../python/sse_redis/append.lua");
/// Bounds on chunks per pipeline and per script call, so that one round trip,
/// and one script's time on the server, stay short.
const MAX_PIPELINE_CHUNKS: usize = 2048;
const MAX_CALL_CHUNKS: usize = 512;
/// A chunk above the lowest `proto-max-bulk-len` a server accepts (1 MiB) may
/// be refused, and the server then drops the connection: such a chunk goes in
/// a pipeline of its own, so a refusal fails its run only.
const LARGE_CHUNK_BYTES: usize = 1 << 20;
const MAX_SUPERSEDED: usize = 1024;

/// The run's status key (`sse_redis.keys.status_key`, `append.lua`'s
/// `status_of`): `<key>:status` when the key has a hash tag, else
/// `{<key>}:status`, so it lives in the key's slot.
pub fn status_key(key: &str) -> String {
    let tagged = key.find('{').is_some_and(|open| key[open + 1..].find('}').is_some_and(|close| close > 0));
    if tagged {
        format!("{key}:status")
    } else {
        format!("{{{key}}}:status")
    }
}

/// What `status` reports: state, last seq, stop reason, started and updated
/// (ms since the epoch, the writers' clocks).
pub type RunStatus = (String, u64, Option<String>, Option<u64>, Option<u64>);

/// Why a write, flush or control command failed. Cloned: a broken run's
/// error is raised to each of its later callers, an open's to each waiter.
/// `py::errors` picks the Python class of each variant; the message is the
/// `Display` (the pure twin raises the same texts).
#[derive(Clone, Debug, Error)]
pub enum WriteError {
    // -- RunClosedError: the run's terminal chunk is stored
    #[error("run stream {key:?} is already complete")]
    AlreadyComplete { key: String },
    #[error("run stream {key:?} was completed by another writer at seq {top}")]
    CompletedElsewhere { key: String, top: u64 },
    // -- RunCancelled (a RunClosedError): the run's terminal is a cancel's
    #[error("run stream {key:?} was cancelled")]
    Cancelled { key: String },
    // -- StaleWriterError: another writer has written to the run
    #[error("run stream {key:?} vanished (expired or deleted) after seq {after}")]
    Vanished { key: String, after: u64 },
    #[error("run stream {key:?}: seq {top} was written by another writer")]
    Overwritten { key: String, top: u64 },
    #[error("run stream {key:?} is at seq {top}, not {expected}: another writer has written to it")]
    Diverged { key: String, top: u64, expected: u64 },
    // -- WriteTimeout: the caller's timeout ran out
    #[error("run stream {key:?} could not be opened within {}: Redis did not answer", secs(.timeout))]
    OpenTimeout { key: String, timeout: Duration },
    #[error("{pending} chunks waiting for Redis; no room within {}", secs(.timeout))]
    NoRoom { pending: usize, timeout: Duration },
    #[error("flush did not finish within {}", secs(.timeout))]
    FlushTimeout { timeout: Duration },
    // -- RedisUnavailable: the retry deadline passed
    #[error("Redis unreachable: {0}")]
    Unreachable(LinkFailure),
    #[error("Redis unreachable for {}: {failure}", secs(.retry_timeout))]
    UnreachableFor { retry_timeout: Duration, failure: LinkFailure },
    // -- SSERedisError: Redis refused, or the engine cannot go on
    #[error("Redis refused a command: {0}")]
    CommandRefused(RedisError),
    #[error("Redis refused a batch: {0}")]
    BatchRefused(RedisError),
    #[error("Redis refused a batch for {key:?}: {source}")]
    RunBatchRefused { key: String, source: RedisError },
    #[error("Redis refused a read: {0}")]
    ReadRefused(RedisError),
    #[error("Redis refused a chunk of {size} bytes for {key:?} (over its proto-max-bulk-len?): {source}")]
    ChunkRefused { key: String, size: usize, source: RedisError },
    #[error("Redis refused writes for {}: out of memory (maxmemory): {source}", secs(.retry_timeout))]
    OutOfMemory { retry_timeout: Duration, source: RedisError },
    #[error("{key:?} holds a value that is not a stream")]
    NotAStream { key: String },
    #[error("unexpected script reply {0:?}")]
    UnexpectedReply(Value),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("cannot start the writer thread: {0}")]
    Thread(Arc<std::io::Error>),
    #[error("no OS randomness for the writer id: {0}")]
    NoRandomness(getrandom::Error),
    #[error("the writer is closed")]
    EngineClosed,
}

/// What a link did when it gave up, in words: a read the socket timeout
/// ended is a link that went silent (which the OS calls "Resource temporarily
/// unavailable (os error 11)").
#[derive(Clone, Debug, Error)]
pub enum LinkFailure {
    #[error("no reply within {} (timed out)", secs(.0))]
    Silent(Duration),
    #[error("{0}")]
    Broken(RedisError),
    /// Not a broken link, but retried like one: a batch is not safe until replicated.
    #[error("{acked} of {wanted} replicas acknowledged within {timeout_ms} ms")]
    TooFewReplicas { acked: u64, wanted: u64, timeout_ms: u64 },
}

impl LinkFailure {
    fn of(err: &RedisError, socket_timeout: Duration) -> LinkFailure {
        if err.is_timeout() {
            LinkFailure::Silent(socket_timeout)
        } else {
            LinkFailure::Broken(err.clone())
        }
    }
}

/// Seconds as both engines word them: `30.0s`, `0.5s`.
fn secs(duration: &Duration) -> String {
    format!("{:?}s", duration.as_secs_f64())
}

pub struct Options {
    pub flush_size: usize,
    pub ttl: Option<u64>,
    pub max_len: Option<u64>,
    pub max_pending: usize,
    pub retry_timeout: Duration,
    pub connect_timeout: Duration,
    pub socket_timeout: Duration,
    /// Acknowledge a batch only once this many replicas have it (`WAIT`); 0: off.
    pub wait_replicas: u64,
    pub wait_timeout: Duration,
    pub cluster: bool,
}

/// What a queued chunk is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chunk,
    Terminal,
    /// The error terminal (`fail`), which may end a broken run too.
    ErrorTerminal,
}

struct Chunk {
    seq: u64,
    data: String,
    timestamp: u64,
    complete: bool,
}

/// What the engine knows of one open run. `epoch` tells a run apart from a
/// later run under the same key (the Python twin uses object identity).
struct Run {
    epoch: u64,
    queue: VecDeque<Chunk>,
    next_seq: u64,
    stored: u64,
    /// The top found when the run was opened: a seq above it is one this
    /// writer handed out, and a batch after it must follow its own entry.
    opened: u64,
    closing: bool,
    /// Set when a batch failed: the run is broken for this writer for good.
    error: Option<WriteError>,
    /// The queued terminal is the error terminal of a broken run.
    ending: bool,
    ready: bool,
    in_flight: usize,
    /// The sender connection that stored its last batch: the next batch sent
    /// on it may skip reading the stream's top (see `append.lua`, trusted).
    trusted_on: Option<u64>,
}

impl Run {
    /// A write would wait for room: the buffer is full and this run already
    /// has its share pending (a batch, or the whole buffer if smaller). A run
    /// with less never waits, so one busy run cannot hold every other run's
    /// chunks back.
    fn must_wait(&self, state_pending: usize, opts: &Options) -> bool {
        self.error.is_none()
            && state_pending >= opts.max_pending
            && self.queue.len() + self.in_flight >= opts.flush_size.min(opts.max_pending)
    }
}

/// A run being opened by the sender, and the callers waiting for it.
#[derive(Default)]
struct Opening {
    waiting: usize,
    failed: Option<WriteError>,
}

#[derive(Default, Clone)]
pub struct Stats {
    pub chunks: u64,
    pub batches: u64,
    pub pipelines: u64,
    pub retries: u64,
    pub errors: u64,
    pub pending: u64,
    pub runs: u64,
}

#[derive(Default)]
struct State {
    runs: HashMap<String, Run>,
    ready: VecDeque<String>,
    opening: HashMap<String, Opening>,
    to_open: Vec<String>,
    pending: usize,
    /// Broken runs whose error no flush has reported yet.
    failed: Vec<(String, u64)>,
    closed: bool,
    stats: Stats,
    next_epoch: u64,
    /// Terminals that found their run completed by another writer, so
    /// `complete` can say it was a no-op (the latest few only: bounded).
    superseded: VecDeque<(String, u64)>,
    /// Runs a cancel ended under this writer: (key, first seq refused), so
    /// `complete` raises `RunCancelled` rather than returning (bounded too).
    cancelled: VecDeque<(String, u64)>,
    /// Retries and give-ups with their cause, until the face logs them.
    events: Events,
}

impl State {
    fn run(&self, key: &str, epoch: u64) -> Option<&Run> {
        self.runs.get(key).filter(|r| r.epoch == epoch)
    }

    /// The run's error if it is broken, now seen by the caller (so a flush of
    /// every run does not report it again); the run stays broken.
    fn report(&mut self, key: &str, epoch: u64) -> Result<(), WriteError> {
        self.failed.retain(|(k, g)| !(k == key && *g == epoch));
        match self.run(key, epoch).and_then(|r| r.error.clone()) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn has_work(&self) -> bool {
        !self.ready.is_empty() || !self.to_open.is_empty()
    }
}

struct Batch {
    key: String,
    epoch: u64,
    chunks: Vec<Chunk>,
    trusted_on: Option<u64>,
    /// The seq before the batch is one this writer handed out: the stream's
    /// top must be its own entry (mode 'o' of `append.lua`).
    own: bool,
    /// The error terminal of a broken run: stored after this seq (what the
    /// writer last stored), across the refused chunks' gap.
    after_break: Option<u64>,
}

impl Batch {
    fn large(&self) -> bool {
        self.chunks.iter().any(|c| c.data.len() > LARGE_CHUNK_BYTES)
    }
}

enum Outcome {
    Stored,
    AlreadyComplete,
    /// The run's terminal is a cancel's: the run ended, not this writer's error.
    Cancelled,
    Failed(WriteError),
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    opts: Options,
    writer_id: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a change, at most `left` (`None`: as long as it takes).
    fn wait<'a>(&self, guard: MutexGuard<'a, State>, left: Option<Duration>) -> MutexGuard<'a, State> {
        match left {
            None => self.changed.wait(guard).unwrap_or_else(|p| p.into_inner()),
            Some(left) => self.changed.wait_timeout(guard, left).map_or_else(|p| p.into_inner().0, |r| r.0),
        }
    }
}

pub struct Engine {
    shared: Arc<Shared>,
    target: Arc<Target>,
    control: Mutex<Option<Link>>,
    script: redis::Script,
    sender: Mutex<Option<JoinHandle<()>>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

impl Engine {
    pub fn new(url: &str, mut opts: Options) -> Result<Engine, WriteError> {
        // Trusted (the binding checks them), but a zero must not stall a write.
        opts.flush_size = opts.flush_size.max(1);
        opts.max_pending = opts.max_pending.max(1);
        let target = Arc::new(Target::new(url, opts.cluster)?);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            writer_id: writer_id()?,
            opts,
        });
        let sender = Sender::new(target.clone(), shared.clone());
        let handle = std::thread::Builder::new()
            .name("sse-redis-writer".into())
            .spawn(move || sender.run())
            .map_err(|e| WriteError::Thread(Arc::new(e)))?;
        Ok(Engine {
            shared,
            target,
            control: Mutex::new(None),
            script: redis::Script::new(APPEND_SCRIPT),
            sender: Mutex::new(Some(handle)),
        })
    }

    /// A command on the control connection, reconnecting and retrying (every
    /// control command is idempotent) until the retry deadline.
    fn control<T>(&self, f: impl Fn(&mut Link) -> RedisResult<T>) -> Result<T, WriteError> {
        let opts = &self.shared.opts;
        let deadline = Instant::now() + opts.retry_timeout;
        let mut delay = Duration::from_millis(10);
        let mut slot = self.control.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let result = match slot.as_mut() {
                Some(con) => f(con),
                None => self.target.connect(opts.connect_timeout, Some(opts.socket_timeout)).and_then(|mut con| {
                    f(&mut con).map(|r| (con, r)).map(|(con, r)| {
                        *slot = Some(con);
                        r
                    })
                }),
            };
            let err = match result {
                Ok(value) => return Ok(value),
                Err(err) if !links::is_link_error(&err) => return Err(WriteError::CommandRefused(err)),
                Err(err) => err,
            };
            *slot = None;
            if Instant::now() + delay > deadline || self.shared.lock().closed {
                return Err(WriteError::Unreachable(LinkFailure::of(&err, opts.socket_timeout)));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// Has the sender learn where the run stands in Redis (first write only)
    /// and waits for it, at most `timeout`; returns the lock.
    fn opened<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        key: &str,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<MutexGuard<'a, State>, WriteError> {
        if state.runs.contains_key(key) {
            return Ok(state);
        }
        if !state.opening.contains_key(key) {
            state.to_open.push(key.to_owned());
            self.shared.changed.notify_all();
        }
        state.opening.entry(key.to_owned()).or_default().waiting += 1;
        let result = loop {
            if state.closed {
                break Err(WriteError::EngineClosed);
            }
            if state.runs.contains_key(key) {
                break Ok(());
            }
            if let Some(error) = state.opening.get(key).and_then(|o| o.failed.clone()) {
                break Err(error);
            }
            let left = remaining(deadline);
            if left == Some(Duration::ZERO) {
                break Err(WriteError::OpenTimeout { key: key.to_owned(), timeout: timeout.unwrap_or_default() });
            }
            state = self.shared.wait(state, left);
        };
        if let Some(opening) = state.opening.get_mut(key) {
            opening.waiting -= 1;
            if opening.waiting == 0 && opening.failed.is_some() {
                state.opening.remove(key);
            }
        }
        result.map(|()| state)
    }

    /// Queues one chunk and returns its seq id; waits for the run to open and
    /// for buffer space, up to `timeout` in all.
    pub fn write(&self, key: &str, data: String, kind: Kind, timeout: Option<Duration>) -> Result<u64, WriteError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut data = data;
        loop {
            match self.try_enqueue(key, data, kind)? {
                Ok(seq) => return Ok(seq),
                Err(back) => data = back,
            }
            self.writable(key, deadline, timeout)?;
        }
    }

    /// Waits until a write to `key` would not wait (the run is open and there
    /// is room, or the write would fail at once), at most `timeout`; queues nothing.
    pub fn wait_writable(&self, key: &str, timeout: Option<Duration>) -> Result<(), WriteError> {
        self.writable(key, timeout.map(|t| Instant::now() + t), timeout)
    }

    fn writable(&self, key: &str, deadline: Option<Instant>, timeout: Option<Duration>) -> Result<(), WriteError> {
        let mut state = self.opened(self.shared.lock(), key, deadline, timeout)?;
        loop {
            if state.closed {
                return Err(WriteError::EngineClosed);
            }
            match state.runs.get(key) {
                None => return Ok(()), // finished or deleted meanwhile: the write re-opens it
                Some(run) if !run.must_wait(state.pending, &self.shared.opts) => return Ok(()),
                Some(_) => {}
            }
            let left = remaining(deadline);
            if left == Some(Duration::ZERO) {
                return Err(WriteError::NoRoom { pending: state.pending, timeout: timeout.unwrap_or_default() });
            }
            state = self.shared.wait(state, left);
        }
    }

    /// `write` that never waits: `None` when the run is not open yet or the buffer is full.
    pub fn try_write(&self, key: &str, data: String, kind: Kind) -> Result<Option<u64>, WriteError> {
        Ok(self.try_enqueue(key, data, kind)?.ok())
    }

    /// `try_write` that hands `data` back (`Err`) when the write would have to
    /// wait, so a caller falling back to `write` needs no copy of it.
    pub fn try_enqueue(&self, key: &str, data: String, kind: Kind) -> Result<Result<u64, String>, WriteError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(WriteError::EngineClosed);
        }
        let pending = state.pending;
        let Some(run) = state.runs.get_mut(key) else { return Ok(Err(data)) };
        if run.error.is_some() {
            if kind != Kind::ErrorTerminal || run.closing {
                let epoch = run.epoch;
                return state.report(key, epoch).map(|()| Err(data));
            }
            run.ending = true;
        } else if run.closing {
            return Err(WriteError::AlreadyComplete { key: key.to_owned() });
        } else if run.must_wait(pending, &self.shared.opts) {
            return Ok(Err(data));
        }
        let seq = run.next_seq;
        let complete = kind != Kind::Chunk;
        run.next_seq += 1;
        run.closing = complete;
        run.queue.push_back(Chunk { seq, data, timestamp: now_ms(), complete });
        let newly_ready = !run.ready;
        run.ready = true;
        state.pending += 1;
        if newly_ready {
            state.ready.push_back(key.to_owned());
            self.shared.changed.notify_all();
        }
        Ok(Ok(seq))
    }

    /// Returns once every chunk queued so far (for `key`, or all runs) is
    /// stored. For one run, raises its error whenever it is broken; for all,
    /// raises what failed since the last flush, each error once.
    pub fn flush(&self, timeout: Option<Duration>, key: Option<&str>) -> Result<(), WriteError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.shared.lock();
        let targets: Vec<(String, u64, u64)> = state
            .runs
            .iter()
            .filter(|(k, _)| key.is_none_or(|want| want == k.as_str()))
            .map(|(k, r)| (k.clone(), r.epoch, r.next_seq - 1))
            .collect();
        for (k, epoch, target) in &targets {
            // A broken run's error terminal is still awaited: it may yet be stored.
            while state.run(k, *epoch).is_some_and(|r| r.stored < *target && (r.error.is_none() || r.ending)) {
                let left = remaining(deadline);
                if left == Some(Duration::ZERO) {
                    return Err(WriteError::FlushTimeout { timeout: timeout.unwrap_or_default() });
                }
                state = self.shared.wait(state, left);
            }
        }
        match key {
            None => match state.failed.first().cloned() {
                Some((k, epoch)) => state.report(&k, epoch),
                None => Ok(()),
            },
            Some(k) => match targets.first() {
                Some((_, epoch, _)) => state.report(k, *epoch),
                None => Ok(()),
            },
        }
    }

    /// Whether the terminal queued as `seq` found the run already completed
    /// by another writer (so it stored nothing); answered once. `Cancelled`
    /// when a cancel ended the run before it.
    pub fn superseded(&self, key: &str, seq: u64) -> Result<bool, WriteError> {
        let mut state = self.shared.lock();
        if let Some(i) = state.cancelled.iter().position(|(k, s)| k == key && *s <= seq) {
            state.cancelled.remove(i);
            return Err(WriteError::Cancelled { key: key.to_owned() });
        }
        Ok(match state.superseded.iter().position(|(k, s)| k == key && *s == seq) {
            Some(i) => state.superseded.remove(i).is_some(),
            None => false,
        })
    }

    /// One `append.lua` call in a run control mode (`c`, `s`, `q`) on the
    /// control connection; its one batch reply.
    fn control_script(&self, key: &str, writer: &str, mode: &str, data: &str) -> Result<Vec<Value>, WriteError> {
        let opts = &self.shared.opts;
        let max_len = opts.max_len.map(|n| n.to_string()).unwrap_or_default();
        let ttl = opts.ttl.map(|n| n.to_string()).unwrap_or_default();
        let notice = if self.target.is_cluster() { "s" } else { "p" };
        let complete = if mode == "c" { "1" } else { "" };
        let reply: Value = self.control(|c| {
            self.script
                .key(key)
                .arg(writer)
                .arg(&max_len)
                .arg(&ttl)
                .arg(notice)
                .arg(0)
                .arg(1)
                .arg(mode)
                .arg(data)
                .arg(now_ms())
                .arg(complete)
                .invoke(c)
        })?;
        let batch = match reply {
            Value::Array(mut batches) if batches.len() == 1 => match batches.pop() {
                Some(Value::Array(batch)) if !batch.is_empty() => batch,
                Some(other) => return Err(WriteError::UnexpectedReply(other)),
                None => return Err(WriteError::UnexpectedReply(Value::Nil)),
            },
            other => return Err(WriteError::UnexpectedReply(other)),
        };
        if text_of(&batch[0]) == "wrongtype" {
            return Err(WriteError::NotAStream { key: key.to_owned() });
        }
        Ok(batch)
    }

    /// Stores `data` as the run's cancel terminal after whatever its top is:
    /// its seq, or `None` when the run already ended or is unknown. A token
    /// of its own per call: a retry after a lost reply finds its own
    /// terminal (`dup`) and still answers with its seq.
    pub fn cancel(&self, key: &str, data: &str) -> Result<Option<u64>, WriteError> {
        let batch = self.control_script(key, &writer_id()?, "c", data)?;
        Ok(match text_of(&batch[0]).as_str() {
            "ok" | "dup" => Some(int_of(batch.get(1)).unwrap_or(0)),
            _ => None,
        })
    }

    /// Registers the run as running; `false` when it already ended.
    pub fn start(&self, key: &str) -> Result<bool, WriteError> {
        let batch = self.control_script(key, &self.shared.writer_id, "s", "")?;
        Ok(text_of(&batch[0]) == "ok")
    }

    /// The run's status, or `None` when it has no status and no stream.
    pub fn status(&self, key: &str) -> Result<Option<RunStatus>, WriteError> {
        let batch = self.control_script(key, &self.shared.writer_id, "q", "")?;
        if text_of(&batch[0]) != "ok" || batch.len() < 6 {
            return Ok(None);
        }
        let reason = text_of(&batch[3]);
        Ok(Some((
            text_of(&batch[1]),
            int_of(batch.get(2)).unwrap_or(0),
            (!reason.is_empty()).then_some(reason),
            int_of(batch.get(4)),
            int_of(batch.get(5)),
        )))
    }

    pub fn last_seq(&self, key: &str) -> Result<u64, WriteError> {
        let reply: Value =
            self.control(|c| redis::cmd("XREVRANGE").arg(key).arg("+").arg("-").arg("COUNT").arg(1).query(c))?;
        Ok(parse_range(&reply).first().map_or(0, |e| e.seq()))
    }

    /// Deletes the run's stream and forgets the run (a broken one too), once
    /// its batch in flight (if any) has landed, so nothing of it is written
    /// after the DEL.
    pub fn delete(&self, key: &str) -> Result<(), WriteError> {
        {
            let mut state = self.shared.lock();
            if let Some(run) = state.runs.get_mut(key) {
                let (epoch, dropped) = (run.epoch, run.queue.len());
                run.queue.clear();
                run.closing = true; // no new writes while it goes
                run.ending = false;
                state.pending -= dropped;
                while state.run(key, epoch).is_some_and(|r| r.in_flight > 0) {
                    state = self.shared.wait(state, None);
                }
                if state.run(key, epoch).is_some() {
                    state.runs.remove(key);
                    state.failed.retain(|(k, g)| !(k == key && *g == epoch));
                }
                self.shared.changed.notify_all();
            }
        }
        self.control(|c| redis::cmd("DEL").arg(key).query::<()>(c))?;
        // Its status too; a user without rights on it (least privilege) keeps it.
        match self.control(|c| redis::cmd("DEL").arg(status_key(key)).query::<()>(c)) {
            Err(WriteError::CommandRefused(err)) if err.code() == Some("NOPERM") => Ok(()),
            other => other,
        }
    }

    pub fn stats(&self) -> Stats {
        let state = self.shared.lock();
        Stats { pending: state.pending as u64, runs: state.runs.len() as u64, ..state.stats.clone() }
    }

    /// The retries and give-ups since the last call, oldest first, as
    /// `(kind, cause)`: `retry`, `gave_up`, `dropped` (events not kept).
    pub fn take_events(&self) -> Vec<(&'static str, String)> {
        self.shared.lock().events.take()
    }

    /// Flushes, stops the sender thread, and drops the connections.
    pub fn close(&self, timeout: Option<Duration>) -> Result<(), WriteError> {
        if self.shared.lock().closed {
            return Ok(());
        }
        let flushed = self.flush(timeout, None);
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        // Detached, not joined: a sender stuck on a dead link must not hold up
        // close (it gives up at its next retry, which sees `closed`).
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = None;
        flushed
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Stop the sender without waiting: nothing may block interpreter exit.
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

/// 128 bits from the OS: unique across processes, forks and hosts (a forked
/// child builds its own engine, so draws its own id).
fn writer_id() -> Result<String, WriteError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(WriteError::NoRandomness)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What one round sends: runs to open, then batches.
struct Work {
    opens: Vec<String>,
    batches: Vec<Batch>,
}

/// The background thread: takes what is ready, sends it, records the outcome.
struct Sender {
    target: Arc<Target>,
    shared: Arc<Shared>,
    con: Option<Link>,
    /// Which connection `con` is: bumped at each connect.
    con_id: u64,
    script: redis::Script,
    script_loaded: bool,
}

impl Sender {
    fn new(target: Arc<Target>, shared: Arc<Shared>) -> Sender {
        Sender { target, shared, con: None, con_id: 0, script: redis::Script::new(APPEND_SCRIPT), script_loaded: false }
    }

    fn run(mut self) {
        loop {
            let mut work = {
                let mut state = self.shared.lock();
                while !state.has_work() && !state.closed {
                    state = self.shared.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                if state.closed {
                    let opens = std::mem::take(&mut state.to_open);
                    fail_opens(&mut state, opens, &WriteError::EngineClosed);
                    self.shared.changed.notify_all();
                    if !state.has_work() {
                        return;
                    }
                }
                let opens = std::mem::take(&mut state.to_open);
                Work { opens, batches: take_batches(&mut state, self.shared.opts.flush_size) }
            };
            if self.target.is_cluster() {
                // One script call covers one slot: gather each slot's batches
                // (a stable sort keeps every run's batches in seq order).
                work.batches.sort_by(|a, b| links::slot_group(&a.key).cmp(links::slot_group(&b.key)));
            }
            let (tops, outcomes) = self.send_all(&work);
            let mut state = self.shared.lock();
            apply_opens(&mut state, work.opens, tops);
            apply(&mut state, work.batches, outcomes, self.con_id);
            self.shared.changed.notify_all();
        }
    }

    /// The opens and the batches without a large chunk in one pipeline, then
    /// each batch holding one on its own (in order, so each run's batches
    /// still land in seq order).
    fn send_all(&mut self, work: &Work) -> (Vec<Result<Value, WriteError>>, Vec<Outcome>) {
        let mut outcomes = Vec::with_capacity(work.batches.len());
        let mut tops = Vec::new();
        let mut start = 0;
        let mut opens: &[String] = &work.opens;
        while start < work.batches.len() || !opens.is_empty() {
            let large = work.batches.get(start).is_some_and(Batch::large);
            let end = match (large, opens.is_empty()) {
                (true, false) => start, // the opens first, on their own
                (true, true) => start + 1,
                (false, _) => {
                    (start..work.batches.len()).find(|&i| work.batches[i].large()).unwrap_or(work.batches.len())
                }
            };
            let isolated = large && opens.is_empty();
            let (t, o) = self.send(opens, &work.batches[start..end], isolated);
            if !opens.is_empty() {
                tops = t;
                opens = &[];
            }
            outcomes.extend(o);
            start = end;
        }
        (tops, outcomes)
    }

    /// One pipeline, retried (safely: the script spots its own batches) until
    /// the deadline. `isolated`: one batch with a large chunk, which a server
    /// may refuse by dropping the connection.
    fn send(
        &mut self,
        opens: &[String],
        batches: &[Batch],
        isolated: bool,
    ) -> (Vec<Result<Value, WriteError>>, Vec<Outcome>) {
        let deadline = Instant::now() + self.shared.opts.retry_timeout;
        let mut delay = Duration::from_millis(10);
        let mut refusals = 0;
        let fail_all = |error: WriteError| {
            (
                opens.iter().map(|_| Err(error.clone())).collect(),
                batches.iter().map(|_| Outcome::Failed(error.clone())).collect(),
            )
        };
        loop {
            let failure = match self.pipeline(opens, batches) {
                Ok((tops, replies)) => {
                    // "Not now" (a restarted server loading, or out of memory):
                    // the whole pipeline again, which the script makes safe;
                    // at the deadline, what did land counts and the rest fails.
                    let transient = tops.iter().chain(&replies).find_map(|r| match r {
                        Err(e) if links::is_transient_reply(e) => Some(e.clone()),
                        _ => None,
                    });
                    let last_try = Instant::now() + delay > deadline || self.shared.lock().closed;
                    match transient {
                        Some(err) if !last_try => SendError::Redis(err),
                        _ => return self.settle(tops, replies, batches, isolated),
                    }
                }
                Err(failure) => failure,
            };
            if let SendError::Redis(err) = &failure {
                if !links::is_link_error(err) {
                    self.con = None; // e.g. a protocol error, after which the server closes the link
                    let error = match isolated {
                        true => refused_chunk(&batches[0], err),
                        false => WriteError::BatchRefused(err.clone()),
                    };
                    return fail_all(error);
                }
                if !links::is_transient_reply(err) {
                    self.con = None;
                    // The server dropping the link while a large chunk went, twice,
                    // and answering a fresh connection at once: it refused the chunk.
                    if isolated && self.server_answers() {
                        refusals += 1;
                        if refusals == 2 {
                            return fail_all(refused_chunk(&batches[0], err));
                        }
                    }
                }
            }
            let cause = failure.cause(self.shared.opts.socket_timeout);
            let mut state = self.shared.lock();
            state.stats.retries += 1;
            if Instant::now() + delay > deadline || state.closed {
                drop(state);
                return fail_all(self.gave_up(failure));
            }
            state.events.push("retry", cause);
            drop(self.shared.wait(state, Some(delay))); // woken early by close
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// The last try's replies as each open's top and each batch's outcome (a
    /// "not now" reply left at the deadline fails its own open or batch).
    fn settle(
        &mut self,
        tops: Vec<RedisResult<Value>>,
        replies: Vec<RedisResult<Value>>,
        batches: &[Batch],
        isolated: bool,
    ) -> (Vec<Result<Value, WriteError>>, Vec<Outcome>) {
        let tops = tops
            .into_iter()
            .map(|r| {
                r.map_err(|e| match links::is_transient_reply(&e) {
                    true => self.gave_up(SendError::Redis(e)),
                    false => WriteError::ReadRefused(e),
                })
            })
            .collect();
        let outcomes = batches
            .iter()
            .zip(replies)
            .map(|(b, r)| match r {
                Err(e) if links::is_transient_reply(&e) => Outcome::Failed(self.gave_up(SendError::Redis(e))),
                Err(e) if isolated => Outcome::Failed(refused_chunk(b, &e)),
                r => outcome(b, r),
            })
            .collect::<Vec<_>>();
        if isolated && matches!(outcomes.first(), Some(Outcome::Failed(_))) {
            self.con = None; // a server refusing a bulk that long drops the link too
        }
        (tops, outcomes)
    }

    /// The error of a pipeline that failed until the retry deadline (an
    /// event too, which the face logs). Called without the lock held.
    fn gave_up(&self, failure: SendError) -> WriteError {
        let opts = &self.shared.opts;
        let retry_timeout = opts.retry_timeout;
        self.shared.lock().events.push("gave_up", failure.cause(opts.socket_timeout));
        let failure = match failure {
            SendError::Redis(err) if err.code() == Some("OOM") => {
                return WriteError::OutOfMemory { retry_timeout, source: err }
            }
            SendError::Redis(err) => LinkFailure::of(&err, opts.socket_timeout),
            SendError::TooFewReplicas(failure) => failure,
        };
        WriteError::UnreachableFor { retry_timeout, failure }
    }

    fn server_answers(&self) -> bool {
        let opts = &self.shared.opts;
        self.target
            .connect(opts.connect_timeout, Some(opts.connect_timeout))
            .and_then(|mut con| con.pipeline(vec![redis::cmd("PING")]))
            .is_ok_and(|replies| replies.iter().all(|r| r.is_ok()))
    }

    /// The opens' `XREVRANGE`s and one script call per group of batches (then
    /// `WAIT`, when asked): one reply per open and one per batch. Sent again,
    /// once, when the server had lost the script.
    fn pipeline(&mut self, opens: &[String], batches: &[Batch]) -> Result<Replies, SendError> {
        let groups = groups(batches, self.target.is_cluster());
        let noscript = |replies: &[RedisResult<Value>]| {
            replies.iter().any(|r| matches!(r, Err(e) if e.code() == Some("NOSCRIPT")))
        };
        let mut replies = self.exchange(opens, &groups)?;
        if noscript(&replies) {
            self.script_loaded = false; // the server lost its scripts (restart, SCRIPT FLUSH, failover)
            replies = self.exchange(opens, &groups)?;
        }
        if replies.iter().any(|r| matches!(r, Err(e) if links::is_transient_reply(e) && e.code() != Some("OOM"))) {
            self.script_loaded = false; // a restarted server (-LOADING) has no scripts either
        }
        if self.shared.opts.wait_replicas > 0 && !batches.is_empty() && !noscript(&replies) {
            self.wait_replicas(batches)?;
        }
        let calls = replies.split_off(opens.len());
        Ok((replies, per_batch(&groups, calls)))
    }

    /// Connects when needed, loads the script when needed, and sends the
    /// commands: one result per command, on either kind of link.
    fn exchange(&mut self, opens: &[String], groups: &[&[Batch]]) -> RedisResult<Vec<RedisResult<Value>>> {
        let cmds = {
            let mut cmds: Vec<Cmd> = opens.iter().map(|key| read_top(key)).collect();
            if !groups.is_empty() {
                self.load_script()?;
            }
            let con_id = self.connect()?.1;
            let mut seen = std::collections::HashSet::new();
            cmds.extend(groups.iter().map(|group| self.script_call(group, con_id, &mut seen)));
            cmds
        };
        self.shared.lock().stats.pipelines += 1;
        self.connect()?.0.pipeline(cmds)
    }

    /// The sender's link and which one it is, made when there is none.
    fn connect(&mut self) -> RedisResult<(&mut Link, u64)> {
        if self.con.is_none() {
            let opts = &self.shared.opts;
            self.con = Some(self.target.connect(opts.connect_timeout, Some(opts.socket_timeout))?);
            self.con_id += 1;
        }
        match self.con.as_mut() {
            Some(con) => Ok((con, self.con_id)),
            None => Err(RedisError::from((redis::ErrorKind::Client, "no connection"))),
        }
    }

    fn load_script(&mut self) -> RedisResult<()> {
        if !self.script_loaded {
            let script = self.script.clone();
            script.prepare_invoke().load(self.connect()?.0)?; // every master, on a cluster
            self.script_loaded = true;
        }
        Ok(())
    }

    /// One `EVALSHA` of `append.lua` for a group of batches.
    ///
    /// Trusted: the run's last batch landed on this very connection. Only the
    /// first batch of a run in a pipeline (`seen`); the script trusts the next
    /// ones of a call itself. Never on a cluster, where the client may move
    /// to another node (a promoted replica) without a new connection.
    fn script_call<'b>(&self, group: &'b [Batch], con_id: u64, seen: &mut std::collections::HashSet<&'b str>) -> Cmd {
        let opts = &self.shared.opts;
        let max_len = opts.max_len.map(|n| n.to_string()).unwrap_or_default();
        let ttl = opts.ttl.map(|n| n.to_string()).unwrap_or_default();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(group.len());
        for batch in group {
            cmd.arg(&batch.key);
        }
        // The notice per stored batch: SPUBLISH keeps it on the key's shard.
        let notice = if self.target.is_cluster() { "s" } else { "p" };
        cmd.arg(&self.shared.writer_id).arg(&max_len).arg(&ttl).arg(notice);
        for batch in group {
            let trusted =
                seen.insert(batch.key.as_str()) && !self.target.is_cluster() && batch.trusted_on == Some(con_id);
            let mode = match batch.after_break {
                Some(after) => format!("a{after}"),
                None if trusted => "1".to_owned(),
                None if batch.own => "o".to_owned(),
                None => String::new(),
            };
            cmd.arg(batch.chunks[0].seq).arg(batch.chunks.len()).arg(mode);
            for chunk in &batch.chunks {
                cmd.arg(&chunk.data).arg(chunk.timestamp).arg(if chunk.complete { "1" } else { "" });
            }
        }
        cmd
    }

    /// `WAIT` for the replicas: until they have the batches, they are not
    /// acknowledged, and the whole pipeline is sent again (the script skips
    /// what is stored).
    fn wait_replicas(&mut self, batches: &[Batch]) -> Result<(), SendError> {
        let (wanted, timeout_ms) = {
            let opts = &self.shared.opts;
            (opts.wait_replicas, opts.wait_timeout.as_millis().max(1) as u64)
        };
        let keys: Vec<&str> = batches.iter().map(|b| b.key.as_str()).collect();
        let acked = self.connect()?.0.wait_replicas(&keys, wanted, timeout_ms)?;
        if acked < wanted {
            return Err(SendError::TooFewReplicas(LinkFailure::TooFewReplicas { acked, wanted, timeout_ms }));
        }
        Ok(())
    }
}

/// A pipeline's replies: one per open, one per batch.
type Replies = (Vec<RedisResult<Value>>, Vec<RedisResult<Value>>);

/// Why a pipeline did not go through: Redis's error, or too few replicas
/// acknowledged it (retried like a broken link: not safe until replicated).
enum SendError {
    Redis(RedisError),
    TooFewReplicas(LinkFailure),
}

impl SendError {
    /// The failure in the words both engines log it with.
    fn cause(&self, socket_timeout: Duration) -> String {
        match self {
            SendError::Redis(err) => links::cause(err, socket_timeout),
            SendError::TooFewReplicas(failure) => failure.to_string(),
        }
    }
}

impl From<RedisError> for SendError {
    fn from(err: RedisError) -> SendError {
        SendError::Redis(err)
    }
}

/// A reply item as text (`""` when it is not one).
fn text_of(value: &Value) -> String {
    match value {
        Value::BulkString(s) => String::from_utf8_lossy(s).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

/// A reply item as a decimal number (`None` when it is not one): an integer,
/// or a timestamp field's text of ASCII digits.
fn int_of(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => {
            let text = text_of(other);
            match !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                true => text.parse().ok(),
                false => None,
            }
        }
    }
}

/// The `XREVRANGE` that reads a run's stored top when it opens.
fn read_top(key: &str) -> Cmd {
    redis::cmd("XREVRANGE").arg(key).arg("+").arg("-").arg("COUNT").arg(1).clone()
}

/// A call's reply holds one reply per batch; a whole call failing fails each of them.
fn per_batch(groups: &[&[Batch]], calls: Vec<RedisResult<Value>>) -> Vec<RedisResult<Value>> {
    let mut per_batch = Vec::with_capacity(groups.iter().map(|g| g.len()).sum());
    for (group, reply) in groups.iter().zip(calls) {
        match reply {
            Ok(Value::Array(items)) if items.len() == group.len() => per_batch.extend(items.into_iter().map(Ok)),
            Ok(other) => per_batch.extend(group.iter().map(|_| Ok(other.clone()))),
            Err(e) => per_batch.extend(group.iter().map(|_| Err(e.clone()))),
        }
    }
    per_batch
}

fn refused_chunk(batch: &Batch, err: &RedisError) -> WriteError {
    let size = batch.chunks.iter().map(|c| c.data.len()).max().unwrap_or(0);
    WriteError::ChunkRefused { key: batch.key.clone(), size, source: err.clone() }
}

/// Consecutive batches, cut into script calls of at most `MAX_CALL_CHUNKS`
/// chunks (and, on a cluster, of one slot each).
fn groups(batches: &[Batch], cluster: bool) -> Vec<&[Batch]> {
    let mut groups = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, batch) in batches.iter().enumerate() {
        let other_slot =
            cluster && i > start && links::slot_group(&batch.key) != links::slot_group(&batches[start].key);
        if i > start && (size + batch.chunks.len() > MAX_CALL_CHUNKS || other_slot) {
            groups.push(&batches[start..i]);
            (start, size) = (i, 0);
        }
        size += batch.chunks.len();
    }
    if start < batches.len() {
        groups.push(&batches[start..]);
    }
    groups
}

/// What is ready, taken fairly: one batch of at most `flush_size` per ready
/// run per turn, a run with more queued going to the back of the line, so a
/// busy run delays another run's chunk by one pipeline at most. A large chunk
/// is a batch of its own (see `LARGE_CHUNK_BYTES`).
fn take_batches(state: &mut State, flush_size: usize) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut room = MAX_PIPELINE_CHUNKS;
    while room > 0 {
        let Some(key) = state.ready.pop_front() else { break };
        let Some(run) = state.runs.get_mut(&key) else { continue }; // deleted meanwhile
        let mut take = 0;
        for chunk in run.queue.iter().take(flush_size.min(room)) {
            let large = chunk.data.len() > LARGE_CHUNK_BYTES;
            if large && take > 0 {
                break;
            }
            take += 1;
            if large {
                break;
            }
        }
        if take > 0 {
            run.in_flight += take;
            let chunks: Vec<Chunk> = run.queue.drain(..take).collect();
            let after_break = run.ending.then_some(run.stored);
            let own = chunks[0].seq > run.opened + 1;
            batches.push(Batch {
                key: key.clone(),
                epoch: run.epoch,
                chunks,
                trusted_on: run.trusted_on,
                own,
                after_break,
            });
            room -= take;
        }
        if run.queue.is_empty() {
            run.ready = false;
        } else {
            state.ready.push_back(key);
        }
    }
    batches
}

/// What the script's reply `{status, top seq}` means for the batch.
fn outcome(batch: &Batch, reply: RedisResult<Value>) -> Outcome {
    let key = &batch.key;
    let reply = match reply {
        Ok(Value::Array(items)) => items,
        Ok(other) => return Outcome::Failed(WriteError::UnexpectedReply(other)),
        Err(e) => return Outcome::Failed(WriteError::RunBatchRefused { key: key.clone(), source: e }),
    };
    let status = match reply.first() {
        Some(Value::BulkString(s)) => String::from_utf8_lossy(s).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    };
    let top = match reply.get(1) {
        Some(Value::Int(n)) => *n as u64,
        _ => 0,
    };
    let expected = batch.after_break.unwrap_or(batch.chunks[0].seq - 1);
    match status.as_str() {
        "ok" | "dup" => Outcome::Stored,
        "cancelled" => Outcome::Cancelled,
        "wrongtype" => Outcome::Failed(WriteError::NotAStream { key: key.clone() }),
        "closed" if batch.chunks.len() == 1 && batch.chunks[0].complete => Outcome::AlreadyComplete,
        "closed" => Outcome::Failed(WriteError::CompletedElsewhere { key: key.clone(), top }),
        _ if top == 0 => Outcome::Failed(WriteError::Vanished { key: key.clone(), after: expected }),
        _ if top == expected => Outcome::Failed(WriteError::Overwritten { key: key.clone(), top }),
        _ => Outcome::Failed(WriteError::Diverged { key: key.clone(), top, expected }),
    }
}

/// Records what each batch did.
fn apply(state: &mut State, batches: Vec<Batch>, outcomes: Vec<Outcome>, con_id: u64) {
    for (batch, outcome) in batches.into_iter().zip(outcomes) {
        state.pending -= batch.chunks.len();
        state.stats.batches += 1;
        let (key, epoch) = (batch.key, batch.epoch);
        let Some(run) = state.runs.get_mut(&key).filter(|r| r.epoch == epoch) else {
            continue; // deleted meanwhile
        };
        run.in_flight -= batch.chunks.len();
        if run.error.is_some() && batch.after_break.is_none() {
            continue; // an earlier batch of it failed
        }
        let finished = match outcome {
            Outcome::Stored => {
                let Some(last) = batch.chunks.last() else { continue }; // never empty
                run.stored = last.seq;
                run.trusted_on = Some(con_id);
                state.stats.chunks += batch.chunks.len() as u64;
                last.complete
            }
            Outcome::Cancelled => {
                // The run's end, not this writer's error: what is queued is
                // dropped, flush and close do not raise, and its next write
                // or complete raises RunCancelled (the open finds the terminal).
                if state.cancelled.len() == MAX_SUPERSEDED {
                    state.cancelled.pop_front();
                }
                let dropped = run.queue.len();
                run.queue.clear();
                state.pending -= dropped;
                state.cancelled.push_back((key.clone(), batch.chunks[0].seq));
                true
            }
            Outcome::AlreadyComplete => {
                // A second terminal: a no-op, not an error.
                if state.superseded.len() == MAX_SUPERSEDED {
                    state.superseded.pop_front();
                }
                state.superseded.push_back((key.clone(), batch.chunks[0].seq));
                true
            }
            Outcome::Failed(error) => {
                // The run is broken: what is queued is dropped, and its seq
                // ids are never handed out again (next_seq stays).
                let dropped = run.queue.len();
                run.queue.clear();
                run.error = Some(error);
                (run.ending, run.closing) = (false, false); // its error terminal may be tried again
                state.pending -= dropped;
                state.stats.errors += 1;
                if !state.failed.contains(&(key.clone(), epoch)) {
                    state.failed.push((key.clone(), epoch));
                }
                false
            }
        };
        if finished {
            state.runs.remove(&key); // bounded memory: a finished run leaves nothing
            state.failed.retain(|(k, g)| !(*k == key && *g == epoch));
        }
    }
}

/// Records each opened run's top: a run of its own, or the open's error for
/// whoever waits for it.
fn apply_opens(state: &mut State, keys: Vec<String>, tops: Vec<Result<Value, WriteError>>) {
    for (key, top) in keys.into_iter().zip(tops) {
        let top = top.and_then(|reply| match parse_range(&reply).first() {
            Some(entry) if entry.is_complete() && entry.field("cancelled") == Some("true") => {
                Err(WriteError::Cancelled { key: key.clone() })
            }
            Some(entry) if entry.is_complete() => Err(WriteError::AlreadyComplete { key: key.clone() }),
            Some(entry) => Ok(entry.seq()),
            None => Ok(0),
        });
        match top {
            Ok(top) => {
                state.opening.remove(&key);
                let epoch = state.next_epoch;
                state.next_epoch += 1;
                state.runs.entry(key).or_insert_with(|| Run {
                    epoch,
                    queue: VecDeque::new(),
                    next_seq: top + 1,
                    stored: top,
                    opened: top,
                    closing: false,
                    error: None,
                    ending: false,
                    ready: false,
                    in_flight: 0,
                    trusted_on: None,
                });
            }
            Err(error) => fail_opens(state, vec![key], &error),
        }
    }
}

/// Hands `error` to whoever waits for these runs to open.
fn fail_opens(state: &mut State, keys: Vec<String>, error: &WriteError) {
    for key in keys {
        match state.opening.get_mut(&key) {
            Some(opening) if opening.waiting > 0 => opening.failed = Some(error.clone()),
            _ => {
                state.opening.remove(&key);
            }
        }
    }
}
