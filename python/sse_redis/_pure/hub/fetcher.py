"""The fetcher thread (twin of ``src/io/hub/fetcher.rs``): it catches
subscriptions up with ``XRANGE (last +`` on the query connection, many in one
pipeline, as far as each one's queue has room, then hands them to a listener
or a blocker (live); it restarts a blocker's ``XREAD`` when its group gained
keys, and runs the safety check of the keys followed by notice."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, cast

import redis
from redis.crc import key_slot

from ..._states import SubState
from ...keys import notice_channel
from .. import links
from ..links import LINK_ERRORS
from . import blocker, listener
from .subscription import Group, Listen, Sub, is_ours, parse_id, to_entry

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
    next_check = time.monotonic() + shared.check_interval
    migrating: set[str] = set()  # keys whose slot moves: checked every MIGRATING_POLL
    next_poll = 0.0
    check: SafetyCheck | None = None  # one under way: a chunk of it per round
    while True:
        with shared.lock:
            while not shared.fetch_queue and not shared.unblock_wanted and not shared.closed and check is None:
                left = min(next_check, next_poll if migrating else next_check) - time.monotonic()
                if left <= 0:
                    break
                shared.changed.wait(left)
            if shared.closed:
                break
            relink, shared.relink_query = shared.relink_query, False
            batch = [shared.fetch_queue.popleft() for _ in range(min(FETCH_BATCH, len(shared.fetch_queue)))]
        if relink:
            with shared.lock:
                shared.stats["reconnects"] += 1
                shared.events.push("reconnect", "the blocker's link went silent")
            drop_connections(shared.query)
        try:
            asked = _fetch_round(shared, batch)
            now = time.monotonic()
            if check is None and now >= next_check:
                next_check = now + shared.check_interval
                check = SafetyCheck(shared)
            elif check is None and migrating and now >= next_poll:
                check = SafetyCheck(shared, migrating)
            if check is not None:
                asked = check.step() or asked
                if check.done:
                    migrating, check = check.finish(), None
                    next_poll = time.monotonic() + blocker.MIGRATING_POLL
            if asked:  # Redis answered (a round with nothing to do proves nothing)
                shared.link_ok()
                pause = FIRST_PAUSE
        except LINK_ERRORS as exc:
            # redis-py has dropped the connection (a timeout may leave a
            # reply half read): the next command makes a new one.
            with shared.lock:
                shared.stats["reconnects"] += 1
                shared.events.push("reconnect", links.cause(exc, shared.socket_timeout))
                shared.probe_asked += 1
                for sub in batch:
                    sub.fetching = False
                    shared.queue_fetch(sub)
            shared.link_failed()
            time.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
    _release_blockers(shared)


# The most subscriptions one round catches up (one pipeline: a round trip per
# server for all of them).
FETCH_BATCH = 256


def _fetch_round(shared: Shared, batch: list[Sub]) -> bool:
    """The batch's catch-ups, then the unblock the catch-ups asked for;
    whether it sent Redis anything."""
    if batch:
        catch_up(shared, batch)
    # Catch-ups first, then one unblock for all the keys they added
    # (an unblock per key would re-send a growing XREAD each time).
    with shared.lock:
        unblock = shared.unblock_wanted and not shared.fetch_queue
    if unblock:
        unblock_blockers(shared)
    return bool(batch) or unblock


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


class _Plan:
    """One subscription's catch-up: what it asks for, then what came back."""

    __slots__ = ("count", "first", "range_at", "sub", "top_at")

    def __init__(self, sub: Sub, count: int, first: bool) -> None:
        self.sub, self.count, self.first = sub, count, first
        self.range_at: int | None = None  # its XRANGE's place in the pipeline
        self.top_at: int | None = None  # its XREVRANGE's (a first fetch)


def catch_up(shared: Shared, batch: list[Sub]) -> None:
    """Range-reads every subscription of ``batch`` in one pipeline (``XRANGE
    (last +``, no more than its queue has room for; and the top entry for a
    first fetch, to tell a missing stream, a finished one and one lost below
    the cursor apart), then hands each its entries."""
    plans: list[_Plan] = []
    calls: list[links.Call] = []
    with shared.lock:
        for sub in batch:
            sub.again = False  # a notice from now on asks for one more fetch
            plan = _Plan(sub, min(shared.batch_size, shared.queue_size - len(sub.queue)), not sub.fetched_once)
            if plan.count > 0:
                plan.range_at = len(calls)
                calls.append((sub.key, ("XRANGE", sub.key, "({}-{}".format(*sub.last), "+", "COUNT", plan.count)))
            if plan.first:
                plan.top_at = len(calls)
                calls.append((sub.key, ("XREVRANGE", sub.key, "+", "-", "COUNT", 1)))
            plans.append(plan)
    replies = links.pipeline(shared.query, calls)[0] if calls else []
    for reply in replies:
        if isinstance(reply, LINK_ERRORS):
            raise reply
    with shared.lock:
        shared.stats["fetches"] += len(plans)
        for plan in plans:
            _caught_up(shared, plan, replies)


