"""Where Redis is: a URL, or a redis-py client whose settings are reused.

Every face resolves its ``redis`` argument here, once, into a ``Target``: one
canonical URL that both engines read the same way, plus the client settings
no URL can carry.

- URL strings are read as redis-py reads them (credentials in the netloc, or
  in ``?username=`` / ``?password=``; ``?db=``; ``unix://`` sockets; the TLS
  query parameters), so every form works on both backends.  A raw password
  holding ``/``, ``?``, ``#`` or ``@`` (not percent-encoded) is understood too.
- The canonical URL has the credentials percent-encoded in the netloc, the db
  in the path (``?db=`` for a socket), and only the query parameters both
  engines honour: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
  ``ssl_cert_reqs=none``, ``ssl_check_hostname=false``, ``client_name``.
- Anything else a client (or URL) sets rides along in ``Target.settings``:
  the pure engines build their redis-py clients with it (a credential
  provider, ``ssl_ca_data``...), the Rust engine cannot, so the face refuses
  it for ``backend="rust"`` naming the setting.  What the engines own
  (timeouts, retries, keepalive, protocol, decoding) is never taken over.

URLs carry credentials, so anything printed goes through ``redact`` first,
and no error raised here quotes a URL except through it.
"""

from __future__ import annotations

import inspect
import re
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

SCHEMES = ("redis", "rediss", "unix")

# Left to each engine: its timeouts, retry policy, keepalive, wire protocol and
# decoding, and redis-py's pool internals.  Taken over from a client, these
# would break the engine (RESP3 replies, decoded strings) or its liveness bounds.
ENGINE_OWNED = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
        "socket_read_size",
        "retry",
        "retry_on_timeout",
        "retry_on_error",
        "health_check_interval",
        "decode_responses",
        "encoding",
        "encoding_errors",
        "parser_class",
        "parser",
        "protocol",
        "legacy_responses",
        "redis_connect_func",
        "command_packer",
        "event_dispatcher",
        "max_connections",
        "timeout",
        "cache",
        "cache_config",
        "connection_class",
        "connection_pool",
        "connection_pool_class",
        "queue_class",
        "single_connection_client",
        "maint_notifications_config",
        "maint_notifications_pool_handler",
        "maintenance_state",
        "maintenance_notification_hash",
        "oss_cluster_maint_notifications_handler",
        "orig_host_address",
        "orig_socket_timeout",
        "orig_socket_connect_timeout",
        "himport_registry",
    }
)
# Which library is talking: the pure engines announce the client's, the Rust
# engine its own (not a setting the server needs).
IDENTITY = frozenset({"lib_name", "lib_version", "driver_info"})
# In the canonical URL: both engines honour these.
CANONICAL = frozenset(
    {
        "host",
        "port",
        "db",
        "username",
        "password",
        "path",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "client_name",
    }
)

# Query parameters whose values are secrets, in any spelling a user may try.
_SECRET_PARAM = re.compile(r"pass|secret|token|auth", re.IGNORECASE)
_HOST_PORT = re.compile(r"(?:[A-Za-z0-9._~%!$&'()*+,;=-]+|\[[0-9A-Fa-f:.]+\])(?::\d+)?")


class Target(str):
    """The canonical URL (what both engines read), with ``settings``: the
    redis-py connection settings it cannot carry, which only the pure engines
    use, and ``rust_refused``: the names of those the Rust engine cannot honour."""

    settings: Mapping[str, Any]
    rust_refused: tuple[str, ...]

    def __new__(cls, url: str, settings: Mapping[str, Any] | None = None, rust_refused: tuple[str, ...] = ()) -> Self:
        target = super().__new__(cls, url)
        target.settings = dict(settings or {})
        target.rust_refused = rust_refused
        return target

    def __repr__(self) -> str:
        return f"Target({redact(self)!r})"

    # Two clients of one server with different settings (two credential
    # providers) are different targets; against a plain string, the URL counts.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, Target):
            return str.__eq__(self, other) is True and _same(self.settings, other.settings)
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return str.__hash__(self)


_ANY = object()  # resolve without checking a backend (the face checks later)


