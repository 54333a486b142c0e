"""What a face stands on, resolved once from its arguments: where Redis is
(the canonical target and whether it is a cluster), how run ids become keys,
and which engine module serves.  Every face (writer, reader, and the run
control to come) binds the same way, in the one order that works: the
target first (a ``RedisCluster`` client implies ``cluster``), the key layout
next (its default depends on ``cluster``), the backend last."""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

from . import _backend
from . import keys as _keys
from .connection import Target, resolve_target


class Binding(NamedTuple):
    url: Target
    cluster: bool
    key: _keys.KeyFunction
    module: ModuleType
    backend: str  # "rust" or "python"


def bind(redis: Any, *, cluster: bool | None, keys: _keys.Layout | str | None, backend: str | None) -> Binding:
    url, is_cluster = resolve_target(redis, cluster, backend)
    return Binding(
        url=url,
        cluster=is_cluster,
        key=_keys.resolve(keys, cluster=is_cluster),
        module=_backend.module(backend),
        backend=backend or _backend.BACKEND,
    )
