//! The hub's data model (twin of `python/sse_redis/_pure/hub/subscription.py`):
//! a subscription and the states a poll reports, the entries readers get, the
//! blocker groups, the listeners' key sets, and the table that holds them all
//! under the hub's lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar};

use super::waker::Waker;
use super::Stats;
use crate::io::entries::Entry;
use crate::io::links::Events;

/// Where a subscription stands, as a poll reports it (the values of
/// `sse_redis._states.SubState`, which the binding hands to Python).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SubState {
    /// Redis has not answered its first fetch yet.
    Pending,
    /// Following the stream.
    Ok,
    /// The stream does not exist (yet).
    Missing,
    /// The cursor is at the end of a complete run: nothing more will come.
    Done,
    /// The stream is not the one the cursor came from (expired, or lost and
    /// written again below the cursor), or not a stream at all.
    Gone,
    /// Redis has not answered for `retry_timeout`.
    Down,
}

impl SubState {
    pub const ALL: [SubState; 6] =
        [SubState::Pending, SubState::Ok, SubState::Missing, SubState::Done, SubState::Gone, SubState::Down];

    pub fn name(self) -> &'static str {
        match self {
            SubState::Pending => "pending",
            SubState::Ok => "ok",
            SubState::Missing => "missing",
            SubState::Done => "done",
            SubState::Gone => "gone",
            SubState::Down => "down",
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
    /// When the writer stored it: the `timestamp` field, in ms since the
    /// epoch; `None` when missing or not a decimal number.
    pub timestamp: Option<f64>,
    /// Stored by a writer of this library (a `writer` field): its run's
    /// writers publish notices.
    pub ours: bool,
}

/// A stream entry id as `(ms, seq)`, in the order Redis keeps.
pub fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

pub fn hub_entry(e: &Entry) -> Arc<HubEntry> {
    Arc::new(HubEntry {
        order: parse_id(&e.id),
        id: e.id.clone(),
        seq: e.seq(),
        data: e.field("data").unwrap_or("").to_owned(),
        complete: e.is_complete(),
        broken: e.field("broken") == Some("true"),
        timestamp: e.field("timestamp").and_then(timestamp_ms),
        ours: e.field("writer").is_some(),
    })
}

/// A `timestamp` field as ms since the epoch: digits, optionally a point and
/// more digits (the twin's rule); anything else is no timestamp.
fn timestamp_ms(text: &str) -> Option<f64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// One reader following one stream key from a cursor.
pub struct Sub {
    pub key: String,
    /// The newest entry id this subscription has.
    pub last: (u64, u64),
    pub queue: VecDeque<Arc<HubEntry>>,
    /// Fed by the blocker (else by the fetcher).
    pub live: bool,
    /// Queued for the fetcher.
    pub fetching: bool,
    /// Told to fetch while fetching: fetch once more after.
    pub again: bool,
    pub fetched_once: bool,
    pub state: SubState,
    pub waker: Option<u64>,
    pub notified: bool,
    pub closed: bool,
    pub cond: Arc<Condvar>,
}

impl Sub {
    pub fn new(key: &str, after_seq: u64, waker: Option<u64>) -> Sub {
        Sub {
            key: key.to_owned(),
            last: (0, after_seq),
            queue: VecDeque::new(),
            live: false,
            fetching: false,
            again: false,
            fetched_once: false,
            state: SubState::Pending, // until the first fetch has reached Redis
            waker,
            notified: false,
            closed: false,
            cond: Arc::new(Condvar::new()),
        }
    }
}

/// The keys one blocker waits on, with the last entry id it has of each.
#[derive(Default)]
pub struct Group {
    pub keys: HashMap<String, (u64, u64)>,
    /// Bumped when a key joins; the blocker's XREAD covers `blocking_version`.
    pub version: u64,
    pub blocking_version: u64,
    pub client_id: Option<i64>,
    /// The cluster node (`host:port`) it blocks on, or should connect to.
    pub node: Option<String>,
}

/// The keys one listener follows by notice (a listen set: every key on one
/// server, the keys whose slots a node owns on a cluster), with the newest
/// entry id the hub knows of each (from notices, fetches and safety checks).
#[derive(Default)]
pub struct Listen {
    pub keys: HashMap<String, (u64, u64)>,
    /// Notice channel -> stream key.
    pub channels: HashMap<String, String>,
    /// Bumped when `channels` changes: the listener syncs only then.
    pub version: u64,
}

/// Everything the hub knows, under its one lock.
#[derive(Default)]
pub struct Table {
    pub subs: HashMap<u64, Sub>,
    pub by_key: HashMap<String, Vec<u64>>,
    pub groups: HashMap<String, Group>,
    /// By node ('' on one server).
    pub listeners: HashMap<String, Listen>,
    /// Key -> the listen set following it.
    pub listening_on: HashMap<String, String>,
    /// Whether each followed key's stream was written by this library (its
    /// newest entry seen has a `writer` field): only those get notices.
    pub ours: HashMap<String, bool>,
    /// This user may not subscribe: every key is followed by XREAD.
    pub notices_refused: bool,
    /// Safety checks in a row that found a stream grown without a notice.
    pub missed_checks: u32,
    /// Bumped when a link timed out or a notice was missed: each listener
    /// then proves its own link at once (a probe) rather than at its next.
    pub probe_asked: u64,
    pub fetch_queue: VecDeque<u64>,
    pub wakers: HashMap<u64, Waker>,
    pub next_id: u64,
    pub unblock_wanted: bool,
    /// A blocker found its link silent: the fetcher's link, on the same
    /// route, is remade before its next command rather than waited out.
    pub relink_query: bool,
    pub can_unblock: Option<bool>,
    pub down_since: Option<std::time::Instant>,
    pub closed: bool,
    pub stats: Stats,
    /// Reconnects with their cause, until the face logs them.
    pub events: Events,
}

impl Table {
    pub fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Changes the subscription's state and tells its reader: a reader's wait
    /// is timed for the state it last saw (`retry_timeout` while pending, its
    /// idle clock once Redis answered), so every change must wake it.
    pub fn set_state(&mut self, sid: u64, state: SubState) {
        let Some(sub) = self.subs.get_mut(&sid) else { return };
        if sub.state != state {
            sub.state = state;
            self.signal(sid);
        }
    }

