"""How a run id maps to its stream key: one object shared verbatim by the
writer and the reader.  Run ids are validated here, so no caller can reach a
key outside the layout's prefix."""

from __future__ import annotations

import zlib
from collections.abc import Callable

MAX_RUN_ID_LENGTH = 256


def validate_run_id(run_id: object) -> str:
    """``run_id`` itself, or ``TypeError``/``ValueError`` when it is not a
    non-empty ``str`` of at most 256 characters without control characters
    (nor braces, which would change a cluster layout's hash slot)."""
    if not isinstance(run_id, str):
        raise TypeError(f"run_id must be a str, not {type(run_id).__name__}")
    if not run_id:
        raise ValueError("run_id must not be empty")
    if len(run_id) > MAX_RUN_ID_LENGTH:
        raise ValueError(f"run_id is longer than {MAX_RUN_ID_LENGTH} characters")
    if not run_id.isprintable() or "{" in run_id or "}" in run_id:
        raise ValueError(f"run_id {run_id!r} contains control characters or braces")
    run_id.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError here
    return run_id


def _validate_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix or not prefix.isprintable():
        raise ValueError(f"key prefix must be a non-empty printable str, not {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ValueError("key prefix must not contain braces")
    return prefix


class KeyLayout:
    """The reference's layout: ``<prefix><run_id>``, default ``sse:run:<run_id>``."""

    def __init__(self, prefix: str = "sse:run:") -> None:
        self.prefix: str = _validate_prefix(prefix)

    def key(self, run_id: str) -> str:
        return self.prefix + validate_run_id(run_id)

    def __call__(self, run_id: str) -> str:
        return self.key(run_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"


class ClusterKeyLayout(KeyLayout):
    """Bucketed for Redis Cluster: ``<prefix>{<bucket>}:<run_id>``.

    The bucket (a stable CRC32 of the run id modulo ``buckets``) is the hash
    tag, so one blocking ``XREAD`` can wait on every run of a bucket.
    """

    def __init__(self, prefix: str = "sse:run:", buckets: int = 16) -> None:
        super().__init__(prefix)
        if not isinstance(buckets, int) or isinstance(buckets, bool) or not 1 <= buckets <= 16384:
            raise ValueError("buckets must be an int between 1 and 16384")
        self.buckets = buckets

    def bucket(self, run_id: str) -> int:
        return zlib.crc32(run_id.encode("utf-8")) % self.buckets

    def key(self, run_id: str) -> str:
        run_id = validate_run_id(run_id)
        return f"{self.prefix}{{{self.bucket(run_id)}}}:{run_id}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r}, buckets={self.buckets})"


def hash_tag(key: str) -> str | None:
    """The part of ``key`` a Redis Cluster hashes when it has a hash tag
    (Redis's rule: between the first ``{`` and the next ``}``, at least one
    character), else ``None``."""
    open_ = key.find("{")
    if open_ < 0:
        return None
    close = key.find("}", open_ + 1)
    if close <= open_ + 1:
        return None
    return key[open_ + 1 : close]


def derived_key(key: str, suffix: str) -> str:
    """A name derived from a run's stream key, in the stream key's slot and
    clear of every other run's keys: ``<key>:<suffix>`` when the key has a
    hash tag, else ``{<key>}:<suffix>`` (run ids never contain braces, so no
    run's stream key looks like that).  ``append.lua`` applies the same rule
    (``channel_of``); every layout goes through here, callable ones included.

    The slot is shared as long as the key has no ``}`` outside a hash tag,
    which holds for every key of ``KeyLayout`` and ``ClusterKeyLayout``.
    """
    if hash_tag(key) is not None:
        return f"{key}:{suffix}"
    return f"{{{key}}}:{suffix}"


def notice_channel(key: str) -> str:
    """The channel on which the writers publish a notice (the new top seq id,
    decimal) per stored batch of the run whose stream key is ``key``:
    ``PUBLISH`` on one server, ``SPUBLISH`` on a cluster (its shard is the
    key's)."""
    return derived_key(key, "notices")


def status_key(key: str) -> str:
    """The key of the run's status beside its stream key ``key`` (issue 13)."""
    return derived_key(key, "status")


KeyFunction = Callable[[str], str]
Layout = KeyLayout | KeyFunction


def resolve(layout: Layout | str | None, *, cluster: bool = False) -> KeyFunction:
    """A layout object, a prefix string, or any callable ``run_id -> key``
    (a callable still gets the run id validated first).  On a cluster the
    default is ``ClusterKeyLayout``: one blocking read per bucket, not per run."""
    if layout is None:
        return ClusterKeyLayout() if cluster else KeyLayout()
    if isinstance(layout, str):
        return ClusterKeyLayout(layout) if cluster else KeyLayout(layout)
    if isinstance(layout, KeyLayout):
        return layout
    if callable(layout):
        return lambda run_id: layout(validate_run_id(run_id))
    raise TypeError(f"keys must be a KeyLayout, a prefix str or a callable, not {layout!r}")
