"""The ``sse-redis`` command: as a subprocess (``python -m sse_redis``), the
way users run it, and in-process through ``sse_redis.tools.cli.main`` where that
is enough.  Errors must be one line on stderr (a traceback only with
``--debug``); the demo must report nothing lost or repeated."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from sse_redis import StreamWriter, __version__
from sse_redis._pure import SSEParser
from sse_redis.tools import cli

SUBCOMMANDS = ["demo", "tail", "bench", "serve"]
UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1
FAST_DEMO = ["--chunks", "60", "--token-delay", "0.001"]


def sse_redis(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command in a subprocess, without the URL variables of the suite's
    own environment (plus ``env``)."""
    environ = {k: v for k, v in os.environ.items() if k not in cli.URL_VARIABLES} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "sse_redis", *args], capture_output=True, text=True, timeout=timeout, env=environ
    )


@pytest.fixture(autouse=True)
def _no_url_variables(monkeypatch):
    """In-process commands see no ``SSE_REDIS_URL``/``REDIS_URL`` unless a test sets one."""
    for name in cli.URL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def assert_one_line_error(stderr: str, command: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line of error, got:\n{stderr}"
    assert lines[0].startswith(f"sse-redis {command}: error: "), lines[0]
    return lines[0]


def payload(i: int) -> str:
    return f'data: {{"i":{i},"run_id":null,"seq_id":null}}\n\n'


def completed_run(url: str, n: int, backend: str) -> str:
    """A run of ``payload(1..n)`` and ``[DONE]`` (seq ``n + 1``)."""
    run = f"cli-{uuid.uuid4().hex}"
    with StreamWriter(url, backend=backend) as writer:
        for i in range(1, n + 1):
            writer.write(run, payload(i))
        writer.complete(run)
    return run


def check_tail(out: str, run: str, after: int, last: int) -> None:
    events = SSEParser().feed(out)
    assert [int(e.id) for e in events] == list(range(after + 1, last + 1)), out[:300]
    for event in events[:-1]:
        assert f'"run_id":"{run}"' in event.data
    assert events[-1].data == "[DONE]"
    assert out.count("id: ") == last - after


# ----------------------------------------------------------------- help and version


def test_top_level_help_subprocess():
    result = sse_redis("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sse-redis")
    for name in SUBCOMMANDS:
        assert name in result.stdout
    assert "--debug" in result.stdout
    assert "--version" in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sse-redis {command}")
    assert "--redis-url" in out
    assert "--backend" in out


def test_subcommand_help_subprocess():
    result = sse_redis("tail", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sse-redis tail")
    for option in ("--starting-after", "--idle-timeout", "--missing-timeout"):
        assert option in result.stdout


def test_no_command_is_a_usage_error():
    result = sse_redis()
    assert result.returncode == 2
    assert "usage: sse-redis" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--backend", "cobol"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.strip().startswith(f"sse-redis {__version__} (")
    assert re.search(r"\((rust|python) backend\)", out)
    result = sse_redis("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == out.strip()


# ----------------------------------------------------------------- demo


def check_demo(result: subprocess.CompletedProcess[str], backend: str | None = None) -> dict[str, str]:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    fields = {}
    for line in result.stdout.splitlines():
        match = re.match(
            r"^(backend|run|chunks written|chunks read|lost|duplicated|latency p50|latency p99|throughput)\s{2,}(.*)$",
            line,
        )
        if match:
            fields[match.group(1)] = match.group(2)
    for name in ("backend", "chunks written", "chunks read", "lost", "duplicated", "latency p50", "latency p99"):
        assert name in fields, f"no {name!r} line in:\n{result.stdout}"
    if backend is not None:
        assert fields["backend"] == backend
    else:
        assert fields["backend"] in ("rust", "python")
    assert fields["chunks written"] == "60"
    assert fields["chunks read"].split()[0] == "60"
    assert fields["lost"] == "0"
    assert fields["duplicated"] == "0"
    for name in ("latency p50", "latency p99"):
        assert re.match(r"^\d+\.\d+ ms", fields[name]), fields[name]
    assert "resum" in result.stdout  # the reader dropped and resumed
    return fields


def test_demo_embedded_valkey():
    result = sse_redis("demo", *FAST_DEMO)
    fields = check_demo(result)
    assert "embedded Valkey" in result.stdout
    assert "(completed)" in fields["run"]


def test_demo_python_backend():
    check_demo(sse_redis("demo", "--backend", "python", *FAST_DEMO), backend="python")


def test_demo_on_a_given_redis(redis_url, backend):
    check_demo(sse_redis("demo", "--redis-url", redis_url, "--backend", backend, *FAST_DEMO), backend=backend)


# ----------------------------------------------------------------- tail


def test_tail_completed_run_subprocess(redis_url, backend):
    run = completed_run(redis_url, 12, backend)
    result = sse_redis("tail", run, "--redis-url", redis_url, "--backend", backend, "--starting-after", "5")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    check_tail(result.stdout, run, 5, 13)


def test_tail_whole_run_in_process(redis_url, backend, capsys):
    run = completed_run(redis_url, 7, backend)
    assert cli.main(["tail", run, "--redis-url", redis_url, "--backend", backend]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    check_tail(captured.out, run, 0, 8)
    # At the end of a finished run: nothing, and success.
    assert cli.main(["tail", run, "--redis-url", redis_url, "--backend", backend, "--starting-after", "8"]) == 0
    assert capsys.readouterr().out == ""


def test_tail_missing_run_is_one_line(redis_url, backend):
    started = time.monotonic()
    missing = f"cli-missing-{uuid.uuid4().hex}"
    result = sse_redis("tail", missing, "--redis-url", redis_url, "--backend", backend, "--missing-timeout", "0.3")
    assert result.returncode != 0
    line = assert_one_line_error(result.stderr, "tail")
    assert "cli-missing-" in line
    assert result.stdout == ""
    assert time.monotonic() - started < 15


def test_tail_missing_run_in_process(redis_url, backend, capsys):
    code = cli.main(
        [
            "tail",
            f"cli-missing-{uuid.uuid4().hex}",
            "--redis-url",
            redis_url,
            "--backend",
            backend,
            "--missing-timeout",
            "0.3",
        ]
    )
    assert code != 0
    assert_one_line_error(capsys.readouterr().err, "tail")


def test_debug_shows_the_traceback(redis_url, backend):
    missing = f"cli-missing-{uuid.uuid4().hex}"
    result = sse_redis(
        "--debug", "tail", missing, "--redis-url", redis_url, "--backend", backend, "--missing-timeout", "0.3"
    )
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "StreamNotFound" in result.stderr


def test_debug_in_process_raises(redis_url, backend):
    from sse_redis.errors import StreamNotFound

    missing = f"cli-missing-{uuid.uuid4().hex}"
    with pytest.raises(StreamNotFound):
        cli.main(
            ["--debug", "tail", missing, "--redis-url", redis_url, "--backend", backend, "--missing-timeout", "0.3"]
        )


def test_tail_bad_run_id_is_one_line():
    result = sse_redis("tail", "bad{run}", "--redis-url", UNREACHABLE)
    assert result.returncode != 0
    assert_one_line_error(result.stderr, "tail")


def test_tail_unreachable_redis_is_one_line_at_once(backend):
    """An unreachable server is named, with the cause, at once: not after the
    reader's 30 s of retries (--retry-timeout's default)."""
    started = time.monotonic()
    result = sse_redis("tail", "cli-nowhere", "--redis-url", UNREACHABLE, "--backend", backend)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    line = assert_one_line_error(result.stderr, "tail")
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in line
    assert "refused" in line.lower()  # the cause
    assert result.stdout == ""
    assert elapsed < 10, elapsed  # an interpreter start and one refused connect


def test_tail_silent_host_gives_up_within_the_connect_check():
    """A host that never answers (a blackholed address) costs the connect
    check's few seconds, not the retry timeout."""
    with socket.socket() as listener:  # listens, never accepts: connects succeed, PING gets no answer
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        started = time.monotonic()
        assert cli.main(["tail", "cli-nowhere", "--redis-url", url]) != 0
        assert time.monotonic() - started < cli.CONNECT_CHECK_SECONDS * 2 + 2


def test_url_from_the_environment(redis_url, backend, monkeypatch, capsys):
    """Without --redis-url: $SSE_REDIS_URL, else $REDIS_URL; --redis-url wins over both."""
    run = completed_run(redis_url, 3, backend)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert cli.main(["tail", run, "--backend", backend]) == 0
    check_tail(capsys.readouterr().out, run, 0, 4)
    monkeypatch.setenv("SSE_REDIS_URL", UNREACHABLE)  # read first
    assert cli.main(["tail", run, "--backend", backend]) != 0
    assert "127.0.0.1:1" in capsys.readouterr().err
    assert cli.main(["tail", run, "--backend", backend, "--redis-url", redis_url]) == 0
    monkeypatch.setenv("SSE_REDIS_URL", "")  # empty counts as unset
    assert cli.main(["tail", run, "--backend", backend]) == 0
    # A subprocess too, and the demo takes it instead of starting a server.
    result = sse_redis("demo", *FAST_DEMO, "--backend", backend, env={"SSE_REDIS_URL": redis_url})
    check_demo(result, backend=backend)
    assert "embedded Valkey" not in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_names_the_url_variables(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "$SSE_REDIS_URL, else $REDIS_URL" in out


def test_demo_unreachable_redis_is_one_line(backend):
    result = sse_redis("demo", "--redis-url", UNREACHABLE, "--backend", backend)
    assert result.returncode != 0
    line = assert_one_line_error(result.stderr, "demo")
    assert "cannot reach Redis" in line


# ----------------------------------------------------------------- bench


def test_bench_never_tracebacks(monkeypatch, capsys):
    """Without ``sse_redis.tools.bench``: a one-line error.  With it: a failure of the
    benchmarks (forced here, so they never run in this suite) is one line too."""
    if importlib.util.find_spec("sse_redis.tools.bench") is None:
        result = sse_redis("bench", "--redis-url", UNREACHABLE)
        assert result.returncode != 0
        line = assert_one_line_error(result.stderr, "bench")
        assert "not available" in line
        assert cli.main(["bench", "--redis-url", UNREACHABLE]) != 0
        assert_one_line_error(capsys.readouterr().err, "bench")
    else:
        import sse_redis.tools.bench as bench

        def broken(*args: Any, **kwargs: Any) -> int:
            raise RuntimeError("benchmarks exploded")

        monkeypatch.setattr(bench, "run_benchmarks", broken)
        assert cli.main(["bench", "--redis-url", UNREACHABLE]) != 0
        line = assert_one_line_error(capsys.readouterr().err, "bench")
        assert "benchmarks exploded" in line


def _bench_must_not_run(monkeypatch):
    import sse_redis.tools.bench as bench

    def ran(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("the benchmarks ran")

    monkeypatch.setattr(bench, "run_benchmarks", ran)


def test_bench_plot_without_matplotlib_fails_first(monkeypatch, capsys, tmp_path):
    """--plot without matplotlib: one line, before any benchmark (and before
    an embedded server) starts."""
    _bench_must_not_run(monkeypatch)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # find_spec -> None: not installed
    assert cli.main(["bench", "--plot", str(tmp_path / "b.png")]) != 0
    line = assert_one_line_error(capsys.readouterr().err, "bench")
    assert "--plot needs matplotlib" in line
    assert "sse-redis[plot]" in line


def test_bench_backend_runs_only_that_backend(monkeypatch, capsys):
    import sse_redis.tools.bench as bench

    seen: list[Any] = []
    monkeypatch.setattr(bench, "run_benchmarks", lambda url, **kw: seen.append(kw["backends"]) or 0)
    assert cli.main(["bench", "--redis-url", UNREACHABLE, "--backend", "python"]) == 0
    assert cli.main(["bench", "--redis-url", UNREACHABLE]) == 0
    assert seen == [["python"], None]


def test_bench_quick_one_backend(redis_url, backend):
    """``bench --backend X`` measures X alone (and the reference's writer)."""
    result = sse_redis("bench", "--quick", "--redis-url", redis_url, "--backend", backend)
    assert result.returncode == 0, result.stderr
    head = result.stdout.splitlines()[0]
    assert head == f"| measure | {backend} |"
    assert "the reference's writer" in result.stdout
    assert f"({'python' if backend == 'rust' else 'rust'})" not in result.stderr  # no step of the other engine


def test_bench_quick_prints_a_table_and_plots(redis_url, tmp_path):
    """The benchmarks the CLI ships run end to end (quick sizes) on a given server."""
    pytest.importorskip("matplotlib")
    plot = tmp_path / "bench.png"
    result = sse_redis("bench", "--quick", "--redis-url", redis_url, "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| measure |")
    assert "rust" in lines[0]
    assert "python" in lines[0]
    measures = {line.split("|")[1].strip() for line in lines[2:] if line.startswith("|")}
    assert {"writer, 100 runs round robin (chunks/s)", "reader connections"} <= measures
    assert plot.stat().st_size > 10_000


def test_bench_plot_marks_percentiles_machine_date_and_reference(tmp_path):
    """The plot's text: p50 and p99 of each backend, the backends, the
    machine, the date, and the reference's throughput bar."""
    pytest.importorskip("matplotlib")
    import datetime

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from sse_redis.tools import bench

    results = bench.Results(["rust", "python"])
    results.latencies_ms = {"rust": [0.1 * i for i in range(1, 101)], "python": [0.2 * i for i in range(1, 101)]}
    results.throughput = {"rust": 300_000.0, "python": 120_000.0, "reference": 40_000.0}
    results.started = datetime.datetime(2026, 12, 6, 15, 0, tzinfo=datetime.timezone.utc)
    texts: list[str] = []
    save = plt.Figure.savefig

    def capture(fig: Any, path: Any, **kw: Any) -> None:
        texts.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        save(fig, path, **kw)

    plt.Figure.savefig = capture  # type: ignore[method-assign]
    try:
        bench.draw(results, str(tmp_path / "p.png"))
    finally:
        plt.Figure.savefig = save  # type: ignore[method-assign]
    text = "\n".join(texts)
    for label in ("rust p50 5.00 ms", "rust p99 9.90 ms", "python p50", "python p99", "reference", "40,000"):
        assert label in text, (label, text)
    title = next(t for t in texts if t.startswith("sse-redis bench"))
    assert "backend rust, python" in title
    assert platform.machine() in title
    assert f"{os.cpu_count()} CPUs" in title
    assert platform.python_version() in title
    assert "2026-12-06" in title
    assert (tmp_path / "p.png").stat().st_size > 10_000


# ----------------------------------------------------------------- serve: no server left behind


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_serve_never_leaves_its_embedded_server_running(signum):
    """However ``sse-redis serve`` ends, its embedded valkey-server ends with
    it: SIGINT and SIGTERM through its cleanup (data directory removed too),
    SIGKILL through the kernel's parent-death signal."""
    pytest.importorskip("uvicorn")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sse_redis", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once the embedded server is up
        assert "example app" in line, line + proc.stderr.read()
        deadline = time.monotonic() + 30
        while not [c for c in children(proc.pid) if "valkey" in Path(f"/proc/{c}/cmdline").read_text()]:
            assert time.monotonic() < deadline, "no valkey-server child"
            time.sleep(0.05)
        server = next(c for c in children(proc.pid) if "valkey" in Path(f"/proc/{c}/cmdline").read_text())
        data_dir = os.readlink(f"/proc/{server}/cwd")  # valkey works in its --dir
        assert "sse-redis-server-" in data_dir, data_dir
        while not _listening(port):
            assert time.monotonic() < deadline, "the app never listened"
            assert proc.poll() is None, "the app exited before it listened"
            time.sleep(0.05)
        proc.send_signal(signum)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while alive(server):
            assert time.monotonic() < deadline, f"valkey-server {server} outlived sse-redis serve ({signum.name})"
            time.sleep(0.05)
        if signum != signal.SIGKILL:
            assert not os.path.exists(data_dir), "the embedded server's data directory was left behind"
            assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# ----------------------------------------------------------------- servers.py: the free-port race


def _squatter() -> socket.socket:
    """A listener on a free port that answers any connection with ``+PONG``:
    another server that took the port between its free-port check and the
    bind, the worst case for a readiness check that only PINGs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"+PONG\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return sock


def test_server_moves_to_another_port_when_its_own_is_taken():
    """A port chosen free but taken before the server binds it: the server
    starts again on another port, and another server answering PING on the
    old one is never taken for it.  Restarts then keep the new port."""
    from sse_redis.tools.servers import RedisProcess, valkey_binary

    with _squatter() as squat:
        taken = squat.getsockname()[1]
        server = RedisProcess(valkey_binary())
        server.port = taken  # as if free_port() had returned it just before the squatter bound it
        try:
            server.start()
            assert server.port != taken
            client = redis.Redis.from_url(server.url)
            assert client.info("server")["process_id"] == server._proc.pid
            client.set("k", "v")
            server.restart()
            assert server.port != taken
            assert client.info("server")["process_id"] == server._proc.pid
            client.close()
        finally:
            server.close()


def test_server_on_a_named_port_never_moves():
    from sse_redis.tools.servers import RedisProcess, ServerError, valkey_binary

    with _squatter() as squat:
        taken = squat.getsockname()[1]
        server = RedisProcess(valkey_binary(), port=taken)
        try:
            with pytest.raises(ServerError, match=f"port {taken} is in use"):
                server.start()
            assert server.port == taken
        finally:
            server.close()