def resolve_url(target: Any) -> Target:
    """The ``Target`` of a URL string or a ``redis.Redis`` /
    ``redis.asyncio.Redis`` client (host, port, db, credentials, TLS, and
    every other connection setting)."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        return _from_kwargs(_read_url(target), connection_kind=None, asynchronous=False, from_url=True)
    pool = getattr(target, "connection_pool", None)
    if hasattr(pool, "get_master_address"):
        # Its pool knows no fixed address (the master moves), and neither engine's
        # client library takes a Sentinel URL: better refused than a wrong host.
        raise ValueError(
            "a Sentinel-managed client cannot be followed through a failover here; "
            "pass the current master's URL (neither client library has a Sentinel URL form)"
        )
    kwargs = getattr(pool, "connection_kwargs", None)
    if kwargs is None:
        raise TypeError(f"expected a Redis URL or a redis-py client, not {type(target).__name__}")
    connection_class = getattr(pool, "connection_class", None)
    return _from_kwargs(dict(kwargs), _kind(connection_class, kwargs), _is_async(connection_class), from_url=False)


def resolve_target(target: Any, cluster: bool | None, backend: Any = _ANY) -> tuple[Target, bool]:
    """``(target, cluster)`` for ``target``: a ``RedisCluster`` client (sync or
    asyncio) means a cluster; a URL or plain client means ``cluster`` (default
    one server).  With ``backend`` (``"rust"``, ``"python"``, or ``None``: the
    live one), settings that backend cannot honour are a ``ValueError`` now."""
    if _is_cluster_client(target):
        if cluster is False:
            raise ValueError("a RedisCluster client was given with cluster=False")
        url, cluster = _cluster_target(target), True
    else:
        if cluster is not None and not isinstance(cluster, bool):
            raise TypeError(f"cluster must be a bool or None, not {type(cluster).__name__}")
        url = resolve_url(target)
        if cluster and url.startswith("unix:"):
            raise ValueError("a Redis Cluster is reached over TCP: unix:// URLs cannot name its nodes")
    if backend is not _ANY:
        check_backend(url, backend)
    return url, bool(cluster)


def check_backend(target: Target, backend: str | None) -> None:
    """Refuses, naming it, a setting the ``backend``'s engine cannot honour."""
    if backend is None:
        from . import _backend

        backend = _backend.BACKEND
    if backend == "rust" and target.rust_refused:
        name = target.rust_refused[0]
        raise ValueError(
            f"the Rust engine cannot honour the Redis client setting {name!r} "
            f"(it takes host, port, db, username/password, unix sockets, client_name and the TLS "
            f"files, ssl_cert_reqs and ssl_check_hostname): pass backend='python', whose engines use "
            f"the client's settings in full"
        )


def _is_cluster_client(target: Any) -> bool:
    return hasattr(target, "get_default_node") and hasattr(target, "get_nodes")


def _cluster_target(client: Any) -> Target:
    node = client.get_default_node()  # an asyncio client knows its seeds only, until first used
    if node is None:
        seeds = getattr(getattr(client, "nodes_manager", None), "startup_nodes", None) or {}
        node = next(iter(seeds.values()), None)
    if node is None:
        raise ValueError("the RedisCluster client knows no node")
    pool = getattr(getattr(node, "redis_connection", None), "connection_pool", None)
    kwargs = dict(getattr(pool, "connection_kwargs", None) or getattr(node, "connection_kwargs", {}))
    connection_class = getattr(pool, "connection_class", None) or kwargs.get("connection_class")
    kwargs.update(host=node.host, port=node.port, db=0)
    return _from_kwargs(kwargs, _kind(connection_class, kwargs), _is_async(connection_class), from_url=False)


def _kind(connection_class: Any, kwargs: Mapping[str, Any]) -> str:
    name = getattr(connection_class, "__name__", "")
    if kwargs.get("path") or "Unix" in name:
        return "unix"
    return "rediss" if "SSL" in name or kwargs.get("ssl") else "redis"


def _is_async(connection_class: Any) -> bool:
    return getattr(connection_class, "__module__", "").startswith("redis.asyncio")


# ------------------------------------------------------------------ reading URLs


def _read_url(url: str) -> dict[str, Any]:
    """redis-py's reading of ``url`` (``redis.connection.parse_url``), with a
    raw password holding ``/ ? # @`` understood, and errors that never quote
    any part of the URL but its redacted form."""
    from redis.connection import parse_url as redis_parse_url

    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        shown = scheme or "none"
        raise ValueError(
            f"unsupported Redis URL scheme {shown!r} in {redact(url)!r} (expected redis://, rediss:// or unix://)"
        )
    userinfo, rest = _split_userinfo(url[len(scheme) + 3 :], scheme)
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        auth = quote(unquote(user), safe="") + (":" + quote(unquote(password), safe="") if colon else "")
        url = f"{scheme}://{auth}@{rest}"
    try:
        kwargs: dict[str, Any] = redis_parse_url(url)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    except (ValueError, TypeError) as exc:
        message = str(exc)
        reason = message if message.startswith("Invalid value for '") else "malformed"
        raise ValueError(f"invalid Redis URL {redact(url)!r}: {reason}") from None
    kwargs.pop("connection_class", None)
    if scheme == "unix" and not kwargs.get("path"):
        raise ValueError(f"invalid Redis URL {redact(url)!r}: no socket path")
    if scheme != "unix":
        kwargs.setdefault("host", "localhost")
        kwargs.setdefault("port", 6379)
    kwargs["_kind"], kwargs["_url"] = scheme, url
    return kwargs


