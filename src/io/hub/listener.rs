//! The listener threads (twin of `python/sse_redis/_pure/hub/listener.py`):
//! each holds one subscriber connection, subscribed to the notice channels of
//! the keys its listen set follows, and on a notice has the fetcher
//! range-read the notified keys' subscriptions. One server has one listener
//! (`SUBSCRIBE`; the writers `PUBLISH`); a cluster has one per node that owns
//! followed keys' slots (`SSUBSCRIBE`: a sharded channel lives on its slot's
//! shard). A key whose slot moved (MOVED, the server unsubscribing its
//! channel, the node lost) goes back to the fetcher, which has it caught up
//! and hands it to its new owner's listener.
//!
//! Notices are hints, never the data. Why nothing is lost, nor late past
//! `check_interval` (10 s by default), when one is lost:
//! * Every (re)subscribe is followed, once the server confirms it, by a range
//!   read of every subscription of its key from its cursor (`subscribed`): a
//!   new key, every channel again after a dropped link or a server restart,
//!   a channel the server dropped because its slot moved. What was published
//!   before the confirmation is covered by that read; what is stored after
//!   it is announced on a subscribed link. A notice published before a
//!   reader subscribed is the same case.
//! * A notice (or a confirmation) that arrives while its subscription is
//!   being fetched makes it fetch once more after (`Sub::again`): a read that
//!   started before an entry was stored never stands in for it.
//! * Any other loss: a writer whose user may not publish (the script ignores
//!   the refusal), a notice published on a migrating slot's importing node
//!   (a script's `SPUBLISH` runs there during the ASK phase), a link that
//!   died silently. The fetcher's safety check reads the top of every
//!   stream followed by notice every `check_interval` and fetches those that
//!   grew past what the hub knows; a check that finds a slot migrating
//!   (ASK/TRYAGAIN) polls its keys every `MIGRATING_POLL` until the move
//!   ends. A silent link is found by a probe (a re-subscribe the server must
//!   confirm within `CONFIRM_WITHIN`) sent every `check_interval`, and at
//!   once when another link timed out or a check found a notice missed.
//!
//! The connection speaks RESP3, so that pushes come apart from replies and
//! a read may time out between pushes (every `TICK`, to subscribe new keys)
//! without losing one: the crate resumes a frame read half-way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Connection, ProtocolVersion, PushKind, RedisError, Value};

use super::Shared;
use crate::io::links::{cause, is_link_error, key_slot, redirect, slot_group, text};

/// How long a read for pushes waits before the listener looks for channels to
/// (un)subscribe: the most a new key's first notice can wait for its
/// subscription (its entries meanwhile are range-read after the subscribe).
const TICK: Duration = Duration::from_millis(20);
/// Channels per (S)SUBSCRIBE command.
const CHUNK: usize = 1000;
/// A subscribe unconfirmed this long (the probe's included) means a dead
/// link: the server confirms one within a round trip, so this is generous.
const CONFIRM_WITHIN: Duration = Duration::from_secs(2);

/// The channel a run's writers publish its notices on (`keys.notice_channel`,
/// `append.lua`'s `channel_of`): `<key>:notices` when the key has a hash tag,
/// else `{<key>}:notices`, in the key's slot either way.
pub fn notice_channel(key: &str) -> String {
    if slot_group(key).len() != key.len() {
        format!("{key}:notices")
    } else {
        format!("{{{key}}}:notices")
    }
}

/// A listener thread for a new listen set (on a cluster it ends once its set
/// has no keys left; on one server it parks).
pub(super) fn start(shared: &Arc<Shared>, name: &str) -> Result<(), RedisError> {
    let (listener, name) = (shared.clone(), name.to_owned());
    std::thread::Builder::new()
        .name("sse-redis-listen".into())
        .spawn(move || run(&listener, &name))
        .map(drop)
        .map_err(|e| RedisError::from(std::io::Error::other(format!("cannot start a hub thread: {e}"))))
}

