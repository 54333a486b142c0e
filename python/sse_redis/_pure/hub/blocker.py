"""The blocker threads (twin of ``src/io/hub/blocker.rs``): each waits on
every watched key of its group with one ``XREAD BLOCK`` on a dedicated
connection and fans the entries out to the live subscriptions of each key;
every ``check_interval`` it checks the followed streams are still the ones
their readers read."""

from __future__ import annotations

import time
from importlib import resources
from typing import TYPE_CHECKING

import redis

from ..._states import SubState
from .. import links
from ..links import LINK_ERRORS
from .subscription import Group, is_ours, parse_id, to_entry

if TYPE_CHECKING:
    from redis.typing import KeyT, StreamIdT

    from . import Shared

MIGRATING = (redis.exceptions.AskError, redis.exceptions.TryAgainError)
XREAD_COUNT = 1000
TOPS_SCRIPT = resources.files("sse_redis").joinpath("tops.lua").read_text()
SHORT_BLOCK_MS = 250  # without CLIENT UNBLOCK a new key waits at most this long
MIGRATING_POLL = 0.02  # while a slot migrates, its keys are read by the fetcher this often
LIVENESS_MARGIN = 5.0  # a blocking read's reply this late (past its block time) means a dead link


class _Blocker:
    """What a blocker keeps between its reads."""

    def __init__(self, shared: Shared, name: str) -> None:
        self.shared = shared
        self.name = name
        self.client: redis.Redis | None = None
        self.next_check = time.monotonic() + shared.check_interval
        self.delay = 0.01
        self.attempt = 0  # which known cluster node to try when the owner is unknown

    def group(self) -> Group | None:
        """Waits until the group has keys; ``None`` when the hub closed, or (on
        a cluster, which may have a group per run) the group is idle: it then
        leaves no thread."""
        shared = self.shared
        with shared.lock:
            while True:
                group = shared.groups.get(self.name)
                if shared.closed:
                    return None
                if group is not None and group.keys:
                    return group
                if shared.cluster:
                    shared.groups.pop(self.name, None)
                    return None
                shared.changed.wait()

    def read(self, group: Group) -> None:
        """Connects when needed, then one ``XREAD BLOCK`` over the group's keys
        (and a check of the followed streams when one is due)."""
        shared = self.shared
        if self.client is None:
            self.client = self.connect(group)
        # The key set is read only now, after connecting: a key added while the
        # blocker's id was still unknown (so that no one could unblock it) is in
        # this XREAD.
        with shared.lock:
            streams: dict[KeyT, StreamIdT] = {key: "{}-{}".format(*last) for key, last in group.keys.items()}
            group.blocking_version = group.version
        if not streams:
            return
        reply = links.xread(self.client, streams, XREAD_COUNT, block_time(shared))
        shared.count("xreads")
        if reply:
            fan_out(shared, group, reply)
        if time.monotonic() >= self.next_check:
            self.next_check = time.monotonic() + shared.check_interval
            check_streams(shared, group, self.client)

    def connect(self, group: Group) -> redis.Redis:
        """A connection to the group's node (or any known one, which
        redirects), its client id noted on the group."""
        shared = self.shared
        node = group.node
        if node is None and shared.cluster:
            nodes = links.known_nodes(shared.query)
            node = nodes[self.attempt % len(nodes)] if nodes else None
        client = links.connect_node(shared.url, node, shared.connect_timeout, read_timeout(shared))
        client_id = learn_unblock(shared, client)
        with shared.lock:
            group.client_id, group.node = client_id, node
        return client

    def drop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None


