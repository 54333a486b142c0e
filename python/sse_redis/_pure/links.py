"""Connections of the pure engines (twin of ``src/io/links.rs``): one server,
or a Redis Cluster through redis-py's ``RedisCluster``, which follows MOVED
and ASK by itself and learns every node (so a reconnect after a failover does
not depend on the first URL's node being alive)."""

from __future__ import annotations

import itertools
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

if TYPE_CHECKING:
    from redis.client import Pipeline
    from redis.cluster import ClusterNode
    from redis.typing import KeyT, StreamIdT

Client = redis.Redis | RedisCluster

# A stream entry as these clients get it (RESP2, no decode_responses: the
# connection module keeps both settings out of a Target): ``(entry_id, fields)``.
RawEntry = tuple[bytes, dict[bytes, bytes]]
# An XREAD reply in the same setting: ``[key, entries]`` per stream with news
# (two-item lists, typed as the pairs they are unpacked into).
RawXRead = list[tuple[bytes, list[RawEntry]]]

# A broken link, or a server that only means "not now": worth retrying.
LINK_ERRORS = (
    redis.ConnectionError,  # BusyLoadingError (-LOADING) included
    redis.TimeoutError,
    redis.exceptions.ClusterError,  # ClusterDownError, MasterDownError included
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,  # a demoted master, until the slot map catches up
    redis.exceptions.RedisClusterException,  # no node reachable, slot not covered
    OSError,
)


def cause(exc: BaseException, timeout: float) -> str:
    """A link error in the words both engines log it with (the twin of
    ``links::cause``): the same fault reads the same on either backend.
    ``timeout``: the read timeout of the link that failed."""
    exceptions = redis.exceptions
    for kind, words in (
        (exceptions.BusyLoadingError, "loading"),
        (exceptions.OutOfMemoryError, "out of memory"),
        (exceptions.TryAgainError, "try again"),
        (exceptions.MasterDownError, "master down"),
        (exceptions.ClusterDownError, "cluster down"),
        (exceptions.ReadOnlyError, "read only replica"),
    ):
        if isinstance(exc, kind):
            return words
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, (ConnectionRefusedError, FileNotFoundError)) or "Connection refused" in str(chain):
            return "connection refused"
        chain = chain.__cause__ or chain.__context__
    if isinstance(exc, (redis.TimeoutError, TimeoutError)):
        return f"timed out (no reply within {float(timeout)}s)"
    if isinstance(exc, (redis.ConnectionError, OSError)):
        return "connection lost"
    return "connection error"


# The most events an engine keeps between two drains (``take_events``).
MAX_EVENTS = 100


class Events:
    """Retries and reconnects with their cause, kept under the engine's lock
    until the face drains and logs them (twin of ``links::Events``). Bounded:
    past ``MAX_EVENTS`` the oldest go, and the next drain says how many (kind
    ``dropped``). The caller holds the engine's lock."""

    __slots__ = ("dropped", "kept")

    def __init__(self) -> None:
        self.kept: deque[tuple[str, str]] = deque()
        self.dropped = 0

    def push(self, kind: str, cause: str) -> None:
        if len(self.kept) >= MAX_EVENTS:
            self.kept.popleft()
            self.dropped += 1
        self.kept.append((kind, cause))

    def take(self) -> list[tuple[str, str]]:
        out = []
        if self.dropped:
            out.append(("dropped", f"{self.dropped} older events not kept"))
            self.dropped = 0
        out += self.kept
        self.kept.clear()
        return out


def connect(url: str, connect_timeout: float, socket_timeout: float | None, *, cluster: bool = False) -> Client:
    """A client of our own for ``url`` (a ``Target``: its client settings too);
    retries are ours, not redis-py's."""
    if cluster:
        return RedisCluster.from_url(
            url,
            **_settings(url),
            **_keepalive(url),
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            decode_responses=False,
        )
    return _server(url, connect_timeout, socket_timeout, _settings(url))


def _server(
    url: str, connect_timeout: float, socket_timeout: float | None, settings: dict[str, Any], **options: object
) -> redis.Redis:
    """A client of one server: the client settings ``url`` came with, and our
    own timeouts, keepalive and retries (none: the engines retry)."""
    return redis.Redis.from_url(
        url,
        **settings,
        **_keepalive(url),
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        **options,
    )


def _settings(url: str) -> dict[str, Any]:
    """The redis-py settings a ``Target`` carries beside its URL (a credential
    provider, ``ssl_ca_data``...); none for a plain URL string."""
    return dict(getattr(url, "settings", None) or {})