/// What a listener keeps between its reads: the connection and which
/// channels it asked for (dropped with the connection).
struct Listener<'a> {
    shared: &'a Shared,
    name: &'a str,
    sharded: bool,
    con: Option<Connection>,
    /// The channels asked for.
    requested: HashSet<String>,
    /// Asked for, not confirmed yet: when sent.
    unconfirmed: HashMap<String, Instant>,
    /// The listen set's version `requested` matches (`None`: none).
    synced: Option<u64>,
    /// A re-subscribe proving the link, and when it was sent.
    probe: Option<(String, Instant)>,
    next_probe: Instant,
    /// The hub's `probe_asked` when this listener last probed.
    probes_asked: u64,
    delay: Duration,
    /// The server dropped a channel (its slot moved away): keys to rehome.
    moved: bool,
}

fn run(shared: &Shared, name: &str) {
    let mut listener = Listener {
        shared,
        name,
        sharded: shared.target.is_cluster(),
        con: None,
        requested: HashSet::new(),
        unconfirmed: HashMap::new(),
        synced: None,
        probe: None,
        next_probe: Instant::now() + shared.opts.check_interval,
        probes_asked: 0,
        delay: Duration::from_millis(10),
        moved: false,
    };
    while listener.has_keys() {
        match listener.round() {
            Ok(()) => {
                listener.delay = Duration::from_millis(10);
                shared.link_ok();
            }
            Err(err) => listener.round_failed(&err),
        }
    }
}

