"""Every option of the faces, checked once, with one rule and one message per
kind of value, whatever the backend; the engines trust what comes out.

Durations are seconds (``int`` or ``float``, never ``bool``).  NaN and
negative values are refused everywhere.  ``math.inf`` means "no limit" where a
limit may be lifted (waiting to write, retrying, waiting for a stream or its
next chunk) and is refused where a finite period is needed (connecting,
``WAIT``, periodic checks, pings).  Every refusal is a ``ValueError`` naming
the option.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

_P = ParamSpec("_P")
_Face = TypeVar("_Face")

# What "no limit" becomes for an engine: about 31 years, which every deadline
# can still be added to (a Rust Instant cannot hold infinity).
NO_LIMIT = 1e9


def same_parameters(
    source: Callable[Concatenate[Any, _P], None],
) -> Callable[[Callable[Concatenate[_Face, ...], None]], Callable[Concatenate[_Face, _P], None]]:
    """Give a face's ``__init__`` the parameters of ``source`` (the sync face's
    ``__init__``), for type checkers (a ``ParamSpec``: names, types, defaults)
    and for ``inspect.signature``/``help()`` alike, so the async faces take
    exactly the sync faces' keyword arguments without a second list to drift.
    The decorated ``__init__`` forwards ``*args, **options`` to the sync face,
    which checks them."""
    signature = inspect.signature(source)

    def decorate(init: Callable[Concatenate[_Face, ...], None]) -> Callable[Concatenate[_Face, _P], None]:
        init.__signature__ = signature  # type: ignore[attr-defined]  # what inspect.signature reads
        return init

    return decorate


def seconds(name: str, value: Any, *, zero: bool = True, unlimited: bool = False) -> float:
    """``value`` as float seconds; ``zero``: 0 is allowed; ``unlimited``:
    ``inf`` is allowed and means no limit."""
    return _seconds(name, value, zero, unlimited, "")


def optional_seconds(name: str, value: Any, *, zero: bool = True, unlimited: bool = False) -> float | None:
    """``seconds``, or ``None``."""
    return None if value is None else _seconds(name, value, zero, unlimited, " or None")


def _seconds(name: str, value: Any, zero: bool, unlimited: bool, alternative: str) -> float:
    rule = (">= 0" if zero else "> 0") + (" (inf: no limit)" if unlimited else "") + alternative
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds {rule}, not {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not zero) or (math.isinf(seconds) and not unlimited):
        raise ValueError(f"{name} must be a number of seconds {rule}, not {seconds!r}")
    return seconds


def count(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``."""
    return _count(name, value, minimum, "")


def optional_count(name: str, value: Any, *, minimum: int = 1) -> int | None:
    """``count``, or ``None``."""
    return None if value is None else _count(name, value, minimum, " or None")


def _count(name: str, value: Any, minimum: int, alternative: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{alternative}, not {value!r}")
    return value


# How a reader's hub learns of new entries (the engines' ``ReaderHub(delivery=)``).
DELIVERIES = ("notify", "xread")


def choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``, else a ``ValueError`` naming them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")
    return value


def engine_seconds(value: float) -> float:
    """A checked duration as an engine takes it: no limit held at ``NO_LIMIT``."""
    return min(value, NO_LIMIT)


def wait_seconds(value: float | None) -> float | None:
    """A per-call timeout as an engine takes it (``None``: no limit)."""
    return None if value is None or value >= NO_LIMIT else value


@dataclass(frozen=True)
class WriterOptions:
    flush_interval: float
    flush_size: int
    ttl: int | None
    max_len: int | None
    max_pending: int
    write_timeout: float | None  # None: no limit
    retry_timeout: float
    connect_timeout: float
    wait_replicas: int
    wait_timeout: float
    max_chunk_bytes: int | None  # None: no limit of ours (the server's still holds)

    @classmethod
    def checked(
        cls,
        *,
        flush_interval: Any,
        flush_size: Any,
        ttl: Any,
        max_len: Any,
        max_pending: Any,
        write_timeout: Any,
        retry_timeout: Any,
        connect_timeout: Any,
        wait_replicas: Any,
        wait_timeout: Any,
        max_chunk_bytes: Any,
    ) -> WriterOptions:
        return cls(
            flush_interval=seconds("flush_interval", flush_interval, zero=False),
            flush_size=count("flush_size", flush_size),
            ttl=optional_count("ttl", ttl),
            max_len=optional_count("max_len", max_len),
            max_pending=count("max_pending", max_pending),
            write_timeout=wait_seconds(optional_seconds("write_timeout", write_timeout, unlimited=True)),
            retry_timeout=seconds("retry_timeout", retry_timeout, zero=False, unlimited=True),
            connect_timeout=seconds("connect_timeout", connect_timeout, zero=False),
            wait_replicas=count("wait_replicas", wait_replicas, minimum=0),
            wait_timeout=seconds("wait_timeout", wait_timeout, zero=False),
            max_chunk_bytes=optional_count("max_chunk_bytes", max_chunk_bytes),
        )

    def engine(self, cluster: bool) -> dict[str, Any]:
        """The engine's keyword arguments."""
        return dict(
            flush_size=self.flush_size,
            ttl=self.ttl,
            max_len=self.max_len,
            max_pending=self.max_pending,
            retry_timeout=engine_seconds(self.retry_timeout),
            connect_timeout=self.connect_timeout,
            wait_replicas=self.wait_replicas,
            wait_timeout=self.wait_timeout,
            cluster=cluster,
        )


@dataclass(frozen=True)
class ReaderOptions:
    batch_size: int
    queue_size: int
    idle_timeout: float
    missing_timeout: float
    ping_interval: float | None
    check_interval: float
    retry_timeout: float
    delivery: str

    @classmethod
    def checked(
        cls,
        *,
        batch_size: Any,
        queue_size: Any,
        idle_timeout: Any,
        missing_timeout: Any,
        ping_interval: Any,
        check_interval: Any,
        retry_timeout: Any,
        delivery: Any = "notify",
    ) -> ReaderOptions:
        return cls(
            batch_size=count("batch_size", batch_size),
            queue_size=count("queue_size", queue_size),
            idle_timeout=seconds("idle_timeout", idle_timeout, unlimited=True),
            missing_timeout=seconds("missing_timeout", missing_timeout, unlimited=True),
            ping_interval=optional_seconds("ping_interval", ping_interval, zero=False),
            check_interval=seconds("check_interval", check_interval, zero=False),
            retry_timeout=seconds("retry_timeout", retry_timeout, unlimited=True),
            delivery=choice("delivery", delivery, DELIVERIES),
        )

    def hub(self, cluster: bool) -> dict[str, Any]:
        """The hub's keyword arguments."""
        return dict(
            queue_size=max(self.queue_size, self.batch_size),
            batch_size=self.batch_size,
            check_interval=self.check_interval,
            retry_timeout=engine_seconds(self.retry_timeout),
            cluster=cluster,
            delivery=self.delivery,
        )
