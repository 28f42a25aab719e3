"""Run one service (or the echo baseline) in a child process for the benchmarks.

    python -m bench.serve identity '{"database_url": "...", "nats_url": "...", ...}'

The load generator runs in the parent, so on a 2-core machine the service does not share a Python process
(and its GIL) with the code measuring it, and each service has its own process as under ``omni serve``.
This prints one line ``READY {"port": N}`` on stdout once serving, then runs until its standard input
closes or it gets SIGTERM, and stops the service the way ``omni serve`` does (``runtime.close()``).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from typing import Any

from omni_kit.runtime import settle_garbage_collector
from omni_kit.telemetry import setup_telemetry

SERVICES = ("identity", "profile", "segmentation", "decisioning", "gateway")


async def _serve(name: str, overrides: dict[str, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(sys.stdin.fileno(), 4096) else None)
    if name == "echo":
        from bench.echo import start_echo_server

        server, port = await start_echo_server()
        _ready(port)
        await stop.wait()
        await server.stop(1.0)
        return
    setup_telemetry(name)
    module = importlib.import_module(f"omni_{name}.main")
    runtime = await module.start(module.Settings(**overrides))
    settle_garbage_collector()  # as `omni serve` does
    _ready(runtime.port)
    await stop.wait()
    await runtime.close()


def _ready(port: int) -> None:
    sys.stdout.write("READY " + json.dumps({"port": port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    """Entry point: ``python -m bench.serve NAME SETTINGS_JSON``."""
    if len(argv) != 2 or argv[0] not in (*SERVICES, "echo"):
        sys.stderr.write(f"usage: python -m bench.serve {{{','.join((*SERVICES, 'echo'))}}} SETTINGS_JSON\n")
        return 2
    logging.basicConfig(
        level=os.environ.get("OMNI_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(_serve(argv[0], json.loads(argv[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
