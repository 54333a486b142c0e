"""Build the pure-Python wheel ``sse_redis-<version>-py3-none-any.whl``.

The package lives in ``../../python/sse_redis``, outside this project's root.
hatchling could only reach it through ``force-include``, which copies a tree
verbatim and ignores every exclude, so an editable build's ``_core.abi3.so``
would ship in a wheel tagged ``any``.  Instead the package (minus compiled
files) is staged into a temp dir with this directory's pyproject.toml plus the
main pyproject's ``[project]`` tables, and built there.

    python packaging/pure/build.py [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MAIN_PYPROJECT = ROOT / "pyproject.toml"
PACKAGE = ROOT / "python" / "sse_redis"
COMPILED = ("*.so", "*.pyd", "*.dll", "*.dylib", "*.pyc", "__pycache__")


def project_tables(pyproject_text: str) -> str:
    """The ``[project]`` and ``[project.*]`` tables of a pyproject, verbatim."""
    keep, lines = False, []
    for line in pyproject_text.splitlines(keepends=True):
        if line.startswith("["):
            keep = re.match(r"\[project[.\]]", line) is not None
        if keep:
            lines.append(line)
    return "".join(lines)


def wheel_name(project: dict) -> str:
    dist = re.sub(r"[-_.]+", "_", project["name"]).lower()
    return f"{dist}-{project['version']}-py3-none-any.whl"


def with_static_version(pyproject_text: str) -> str:
    """The main pyproject with its dynamic version (maturin reads Cargo.toml's)
    written in, since hatchling knows no Cargo.toml."""
    version = tomllib.loads((ROOT / "Cargo.toml").read_text(encoding="utf-8"))["package"]["version"]
    return re.sub(r'^dynamic = \["version"\].*$', f'version = "{version}"', pyproject_text, count=1, flags=re.MULTILINE)


def build_wheel(out_dir: Path) -> Path:
    """Build the pure wheel into ``out_dir`` and return its path."""
    main_text = with_static_version(MAIN_PYPROJECT.read_text(encoding="utf-8"))
    project = tomllib.loads(main_text)["project"]
    staged_pyproject = (HERE / "pyproject.toml").read_text(encoding="utf-8")
    staged_pyproject += "\n" + project_tables(main_text)
    # The splice is textual; make sure it carried the metadata over exactly.
    if tomllib.loads(staged_pyproject)["project"] != project:
        raise RuntimeError("the staged [project] differs from the main pyproject's")

    out_dir = Path(out_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="sse-redis-pure-") as tmp:
        stage = Path(tmp)
        shutil.copytree(PACKAGE, stage / "sse_redis", ignore=shutil.ignore_patterns(*COMPILED))
        readme = project.get("readme")
        readme = readme.get("file") if isinstance(readme, dict) else readme
        if readme:
            shutil.copy2(ROOT / readme, stage / readme)
        (stage / "pyproject.toml").write_text(staged_pyproject, encoding="utf-8")
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out_dir), str(stage)],
            check=True,
        )
    wheel = out_dir / wheel_name(project)
    if not wheel.is_file():
        raise RuntimeError(f"pip wheel did not produce {wheel.name}")
    return wheel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="wheel directory (default: dist/)")
    print(build_wheel(parser.parse_args().out))


if __name__ == "__main__":
    main()
