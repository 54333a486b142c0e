"""Write-path faults (issue 10): the writer between the library and Redis
breaks as users' networks and servers do, through the project's own TCP
fault proxy (``fault_proxy``: freeze, delay, cut) or a dedicated server set
up to refuse (``proto-max-bulk-len``, ``maxmemory``), on both engines.  Never
a mock.

Each scenario counts and prints one ``FAULTS`` line (``report``/``tally``
from ``test_faults.py``): ``sent`` is what the writer acknowledged
(``flush()``/``complete()`` returned), ``received`` what is stored of it,
``lost`` and ``duplicated`` must be 0, or the writer raised the documented
clear error (``RedisUnavailable``, ``WriteTimeout``, ``SSERedisError``)
within a bound.  Bounds are "does not hang" bounds, never speed claims.

Not repeated here (``test_writer.py`` has them): connections killed by
``CLIENT KILL`` mid-pipeline, a server restart mid-run, Redis stopped
(``RedisUnavailable`` on flush), a paused server's back-pressure
(``WriteTimeout``).  This file adds the silent and partial network faults
(freeze, cut mid-command, delay), the first write on a frozen network, an
oversized chunk, OOM, cancelled async writes, and a stale writer's later
batches in one pipeline.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest

from sse_redis import (
    RedisUnavailable,
    SSERedisError,
    StaleWriterError,
    WriteTimeout,
)

from test_faults import Background, key_of, report, tally

DEADLINE = 60.0  # "does not hang": the longest any scenario may take to end


def payload(run_index: int, i: int, size: int = 0) -> str:
    pad = "x" * size
    return f'data: {{"r": {run_index}, "i": {i}, "pad": "{pad}", "run_id": null}}\n\n'


def stored_entries(client, run: str) -> list[tuple[int, dict[str, str]]]:
    return [(int(fields["seq_id"]), fields) for _, fields in client.xrange(key_of(run))]


def check_exact(client, runs: list[str], acked: dict[str, list[tuple[int, str]]]) -> tuple[dict[str, int], int]:
    """Every acknowledged ``(seq, data)`` stored once under its seq; each
    stream's seqs 1..n once each, in order.  Returns the totals and the
    number of stored entries."""
    totals = dict(expected=0, received=0, lost=0, duplicated=0, unexpected=0)
    stored_total = 0
    for run in runs:
        entries = stored_entries(client, run)
        stored_total += len(entries)
        seqs = [seq for seq, _ in entries]
        data_at = {seq: fields["data"] for seq, fields in entries}
        mine = acked.get(run, [])
        good = [seq for seq, data in mine if data_at.get(seq) == data]
        counts = tally([seq for seq, _ in mine], good + [s for s in seqs if s not in {q for q, _ in mine}])
        counts["duplicated"] = len(seqs) - len(set(seqs)) + (len(entries) - len({f["data"] for _, f in entries}))
        counts["unexpected"] = 0 if seqs == list(range(1, len(seqs) + 1)) else 1
        for name, value in counts.items():
            totals[name] += value
    return totals, stored_total


class Acks:
    """The chunks one writer wrote, and which of them it saw acknowledged."""

    def __init__(self) -> None:
        self.written: dict[str, list[tuple[int, str]]] = {}
        self.acked: dict[str, list[tuple[int, str]]] = {}
        self.lock = threading.Lock()

    def wrote(self, run: str, seq: int, data: str) -> None:
        with self.lock:
            self.written.setdefault(run, []).append((seq, data))

    def flushed(self, run: str | None = None) -> None:
        """A flush of ``run`` (or of every run) returned: all written so far is acknowledged."""
        with self.lock:
            for key in [run] if run is not None else list(self.written):
                self.acked[key] = list(self.written.get(key, []))

    @property
    def sent(self) -> int:
        return sum(len(v) for v in self.acked.values())


# ------------------------------------------------- a stale writer's later batches


def test_stale_batch_fails_the_runs_later_batches_of_the_same_pipeline(
        backend, dedicated_server, fault_proxy, make_writer, plain_client, run_id):
    """Writer A's pipeline holds two batches of one run, [3, 4] and [5 DONE];
    writer B stored 3 and 4 meanwhile.  [3, 4] is stale, and so must [5] be:
    stored after B's 4 it would end B's run with A's terminal (and B's own
    complete() would then be a no-op).  Seen in the fork race as a stream
    A1 A2 B1 B2 A-DONE."""
    server = dedicated_server()
    proxy = fault_proxy(server)
    r = plain_client(server.url)
    a = make_writer(proxy.url, flush_size=2, retry_timeout=20, write_timeout=20)
    b = make_writer(server.url)
    run, other = run_id(), run_id()
    a.write(run, payload(0, 1))
    a.write(run, payload(0, 2))
    a.write(other, payload(1, 1))
    a.flush()
    proxy.freeze(new=False)  # A's sender hangs in the pipeline of `other` ...
    a.write(other, payload(1, 2))
    time.sleep(0.2)
    assert a.write(run, payload(0, 3)) == 3  # ... while these gather for its next one
    assert a.write(run, payload(0, 4)) == 4
    assert a.write(run, "data: [DONE]\n\n") == 5
    assert b.write(run, payload(2, 3)) == 3
    assert b.write(run, payload(2, 4)) == 4
    b.flush()
    started = time.monotonic()
    proxy.heal()
    with pytest.raises(StaleWriterError):
        a.flush(run_id=run)
    took = time.monotonic() - started
    b_done = b.complete(run)
    entries = stored_entries(r, run)
    writers = [fields["writer"] for _, fields in entries]
    counts = tally([1, 2, 3, 4, 5], [seq for seq, _ in entries])
    report("stale-tail", backend, sent=5, counts=counts, b_complete=b_done, took_s=round(took, 2),
           writers="".join("A" if w == writers[0] else "B" for w in writers))
    assert [seq for seq, _ in entries] == [1, 2, 3, 4, 5]
    assert [fields["data"] for _, fields in entries][2:4] == [payload(2, 3), payload(2, 4)]
    assert writers[2:] == [writers[2]] * 3 and writers[2] != writers[0], "A's terminal ended B's run"
    assert b_done == 5
    assert took < DEADLINE
