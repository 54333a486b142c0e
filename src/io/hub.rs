//! The reader hub (twin of `python/sse_redis/_pure/hub.py`; its docstring
//! tells the design). Readers subscribe to a key from a cursor and consume
//! their own bounded queue; the hub's two threads do all the I/O: the
//! fetcher catches subscriptions up with `XRANGE (last +` on the query
//! connection, and a blocker waits on every watched key of its group with one
//! `XREAD BLOCK` on a dedicated connection. One server has one group; a
//! cluster has one per slot group (hash tag), because one `XREAD` may only
//! name keys of one slot, each blocking on the slot's owner.
//!
//! Liveness: a link can go silent (no FIN, no RST: a NAT entry dropped, a VIP
//! moved) behind a middlebox that keeps ACKing, so TCP cannot tell. The
//! blocker's reads time out at its longest block plus `LIVENESS_MARGIN`: a
//! reply that late means the link is dead, and it reconnects and reads on
//! from the positions it keeps. The fetcher's reads time out at
//! `socket_timeout`, and it drops its link too when the blocker found its own
//! silent (same route, likely the same fate).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, Value};

use super::conn::{self, Link, Target};
use super::entries::{parse_range, parse_xread, Entry};

const XREAD_COUNT: usize = 1000;
/// Without CLIENT UNBLOCK a new key waits at most this long.
const SHORT_BLOCK_MS: u64 = 250;
/// While a slot migrates, its keys are read by the fetcher this often.
const MIGRATING_POLL: Duration = Duration::from_millis(20);
/// A blocking read's reply this late (past its block time) means a dead link.
const LIVENESS_MARGIN: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Status {
    Pending,
    Ok,
    Missing,
    Done,
    Gone,
    Down,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Done => "done",
            Status::Gone => "gone",
            Status::Down => "down",
        }
    }
}

/// One entry as readers get it, shared by every subscription it fans out to.
#[derive(Debug)]
pub struct HubEntry {
    pub id: String,
    pub order: (u64, u64),
    pub seq: u64,
    pub data: String,
    pub complete: bool,
    /// The error terminal of a run its writer broke off: the seqs before it
    /// may be missing (never stored), which is not a trim.
    pub broken: bool,
}

static TOPS_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("../../python/sse_redis/tops.lua")));

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn hub_entry(e: &Entry) -> Arc<HubEntry> {
    Arc::new(HubEntry {
        order: parse_id(&e.id),
        id: e.id.clone(),
        seq: e.seq(),
        data: e.field("data").unwrap_or("").to_owned(),
        complete: e.is_complete(),
        broken: e.field("broken") == Some("true"),
    })
}

struct Sub {
    key: String,
    last: (u64, u64),
    queue: VecDeque<Arc<HubEntry>>,
    live: bool,
    fetching: bool,
    fetched_once: bool,
    status: Status,
    waker: Option<u64>,
    notified: bool,
    closed: bool,
    cond: Arc<Condvar>,
}

struct Waker {
    fd: i32,
    ready: Vec<u64>,
}

#[derive(Default, Clone)]
pub struct Stats {
    pub xreads: u64,
    pub fetches: u64,
    pub unblocks: u64,
    pub checks: u64,
    pub reconnects: u64,
    pub subscriptions: u64,
    pub watched: u64,
    pub blockers: u64,
}

/// The keys one blocker waits on, with the last entry id it has of each.
#[derive(Default)]
struct Group {
    keys: HashMap<String, (u64, u64)>,
    /// Bumped when a key joins; the blocker's XREAD covers `blocking_version`.
    version: u64,
    blocking_version: u64,
    client_id: Option<i64>,
    /// The cluster node (`host:port`) it blocks on, or should connect to.
    node: Option<String>,
}

#[derive(Default)]
struct State {
    subs: HashMap<u64, Sub>,
    by_key: HashMap<String, Vec<u64>>,
    groups: HashMap<String, Group>,
    fetch_queue: VecDeque<u64>,
    wakers: HashMap<u64, Waker>,
    next_id: u64,
    unblock_wanted: bool,
    /// A blocker found its link silent: the fetcher's link, on the same
    /// route, is remade before its next command rather than waited out.
    relink_query: bool,
    can_unblock: Option<bool>,
    down_since: Option<Instant>,
    closed: bool,
    stats: Stats,
}

