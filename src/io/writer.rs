//! The writer engine (twin of `python/sse_redis/_pure/writer.py`).
//!
//! One background thread owns the pipeline connection. `write` only queues a
//! chunk and wakes it; the thread sends everything queued as one pipeline of
//! `append.lua` calls (one per run per `flush_size` chunks), and while that
//! pipeline is in flight new chunks gather for the next one (group commit).
//! A single sender means pipelines of one run never overlap, so chunks land
//! in seq order; the script makes each batch all-or-nothing and fenced, so a
//! retry after a lost reply never stores a chunk twice.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{RedisError, RedisResult, Value};

use super::conn::{self, Link, Target};
use super::entries::parse_range;

const APPEND_SCRIPT: &str = include_str!("../../python/sse_redis/append.lua");
/// Bounds on chunks per pipeline and per script call, so that one round trip,
/// and one script's time on the server, stay short.
const MAX_PIPELINE_CHUNKS: usize = 2048;
const MAX_CALL_CHUNKS: usize = 512;

#[derive(Clone, Debug)]
pub enum WriteError {
    Closed(String),
    Stale(String),
    Timeout(String),
    Unavailable(String),
    Redis(String),
    EngineClosed,
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

struct Chunk {
    seq: u64,
    data: String,
    timestamp: u64,
    complete: bool,
}

/// What the engine knows of one open run. `gen` tells a run apart from a
/// later run under the same key (the Python twin uses object identity).
struct Run {
    gen: u64,
    queue: VecDeque<Chunk>,
    next_seq: u64,
    stored: u64,
    closing: bool,
    error: Option<WriteError>,
    ready: bool,
    in_flight: usize,
    /// The sender connection that stored its last batch: the next batch sent
    /// on it may skip reading the stream's top (see `append.lua`, trusted).
    trusted_on: Option<u64>,
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
    pending: usize,
    failed: Vec<(String, u64)>,
    closed: bool,
    stats: Stats,
    next_gen: u64,
}

impl State {
    fn run(&self, key: &str, gen: u64) -> Option<&Run> {
        self.runs.get(key).filter(|r| r.gen == gen)
    }

