"""The learning pages in a browser: the marketer reads a multi-step journey's graph, an experiment's arms
with their intervals drawn, and the reports by channel and by channel count. Every page passes axe-core
without serious violations, and each leaves a screenshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.console.browser.conftest import serious_violations
from tests.console.conftest import Stack
from tests.console.learning import Learn, set_up


@pytest.fixture(scope="module")
async def learn(stack: Stack) -> Learn:
    return await set_up(stack)


async def test_marketer_reads_a_journey_an_experiment_and_the_reports(
    learn: Learn, console_url: str, browser: Any, screenshots: Path
) -> None:
    page = await browser.new_page()
    await page.goto(f"{console_url}/journeys/{learn.journey.id}")
    await page.locator("#step-wait-order").get_by_role("link", name="thanks").wait_for()
    await page.screenshot(path=str(screenshots / "journey-steps.png"), full_page=True)
    assert await serious_violations(page) == []

    await page.goto(f"{console_url}/experiments")
    assert await serious_violations(page) == []
    await page.get_by_role("link", name=learn.experiment.name).click()
    await page.get_by_role("heading", name="Results").wait_for()
    await page.locator(".chart svg").first.wait_for()
    await page.screenshot(path=str(screenshots / "experiment.png"), full_page=True)
    assert await serious_violations(page) == []

    await page.goto(f"{console_url}/reports?definition={learn.definition.id}")
    await page.locator(".observational").wait_for()
    await page.locator(".chart svg").first.wait_for()
    await page.screenshot(path=str(screenshots / "reports.png"), full_page=True)
    assert await serious_violations(page) == []
    await page.close()
