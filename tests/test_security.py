"""Security: TLS (``rediss://``, a throwaway CA made here, Debian's TLS-built
``redis-server``), a least-privilege ACL user limited to the stream keys and
the commands the library needs, and credentials kept out of reprs and errors.
Both backends."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import redis as redis_py

from sse_redis import (
    KeyLayout,
    RedisUnavailable,
    SSERedisError,
    StreamReader,
    StreamWriter,
)
from sse_redis.tools.servers import RedisProcess, redis_binary

PASSWORD = "s3cret-Pa55"


def read_all(reader: StreamReader, run: str) -> list[str]:
    return list(reader.read(run, idle_timeout=10, missing_timeout=10))


def write_run(writer: StreamWriter, run: str, n: int = 5) -> None:
    for i in range(n):
        writer.write(run, f'data: {{"run_id":null,"seq_id":null,"i":{i}}}\n\n')
    writer.complete(run)


# ------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates")
    d = tmp_path_factory.mktemp("tls")
    ca_key, ca, key, csr, cert = (str(d / n) for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = d / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "2",
        "-subj",
        "/CN=sse-redis test CA",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    run(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return cert, key, ca


@pytest.fixture(scope="module")
def tls_server(certificates: tuple[str, str, str]):
    binary = redis_binary()
    if binary is None:
        pytest.fail("Debian's redis-server (built with TLS) is needed: apt-get install redis-server")
    with RedisProcess(binary, tls=certificates) as server:
        yield server


def test_tls_round_trip(backend: str, tls_server: RedisProcess) -> None:
    url = tls_server.url  # rediss://localhost:PORT/0?ssl_ca_certs=<ca>
    run = f"tls-{uuid.uuid4().hex}"
    with StreamWriter(url, backend=backend) as writer, StreamReader(url, backend=backend) as reader:
        write_run(writer, run)
        chunks = read_all(reader, run)
    assert len(chunks) == 6
    assert chunks[-1].startswith("data: [DONE]")
    assert f'"run_id":"{run}"' in chunks[0]


def test_tls_without_verification(backend: str, tls_server: RedisProcess) -> None:
    url = f"rediss://127.0.0.1:{tls_server.port}/0?ssl_cert_reqs=none"
    run = f"tls-{uuid.uuid4().hex}"
    with StreamWriter(url, backend=backend) as writer:
        write_run(writer, run, 2)
        assert writer.last_seq(run) == 3


def test_tls_refuses_an_unknown_ca(backend: str, tls_server: RedisProcess, tmp_path: Path) -> None:
    """The system's roots do not know the throwaway CA: the connection is refused, quickly and clearly."""
    url = f"rediss://localhost:{tls_server.port}/0"
    writer = StreamWriter(url, backend=backend, retry_timeout=0.5)
    try:
        with pytest.raises((RedisUnavailable, SSERedisError)):
            writer.write(f"tls-{uuid.uuid4().hex}", "data: x\n\n")
    finally:
        writer.close(timeout=1)


def test_tls_certificate_file_missing_is_a_clear_error(backend: str, tls_server: RedisProcess) -> None:
    url = f"rediss://localhost:{tls_server.port}/0?ssl_ca_certs=/nonexistent/ca.pem"
    # The error comes at construction or at the first write, depending on the engine.
    with pytest.raises((SSERedisError, OSError, redis_py.RedisError, ValueError)) as info:  # noqa: PT012
        writer = StreamWriter(url, backend=backend, retry_timeout=0.5)
        try:
            writer.write(f"tls-{uuid.uuid4().hex}", "data: x\n\n")
        finally:
            writer.close(timeout=1)
    assert "/nonexistent/ca.pem" in str(info.value) or "No such file" in str(info.value)


# ------------------------------------------------------------------------ ACL

# What the library needs and nothing more: its scripts (which run XREVRANGE,
# XADD and EXPIRE with the caller's rights), reads, DEL, and CLIENT ID for the
# hub. No @admin, so no CLIENT UNBLOCK: the hub falls back to short blocks.
LEAST_PRIVILEGE = [
    "resetkeys",
    "~sse:*",
    "resetchannels",
    "-@all",
    "+evalsha",
    "+script|load",
    "+xadd",
    "+xrange",
    "+xrevrange",
    "+xread",
    "+expire",
    "+del",
    "+exists",
    "+client|id",
    "+client|setinfo",
    "+ping",
    "+hello",
    "+select",
    "+auth",
]


@pytest.fixture
def acl_url(dedicated_server) -> str:
    server = dedicated_server()
    admin = redis_py.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "sse", "on", f">{PASSWORD}", *LEAST_PRIVILEGE)
    admin.close()
    return f"redis://sse:{PASSWORD}@127.0.0.1:{server.port}/0"