def _split_userinfo(rest: str, scheme: str) -> tuple[str | None, str]:
    """``(userinfo, the rest)`` of what follows ``scheme://``; ``userinfo`` is
    ``None`` when the standard reading (the authority ends at the first
    ``/ ? #``, the userinfo at its last ``@``) is the one to keep.

    A password written raw with ``/ ? #`` pushes its ``@`` past where the
    authority seems to end; then the userinfo runs to the last ``@``, provided
    what follows it is a proper ``host[:port]`` (``/path`` for a socket) and
    the standard reading makes no sense (a host that is not one, or the ``@``
    in a path, fragment or query name rather than a query value)."""
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, after_authority = rest[:end], rest[end:]
    if "@" not in after_authority:
        return None, rest
    userinfo, _, remainder = rest.rpartition("@")
    if scheme == "unix":
        if not remainder.startswith("/") or authority.endswith("@"):
            return None, rest
    else:
        host_end = min((i for i in (remainder.find(c) for c in "/?#") if i >= 0), default=len(remainder))
        if not _HOST_PORT.fullmatch(remainder[:host_end]):
            return None, rest
        standard_host = authority.rpartition("@")[2]
        if (
            _HOST_PORT.fullmatch(standard_host)
            and standard_host.partition(":")[0]
            and _in_query_value(after_authority, after_authority.rfind("@"))
        ):
            return None, rest
    return userinfo, remainder


def _in_query_value(tail: str, at: int) -> bool:
    """Whether position ``at`` of ``tail`` (path, query, fragment) lies in a query value."""
    query_start, fragment_start = tail.find("?"), tail.find("#")
    if query_start < 0 or at < query_start or (0 <= fragment_start < at):
        return False
    segment_start = max(tail.rfind("&", 0, at), query_start)
    return "=" in tail[segment_start:at]


# ------------------------------------------------------------------ canonical form


def _from_kwargs(kwargs: dict[str, Any], connection_kind: str | None, asynchronous: bool, *, from_url: bool) -> Target:
    kind = kwargs.pop("_kind", None) or connection_kind or "redis"
    url_text = kwargs.pop("_url", "")
    accepted = _connection_parameters(kind, asynchronous=False)
    own_defaults = _connection_parameters(kind, asynchronous=asynchronous)
    settings: dict[str, Any] = {}
    refused: list[str] = []
    for name, value in kwargs.items():
        if name in CANONICAL or name in ENGINE_OWNED:
            continue
        if name == "ssl":
            continue  # the scheme says it
        default = own_defaults.get(name, _NO_DEFAULT)
        if name not in accepted:
            if from_url:
                raise ValueError(_unknown_parameter(name, url_text))
            if _same(value, default):
                continue
            raise ValueError(
                f"the asyncio client's setting {name!r} has no counterpart in a synchronous redis-py "
                f"client, which the engines' threads need"
            )
        if name == "credential_provider" and value is not None and asynchronous:
            _check_sync_credentials(value)
        settings[name] = value
        if name not in IDENTITY and not _same(value, default):
            refused.append(name)
    return Target(_canonical(kind, kwargs), settings, tuple(refused))


_NO_DEFAULT = object()


def _unknown_parameter(name: str, url: str) -> str:
    # Named only when the URL holds no password at all: in a malformed URL
    # the name may be a piece of a raw one.
    if "@" not in url and not _SECRET_PARAM.search(url):
        return f"unknown Redis URL parameter {name!r} in {redact(url)!r}"
    return f"an unknown Redis URL parameter in {redact(url)!r}"


def _same(value: Any, default: Any) -> bool:
    try:
        return value is default or bool(value == default)
    except Exception:
        return False


def _check_sync_credentials(provider: Any) -> None:
    from redis.credentials import CredentialProvider

    method = getattr(type(provider), "get_credentials", None)
    if method is None or method is CredentialProvider.get_credentials:
        raise ValueError(
            "the asyncio client's credential_provider only implements get_credentials_async; the "
            "engines' threads need get_credentials (a synchronous one)"
        )


_parameter_cache: dict[tuple[str, bool], dict[str, Any]] = {}


def _connection_parameters(kind: str, *, asynchronous: bool) -> dict[str, Any]:
    """The keyword parameters (and defaults) of redis-py's connection class for ``kind``."""
    key = (kind, asynchronous)
    if key not in _parameter_cache:
        if asynchronous:
            from redis.asyncio import connection as module
        else:
            from redis import connection as module  # type: ignore[no-redef]
        cls = {"unix": module.UnixDomainSocketConnection, "rediss": module.SSLConnection}.get(kind, module.Connection)
        params: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                    params[p.name] = p.default
        _parameter_cache[key] = params
    return _parameter_cache[key]


