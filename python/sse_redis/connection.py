"""Where Redis is: a URL, or a redis-py client whose settings are reused.

Both engines take a URL (``redis://``, ``rediss://``, ``unix://``) and a
``cluster`` flag; a client is turned into them here (a ``RedisCluster`` into
the URL of one of its nodes, which the engines use as their seed).  URLs carry
credentials, so anything printed goes through ``redact`` first.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

SCHEMES = ("redis", "rediss", "unix")


def resolve_url(target: Any) -> str:
    """A URL for ``target``: a URL string, or a ``redis.Redis`` /
    ``redis.asyncio.Redis`` client (host, port, db, credentials, TLS)."""
    if isinstance(target, str):
        scheme = urlsplit(target).scheme
        if scheme not in SCHEMES:
            raise ValueError(f"unsupported Redis URL scheme {scheme!r} in {redact(target)!r}")
        return target
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
    return _url_from_kwargs(kwargs, getattr(pool, "connection_class", None))


def resolve_target(target: Any, cluster: bool | None) -> tuple[str, bool]:
    """``(url, cluster)`` for ``target``: a ``RedisCluster`` client (sync or
    asyncio) means a cluster; a URL or plain client means ``cluster`` (default
    one server)."""
    if _is_cluster_client(target):
        if cluster is False:
            raise ValueError("a RedisCluster client was given with cluster=False")
        return _cluster_url(target), True
    if cluster is not None and not isinstance(cluster, bool):
        raise TypeError(f"cluster must be a bool or None, not {type(cluster).__name__}")
    url = resolve_url(target)
    if cluster and url.startswith("unix:"):
        raise ValueError("a Redis Cluster is reached over TCP: unix:// URLs cannot name its nodes")
    return url, bool(cluster)


def _is_cluster_client(target: Any) -> bool:
    return hasattr(target, "get_default_node") and hasattr(target, "get_nodes")


def _cluster_url(client: Any) -> str:
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
    return _url_from_kwargs(kwargs, connection_class)


def _url_from_kwargs(kwargs: dict[str, Any], connection_class: type | None) -> str:
    user = kwargs.get("username") or ""
    password = kwargs.get("password") or ""
    auth = ""
    if user or password:
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@"
    db = kwargs.get("db", 0) or 0
    if kwargs.get("path"):
        query = f"db={db}"
        return f"unix://{auth}{kwargs['path']}?{query}"
    tls = connection_class is not None and "SSL" in connection_class.__name__
    scheme = "rediss" if tls else "redis"
    host = kwargs.get("host", "localhost")
    port = kwargs.get("port", 6379)
    url = f"{scheme}://{auth}{host}:{port}/{db}"
    if tls and kwargs.get("ssl_cert_reqs") in ("none", None, 0):
        url += "?ssl_cert_reqs=none"
    return url


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if user else f"***@{host}"))
