"""Both wheels, built from this tree and installed into fresh venvs.

The binary wheel is scripts/build-wheels' manylinux2014 one (``maturin build
--release --zig``, packaging/wheels/build.py, built once per session): abi3,
``manylinux_2_17_x86_64`` by auditwheel, and it must run the Rust core, unless
``SSE_REDIS_PURE=1``; the pure wheel (``py3-none-any``, built by
``packaging/pure/build.py``) must run the Python twin, carry no compiled file,
and say once why it serves.  Given both, pip must pick the binary.  Slow: it
builds, makes venvs and installs ``redis`` from the index.
"""

from __future__ import annotations

import email
import importlib.util
import json
import os
import shutil
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


def _load_builder():
    spec = importlib.util.spec_from_file_location("sse_redis_wheels_build", ROOT / "packaging" / "wheels" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


builder = _load_builder()  # scripts/build-wheels' core

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
    builder.ensure_tools()  # the pinned ziglang and auditwheel
    # target/wheels: cargo rebuilds only what changed.
    return {
        "rust": builder.build_binary(builder.GLIBC_X86_64, out / "rust"),
        "python": builder.build_pure(out / "python"),
    }


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
    return {**json.loads(out.stdout), "stderr": out.stderr}


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


def test_binary_wheel_is_abi3_manylinux2014_with_the_core(wheels):
    wheel = wheels["rust"]
    tags = wheel.stem.split("-")[2:]  # python, abi, platform
    assert tags[1] == "abi3", wheel.name
    assert "manylinux_2_17_x86_64" in tags[2].split("."), wheel.name
    assert builder.auditwheel_tag(wheel) == "manylinux_2_17_x86_64"
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
    # Only the pure wheel, unasked, warns (one line, naming why); SSE_REDIS_PURE=1 is asking.
    if wheel == "python" and not env:
        assert got["stderr"].count("\n") == 1, got["stderr"]
        assert "BACKEND='python'" in got["stderr"]
        assert "no compiled core is installed" in got["stderr"]
    else:
        assert got["stderr"] == ""


@pytest.fixture(scope="module")
def server_url():
    with builder.embedded_server() as server:
        yield server.url


@pytest.mark.parametrize("wheel", ["rust", "python"])
def test_installed_wheel_writes_and_reads(venvs, server_url, wheel):
    """scripts/build-wheels' smoke test: a write, a read and BACKEND in the fresh venv."""
    got = builder.smoke(venvs[wheel], server_url)
    assert got["backend"] == wheel
    assert Path(got["file"]).is_relative_to(venvs[wheel].parents[1])


@pytest.fixture(scope="module")
def redis_wheels(tmp_path_factory) -> Path:
    """sse-redis' dependencies as wheels, for installs with --no-index."""
    out = tmp_path_factory.mktemp("deps")
    _run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "-d",
        out,
        *PROJECT["dependencies"],
    )
    return out


def _install_from(links: Path, venv: Path) -> Path:
    python = builder.make_venv(venv)
    builder.pip_install(python, "--no-index", "--find-links", links, "sse-redis")
    return python


def test_pip_picks_the_binary_wheel_over_the_pure_one(wheels, redis_wheels, tmp_path):
    links = tmp_path / "links"
    shutil.copytree(redis_wheels, links)
    for wheel in wheels.values():
        shutil.copy2(wheel, links)
    got = _probe(_install_from(links, tmp_path / "venv"))
    assert got["backend"] == "rust"
    assert got["stderr"] == ""


def test_pure_wheel_installs_where_no_binary_wheel_fits(wheels, redis_wheels, tmp_path):
    """A binary wheel for another platform (the x86_64 one, tagged musllinux: this
    Python is glibc's) beside the pure one: pip takes the pure, which says why."""
    links = tmp_path / "links"
    shutil.copytree(redis_wheels, links)
    shutil.copy2(wheels["python"], links)
    name, version, python_tag, abi, _ = wheels["rust"].stem.split("-")
    shutil.copy2(wheels["rust"], links / f"{name}-{version}-{python_tag}-{abi}-musllinux_1_2_x86_64.whl")
    got = _probe(_install_from(links, tmp_path / "venv"))
    assert got["backend"] == "python"
    (line,) = got["stderr"].splitlines()
    assert "no compiled core is installed" in line
