"""Process helpers shared by the embedded servers: errors, log tails, stopping a child or a leftover."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


class EmbeddedServerError(RuntimeError):
    """An embedded server (PostgreSQL, NATS, SMTP sink) could not be started or stopped."""


def log_tail(path: Path, *, since: int = 0, lines: int = 40) -> str:
    """Return the last ``lines`` lines written to ``path`` after byte offset ``since``, or a note if none."""
    try:
        with path.open("rb") as log:
            log.seek(since)
            text = log.read().decode("utf-8", errors="replace")
    except OSError as error:
        return f"(no log at {path}: {error.strerror})"
    tail = text.splitlines()[-lines:]
    if not tail:
        return f"(nothing in {path})"
    return "\n".join(tail)


def log_size(path: Path) -> int:
    """Return the size of ``path`` in bytes, 0 if it does not exist; used to read only what a start wrote."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def pid_alive(pid: int) -> bool:
    """Tell whether a process with this id runs (one owned by someone else counts; a zombie does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Tell whether ``pid`` has exited but not been collected; an orphan's stays so where nobody reaps."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses and may itself contain ") ".
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "Z"


def pid_cmdline(pid: int) -> list[str] | None:
    """Return the command line of a live process, or None where it cannot be read (gone, or no /proc)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode("utf-8", errors="replace") for part in raw.split(b"\0") if part]


def terminate_pid(pid: int, *, timeout: float = 10.0) -> None:
    """Send SIGTERM to ``pid``, wait up to ``timeout`` seconds for it to go, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while pid_alive(pid) and time.monotonic() < deadline + 5:
            _reap(pid)
            time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect ``pid`` if it happens to be our own exited child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def terminate(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> int:
    """Stop a child cleanly: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Return its exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
