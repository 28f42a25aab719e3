"""Stands in for ``omni migrate|serve <service>`` so the embedded run can be tested without the services.

``migrate`` records each run in a table of the service's database and prints how many there were; ``serve``
answers grpc.health.v1 SERVING on the service's port until SIGTERM (over mTLS when the run gives it
certificates). A file ``crash-<service>`` in
``$FAKE_OMNI_ROOT`` makes ``serve`` exit with code 3 a moment after it is ready, once (the file is removed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from types import FrameType

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def _setting(service: str, name: str) -> str:
    return os.environ[f"OMNI_{service.upper()}_{name}"]


async def migrate(service: str) -> None:
    """Count this migration in the service's own database."""
    dsn = _setting(service, "DATABASE_URL").replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE TABLE IF NOT EXISTS runs (at timestamptz DEFAULT now())")
        await connection.execute("INSERT INTO runs DEFAULT VALUES")
        count = await connection.fetchval("SELECT count(*) FROM runs")
    finally:
        await connection.close()
    print(f"migrated {service}: run {count}")


def serve(service: str) -> int:
    """Answer health checks until SIGTERM (exit 0) or until told to crash (exit 3)."""
    stopped = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_term)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"{_setting(service, 'GRPC_HOST')}:{_setting(service, 'GRPC_PORT')}"
    cert = os.environ.get(f"OMNI_{service.upper()}_TLS_CERT_FILE")
    if cert is None:
        server.add_insecure_port(address)
    else:
        # As the real services do with the run's certificates: mTLS.
        credentials = grpc.ssl_server_credentials(
            [(Path(_setting(service, "TLS_KEY_FILE")).read_bytes(), Path(cert).read_bytes())],
            root_certificates=Path(_setting(service, "TLS_CA_FILE")).read_bytes(),
            require_client_auth=_setting(service, "TLS_REQUIRE_CLIENT_CERT") == "true",
        )
        server.add_secure_port(address, credentials)
    server.start()
    print(f"{service} fake serving")
    crash_at = None
    crash_file = Path(os.environ["FAKE_OMNI_ROOT"]) / f"crash-{service}"
    if crash_file.exists():
        crash_at = time.monotonic() + 1.0
    while not stopped.wait(0.05):
        if crash_at is not None and time.monotonic() >= crash_at:
            print(f"{service} crashing on purpose")
            crash_file.unlink()
            return 3
    server.stop(0)
    return 0


def main() -> int:
    """Dispatch ``migrate`` or ``serve``."""
    action, service = sys.argv[1], sys.argv[2]
    if action == "migrate":
        asyncio.run(migrate(service))
        return 0
    return serve(service)


if __name__ == "__main__":
    raise SystemExit(main())