    /// Takes the run's error out, forgetting the run; the next write re-reads Redis.
    fn deliver(&mut self, key: &str) -> WriteError {
        let run = self.runs.remove(key).expect("deliver: run present");
        self.failed.retain(|(k, g)| !(k == key && *g == run.gen));
        run.error.expect("deliver: run has an error")
    }
}

struct Batch {
    key: String,
    gen: u64,
    chunks: Vec<Chunk>,
    trusted_on: Option<u64>,
}

enum Outcome {
    Stored,
    AlreadyComplete,
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
    sender: Mutex<Option<JoinHandle<()>>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

impl Engine {
    pub fn new(url: &str, opts: Options) -> Result<Engine, WriteError> {
        let target = Arc::new(Target::new(url, opts.cluster).map_err(WriteError::Redis)?);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            writer_id: writer_id(),
            opts,
        });
        let sender = Sender::new(target.clone(), shared.clone());
        let handle = std::thread::Builder::new()
            .name("sse-redis-writer".into())
            .spawn(move || sender.run())
            .map_err(|e| WriteError::Redis(format!("cannot start the writer thread: {e}")))?;
        Ok(Engine { shared, target, control: Mutex::new(None), sender: Mutex::new(Some(handle)) })
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
                None => self.target.connect(opts.connect_timeout, Some(opts.socket_timeout))
                    .and_then(|mut con| f(&mut con).map(|r| (con, r)).map(|(con, r)| {
                        *slot = Some(con);
                        r
                    })),
            };
            let err = match result {
                Ok(value) => return Ok(value),
                Err(err) if !conn::is_link_error(&err) => {
                    return Err(WriteError::Redis(format!("Redis refused a command: {err}")))
                }
                Err(err) => err,
            };
            *slot = None;
            if Instant::now() + delay > deadline || self.shared.lock().closed {
                return Err(WriteError::Unavailable(format!("Redis unreachable: {err}")));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// `(seq_id, complete)` of the stream's last entry, `(0, false)` if none.
    fn read_top(&self, key: &str) -> Result<(u64, bool), WriteError> {
        let reply: Value = self.control(|c| {
            redis::cmd("XREVRANGE").arg(key).arg("+").arg("-").arg("COUNT").arg(1).query(c)
        })?;
        Ok(parse_range(&reply).first().map_or((0, false), |e| (e.seq(), e.is_complete())))
    }

    /// Learns where the run stands in Redis (one round trip, first write only).
    pub fn open(&self, key: &str) -> Result<(), WriteError> {
        if self.shared.lock().runs.contains_key(key) {
            return Ok(());
        }
        let (top, complete) = self.read_top(key)?;
        if complete {
            return Err(WriteError::Closed(format!("run stream {key:?} is already complete")));
        }
        let mut state = self.shared.lock();
        let gen = state.next_gen;
        state.runs.entry(key.to_owned()).or_insert_with(|| Run {
            gen,
            queue: VecDeque::new(),
            next_seq: top + 1,
            stored: top,
            closing: false,
            error: None,
            ready: false,
            in_flight: 0,
            trusted_on: None,
        });
        state.next_gen += 1;
        Ok(())
    }

    /// Queues one chunk and returns its seq id; waits for buffer space up to `timeout`.
    pub fn write(&self, key: &str, data: String, complete: bool, timeout: Option<Duration>) -> Result<u64, WriteError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut data = Some(data);
        loop {
            {
                let mut state = self.shared.lock();
                if let Some(gen) = state.runs.get(key).map(|r| r.gen) {
                    while state.pending >= self.shared.opts.max_pending
                        && state.run(key, gen).is_some_and(|r| r.error.is_none())
                        && !state.closed
                    {
                        let left = remaining(deadline);
                        if left == Some(Duration::ZERO) {
                            return Err(WriteError::Timeout(format!(
                                "{} chunks waiting for Redis; no room within {:?}",
                                state.pending,
                                timeout.unwrap_or_default()
                            )));
                        }
                        state = self.shared.wait(state, left);
                    }
                    if state.run(key, gen).is_some() {
                        return self.enqueue(&mut state, key, data.take().expect("data"), complete);
                    }
                    continue; // the run failed while we waited: report that
                }
            }
            self.open(key)?;
        }
    }

    /// `write` that never waits: `None` when the run is not open yet or the buffer is full.
    pub fn try_write(&self, key: &str, data: String, complete: bool) -> Result<Option<u64>, WriteError> {
        Ok(self.try_enqueue(key, data, complete)?.ok())
    }

    /// `try_write` that hands `data` back (`Err`) when the write would have to
    /// wait, so a caller falling back to `write` needs no copy of it.
    pub fn try_enqueue(&self, key: &str, data: String, complete: bool) -> Result<Result<u64, String>, WriteError> {
        let mut state = self.shared.lock();
        match state.runs.get(key) {
            None => Ok(Err(data)),
            Some(run) if run.error.is_none() && state.pending >= self.shared.opts.max_pending => Ok(Err(data)),
            Some(_) => self.enqueue(&mut state, key, data, complete).map(Ok),
        }
    }

    fn enqueue(&self, state: &mut State, key: &str, data: String, complete: bool) -> Result<u64, WriteError> {
        if state.closed {
            return Err(WriteError::EngineClosed);
        }
        let run = state.runs.get_mut(key).expect("enqueue: run present");
        if run.error.is_some() {
            return Err(state.deliver(key));
        }
        if run.closing {
            return Err(WriteError::Closed(format!("run stream {key:?} is already complete")));
        }
        let seq = run.next_seq;
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
        Ok(seq)
    }

