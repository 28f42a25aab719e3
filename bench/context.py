"""What every suite gets: the shared PostgreSQL and NATS, fresh databases, service processes, durations."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from bench.children import ServiceProcess
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres


@dataclass(frozen=True)
class Durations:
    """How long each kind of measurement runs, in seconds; ``--quick`` shortens them all."""

    throughput: float
    ingest: float
    latency: float
    capacity: float
    copy: float
    warmup: float

    @classmethod
    def for_mode(cls, quick: bool) -> Durations:
        """The durations of a full run, or of a quick smoke run."""
        if quick:
            return cls(throughput=3.0, ingest=6.0, latency=2.5, capacity=1.5, copy=1.5, warmup=0.5)
        return cls(throughput=25.0, ingest=60.0, latency=15.0, capacity=6.0, copy=8.0, warmup=3.0)


@dataclass(frozen=True)
class Database:
    """A fresh database in the shared cluster."""

    name: str
    url: str
    """SQLAlchemy URL, as services take it."""
    dsn: str
    """libpq/asyncpg DSN, for the baselines and read-only checks."""


@dataclass
class BenchContext:
    """Shared infrastructure and settings of one benchmark run."""

    postgres: EmbeddedPostgres
    nats: EmbeddedNats
    work_dir: Path
    quick: bool
    durations: Durations
    cache: dict[str, Any] = field(default_factory=dict)
    """Baselines measured once per run and shared between suites (e.g. the echo server at 1,000/s)."""
    service_errors: dict[str, list[str]] = field(default_factory=dict)
    """Error records the service processes logged, by service name (collected when each stops)."""
    _databases: list[str] = field(default_factory=list)

    def make_database(self, prefix: str) -> Database:
        """Create a database with a unique name starting with ``prefix``."""
        cleaned = re.sub(r"[^a-z0-9_]", "_", prefix.lower())[:40] or "bench"
        name = f"{cleaned}_{uuid.uuid4().hex[:12]}"
        self.postgres.create_database(name)
        self._databases.append(name)
        return Database(name=name, url=self.postgres.url(name), dsn=self.postgres.dsn(name))

    def drop_databases(self) -> None:
        """Drop every database this run created (the cluster itself is thrown away too)."""
        for name in self._databases:
            with contextlib.suppress(Exception):
                self.postgres.drop_database(name)
        self._databases.clear()

    @staticmethod
    def namespace(prefix: str = "b") -> str:
        """A unique event namespace, so each suite has its own streams and consumers."""
        return prefix + uuid.uuid4().hex[:10]

    def service_settings(self, database: Database, namespace: str, **extra: Any) -> dict[str, Any]:
        """Settings every service process gets: its database, NATS, 127.0.0.1 on a free port, migrations."""
        return {
            "database_url": database.url,
            "nats_url": self.nats.url,
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "event_namespace": namespace,
            "migrate_on_start": True,
            "shutdown_grace_s": 2.0,
            **extra,
        }

    @contextlib.asynccontextmanager
    async def service(self, name: str, settings: dict[str, Any]) -> AsyncIterator[ServiceProcess]:
        """Run a service in a child process for the duration of the block."""
        log_path = self.work_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        process = await ServiceProcess(name, settings, log_path).start()
        try:
            yield process
        finally:
            await process.stop()
            errors = process.logged_errors()
            if errors:
                self.service_errors.setdefault(name, []).extend(errors)

    @contextlib.asynccontextmanager
    async def channel(self, target: str) -> AsyncIterator[grpc.aio.Channel]:
        """A client channel to a service, ready before the block starts."""
        channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        try:
            await channel.channel_ready()
            yield channel
        finally:
            await channel.close()

    @contextlib.asynccontextmanager
    async def connect(self, database: Database) -> AsyncIterator[asyncpg.Connection]:
        """A plain asyncpg connection to a database (baselines and read-only checks)."""
        connection = await asyncpg.connect(database.dsn)
        try:
            yield connection
        finally:
            await connection.close()


@dataclass
class CpuSample:
    """CPU seconds used so far: the whole machine (busy time), this process, and named processes."""

    wall: float
    machine_busy_s: float
    own_s: float
    processes: dict[str, float]


def cpu_sample(ctx: BenchContext, children: dict[str, ServiceProcess] | None = None) -> CpuSample:
    """Read the CPU counters now: machine, this process, the children, PostgreSQL and NATS."""
    processes = {name: p.cpu_seconds() or 0.0 for name, p in (children or {}).items()}
    processes["postgres"] = _process_tree_cpu_s(_pid_from(ctx.postgres.data_dir / "postmaster.pid"))
    processes["nats"] = _process_tree_cpu_s(_pid_from(ctx.nats.pid_path))
    return CpuSample(
        wall=time.monotonic(),
        machine_busy_s=_machine_busy_s(),
        own_s=time.process_time(),
        processes=processes,
    )


def cpu_usage(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Cores used between two samples by the machine, the load generator, each process, and the rest.

    "other" is whatever else ran on the machine (it is shared): a large value means a noisy run.
    """
    wall = max(after.wall - before.wall, 1e-9)
    usage = {"machine": (after.machine_busy_s - before.machine_busy_s) / wall}
    usage["load generator"] = (after.own_s - before.own_s) / wall
    for name, seconds in after.processes.items():
        usage[name] = (seconds - before.processes.get(name, 0.0)) / wall
    usage["other"] = usage["machine"] - sum(v for k, v in usage.items() if k != "machine")
    return {k: round(v, 2) for k, v in usage.items()}


def _pid_from(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_tree_cpu_s(root: int) -> float:
    """CPU seconds of a server and its children, including children that have exited and been reaped.

    PostgreSQL forks a backend per connection; the postmaster's cutime/cstime keep the time of those
    that are gone, so connections closed during a measurement are still counted.
    """
    if root <= 0:
        return 0.0
    ticks = 0
    fields = _stat_fields(root)
    if fields is None:
        return 0.0
    ticks += sum(int(x) for x in fields[11:15])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        child = _stat_fields(entry.name)
        if child is not None and child[1] == str(root):
            ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_sample_machine() -> float:
    """Busy CPU seconds of the whole machine so far."""
    return _machine_busy_s()


def _machine_busy_s() -> float:
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user time
    busy = sum(fields[:8]) - idle
    return busy / os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """Progress on stderr, so a long run shows where it is."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
