//! The reader hub (twin of `python/sse_redis/_pure/hub/`; its docstring
//! tells the design, `docs/glossary.md` the words). Readers subscribe to a
//! key from a cursor and consume their own bounded queue; the hub's threads do
//! all the I/O: the fetcher (`fetcher.rs`) catches subscriptions up with
//! pipelined `XRANGE (last +` on the query connection; a listener
//! (`listener.rs`) follows the streams this library's writers write by the
//! notices they publish, and has the fetcher read the notified ones; a
//! blocker (`blocker.rs`) waits on every other watched key of its group with
//! one `XREAD BLOCK` on a dedicated connection. One server has one group; a
//! cluster has one per slot group (hash tag), because one `XREAD` may only
//! name keys of one slot, each on the slot's owner. The data model is in
//! `subscription.rs`, an event loop's wake-up in `waker.rs`.
//!
//! Liveness: a link can go silent (no FIN, no RST: a NAT entry dropped, a VIP
//! moved) behind a middlebox that keeps ACKing, so TCP cannot tell. The
//! blocker's reads time out at its longest block plus `LIVENESS_MARGIN`: a
//! reply that late means the link is dead, and it reconnects and reads on
//! from the positions it keeps. The fetcher's reads time out at
//! `socket_timeout`, and it drops its link too when the blocker found its own
//! silent (same route, likely the same fate).

mod blocker;
mod fetcher;
mod listener;
mod subscription;
mod waker;

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::links::{self, Target, TargetError};
pub use subscription::{HubEntry, SubState};
use subscription::{Sub, Table};
use waker::Waker;

#[derive(Debug, Error)]
pub enum HubError {
    #[error("the reader hub is closed")]
    Closed,
    #[error("no subscription {0} (unsubscribed?)")]
    NoSubscription(u64),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("cannot start a hub thread: {0}")]
    Thread(#[source] std::io::Error),
}

#[derive(Default, Clone)]
pub struct Stats {
    pub xreads: u64,
    pub fetches: u64,
    pub unblocks: u64,
    pub checks: u64,
    pub reconnects: u64,
    pub notices: u64,
    pub probes: u64,
    pub missed: u64,
    pub subscriptions: u64,
    /// Keys followed live, by XREAD or by notice.
    pub watched: u64,
    /// Keys followed by notice.
    pub listened: u64,
    pub blockers: u64,
    pub listeners: u64,
}

/// How live entries reach the hub: by notice (the listeners; streams this
/// library's writers write), else by the blockers' XREAD; or by XREAD alone
/// (the way before notices, kept to measure the two side by side).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Delivery {
    Notify,
    Xread,
}

/// The hub's settings, checked by the binding (`queue_size` and `batch_size`
/// positive); `Hub::new` holds them at 1 at least all the same.
pub struct Options {
    pub queue_size: usize,
    pub batch_size: usize,
    pub block_ms: Option<u64>,
    pub check_interval: Duration,
    pub cluster: bool,
    pub retry_timeout: Duration,
    pub connect_timeout: Duration,
    pub socket_timeout: Duration,
    pub delivery: Delivery,
}

