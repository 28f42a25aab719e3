"""The console in a browser: the call-centre agent finds a caller by phone and sees their online and in-store
orders; the marketer previews a rule; the operator settles a review; a journey is shown with its funnel.
Every page passes axe-core without serious violations, and each step leaves a screenshot."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from examples.retailer import history
from omni.common.v1 import common_pb2
from tests.console.browser.conftest import serious_violations
from tests.console.conftest import Stack


def both_channels_customer(stack: Stack) -> Any:
    now = datetime.now(UTC)
    for customer in stack.loaded.customers:
        orders = {e.channel for e in history(customer, 11, 3, now) if e.type == "order_completed"}
        if {common_pb2.CHANNEL_WEB, common_pb2.CHANNEL_STORE} <= orders:
            return customer
    raise AssertionError("no customer bought both online and in a store")


async def test_agent_finds_a_caller_by_phone_and_sees_online_and_store_orders(
    stack: Stack, console_url: str, browser: Any, screenshots: Path
) -> None:
    customer = both_channels_customer(stack)
    page = await browser.new_page()
    await page.goto(f"{console_url}/persons")
    assert await serious_violations(page) == []
    # The agent types the number as the caller says it, with the keyboard only.
    await page.get_by_label("Email, phone, loyalty card, user id or person id").fill(customer.phone_national)
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{console_url}/persons/*")
    await page.get_by_role("heading", name="Timeline").wait_for()
    orders = page.locator("#timeline-rows tr", has_text="order_completed")
    channels = set(await orders.locator(".channel").all_inner_texts())
    assert {"🌐 web", "🏬 store"} <= {c.strip() for c in channels}, channels
    assert await page.get_by_text(customer.email).count() >= 1
    await page.screenshot(path=str(screenshots / "person.png"), full_page=True)
    assert await serious_violations(page) == []
    # Older events come in below without leaving the page, when there are more.
    await page.close()


async def test_marketer_previews_a_rule(
    stack: Stack, console_url: str, browser: Any, screenshots: Path
) -> None:
    page = await browser.new_page()
    await page.goto(f"{console_url}/segments")
    await page.get_by_role("link", name="store-shoppers").wait_for()
    assert await serious_violations(page) == []
    await page.get_by_role("link", name="Try a rule").click()
    await page.locator("#preview-count").wait_for()
    rule = page.get_by_label("Rule", exact=True)
    await rule.fill(
        '{"eventCount": {"eventType": "order_completed", "window": "2592000s",'
        ' "comparison": "COMPARISON_GTE", "count": 1, "channels": ["CHANNEL_STORE"]}}'
    )
    store_shoppers = stack.loaded.segments["store-shoppers"]
    expected = await _members(stack, store_shoppers)
    await page.locator("#preview-count", has_text=str(expected)).wait_for()
    await page.locator(".sample a").first.wait_for()
    await page.screenshot(path=str(screenshots / "segment-preview.png"), full_page=True)
    assert await serious_violations(page) == []
    await page.goto(f"{console_url}/segments/{store_shoppers}")
    await page.locator(".chart svg, .chart canvas").first.wait_for()
    await page.screenshot(path=str(screenshots / "segment.png"), full_page=True)
    assert await serious_violations(page) == []
    await page.close()


async def _members(stack: Stack, segment_id: str) -> int:
    from omni.segmentation.v1 import segmentation_pb2

    request = segmentation_pb2.CountSegmentMembersRequest(segment_id=segment_id)
    return int((await stack.omni.segmentation.CountSegmentMembers(request)).member_count)


async def test_operator_settles_a_review(
    stack: Stack, console_url: str, browser: Any, screenshots: Path
) -> None:
    page = await browser.new_page()
    await page.goto(f"{console_url}/reviews")
    review = page.locator("section.review").first
    await review.wait_for()
    await page.screenshot(path=str(screenshots / "review.png"), full_page=True)
    assert await serious_violations(page) == []
    await review.get_by_label("the same person as candidate 1").check()
    await review.get_by_label("Your name").fill("Grace")
    await review.get_by_label("Why (optional)").fill("same card, new address")
    await review.get_by_role("button", name="Settle").click()
    await page.get_by_role("status").filter(has_text="Settled").wait_for()
    assert (
        await page.locator(f'form[action="/reviews/{stack.loaded.review_decision_id}/settle"]').count() == 0
    )
    await page.close()


async def test_a_journey_shows_its_steps_and_funnel(
    stack: Stack, console_url: str, browser: Any, screenshots: Path
) -> None:
    page = await browser.new_page()
    await page.goto(f"{console_url}/journeys")
    assert await serious_violations(page) == []
    await page.get_by_role("link", name="store-shopper-thanks").click()
    steps = page.locator("ol.steps")
    await steps.get_by_role("link", name="Enters segment store-shoppers").wait_for()
    await steps.get_by_text("Send template store-thanks-email").wait_for()
    await page.locator(".chart svg, .chart canvas").first.wait_for()
    await page.screenshot(path=str(screenshots / "journey.png"), full_page=True)
    assert await serious_violations(page) == []
    await page.close()
