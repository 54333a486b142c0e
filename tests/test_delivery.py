"""Live delivery by notice (issue 12): the hub listens for the notices this
library's writers publish and range-reads the notified runs; streams written
by anything else, or not written yet, are followed by ``XREAD``; and every
way a notice can be lost is covered: a subscriber link killed, a writer that
may not publish, a reader that may not subscribe.  Real servers, both
backends."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import redis as redis_py

from sse_redis import StreamReader, StreamWriter
from test_reader import QUIET, check_run, codec_mod, collect, hub_stats, new_run, payload, write_run, xadd_explicit
from test_security import LEAST_PRIVILEGE, PASSWORD

__all__ = ["codec_mod"]  # a fixture, used by name


def test_live_chunks_arrive_by_notice_not_xread(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)
    reader = open_reader(redis_url, **QUIET)
    gen = reader.read(run)
    first = collect(gen, limit=1)
    with StreamWriter(redis_url, backend=backend) as writer:
        for i in range(2, 51):
            writer.write(run, payload(i))
            writer.flush(run_id=run)
        writer.complete(run)
    check_run(codec_mod, first + collect(gen), run, 0, 51)
    stats = hub_stats(reader)
    assert stats["xreads"] == 0
    assert stats["blockers"] == 0
    assert stats["notices"] >= 1


def test_xread_delivery_is_kept_as_an_option(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)
    reader = open_reader(redis_url, delivery="xread", **QUIET)
    gen = reader.read(run)
    first = collect(gen, limit=1)
    write_more(redis_url, backend, run, 2, 30)
    check_run(codec_mod, first + collect(gen), run, 0, 31)
    stats = hub_stats(reader)
    assert stats["xreads"] >= 1
    assert stats["notices"] == 0
    assert stats["listeners"] == 0


def test_bad_delivery_is_refused(backend, redis_url):
    with pytest.raises(ValueError, match="delivery"):
        StreamReader(redis_url, backend=backend, delivery="poll")


def test_stream_of_another_writer_is_followed_by_xread(backend, redis_url, open_reader, plain_client, codec_mod):
    """Entries without a ``writer`` field (the reference module's) come with
    no notice: the hub follows such a stream by XREAD, live."""
    run = new_run()
    client = plain_client(redis_url)
    xadd_explicit(client, run, 1, 1, complete=False)
    reader = open_reader(redis_url, **QUIET)
    gen = reader.read(run)
    first = collect(gen, limit=1)
    for seq in range(2, 21):
        xadd_explicit(client, run, seq, seq, complete=seq == 20)
        time.sleep(0.005)
    chunks = first + collect(gen)
    assert len(chunks) == 21 - 1 + 1  # 19 more chunks and the terminal
    stats = hub_stats(reader)
    assert stats["xreads"] >= 1
    assert stats["listened"] == 0


def test_a_missing_stream_written_by_us_moves_to_notices(backend, redis_url, open_reader, codec_mod):
    """A read of a run not written yet waits by XREAD (any writer may create
    it); once the stream shows it is ours, notices follow it."""
    run = new_run()
    reader = open_reader(redis_url, **QUIET)
    gen = reader.read(run)
    got: list[str] = []
    done = threading.Event()

    def read() -> None:
        got.extend(collect(gen))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 10
    while hub_stats(reader)["watched"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hub_stats(reader)["blockers"] == 1
    with StreamWriter(redis_url, backend=backend) as writer:
        writer.write(run, payload(1))
        writer.flush(run_id=run)
        deadline = time.monotonic() + 10
        while hub_stats(reader)["listened"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert hub_stats(reader)["listened"] == 1
        for i in range(2, 21):
            writer.write(run, payload(i))
            writer.flush(run_id=run)
        writer.complete(run)
    assert done.wait(30)
    check_run(codec_mod, got, run, 0, 21)
    assert hub_stats(reader)["notices"] >= 1


def test_subscriber_link_killed_mid_run(backend, dedicated_server, open_reader, codec_mod):
    """The listener's connection is killed over and over while a run is
    written: each time it reconnects, subscribes again and catches up, so
    every chunk arrives once, in order, long before any safety check."""
    server = dedicated_server()
    admin = redis_py.Redis.from_url(server.url)
    run = new_run()
    write_run(server.url, backend, run, 1, complete=False)
    reader = open_reader(server.url, check_interval=600.0, **QUIET)  # no safety check to lean on
    gen = reader.read(run)
    first = collect(gen, limit=1)
    kills = 0
    with StreamWriter(server.url, backend=backend) as writer:
        for i in range(2, 201):
            writer.write(run, payload(i))
            writer.flush(run_id=run)
            if i % 20 == 0:
                kills += int(admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
            time.sleep(0.002)
        writer.complete(run)
    check_run(codec_mod, first + collect(gen, timeout=30.0), run, 0, 201)
    assert kills >= 5
    assert hub_stats(reader)["reconnects"] >= 1
    admin.close()


def test_server_restart_resubscribes_and_catches_up(backend, dedicated_server, open_reader, codec_mod):
    """Chunks written while the reader's links are down (the server restarted
    with its data) reach the reader after it subscribes again."""
    server = dedicated_server("--appendonly", "yes")
    run = new_run()
    write_run(server.url, backend, run, 1, complete=False)
    reader = open_reader(server.url, check_interval=600.0, **QUIET)
    gen = reader.read(run)
    first = collect(gen, limit=1)
    server.restart()
    write_more(server.url, backend, run, 2, 20)
    check_run(codec_mod, first + collect(gen, timeout=30.0), run, 0, 21)


def test_writer_without_channel_rights_is_read_by_the_safety_check(
    backend, dedicated_server, open_reader, codec_mod, caplog
):
    """Notices refused (a writer user with no channel rights): the safety
    check reads the run every check_interval, and says so once."""
    server = dedicated_server()
    admin = redis_py.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "sse", "on", f">{PASSWORD}", *LEAST_PRIVILEGE, "+publish")
    writer_url = f"redis://sse:{PASSWORD}@127.0.0.1:{server.port}/0"
    run = new_run()
    write_run(writer_url, backend, run, 1, complete=False)
    reader = open_reader(server.url, check_interval=0.5, **QUIET)
    gen = reader.read(run)
    first = collect(gen, limit=1)
    caplog.set_level(logging.WARNING, logger="sse_redis")
    with StreamWriter(writer_url, backend=backend) as writer:
        for i in range(2, 11):
            writer.write(run, payload(i))
            writer.flush(run_id=run)
            time.sleep(0.3)
        writer.complete(run)
    check_run(codec_mod, first + collect(gen, timeout=30.0), run, 0, 11)
    stats = reader.stats()  # drains the hub's events into the log
    assert hub_stats(reader)["missed"] >= 2
    assert hub_stats(reader)["notices"] == 0
    said = [r for r in caplog.records if getattr(r, "sse_redis_event", None) == "notices_missed"]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert stats is not None
    admin.close()


def test_reader_without_subscribe_rights_falls_back_to_xread(backend, dedicated_server, codec_mod, caplog):
    """A reader user that may not subscribe follows every stream by XREAD,
    live, and says so once."""
    server = dedicated_server()
    admin = redis_py.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "sse", "on", f">{PASSWORD}", *LEAST_PRIVILEGE, "+client|unblock")
    reader_url = f"redis://sse:{PASSWORD}@127.0.0.1:{server.port}/0"
    run = new_run()
    write_run(server.url, backend, run, 1, complete=False)
    caplog.set_level(logging.WARNING, logger="sse_redis")
    reader = StreamReader(reader_url, backend=backend, check_interval=600.0, **QUIET)
    try:
        gen = reader.read(run)
        first = collect(gen, limit=1)
        deadline = time.monotonic() + 10
        while hub_stats(reader)["blockers"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        write_more(server.url, backend, run, 2, 20)
        check_run(codec_mod, first + collect(gen, timeout=20.0), run, 0, 21)
        reader.stats()  # drains the hub's events into the log
        assert hub_stats(reader)["listeners"] == 0
        said = [r for r in caplog.records if getattr(r, "sse_redis_event", None) == "notices_refused"]
        assert len(said) == 1
    finally:
        reader.close()
        admin.close()


def write_more(url: str, backend: str, run: str, first: int, last: int) -> None:
    """Chunks ``first..last`` one flush each, then the terminal."""
    with StreamWriter(url, backend=backend) as writer:
        for i in range(first, last + 1):
            assert writer.write(run, payload(i)) == i
            writer.flush(run_id=run)
        writer.complete(run)