/// What the readers' side and the hub's threads share.
struct Shared {
    table: Mutex<Table>,
    /// Wakes the hub's threads.
    changed: Condvar,
    opts: Options,
    target: Target,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        recover(self.table.lock())
    }

    /// Waits on `cond` (the hub's `changed`, or a subscription's), at most
    /// `left` (`None`: as long as it takes).
    fn wait_on<'a>(cond: &Condvar, guard: MutexGuard<'a, Table>, left: Option<Duration>) -> MutexGuard<'a, Table> {
        match left {
            None => recover(cond.wait(guard)),
            Some(left) => recover(cond.wait_timeout(guard, left)).0,
        }
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Table>) -> MutexGuard<'a, Table> {
        Shared::wait_on(&self.changed, guard, None)
    }

    /// The blocker group of `key`: all keys on one server, its slot on a cluster.
    fn group_of<'k>(&self, key: &'k str) -> &'k str {
        if self.target.is_cluster() {
            links::slot_group(key)
        } else {
            ""
        }
    }

    /// `key`'s live subscriptions go back to the fetcher, which catches them
    /// up and hands them on (a slot moving, notices refused, a key changing
    /// hands).
    fn refeed(&self, table: &mut Table, key: &str) {
        for sid in table.following(key) {
            if let Some(sub) = table.subs.get_mut(&sid).filter(|s| s.live) {
                sub.live = false;
                self.queue_fetch(table, sid);
            }
        }
    }

    /// `refetch` every subscription of `key`.
    fn refetch_key(&self, table: &mut Table, key: &str) {
        for sid in table.following(key) {
            self.refetch(table, sid);
        }
    }

    /// Has a live subscription fetched (a notice, a subscribe, a safety
    /// check); one being fetched is fetched once more after.
    fn refetch(&self, table: &mut Table, sid: u64) {
        let cap = self.opts.queue_size;
        let Some(sub) = table.subs.get_mut(&sid) else { return };
        if sub.fetching {
            sub.again = true;
        } else if sub.live {
            if sub.queue.len() < cap {
                self.queue_fetch(table, sid);
            } else {
                sub.live = false; // a slow reader: fed again as it drains
            }
        }
    }

    fn queue_fetch(&self, table: &mut Table, sid: u64) {
        let cap = self.opts.queue_size;
        if let Some(sub) = table.subs.get_mut(&sid) {
            if !sub.fetching && !sub.closed && sub.queue.len() < cap {
                sub.fetching = true;
                table.fetch_queue.push_back(sid);
                self.changed.notify_all();
            }
        }
    }

    /// Queues what is newer than the subscription has; `false` when it does not fit.
    fn push(&self, table: &mut Table, sid: u64, entries: &[Arc<HubEntry>]) -> bool {
        let Some(sub) = table.subs.get_mut(&sid) else { return true };
        let fresh: Vec<&Arc<HubEntry>> = entries.iter().filter(|e| e.order > sub.last).collect();
        let Some(newest) = fresh.last() else { return true };
        if sub.queue.len() + fresh.len() > self.opts.queue_size {
            return false;
        }
        sub.last = newest.order;
        sub.queue.extend(fresh.into_iter().cloned());
        if matches!(sub.state, SubState::Missing | SubState::Pending) {
            sub.state = SubState::Ok;
        }
        table.signal(sid); // the entries, and the state change if any
        true
    }

    fn link_ok(&self) {
        self.lock().down_since = None;
    }

    /// After `retry_timeout` without Redis, every reader is told (`Down`).
    fn link_failed(&self) {
        let mut table = self.lock();
        let now = Instant::now();
        let since = *table.down_since.get_or_insert(now);
        if now.duration_since(since) > self.opts.retry_timeout {
            let ids: Vec<u64> = table.subs.keys().copied().collect();
            for sid in ids {
                table.set_state(sid, SubState::Down);
            }
        }
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.lock().stats);
    }
}

/// A lock (or wait) result, whether or not another thread panicked holding
/// the lock: the table stays consistent between statements, so it is used on.
fn recover<T>(result: Result<T, std::sync::PoisonError<T>>) -> T {
    result.unwrap_or_else(|p| p.into_inner())
}

pub struct Hub {
    shared: Arc<Shared>,
}

pub type Polled = (Vec<Arc<HubEntry>>, SubState);

impl Hub {
    pub fn new(url: &str, mut opts: Options) -> Result<Hub, HubError> {
        // Trusted (the binding checks them), but a zero must not stall a read.
        opts.queue_size = opts.queue_size.max(1);
        opts.batch_size = opts.batch_size.max(1);
        let target = Target::new(url, opts.cluster)?;
        let shared = Arc::new(Shared { table: Mutex::new(Table::default()), changed: Condvar::new(), opts, target });
        let fetcher = shared.clone();
        std::thread::Builder::new()
            .name("sse-redis-fetch".into())
            .spawn(move || fetcher::run(&fetcher))
            .map_err(HubError::Thread)?;
        Ok(Hub { shared })
    }

