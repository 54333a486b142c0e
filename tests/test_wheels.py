"""Both wheels, built from this tree and installed into fresh venvs.

The maturin wheel (abi3) must run the Rust core, unless ``SSE_REDIS_PURE=1``;
the pure wheel (``py3-none-any``, built by ``packaging/pure/build.py``) must
run the Python twin and carry no compiled file.  Slow: it builds, makes venvs
and installs ``redis`` from the index.
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text(encoding="utf-8"))["package"]["version"]  # the one source
SOURCE_PACKAGE = ROOT / "python" / "sse_redis"
COMPILED_SUFFIXES = (".so", ".pyd", ".pyc")

# Run inside each venv; prints what the assertions need as one JSON line.
PROBE = r"""
import json, sse_redis
print(json.dumps({
    "backend": sse_redis.BACKEND,
    "file": sse_redis.__file__,
    "patched": sse_redis.patch_nulls('data: {"run_id":null,"seq_id": null}\n\n', "run-1", 7),
    "stop": sse_redis.sniff_stop_reason('data: {"message_type":"stop_reason","stop_reason":"end_turn"}\n\n'),
}))
"""


def _run(*cmd: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """``{"rust": maturin wheel, "python": pure wheel}``, each built into its own dir."""
    out = tmp_path_factory.mktemp("wheels")
    # Default target dir (./target): cargo rebuilds only what changed.
    _run(sys.executable, "-m", "maturin", "build", "--release", "--out", out / "rust", cwd=ROOT)
    _run(sys.executable, ROOT / "packaging" / "pure" / "build.py", "--out", out / "python")
    found = {kind: list((out / kind).glob("*.whl")) for kind in ("rust", "python")}
    assert all(len(w) == 1 for w in found.values()), found
    return {kind: w[0] for kind, w in found.items()}


@pytest.fixture(scope="module")
def venvs(wheels, tmp_path_factory) -> dict[str, Path]:
    """A fresh venv per wheel, with the wheel and its dependencies installed; its python."""
    pythons = {}
    for kind, wheel in wheels.items():
        venv = tmp_path_factory.mktemp(f"venv-{kind}")
        # No pip inside the venv (saves ~2 s each): this pip installs into it via --python.
        _run(sys.executable, "-m", "venv", "--without-pip", "--clear", venv)
        python = venv / "bin" / "python"
        _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", wheel)
        pythons[kind] = python
    return pythons


def _probe(python: Path, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "SSE_REDIS_PURE")}
    # cwd outside the tree, so only the installed package can be imported.
    out = _run(python, "-c", PROBE, env={**clean, **env}, cwd=python.parents[1])
    return json.loads(out.stdout)


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(zf.read(name))


def _requirements(meta: email.message.Message) -> set[tuple[str, str, str]]:
    # Markers are spelled differently by each backend (maturin writes
    # python_full_version where hatchling keeps python_version), so compare
    # each requirement's name, specifier and the extras it belongs to.
    reqs = set()
    for line in meta.get_all("Requires-Dist", []):
        req = Requirement(line)
        extras = sorted(
            e for e in meta.get_all("Provides-Extra", []) if req.marker and req.marker.evaluate({"extra": e})
        )
        reqs.add((req.name, str(req.specifier), ",".join(extras)))
    return reqs


def test_pure_wheel_is_any_and_has_the_whole_package_but_no_binary(wheels):
    wheel = wheels["python"]
    assert wheel.name == f"sse_redis-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        packaged = {n for n in zf.namelist() if n.startswith("sse_redis/")}
    source = {
        "sse_redis/" + p.relative_to(SOURCE_PACKAGE).as_posix()
        for p in SOURCE_PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in COMPILED_SUFFIXES and "__pycache__" not in p.parts
    }
    assert packaged == source
    assert {"sse_redis/_core.pyi", "sse_redis/py.typed", "sse_redis/_pure/__init__.py"} <= packaged


def test_binary_wheel_is_abi3_with_the_core(wheels):
    wheel = wheels["rust"]
    tags = wheel.stem.split("-")[2:]  # python, abi, platform
    assert tags[1] == "abi3", wheel.name
    with zipfile.ZipFile(wheel) as zf:
        assert any(n.startswith("sse_redis/_core") and n.endswith((".so", ".pyd")) for n in zf.namelist())


def test_both_wheels_declare_the_same_metadata(wheels):
    rust, pure = (_wheel_metadata(wheels[k]) for k in ("rust", "python"))
    for field in ("Name", "Version", "Requires-Python"):
        assert rust[field] == pure[field], field
    assert rust["Version"] == VERSION
    assert sorted(rust.get_all("Provides-Extra")) == sorted(pure.get_all("Provides-Extra"))
    assert sorted(rust.get_all("Provides-Extra")) == sorted(PROJECT["optional-dependencies"])
    assert _requirements(rust) == _requirements(pure)


@pytest.mark.parametrize(
    ("wheel", "env", "backend"),
    [("rust", {}, "rust"), ("rust", {"SSE_REDIS_PURE": "1"}, "python"), ("python", {}, "python")],
    ids=["binary", "binary-forced-pure", "pure"],
)
def test_installed_wheel_runs_its_backend(venvs, wheel, env, backend):
    python = venvs[wheel]
    got = _probe(python, **env)
    assert got["backend"] == backend
    assert Path(got["file"]).is_relative_to(python.parents[1])
    assert got["patched"] == 'data: {"run_id":"run-1","seq_id": 7}\n\n'
    assert got["stop"] == "end_turn"
