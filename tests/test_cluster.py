"""Writer and reader on a real Valkey Cluster (3 masters, 3 replicas; see
``cluster_servers.py``), on both backends: runs spread over the buckets of
``ClusterKeyLayout``, a slot migrated under a live run, a master killed under
a writer that waits for its replica.  Every test checks that each chunk
arrives exactly once, in order."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis as redis_py
from redis.cluster import RedisCluster

from fixtures_http import serve_app
from sse_redis import AsyncStreamReader, ClusterKeyLayout, StreamReader, StreamWriter, _backend
from test_reader import Background, check_run, collect, payload
from test_starlette import events_of

BUCKETS = 16


@pytest.fixture
def codec(backend: str) -> Any:
    return _backend.module(backend)


def blocked_clients(cluster: Any) -> int:
    """Connections blocked in a command (XREAD BLOCK), over every node."""
    return sum(sum("b" in c["flags"] for c in cluster.client(node.port).client_list()) for node in cluster.nodes)


def test_many_runs_over_buckets_exactly_once(backend, valkey_cluster, make_writer, open_reader, run_id, codec):
    """40 live runs land in many slots; every reader gets its run in order,
    and the hub listens for notices on one connection per primary node."""
    url = valkey_cluster.seed_url
    writer = make_writer(url, cluster=True)
    reader = open_reader(url, cluster=True)
    runs = [run_id() for _ in range(40)]
    assert len({ClusterKeyLayout().bucket(run) for run in runs}) > 8  # spread, not one slot
    results: dict[str, list[str]] = {}

    def read(run: str) -> None:
        results[run] = collect(reader.read(run, starting_after=0, missing_timeout=20))

    threads = [Background(lambda run=run: read(run)) for run in runs]
    for i in range(1, 31):
        for run in runs:
            assert writer.write(run, payload(i)) == i
        if i == 15:
            time.sleep(0.2)  # readers are live by now: the rest arrives by notice
            stats = reader._hub.get().stats()
            assert 0 < stats["listeners"] <= 3  # the 3x2 cluster's primaries, whatever the runs and buckets
            assert stats["blockers"] == 0
            assert blocked_clients(valkey_cluster) == 0
    for run in runs:
        assert writer.complete(run) == 31
    for thread in threads:
        thread.join()
    for run in runs:
        check_run(codec, results[run], run, 0, 31)


def test_keys_are_bucketed_and_resume_mid_run(backend, valkey_cluster, make_writer, open_reader, run_id, codec):
    """The default cluster layout puts the bucket in a hash tag; a reader
    resuming from Last-Event-ID gets the rest only."""
    url = valkey_cluster.seed_url
    writer = make_writer(url, cluster=True)
    run = run_id()
    for i in range(1, 21):
        writer.write(run, payload(i))
    writer.complete(run)
    writer.flush()
    key = f"sse:run:{{{ClusterKeyLayout().bucket(run)}}}:{run}"
    owner = valkey_cluster.master_for_slot(valkey_cluster.key_slot(key))
    assert valkey_cluster.client(owner.port).xlen(key) == 21
    chunks = collect(open_reader(url, cluster=True).read(run, last_event_id="12"))
    check_run(codec, chunks, run, 12, 21)


def test_redis_cluster_client_and_async_reader(backend, valkey_cluster, run_id, codec):
    """A redis-py ``RedisCluster`` client is accepted as is (cluster implied),
    and the async reader follows a live run on it."""
    client = RedisCluster.from_url(valkey_cluster.seed_url)
    run = run_id()
    writer = StreamWriter(client, backend=backend)
    reader = AsyncStreamReader(client, backend=backend)
    assert writer.cluster
    assert reader.sync.cluster

    async def main() -> list[str]:
        async def read() -> list[str]:
            return [chunk async for chunk in reader.read(run, starting_after=0, missing_timeout=20)]

        task = asyncio.ensure_future(read())
        for i in range(1, 11):
            await asyncio.sleep(0.005)
            writer.write(run, payload(i))
        writer.complete(run)
        return await asyncio.wait_for(task, 30)

    try:
        check_run(codec, asyncio.run(main()), run, 0, 11)
    finally:
        writer.close()
        reader.sync.close()
        client.close()


def test_cluster_false_with_cluster_client_is_refused(backend, valkey_cluster):
    client = RedisCluster.from_url(valkey_cluster.seed_url)
    try:
        with pytest.raises(ValueError, match="cluster=False"):
            StreamWriter(client, cluster=False, backend=backend)
    finally:
        client.close()


def test_slot_migration_mid_stream(backend, dedicated_cluster, make_writer, open_reader, run_id, codec):
    """A live run's slot moves to another master while chunks are written,
    also between the keys of the migration (ASK, TRYAGAIN) and after it
    (MOVED); the reader sees every chunk once, in order."""
    cluster = dedicated_cluster
    url = cluster.seed_url
    writer = make_writer(url, cluster=True, retry_timeout=30)
    reader = open_reader(url, cluster=True)
    layout = ClusterKeyLayout()
    run = run_id()
    neighbours = [r for r in (run_id() for _ in range(200)) if layout.bucket(r) == layout.bucket(run)][:3]
    slot = cluster.key_slot(layout.key(run))
    target = next(n for n in cluster.nodes if n.role == "master" and not n.owns(slot))
    received: list[str] = []
    progress = threading.Event()

    def read() -> None:
        for chunk in reader.read(run, starting_after=0, missing_timeout=20):
            received.append(chunk)
            progress.set()

    follower = Background(read)
    for other in neighbours:  # more keys in the slot: the migration takes several steps
        writer.write(other, payload(1))
    seq = 0

    def write_some(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            seq += 1
            assert writer.write(run, payload(seq)) == seq
        writer.flush()

    write_some(20)
    assert _wait(lambda: len(received) >= 20), "reader did not catch up before the migration"
    cluster.migrate_slot(slot, target.port, between_keys=lambda: write_some(5))
    moved = time.monotonic()
    write_some(20)
    writer.complete(run)
    follower.join()
    check_run(codec, received, run, 0, seq + 1)
    assert cluster.master_for_slot(slot).port == target.port
    # The listener was told (its channel dropped, or MOVED) and handed the key
    # to the new owner's listener, which caught it up: not the 10 s safety check.
    assert time.monotonic() - moved < 8.0


def test_failover_with_wait_loses_no_acknowledged_chunk(
    backend, dedicated_cluster, make_writer, open_reader, run_id, codec
):
    """``wait_replicas=1``: a chunk counts as stored once its replica has it.
    The run's master is SIGKILLed mid-run; its replica takes over, the killed
    node comes back as a replica, the writer carries on, and the reader sees
    every chunk (acknowledged or not) exactly once, in order."""
    cluster = dedicated_cluster
    url = cluster.seed_url
    writer = make_writer(url, cluster=True, wait_replicas=1, wait_timeout=0.5, retry_timeout=60)
    reader = open_reader(url, cluster=True, retry_timeout=60)
    run = run_id()
    slot = cluster.key_slot(ClusterKeyLayout().key(run))
    received: list[str] = []

    def read() -> None:
        received.extend(reader.read(run, starting_after=0, missing_timeout=20))

    follower = Background(read)
    master = cluster.master_for_slot(slot)
    for i in range(1, 41):
        writer.write(run, payload(i))
    writer.flush()
    # With its replica stopped, a chunk is stored on the master but not
    # acknowledged: flush must wait for the replica.
    replica = cluster.replicas_of(master.port)[0]
    cluster.pause_node(replica.port)
    try:
        for i in range(41, 51):
            writer.write(run, payload(i))
        flushed = threading.Event()
        flusher = Background(lambda: (writer.flush(), flushed.set()))
        assert not flushed.wait(0.6), "flush returned while the only replica was stopped"
    finally:
        cluster.resume_node(replica.port)
    flusher.join(timeout=30)  # acknowledged now: on the master and its replica
    cluster.kill_master(master.port)

    def write_rest() -> None:  # stalls while the slot has no master, or no replica to WAIT for
        for i in range(51, 101):
            writer.write(run, payload(i))
        writer.flush()

    more = Background(write_rest)
    cluster.wait_failover(master.port)
    cluster.restart_node(master.port)  # a replica again, so WAIT 1 can be met
    more.join(timeout=90)
    writer.complete(run)
    follower.join(timeout=90)
    check_run(codec, received, run, 0, 101)
    promoted = cluster.master_for_slot(slot)
    key = ClusterKeyLayout().key(run)
    assert promoted.port != master.port
    assert cluster.client(promoted.port).xlen(key) == 101


def _wait(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("face", [StreamReader, StreamWriter])
def test_unix_socket_cannot_reach_a_cluster(face):
    """Cluster nodes are named by host and port: a clear error at once."""
    with pytest.raises(ValueError, match="over TCP"):
        face("unix:///tmp/nowhere.sock", cluster=True)


def test_plain_client_still_means_one_server(backend, valkey_cluster):
    client = redis_py.Redis.from_url(valkey_cluster.seed_url)
    try:
        assert StreamWriter(client, backend=backend).cluster is False
    finally:
        client.close()


def test_letta_facade_with_a_cluster_client(backend, valkey_cluster, run_id):
    """The Letta names accept a ``redis.asyncio`` ``RedisCluster`` and keep the
    reference's key names (``sse:run:<run_id>``) there."""
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    from sse_redis.compat.letta import RedisSSEStreamWriter, redis_sse_stream_generator

    run = run_id()
    chunks = [f'data: {{"i": {i}, "run_id": null, "seq_id": null}}\n\n' for i in range(1, 4)]

    async def main() -> list[str]:
        client = AsyncRedisCluster.from_url(valkey_cluster.seed_url)
        try:
            writer = RedisSSEStreamWriter(client, backend=backend)
            for chunk in chunks:
                await writer.write_chunk(run, chunk)
            await writer.mark_complete(run)
            await writer.stop()
            return [c async for c in redis_sse_stream_generator(client, run, backend=backend)]
        finally:
            await client.aclose()

    got = asyncio.run(main())
    assert len(got) == 4
    assert got[-1].startswith("data: [DONE]")
    assert [f'"i": {i}, "run_id": "{run}", "seq_id": {i}' in c for i, c in enumerate(got[:3], 1)] == [True] * 3
    owner = valkey_cluster.master_for_slot(valkey_cluster.key_slot(f"sse:run:{run}"))
    assert valkey_cluster.client(owner.port).xlen(f"sse:run:{run}") == 4