def _caught_up(shared: Shared, plan: _Plan, replies: list[object]) -> None:
    """One subscription's share of a round's replies. Caller holds the lock."""
    sub = plan.sub
    sub.fetching = False
    sub.live = False  # fed by the fetcher until it has caught up (go_live)
    if sub.closed:
        return
    reply = replies[plan.range_at] if plan.range_at is not None else []
    top_reply = replies[plan.top_at] if plan.top_at is not None else None
    if isinstance(reply, redis.exceptions.AskError) or isinstance(top_reply, redis.exceptions.AskError):
        shared.queue_fetch(sub)  # a redirection the cluster client did not follow: again
        return
    if isinstance(reply, redis.ResponseError) or isinstance(top_reply, redis.ResponseError):
        shared.set_state(sub, SubState.GONE)  # not a stream any more (WRONGTYPE): nothing to follow
        return
    raw = cast("list[links.RawEntry]", reply)
    sub.fetched_once = True
    if sub.state == SubState.PENDING:
        # Redis answered: the reader's wait, timed for the pending
        # state (retry_timeout), goes back to its idle clock.
        shared.set_state(sub, SubState.OK)
    if raw:
        shared.ours[sub.key] = is_ours(raw[-1][1])
    elif top_reply is not None:
        newest = cast("list[links.RawEntry]", top_reply)
        if not newest:
            shared.set_state(sub, SubState.MISSING)
        else:
            top = to_entry(*newest[0])
            shared.ours[sub.key] = is_ours(newest[0][1])
            if parse_id(top[0]) < sub.last:
                # The cursor is past everything the stream holds: not the
                # stream the reader read (it was lost, then written again).
                shared.set_state(sub, SubState.GONE)
                return
            if top[3] and parse_id(top[0]) == sub.last:
                # Only at the cursor: a top past it arrived after the range
                # read (the hub gets it), and is no reason to end the read.
                shared.set_state(sub, SubState.DONE)  # complete, and the cursor is at its end
                return
    entries = [to_entry(i, f) for i, f in raw]
    if not shared.push(sub, entries):
        return  # cannot happen (fetched no more than the room), but never overfill
    listen = shared.listen_set(sub.key)
    if listen is not None and listen.keys.get(sub.key, sub.last) < sub.last:
        listen.keys[sub.key] = sub.last  # fetched: no notice of these is news, nor a miss
    if any(entry[3] for entry in entries):
        return  # the terminal entry is queued: the read ends, nothing to watch
    if plan.count == 0:
        return  # no room: fed again as its reader drains
    if len(raw) == plan.count or sub.again:
        sub.again = False
        shared.queue_fetch(sub)  # more to read, when there is room; or told to look again
        return
    _go_live(shared, sub)


def _go_live(shared: Shared, sub: Sub) -> None:
    """The subscription caught up: from now on its key is followed by notice
    (a stream this library's writers write, which publish one per batch) or
    by a blocker's XREAD (any other stream, a missing one included), a
    listener or blocker started, or its key set widened, when needed. Caller
    holds the lock."""
    # A cluster key's listen set is its slot's owner; none known (mid-failover): XREAD.
    node = None if shared.notices_refused else shared.owner_of(sub.key)
    by_notice = shared.delivery == "notify" and shared.ours.get(sub.key, False) and node is not None
    name = shared.group_of(sub.key)
    if by_notice:
        group = shared.groups.get(name)
        if group is not None:
            group.keys.pop(sub.key, None)  # it was missing, or not ours, when it went live before
        listen = shared.listen_set(sub.key)
        known = None if listen is None else listen.keys.get(sub.key)
    else:
        shared.stop_listening(sub.key)
        known = shared.watched(sub.key)
    if known is not None and known > sub.last:
        shared.queue_fetch(sub)  # newer entries were seen meanwhile
        return
    sub.live = True
    if known is not None:
        return
    if by_notice and node is not None:
        listen = shared.listeners.get(node)
        if listen is None:
            listen = shared.listeners[node] = Listen()
            threading.Thread(target=listener.run, args=(shared, node), name="sse-redis-listen", daemon=True).start()
        listen.keys[sub.key] = sub.last
        listen.channels[notice_channel(sub.key)] = sub.key
        listen.version += 1
        shared.listening_on[sub.key] = node
        return  # the listener subscribes within a tick, then has the key caught up
    group = shared.groups.get(name)
    if group is None:
        group = shared.groups[name] = Group()
        threading.Thread(target=blocker.run, args=(shared, name), name="sse-redis-hub", daemon=True).start()
    group.keys[sub.key] = sub.last
    group.version += 1
    shared.unblock_wanted = True
    shared.changed.notify_all()


