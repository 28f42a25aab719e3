"""Starting and stopping the child processes that run the services under test (see bench/serve.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parent.parent
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
"""The start of a log record in the service processes' log format (see bench/serve.py)."""


class ChildFailed(RuntimeError):
    """A service process did not start, or died; the message carries the end of its log."""


class ServiceProcess:
    """One service (or the echo server) running in its own Python process, on 127.0.0.1."""

    def __init__(self, name: str, settings: dict[str, Any], log_path: Path) -> None:
        self.name = name
        self.settings = settings
        self.log_path = log_path
        self.port = 0
        self.pid = 0
        self._process: asyncio.subprocess.Process | None = None

    @property
    def target(self) -> str:
        """host:port of the service."""
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout_s: float = 120.0) -> Self:
        """Start the process and wait for its READY line (migrations run before it)."""
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.serve",
                self.name,
                json.dumps(self.settings),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                env=env,
            )
        assert self._process.stdout is not None
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), timeout=timeout_s)
        except TimeoutError:
            await self.stop(timeout_s=5)
            raise ChildFailed(
                f"{self.name} did not start within {timeout_s:.0f} s\n{self.log_tail()}"
            ) from None
        if not line.startswith(b"READY "):
            await self.stop(timeout_s=5)
            raise ChildFailed(f"{self.name} failed to start\n{self.log_tail()}")
        ready = json.loads(line[6:])
        self.port, self.pid = int(ready["port"]), int(ready["pid"])
        return self

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self._process is not None and self._process.returncode is None

    async def stop(self, timeout_s: float = 60.0) -> int | None:
        """Ask the service to stop (close its stdin), wait up to ``timeout_s``, then kill it."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.stdin is not None:
            process.stdin.close()
        try:
            return await asyncio.wait_for(process.wait(), timeout=timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                return await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                return await process.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the process wrote to its log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    def logged_errors(self, limit: int = 3) -> list[str]:
        """The first ``limit`` ERROR/CRITICAL records of the log, each cut to its head and its last lines.

        A record runs until the next line that starts with a timestamp; keeping the head (what failed where)
        and the tail (the exception raised) keeps the results file small.
        """
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        records: list[list[str]] = []
        current: list[str] | None = None
        for line in lines:
            if _RECORD.match(line):
                current = [line] if (" ERROR " in line or " CRITICAL " in line) else None
                if current is not None:
                    records.append(current)
            elif current is not None:
                current.append(line)
        found = ["\n".join(r if len(r) <= 8 else [*r[:2], "  ...", *r[-5:]]) for r in records[:limit]]
        if len(records) > limit:
            found.append(f"... and {len(records) - limit} more error records")
        return found

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the process has used so far (from /proc), None if unknown."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
