"""Run control (issue 13): cancel -> the producer's source stopped, across
processes, and status calls per second; Rust and pure.

``python -m pytest benches/bench_control.py -s`` (or ``python
benches/bench_control.py [--cancels 200]``).  Each round starts an idle
``aprocess_stream`` run (one chunk, then its source waits for its model),
then a second process calls ``RunControl.cancel``; the delay is from just
before that call to the source's ``finally`` (its pending ``__anext__``
cancelled and the source closed), wall clock on one host.  Target: p99 <=
50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from typing import Any

from sse_redis import AsyncStreamWriter, RunControl, aprocess_stream

CANCELLER = textwrap.dedent(
    """
    import sys, time
    from sse_redis import RunControl
    control = RunControl(sys.argv[1], backend=sys.argv[2])
    control.status("warm-up")
    print("ready", flush=True)
    for line in sys.stdin:
        at = time.time()
        print(at, control.cancel(line.strip(), reason="bench"), flush=True)
    """
)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))]


def cancel_delays(url: str, backend: str, cancels: int) -> list[float]:
    """Seconds from a cancel call in another process to the idle source closed."""
    other = subprocess.Popen(
        [sys.executable, "-c", CANCELLER, url, backend], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert other.stdin is not None
    assert other.stdout is not None
    assert other.stdout.readline().strip() == "ready"
    delays: list[float] = []

    async def main() -> None:
        writer = AsyncStreamWriter(url, backend=backend)
        for _ in range(cancels):
            run, closed = f"bench-{uuid.uuid4().hex}", {}

            async def source(run: str = run, closed: dict[str, float] = closed) -> Any:
                try:
                    yield "data: first\n\n"
                    await asyncio.sleep(3600)
                    yield "data: never\n\n"
                finally:
                    closed[run] = time.time()

            task = asyncio.create_task(aprocess_stream(source(), writer, run))
            for _ in range(5000):  # until its first chunk is stored
                if await writer.last_seq(run):
                    break
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.01)  # idle: the source waits

            def cancel(run: str = run) -> tuple[float, bool]:
                assert other.stdin is not None
                assert other.stdout is not None
                other.stdin.write(run + "\n")
                other.stdin.flush()
                at, ok = other.stdout.readline().split()
                return float(at), ok == "True"

            at, ok = await asyncio.to_thread(cancel)
            assert ok
            assert await asyncio.wait_for(task, 10) == "cancelled"
            delays.append(closed[run] - at)
        await writer.aclose()

    asyncio.run(main())
    other.stdin.close()
    other.wait(10)
    return delays


def status_rate(url: str, backend: str, seconds: float = 2.0) -> float:
    """``RunControl.status`` calls per second on one thread (a live run)."""
    control = RunControl(url, backend=backend)
    run = f"bench-{uuid.uuid4().hex}"
    control.start(run)
    calls, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        control.status(run)
        calls += 1
    control.close()
    return calls / seconds


def report(url: str, cancels: int) -> list[str]:
    lines = [
        (
            f"**Run control**: cancel (another process) -> idle source closed, {cancels} cancels; "
            "status calls/s (one thread)."
        ),
        "",
        "| way | cancels | p50 ms | p90 ms | p99 ms | max ms | status calls/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    p99s = {}
    for backend in ("rust", "python"):
        delays = [d * 1000 for d in cancel_delays(url, backend, cancels)]
        p99s[backend] = percentile(delays, 99)
        lines.append(
            f"| {backend} | {len(delays)} | {statistics.median(delays):.2f} | {percentile(delays, 90):.2f} | "
            f"{p99s[backend]:.2f} | {max(delays):.2f} | {status_rate(url, backend):,.0f} |"
        )
    lines.append("")
    for backend, p99 in p99s.items():
        lines.append(f"- {backend} p99 (ms) = {p99:.2f} (target <= 50.00) {'✓' if p99 <= 50 else '✗ missed'}")
    return lines


def test_cancel_stop_latency(server: Any) -> None:
    print("\n" + "\n".join(report(server.url, 200)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url")
    parser.add_argument("--cancels", type=int, default=200)
    args = parser.parse_args()
    if args.redis_url:
        print("\n".join(report(args.redis_url, args.cancels)))
    else:
        from sse_redis.tools.servers import RedisProcess, valkey_binary

        with RedisProcess(valkey_binary()) as srv:
            print("\n".join(report(srv.url, args.cancels)))