pub struct Options {
    pub queue_size: usize,
    pub batch_size: usize,
    pub block_ms: Option<u64>,
    pub check_interval: Duration,
    pub cluster: bool,
    pub retry_timeout: Duration,
    pub connect_timeout: Duration,
    pub socket_timeout: Duration,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    opts: Options,
    target: Target,
}

pub enum HubError {
    Closed,
    NoSubscription(u64),
    Redis(String),
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The blocker group of `key`: all keys on one server, its slot on a cluster.
    fn group_of<'k>(&self, key: &'k str) -> &'k str {
        if self.target.is_cluster() {
            conn::slot_group(key)
        } else {
            ""
        }
    }

    fn queue_fetch(&self, state: &mut State, sid: u64) {
        let cap = self.opts.queue_size;
        if let Some(sub) = state.subs.get_mut(&sid) {
            if !sub.fetching && !sub.closed && sub.queue.len() < cap {
                sub.fetching = true;
                state.fetch_queue.push_back(sid);
                self.changed.notify_all();
            }
        }
    }

    /// Queues what is newer than the subscription has; `false` when it does not fit.
    fn push(&self, state: &mut State, sid: u64, entries: &[Arc<HubEntry>]) -> bool {
        let Some(sub) = state.subs.get_mut(&sid) else { return true };
        let fresh: Vec<&Arc<HubEntry>> = entries.iter().filter(|e| e.order > sub.last).collect();
        let Some(newest) = fresh.last() else { return true };
        if sub.queue.len() + fresh.len() > self.opts.queue_size {
            return false;
        }
        sub.last = newest.order;
        sub.queue.extend(fresh.into_iter().cloned());
        if matches!(sub.status, Status::Missing | Status::Pending) {
            sub.status = Status::Ok;
        }
        signal(state, sid); // the entries, and the state change if any
        true
    }

    fn link_ok(&self) {
        self.lock().down_since = None;
    }

    /// After `retry_timeout` without Redis, every reader is told (`Down`).
    fn link_failed(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        let since = *state.down_since.get_or_insert(now);
        if now.duration_since(since) > self.opts.retry_timeout {
            let ids: Vec<u64> = state.subs.keys().copied().collect();
            for sid in ids {
                set_status(&mut state, sid, Status::Down);
            }
        }
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.lock().stats);
    }
}

/// Changes the subscription's state and tells its reader: a reader's wait is
/// timed for the state it last saw (`retry_timeout` while pending, its idle
/// clock once Redis answered), so every change must wake it.
fn set_status(state: &mut State, sid: u64, status: Status) {
    let Some(sub) = state.subs.get_mut(&sid) else { return };
    if sub.status != status {
        sub.status = status;
        signal(state, sid);
    }
}

/// Tells the subscription's reader there is something to poll.
fn signal(state: &mut State, sid: u64) {
    let Some(sub) = state.subs.get_mut(&sid) else { return };
    sub.cond.notify_all();
    if sub.notified {
        return;
    }
    sub.notified = true;
    let Some(waker) = sub.waker.and_then(|w| state.wakers.get_mut(&w)) else { return };
    waker.ready.push(sid);
    if waker.ready.len() == 1 {
        // SAFETY: the fd belongs to the event loop's socket pair, kept open
        // while the waker is registered; ManuallyDrop never closes it.
        let mut sock = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(waker.fd) });
        let _ = sock.write(&[0]); // full or gone: the loop is awake already
    }
}

pub struct Hub {
    inner: Arc<Inner>,
}

pub type Polled = (Vec<Arc<HubEntry>>, Status);

impl Hub {
    pub fn new(url: &str, opts: Options) -> Result<Hub, HubError> {
        if opts.queue_size == 0 || opts.batch_size == 0 {
            return Err(HubError::Redis("queue_size and batch_size must be positive".into()));
        }
        let target = Target::new(url, opts.cluster).map_err(HubError::Redis)?;
        let inner = Arc::new(Inner { state: Mutex::new(State::default()), changed: Condvar::new(), opts, target });
        inner.lock().next_id = 1;
        let fetcher = inner.clone();
        std::thread::Builder::new()
            .name("sse-redis-fetch".into())
            .spawn(move || run_fetcher(&fetcher))
            .map_err(|e| HubError::Redis(format!("cannot start a hub thread: {e}")))?;
        Ok(Hub { inner })
    }

