"""The fetcher thread (twin of ``src/io/hub/fetcher.rs``): it catches
subscriptions up with ``XRANGE (last +`` on the query connection, as far as
each one's queue has room, then hands them to a blocker (live), and restarts a
blocker's ``XREAD`` when its group gained keys."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import redis

from ..._states import SubState
from .. import links
from ..links import LINK_ERRORS
from . import blocker
from .subscription import Group, Sub, parse_id, to_entry

if TYPE_CHECKING:
    from . import Shared


def drop_connections(client: links.Client) -> None:
    """Close every connection of ``client``; its next command makes a new one."""
    if isinstance(client, redis.Redis):
        client.connection_pool.disconnect()
    else:
        links.cluster_calls(client).disconnect_connection_pools()


# The fetcher's first pause after a failed round; it doubles per failure in a
# row up to MAX_PAUSE (an outage costs neither a busy loop nor a flood of
# reconnect warnings) and starts again after a round that worked.
FIRST_PAUSE = 0.05
MAX_PAUSE = 1.0


def run(shared: Shared) -> None:
    pause = FIRST_PAUSE
    while True:
        with shared.lock:
            while not shared.fetch_queue and not shared.unblock_wanted and not shared.closed:
                shared.changed.wait()
            if shared.closed:
                break
            relink, shared.relink_query = shared.relink_query, False
            sub = shared.fetch_queue.popleft() if shared.fetch_queue else None
        if relink:
            with shared.lock:
                shared.stats["reconnects"] += 1
                shared.events.push("reconnect", "the blocker's link went silent")
            drop_connections(shared.query)
        try:
            _fetch_round(shared, sub)
            shared.link_ok()
            pause = FIRST_PAUSE
        except LINK_ERRORS as exc:
            # redis-py has dropped the connection (a timeout may leave a
            # reply half read): the next command makes a new one.
            with shared.lock:
                shared.stats["reconnects"] += 1
                shared.events.push("reconnect", links.cause(exc, shared.socket_timeout))
            shared.link_failed()
            if sub is not None:
                with shared.lock:
                    sub.fetching = False
                    shared.queue_fetch(sub)
            time.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
        except redis.ResponseError:
            if sub is not None:
                with shared.lock:
                    sub.fetching = False
                    shared.set_state(sub, SubState.GONE)  # not a stream any more (WRONGTYPE): nothing to follow
    _release_blockers(shared)


def _fetch_round(shared: Shared, sub: Sub | None) -> None:
    """One catch-up (if ``sub``), then the unblock the catch-ups asked for."""
    if sub is not None:
        catch_up(shared, sub)
    # Catch-ups first, then one unblock for all the keys they added
    # (an unblock per key would re-send a growing XREAD each time).
    with shared.lock:
        unblock = shared.unblock_wanted and not shared.fetch_queue
    if unblock:
        unblock_blockers(shared)


def _release_blockers(shared: Shared) -> None:
    """Let blocked XREADs go now rather than at their timeout (the hub closes)."""
    with shared.lock:
        blocked = [(g.client_id, g.node) for g in shared.groups.values() if g.client_id is not None]
        can = shared.can_unblock
    for client_id, node in blocked if can else ():
        try:
            links.on_node(shared.query, node, "CLIENT UNBLOCK", client_id)
        except (redis.RedisError, *LINK_ERRORS):
            pass  # best effort: a blocker also leaves at its block's end
    shared.query.close()


def catch_up(shared: Shared, sub: Sub) -> None:
    with shared.lock:
        room = shared.queue_size - len(sub.queue)
        start = "({}-{}".format(*sub.last)
        first = not sub.fetched_once
    count = min(shared.batch_size, room)
    raw = links.xrange(shared.query, sub.key, start, count) if count > 0 else []
    shared.count("fetches")
    top = None
    if first and not raw:
        newest = links.xrevrange_top(shared.query, sub.key)
        top = to_entry(*newest[0]) if newest else None
    with shared.lock:
        sub.fetching = False
        if sub.closed:
            return
        sub.fetched_once = True
        if sub.state == SubState.PENDING:
            # Redis answered: the reader's wait, timed for the pending
            # state (retry_timeout), goes back to its idle clock.
            shared.set_state(sub, SubState.OK)
        if first and not raw:
            if top is None:
                shared.set_state(sub, SubState.MISSING)
            elif parse_id(top[0]) < sub.last:
                # The cursor is past everything the stream holds: not the
                # stream the reader read (it was lost, then written again).
                shared.set_state(sub, SubState.GONE)
                return
            elif top[3] and parse_id(top[0]) == sub.last:
                # Only at the cursor: a top past it arrived after the range
                # read (the blocker gets it), and is no reason to end the read.
                shared.set_state(sub, SubState.DONE)  # complete, and the cursor is at its end
                return
        entries = [to_entry(i, f) for i, f in raw]
        if not shared.push(sub, entries):
            return  # cannot happen (fetched no more than the room), but never overfill
        if any(entry[3] for entry in entries):
            return  # the terminal entry is queued: the read ends, nothing to watch
        if len(raw) == count:
            shared.queue_fetch(sub)  # more to read, when there is room
            return
        _go_live(shared, sub)


def _go_live(shared: Shared, sub: Sub) -> None:
    """The subscription caught up: the blocker of its key's group feeds it
    from now on (a blocker started, or its key set widened, when needed).
    Caller holds the lock."""
    watched = shared.watched(sub.key)
    if watched is not None and watched > sub.last:
        shared.queue_fetch(sub)  # the blocker saw newer entries meanwhile
        return
    sub.live = True
    if watched is not None:
        return
    name = shared.group_of(sub.key)
    group = shared.groups.get(name)
    if group is None:
        group = shared.groups[name] = Group()
        threading.Thread(target=blocker.run, args=(shared, name), name="sse-redis-hub", daemon=True).start()
    group.keys[sub.key] = sub.last
    group.version += 1
    shared.unblock_wanted = True
    shared.changed.notify_all()


def unblock_blockers(shared: Shared) -> None:
    """Restart the XREAD of each blocker whose group has new keys, so that it covers them."""
    deadline = time.monotonic() + 0.05
    while True:
        with shared.lock:
            if shared.closed or not shared.can_unblock:
                shared.unblock_wanted = False
                return  # the blockers' short blocks pick the keys up
            # A blocker not yet connected (no id) reads its keys when it starts.
            behind = [
                (g.client_id, g.node)
                for g in shared.groups.values()
                if g.blocking_version < g.version and g.keys and g.client_id is not None
            ]
            if not behind:
                shared.unblock_wanted = False
                return
        all_woke = True
        for client_id, node in behind:
            woke = links.on_node(shared.query, node, "CLIENT UNBLOCK", client_id)
            shared.count("unblocks")
            all_woke = all_woke and bool(woke)
        if all_woke or time.monotonic() > deadline:
            with shared.lock:
                shared.unblock_wanted = False
            return
        time.sleep(0.0005)  # a blocker is between reads; it will see the keys
