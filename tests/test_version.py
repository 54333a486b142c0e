"""One version, written once: Cargo.toml's. maturin reads it for the binary
wheel (pyproject's version is dynamic), packaging/pure/build.py for the pure
wheel, and ``sse_redis.__version__`` is what the installed distribution says."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import tomllib

import sse_redis

ROOT = Path(__file__).resolve().parents[1]


def cargo_version() -> str:
    return tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]


def test_version_is_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    assert not re.search(r"__version__\s*=\s*['\"]\d+\.\d+", (ROOT / "python/sse_redis/__init__.py").read_text())


def test_installed_version_is_cargos():
    assert importlib.metadata.version("sse-redis") == cargo_version()
    assert sse_redis.__version__ == cargo_version()