def _canonical(kind: str, kwargs: Mapping[str, Any]) -> str:
    user, password = kwargs.get("username") or "", kwargs.get("password") or ""
    auth = ""
    if user or password:
        auth = quote(str(user), safe="") + (":" + quote(str(password), safe="") if password else "") + "@"
    db = int(kwargs.get("db") or 0)
    query: list[tuple[str, str]] = []
    if kind == "unix":
        query.append(("db", str(db)))
    else:
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if kind == "rediss" and kwargs.get(name):
                query.append((name, str(kwargs[name])))
        if kind == "rediss" and _cert_reqs_none(kwargs.get("ssl_cert_reqs", "required")):
            query.append(("ssl_cert_reqs", "none"))
        elif kind == "rediss" and kwargs.get("ssl_check_hostname", True) is False:
            query.append(("ssl_check_hostname", "false"))
    if kwargs.get("client_name"):
        query.append(("client_name", str(kwargs["client_name"])))
    text = "&".join(f"{name}={quote(value, safe='/:')}" for name, value in query)
    if kind == "unix":
        path = str(kwargs["path"])
        if not path.startswith("/"):
            raise ValueError("a unix socket path must be absolute here (a URL names it from /)")
        return f"unix://{auth}{quote(path, safe='/')}?{text}"
    host = str(kwargs.get("host") or "localhost")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    url = f"{kind}://{auth}{host}:{int(kwargs.get('port') or 6379)}/{db}"
    return f"{url}?{text}" if text else url


def _cert_reqs_none(value: Any) -> bool:
    # CERT_OPTIONAL means CERT_REQUIRED on a client socket (the ssl module's docs).
    if value is None:
        return True  # what redis-py makes of None
    if isinstance(value, str):
        return value.lower() == "none"
    return bool(value == ssl.CERT_NONE)


# ------------------------------------------------------------------ redaction


def redact(url: object) -> str:
    """``url`` with any password replaced by ``***``: in the netloc or the
    query, percent-encoded or raw (holding ``/ ? # @ &``).  Never raises; when
    in doubt it hides more, never less."""
    try:
        return _redact(str(url))
    except Exception:
        return "<Redis URL>"


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        # Not a URL: whatever precedes an "@" may be a secret.
        return "***@" + url.rpartition("@")[2] if "@" in url else _redact_query(url)
    userinfo, rest = _split_userinfo(rest, scheme.lower())
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if userinfo is None and "@" in rest[:end]:
        userinfo, _, host = rest[:end].rpartition("@")
        rest = host + rest[end:]
    shown = ""
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        shown = f"{user}:***@" if user and colon else "***@"
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    host, tail = rest[:end], rest[end:]
    # An "@" left past a host that is not one, or outside a query value: maybe
    # a raw userinfo we could not place, so everything before it goes.
    if "@" in tail and (
        not _HOST_PORT.fullmatch(host) or any(not _in_query_value(tail, i) for i in _positions(tail, "@"))
    ):
        shown, rest = "***@", rest.rpartition("@")[2]
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        host, tail = rest[:end], rest[end:]
    if not _HOST_PORT.fullmatch(host):
        # Not a host[:port]: what follows its first ":" may be a password's.
        name, colon, _ = host.partition(":")
        host = (name if _HOST_PORT.fullmatch(name) else "***") + (":***" if colon else "")
    return f"{scheme}://{shown}{host}{_redact_query(tail)}"


def _positions(text: str, char: str) -> list[int]:
    return [i for i, c in enumerate(text) if c == char]


def _redact_query(rest: str) -> str:
    """Hides secret query values, and every parameter a connection does not
    know (a raw ``&`` or ``?`` in a password makes pieces of it look like
    parameters); after a secret, the fragment goes too (a raw ``#`` in it),
    and any fragment but ``#insecure`` always."""
    body, hash_, fragment = rest.partition("#")
    base, question, query = body.partition("?")
    if not question:
        return base + ("#insecure" if fragment == "insecure" else "#***" if hash_ else "")
    known = set(_connection_parameters("rediss", asynchronous=False)) | {"db"}
    shown, hiding = [], False
    for segment in query.split("&"):
        name, equals, _ = segment.partition("=")
        if _SECRET_PARAM.search(name):
            shown.append(f"{name}=***")
            hiding = True
        elif equals and unquote(name) in known:
            shown.append(segment)
        elif not shown or shown[-1] != "***":
            shown.append("***")  # an unknown name may be a piece of a raw password
    if hiding and hash_:
        fragment, hash_ = "", ""
    tail = "#insecure" if fragment == "insecure" else ("#***" if hash_ else "")
    return f"{base}?{'&'.join(shown)}{tail}"