impl Listener<'_> {
    /// Waits until the listen set has keys; `false` when the hub closed,
    /// notices were refused, or (on a cluster) the set is idle: it then
    /// leaves no thread.
    fn has_keys(&self) -> bool {
        let mut table = self.shared.lock();
        loop {
            if table.closed || table.notices_refused {
                return false;
            }
            if table.listeners.get(self.name).is_some_and(|l| !l.keys.is_empty()) {
                return true;
            }
            if self.shared.target.is_cluster() {
                table.listeners.remove(self.name);
                return false;
            }
            table = self.shared.wait(table);
        }
    }

    /// Connects when needed, matches the subscriptions to the listen set,
    /// then reads pushes for one tick.
    fn round(&mut self) -> Result<(), RedisError> {
        if self.con.is_none() {
            self.connect()?;
        }
        self.sync()?;
        let deadline = Instant::now() + TICK;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(con) = self.con.as_mut().filter(|_| !left.is_zero()) else { break };
            con.set_read_timeout(Some(left))?;
            match con.recv_response() {
                Ok(value) => self.handle(value)?,
                Err(err) if err.is_timeout() => break,
                Err(err) => return Err(err),
            }
        }
        if std::mem::take(&mut self.moved) {
            rehome(self.shared, self.name);
        }
        self.check_link()
    }

    fn connect(&mut self) -> Result<(), RedisError> {
        let opts = &self.shared.opts;
        let node = Some(self.name).filter(|n| !n.is_empty()); // '' on one server
        let resp3 = Some(ProtocolVersion::RESP3);
        let (con, _) = self.shared.target.connect_node(node, 0, resp3, opts.connect_timeout, Some(CONFIRM_WITHIN))?;
        self.con = Some(con);
        (self.requested, self.unconfirmed, self.probe, self.synced) = (HashSet::new(), HashMap::new(), None, None);
        Ok(())
    }

    /// Subscribes the channels the listen set gained, unsubscribes those it
    /// lost (only when it changed: a tick costs nothing per channel), and
    /// re-subscribes one channel as a probe when one is due.
    fn sync(&mut self) -> Result<(), RedisError> {
        let (wanted, asked): (Option<HashSet<String>>, u64) = {
            let table = self.shared.lock();
            let listen = table.listeners.get(self.name);
            let version = listen.map(|l| l.version);
            let changed = version != self.synced;
            self.synced = version;
            let wanted = listen.filter(|_| changed).map(|l| l.channels.keys().cloned().collect());
            (wanted, table.probe_asked)
        };
        let now = Instant::now();
        let (subscribe, unsubscribe) =
            if self.sharded { ("SSUBSCRIBE", "SUNSUBSCRIBE") } else { ("SUBSCRIBE", "UNSUBSCRIBE") };
        if let Some(wanted) = wanted {
            let new: Vec<String> = wanted.iter().filter(|c| !self.requested.contains(*c)).cloned().collect();
            let gone: Vec<String> = self.requested.iter().filter(|c| !wanted.contains(*c)).cloned().collect();
            // One SSUBSCRIBE names channels of one slot only.
            let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
            for channel in &new {
                by_slot.entry(if self.sharded { key_slot(channel) } else { 0 }).or_default().push(channel.clone());
            }
            for channels in by_slot.values() {
                for chunk in channels.chunks(CHUNK) {
                    self.send(subscribe, chunk)?;
                }
            }
            for channel in new {
                self.unconfirmed.insert(channel.clone(), now);
                self.requested.insert(channel);
            }
            for chunk in gone.chunks(CHUNK) {
                self.send(unsubscribe, chunk)?;
            }
            for channel in &gone {
                self.requested.remove(channel);
                self.unconfirmed.remove(channel);
            }
        }
        // A probe every check_interval, and at once when another link timed
        // out or a safety check found a notice missed (this link may be dead too).
        let due = self.probe.is_none() && (now >= self.next_probe || asked != self.probes_asked);
        let confirmed = || self.requested.iter().find(|c| !self.unconfirmed.contains_key(*c)).cloned();
        if let Some(channel) = due.then(confirmed).flatten() {
            self.probes_asked = asked;
            self.send(subscribe, std::slice::from_ref(&channel))?;
            self.probe = Some((channel, now));
            self.shared.count(|s| s.probes += 1);
        }
        Ok(())
    }

    fn send(&mut self, command: &str, channels: &[String]) -> Result<(), RedisError> {
        let Some(con) = self.con.as_mut() else { return Ok(()) };
        con.send_packed_command(&redis::cmd(command).arg(channels).get_packed_command())
    }

    fn handle(&mut self, value: Value) -> Result<(), RedisError> {
        let (kind, data) = match value {
            Value::Push { kind, data } => (kind, data),
            Value::ServerError(err) => return Err(err.into()), // a refused subscribe: NOPERM, MOVED
            _ => return Ok(()),
        };
        let Some(channel) = data.first().and_then(text) else { return Ok(()) };
        match kind {
            PushKind::Message | PushKind::SMessage => {
                let payload = data.get(1).and_then(text).unwrap_or_default();
                notified(self.shared, self.name, &channel, &payload);
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                if self.probe.as_ref().is_some_and(|(c, _)| *c == channel) {
                    self.probe = None;
                    self.next_probe = Instant::now() + self.shared.opts.check_interval;
                }
                if self.unconfirmed.remove(&channel).is_some() {
                    subscribed(self.shared, self.name, &channel);
                }
            }
            // Not asked for (those left `requested` when sent): the server
            // dropped it, as it does for a slot that moved away; its key goes
            // to the slot's new owner (or here again, subscribed anew).
            PushKind::Unsubscribe | PushKind::SUnsubscribe if self.requested.remove(&channel) => {
                self.unconfirmed.remove(&channel);
                self.synced = None;
                self.moved = true;
            }
            _ => {}
        }
        Ok(())
    }

    /// A subscribe (or probe) unconfirmed past `CONFIRM_WITHIN`: the link is
    /// silent (a middlebox may keep ACKing a dead route).
    fn check_link(&self) -> Result<(), RedisError> {
        let oldest = self.unconfirmed.values().copied().chain(self.probe.as_ref().map(|(_, t)| *t)).min();
        if oldest.is_some_and(|t| t.elapsed() > CONFIRM_WITHIN) {
            let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "a subscribe was not confirmed");
            return Err(timeout.into());
        }
        Ok(())
    }

    fn round_failed(&mut self, err: &RedisError) {
        let shared = self.shared;
        self.con = None; // every channel is subscribed again, and caught up on
        if redirect(err).is_some() {
            rehome(shared, self.name); // MOVED or ASK: a slot moved, or moves: its keys go to their owner
            return;
        }
        if !is_link_error(err) {
            // NOPERM (no channel rights), or a server that cannot (no RESP3,
            // no sharded pub/sub before Redis 7): XREAD for every stream.
            refused(shared, &err.to_string());
            return;
        }
        shared.link_failed();
        {
            let mut table = shared.lock();
            if err.is_timeout() {
                table.relink_query = true; // silent, not closed: the fetcher's link likely is too
            }
            table.stats.reconnects += 1;
            table.events.push("reconnect", cause(err, CONFIRM_WITHIN));
        }
        rehome(shared, self.name); // the node may be gone (a failover): its keys go to the new owners
        std::thread::sleep(self.delay);
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
    }
}

