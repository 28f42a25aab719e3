"""Running the console: `omni console` (and `omni run`, which starts it beside the services)."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from omni_console.app import build
from omni_console.settings import Settings

log = logging.getLogger("omni.console")


def url(settings: Settings) -> str:
    """Where a browser finds the console."""
    return f"http://{settings.http_host}:{settings.http_port}/"


async def serve(settings: Settings) -> None:
    """Serve the console until SIGINT/SIGTERM (uvicorn's handlers stop it gracefully)."""
    config = uvicorn.Config(
        build(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    # uvicorn says it listens only by its `started` flag.
    while not server.started and not serving.done():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if server.started:
        print(f"console ready on {url(settings)}", flush=True)
    await serving


def serve_from_environment() -> None:
    """Read the settings from the environment and serve (`omni console`)."""
    settings = Settings()
    asyncio.run(serve(settings))
