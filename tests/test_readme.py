"""The README's quick start runs as written: every ```python block marked
``<!-- test: run -->`` is executed, in order, in one namespace, on the suite's
server (the snippets' ``redis://localhost:6379/0`` is replaced by its URL).
Also what the README says around them: a rerun of the write snippet works
(fresh run ids), writing a completed run again is ``RunClosedError``, and the
install lines make a venv first."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest

from sse_redis import AsyncStreamReader, AsyncStreamWriter, RunClosedError, StreamReader, StreamWriter

README = Path(__file__).resolve().parent.parent / "README.md"
PLACEHOLDER = "redis://localhost:6379/0"
MARK = "<!-- test: run -->"


def runnable_blocks() -> list[str]:
    text = README.read_text()
    return re.findall(re.escape(MARK) + r"\s*\n```python\n(.*?)\n```", text, flags=re.DOTALL)


def test_the_quick_start_has_runnable_blocks():
    blocks = runnable_blocks()
    assert len(blocks) >= 4, "the write, process_stream, read and FastAPI snippets"
    assert all(PLACEHOLDER in block for block in blocks)
    # Every marker is followed by a python block (a typo would silently skip one).
    assert len(re.findall("^" + re.escape(MARK) + "$", README.read_text(), flags=re.MULTILINE)) == len(blocks)


FACES = (StreamWriter, StreamReader, AsyncStreamReader, AsyncStreamWriter)


def _close(faces: list[Any]) -> None:
    for value in faces:
        if isinstance(value, StreamWriter | StreamReader):
            value.close()
        elif isinstance(value, AsyncStreamReader | AsyncStreamWriter):
            asyncio.run(value.aclose())


def run_snippets(url: str, blocks: list[str]) -> tuple[dict[str, Any], str]:
    namespace: dict[str, Any] = {"__name__": "readme"}
    out = io.StringIO()
    faces: list[Any] = []  # every face a block made, also those a later block's names replaced
    try:
        with contextlib.redirect_stdout(out):
            for block in blocks:
                exec(compile(block.replace(PLACEHOLDER, url), str(README), "exec"), namespace)
                faces += [v for v in namespace.values() if isinstance(v, FACES) and v not in faces]
    finally:
        _close(faces)
    return namespace, out.getvalue()


def test_the_quick_start_runs_as_written(redis_url):
    pytest.importorskip("fastapi")
    namespace, out = run_snippets(redis_url, runnable_blocks())
    run_id = namespace["run_id"]
    assert namespace["seq"] == 1
    # process_stream's on_finish, once, completed.
    assert re.search(r"^run-[0-9a-f]{32} completed$", out, flags=re.MULTILINE), out
    # The sync read: both chunks with their ids and run id filled in, then [DONE].
    assert f'"run_id":"{run_id}","seq_id":1,"content":"Hel"' in out
    assert out.count("data: [DONE]") == 2  # the sync read and the async read from last_event_id="1"
    assert out.count('"content":"lo"') == 2
    assert out.count('"content":"Hel"') == 1  # the async read starts after seq 1
    assert "app" in namespace  # the FastAPI app was defined


def test_the_write_snippet_runs_twice(redis_url):
    """Fresh run ids: a rerun of the write snippet is not RunClosedError."""
    write = runnable_blocks()[0]
    first, _ = run_snippets(redis_url, [write])
    second, _ = run_snippets(redis_url, [write])
    assert first["run_id"] != second["run_id"]
    assert first["seq"] == second["seq"] == 1


def test_what_the_readme_says_about_a_completed_run(redis_url):
    """Writing it again raises RunClosedError, from the same writer or
    another; ``delete`` first and it is written afresh from seq 1."""
    namespace, _ = run_snippets(redis_url, [runnable_blocks()[0]])
    run_id = namespace["run_id"]
    with StreamWriter(redis_url) as writer, pytest.raises(RunClosedError):
        writer.write(run_id, "data: again\n\n")
    with StreamWriter(redis_url) as writer:
        writer.delete(run_id)
        assert writer.write(run_id, "data: again\n\n") == 1
        writer.complete(run_id)


def test_install_lines_make_a_venv_first():
    """Debian's and Ubuntu's python3 refuse ``pip install`` outside a venv (PEP 668)."""
    text = README.read_text()
    first_command = text.split("```bash\n", 1)[1].splitlines()[0]
    assert first_command.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    assert first_command.split("#")[0].rstrip().endswith("sse-redis demo")
    install = text.split("## Install", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert install[0].startswith("python3 -m venv .venv && . .venv/bin/activate")
    assert any("sse-redis[testing]" in line for line in install)
