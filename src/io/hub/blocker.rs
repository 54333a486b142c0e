//! The blocker threads (twin of `python/sse_redis/_pure/hub/blocker.py`):
//! each waits on every watched key of its group with one `XREAD BLOCK` on a
//! dedicated connection and fans the entries out to the live subscriptions
//! of each key; every `check_interval` it checks the followed streams are
//! still the ones their readers read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, Value};

use super::subscription::{hub_entry, parse_id, HubEntry, SubState};
use super::{Delivery, Options, Shared};
use crate::io::entries::parse_xread;
use crate::io::links::{cause, is_link_error, redirect};

const XREAD_COUNT: usize = 1000;
/// Without CLIENT UNBLOCK a new key waits at most this long.
const SHORT_BLOCK_MS: u64 = 250;
/// While a slot migrates, its keys are read by the fetcher this often.
pub(super) const MIGRATING_POLL: Duration = Duration::from_millis(20);
/// A blocking read's reply this late (past its block time) means a dead link.
const LIVENESS_MARGIN: Duration = Duration::from_secs(5);

pub(super) static TOPS_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("../../../python/sse_redis/tops.lua")));

/// A blocker thread for a new group (on a cluster it ends once its group has
/// no keys left; on one server it parks).
pub(super) fn start(shared: &Arc<Shared>, name: &str) -> Result<(), RedisError> {
    let (blocker, name) = (shared.clone(), name.to_owned());
    std::thread::Builder::new()
        .name("sse-redis-hub".into())
        .spawn(move || run(&blocker, &name))
        .map(drop)
        .map_err(|e| RedisError::from(std::io::Error::other(format!("cannot start a hub thread: {e}"))))
}

/// What a blocker keeps between its reads.
struct Blocker<'a> {
    shared: &'a Shared,
    name: &'a str,
    con: Option<Connection>,
    next_check: Instant,
    delay: Duration,
    /// Which known cluster node to try when the owner is unknown.
    attempt: usize,
}

fn run(shared: &Shared, name: &str) {
    let mut blocker = Blocker {
        shared,
        name,
        con: None,
        next_check: Instant::now() + shared.opts.check_interval,
        delay: Duration::from_millis(10),
        attempt: 0,
    };
    while blocker.has_keys() {
        match blocker.read() {
            Ok(()) => {
                blocker.delay = Duration::from_millis(10);
                shared.link_ok();
            }
            Err(err) => blocker.read_failed(&err),
        }
    }
}

impl Blocker<'_> {
    /// Waits until the group has keys; `false` when the hub closed, or (on a
    /// cluster, which may have a group per run) the group is idle: it then
    /// leaves no thread.
    fn has_keys(&self) -> bool {
        let mut table = self.shared.lock();
        loop {
            if table.closed {
                return false;
            }
            if table.groups.get(self.name).is_some_and(|g| !g.keys.is_empty()) {
                return true;
            }
            if self.shared.target.is_cluster() {
                table.groups.remove(self.name);
                return false;
            }
            table = self.shared.wait(table);
        }
    }

    /// Connects when needed, then one `XREAD BLOCK` over the group's keys (and
    /// a check of the followed streams when one is due).
    fn read(&mut self) -> Result<(), RedisError> {
        let (shared, name) = (self.shared, self.name);
        if self.con.is_none() {
            self.con = Some(self.connect()?);
        }
        let Some(con) = self.con.as_mut() else { return Ok(()) };
        // The watch set is read only now, after connecting: a key added while
        // the blocker's id was still unknown (so no one could unblock it) is in.
        let streams: Vec<(String, String)> = {
            let mut table = shared.lock();
            let Some(group) = table.groups.get_mut(name) else { return Ok(()) };
            group.blocking_version = group.version;
            group.keys.iter().map(|(k, l)| (k.clone(), format!("{}-{}", l.0, l.1))).collect()
        };
        if streams.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(XREAD_COUNT).arg("BLOCK").arg(block_time(shared)).arg("STREAMS");
        for (key, _) in &streams {
            cmd.arg(key);
        }
        for (_, id) in &streams {
            cmd.arg(id);
        }
        let reply: Value = cmd.query(con)?;
        shared.count(|s| s.xreads += 1);
        fan_out(shared, name, &reply);
        if Instant::now() >= self.next_check {
            self.next_check = Instant::now() + shared.opts.check_interval;
            check_streams(shared, name, con)?;
        }
        Ok(())
    }

    /// A connection to the group's node (or any known one, which redirects),
    /// its client id noted on the group.
    fn connect(&self) -> Result<Connection, RedisError> {
        let (shared, opts) = (self.shared, &self.shared.opts);
        let node = shared.lock().groups.get(self.name).and_then(|g| g.node.clone());
        let timeout = Some(read_timeout(opts));
        let (mut con, node) =
            shared.target.connect_node(node.as_deref(), self.attempt, None, opts.connect_timeout, timeout)?;
        let id = learn_unblock(shared, &mut con)?;
        if let Some(group) = shared.lock().groups.get_mut(self.name) {
            (group.client_id, group.node) = (Some(id), node);
        }
        Ok(con)
    }

    fn forget_node(&self, node: Option<String>) {
        if let Some(group) = self.shared.lock().groups.get_mut(self.name) {
            (group.client_id, group.node) = (None, node);
        }
    }

    fn read_failed(&mut self, err: &RedisError) {
        let shared = self.shared;
        match redirect(err) {
            Some((true, node)) => {
                self.con = None; // MOVED: the slot has a new owner; block there
                self.forget_node(Some(node));
            }
            Some((false, _)) => migrating(shared, self.name), // ASK: keys are moving
            None if err.code() == Some("TRYAGAIN") => migrating(shared, self.name),
            None if is_link_error(err) => {
                if err.is_timeout() {
                    // Silent, not closed: the fetcher's link likely is too, and the listeners'.
                    let mut table = shared.lock();
                    table.relink_query = true;
                    table.probe_asked += 1;
                }
                shared.link_failed();
                self.con = None; // never reused after a timeout: a late reply would pass for the next one
                self.forget_node(None); // after a failover, any live node redirects to the owner
                self.attempt += 1;
                let why = cause(err, read_timeout(&shared.opts));
                let mut table = shared.lock();
                table.stats.reconnects += 1;
                table.events.push("reconnect", why);
                drop(table);
                std::thread::sleep(self.delay);
                self.delay = (self.delay * 2).min(Duration::from_secs(1));
            }
            None => std::thread::sleep(Duration::from_millis(100)), // a watched key is no stream
        }
    }
}