    /// Follows `key` from just after seq `after_seq`; never does I/O.
    pub fn subscribe(&self, key: &str, after_seq: u64, waker: Option<u64>) -> Result<u64, HubError> {
        let mut table = self.shared.lock();
        if table.closed {
            return Err(HubError::Closed);
        }
        let sid = table.new_id();
        table.subs.insert(sid, Sub::new(key, after_seq, waker));
        table.by_key.entry(key.to_owned()).or_default().push(sid);
        self.shared.queue_fetch(&mut table, sid);
        Ok(sid)
    }

    pub fn unsubscribe(&self, sid: u64) {
        let mut table = self.shared.lock();
        let Some(sub) = table.subs.remove(&sid) else { return };
        if let Some(ids) = table.by_key.get_mut(&sub.key) {
            ids.retain(|&i| i != sid);
            if ids.is_empty() {
                table.by_key.remove(&sub.key);
                table.ours.remove(&sub.key);
                if let Some(group) = table.groups.get_mut(self.shared.group_of(&sub.key)) {
                    group.keys.remove(&sub.key);
                }
                table.stop_listening(&sub.key);
            }
        }
        if let Some(waker) = sub.waker.and_then(|w| table.wakers.get_mut(&w)) {
            waker.forget(sid);
        }
    }

    /// The subscription's queued entries (drained) and its state.
    fn drain(&self, table: &mut Table, sid: u64) -> Result<Polled, HubError> {
        if table.closed {
            return Err(HubError::Closed);
        }
        let sub = table.subs.get_mut(&sid).ok_or(HubError::NoSubscription(sid))?;
        let entries: Vec<_> = sub.queue.drain(..).collect();
        sub.notified = false;
        let (live, state) = (sub.live, sub.state);
        if !live {
            self.shared.queue_fetch(table, sid); // room again: the fetcher feeds it
        }
        Ok((entries, state))
    }

    pub fn poll(&self, sid: u64) -> Result<Polled, HubError> {
        self.drain(&mut self.shared.lock(), sid)
    }

    /// `poll` that waits up to `timeout` for an entry or a state change.
    pub fn wait(&self, sid: u64, timeout: Option<Duration>) -> Result<Polled, HubError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut table = self.shared.lock();
        loop {
            if table.closed {
                return Err(HubError::Closed);
            }
            let sub = table.subs.get(&sid).ok_or(HubError::NoSubscription(sid))?;
            if !sub.queue.is_empty() || sub.notified {
                break;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                break;
            }
            let cond = sub.cond.clone();
            table = Shared::wait_on(&cond, table, left);
        }
        self.drain(&mut table, sid)
    }

    pub fn add_waker(&self, fd: i32) -> u64 {
        let mut table = self.shared.lock();
        let wid = table.new_id();
        table.wakers.insert(wid, Waker::new(fd));
        wid
    }

    pub fn remove_waker(&self, wid: u64) {
        self.shared.lock().wakers.remove(&wid);
    }

    pub fn take_ready(&self, wid: u64) -> Vec<u64> {
        self.shared.lock().wakers.get_mut(&wid).map(Waker::take).unwrap_or_default()
    }

    pub fn stats(&self) -> Stats {
        let table = self.shared.lock();
        let listened: u64 = table.listeners.values().map(|l| l.keys.len() as u64).sum();
        let watched = table.groups.values().map(|g| g.keys.len() as u64).sum::<u64>() + listened;
        Stats {
            subscriptions: table.subs.len() as u64,
            watched,
            listened,
            blockers: table.groups.len() as u64,
            listeners: table.listeners.len() as u64,
            ..table.stats.clone()
        }
    }

    /// The reconnects since the last call, oldest first, as `(kind, cause)`:
    /// `reconnect`, `dropped` (events not kept).
    pub fn take_events(&self) -> Vec<(&'static str, String)> {
        self.shared.lock().events.take()
    }

    pub fn close(&self) {
        let mut table = self.shared.lock();
        if table.closed {
            return;
        }
        table.closed = true;
        let ids: Vec<u64> = table.subs.keys().copied().collect();
        for sid in ids {
            if let Some(sub) = table.subs.get_mut(&sid) {
                sub.closed = true;
            }
            table.signal(sid); // wakes sync waiters and event loops alike
        }
        self.shared.changed.notify_all();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.close();
    }
}
