"""A real browser on the console: Debian's Chromium driven by Playwright through its executable path (no
browser is downloaded), headless, with a fresh profile per test module.

Every test here is marked ``browser``; `make test-browser` runs them (installing Chromium when it is
missing), and anywhere Chromium is not installed they are skipped, so plain `make test` passes without it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from omni_console.app import build
from omni_console.clients import Clients
from omni_kit.embedded import free_port
from tests.console.conftest import Stack

CHROMIUM = os.environ.get("OMNI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE = Path(__file__).resolve().parents[3] / "node_modules" / "axe-core" / "axe.min.js"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here ``browser``; skip them all when Chromium is not installed."""
    here = Path(__file__).parent
    missing = not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM))
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.browser)
            if missing:
                item.add_marker(
                    pytest.mark.skip(reason=f"no Chromium at {CHROMIUM} (make test-browser installs it)")
                )


@pytest.fixture(scope="module")
async def console_url(stack: Stack) -> AsyncIterator[str]:
    """The console served over HTTP on a free port, beside the services."""
    port = free_port()
    clients = Clients.open(stack.settings)
    settings = stack.settings.model_copy(update={"http_port": port})
    server = uvicorn.Server(
        uvicorn.Config(
            build(settings, clients), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn says it listens only by this flag
        assert not serving.done(), "the console did not start"
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await serving
    await clients.close()


@pytest.fixture(scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    """A headless Chromium context with a fresh profile directory."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1366, "height": 900},
        )
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Iterator[Path]:
    """Where screenshots go: OMNI_SCREENSHOTS (make test-browser: docs/screenshots), else the test's tmp."""
    directory = Path(os.environ.get("OMNI_SCREENSHOTS", tmp_path))
    directory.mkdir(parents=True, exist_ok=True)
    yield directory


async def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical accessibility violations on the page, one line each."""
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