    /// Tells the subscription's reader there is something to poll.
    pub fn signal(&mut self, sid: u64) {
        let Some(sub) = self.subs.get_mut(&sid) else { return };
        sub.cond.notify_all();
        if sub.notified {
            return;
        }
        sub.notified = true;
        if let Some(waker) = sub.waker.and_then(|w| self.wakers.get_mut(&w)) {
            waker.mark_ready(sid);
        }
    }

    /// The listen set following `key` by notice, if one does.
    pub fn listen_set(&mut self, key: &str) -> Option<&mut Listen> {
        let name = self.listening_on.get(key)?;
        self.listeners.get_mut(name)
    }

    /// `key` leaves its listen set (if in one).
    pub fn stop_listening(&mut self, key: &str) {
        let Some(name) = self.listening_on.remove(key) else { return };
        if let Some(listen) = self.listeners.get_mut(&name) {
            if listen.keys.remove(key).is_some() {
                listen.channels.remove(&super::listener::notice_channel(key));
                listen.version += 1;
            }
        }
    }

    /// The subscriptions following `key`.
    pub fn following(&self, key: &str) -> Vec<u64> {
        self.by_key.get(key).cloned().unwrap_or_default()
    }

    /// Whether a read follows `key` with Redis answering (state `Ok`): the
    /// keys a check of tops is about.
    pub fn followed(&self, key: &str) -> bool {
        self.by_key
            .get(key)
            .is_some_and(|ids| ids.iter().any(|i| self.subs.get(i).is_some_and(|s| s.state == SubState::Ok)))
    }
}