    /// Follows `key` from just after seq `after_seq`; never does I/O.
    pub fn subscribe(&self, key: &str, after_seq: u64, waker: Option<u64>) -> Result<u64, HubError> {
        let mut state = self.inner.lock();
        if state.closed {
            return Err(HubError::Closed);
        }
        let sid = state.next_id;
        state.next_id += 1;
        state.subs.insert(
            sid,
            Sub {
                key: key.to_owned(),
                last: (0, after_seq),
                queue: VecDeque::new(),
                live: false,
                fetching: false,
                fetched_once: false,
                status: Status::Pending, // until the first fetch has reached Redis
                waker,
                notified: false,
                closed: false,
                cond: Arc::new(Condvar::new()),
            },
        );
        state.by_key.entry(key.to_owned()).or_default().push(sid);
        self.inner.queue_fetch(&mut state, sid);
        Ok(sid)
    }

    pub fn unsubscribe(&self, sid: u64) {
        let mut state = self.inner.lock();
        let Some(sub) = state.subs.remove(&sid) else { return };
        if let Some(ids) = state.by_key.get_mut(&sub.key) {
            ids.retain(|&i| i != sid);
            if ids.is_empty() {
                state.by_key.remove(&sub.key);
                if let Some(group) = state.groups.get_mut(self.inner.group_of(&sub.key)) {
                    group.keys.remove(&sub.key);
                }
            }
        }
        if let Some(waker) = sub.waker.and_then(|w| state.wakers.get_mut(&w)) {
            waker.ready.retain(|&i| i != sid);
        }
    }

    fn drain(&self, state: &mut State, sid: u64) -> Polled {
        let sub = state.subs.get_mut(&sid).expect("drain: checked by caller");
        let entries: Vec<_> = sub.queue.drain(..).collect();
        sub.notified = false;
        let (live, status) = (sub.live, sub.status);
        if !live {
            self.inner.queue_fetch(state, sid); // room again: the fetcher feeds it
        }
        (entries, status)
    }

    fn check(&self, state: &State, sid: u64) -> Result<(), HubError> {
        if state.closed {
            return Err(HubError::Closed);
        }
        if !state.subs.contains_key(&sid) {
            return Err(HubError::NoSubscription(sid));
        }
        Ok(())
    }

    pub fn poll(&self, sid: u64) -> Result<Polled, HubError> {
        let mut state = self.inner.lock();
        self.check(&state, sid)?;
        Ok(self.drain(&mut state, sid))
    }

    /// `poll` that waits up to `timeout` for an entry or a state change.
    pub fn wait(&self, sid: u64, timeout: Option<Duration>) -> Result<Polled, HubError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.inner.lock();
        loop {
            self.check(&state, sid)?;
            let sub = &state.subs[&sid];
            if !sub.queue.is_empty() || sub.notified {
                break;
            }
            let cond = sub.cond.clone();
            state = match deadline {
                None => cond.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    cond.wait_timeout(state, left).map_or_else(|p| p.into_inner().0, |r| r.0)
                }
            };
        }
        Ok(self.drain(&mut state, sid))
    }

    pub fn add_waker(&self, fd: i32) -> u64 {
        let mut state = self.inner.lock();
        let wid = state.next_id;
        state.next_id += 1;
        state.wakers.insert(wid, Waker { fd, ready: Vec::new() });
        wid
    }

    pub fn remove_waker(&self, wid: u64) {
        self.inner.lock().wakers.remove(&wid);
    }

    pub fn take_ready(&self, wid: u64) -> Vec<u64> {
        self.inner.lock().wakers.get_mut(&wid).map(|w| std::mem::take(&mut w.ready)).unwrap_or_default()
    }

    pub fn stats(&self) -> Stats {
        let state = self.inner.lock();
        let watched = state.groups.values().map(|g| g.keys.len() as u64).sum();
        let blockers = state.groups.len() as u64;
        Stats { subscriptions: state.subs.len() as u64, watched, blockers, ..state.stats.clone() }
    }

    pub fn close(&self) {
        let mut state = self.inner.lock();
        if state.closed {
            return;
        }
        state.closed = true;
        let ids: Vec<u64> = state.subs.keys().copied().collect();
        for sid in ids {
            state.subs.get_mut(&sid).expect("listed").closed = true;
            signal(&mut state, sid); // wakes sync waiters and event loops alike
        }
        self.inner.changed.notify_all();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.close();
    }
}

