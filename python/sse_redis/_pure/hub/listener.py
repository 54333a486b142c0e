"""The listener threads (twin of ``src/io/hub/listener.rs``): each holds one
subscriber connection, subscribed to the notice channels of the keys its
listen set follows, and on a notice has the fetcher range-read the notified
keys' subscriptions.  Notices are hints; why nothing is lost, nor late past
``check_interval``, when one is lost is argued in the twin's module comment
(``src/io/hub/listener.rs``), and holds here step for step.

One server has one listener (``SUBSCRIBE``; the writers ``PUBLISH``); a
cluster has one per node that owns followed keys' slots (``SSUBSCRIBE``: a
sharded channel lives on its slot's shard). A key whose slot moved (MOVED,
the server unsubscribing its channel, the node lost) goes back to the fetcher,
which has it caught up and hands it to its new owner's listener.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import redis
from redis.crc import key_slot

from .. import links
from ..links import LINK_ERRORS
from .subscription import Listen

if TYPE_CHECKING:
    from . import Shared

# How long a read for pushes waits before the listener looks for channels to
# (un)subscribe: the most a new key's first notice can wait for its
# subscription (its entries meanwhile are range-read after the subscribe).
TICK = 0.02
# Channels per (S)SUBSCRIBE command.
CHUNK = 1000
# A subscribe unconfirmed this long (the probe's included) means a dead link:
# the server confirms one within a round trip, so this is generous.
CONFIRM_WITHIN = 2.0


class _Listener:
    """What a listener keeps between its reads: the connection and which
    channels it asked for (dropped with the connection)."""

    def __init__(self, shared: Shared, name: str) -> None:
        self.shared = shared
        self.name = name
        self.sharded = shared.cluster
        self.pubsub: Any = None  # redis.client.PubSub: untyped in redis-py 5
        self.client: redis.Redis | None = None
        self.requested: set[str] = set()  # the channels asked for
        self.unconfirmed: dict[str, float] = {}  # asked for, not confirmed yet: when sent
        self.synced = -1  # the listen set's version ``requested`` matches (-1: none)
        self.probe: tuple[str, float] | None = None  # a re-subscribe proving the link, and when
        self.next_probe = time.monotonic() + shared.check_interval
        self.probes_asked = 0  # the hub's `probe_asked` when this listener last probed
        self.delay = 0.01
        self.moved = False  # a channel was dropped by the server: keys to send to their owners

    def listen_set(self) -> Listen | None:
        """Waits until the listen set has keys; ``None`` when the hub closed, or
        (on a cluster) the set is idle or notices were refused: it then leaves
        no thread."""
        shared = self.shared
        with shared.lock:
            while True:
                listen = shared.listeners.get(self.name)
                if shared.closed or shared.notices_refused:
                    return None
                if listen is not None and listen.keys:
                    return listen
                if shared.cluster:
                    shared.listeners.pop(self.name, None)
                    return None
                shared.changed.wait()

    def round(self, listen: Listen) -> None:
        """Connects when needed, matches the subscriptions to the listen set,
        then reads pushes for one tick."""
        if self.pubsub is None:
            self.connect(listen)
        self.sync(listen)
        deadline = time.monotonic() + TICK
        while (left := deadline - time.monotonic()) > 0:
            message = self.pubsub.get_message(timeout=left)
            if message is None:
                break
            self.handle(listen, message)
        if self.moved:
            self.moved = False
            rehome(self.shared, self.name)
        self.check_link()

    def connect(self, listen: Listen) -> None:
        shared = self.shared
        # The read timeout bounds a push read half-way; waits are get_message's.
        node = self.name or None
        self.client = links.connect_node(shared.url, node, shared.connect_timeout, CONFIRM_WITHIN, single=False)
        self.pubsub = self.client.pubsub()
        self.requested, self.unconfirmed, self.probe, self.synced = set(), {}, None, -1

    def drop(self) -> None:
        if self.pubsub is not None:
            self.pubsub.reset()
        if self.client is not None:
            self.client.close()
        self.pubsub = self.client = None

    def sync(self, listen: Listen) -> None:
        """Subscribe the channels the listen set gained, unsubscribe those it
        lost (only when it changed: a tick costs nothing per channel), and
        re-subscribe one channel as a probe when one is due."""
        with self.shared.lock:
            changed = listen.version != self.synced
            wanted = set(listen.channels) if changed else set()
            self.synced = listen.version
            asked = self.shared.probe_asked
        now = time.monotonic()
        if changed:
            new = [c for c in wanted if c not in self.requested]
            gone = [c for c in self.requested if c not in wanted]
            # One SSUBSCRIBE names channels of one slot only.
            by_slot: dict[int, list[str]] = {}
            for channel in new:
                by_slot.setdefault(key_slot(channel.encode()) if self.sharded else 0, []).append(channel)
            for channels in by_slot.values():
                for i in range(0, len(channels), CHUNK):
                    self.send("SSUBSCRIBE" if self.sharded else "SUBSCRIBE", channels[i : i + CHUNK])
            for channel in new:
                self.requested.add(channel)
                self.unconfirmed[channel] = now
            for i in range(0, len(gone), CHUNK):
                self.send("SUNSUBSCRIBE" if self.sharded else "UNSUBSCRIBE", gone[i : i + CHUNK])
            for channel in gone:
                self.requested.discard(channel)
                self.unconfirmed.pop(channel, None)
        # A probe every check_interval, and at once when another link timed
        # out or a safety check found a notice missed (this link may be dead too).
        due = self.probe is None and (now >= self.next_probe or asked != self.probes_asked)
        confirmed = next((c for c in self.requested if c not in self.unconfirmed), None) if due else None
        if confirmed is not None:
            self.probes_asked = asked
            self.send("SSUBSCRIBE" if self.sharded else "SUBSCRIBE", [confirmed])
            self.probe = (confirmed, now)
            self.shared.count("probes")

    def send(self, command: str, channels: list[str]) -> None:
        # The PubSub methods keep redis-py's own channel table in step (what it
        # re-subscribes on its reconnects, which this listener never lets it make).
        method = getattr(self.pubsub, command.lower())
        method(*channels)

    def handle(self, listen: Listen, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if kind in ("message", "smessage"):
            notified(self.shared, listen, channel, message["data"])
        elif kind in ("subscribe", "ssubscribe"):
            if self.probe is not None and self.probe[0] == channel:
                self.probe = None
                self.next_probe = time.monotonic() + self.shared.check_interval
            if self.unconfirmed.pop(channel, None) is not None:
                subscribed(self.shared, listen, channel)
        elif kind in ("unsubscribe", "sunsubscribe") and channel in self.requested:
            # Not asked for (those left `requested` when sent): the server
            # dropped it, as it does for a slot that moved away; its key goes
            # to the slot's new owner (or here again, subscribed anew).
            self.requested.discard(channel)
            self.unconfirmed.pop(channel, None)
            self.synced = -1
            self.moved = True

    def check_link(self) -> None:
        """A subscribe (or probe) unconfirmed past ``CONFIRM_WITHIN``: the
        link is silent (a middlebox may keep ACKing a dead route)."""
        oldest = min(self.unconfirmed.values(), default=None)
        if self.probe is not None:
            oldest = self.probe[1] if oldest is None else min(oldest, self.probe[1])
        if oldest is not None and time.monotonic() - oldest > CONFIRM_WITHIN:
            raise redis.TimeoutError("a subscribe was not confirmed")


def notified(shared: Shared, listen: Listen, channel: str, payload: object) -> None:
    """A notice: the new top seq id of the channel's stream (decimal), or any
    other payload (a cancel), which is a hint to fetch all the same."""
    text = payload.decode() if isinstance(payload, bytes) else str(payload)
    top = (0, int(text)) if text.isascii() and text.isdigit() else None
    with shared.lock:
        shared.stats["notices"] += 1
        key = listen.channels.get(channel)
        if key is None:
            return
        if top is not None:
            if top <= listen.keys.get(key, (0, 0)):
                return  # known already (fetched, or an older notice)
            listen.keys[key] = top
        for sub in shared.by_key.get(key, ()):
            if top is None or sub.last < top:
                shared.refetch(sub)


def subscribed(shared: Shared, listen: Listen, channel: str) -> None:
    """The server confirmed a subscription: notices published before it are
    not ours, so every subscription of its key catches up by range read."""
    with shared.lock:
        key = listen.channels.get(channel)
        if key is not None:
            shared.refetch_key(key)


def rehome(shared: Shared, name: str) -> None:
    """The slot map is read again, and the keys of listen set ``name`` whose
    slot another node owns now go back to the fetcher: it has them caught
    up, then hands them to their owner's listener (notices published meanwhile
    went there). On one server there is nothing to move."""
    if not shared.cluster:
        return
    try:
        links.refresh_slots(shared.query)
    except (redis.RedisError, *LINK_ERRORS):
        return  # the map stays as it was: the next failure tries again
    with shared.lock:
        listen = shared.listeners.get(name)
        keys = list(listen.keys) if listen is not None else []
    owners = {key: shared.owner_of(key) for key in keys}  # None: no owner now (a failover)
    with shared.lock:
        for key in keys:
            if owners[key] != name and shared.listening_on.get(key) == name:
                shared.stop_listening(key)
                shared.refeed(key)


def refused(shared: Shared, why: str) -> None:
    """The server refused to let this hub listen (an ACL without channel
    rights, or a server without sharded pub/sub before Redis 7): every key
    goes back to the fetcher, which hands it to the XREAD blockers."""
    with shared.lock:
        if shared.notices_refused:
            return
        shared.notices_refused = True
        shared.events.push("notices_refused", f"{why}; streams are followed by XREAD instead")
        for listen in shared.listeners.values():
            for key in listen.keys:
                shared.refeed(key)
        shared.listeners.clear()
        shared.changed.notify_all()


def run(shared: Shared, name: str) -> None:
    listener = _Listener(shared, name)
    while (listen := listener.listen_set()) is not None:
        try:
            listener.round(listen)
            listener.delay = 0.01
            shared.link_ok()
        except redis.exceptions.AskError:
            listener.drop()  # MOVED or ASK: a slot moved, or moves: its keys go to their owner
            rehome(shared, name)
        except LINK_ERRORS as exc:
            listener.drop()  # every channel is subscribed again, and caught up on
            with shared.lock:
                if isinstance(exc, redis.TimeoutError):
                    shared.relink_query = True  # silent, not closed: the fetcher's link likely is too
                shared.stats["reconnects"] += 1
                shared.events.push("reconnect", links.cause(exc, CONFIRM_WITHIN))
            shared.link_failed()
            rehome(shared, name)  # the node may be gone (a failover): its keys go to the new owners
            time.sleep(listener.delay)
            listener.delay = min(listener.delay * 2, 1.0)
        except redis.ResponseError as exc:
            # NOPERM (no channel rights), or a server that cannot (no sharded
            # pub/sub before Redis 7): XREAD for every stream.
            listener.drop()
            refused(shared, str(exc))
    listener.drop()
