"""Where Redis is: every URL form redis-py accepts means the same server,
credentials and TLS on both backends; no password reaches a repr or an error,
whatever its form or characters; a redis-py client's settings (sync or
asyncio) are taken over; every long-lived link has TCP keepalive with short
timers.  Real servers, both backends."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any
from urllib.parse import quote

import pytest
import redis as redis_py
import redis.asyncio as redis_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.credentials import CredentialProvider

from fixtures_io import load_backend
from sse_redis import StreamReader, StreamWriter
from sse_redis.connection import redact, resolve_target, resolve_url

SECRET = "p/#?w@x&y=z:S3CR3T"  # every character that breaks a naive URL reader
SECRET_PIECES = ["S3CR3T", "p/#", "?w@", "&y=z"]
QUOTED = quote(SECRET, safe="")


def url_forms(port: int, secret: str = SECRET) -> dict[str, str]:
    """The ways a user may write one password into a URL."""
    quoted = quote(secret, safe="")
    return {
        "netloc-quoted": f"redis://:{quoted}@127.0.0.1:{port}/0",
        "netloc-user-quoted": f"redis://default:{quoted}@127.0.0.1:{port}/0",
        "netloc-raw": f"redis://:{secret}@127.0.0.1:{port}/0",
        "netloc-user-raw": f"redis://default:{secret}@127.0.0.1:{port}/0",
        "query": f"redis://127.0.0.1:{port}/0?password={quoted}",
        "query-user": f"redis://127.0.0.1:{port}?username=default&password={quoted}&db=0",
    }


def leaks(text: str, secret: str = SECRET) -> list[str]:
    pieces = [secret] + (SECRET_PIECES if secret == SECRET else [])
    return [piece for piece in pieces if piece in text]


def write_and_read(writer: StreamWriter, reader: StreamReader, n: int = 3) -> list[str]:
    run = f"conn-{uuid.uuid4().hex}"
    for i in range(n):
        writer.write(run, f'data: {{"run_id":null,"seq_id":null,"i":{i}}}\n\n')
    writer.complete(run)
    return list(reader.read(run, idle_timeout=10, missing_timeout=10))


# ------------------------------------------------------------------ redaction


@pytest.mark.parametrize("form", list(url_forms(6379)))
def test_every_form_names_the_same_password_and_redacts_it(form: str) -> None:
    url = url_forms(6379)[form]
    target = resolve_url(url)
    assert redis_py.connection.parse_url(target)["password"] == SECRET  # what redis-py reads
    assert target.startswith(f"redis://{'default:' if 'user' in form else ':'}{QUOTED}@127.0.0.1:6379/0")
    assert not leaks(redact(url))
    assert not leaks(redact(target))
    assert not leaks(repr(target))


@pytest.mark.parametrize(
    "url",
    [
        "redis://h/0?password=S3CR3T#tail",
        "redis://h/0?password=S3C&R3T",
        "redis://h/0?pass=S3CR3T",
        "redis://h/0?auth_token=S3CR3T",
        "unix:///tmp/s.sock?db=1&password=S3CR3T",
        "unix://:S3CR3T@/tmp/s.sock",
        "redis://:S3CR3T@h:notaport/0",
        "redis://:S3/CR3T@h:bad/0",
        "redis://u:S3CR3T@",
        "S3CR3T@host:6379",
        "rediss://:S3CR3T@h/0#S3CR3T",
        "redis://h/0?password=S3CR3T@other",
    ],
)
def test_redact_hides_odd_forms(url: str) -> None:
    assert "S3CR3T" not in redact(url)
    assert "R3T" not in redact(url)


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        b"redis://:x@h",
        "",
        "://",
        "@@@",
        "redis://",
        "redis://[::1",
        "\x00redis://:x@h",
        "redis://%zz@h",
        object(),
    ],
)
def test_redact_never_raises(value: Any) -> None:
    assert isinstance(redact(value), str)


# Secrets built of unique tokens joined by URL-breaking characters: no token may show.
TOKENS = st.lists(st.integers(0, 10**6).map(lambda n: f"Kq{n}Z"), min_size=1, max_size=4, unique=True)
SEPARATORS = st.text(alphabet="/#?@&=:+%; !", max_size=3)


@settings(max_examples=400, deadline=None)
@given(
    tokens=TOKENS,
    separators=st.lists(SEPARATORS, min_size=4, max_size=4),
    form=st.sampled_from(list(url_forms(1))),
    host=st.sampled_from(["127.0.0.1:6380", "h:notaport", "[::1"]),
)
def test_redact_never_shows_a_piece_of_a_password(
    tokens: list[str], separators: list[str], form: str, host: str
) -> None:
    # 4 separators, 1 to 4 tokens: the shorter decides.
    secret = "".join(sep + token for sep, token in zip(separators, tokens, strict=False))
    url = url_forms(6380, secret)[form].replace("127.0.0.1:6380", host)
    for text in (redact(url), _resolved_or_error(url)):
        assert not [t for t in tokens if t in text], (url, text)


def _resolved_or_error(url: str) -> str:
    try:
        return redact(resolve_url(url))
    except ValueError as exc:
        return str(exc)


@pytest.mark.parametrize("form", list(url_forms(6379)))
def test_faces_repr_hides_the_password(backend: str, form: str) -> None:
    url = url_forms(6379)[form]
    writer, reader = StreamWriter(url, backend=backend), StreamReader(url, backend=backend)
    try:
        assert not leaks(repr(writer))
        assert not leaks(repr(reader))
    finally:
        writer.close(timeout=1)
        reader.close()


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:notaport/0",
        f"redis://127.0.0.1:1/0?password={QUOTED}&db=notanumber",
        f"http://:{QUOTED}@127.0.0.1/0",
        f"redis://127.0.0.1/0?password={QUOTED}&bogus=1",
    ],
)
def test_errors_for_bad_urls_hide_the_password(backend: str, url: str) -> None:
    for face in (StreamWriter, StreamReader):
        with pytest.raises(ValueError) as info:  # noqa: PT011 (any message: it must not leak)
            face(url, backend=backend)
        assert not leaks(str(info.value)), str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:notaport/0",
        f"redis://:{QUOTED}@[::1/0",
        f"redis://:{QUOTED}@h/0?db=x",
        f"rediss://:{QUOTED}@h/0?ssl_certfile=/x",
        "redis://:%ff%fe@h/0",
        f"bogus://:{QUOTED}@h/0",
    ],
)
def test_engine_errors_for_bad_urls_hide_the_password(backend: str, url: str) -> None:
    """The engines are public names too (``_core.WriterEngine``): their own URL
    errors quote nothing of the URL."""
    module = load_backend(backend)
    for engine in (module.WriterEngine, module.ReaderHub):
        try:
            engine(url).close()
        except Exception as exc:  # any error, or none: what matters is its text
            text = str(exc)
        else:
            continue
        assert not leaks(text), text
        assert QUOTED not in text, text


# ------------------------------------------------------------------ URL forms on a server


def test_every_password_form_authenticates(backend: str, dedicated_server, make_writer, open_reader) -> None:
    """``?password=`` (ignored by the Rust engine before), raw and encoded
    netloc passwords with ``/ # ? @ & = :``: a write, then a read."""
    server = dedicated_server("--requirepass", SECRET)
    for form, url in url_forms(server.port).items():
        chunks = write_and_read(make_writer(url, retry_timeout=2), open_reader(url))
        assert len(chunks) == 4, form
        assert chunks[-1].startswith("data: [DONE]"), form


