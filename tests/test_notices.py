"""The writers' notices (issue 12, step 1): after each batch it stores,
``append.lua`` publishes the new top seq id on the run's notice channel
(``sse_redis.keys.notice_channel``), ``PUBLISH`` on one server and
``SPUBLISH`` on a cluster; nothing for a ``dup``, ``stale``, ``closed`` or
``wrongtype`` answer; a refused publish (no channel rights) is ignored.
Real servers, both backends."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import pytest
import redis as redis_py
from redis.crc import key_slot as key_hash_slot

from sse_redis import ClusterKeyLayout, KeyLayout, StaleWriterError, StreamWriter
from sse_redis.keys import derived_key, hash_tag, notice_channel, resolve, status_key
from test_security import LEAST_PRIVILEGE, PASSWORD

APPEND_SCRIPT = resources.files("sse_redis").joinpath("append.lua").read_text()

LAYOUTS: dict[str, Any] = {
    "KeyLayout": KeyLayout(),
    "ClusterKeyLayout": ClusterKeyLayout(),
    "prefix string": "notice-test:",
    "callable": lambda run_id: f"custom/{run_id}/stream",
}


def chunk(i: int) -> str:
    return f'data: {{"run_id":null,"seq_id":null,"i":{i}}}\n\n'


class Listener:
    """Every message a redis-py subscriber gets, on a pattern covering all channels."""

    def __init__(self, client: redis_py.Redis, *, pattern: str = "*", channel: str | None = None, shard: bool = False):
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        if shard:
            self.pubsub.ssubscribe(channel)
        else:
            self.pubsub.psubscribe(pattern)
        self.shard = shard
        self.messages: list[tuple[str, str]] = []
        self.wait_subscribed()

    def wait_subscribed(self) -> None:
        deadline = time.monotonic() + 5
        while not self.pubsub.subscribed and time.monotonic() < deadline:
            self.pubsub.get_sharded_message(timeout=0.05) if self.shard else self.pubsub.get_message(timeout=0.05)

    def drain(self, settle: float = 0.3) -> list[tuple[str, str]]:
        """What arrived until ``settle`` seconds passed with nothing new."""
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            get = self.pubsub.get_sharded_message if self.shard else self.pubsub.get_message
            message = get(timeout=0.05)
            if message is not None:
                self.messages.append((_text(message["channel"]), _text(message["data"])))
                deadline = time.monotonic() + settle
        return self.messages

    def close(self) -> None:
        self.pubsub.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@pytest.fixture
def listen() -> Iterator[Callable[..., Listener]]:
    listeners: list[Listener] = []

    def make(client: redis_py.Redis, **options: Any) -> Listener:
        listener = Listener(client, **options)
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        listener.close()


# ------------------------------------------------------------------ the name rule


def test_hash_tag_follows_redis_rule() -> None:
    assert hash_tag("sse:run:{3}:r") == "3"
    assert hash_tag("sse:run:r") is None
    assert hash_tag("a{}b{c}") is None  # the first '{' and the next '}': empty, so none
    assert hash_tag("a}b{c}d") == "c"
    assert hash_tag("a{b") is None


def test_derived_names_share_the_slot_and_never_collide() -> None:
    assert notice_channel("sse:run:r1") == "{sse:run:r1}:notices"
    assert status_key("sse:run:r1") == "{sse:run:r1}:status"
    assert notice_channel("sse:run:{3}:r1") == "sse:run:{3}:r1:notices"
    assert derived_key("sse:run:{3}:r1", "status") == "sse:run:{3}:r1:status"
    for key in ("sse:run:r1", "sse:run:{3}:r1", "custom/r1/stream"):
        for name in (notice_channel(key), status_key(key)):
            assert key_hash_slot(name.encode()) == key_hash_slot(key.encode())


# ------------------------------------------------ one notice per stored batch


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_one_notice_per_stored_batch_on_the_derived_channel(
    backend, redis_url, make_writer, plain_client, listen, run_id, layout
) -> None:
    """The script and keys.notice_channel agree for every kind of layout: every
    message published while the run is written arrives on the channel Python
    derives, one per batch (each chunk flushed on its own), the top seq as payload."""
    keys = LAYOUTS[layout]
    run = run_id()
    channel = notice_channel(resolve(keys)(run))
    listener = listen(plain_client(redis_url))
    writer = make_writer(redis_url, keys=keys)
    for i in range(1, 6):
        assert writer.write(run, chunk(i)) == i
        writer.flush(run_id=run)
    writer.complete(run)
    assert listener.drain() == [(channel, str(seq)) for seq in range(1, 7)]


def test_a_call_of_many_batches_publishes_once_per_batch(
    backend, redis_url, make_writer, plain_client, listen, run_id
) -> None:
    """flush_size=1 and chunks queued for several runs: calls carry many runs'
    batches (and several of one run's); each stored batch has its notice, in order."""
    runs = [run_id() for _ in range(5)]
    listener = listen(plain_client(redis_url))
    writer = make_writer(redis_url, flush_size=1)
    for i in range(1, 11):
        for run in runs:
            writer.write(run, chunk(i))
    writer.flush()
    messages = listener.drain()
    for run in runs:
        channel = notice_channel(KeyLayout().key(run))
        assert [data for ch, data in messages if ch == channel] == [str(i) for i in range(1, 11)]
    assert len(messages) == 50


# ------------------------------------------------------ nothing for a refusal


def test_no_notice_for_a_stale_batch(backend, redis_url, make_writer, plain_client, listen, run_id) -> None:
    """A second writer moves the run on: the first writer's next batch is
    stale, stored nowhere and published nowhere."""
    run = run_id()
    channel = notice_channel(KeyLayout().key(run))
    first = make_writer(redis_url)
    for i in range(1, 4):
        first.write(run, chunk(i))
    first.flush()
    listener = listen(plain_client(redis_url))
    second = make_writer(redis_url)
    assert second.write(run, chunk(4)) == 4
    second.flush()
    first.write(run, chunk(99))
    with pytest.raises(StaleWriterError):
        first.flush(run_id=run)
    assert listener.drain() == [(channel, "4")]


@pytest.mark.parametrize("notice", ["p", "s"])
def test_script_publishes_only_what_it_stores(redis_url, plain_client, listen, notice) -> None:
    """append.lua itself: 'ok' publishes the top seq; 'dup', 'closed', 'stale'
    and 'wrongtype' publish nothing; '' (no notice flag) publishes nothing."""
    client = plain_client(redis_url)
    sha = client.script_load(APPEND_SCRIPT)
    key, writer = f"sse:run:{uuid.uuid4().hex}", uuid.uuid4().hex
    channel = notice_channel(key)
    # SPUBLISH reaches shard subscribers only (one server accepts it too).
    listener = listen(client) if notice == "p" else listen(client, channel=channel, shard=True)

    def call(first: int, mode: str, *chunks: tuple[str, str], flag: str = notice, k: str = key) -> list[Any]:
        args: list[Any] = [writer, "", "", flag, first, len(chunks), mode]
        for data, complete in chunks:
            args += [data, "1700000000000", complete]
        return client.evalsha(sha, 1, k, *args)  # type: ignore[no-any-return]

    assert call(1, "", ("a", "")) == [["ok", 1]]
    assert call(1, "", ("a", "")) == [["dup", 1]]  # a retry after a lost reply
    assert call(2, "1", ("b", "")) == [["ok", 2]]  # the lean path
    assert call(2, "1", ("b", "")) == [["dup", 2]]  # the lean path refused, then dup
    assert call(5, "", ("x", "")) == [["stale", 2]]  # not after the top: another writer moved on
    assert call(3, "", ("c", "")) == [["ok", 3]]
    assert call(4, "", ("d", ""), flag="") == [["ok", 4]]  # no notice asked
    assert call(5, "1", ("[DONE]", "1")) == [["ok", 5]]  # a lone terminal: checked path
    assert call(6, "", ("e", "")) == [["closed", 5]]
    client.set(f"{key}:string", "x")
    assert call(1, "", ("a", ""), k=f"{key}:string") == [["wrongtype", 0]]
    assert listener.drain() == [(channel, "1"), (channel, "2"), (channel, "3"), (channel, "5")]


# ------------------------------------------------------------------- cluster


@pytest.mark.parametrize("layout", ["ClusterKeyLayout", "KeyLayout"])
def test_cluster_notices_reach_ssubscribe_on_the_keys_shard(
    backend, valkey_cluster, make_writer, listen, run_id, layout
) -> None:
    keys = ClusterKeyLayout() if layout == "ClusterKeyLayout" else KeyLayout()
    runs = [run_id() for _ in range(4)]
    listeners = {}
    for run in runs:
        key = keys.key(run)
        channel = notice_channel(key)
        node = valkey_cluster.master_for_slot(valkey_cluster.key_slot(key))
        listeners[run] = (channel, listen(valkey_cluster.client(node.port), channel=channel, shard=True))
    writer = make_writer(valkey_cluster.seed_url, cluster=True, keys=keys)
    for i in range(1, 6):
        for run in runs:
            writer.write(run, chunk(i))
        writer.flush()
    for run in runs:
        writer.complete(run)
    for run in runs:
        channel, listener = listeners[run]
        assert listener.drain() == [(channel, str(seq)) for seq in range(1, 7)]


# ----------------------------------------------------------------------- ACL


@pytest.mark.parametrize("rights", ["no publish command", "publish but no channels"])
def test_a_user_without_channel_rights_still_writes(backend, dedicated_server, rights) -> None:
    """Redis 7's default for new users is resetchannels: the script's publish
    is refused, and ignored; every chunk is stored."""
    server = dedicated_server()
    admin = redis_py.Redis.from_url(server.url, decode_responses=True)
    extra = ["+publish", "+spublish"] if rights == "publish but no channels" else []
    admin.execute_command("ACL", "SETUSER", "sse", "on", f">{PASSWORD}", *LEAST_PRIVILEGE, *extra)
    url = f"redis://sse:{PASSWORD}@127.0.0.1:{server.port}/0"
    run = f"acl-{uuid.uuid4().hex}"
    with StreamWriter(url, backend=backend) as writer:
        for i in range(1, 6):
            assert writer.write(run, chunk(i)) == i
            writer.flush(run_id=run)
        assert writer.complete(run) == 6
    entries = admin.xrange(KeyLayout().key(run))
    assert [e[1]["seq_id"] for e in entries] == [str(i) for i in range(1, 7)]
    admin.close()