# TCP keepalive with short timers (the twin of links::keepalive): a peer gone
# without FIN or RST is noticed in about IDLE + INTERVAL * PROBES seconds.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 5, 2, 3


def _keepalive_options() -> dict[int, int]:
    idle = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)  # macOS
    wanted = (
        (idle, KEEPALIVE_IDLE),
        (getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL),
        (getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES),
    )
    return {option: value for option, value in wanted if option is not None}


KEEPALIVE_OPTIONS = _keepalive_options()


def _keepalive(url: str) -> dict[str, Any]:
    """redis-py's keepalive settings; none for a unix socket (no TCP)."""
    if url.startswith("unix:"):
        return {}
    return {"socket_keepalive": True, "socket_keepalive_options": dict(KEEPALIVE_OPTIONS)}


_serials = itertools.count(1)


def number_connections(client: redis.Redis) -> None:
    """Give every connection of ``client``'s pool a ``serial``, new at each
    (re)connect: redis-py reconnects a pooled connection silently, and the
    writer must know whether its last batch landed on this very connection."""
    pool = client.connection_pool
    base = pool.connection_class

    class Numbered(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.serial = 0
            self.register_connect_callback(self._connected)

        def _connected(self, _connection: object) -> None:
            self.serial = next(_serials)

    pool.connection_class = Numbered


def connect_node(
    url: str, node: str | None, connect_timeout: float, socket_timeout: float | None = None, *, single: bool = True
) -> redis.Redis:
    """One connection for blocking reads (no read timeout unless
    ``socket_timeout``): to ``url``'s server, or to the cluster node ``node``
    (``host:port``) with ``url``'s credentials and client settings.  With
    ``single=False`` it connects only when used (a ``pubsub()`` of it takes
    the one connection)."""
    settings = _settings(url)
    if node is not None:
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        url = urlunsplit(parts._replace(netloc=f"{auth}@{node}" if auth else node))
    return _server(url, connect_timeout, socket_timeout, settings, single_connection_client=single)


class _ClusterCalls(Protocol):
    """The ``RedisCluster`` methods used here, with the types of what they
    return: redis-py leaves them unannotated (untyped calls to mypy)."""

    def get_nodes(self) -> list[ClusterNode]: ...
    def get_node(self, host: str | None = None, port: int | None = None) -> ClusterNode | None: ...
    # Never None for a primary (replica=False): an uncovered slot raises SlotNotCoveredError.
    def get_node_from_key(self, key: str) -> ClusterNode: ...
    def disconnect_connection_pools(self) -> None: ...


def cluster_calls(client: RedisCluster) -> _ClusterCalls:
    """``client`` as its typed calls (the very object: no wrapper at run time)."""
    return cast("_ClusterCalls", client)


class _Commands(Protocol):
    """What has redis-py's ``execute_command`` (a client, a cluster client, a
    pipeline, which queues the command and returns itself): unannotated there."""

    def execute_command(self, *args: object, **options: object) -> object: ...


def execute(target: redis.Redis | RedisCluster | Pipeline, *args: object, **options: object) -> object:
    """``target.execute_command(*args, **options)``, typed."""
    return cast("_Commands", target).execute_command(*args, **options)


def known_nodes(client: Client) -> list[str]:
    """``host:port`` of every node a cluster client knows (the seed alone else)."""
    if isinstance(client, RedisCluster):
        return [f"{n.host}:{n.port}" for n in cluster_calls(client).get_nodes()]
    return []


def owner(client: Client, key: str) -> str:
    """The ``host:port`` of the cluster node owning ``key``'s slot, as the
    client's slot map has it ('' on one server)."""
    if isinstance(client, RedisCluster):
        return cluster_calls(client).get_node_from_key(key).name
    return ""


def refresh_slots(client: Client) -> None:
    """Read the cluster's slot map again (after a MOVED seen outside the
    client, or a node lost)."""
    if isinstance(client, RedisCluster):
        client.nodes_manager.initialize()


def on_node(client: Client, node: str | None, *args: object) -> object:
    """A command on the cluster node ``node``; any command on one server."""
    if isinstance(client, RedisCluster) and node is not None:
        host, _, port = node.rpartition(":")
        target = cluster_calls(client).get_node(host=host, port=int(port))
        if target is None:
            raise redis.ConnectionError(f"no cluster node {node}")
        return execute(client, *args, target_nodes=target)
    return execute(client, *args)


# One pipelined call: ``(routing key, command)``.
Call = tuple[str, tuple[object, ...]]


def pipeline(client: Client, calls: list[Call], connection: Any = None) -> tuple[list[object], list[redis.Redis]]:
    """Sends ``calls`` (``(routing key, command)``) in one pipeline per server
    (on one server, on ``connection`` when given, a connection checked out of
    ``client``'s pool); the replies (an error in place of its reply) and the
    servers written to.

    On a cluster (redis-py refuses scripts in its cluster pipeline) each node
    gets a plain pipeline of its calls; a call the node redirects (the slot
    moved, or is moving: MOVED, ASK, TRYAGAIN) is sent once more through the
    cluster client, which follows the redirection.
    """
    if not isinstance(client, RedisCluster):
        pipe = client.pipeline(transaction=False)
        pipe.connection = connection  # released to the pool by execute()
        for _, command in calls:
            execute(pipe, *command)
        return _replies(pipe, len(calls)), [client]
    cluster = cluster_calls(client)
    by_node: dict[str, tuple[redis.Redis, list[int]]] = {}
    for index, (key, _) in enumerate(calls):
        node = cluster.get_node_from_key(key)
        by_node.setdefault(node.name, (node.redis_connection, []))[1].append(index)
    replies: list[object] = [None] * len(calls)
    for server, indexes in by_node.values():
        pipe = server.pipeline(transaction=False)
        for index in indexes:
            execute(pipe, *calls[index][1])
        for index, reply in zip(indexes, _replies(pipe, len(indexes)), strict=True):
            replies[index] = reply
    servers = [server for server, _ in by_node.values()]
    for index, reply in enumerate(replies):
        if isinstance(reply, (redis.exceptions.AskError, redis.exceptions.TryAgainError)):
            key, command = calls[index]
            try:
                replies[index] = execute(client, *command)
            except redis.ResponseError as exc:
                replies[index] = exc
            servers.append(cluster.get_node_from_key(key).redis_connection)
    return replies, servers


def xrevrange_top(client: Client, key: str) -> list[RawEntry]:
    """The stream's last entry (none when it is empty or missing)."""
    # redis-py types the reply for every protocol and decoding (str ids, None
    # fields of a trimmed PEL entry); here it is RESP2 bytes (see RawEntry).
    return cast("list[RawEntry]", client.xrevrange(key, "+", "-", count=1))


def xrange(client: Client, key: str, start: str, count: int) -> list[RawEntry]:
    """Up to ``count`` entries of the stream from ``start`` on."""
    return cast("list[RawEntry]", client.xrange(key, min=start, count=count))  # as in xrevrange_top


def xread(client: redis.Redis, streams: dict[KeyT, StreamIdT], count: int, block: int) -> RawXRead:
    """``XREAD COUNT count BLOCK block`` of ``streams``: empty when the block ran out."""
    # redis-py's type covers RESP3's dict replies too; RESP2 gives [key, entries] pairs.
    return cast("RawXRead", client.xread(streams, count=count, block=block))


def _replies(pipe: Pipeline, count: int) -> list[object]:
    """The replies of ``pipe``'s ``count`` commands, an error in place of its reply."""
    replies: list[object] = pipe.execute(raise_on_error=False)
    if len(replies) != count:
        # redis-py answers each command; were it not to, a call would be left
        # with no reply (None: "no entries", or a crash further on) instead of
        # its error, so the whole pipeline fails as a refused one.
        raise redis.RedisError(f"a pipeline of {count} commands got {len(replies)} replies")
    return replies


def wait_replicas(servers: list[redis.Redis], replicas: int, timeout_ms: int) -> int:
    """``WAIT`` on each server written to (the connection that wrote: one
    thread, one pooled connection); the fewest replicas any acknowledged."""
    unique = {id(server): server for server in servers}.values()
    # WAIT answers an integer; int() of anything else raises, as it did before.
    return min(int(cast(int, execute(server, "WAIT", replicas, timeout_ms))) for server in unique)


def slot_group(key: str) -> str:
    """The hash tag of ``key`` (what a cluster hashes to pick its slot), else
    the key: keys with the same group share a slot."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def redirect(exc: BaseException) -> tuple[bool, str] | None:
    """``(moved, host:port)`` of a MOVED/ASK reply, else ``None``."""
    if isinstance(exc, redis.exceptions.AskError):  # MovedError included
        return isinstance(exc, redis.exceptions.MovedError), f"{exc.host}:{exc.port}"
    return None