/// The group's slot is being migrated, so one XREAD cannot see all its keys:
/// its live readers go back to the fetcher, whose cluster connection follows
/// each key (ASK), until the blocker's next try.
fn migrating(shared: &Shared, name: &str) {
    {
        let mut table = shared.lock();
        let keys: Vec<String> = table.groups.get(name).map(|g| g.keys.keys().cloned().collect()).unwrap_or_default();
        for key in keys {
            shared.refeed(&mut table, &key);
        }
    }
    std::thread::sleep(MIGRATING_POLL);
}

/// The blocker link's read timeout: the longest block it may ask for, plus
/// `LIVENESS_MARGIN` (15 s with the defaults: `check_interval` 10 s). Fixed
/// per link, so that the commands before its first block are bounded too.
fn read_timeout(opts: &Options) -> Duration {
    let longest = opts.block_ms.unwrap_or_else(|| (opts.check_interval.as_millis() as u64).max(SHORT_BLOCK_MS));
    Duration::from_millis(longest).saturating_add(LIVENESS_MARGIN)
}

fn block_time(shared: &Shared) -> u64 {
    if let Some(ms) = shared.opts.block_ms {
        return ms;
    }
    match shared.lock().can_unblock {
        Some(true) => (shared.opts.check_interval.as_millis() as u64).max(1),
        _ => SHORT_BLOCK_MS,
    }
}

/// The connection's client id; learns whether this user may CLIENT UNBLOCK.
fn learn_unblock(shared: &Shared, con: &mut Connection) -> Result<i64, RedisError> {
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(con)?;
    // No client has id 0: a no-op when permitted, NOPERM for a least-privilege user.
    let can = match redis::cmd("CLIENT").arg("UNBLOCK").arg(0).query::<i64>(con) {
        Ok(_) => true,
        Err(e) if is_link_error(&e) => return Err(e),
        Err(_) => false,
    };
    shared.lock().can_unblock = Some(can);
    Ok(id)
}

/// Hands the entries of an `XREAD` reply to the live subscriptions of each
/// key; a slow one (queue full) goes back to the fetcher, and so does every
/// one of a key whose stream turns out to be written by this library (it was
/// missing when it went live): its writers' notices follow it now.
fn fan_out(shared: &Shared, name: &str, reply: &Value) {
    let streams = parse_xread(reply);
    if streams.is_empty() {
        return;
    }
    let mut table = shared.lock();
    let notify = shared.opts.delivery == Delivery::Notify && !table.notices_refused;
    for (key, raw) in streams {
        let entries: Vec<Arc<HubEntry>> = raw.iter().map(hub_entry).collect();
        let Some(newest) = entries.last() else { continue };
        let Some(group) = table.groups.get_mut(name) else { continue };
        let Some(position) = group.keys.get_mut(&key) else { continue };
        *position = newest.order;
        let to_notices = notify && newest.ours;
        if to_notices {
            group.keys.remove(&key);
        }
        table.ours.insert(key.clone(), newest.ours);
        for sid in table.following(&key) {
            if !table.subs.get(&sid).is_some_and(|s| s.live) {
                continue;
            }
            if !shared.push(&mut table, sid, &entries) || to_notices {
                if let Some(sub) = table.subs.get_mut(&sid) {
                    sub.live = false; // slow: the fetcher feeds it as it drains
                }
                shared.queue_fetch(&mut table, sid);
            }
        }
    }
}

/// Notices followed streams that expired (expiry does not wake `XREAD`) or
/// were lost and written again below a reader's cursor (new entries there do
/// not wake it either): one read-only script call per check (`tops.lua`).
fn check_streams(shared: &Shared, name: &str, con: &mut Connection) -> Result<(), RedisError> {
    let keys: Vec<String> = {
        let table = shared.lock();
        let Some(group) = table.groups.get(name) else { return Ok(()) };
        group.keys.keys().filter(|k| table.followed(k)).cloned().collect()
    };
    if keys.is_empty() {
        return Ok(());
    }
    shared.count(|s| s.checks += 1);
    let mut call = TOPS_SCRIPT.prepare_invoke();
    for key in &keys {
        call.key(key);
    }
    let tops: Vec<String> = call.invoke(con)?;
    let mut table = shared.lock();
    for (key, top) in keys.iter().zip(tops) {
        let top = (!top.is_empty()).then(|| parse_id(&top));
        for sid in table.following(key) {
            let Some(sub) = table.subs.get(&sid).filter(|s| s.state == SubState::Ok) else { continue };
            if top.is_none_or(|top| top < sub.last) {
                table.set_state(sid, SubState::Gone);
            }
        }
    }
    Ok(())
}
