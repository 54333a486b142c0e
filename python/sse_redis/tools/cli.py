"""The ``sse-redis`` command (also ``python -m sse_redis``).

    sse-redis demo               a simulated LLM run on an embedded Valkey, with a resume
    sse-redis tail RUN_ID        follow a run's stream like ``tail -f``
    sse-redis bench              the writer, reader and codec benchmarks, Rust vs pure
    sse-redis serve              the example FastAPI app on localhost

Errors print as one line (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence

from .. import _backend


class CommandError(Exception):
    """A failure to report as one line, without a traceback."""


@contextlib.contextmanager
def redis_for(url: str | None) -> Iterator[str]:
    """``url`` itself, or an embedded Valkey started for the command and stopped after."""
    if url:
        yield url
        return
    from .servers import RedisProcess, ServerError, valkey_binary

    try:
        server = RedisProcess(valkey_binary()).start()
    except ServerError as exc:
        raise CommandError(f"{exc} (or pass --redis-url)") from exc
    try:
        with _sigterm_exits():
            yield server.url
    finally:
        server.close()


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM ends the command like Ctrl-C does, through its cleanup (the
    default action kills at once; uvicorn re-raises the SIGTERM it caught once
    it has shut down). The embedded server also dies with this process on
    Linux whatever ends it (see ``servers``); this removes its data too."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, leave)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    with redis_for(args.redis_url) as url:
        where = "embedded Valkey" if not args.redis_url else "Redis"
        print(f"sse-redis demo: one simulated LLM run of {args.chunks} chunks on {where}", flush=True)
        report = run_demo(url, backend=args.backend, chunks=args.chunks, token_delay=args.token_delay, progress=print)
    for line in report.lines():
        print(line)
    if not report.ok:
        print("FAILED: chunks were lost or repeated", file=sys.stderr)
        return 1
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from ..reader import StreamReader

    reader = StreamReader(
        args.redis_url or "redis://127.0.0.1:6379/0",
        backend=args.backend,
        idle_timeout=args.idle_timeout,
        missing_timeout=args.missing_timeout,
        retry_timeout=args.retry_timeout,
        cluster=args.cluster,
    )
    try:
        for chunk in reader.read(args.run_id, starting_after=args.starting_after):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    finally:
        reader.close()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from .bench import run_benchmarks
    except ImportError as exc:
        raise CommandError(f"the benchmarks are not available: {exc}") from exc
    with redis_for(args.redis_url) as url:
        return run_benchmarks(url, quick=args.quick, plot=args.plot)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .example_app import create_app
    except ImportError as exc:
        raise CommandError(f"serve needs the [starlette] and [serve] extras: {exc}") from exc
    if args.cluster and not args.redis_url:
        raise CommandError("--cluster needs --redis-url (the embedded server is not a cluster)")
    with redis_for(args.redis_url) as url:
        print(f"sse-redis example app on http://{args.host}:{args.port}/ (Redis {url})", flush=True)
        app = create_app(url, backend=args.backend, cluster=args.cluster)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sse-redis",
        description="Resumable Server-Sent Event streams stored in Redis Streams.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()} ({_backend.BACKEND} backend)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser, *, embedded: bool) -> None:
        help_url = "Redis URL" + (" (default: start an embedded Valkey)" if embedded else " (default: local 6379)")
        p.add_argument("--redis-url", default=None, help=help_url)
        p.add_argument("--backend", choices=["rust", "python"], default=None, help="engine (default: the live one)")

    demo = sub.add_parser("demo", help="stream a simulated LLM run, drop the reader half-way, resume")
    common(demo, embedded=True)
    demo.add_argument("--chunks", type=int, default=400, help="chunks in the run (default 400)")
    demo.add_argument("--token-delay", type=float, default=0.002, help="seconds between tokens (default 0.002)")
    demo.set_defaults(func=cmd_demo)

    tail = sub.add_parser("tail", help="follow a run's stream like tail -f")
    common(tail, embedded=False)
    tail.add_argument("run_id", help="the run to follow")
    tail.add_argument("--starting-after", type=int, default=None, help="resume after this seq id")
    tail.add_argument("--idle-timeout", type=float, default=600.0, help="give up after this many idle seconds")
    tail.add_argument("--missing-timeout", type=float, default=30.0, help="wait this long for the stream to appear")
    tail.add_argument("--retry-timeout", type=float, default=30.0, help="give up after Redis is unreachable this long")
    tail.add_argument("--cluster", action="store_true", help="the URL names a node of a Redis Cluster")
    tail.set_defaults(func=cmd_tail)

    bench = sub.add_parser("bench", help="writer, reader and codec benchmarks, Rust vs pure")
    common(bench, embedded=True)
    bench.add_argument("--quick", action="store_true", help="smaller workloads")
    bench.add_argument("--plot", metavar="FILE.png", default=None, help="draw latency and throughput (matplotlib)")
    bench.set_defaults(func=cmd_bench)

    serve = sub.add_parser("serve", help="the example FastAPI app with an embedded Valkey")
    common(serve, embedded=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--cluster", action="store_true", help="--redis-url names a node of a Redis Cluster")
    serve.set_defaults(func=cmd_serve)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"sse-redis {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
