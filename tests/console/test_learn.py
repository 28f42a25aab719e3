"""Multi-step journeys, experiments and outcome reports in the console, against the real services (the set-up
is tests/console/learning.py): the journey's graph, each person's run, the experiment's arms with their
intervals, and the reports by channel and by channel count with their CSV."""

from __future__ import annotations

import csv
import html as html_lib
import io
import json
import re
import uuid
from typing import Any

import pytest

from tests.console.conftest import Console, Stack, eventually, open_console
from tests.console.learning import Learn, set_up


@pytest.fixture(scope="module")
async def learn(stack: Stack) -> Learn:
    return await set_up(stack)


def specs_of(page: str) -> list[dict[str, Any]]:
    """The Vega-Lite specs a page hands to vega-embed."""
    return [json.loads(html_lib.unescape(found)) for found in re.findall(r'data-spec="([^"]+)"', page)]


def main_of(page: str) -> str:
    """The page's main part, for a failure's message."""
    return page[page.find("<main") : page.find("</main>")]


async def test_a_multi_step_journey_is_its_graph_with_state_and_version(
    learn: Learn, console: Console
) -> None:
    listing = (await console.http.get("/journeys")).text
    row = re.search(rf"{learn.journey.name}</a></td><td>([^<]*)</td>", listing)
    assert row and row.group(1).startswith("published, version 1"), listing[-3000:]
    page = await console.http.get(f"/journeys/{learn.journey.id}")
    assert page.status_code == 200
    text = page.text
    assert "published" in text and "version 1" in text
    assert "Started by TriggerJourney" in text and "once ever per person" in text
    for step_id in ("welcome", "wait-order", "vip", "split", "nudge-wait", "thanks", "done"):
        assert f'id="step-{step_id}"' in text, step_id
    assert f"Send template {learn.journey.spec.steps[0].message.template_id}" in text
    assert "Wait for event order_completed" in text and "at most 1 day" in text
    assert "If trait tier = gold" in text and "Random split" in text and "Wait for 2 days" in text
    assert "Set trait welcomed" in text and "to true" in text
    # The ways out are labelled and point at their steps.
    for label, target in [
        ("event", "thanks"),
        ("timeout", "vip"),
        ("if true", "split"),
        ("if false", "done"),
        ("nudge (70%)", "nudge-wait"),
        ("quiet (30%)", "done"),
    ]:
        assert re.search(
            rf'<span class="exit-label">{re.escape(label)}</span> → <a href="#step-{target}">', text
        ), (label, target)
    assert "event account_closed is tracked" in text


async def test_the_person_page_shows_each_run_at_its_step_with_its_history(
    learn: Learn, console: Console
) -> None:
    person_id = learn.persons[-1]

    async def shown() -> str | None:
        text = (await console.http.get(f"/persons/{person_id}")).text
        return text if "at step <code>wait-order</code>" in text else None

    text = await eventually(shown, "the run waiting for an order on the person's page")
    assert "Journey runs" in text and learn.journey.name in text and "version 1" in text
    assert re.search(r"<td><code>welcome</code></td><td>message</td><td>sent</td>", text), "the history"
    assert "active" in text


async def test_experiments_list_and_results_with_intervals(learn: Learn, console: Console) -> None:
    listing = (await console.http.get("/experiments")).text
    assert learn.experiment.name in listing and "subject_a 50% (control)" in listing, main_of(listing)

    async def converted() -> str | None:
        text = (await console.http.get(f"/experiments/{learn.experiment.id}")).text
        return text if re.search(r"<td class=\"num\">[1-9]\d*</td>\s*<td>\d", text) else None

    text = await eventually(converted, "conversions in the experiment's results", within_s=60)
    assert "subject_a (control)" in text and "subject_b" in text
    assert "Sample ratio as planned" in text or "Sample-ratio mismatch" in text
    assert re.search(r"\d+\.\d% \[\d+\.\d%, \d+\.\d%\]", text), "a rate with its interval"
    specs = specs_of(text)
    assert specs, "a chart of the rates"
    rate = specs[0]
    layers = [layer["mark"]["type"] for layer in rate["layer"]]
    assert layers == ["rule", "errorbar", "point"]
    values = rate["data"]["values"]
    assert [v["label"] for v in values] == ["subject_a", "subject_b"]
    assert all(v["low"] <= v["value"] <= v["high"] for v in values)
    assert "the data as a table" in text, "the chart's table alternative"
    verdicts = re.findall(r'<td class="verdict">([^<]+)</td>', text)
    assert verdicts[0] == "control"
    assert verdicts[1].startswith(("not yet significant: ", "better", "worse", "—")), verdicts
    assert (await console.http.get(f"/experiments/{uuid.uuid4()}")).status_code == 404


async def test_reports_by_channel_and_channel_count_with_csv(learn: Learn, console: Console) -> None:
    query = {"definition": learn.definition.id, "model": "last-touch"}

    async def reported() -> str | None:
        text = (await console.http.get("/reports", params=query)).text
        return text if '<th scope="row">email</th>' in text and '<th scope="row">1</th>' in text else None

    try:
        text = await eventually(reported, "the channel and channel-count reports", within_s=60)
    except AssertionError:
        raise AssertionError(main_of((await console.http.get("/reports", params=query)).text)) from None
    note = re.search(r'<p class="note observational" role="note">(.*?)</p>', text, re.S)
    assert note and "Observational" in note.group(1) and "association" in note.group(1), note
    specs = specs_of(text)
    assert len(specs) == 2 and {s["description"] for s in specs} == {
        "Conversion rate by channel with 95% intervals",
        "Conversion rate by channel count with 95% intervals",
    }
    assert f'href="/reports/channel.csv?definition={learn.definition.id}&amp;model=last-touch"' in text
    export = await console.http.get("/reports/channel.csv", params=query)
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert any(row.get("value") == "email" for row in rows), rows
    counts = await console.http.get("/reports/channel-count.csv", params=query)
    assert (counts.status_code == 200 and "3+" in counts.text) or "1" in counts.text
    assert (await console.http.get("/reports/weather.csv", params=query)).status_code == 400
    assert (await console.http.get("/reports", params={"model": "psychic"})).status_code == 400


async def test_without_the_read_scopes_the_pages_say_so(stack: Stack, learn: Learn) -> None:
    scopes = ["decisioning.journeys:read", "identity.persons:read"]
    async with open_console(stack.settings.model_copy(update={"scopes": scopes})) as limited:
        listing = (await limited.http.get("/experiments")).text
        assert "Not shown: the console&#39;s credentials do not hold decisioning.experiments:read" in listing
        reports_page = (await limited.http.get("/reports")).text
        assert "do not hold decisioning.reports:read" in reports_page
        export = await limited.http.get("/reports/channel.csv", params={"definition": learn.definition.id})
        assert export.status_code == 403
