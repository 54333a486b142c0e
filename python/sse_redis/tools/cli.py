"""The ``sse-redis`` command (also ``python -m sse_redis``).

    sse-redis demo               a simulated LLM run on an embedded Valkey, with a resume
    sse-redis tail RUN_ID        follow a run's stream like ``tail -f``
    sse-redis bench              the writer, reader and codec benchmarks, Rust vs pure
    sse-redis serve              the example FastAPI app on localhost

Without ``--redis-url`` a command uses ``$SSE_REDIS_URL``, else ``$REDIS_URL``,
else its default (an embedded Valkey; for ``tail``, ``redis://127.0.0.1:6379/0``).
Errors print as one line (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import sys
from collections.abc import Iterator, Sequence

from .. import _backend


class CommandError(Exception):
    """A failure to report as one line, without a traceback."""


URL_VARIABLES = ("SSE_REDIS_URL", "REDIS_URL")  # read in this order when --redis-url is not given
TAIL_DEFAULT_URL = "redis://127.0.0.1:6379/0"
CONNECT_CHECK_SECONDS = 3.0


def url_from_environment() -> str | None:
    """The first of ``URL_VARIABLES`` that is set and not empty."""
    for name in URL_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


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
    from .demo import check_reachable

    url = args.redis_url or TAIL_DEFAULT_URL
    # The reader would retry an unreachable server for --retry-timeout (30 s)
    # before saying anything: a quick PING first names the host and the cause.
    check_reachable(url, timeout=min(CONNECT_CHECK_SECONDS, args.retry_timeout or CONNECT_CHECK_SECONDS))
    reader = StreamReader(
        url,
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
        from . import bench
    except ImportError as exc:
        raise CommandError(f"the benchmarks are not available: {exc}") from exc
    # Refuse what cannot work before minutes of benchmarks, not after.
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise CommandError("--plot needs matplotlib: pip install 'sse-redis[plot]'")
    if args.backend == "rust" and _backend._core is None:
        raise CommandError(f"--backend rust: the Rust core is not available here ({_backend.BACKEND} backend only)")
    backends = [args.backend] if args.backend else None
    with redis_for(args.redis_url) as url:
        return bench.run_benchmarks(url, quick=args.quick, plot=args.plot, backends=backends, at_scale=args.delivery)


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

    def common(
        p: argparse.ArgumentParser, *, embedded: bool, backend_help: str = "engine (default: the live one)"
    ) -> None:
        fallback = "start an embedded Valkey" if embedded else TAIL_DEFAULT_URL
        help_url = f"Redis URL (default: $SSE_REDIS_URL, else $REDIS_URL, else {fallback})"
        p.add_argument("--redis-url", default=None, help=help_url)
        p.add_argument("--backend", choices=["rust", "python"], default=None, help=backend_help)

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
    common(bench, embedded=True, backend_help="run only this engine (default: both, where the Rust core exists)")
    bench.add_argument("--quick", action="store_true", help="smaller workloads")
    bench.add_argument("--plot", metavar="FILE.png", default=None, help="draw latency and throughput (matplotlib)")
    bench.add_argument(
        "--delivery", action="store_true", help="delivery at scale too: the notify hub vs xread (separate processes)"
    )
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
    if args.redis_url is None:
        args.redis_url = url_from_environment()
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