    /// Returns once every chunk queued so far (for `key`, or all runs) is
    /// stored; raises what failed since the last flush.
    pub fn flush(&self, timeout: Option<Duration>, key: Option<&str>) -> Result<(), WriteError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.shared.lock();
        let targets: Vec<(String, u64, u64)> = state
            .runs
            .iter()
            .filter(|(k, _)| key.is_none_or(|want| want == k.as_str()))
            .map(|(k, r)| (k.clone(), r.gen, r.next_seq - 1))
            .collect();
        for (k, gen, target) in &targets {
            while state.run(k, *gen).is_some_and(|r| r.stored < *target && r.error.is_none()) {
                let left = remaining(deadline);
                if left == Some(Duration::ZERO) {
                    return Err(WriteError::Timeout(format!(
                        "flush did not finish within {:?}",
                        timeout.unwrap_or_default()
                    )));
                }
                state = self.shared.wait(state, left);
            }
        }
        match key {
            None => match state.failed.first().cloned() {
                Some((k, _)) => Err(state.deliver(&k)),
                None => Ok(()),
            },
            Some(k) => match targets.first() {
                Some((_, gen, _)) if state.run(k, *gen).is_some_and(|r| r.error.is_some()) => Err(state.deliver(k)),
                _ => Ok(()),
            },
        }
    }

    pub fn last_seq(&self, key: &str) -> Result<u64, WriteError> {
        Ok(self.read_top(key)?.0)
    }

    /// Deletes the run's stream and forgets the run, once its batch in flight
    /// (if any) has landed, so nothing of it is written after the DEL.
    pub fn delete(&self, key: &str) -> Result<(), WriteError> {
        {
            let mut state = self.shared.lock();
            if let Some(run) = state.runs.get_mut(key) {
                let (gen, dropped) = (run.gen, run.queue.len());
                run.queue.clear();
                run.closing = true; // no new writes while it goes
                state.pending -= dropped;
                while state.run(key, gen).is_some_and(|r| r.in_flight > 0) {
                    state = self.shared.wait(state, None);
                }
                if state.run(key, gen).is_some() {
                    state.runs.remove(key);
                    state.failed.retain(|(k, g)| !(k == key && *g == gen));
                }
                self.shared.changed.notify_all();
            }
        }
        self.control(|c| redis::cmd("DEL").arg(key).query::<()>(c))
    }

    pub fn stats(&self) -> Stats {
        let state = self.shared.lock();
        Stats { pending: state.pending as u64, runs: state.runs.len() as u64, ..state.stats.clone() }
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

fn writer_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut id = String::new();
    for salt in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(now_ms() ^ salt ^ u64::from(std::process::id()));
        id.push_str(&format!("{:016x}", h.finish()));
    }
    id
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
            let batches = {
                let mut state = self.shared.lock();
                while state.ready.is_empty() && !state.closed {
                    state = self.shared.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                if state.ready.is_empty() {
                    return;
                }
                take_batches(&mut state, self.shared.opts.flush_size)
            };
            let mut batches = batches;
            if self.target.is_cluster() {
                // One script call covers one slot: gather each slot's batches
                // (a stable sort keeps every run's batches in seq order).
                batches.sort_by(|a, b| conn::slot_group(&a.key).cmp(conn::slot_group(&b.key)));
            }
            let outcomes = self.send(&batches);
            let mut state = self.shared.lock();
            apply(&mut state, batches, outcomes, self.con_id);
            self.shared.changed.notify_all();
        }
    }

    /// One pipeline, retried (safely: the script spots its own batches) until the deadline.
    fn send(&mut self, batches: &[Batch]) -> Vec<Outcome> {
        let deadline = Instant::now() + self.shared.opts.retry_timeout;
        let mut delay = Duration::from_millis(10);
        loop {
            let err = match self.pipeline(batches) {
                Ok(replies) => return batches.iter().zip(replies).map(|(b, r)| outcome(b, r)).collect(),
                Err(err) => err,
            };
            if !conn::is_link_error(&err) {
                let error = WriteError::Redis(format!("Redis refused a batch: {err}"));
                return batches.iter().map(|_| Outcome::Failed(error.clone())).collect();
            }
            self.con = None;
            let mut state = self.shared.lock();
            state.stats.retries += 1;
            if Instant::now() + delay > deadline || state.closed {
                let error = WriteError::Unavailable(format!(
                    "Redis unreachable for {:?}: {err}",
                    self.shared.opts.retry_timeout
                ));
                return batches.iter().map(|_| Outcome::Failed(error.clone())).collect();
            }
            drop(self.shared.wait(state, Some(delay))); // woken early by close
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// One script call per group of batches (then `WAIT`, when asked); one reply per batch.
    fn pipeline(&mut self, batches: &[Batch]) -> RedisResult<Vec<RedisResult<Value>>> {
        let opts = &self.shared.opts;
        if self.con.is_none() {
            self.con = Some(self.target.connect(opts.connect_timeout, Some(opts.socket_timeout))?);
            self.con_id += 1;
        }
        let con = self.con.as_mut().expect("connected above");
        if !self.script_loaded {
            self.script.prepare_invoke().load(con)?; // every master, on a cluster
            self.script_loaded = true;
        }
        let max_len = opts.max_len.map(|n| n.to_string()).unwrap_or_default();
        let ttl = opts.ttl.map(|n| n.to_string()).unwrap_or_default();
        let groups = groups(batches, self.target.is_cluster());
        // Trusted: the run's last batch landed on this very connection. Only
        // the first batch of a run in a pipeline; the script trusts the next
        // ones of a call itself. Never on a cluster, where the client may move
        // to another node (a promoted replica) without a new connection.
        let mut seen = std::collections::HashSet::new();
        let mut cmds = Vec::with_capacity(groups.len());
        for group in &groups {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(self.script.get_hash()).arg(group.len());
            for batch in *group {
                cmd.arg(&batch.key);
            }
            cmd.arg(&self.shared.writer_id).arg(&max_len).arg(&ttl);
            for batch in *group {
                let trusted = seen.insert(batch.key.as_str())
                    && !self.target.is_cluster()
                    && batch.trusted_on == Some(self.con_id);
                cmd.arg(batch.chunks[0].seq).arg(batch.chunks.len()).arg(if trusted { "1" } else { "" });
                for chunk in &batch.chunks {
                    cmd.arg(&chunk.data).arg(chunk.timestamp).arg(if chunk.complete { "1" } else { "" });
                }
            }
            cmds.push(cmd);
        }
        self.shared.lock().stats.pipelines += 1;
        let replies = con.pipeline(cmds)?; // one result per call, on either kind of link
        if replies.iter().any(|r| matches!(r, Err(e) if e.code() == Some("NOSCRIPT"))) {
            self.script_loaded = false; // the server lost its scripts (restart, SCRIPT FLUSH, failover)
            return self.pipeline(batches);
        }
        // "Not now" (a restarted server still loading): retry the whole pipeline,
        // which the script makes safe, rather than fail its runs.
        if let Some(Err(e)) = replies.iter().find(|r| matches!(r, Err(e) if conn::is_transient_reply(e))) {
            self.script_loaded = false; // a restarted server has no scripts either
            return Err(e.clone());
        }
        if opts.wait_replicas > 0 {
            self.wait_replicas(batches)?;
        }
        // A call's reply holds one reply per batch; a whole call failing fails each of them.
        let mut per_batch = Vec::with_capacity(batches.len());
        for (group, reply) in groups.iter().zip(replies) {
            match reply {
                Ok(Value::Array(items)) if items.len() == group.len() => per_batch.extend(items.into_iter().map(Ok)),
                Ok(other) => per_batch.extend(group.iter().map(|_| Ok(other.clone()))),
                Err(e) => per_batch.extend(group.iter().map(|_| Err(e.clone()))),
            }
        }
        Ok(per_batch)
    }

    /// `WAIT` for the replicas: until they have the batches, they are not
    /// acknowledged, and the whole pipeline is sent again (the script skips
    /// what is stored).
    fn wait_replicas(&mut self, batches: &[Batch]) -> RedisResult<()> {
        let opts = &self.shared.opts;
        let con = self.con.as_mut().expect("connected by pipeline");
        let timeout_ms = opts.wait_timeout.as_millis().max(1) as u64;
        let keys: Vec<&str> = batches.iter().map(|b| b.key.as_str()).collect();
        let acked = con.wait_replicas(&keys, opts.wait_replicas, timeout_ms)?;
        if acked < opts.wait_replicas {
            // Retried like a broken link: the batch is not safe until replicated.
            return Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{acked} of {} replicas acknowledged within {timeout_ms} ms", opts.wait_replicas),
            )));
        }
        Ok(())
    }
}

