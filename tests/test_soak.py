"""A short soak (issue 10), both engines, a real server: a writer process
keeps 200 runs open at once (each run 20-39 chunks + ``complete()``, a new
run replacing each finished one) at a steady pace, while a reader process
follows every run (``AsyncStreamReader``, 200 reads at once).  The test
samples both processes' RSS (``/proc/<pid>/status`` VmRSS) and asserts every
chunk delivered exactly once, in order, and both RSS flat within a generous
bound after a warm-up.

``SSE_REDIS_SOAK_SECONDS`` sets the writing time per backend (default 10,
which keeps the suite short); the long version::

    SSE_REDIS_SOAK_SECONDS=600 python -m pytest -s tests/test_soak.py

Prints one ``FAULTS`` line per backend (see ``test_faults.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from test_faults import report

SOAK_SECONDS = float(os.environ.get("SSE_REDIS_SOAK_SECONDS", "10"))
LIVE_RUNS = 200
SAMPLE_EVERY = 0.25
# RSS may grow after the warm-up by this much (KiB) plus this share of the
# warm-up figure: allocator noise passes, a leak per run or per chunk does not.
RSS_SLACK_KB = 24 * 1024
RSS_SLACK_SHARE = 0.25

COMMON = textwrap.dedent(
    """
    import json, sys, time
    url, backend, token, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    LIVE = int(sys.argv[5])

    def run_of(n):
        return f"soak-{token}-{n}"

    def chunks_of(n):
        return 20 + n % 20

    def data_of(n, i):
        return 'data: {"n": %d, "i": %d, "run_id": null}\\n\\n' % (n, i)
    """
)

WRITER = COMMON + textwrap.dedent(
    """
    import redis
    from sse_redis import StreamWriter

    w = StreamWriter(url, backend=backend, retry_timeout=30, write_timeout=30)
    meta = redis.Redis.from_url(url)
    print("ready", flush=True)
    live = {}  # n -> chunks written
    next_n, acked, runs = 0, 0, 0
    stop_at = time.monotonic() + seconds
    ROUND = 0.1  # a chunk to every live run each round: ~2,000 chunks/s
    while True:
        started = time.monotonic()
        if started < stop_at:
            while len(live) < LIVE:
                live[next_n] = 0
                next_n += 1
            meta.set(f"soak:{token}:started", next_n)
        elif not live:
            break
        for n in list(live):
            i = live[n] = live[n] + 1
            assert w.write(run_of(n), data_of(n, i)) == i
            if i == chunks_of(n):
                del live[n]
                assert w.complete(run_of(n)) == i + 1
                acked += i + 1
                runs += 1
        if started < stop_at:
            time.sleep(max(0.0, ROUND - (time.monotonic() - started)))
    w.flush()
    meta.set(f"soak:{token}:total", next_n)
    print(json.dumps({"runs": runs, "acked": acked}), flush=True)
    w.close()
    """
)

READER = COMMON + textwrap.dedent(
    """
    import asyncio
    import redis
    from sse_redis import AsyncStreamReader

    def seq_of(chunk):
        for line in chunk.split("\\n"):
            if line.startswith("id:"):
                return int(line[3:].strip())
        raise AssertionError(repr(chunk))

    totals = dict(runs=0, expected=0, received=0, lost=0, duplicated=0, out_of_order=0, bad_content=0, errors=0)
    error_kinds = {}

    async def main():
        reader = AsyncStreamReader(url, backend=backend, missing_timeout=60, idle_timeout=60, retry_timeout=30)
        meta = redis.Redis.from_url(url)
        state = {"started": 0, "total": None, "next": 0}

        async def poll():
            while state["total"] is None:
                started, total = await asyncio.to_thread(
                    meta.mget, f"soak:{token}:started", f"soak:{token}:total")
                state["started"] = int(started or 0)
                if total is not None:
                    state["total"] = int(total)
                await asyncio.sleep(0.05)

        async def follow(n):
            k = chunks_of(n)
            seqs, bad = [], 0
            try:
                async for chunk in reader.read(run_of(n)):
                    if chunk.startswith(":"):
                        continue
                    seq = seq_of(chunk)
                    seqs.append(seq)
                    if seq <= k and f'"n": {n}, "i": {seq}, "run_id": "{run_of(n)}"' not in chunk:
                        bad += 1
            except Exception as exc:
                totals["errors"] += 1
                error_kinds[type(exc).__name__] = error_kinds.get(type(exc).__name__, 0) + 1
            distinct = set(seqs)
            totals["runs"] += 1
            totals["expected"] += k + 1
            totals["received"] += len(distinct & set(range(1, k + 2)))
            totals["lost"] += len(set(range(1, k + 2)) - distinct)
            totals["duplicated"] += len(seqs) - len(distinct)
            totals["out_of_order"] += seqs != sorted(seqs)
            totals["bad_content"] += bad

        async def worker():
            while True:
                n = state["next"]
                state["next"] += 1
                while n >= state["started"]:
                    if state["total"] is not None and n >= state["total"]:
                        return
                    await asyncio.sleep(0.02)
                await follow(n)

        print("ready", flush=True)
        poller = asyncio.create_task(poll())
        await asyncio.gather(*(worker() for _ in range(LIVE)))
        await poller
        reader.close()

    asyncio.run(main())
    print(json.dumps({**totals, "error_kinds": error_kinds}), flush=True)
    """
)


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def start(script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"a soak process did not start: {line!r} {err[-2000:]}")
    return proc


def test_soak_writer_and_reader_processes(backend, dedicated_server, plain_client):
    server = dedicated_server()
    r = plain_client(server.url)
    token = uuid.uuid4().hex[:12]
    args = (server.url, backend, token, str(SOAK_SECONDS), str(LIVE_RUNS))
    reader = start(READER, *args)
    writer = start(WRITER, *args)
    samples: list[tuple[float, int | None, int | None]] = []
    started = time.monotonic()
    deadline = started + SOAK_SECONDS + 60
    try:
        while writer.poll() is None or reader.poll() is None:
            samples.append((time.monotonic() - started, rss_kb(writer.pid), rss_kb(reader.pid)))
            if time.monotonic() > deadline:
                pytest.fail(f"the soak did not end within {SOAK_SECONDS + 60:.0f}s")
            time.sleep(SAMPLE_EVERY)
        took = time.monotonic() - started
    finally:
        for proc in (writer, reader):
            if proc.poll() is None:
                proc.kill()
        w_out, w_err = writer.communicate()
        r_out, r_err = reader.communicate()
    assert writer.returncode == 0, w_err[-3000:]
    assert reader.returncode == 0, r_err[-3000:]
    wrote = json.loads(w_out.strip().splitlines()[-1])
    got = json.loads(r_out.strip().splitlines()[-1])

    # RSS: from the end of the warm-up (a fifth of the writing time, at least
    # 3 s) to the end of the writing time; the tail (draining) is left out.
    warm = max(3.0, SOAK_SECONDS / 5)
    steady = [(t, w, rd) for t, w, rd in samples if warm <= t <= SOAK_SECONDS and w and rd]
    assert len(steady) >= 4, f"too few RSS samples: {samples}"
    w_start, r_start = steady[0][1], steady[0][2]
    w_end = max(w for _, w, _ in steady[-4:])
    r_end = max(rd for _, _, rd in steady[-4:])
    w_peak = max(w for _, w, _ in steady)
    r_peak = max(rd for _, _, rd in steady)
    counts = {k: got[k] for k in ("expected", "received", "lost", "duplicated")}
    counts["unexpected"] = got["out_of_order"] + got["bad_content"]
    report(
        "soak",
        backend,
        sent=wrote["acked"],
        counts=counts,
        seconds=SOAK_SECONDS,
        took_s=round(took, 1),
        runs_written=wrote["runs"],
        runs_read=got["runs"],
        read_errors=got["errors"],
        writer_rss_kb=f"{w_start}->{w_end}(peak {w_peak})",
        reader_rss_kb=f"{r_start}->{r_end}(peak {r_peak})",
        samples=len(samples),
    )
    assert got["errors"] == 0, got["error_kinds"]
    assert wrote["runs"] == got["runs"] >= LIVE_RUNS
    assert got["expected"] == got["received"] == wrote["acked"]
    assert (got["lost"], got["duplicated"], got["out_of_order"], got["bad_content"]) == (0, 0, 0, 0)
    for name, first, last in (("writer", w_start, w_end), ("reader", r_start, r_end)):
        bound = first + RSS_SLACK_KB + RSS_SLACK_SHARE * first
        assert last <= bound, f"the {name}'s RSS grew from {first} to {last} KiB after the warm-up"
    r.flushdb()
