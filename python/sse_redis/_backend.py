"""Which engine is live: the Rust core when it imports, else the pure-Python twin.

``SSE_REDIS_PURE=1`` forces the twin.  Every face takes ``backend="rust"|"python"``
and resolves it here, so both engines can run side by side in one process.
"""

from __future__ import annotations

import os
from types import ModuleType

from . import _pure

_core: ModuleType | None
try:
    from . import _core
except ImportError:  # no binary wheel for this platform: the twin serves
    _core = None

_FORCED_PURE = os.environ.get("SSE_REDIS_PURE", "") not in ("", "0")

BACKEND: str = "rust" if _core is not None and not _FORCED_PURE else "python"


def module(backend: str | None = None) -> ModuleType:
    """The module behind ``backend`` (``None`` means the live default)."""
    name = BACKEND if backend is None else backend
    if name == "python":
        return _pure
    if name == "rust":
        if _core is None:
            raise RuntimeError("backend='rust' asked for, but sse_redis._core is not built for this platform")
        return _core
    raise ValueError(f"backend must be 'rust' or 'python', not {name!r}")
