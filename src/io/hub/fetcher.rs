//! The fetcher thread (twin of `python/sse_redis/_pure/hub/fetcher.py`): it
//! catches subscriptions up with `XRANGE (last +` on the query connection,
//! as far as each one's queue has room, then hands them to a blocker (live),
//! and restarts a blocker's `XREAD` when its group gained keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisError, Value};

use super::subscription::{hub_entry, HubEntry, SubState, Table};
use super::{blocker, Shared};
use crate::io::entries::parse_range;
use crate::io::links::{cause, is_link_error, Link};

/// The fetcher's first pause after a failed round; it doubles per failure in a
/// row up to `MAX_PAUSE` (an outage costs neither a busy loop nor a flood of
/// reconnect warnings) and starts again after a round that worked.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

pub(super) fn run(shared: &Arc<Shared>) {
    let mut con: Option<Link> = None;
    let mut pause = FIRST_PAUSE;
    loop {
        let sid = {
            let mut table = shared.lock();
            while table.fetch_queue.is_empty() && !table.unblock_wanted && !table.closed {
                table = shared.wait(table);
            }
            if table.closed {
                break;
            }
            if std::mem::take(&mut table.relink_query) && con.take().is_some() {
                table.stats.reconnects += 1;
                table.events.push("reconnect", "the blocker's link went silent".into());
            }
            table.fetch_queue.pop_front()
        };
        match fetch_round(shared, &mut con, sid) {
            Ok(()) => {
                shared.link_ok();
                pause = FIRST_PAUSE;
            }
            Err(err) => {
                if round_failed(shared, &mut con, sid, &err) {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }
    release_blockers(shared, con.as_mut());
}

/// One catch-up (if `sid`), then the unblock the catch-ups asked for.
fn fetch_round(shared: &Arc<Shared>, con: &mut Option<Link>, sid: Option<u64>) -> Result<(), RedisError> {
    let opts = &shared.opts;
    let con = match con {
        Some(con) => con,
        None => con.insert(shared.target.connect(opts.connect_timeout, Some(opts.socket_timeout))?),
    };
    if let Some(sid) = sid {
        catch_up(shared, con, sid)?;
    }
    // Catch-ups first, then one unblock for all the keys they added
    // (an unblock per key would re-send a growing XREAD each time).
    let unblock = {
        let table = shared.lock();
        table.unblock_wanted && table.fetch_queue.is_empty()
    };
    if unblock {
        unblock_blockers(shared, con)?;
    }
    Ok(())
}

/// A broken link is dropped (a timeout may leave a reply half read: never
/// reused) and the subscription fetched again; a refused command means the
/// key is not a stream any more (WRONGTYPE): nothing to follow. Returns
/// whether the link failed (the caller pauses before the next round).
fn round_failed(shared: &Shared, con: &mut Option<Link>, sid: Option<u64>, err: &RedisError) -> bool {
    let link = is_link_error(err);
    if link {
        shared.link_failed();
    }
    let mut table = shared.lock();
    if let Some((sid, sub)) = sid.and_then(|sid| table.subs.get_mut(&sid).map(|sub| (sid, sub))) {
        sub.fetching = false;
        if link {
            shared.queue_fetch(&mut table, sid);
        } else {
            table.set_state(sid, SubState::Gone);
        }
    }
    if link {
        *con = None;
        table.stats.reconnects += 1;
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

/// What a catch-up read: the entries after the cursor and, on a first fetch
/// that found none, the stream's top entry (`Some(None)`: no stream).
struct Fetched {
    entries: Vec<Arc<HubEntry>>,
    count: usize,
    top: Option<Option<Arc<HubEntry>>>,
}

fn catch_up(shared: &Arc<Shared>, con: &mut Link, sid: u64) -> Result<(), RedisError> {
    let (key, start, first, room) = {
        let table = shared.lock();
        let Some(sub) = table.subs.get(&sid) else { return Ok(()) };
        let start = format!("({}-{}", sub.last.0, sub.last.1);
        (sub.key.clone(), start, !sub.fetched_once, shared.opts.queue_size.saturating_sub(sub.queue.len()))
    };
    let fetched = fetch(shared, con, &key, &start, first, room)?;
    let mut table = shared.lock();
    let Some(sub) = table.subs.get_mut(&sid) else { return Ok(()) };
    sub.fetching = false;
    if sub.closed {
        return Ok(());
    }
    sub.fetched_once = true;
    let last = sub.last;
    if sub.state == SubState::Pending {
        // Redis answered: the reader's wait, timed for the pending state
        // (`retry_timeout`), goes back to its idle clock.
        table.set_state(sid, SubState::Ok);
    }
    match fetched.top {
        Some(None) => table.set_state(sid, SubState::Missing),
        Some(Some(top)) if top.order < last => {
            // The cursor is past everything the stream holds: not the stream
            // the reader read (it was lost, then written again).
            table.set_state(sid, SubState::Gone);
            return Ok(());
        }
        // Only at the cursor: a top past it arrived after the range read (the
        // blocker gets it), and is no reason to end the read before it.
        Some(Some(top)) if top.complete && top.order == last => {
            table.set_state(sid, SubState::Done); // complete, and the cursor is at its end
            return Ok(());
        }
        _ => {}
    }
    if !shared.push(&mut table, sid, &fetched.entries) {
        return Ok(()); // fetched no more than the room: never happens, never overfills
    }
    if fetched.entries.iter().any(|e| e.complete) {
        return Ok(()); // the terminal entry is queued: the read ends, nothing to watch
    }
    if fetched.entries.len() == fetched.count {
        shared.queue_fetch(&mut table, sid); // more to read, when there is room
        return Ok(());
    }
    go_live(shared, &mut table, sid, key)
}

/// The `XRANGE` of a catch-up (at most `batch_size`, and no more than `room`),
/// and the `XREVRANGE` of the top when a first fetch found nothing.
fn fetch(
    shared: &Shared,
    con: &mut Link,
    key: &str,
    start: &str,
    first: bool,
    room: usize,
) -> Result<Fetched, RedisError> {
    let count = shared.opts.batch_size.min(room);
    let entries: Vec<Arc<HubEntry>> = if count > 0 {
        let reply: Value = redis::cmd("XRANGE").arg(key).arg(start).arg("+").arg("COUNT").arg(count).query(con)?;
        parse_range(&reply).iter().map(hub_entry).collect()
    } else {
        Vec::new()
    };
    shared.count(|s| s.fetches += 1);
    let top = if first && entries.is_empty() {
        let reply: Value = redis::cmd("XREVRANGE").arg(key).arg("+").arg("-").arg("COUNT").arg(1).query(con)?;
        Some(parse_range(&reply).first().map(hub_entry))
    } else {
        None
    };
    Ok(Fetched { entries, count, top })
}

/// The subscription caught up: the blocker of its key's group feeds it from
/// now on (a blocker started, or its key set widened, when needed).
fn go_live(shared: &Arc<Shared>, table: &mut Table, sid: u64, key: String) -> Result<(), RedisError> {
    let Some(sub_last) = table.subs.get(&sid).map(|s| s.last) else { return Ok(()) };
    let name = shared.group_of(&key).to_owned();
    let watched = table.groups.get(&name).and_then(|g| g.keys.get(&key)).copied();
    if watched.is_some_and(|watched| watched > sub_last) {
        shared.queue_fetch(table, sid); // the blocker saw newer entries meanwhile
        return Ok(());
    }
    if let Some(sub) = table.subs.get_mut(&sid) {
        sub.live = true;
    }
    if watched.is_some() {
        return Ok(());
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
