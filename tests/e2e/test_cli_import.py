"""`omni import`: a file of events and one of customers through the real services, with bad rows refused
into a rejects file, and an import killed half-way that, run again, loses nothing and doubles nothing.

The command runs as its own process (as an operator runs it), reaching the in-process services through the
OMNI_CLI_* settings; what profile holds is then read from its database.
"""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from omni_kit.db import create_engine
from tests.e2e.cli import cli_env, omni_cli
from tests.e2e.conftest import Omni

HEADER = ["type", "channel", "occurred_at", "email", "anonymous_id", "properties.total", "properties.sku"]


@asynccontextmanager
async def profile_db(omni: Omni) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(omni.databases["profile"], application_name="omni-test-cli")
    try:
        yield engine
    finally:
        await engine.dispose()


async def stored(omni: Omni, source: str) -> tuple[int, int]:
    """Events profile holds from `source`, and how many distinct ids they have."""
    async with profile_db(omni) as engine, engine.connect() as connection:
        row = (
            await connection.execute(
                sa.text("SELECT count(*), count(DISTINCT id) FROM events WHERE source = :source"),
                {"source": source},
            )
        ).one()
    return int(row[0]), int(row[1])


def write_events(path: Path, count: int, *, bad: dict[int, dict[str, str]] | None = None) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, HEADER)
        writer.writeheader()
        for i in range(count):
            row = {
                "type": "order_completed" if i % 5 == 0 else "page_viewed",
                "channel": ("web", "app", "store")[i % 3],
                "occurred_at": f"2026-11-{1 + i % 28:02d}T10:{i % 60:02d}:00Z",
                "email": f"c{i % 400}@example.com",
                "anonymous_id": f"anon-{i % 400}",
                "properties.total": str(10 + i % 90),
                "properties.sku": f"sku-{i % 37:03d}",
            }
            row.update((bad or {}).get(i, {}))
            writer.writerow(row)


async def test_bad_rows_go_to_the_rejects_file_with_field_and_reason(omni: Omni, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    # Row 4 has a time that is not one (refused by the command), row 8 a channel that does not exist (refused
    # by the command), row 11 an email identity refuses (refused by profile, after identity).
    write_events(
        path,
        1200,
        bad={
            3: {"occurred_at": "yesterday"},
            7: {"channel": "carrier-pigeon"},
            10: {"email": "not-an-email"},
        },
    )
    code, out = await omni_cli(
        omni, "import", "events", str(path), "--source", "shop_a", "--segment-rows", "300"
    )
    assert code == 1, out
    assert "import summary" in out and "rejected" in out
    with (tmp_path / "events.rejects.csv").open(newline="") as handle:
        rejects = list(csv.DictReader(handle))
    assert [(r["_row"], r["_field"]) for r in rejects][:2] == [("4", "occurred_at"), ("8", "channel")]
    assert len(rejects) == 3, rejects
    assert rejects[2]["_row"] == "11" and "email" in (rejects[2]["_field"] + rejects[2]["_reason"])
    assert all(r["_reason"] for r in rejects)
    checkpoint = json.loads((tmp_path / "events.csv.checkpoint.json").read_text())
    assert checkpoint["finished"] and checkpoint["counts"] == {
        "rows": 1200,
        "accepted": 1197,
        "duplicates": 0,
        "rejected": 3,
    }
    assert await stored(omni, "shop_a") == (1197, 1197)

    # The rejects file, fixed, imports as it is (its _row/_field/_reason columns are ignored).
    fixed = tmp_path / "fixed.csv"
    with fixed.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rejects[0]))
        writer.writeheader()
        for record in rejects:
            record.update(occurred_at="2026-11-02T10:00:00Z", channel="web", email="fixed@example.com")
            writer.writerow(record)
    code, out = await omni_cli(omni, "import", "events", str(fixed), "--source", "shop_a")
    assert code == 0, out
    assert await stored(omni, "shop_a") == (1200, 1200)


async def test_an_import_killed_half_way_resumes_without_loss_or_doubles(omni: Omni, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    total = 12_000
    write_events(path, total)
    checkpoint_path = tmp_path / "big.csv.checkpoint.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "omni_kit.cli",
        "import",
        "events",
        str(path),
        "--source",
        "shop_b",
        "--segment-rows",
        "500",
        "--streams",
        "2",
        env=cli_env(omni),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    # Kill it (no chance to clean up) once a few segments are checkpointed and more are in flight.
    for _ in range(600):
        await asyncio.sleep(0.05)
        if checkpoint_path.exists() and json.loads(checkpoint_path.read_text())["rows_done"] >= 2_000:
            break
    process.send_signal(signal.SIGKILL)
    await process.wait()
    first = json.loads(checkpoint_path.read_text())
    assert 2_000 <= first["rows_done"] < total and not first["finished"], first
    recorded_before, _ = await stored(omni, "shop_b")
    assert recorded_before >= first["rows_done"]  # what was in flight may have landed too

    code, out = await omni_cli(
        omni, "import", "events", str(path), "--source", "shop_b", "--segment-rows", "500"
    )
    assert code == 0, out
    assert f"resuming after row {first['rows_done']:,}" in out
    final = json.loads(checkpoint_path.read_text())
    assert final["finished"] and final["rows_done"] == total
    assert final["counts"]["rows"] == total and final["counts"]["rejected"] == 0
    # Rows sent before the kill but after the checkpoint come back as duplicates, not as second events.
    assert final["counts"]["accepted"] + final["counts"]["duplicates"] == total
    assert await stored(omni, "shop_b") == (total, total)

    code, out = await omni_cli(omni, "import", "events", str(path), "--source", "shop_b")
    assert code == 0 and "imported completely" in out, out


async def test_customers_become_persons_with_traits(omni: Omni, tmp_path: Path) -> None:
    from omni.common.v1 import common_pb2
    from omni.identity.v1 import identity_pb2
    from omni.profile.v1 import profile_pb2

    path = tmp_path / "customers.ndjson"
    lines = [
        {"email": "ada@example.com", "loyalty_card": "LC-1", "first_name": "Ada", "plan": "gold"},
        {"email": "bob@example.com", "phone": "+4915112345678", "first_name": "Bob", "traits": {"vip": True}},
        {"first_name": "Nobody"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{broken\n")
    code, out = await omni_cli(omni, "import", "customers", str(path), "--source", "crm")
    assert code == 1, out
    rejects = [json.loads(line) for line in (tmp_path / "customers.rejects.ndjson").read_text().splitlines()]
    assert [(r["_row"], r["_field"]) for r in rejects] == [(3, "identifiers"), (4, "row")]
    person = (
        await omni.identity.LookupPerson(
            identity_pb2.LookupPersonRequest(
                identifier=common_pb2.Identifier(type="loyalty_card", value="LC-1")
            )
        )
    ).person
    profile = (await omni.profile.GetProfile(profile_pb2.GetProfileRequest(person_id=person.id))).profile
    assert profile.traits["first_name"] == "Ada" and profile.traits["plan"] == "gold"
    assert profile.trait_metadata["first_name"].source == "crm"