def test_cli_tail_follows_a_run_on_a_cluster(backend, valkey_cluster, make_writer, run_id, capsys):
    from sse_redis.tools import cli

    run = run_id()
    writer = make_writer(valkey_cluster.seed_url, cluster=True)
    for i in range(1, 4):
        writer.write(run, payload(i))
    writer.complete(run)
    argv = ["tail", run, "--redis-url", valkey_cluster.seed_url, "--cluster", "--backend", backend]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("id:")] == ["id: 1", "id: 2", "id: 3", "id: 4"]


def test_example_app_on_a_cluster(backend, valkey_cluster, served):
    """The example app (FastAPI, ``stream_run``) serves a run from a cluster,
    and a resume with ``Last-Event-ID`` gets the rest only."""
    pytest.importorskip("fastapi")
    import httpx

    from sse_redis.tools.example_app import create_app

    app = create_app(valkey_cluster.seed_url, backend=backend, cluster=True, chunks=20, token_delay=0.002)
    with httpx.Client(base_url=serve_app(served, app), timeout=30) as client:
        run = client.post("/runs").json()
        events = events_of(client.get(run["stream_url"]).text)
        assert [int(e.id) for e in events] == list(range(1, 21))
        assert events[-1].data == "[DONE]"
        resumed = client.get(run["stream_url"], headers={"Last-Event-ID": "15"})
        assert [int(e.id) for e in events_of(resumed.text)] == list(range(16, 21))


def test_cli_serve_cluster_needs_a_url(capsys):
    from sse_redis.tools import cli

    assert cli.main(["serve", "--cluster"]) != 0
    assert "--cluster needs --redis-url" in capsys.readouterr().err