/// A notice: the new top seq id of the channel's stream (decimal), or any
/// other payload (a cancel), which is a hint to fetch all the same.
fn notified(shared: &Shared, name: &str, channel: &str, payload: &str) {
    let top = payload.parse::<u64>().ok().filter(|_| payload.bytes().all(|b| b.is_ascii_digit())).map(|s| (0, s));
    let mut table = shared.lock();
    table.stats.notices += 1;
    let Some(listen) = table.listeners.get_mut(name) else { return };
    let Some(key) = listen.channels.get(channel).cloned() else { return };
    if let Some(top) = top {
        let known = listen.keys.entry(key.clone()).or_insert((0, 0));
        if top <= *known {
            return; // known already (fetched, or an older notice)
        }
        *known = top;
    }
    for sid in table.following(&key) {
        if top.is_none_or(|top| table.subs.get(&sid).is_some_and(|s| s.last < top)) {
            shared.refetch(&mut table, sid);
        }
    }
}

/// The server confirmed a subscription: notices published before it are not
/// ours, so every subscription of its key catches up by range read.
fn subscribed(shared: &Shared, name: &str, channel: &str) {
    let mut table = shared.lock();
    let Some(key) = table.listeners.get(name).and_then(|l| l.channels.get(channel)).cloned() else { return };
    shared.refetch_key(&mut table, &key);
}

/// The slot map is read again, and the keys of listen set `name` whose slot
/// another node owns now go back to the fetcher: it has them caught up, then
/// hands them to their owner's listener (notices published meanwhile went
/// there). On one server there is nothing to move.
fn rehome(shared: &Shared, name: &str) {
    if !shared.target.is_cluster() || shared.target.refresh_slots(shared.opts.connect_timeout).is_err() {
        return; // on a cluster the map stays as it was: the next failure tries again
    }
    let mut table = shared.lock();
    let keys: Vec<String> = table.listeners.get(name).map(|l| l.keys.keys().cloned().collect()).unwrap_or_default();
    for key in keys {
        if shared.target.owner(&key).as_deref() == Some(name) {
            continue;
        }
        table.stop_listening(&key);
        shared.refeed(&mut table, &key);
    }
}

/// The server refused to let this hub listen (an ACL without channel rights,
/// or a server without RESP3 or sharded pub/sub): every key goes back to the
/// fetcher, which hands it to the XREAD blockers.
fn refused(shared: &Shared, why: &str) {
    let mut table = shared.lock();
    if table.notices_refused {
        return;
    }
    table.notices_refused = true;
    table.events.push("notices_refused", format!("{why}; streams are followed by XREAD instead"));
    let keys: Vec<String> = table.listeners.values().flat_map(|l| l.keys.keys().cloned()).collect();
    for key in keys {
        shared.refeed(&mut table, &key);
    }
    table.listeners.clear();
    shared.changed.notify_all();
}