def run(shared: Shared, name: str) -> None:
    blocker = _Blocker(shared, name)
    while (group := blocker.group()) is not None:
        try:
            blocker.read(group)
            blocker.delay = 0.01
            shared.link_ok()
        except redis.exceptions.MovedError as exc:
            blocker.drop()  # the slot has a new owner: block there
            with shared.lock:
                group.client_id, group.node = None, links.redirect(exc)[1]  # type: ignore[index]
        except MIGRATING:
            migrating(shared, group)
        except LINK_ERRORS as exc:
            # Never reused after a timeout: a late reply would pass for the next one.
            blocker.drop()
            with shared.lock:
                group.client_id, group.node = None, None  # any live node redirects to the owner
                if isinstance(exc, redis.TimeoutError):
                    shared.relink_query = True  # silent, not closed: the fetcher's link likely is too
                    shared.probe_asked += 1  # and the listeners' links
            blocker.attempt += 1
            with shared.lock:
                shared.stats["reconnects"] += 1
                shared.events.push("reconnect", links.cause(exc, read_timeout(shared)))
            shared.link_failed()
            time.sleep(blocker.delay)
            blocker.delay = min(blocker.delay * 2, 1.0)
        except redis.ResponseError:
            time.sleep(0.1)  # e.g. a watched key is not a stream; the fetcher reports it
    blocker.drop()


def migrating(shared: Shared, group: Group) -> None:
    """The group's slot is being migrated, so one XREAD cannot see all its
    keys: its live readers go back to the fetcher, whose cluster client
    follows each key (ASK), until the blocker's next try."""
    with shared.lock:
        for key in group.keys:
            shared.refeed(key)
    time.sleep(MIGRATING_POLL)


def read_timeout(shared: Shared) -> float:
    """The blocker link's read timeout: the longest block it may ask for, plus
    ``LIVENESS_MARGIN`` (15 s with the defaults: ``check_interval`` 10 s).
    Fixed per link, so that the commands before its first block are bounded
    too."""
    block_ms = shared.block_ms
    longest = block_ms if block_ms is not None else max(shared.check_interval * 1000, SHORT_BLOCK_MS)
    return longest / 1000 + LIVENESS_MARGIN


def block_time(shared: Shared) -> int:
    if shared.block_ms is not None:
        return shared.block_ms
    if shared.can_unblock:
        return max(1, int(shared.check_interval * 1000))
    return SHORT_BLOCK_MS


def learn_unblock(shared: Shared, client: redis.Redis) -> int:
    """The connection's client id; learns whether this user may CLIENT UNBLOCK."""
    client_id = client.client_id()
    try:
        client.client_unblock(0)  # no such client: a no-op when permitted
        can = True
    except redis.ResponseError:
        can = False  # NOPERM: a least-privilege user; fall back to short blocks
    with shared.lock:
        shared.can_unblock = can
    return client_id


def fan_out(shared: Shared, group: Group, reply: links.RawXRead) -> None:
    """Hand the entries of an XREAD reply to the live subscriptions of each
    key; a slow one (queue full) goes back to the fetcher, and so does every
    one of a key whose stream turns out to be written by this library (it
    was missing when it went live): its writers' notices follow it now."""
    with shared.lock:
        for raw_key, raw_entries in reply:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            if key not in group.keys or not raw_entries:
                continue
            entries = [to_entry(i, f) for i, f in raw_entries]
            group.keys[key] = parse_id(entries[-1][0])
            ours = shared.ours[key] = is_ours(raw_entries[-1][1])
            to_notices = ours and shared.delivery == "notify" and not shared.notices_refused
            if to_notices:
                del group.keys[key]
            for sub in shared.by_key.get(key, ()):
                if not sub.live:
                    continue
                if not shared.push(sub, entries) or to_notices:
                    sub.live = False  # a slow reader: the fetcher feeds it as it drains
                    shared.queue_fetch(sub)


def check_streams(shared: Shared, group: Group, client: redis.Redis) -> None:
    """Notice followed streams that expired (expiry does not wake XREAD) or
    were lost and written again below a reader's cursor (new entries there do
    not wake it either): one read-only script call per check (tops.lua)."""
    with shared.lock:
        keys = [k for k in group.keys if shared.followed(k)]
    if not keys:
        return
    shared.count("checks")
    if shared.tops is None:
        shared.tops = client.register_script(TOPS_SCRIPT)  # EVALSHA, loaded again on NOSCRIPT
    tops = shared.tops(keys=keys, client=client)
    with shared.lock:
        for key, top in zip(keys, tops, strict=False):
            newest = parse_id(top.decode()) if top else None
            for sub in shared.by_key.get(key, ()):
                if sub.state == SubState.OK and (newest is None or newest < sub.last):
                    shared.set_state(sub, SubState.GONE)
