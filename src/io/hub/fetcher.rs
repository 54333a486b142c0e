//! The fetcher thread (twin of `python/sse_redis/_pure/hub/fetcher.py`): it
//! catches subscriptions up with `XRANGE (last +` on the query connection,
//! many in one pipeline, as far as each one's queue has room, then hands them
//! to a listener or a blocker (live); it restarts a blocker's `XREAD` when its
//! group gained keys, and runs the safety check of the keys followed by
//! notice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisError, Value};

use super::subscription::{hub_entry, parse_id, HubEntry, SubState, Table};
use super::{blocker, listener, Delivery, Shared};
use crate::io::entries::parse_range;
use crate::io::links::{cause, is_link_error, key_slot, redirect, Link};

/// The fetcher's first pause after a failed round; it doubles per failure in a
/// row up to `MAX_PAUSE` (an outage costs neither a busy loop nor a flood of
/// reconnect warnings) and starts again after a round that worked.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

pub(super) fn run(shared: &Arc<Shared>) {
    let mut con: Option<Link> = None;
    let mut pause = FIRST_PAUSE;
    let mut next_check = Instant::now() + shared.opts.check_interval;
    // Keys whose slot moves: checked every MIGRATING_POLL.
    let mut migrating: HashSet<String> = HashSet::new();
    let mut next_poll = Instant::now();
    // A safety check under way: a chunk of it per round.
    let mut check: Option<SafetyCheck> = None;
    loop {
        let batch: Vec<u64> = {
            let mut table = shared.lock();
            while table.fetch_queue.is_empty() && !table.unblock_wanted && !table.closed && check.is_none() {
                let wake = if migrating.is_empty() { next_check } else { next_check.min(next_poll) };
                let left = wake.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                table = Shared::wait_on(&shared.changed, table, Some(left));
            }
            if table.closed {
                break;
            }
            if std::mem::take(&mut table.relink_query) && con.take().is_some() {
                table.stats.reconnects += 1;
                table.events.push("reconnect", "the blocker's link went silent".into());
            }
            let n = table.fetch_queue.len().min(FETCH_BATCH);
            table.fetch_queue.drain(..n).collect()
        };
        let round = fetch_round(shared, &mut con, &batch).and_then(|asked| {
            let now = Instant::now();
            if check.is_none() && now >= next_check {
                next_check = now + shared.opts.check_interval;
                check = Some(SafetyCheck::new(shared, None));
            } else if check.is_none() && !migrating.is_empty() && now >= next_poll {
                check = Some(SafetyCheck::new(shared, Some(&migrating)));
            }
            let Some(pass) = check.as_mut() else { return Ok(asked) };
            let checked = pass.step(shared, link(shared, &mut con)?)?;
            if pass.chunks.is_empty() {
                migrating = check.take().map(|pass| pass.finish(shared)).unwrap_or_default();
                next_poll = Instant::now() + blocker::MIGRATING_POLL;
            }
            Ok(asked || checked)
        });
        match round {
            Ok(asked) => {
                if asked {
                    // Redis answered (a round with nothing to do proves nothing).
                    shared.link_ok();
                    pause = FIRST_PAUSE;
                }
            }
            Err(err) => {
                if round_failed(shared, &mut con, &batch, &err) {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }
    release_blockers(shared, con.as_mut());
}

/// The most subscriptions one round catches up (one pipeline: a round trip
/// per server for all of them).
const FETCH_BATCH: usize = 256;

/// The query connection, made when there is none.
fn link<'c>(shared: &Shared, con: &'c mut Option<Link>) -> Result<&'c mut Link, RedisError> {
    let opts = &shared.opts;
    match con {
        Some(con) => Ok(con),
        None => Ok(con.insert(shared.target.connect(opts.connect_timeout, Some(opts.socket_timeout))?)),
    }
}

/// The batch's catch-ups, then the unblock the catch-ups asked for; whether
/// it sent Redis anything.
fn fetch_round(shared: &Arc<Shared>, con: &mut Option<Link>, batch: &[u64]) -> Result<bool, RedisError> {
    if !batch.is_empty() {
        catch_up(shared, link(shared, con)?, batch)?;
    }
    // Catch-ups first, then one unblock for all the keys they added
    // (an unblock per key would re-send a growing XREAD each time).
    let unblock = {
        let table = shared.lock();
        table.unblock_wanted && table.fetch_queue.is_empty()
    };
    if unblock {
        unblock_blockers(shared, link(shared, con)?)?;
    }
    Ok(!batch.is_empty() || unblock)
}

/// A broken link is dropped (a timeout may leave a reply half read: never
/// reused) and the batch fetched again. Returns whether the link failed (the
/// caller pauses before the next round).
fn round_failed(shared: &Shared, con: &mut Option<Link>, batch: &[u64], err: &RedisError) -> bool {
    let link = is_link_error(err);
    if link {
        shared.link_failed();
    }
    let mut table = shared.lock();
    for &sid in batch {
        let Some(sub) = table.subs.get_mut(&sid) else { continue };
        sub.fetching = false;
        if link {
            shared.queue_fetch(&mut table, sid);
        } else {
            table.set_state(sid, SubState::Gone); // refused as a whole: not streams (WRONGTYPE)
        }
    }
    if link {
        *con = None;
        table.stats.reconnects += 1;
        table.probe_asked += 1; // the listeners' links may be as dead
        table.events.push("reconnect", cause(err, shared.opts.socket_timeout));
    }
    link
}

/// Lets blocked XREADs go now rather than at their timeout (the hub closes).
fn release_blockers(shared: &Shared, con: Option<&mut Link>) {
    let blocked: Vec<(i64, Option<String>)> =
        shared.lock().groups.values().filter_map(|g| g.client_id.map(|id| (id, g.node.clone()))).collect();
    if let Some(c) = con {
        for (id, node) in blocked {
            let _ = c.on_node(redis::cmd("CLIENT").arg("UNBLOCK").arg(id), node.as_deref());
        }
    }
}

/// One subscription's catch-up: what it asks for, then where its replies are.
struct Plan {
    sid: u64,
    key: String,
    count: usize,
    /// Its XRANGE's place in the pipeline.
    range_at: Option<usize>,
    /// Its XREVRANGE's (a first fetch).
    top_at: Option<usize>,
}

/// Range-reads every subscription of `batch` in one pipeline (`XRANGE (last
/// +`, no more than its queue has room for; and the top entry for a first
/// fetch, to tell a missing stream, a finished one and one lost below the
/// cursor apart), then hands each its entries.
fn catch_up(shared: &Arc<Shared>, con: &mut Link, batch: &[u64]) -> Result<(), RedisError> {
    let mut plans = Vec::with_capacity(batch.len());
    let mut cmds = Vec::new();
    {
        let mut table = shared.lock();
        for &sid in batch {
            let Some(sub) = table.subs.get_mut(&sid) else { continue };
            sub.again = false; // a notice from now on asks for one more fetch
            let count = shared.opts.batch_size.min(shared.opts.queue_size.saturating_sub(sub.queue.len()));
            let mut plan = Plan { sid, key: sub.key.clone(), count, range_at: None, top_at: None };
            if count > 0 {
                plan.range_at = Some(cmds.len());
                let start = format!("({}-{}", sub.last.0, sub.last.1);
                cmds.push(redis::cmd("XRANGE").arg(&sub.key).arg(start).arg("+").arg("COUNT").arg(count).clone());
            }
            if !sub.fetched_once {
                plan.top_at = Some(cmds.len());
                cmds.push(redis::cmd("XREVRANGE").arg(&sub.key).arg("+").arg("-").arg("COUNT").arg(1).clone());
            }
            plans.push(plan);
        }
    }
    let replies = if cmds.is_empty() { Vec::new() } else { con.pipeline(cmds)? };
    if let Some(Err(err)) = replies.iter().find(|r| matches!(r, Err(e) if is_link_error(e))) {
        return Err(err.clone());
    }
    let mut table = shared.lock();
    table.stats.fetches += plans.len() as u64;
    for plan in plans {
        caught_up(shared, &mut table, &plan, &replies)?;
    }
    Ok(())
}

/// One subscription's share of a round's replies.
fn caught_up(
    shared: &Arc<Shared>,
    table: &mut Table,
    plan: &Plan,
    replies: &[Result<Value, RedisError>],
) -> Result<(), RedisError> {
    let sid = plan.sid;
    let Some(sub) = table.subs.get_mut(&sid) else { return Ok(()) };
    sub.fetching = false;
    sub.live = false; // fed by the fetcher until it has caught up (go_live)
    if sub.closed {
        return Ok(());
    }
    let reply = |at: Option<usize>| at.and_then(|i| replies.get(i));
    let (range, top) = (reply(plan.range_at), reply(plan.top_at));
    let failed = [range, top].into_iter().flatten().find_map(|r| r.as_ref().err());
    if let Some(err) = failed {
        if redirect(err).is_some() || err.code() == Some("TRYAGAIN") {
            shared.queue_fetch(table, sid); // a redirection the link did not follow: again
        } else {
            table.set_state(sid, SubState::Gone); // not a stream any more (WRONGTYPE): nothing to follow
        }
        return Ok(());
    }
    let entries: Vec<Arc<HubEntry>> = match range {
        Some(Ok(value)) => parse_range(value).iter().map(hub_entry).collect(),
        _ => Vec::new(),
    };
    sub.fetched_once = true;
    let last = sub.last;
    if sub.state == SubState::Pending {
        // Redis answered: the reader's wait, timed for the pending state
        // (`retry_timeout`), goes back to its idle clock.
        table.set_state(sid, SubState::Ok);
    }
    if let Some(newest) = entries.last() {
        table.ours.insert(plan.key.clone(), newest.ours);
    } else if let Some(Ok(value)) = top {
        match parse_range(value).first().map(hub_entry) {
            None => table.set_state(sid, SubState::Missing),
            Some(top) => {
                table.ours.insert(plan.key.clone(), top.ours);
                if top.order < last {
                    // The cursor is past everything the stream holds: not the
                    // stream the reader read (it was lost, then written again).
                    table.set_state(sid, SubState::Gone);
                    return Ok(());
                }
                if top.complete && top.order == last {
                    // Only at the cursor: a top past it arrived after the range
                    // read (the hub gets it), and is no reason to end the read.
                    table.set_state(sid, SubState::Done); // complete, and the cursor is at its end
                    return Ok(());
                }
            }
        }
    }
    if !shared.push(table, sid, &entries) {
        return Ok(()); // fetched no more than the room: never happens, never overfills
    }
    let Some(sub_last) = table.subs.get(&sid).map(|s| s.last) else { return Ok(()) };
    if let Some(known) = table.listen_set(&plan.key).and_then(|l| l.keys.get_mut(&plan.key)) {
        *known = (*known).max(sub_last); // fetched: no notice of these is news, nor a miss
    }
    if entries.iter().any(|e| e.complete) {
        return Ok(()); // the terminal entry is queued: the read ends, nothing to watch
    }
    if plan.count == 0 {
        return Ok(()); // no room: fed again as its reader drains
    }
    let again = table.subs.get_mut(&sid).is_some_and(|s| std::mem::take(&mut s.again));
    if entries.len() == plan.count || again {
        shared.queue_fetch(table, sid); // more to read, when there is room; or told to look again
        return Ok(());
    }
    go_live(shared, table, sid, plan.key.clone())
}

/// The subscription caught up: from now on its key is followed by notice (a
/// stream this library's writers write, which publish one per batch) or by
/// a blocker's XREAD (any other stream, a missing one included), a listener
/// or blocker started, or its key set widened, when needed.
fn go_live(shared: &Arc<Shared>, table: &mut Table, sid: u64, key: String) -> Result<(), RedisError> {
    let Some(sub_last) = table.subs.get(&sid).map(|s| s.last) else { return Ok(()) };
    // A cluster key's listen set is its slot's owner; none known (mid-failover): XREAD.
    let owner = if table.notices_refused { None } else { shared.target.owner(&key) };
    let by_notice =
        shared.opts.delivery == Delivery::Notify && table.ours.get(&key).copied().unwrap_or(false) && owner.is_some();
    let name = shared.group_of(&key).to_owned();
    let known = if by_notice {
        if let Some(group) = table.groups.get_mut(&name) {
            group.keys.remove(&key); // it was missing, or not ours, when it went live before
        }
        table.listen_set(&key).and_then(|l| l.keys.get(&key)).copied()
    } else {
        table.stop_listening(&key);
        table.groups.get(&name).and_then(|g| g.keys.get(&key)).copied()
    };
    if known.is_some_and(|known| known > sub_last) {
        shared.queue_fetch(table, sid); // newer entries were seen meanwhile
        return Ok(());
    }
    if let Some(sub) = table.subs.get_mut(&sid) {
        sub.live = true;
    }
    if known.is_some() {
        return Ok(());
    }
    if let (true, Some(node)) = (by_notice, owner) {
        if !table.listeners.contains_key(&node) {
            listener::start(shared, &node)?;
        }
        let listen = table.listeners.entry(node.clone()).or_default();
        listen.channels.insert(listener::notice_channel(&key), key.clone());
        listen.keys.insert(key.clone(), sub_last);
        listen.version += 1;
        table.listening_on.insert(key, node);
        shared.changed.notify_all();
        return Ok(()); // the listener subscribes within a tick, then has the key caught up
    }
    if !table.groups.contains_key(&name) {
        blocker::start(shared, &name)?;
    }
    let group = table.groups.entry(name).or_default();
    group.keys.insert(key, sub_last);
    group.version += 1;
    table.unblock_wanted = true;
    shared.changed.notify_all();
    Ok(())
}

/// Keys per safety-check script call: each key costs the server about 8 us
/// (measured), and one call must not hold it, nor the fetches behind it, long.
const CHECK_CHUNK: usize = 200;

/// One pass of the safety check: every `check_interval`, the top of every
/// stream followed by notice (of the keys in `only`, when given). One that
/// expired or was lost and written again below a reader's cursor ends its
/// readers (`StreamNotFound`); one that grew past what the hub knows (a notice
/// lost: see `listener.rs`) is fetched now. One script call per slot (its keys
/// must share one) and `CHECK_CHUNK` keys, one call per fetcher round:
/// notified runs are never fetched behind a whole pass. Keys found migrating
/// (their notices may go to the importing node) are checked again every
/// `MIGRATING_POLL` until the move ends.
struct SafetyCheck {
    full: bool,
    chunks: VecDeque<Vec<String>>,
    missed: bool,
    migrating: HashSet<String>,
}

impl SafetyCheck {
    fn new(shared: &Shared, only: Option<&HashSet<String>>) -> SafetyCheck {
        let table = shared.lock();
        let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
        let keys = table.listeners.values().flat_map(|l| l.keys.keys());
        for key in keys.filter(|k| only.is_none_or(|only| only.contains(*k)) && table.followed(k)) {
            let slot = if shared.target.is_cluster() { key_slot(key) } else { 0 };
            by_slot.entry(slot).or_default().push(key.clone());
        }
        let chunks = by_slot.values().flat_map(|keys| keys.chunks(CHECK_CHUNK).map(<[String]>::to_vec)).collect();
        SafetyCheck { full: only.is_none(), chunks, missed: false, migrating: HashSet::new() }
    }

    /// One script call; whether Redis was asked anything. A link error leaves
    /// the chunk for the next round.
    fn step(&mut self, shared: &Shared, con: &mut Link) -> Result<bool, RedisError> {
        let Some(chunk) = self.chunks.front() else { return Ok(false) };
        shared.count(|s| s.checks += 1);
        let mut call = blocker::TOPS_SCRIPT.prepare_invoke();
        for key in chunk {
            call.key(key);
        }
        match call.invoke::<Vec<String>>(con) {
            Ok(tops) => self.missed |= checked(shared, chunk, &tops),
            Err(err) if redirect(&err).is_some_and(|(moved, _)| !moved) || err.code() == Some("TRYAGAIN") => {
                self.migrating.extend(chunk.iter().cloned());
                poll_migrating(shared, chunk);
            }
            Err(err) => return Err(err),
        }
        self.chunks.pop_front();
        Ok(true)
    }

    /// The keys found migrating; a full pass also counts a missed notice.
    fn finish(self, shared: &Shared) -> HashSet<String> {
        if self.full {
            let mut table = shared.lock();
            // A notice in flight during a check looks missed once; two passes
            // in a row that find misses mean notices do not arrive: said once.
            table.missed_checks = if self.missed { table.missed_checks + 1 } else { 0 };
            table.probe_asked += u64::from(self.missed);
            if table.missed_checks == 2 {
                let why = format!(
                    "streams grew without a notice (a writer with no channel rights?): \
                     they are read every check_interval ({}s)",
                    shared.opts.check_interval.as_secs_f64()
                );
                table.events.push("notices_missed", why);
            }
        }
        self.migrating
    }
}

/// Applies one safety-check call's tops; whether a stream had grown without
/// a notice.
fn checked(shared: &Shared, keys: &[String], tops: &[String]) -> bool {
    let mut table = shared.lock();
    let mut any_missed = false;
    for (key, top) in keys.iter().zip(tops) {
        let newest = (!top.is_empty()).then(|| parse_id(top));
        let known = table.listen_set(key).and_then(|l| l.keys.get_mut(key));
        let missed = match (newest, known) {
            (Some(newest), Some(known)) if newest > *known => {
                *known = newest;
                true
            }
            _ => false,
        };
        if missed {
            table.stats.missed += 1;
            any_missed = true;
        }
        for sid in table.following(key) {
            let Some(sub) = table.subs.get(&sid).filter(|s| s.state == SubState::Ok) else { continue };
            match newest {
                Some(newest) if newest >= sub.last => {
                    if missed && sub.last < newest {
                        shared.refetch(&mut table, sid);
                    }
                }
                _ => table.set_state(sid, SubState::Gone),
            }
        }
    }
    any_missed
}

/// Fetches the keys' subscriptions now (the slot migrates: notices published
/// on the importing node miss this hub); their fetches follow the move (ASK).
fn poll_migrating(shared: &Shared, keys: &[String]) {
    let mut table = shared.lock();
    for key in keys {
        shared.refetch_key(&mut table, key);
    }
}

/// Restarts the XREAD of each blocker whose group has new keys, so that it
/// covers them.
fn unblock_blockers(shared: &Shared, con: &mut Link) -> Result<(), RedisError> {
    let deadline = Instant::now() + Duration::from_millis(50);
    loop {
        let behind: Vec<(i64, Option<String>)> = {
            let mut table = shared.lock();
            if table.closed || table.can_unblock != Some(true) {
                table.unblock_wanted = false; // the blockers' short blocks pick the keys up
                return Ok(());
            }
            // A blocker not yet connected (no id) reads its keys when it starts.
            let behind: Vec<_> = table
                .groups
                .values()
                .filter(|g| g.blocking_version < g.version && !g.keys.is_empty())
                .filter_map(|g| g.client_id.map(|id| (id, g.node.clone())))
                .collect();
            if behind.is_empty() {
                table.unblock_wanted = false;
                return Ok(());
            }
            behind
        };
        let mut all_woke = true;
        for (id, node) in &behind {
            let woke: i64 = redis::FromRedisValue::from_redis_value(
                con.on_node(redis::cmd("CLIENT").arg("UNBLOCK").arg(*id), node.as_deref())?,
            )?;
            shared.count(|s| s.unblocks += 1);
            all_woke &= woke == 1;
        }
        if all_woke || Instant::now() > deadline {
            shared.lock().unblock_wanted = false;
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(500)); // a blocker is between reads
    }
}