fn is_link(err: &RedisError) -> bool {
    conn::is_link_error(err)
}

// -- the fetcher thread ---------------------------------------------------------

fn run_fetcher(inner: &Arc<Inner>) {
    let opts = &inner.opts;
    let mut con: Option<Link> = None;
    loop {
        let sid = {
            let mut state = inner.lock();
            while state.fetch_queue.is_empty() && !state.unblock_wanted && !state.closed {
                state = inner.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.closed {
                break;
            }
            if std::mem::take(&mut state.relink_query) && con.take().is_some() {
                state.stats.reconnects += 1;
            }
            state.fetch_queue.pop_front()
        };
        let result = (|| -> Result<(), RedisError> {
            if con.is_none() {
                con = Some(inner.target.connect(opts.connect_timeout, Some(opts.socket_timeout))?);
            }
            let c = con.as_mut().expect("connected above");
            if let Some(sid) = sid {
                catch_up(inner, c, sid)?;
            }
            // Catch-ups first, then one unblock for all the keys they added
            // (an unblock per key would re-send a growing XREAD each time).
            let unblock = {
                let state = inner.lock();
                state.unblock_wanted && state.fetch_queue.is_empty()
            };
            if unblock {
                unblock_blocker(inner, c)?;
            }
            Ok(())
        })();
        match &result {
            Ok(()) => inner.link_ok(),
            Err(err) if is_link(err) => inner.link_failed(),
            Err(_) => {}
        }
        if let Err(err) = result {
            let mut state = inner.lock();
            if let Some(sid) = sid.filter(|s| state.subs.contains_key(s)) {
                state.subs.get_mut(&sid).expect("present").fetching = false;
                if is_link(&err) {
                    inner.queue_fetch(&mut state, sid);
                } else {
                    // not a stream any more (WRONGTYPE): nothing to follow
                    set_status(&mut state, sid, Status::Gone);
                }
            }
            if is_link(&err) {
                con = None; // a timeout may leave a reply half read: never reuse the link
                state.stats.reconnects += 1;
                drop(state);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // Let blocked XREADs go now rather than at their timeout.
    let blocked: Vec<(i64, Option<String>)> =
        inner.lock().groups.values().filter_map(|g| g.client_id.map(|id| (id, g.node.clone()))).collect();
    if let Some(c) = con.as_mut() {
        for (id, node) in blocked {
            let _ = c.on_node(redis::cmd("CLIENT").arg("UNBLOCK").arg(id), node.as_deref());
        }
    }
}

fn catch_up(inner: &Arc<Inner>, con: &mut Link, sid: u64) -> Result<(), RedisError> {
    let (key, start, first, room) = {
        let state = inner.lock();
        let Some(sub) = state.subs.get(&sid) else { return Ok(()) };
        let start = format!("({}-{}", sub.last.0, sub.last.1);
        (sub.key.clone(), start, !sub.fetched_once, inner.opts.queue_size.saturating_sub(sub.queue.len()))
    };
    let count = inner.opts.batch_size.min(room);
    let raw: Vec<Arc<HubEntry>> = if count > 0 {
        let reply: Value = redis::cmd("XRANGE").arg(&key).arg(&start).arg("+").arg("COUNT").arg(count).query(con)?;
        parse_range(&reply).iter().map(hub_entry).collect()
    } else {
        Vec::new()
    };
    inner.count(|s| s.fetches += 1);
    let top = if first && raw.is_empty() {
        let reply: Value = redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(1).query(con)?;
        Some(parse_range(&reply).first().map(hub_entry))
    } else {
        None
    };
    let mut state = inner.lock();
    let Some(sub) = state.subs.get_mut(&sid) else { return Ok(()) };
    sub.fetching = false;
    if sub.closed {
        return Ok(());
    }
    sub.fetched_once = true;
    let last = sub.last;
    if sub.status == Status::Pending {
        // Redis answered: the reader's wait, timed for the pending state
        // (`retry_timeout`), goes back to its idle clock.
        set_status(&mut state, sid, Status::Ok);
    }
    match top {
        Some(None) => set_status(&mut state, sid, Status::Missing),
        Some(Some(top)) if top.order < last => {
            // The cursor is past everything the stream holds: not the stream
            // the reader read (it was lost, then written again).
            set_status(&mut state, sid, Status::Gone);
            return Ok(());
        }
        // Only at the cursor: a top past it arrived after the range read (the
        // blocker gets it), and is no reason to end the read before it.
        Some(Some(top)) if top.complete && top.order == last => {
            set_status(&mut state, sid, Status::Done); // complete, and the cursor is at its end
            return Ok(());
        }
        _ => {}
    }
    if !inner.push(&mut state, sid, &raw) {
        return Ok(()); // fetched no more than the room: never happens, never overfills
    }
    if raw.iter().any(|e| e.complete) {
        return Ok(()); // the terminal entry is queued: the read ends, nothing to watch
    }
    if raw.len() == count {
        inner.queue_fetch(&mut state, sid); // more to read, when there is room
        return Ok(());
    }
    let sub_last = state.subs[&sid].last;
    let name = inner.group_of(&key).to_owned();
    match state.groups.get(&name).and_then(|g| g.keys.get(&key)) {
        Some(&watched) if watched > sub_last => inner.queue_fetch(&mut state, sid), // blocker is ahead
        Some(_) => state.subs.get_mut(&sid).expect("present").live = true,
        None => {
            state.subs.get_mut(&sid).expect("present").live = true;
            let group = match state.groups.get_mut(&name) {
                Some(group) => group,
                None => {
                    start_blocker(inner, &name)?;
                    state.groups.entry(name.clone()).or_default()
                }
            };
            group.keys.insert(key, sub_last);
            group.version += 1;
            state.unblock_wanted = true;
            inner.changed.notify_all();
        }
    }
    Ok(())
}

/// A blocker thread for a new group (on a cluster it ends once its group has
/// no keys left; on one server it parks).
fn start_blocker(inner: &Arc<Inner>, name: &str) -> Result<(), RedisError> {
    let (blocker, name) = (inner.clone(), name.to_owned());
    std::thread::Builder::new()
        .name("sse-redis-hub".into())
        .spawn(move || run_blocker(&blocker, &name))
        .map(drop)
        .map_err(|e| RedisError::from(std::io::Error::other(format!("cannot start a hub thread: {e}"))))
}

/// Restarts the XREAD of each blocker whose group has new keys, so that it
/// covers them.
fn unblock_blocker(inner: &Inner, con: &mut Link) -> Result<(), RedisError> {
    let deadline = Instant::now() + Duration::from_millis(50);
    loop {
        let behind: Vec<(i64, Option<String>)> = {
            let mut state = inner.lock();
            if state.closed || state.can_unblock != Some(true) {
                state.unblock_wanted = false; // the blockers' short blocks pick the keys up
                return Ok(());
            }
            // A blocker not yet connected (no id) reads its keys when it starts.
            let behind: Vec<_> = state
                .groups
                .values()
                .filter(|g| g.blocking_version < g.version && !g.keys.is_empty())
                .filter_map(|g| g.client_id.map(|id| (id, g.node.clone())))
                .collect();
            if behind.is_empty() {
                state.unblock_wanted = false;
                return Ok(());
            }
            behind
        };
        let mut all_woke = true;
        for (id, node) in &behind {
            let woke: i64 = redis::FromRedisValue::from_redis_value(
                con.on_node(redis::cmd("CLIENT").arg("UNBLOCK").arg(*id), node.as_deref())?,
            )?;
            inner.count(|s| s.unblocks += 1);
            all_woke &= woke == 1;
        }
        if all_woke || Instant::now() > deadline {
            inner.lock().unblock_wanted = false;
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(500)); // a blocker is between reads
    }
}

// -- the blocker threads -------------------------------------------------------

fn run_blocker(inner: &Inner, name: &str) {
    let opts = &inner.opts;
    let mut con: Option<Connection> = None;
    let mut next_check = Instant::now() + opts.check_interval;
    let mut delay = Duration::from_millis(10);
    let mut attempt = 0; // which known cluster node to try when the owner is unknown
    loop {
        {
            let mut state = inner.lock();
            loop {
                if state.closed {
                    return;
                }
                if state.groups.get(name).is_some_and(|g| !g.keys.is_empty()) {
                    break;
                }
                if inner.target.is_cluster() {
                    // A cluster may have a group per run: an idle one leaves no thread.
                    state.groups.remove(name);
                    return;
                }
                state = inner.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        }
        let result = (|| -> Result<(), RedisError> {
            if con.is_none() {
                let node = inner.lock().groups.get(name).and_then(|g| g.node.clone());
                let timeout = Some(blocker_read_timeout(opts));
                let (mut c, node) = inner.target.connect_node(node.as_deref(), attempt, opts.connect_timeout, timeout)?;
                let id = learn_unblock(inner, &mut c)?;
                if let Some(group) = inner.lock().groups.get_mut(name) {
                    (group.client_id, group.node) = (Some(id), node);
                }
                con = Some(c);
            }
            let c = con.as_mut().expect("connected above");
            // The watch set is read only now, after connecting: a key added while
            // the blocker's id was still unknown (so no one could unblock it) is in.
            let streams: Vec<(String, String)> = {
                let mut state = inner.lock();
                let Some(group) = state.groups.get_mut(name) else { return Ok(()) };
                group.blocking_version = group.version;
                group.keys.iter().map(|(k, l)| (k.clone(), format!("{}-{}", l.0, l.1))).collect()
            };
            if streams.is_empty() {
                return Ok(());
            }
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(XREAD_COUNT).arg("BLOCK").arg(block_time(inner)).arg("STREAMS");
            for (key, _) in &streams {
                cmd.arg(key);
            }
            for (_, id) in &streams {
                cmd.arg(id);
            }
            let reply: Value = cmd.query(c)?;
            inner.count(|s| s.xreads += 1);
            deliver(inner, name, &reply);
            if Instant::now() >= next_check {
                next_check = Instant::now() + opts.check_interval;
                check_streams(inner, name, c)?;
            }
            Ok(())
        })();
        let Err(err) = result else {
            delay = Duration::from_millis(10);
            inner.link_ok();
            continue;
        };
        let forget_node = |node: Option<String>| {
            if let Some(group) = inner.lock().groups.get_mut(name) {
                (group.client_id, group.node) = (None, node);
            }
        };
        match conn::redirect(&err) {
            Some((true, node)) => {
                con = None; // MOVED: the slot has a new owner; block there
                forget_node(Some(node));
            }
            Some((false, _)) => migrating(inner, name), // ASK: keys are moving
            None if err.code() == Some("TRYAGAIN") => migrating(inner, name),
            None if is_link(&err) => {
                if err.is_timeout() {
                    // Silent, not closed: the fetcher's link likely is too.
                    inner.lock().relink_query = true;
                }
                inner.link_failed();
                con = None; // never reused after a timeout: a late reply would pass for the next one
                forget_node(None); // after a failover, any live node redirects to the owner
                attempt += 1;
                inner.count(|s| s.reconnects += 1);
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            None => std::thread::sleep(Duration::from_millis(100)), // a watched key is no stream
        }
    }
}

/// The group's slot is being migrated, so one XREAD cannot see all its keys:
/// its live readers go back to the fetcher, whose cluster connection follows
/// each key (ASK), until the blocker's next try.
fn migrating(inner: &Inner, name: &str) {
    {
        let mut state = inner.lock();
        let keys: Vec<String> = state.groups.get(name).map(|g| g.keys.keys().cloned().collect()).unwrap_or_default();
        for key in keys {
            for sid in state.by_key.get(&key).cloned().unwrap_or_default() {
                if let Some(sub) = state.subs.get_mut(&sid).filter(|s| s.live) {
                    sub.live = false;
                    inner.queue_fetch(&mut state, sid);
                }
            }
        }
    }
    std::thread::sleep(MIGRATING_POLL);
}

/// The blocker link's read timeout: the longest block it may ask for, plus
/// `LIVENESS_MARGIN` (15 s with the defaults: `check_interval` 10 s). Fixed
/// per link, so that the commands before its first block are bounded too.
fn blocker_read_timeout(opts: &Options) -> Duration {
    let longest = opts.block_ms.unwrap_or_else(|| (opts.check_interval.as_millis() as u64).max(SHORT_BLOCK_MS));
    Duration::from_millis(longest).saturating_add(LIVENESS_MARGIN)
}

fn block_time(inner: &Inner) -> u64 {
    if let Some(ms) = inner.opts.block_ms {
        return ms;
    }
    match inner.lock().can_unblock {
        Some(true) => (inner.opts.check_interval.as_millis() as u64).max(1),
        _ => SHORT_BLOCK_MS,
    }
}

/// The connection's client id; learns whether this user may CLIENT UNBLOCK.
fn learn_unblock(inner: &Inner, con: &mut Connection) -> Result<i64, RedisError> {
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(con)?;
    // No client has id 0: a no-op when permitted, NOPERM for a least-privilege user.
    let can = match redis::cmd("CLIENT").arg("UNBLOCK").arg(0).query::<i64>(con) {
        Ok(_) => true,
        Err(e) if is_link(&e) => return Err(e),
        Err(_) => false,
    };
    inner.lock().can_unblock = Some(can);
    Ok(id)
}

fn deliver(inner: &Inner, name: &str, reply: &Value) {
    let streams = parse_xread(reply);
    if streams.is_empty() {
        return;
    }
    let mut state = inner.lock();
    for (key, raw) in streams {
        let Some(position) = state.groups.get_mut(name).and_then(|g| g.keys.get_mut(&key)) else { continue };
        if raw.is_empty() {
            continue;
        }
        let entries: Vec<Arc<HubEntry>> = raw.iter().map(hub_entry).collect();
        *position = entries.last().expect("non-empty").order;
        let ids = state.by_key.get(&key).cloned().unwrap_or_default();
        for sid in ids {
            if state.subs.get(&sid).is_some_and(|s| s.live) && !inner.push(&mut state, sid, &entries) {
                state.subs.get_mut(&sid).expect("present").live = false; // slow: the fetcher feeds it
                inner.queue_fetch(&mut state, sid);
            }
        }
    }
}

/// Notices followed streams that expired (expiry does not wake `XREAD`) or
/// were lost and written again below a reader's cursor (new entries there do
/// not wake it either): one read-only script call per check (`tops.lua`).
fn check_streams(inner: &Inner, name: &str, con: &mut Connection) -> Result<(), RedisError> {
    let keys: Vec<String> = {
        let state = inner.lock();
        let Some(group) = state.groups.get(name) else { return Ok(()) };
        group
            .keys
            .keys()
            .filter(|k| {
                state.by_key.get(*k).is_some_and(|ids| {
                    ids.iter().any(|i| state.subs.get(i).is_some_and(|s| s.status == Status::Ok))
                })
            })
            .cloned()
            .collect()
    };
    if keys.is_empty() {
        return Ok(());
    }
    inner.count(|s| s.checks += 1);
    let mut call = TOPS_SCRIPT.prepare_invoke();
    for key in &keys {
        call.key(key);
    }
    let tops: Vec<String> = call.invoke(con)?;
    let mut state = inner.lock();
    for (key, top) in keys.iter().zip(tops) {
        let top = (!top.is_empty()).then(|| parse_id(&top));
        for sid in state.by_key.get(key).cloned().unwrap_or_default() {
            let Some(sub) = state.subs.get(&sid).filter(|s| s.status == Status::Ok) else { continue };
            if top.is_none_or(|top| top < sub.last) {
                set_status(&mut state, sid, Status::Gone);
            }
        }
    }
    Ok(())
}