def test_least_privilege_user_writes_and_reads(backend: str, acl_url: str) -> None:
    run = f"acl-{uuid.uuid4().hex}"
    with StreamWriter(acl_url, backend=backend) as writer, StreamReader(acl_url, backend=backend) as reader:
        write_run(writer, run)
        assert [c.split("\n")[-3] for c in read_all(reader, run)] == [f"id: {i}" for i in range(1, 7)]
        writer.delete(run)
        assert writer.last_seq(run) == 0


def test_least_privilege_user_cannot_reach_other_keys(backend: str, acl_url: str) -> None:
    """A layout outside the user's key pattern fails with a clear error, not a hang."""
    writer = StreamWriter(acl_url, backend=backend, keys=KeyLayout("private:"), retry_timeout=0.5)
    try:
        with pytest.raises(SSERedisError) as info:
            writer.write(f"acl-{uuid.uuid4().hex}", "data: x\n\n")
        assert "NOPERM" in str(info.value) or "permission" in str(info.value).lower()
    finally:
        writer.close(timeout=1)


def test_run_ids_cannot_escape_the_key_prefix(backend: str, redis_url: str) -> None:
    with StreamWriter(redis_url, backend=backend) as writer:
        for bad in ["", "x" * 257, "a\nb", "a\x00b", "{slot}", "a\x7fb"]:
            with pytest.raises(ValueError, match="run_id"):
                writer.write(bad, "data: x\n\n")
        with pytest.raises(TypeError):
            writer.write(b"run", "data: x\n\n")  # type: ignore[arg-type]


# --------------------------------------------------------------- credentials


@pytest.mark.parametrize("form", ["netloc", "query", "raw"])
def test_no_password_in_reprs_or_errors(backend: str, dedicated_server, form: str) -> None:
    server = dedicated_server("--requirepass", PASSWORD)

    def url(password: str) -> str:
        if form == "query":
            return f"redis://127.0.0.1:{server.port}/0?username=default&password={password}"
        if form == "raw":  # a password holding "/", "#", "?" as the user typed it
            return f"redis://default:{password}/#?@127.0.0.1:{server.port}/0"
        return f"redis://default:{password}@127.0.0.1:{server.port}/0"

    writer = StreamWriter(url(f"not-{PASSWORD}"), backend=backend, retry_timeout=0.5)
    reader = StreamReader(url(PASSWORD), backend=backend)
    try:
        assert PASSWORD not in repr(writer)
        assert PASSWORD not in repr(reader)
        with pytest.raises(SSERedisError) as info:
            writer.write(f"auth-{uuid.uuid4().hex}", "data: x\n\n")
        assert PASSWORD not in str(info.value)
    finally:
        writer.close(timeout=1)
        reader.close()


# --------------------------------------------------------- redis-py clients


@pytest.mark.parametrize("asyncio_client", [False, True])
def test_client_with_a_private_ca(backend: str, tls_server: RedisProcess, asyncio_client: bool) -> None:
    """A client's ssl_ca_certs (a private CA the system does not trust) is
    taken over, not dropped, on both backends."""
    ca = tls_server.tls[2]  # type: ignore[index]
    module = redis_py.asyncio if asyncio_client else redis_py
    client = module.Redis(host="localhost", port=tls_server.port, ssl=True, ssl_ca_certs=ca)
    run = f"tls-{uuid.uuid4().hex}"
    with StreamWriter(client, backend=backend) as writer, StreamReader(client, backend=backend) as reader:
        write_run(writer, run)
        assert len(read_all(reader, run)) == 6


def test_client_ssl_setting_the_rust_engine_cannot_honour(backend: str, tls_server: RedisProcess) -> None:
    """ssl_ca_data (the CA as text): the pure engines use it, the Rust one is
    refused naming it rather than connecting without it."""
    ca = Path(tls_server.tls[2]).read_text()  # type: ignore[index]
    client = redis_py.Redis(host="localhost", port=tls_server.port, ssl=True, ssl_ca_data=ca)
    if backend == "rust":
        with pytest.raises(ValueError, match="'ssl_ca_data'"):
            StreamWriter(client, backend=backend)
        return
    run = f"tls-{uuid.uuid4().hex}"
    with StreamWriter(client, backend=backend) as writer, StreamReader(client, backend=backend) as reader:
        write_run(writer, run)
        assert len(read_all(reader, run)) == 6


@pytest.mark.parametrize("asyncio_client", [False, True])
def test_sentinel_managed_client_is_refused_clearly(backend: str, asyncio_client: bool) -> None:
    """A Sentinel-managed client has no fixed address; taking its pool's
    defaults would silently point at localhost. Refused with a clear error
    (nothing connects: building the client does no I/O)."""
    if asyncio_client:
        from redis.asyncio.sentinel import Sentinel
    else:
        from redis.sentinel import Sentinel
    client = Sentinel([("127.0.0.1", 1)]).master_for("mymaster")
    with pytest.raises(ValueError, match="Sentinel"):
        StreamWriter(client, backend=backend)
    with pytest.raises(ValueError, match="Sentinel"):
        StreamReader(client, backend=backend)