def test_unix_socket_with_a_query_password(backend: str, dedicated_server, make_writer, open_reader, tmp_path) -> None:
    path = str(tmp_path / "valkey.sock")
    dedicated_server("--requirepass", SECRET, "--unixsocket", path, "--unixsocketperm", "700")
    for url in (f"unix://{path}?db=2&password={QUOTED}", f"unix://:{QUOTED}@{path}?db=2"):
        chunks = write_and_read(make_writer(url, retry_timeout=2), open_reader(url))
        assert len(chunks) == 4, url
    assert resolve_url(f"unix://{path}?db=2&password={QUOTED}") == f"unix://:{QUOTED}@{path}?db=2"


def test_client_name_is_honoured(backend: str, dedicated_server, make_writer) -> None:
    server = dedicated_server()
    writer = make_writer(f"redis://127.0.0.1:{server.port}/0?client_name=sse-writer")
    writer.write(f"conn-{uuid.uuid4().hex}", "data: x\n\n")
    writer.flush()
    admin = redis_py.Redis(port=server.port)
    try:
        names = [c["name"] for c in admin.client_list()]
    finally:
        admin.close()
    assert "sse-writer" in names


# ------------------------------------------------------------------ redis-py clients


class CountingProvider(CredentialProvider):
    """A token-style provider (cloud IAM, Entra ID): asked at every connect."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.calls = 0

    def get_credentials(self) -> tuple[str, str]:
        self.calls += 1
        return "default", self.password


class AsyncOnlyProvider(CredentialProvider):
    async def get_credentials_async(self) -> tuple[str, str]:
        return "default", "x"


def test_credential_provider_is_used_on_pure_and_refused_on_rust(backend: str, dedicated_server) -> None:
    server = dedicated_server("--requirepass", SECRET)
    provider = CountingProvider(SECRET)
    client = redis_py.Redis(port=server.port, credential_provider=provider)
    if backend == "rust":
        for face in (StreamWriter, StreamReader):
            with pytest.raises(ValueError, match="credential_provider"):
                face(client, backend=backend)
        return
    with StreamWriter(client, backend=backend) as writer, StreamReader(client, backend=backend) as reader:
        assert len(write_and_read(writer, reader)) == 4
    assert provider.calls >= 2  # the engines' own connections asked it


def test_asyncio_client_settings_are_carried(backend: str, dedicated_server) -> None:
    """An asyncio client (what the Letta names take): the threaded engines
    build synchronous connections with every one of its settings."""
    server = dedicated_server("--requirepass", SECRET)
    client = redis_asyncio.Redis(port=server.port, username="default", password=SECRET, client_name="from-async")
    with StreamWriter(client, backend=backend) as writer, StreamReader(client, backend=backend) as reader:
        assert len(write_and_read(writer, reader)) == 4
        assert not leaks(repr(writer))
        assert not leaks(repr(reader))


def test_asyncio_client_with_a_credential_provider(backend: str, dedicated_server) -> None:
    server = dedicated_server("--requirepass", SECRET)
    provider = CountingProvider(SECRET)
    client = redis_asyncio.Redis(port=server.port, credential_provider=provider)
    if backend == "rust":
        with pytest.raises(ValueError, match="credential_provider"):
            StreamWriter(client, backend=backend)
        return
    with StreamWriter(client, backend=backend) as writer, StreamReader(client, backend=backend) as reader:
        assert len(write_and_read(writer, reader)) == 4
    assert provider.calls >= 2
    with pytest.raises(ValueError, match="get_credentials"):
        StreamWriter(redis_asyncio.Redis(port=server.port, credential_provider=AsyncOnlyProvider()), backend=backend)


def test_settings_the_rust_engine_cannot_honour_are_named() -> None:
    client = redis_py.Redis(host="localhost", ssl=True, ssl_ca_data="-----BEGIN CERTIFICATE-----", ssl_ciphers="HIGH")
    with pytest.raises(ValueError, match="'ssl_ca_data'"):
        resolve_target(client, None, "rust")
    target, _ = resolve_target(client, None, "python")
    assert target.settings["ssl_ca_data"].startswith("-----BEGIN")
    assert target.settings["ssl_ciphers"] == "HIGH"


def test_engine_owned_settings_stay_the_engines() -> None:
    """Timeouts, retries, protocol and decoding are the engine's: a client's
    are not taken over (RESP3 or decoded replies would break it)."""
    client = redis_py.Redis(port=1, socket_timeout=0.01, decode_responses=True, protocol=3, health_check_interval=1)
    target = resolve_url(client)
    assert target == "redis://localhost:1/0"
    assert not {"socket_timeout", "decode_responses", "protocol", "health_check_interval", "retry"} & set(
        target.settings
    )


# ------------------------------------------------------------------ keepalive


def _tcp_sockets_to(port: int, besides: set[int] = frozenset()) -> list[socket.socket]:  # type: ignore[assignment]
    """This process's TCP sockets connected to ``127.0.0.1:port`` but for the
    fds ``besides`` (dups of the live fds, Rust's included: they are all this
    process's)."""
    found = []
    for fd in set(map(int, os.listdir("/proc/self/fd"))) - besides:
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == port:
                found.append(sock)
                continue
        except OSError:
            pass
        sock.close()
    return found


def assert_keepalive(sockets: list[socket.socket]) -> None:
    """The engines' links (a writer's query and sender, a hub's query and
    blocker: three at least) carry keepalive with the library's timers."""
    assert len(sockets) >= 3, len(sockets)
    for sock in sockets:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 5
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 2
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


def close_and_finish(sockets: list[socket.socket], writer: Any, run: str, follow: Any) -> None:
    for sock in sockets:
        sock.close()
    writer.complete(run)
    list(follow)


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="Linux keepalive timers")
def test_every_link_has_keepalive_with_short_timers(backend: str, dedicated_server, make_writer, open_reader) -> None:
    server = dedicated_server()
    url = f"redis://127.0.0.1:{server.port}/0"
    writer, reader = make_writer(url), open_reader(url)
    chunks = write_and_read(writer, reader)
    assert len(chunks) == 4
    run = f"conn-{uuid.uuid4().hex}"  # a live read keeps the hub's blocking link open
    follow = reader.read(run, missing_timeout=10)
    writer.write(run, "data: a\n\n")
    assert next(follow).startswith("data: a")
    sockets = _tcp_sockets_to(server.port)
    try:
        # The writer's links (query and sender), the hub's (query and blocker).
        assert_keepalive(sockets)
    finally:
        close_and_finish(sockets, writer, run, follow)


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="Linux keepalive timers")
def test_cluster_links_have_keepalive(backend: str, valkey_cluster, make_writer, open_reader) -> None:
    """The cluster client's node connections too (Rust: ClusterClientBuilder::tcp_settings)."""
    url, ports = valkey_cluster.seed_url, [node.port for node in valkey_cluster.nodes]
    before = set(map(int, os.listdir("/proc/self/fd")))  # the fixture's own clients
    writer, reader = make_writer(url, cluster=True), open_reader(url, cluster=True)
    run = f"conn-{uuid.uuid4().hex}"
    follow = reader.read(run, missing_timeout=10)
    writer.write(run, "data: a\n\n")
    assert next(follow).startswith("data: a")
    sockets = [sock for port in ports for sock in _tcp_sockets_to(port, before)]
    try:
        assert_keepalive(sockets)
    finally:
        close_and_finish(sockets, writer, run, follow)
