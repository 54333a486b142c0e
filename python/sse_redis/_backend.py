"""Which engine is live: the Rust core when it imports, else the pure-Python twin.

``SSE_REDIS_PURE=1`` forces the twin.  Every face takes ``backend="rust"|"python"``
and resolves it here, so both engines can run side by side in one process.

When the twin serves because the core could not be had (the pure
``py3-none-any`` wheel, installed where no binary wheel fits the platform, or a
binary that does not load), one WARNING names why, once, at import; not when
``SSE_REDIS_PURE=1`` asked for the twin.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import sysconfig
from types import ModuleType

from . import _pure

_FORCED_PURE = os.environ.get("SSE_REDIS_PURE", "") not in ("", "0")

_core: ModuleType | None
#: Why the Rust core cannot be used (None when it imports).
CORE_UNAVAILABLE: str | None = None
try:
    from . import _core
except ImportError as exc:  # no binary wheel for this platform, or one that does not load: the twin serves
    _core = None
    if importlib.util.find_spec(f"{__package__}._core") is None:
        CORE_UNAVAILABLE = (
            f"no compiled core is installed (the pure wheel: no binary wheel fits {sysconfig.get_platform()}, "
            f"{sys.implementation.name} {sys.version_info.major}.{sys.version_info.minor})"
        )
    else:
        CORE_UNAVAILABLE = f"the compiled core is installed but does not load: {exc}"

BACKEND: str = "rust" if _core is not None and not _FORCED_PURE else "python"

if CORE_UNAVAILABLE is not None and not _FORCED_PURE:
    # Imported before sse_redis/__init__ adds its NullHandler: an application
    # that configured no logging still sees this line (logging's last resort).
    logging.getLogger("sse_redis").warning(
        "sse_redis: the pure-Python backend serves (BACKEND='python'): %s", CORE_UNAVAILABLE
    )


def module(backend: str | None = None) -> ModuleType:
    """The module behind ``backend`` (``None`` means the live default)."""
    name = BACKEND if backend is None else backend
    if name == "python":
        return _pure
    if name == "rust":
        if _core is None:
            raise RuntimeError(f"backend='rust' asked for, but sse_redis._core cannot be used: {CORE_UNAVAILABLE}")
        return _core
    raise ValueError(f"backend must be 'rust' or 'python', not {name!r}")