# Keys per safety-check script call: each key costs the server about 8 us
# (measured), and one call must not hold it, nor the fetches behind it, long.
CHECK_CHUNK = 200


class SafetyCheck:
    """One pass of the safety check: every ``check_interval``, the top of every
    stream followed by notice (of the keys in ``only``, when given). One that
    expired or was lost and written again below a reader's cursor ends its
    readers (``StreamNotFound``); one that grew past what the hub knows (a
    notice lost: see the listener) is fetched now. One script call per slot
    (its keys must share one) and ``CHECK_CHUNK`` keys, one call per fetcher
    round: notified runs are never fetched behind a whole pass. Keys found
    migrating (their notices may go to the importing node) are checked again
    every ``MIGRATING_POLL`` until the move ends."""

    def __init__(self, shared: Shared, only: set[str] | None = None) -> None:
        self.shared, self.full = shared, only is None
        by_slot: dict[object, list[str]] = {}
        with shared.lock:
            for listen in shared.listeners.values():
                for key in listen.keys:
                    if (only is None or key in only) and shared.followed(key):
                        by_slot.setdefault(key_slot(key.encode()) if shared.cluster else 0, []).append(key)
        self.chunks = deque(
            keys[i : i + CHECK_CHUNK] for keys in by_slot.values() for i in range(0, len(keys), CHECK_CHUNK)
        )
        self.missed = False
        self.migrating: set[str] = set()

    @property
    def done(self) -> bool:
        return not self.chunks

    def step(self) -> bool:
        """One script call; whether Redis was asked anything."""
        shared = self.shared
        if not self.chunks:
            return False
        chunk = self.chunks[0]
        if shared.tops is None:
            shared.tops = shared.query.register_script(blocker.TOPS_SCRIPT)
        shared.count("checks")
        try:
            tops = shared.tops(keys=chunk, client=shared.query)
        except (redis.exceptions.AskError, redis.exceptions.TryAgainError):
            self.migrating.update(chunk)
            _poll_migrating(shared, chunk)
        else:
            with shared.lock:
                self.missed = _checked(shared, chunk, tops) or self.missed
        self.chunks.popleft()  # a link error leaves it for the next round
        return True

    def finish(self) -> set[str]:
        """The keys found migrating; a full pass also counts a missed notice."""
        if self.full:
            shared = self.shared
            with shared.lock:
                # A notice in flight during a check looks missed once; two
                # passes in a row that find misses mean notices do not arrive:
                # said once.
                shared.missed_checks = shared.missed_checks + 1 if self.missed else 0
                shared.probe_asked += self.missed
                if shared.missed_checks == 2:
                    shared.events.push(
                        "notices_missed",
                        "streams grew without a notice (a writer with no channel rights?): "
                        f"they are read every check_interval ({shared.check_interval}s)",
                    )
        return self.migrating


def _checked(shared: Shared, keys: list[str], tops: list[bytes]) -> bool:
    """Applies one safety-check call's tops; whether a stream had grown
    without a notice. Caller holds the lock."""
    any_missed = False
    for key, raw in zip(keys, tops, strict=False):
        newest = parse_id(raw.decode()) if raw else None
        listen = shared.listen_set(key)
        known = None if listen is None else listen.keys.get(key)
        missed = newest is not None and known is not None and newest > known
        if missed and listen is not None and newest is not None:
            listen.keys[key] = newest
            shared.stats["missed"] += 1
            any_missed = True
        for sub in shared.by_key.get(key, ()):
            if sub.state != SubState.OK:
                continue
            if newest is None or newest < sub.last:
                shared.set_state(sub, SubState.GONE)
            elif missed and newest is not None and sub.last < newest:
                shared.refetch(sub)
    return any_missed


def _poll_migrating(shared: Shared, keys: list[str]) -> None:
    """Fetch the keys' subscriptions now (the slot migrates: notices published
    on the importing node miss this hub); their fetches follow the move (ASK)."""
    with shared.lock:
        for key in keys:
            shared.refetch_key(key)


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