/// Consecutive batches, cut into script calls of at most `MAX_CALL_CHUNKS`
/// chunks (and, on a cluster, of one slot each).
fn groups(batches: &[Batch], cluster: bool) -> Vec<&[Batch]> {
    let mut groups = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, batch) in batches.iter().enumerate() {
        let other_slot = cluster && i > start && conn::slot_group(&batch.key) != conn::slot_group(&batches[start].key);
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

/// Everything ready, as per-run batches of `flush_size`.
fn take_batches(state: &mut State, flush_size: usize) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut room = MAX_PIPELINE_CHUNKS;
    while room > 0 {
        let Some(key) = state.ready.front().cloned() else { break };
        let Some(run) = state.runs.get_mut(&key) else {
            state.ready.pop_front(); // deleted meanwhile
            continue;
        };
        while !run.queue.is_empty() && room > 0 {
            let take = flush_size.min(run.queue.len()).min(room);
            run.in_flight += take;
            let chunks = run.queue.drain(..take).collect();
            batches.push(Batch { key: key.clone(), gen: run.gen, chunks, trusted_on: run.trusted_on });
            room -= take;
        }
        if run.queue.is_empty() {
            run.ready = false;
            state.ready.pop_front();
        }
    }
    batches
}

/// What the script's reply `{status, top seq}` means for the batch.
fn outcome(batch: &Batch, reply: RedisResult<Value>) -> Outcome {
    let key = &batch.key;
    let reply = match reply {
        Ok(Value::Array(items)) => items,
        Ok(other) => return Outcome::Failed(WriteError::Redis(format!("unexpected script reply {other:?}"))),
        Err(e) => return Outcome::Failed(WriteError::Redis(format!("Redis refused a batch for {key:?}: {e}"))),
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
    let expected = batch.chunks[0].seq - 1;
    match status.as_str() {
        "ok" | "dup" => Outcome::Stored,
        "wrongtype" => Outcome::Failed(WriteError::Redis(format!("{key:?} holds a value that is not a stream"))),
        "closed" if batch.chunks.len() == 1 && batch.chunks[0].complete => Outcome::AlreadyComplete,
        "closed" => Outcome::Failed(WriteError::Closed(format!(
            "run stream {key:?} was completed by another writer at seq {top}"
        ))),
        _ if top == 0 => Outcome::Failed(WriteError::Stale(format!(
            "run stream {key:?} vanished (expired or deleted) after seq {expected}"
        ))),
        _ => Outcome::Failed(WriteError::Stale(format!(
            "run stream {key:?} is at seq {top}, not {expected}: another writer has written to it"
        ))),
    }
}

/// Records what each batch did.
fn apply(state: &mut State, batches: Vec<Batch>, outcomes: Vec<Outcome>, con_id: u64) {
    for (batch, outcome) in batches.into_iter().zip(outcomes) {
        state.pending -= batch.chunks.len();
        state.stats.batches += 1;
        let Some(run) = state.runs.get_mut(&batch.key).filter(|r| r.gen == batch.gen) else {
            continue; // deleted meanwhile
        };
        run.in_flight -= batch.chunks.len();
        if run.error.is_some() {
            continue; // an earlier batch of it failed
        }
        match outcome {
            Outcome::Stored => {
                let last = batch.chunks.last().expect("batches are never empty");
                run.stored = last.seq;
                run.trusted_on = Some(con_id);
                let finished = last.complete;
                state.stats.chunks += batch.chunks.len() as u64;
                if finished {
                    state.runs.remove(&batch.key); // bounded memory: a finished run leaves nothing
                }
            }
            Outcome::AlreadyComplete => {
                state.runs.remove(&batch.key); // a second terminal: a no-op, not an error
            }
            Outcome::Failed(error) => {
                let dropped = run.queue.len();
                run.queue.clear();
                run.error = Some(error);
                state.pending -= dropped;
                state.stats.errors += 1;
                state.failed.push((batch.key, batch.gen));
            }
        }
    }
}
