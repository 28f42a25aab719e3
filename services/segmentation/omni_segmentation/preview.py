"""Previewing a condition: what it would select now, without creating a segment.

Every known person is evaluated, a page at a time, with the same rules and the same facts as live
membership (membership.load_facts): how many match, the first of them in id order as a sample, and how many
match each top-level condition on its own (for an all/any condition; else the condition itself). It reads
only, in one transaction, at about the backfill's pace (see the README's "Speed").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_segmentation import rules
from omni_segmentation.membership import load_facts
from omni_segmentation.repository import Repository

PAGE = 2_000


@dataclass
class Preview:
    """What a condition selects now."""

    match_count: int = 0
    sample: list[uuid.UUID] = field(default_factory=list)
    # (path of the top-level condition, how many match it), in document order.
    condition_counts: list[tuple[str, int]] = field(default_factory=list)
    evaluated_count: int = 0


def top_level(condition: rules.Condition, path: str) -> list[tuple[str, rules.Condition]]:
    """The conditions a preview counts separately: an all/any condition's children, else the condition."""
    if isinstance(condition, rules.AllOf):
        return [(f"{path}.all.conditions[{i}]", c) for i, c in enumerate(condition.conditions)]
    if isinstance(condition, rules.AnyOf):
        return [(f"{path}.any.conditions[{i}]", c) for i, c in enumerate(condition.conditions)]
    return [(path, condition)]


async def preview(
    repository: Repository,
    session: AsyncSession,
    condition: rules.Condition,
    *,
    path: str,
    sample_size: int,
    now: datetime,
    page: int = PAGE,
) -> Preview:
    """Evaluate condition for every known person at now."""
    needs = rules.requirements([condition])
    tops = top_level(condition, path)
    counts = [0] * len(tops)
    result = Preview()
    after: uuid.UUID | None = None
    while True:
        persons = await repository.persons_after(session, after, page)
        if not persons:
            break
        after = persons[-1].person_id
        facts_of = await load_facts(repository, session, {p.person_id: p for p in persons}, needs, now)
        for person_id, facts in facts_of.items():
            if rules.evaluate(condition, facts, now):
                result.match_count += 1
                if len(result.sample) < sample_size:
                    result.sample.append(person_id)
            if len(tops) > 1 or tops[0][1] is not condition:
                for index, (_, top) in enumerate(tops):
                    counts[index] += rules.evaluate(top, facts, now)
        result.evaluated_count += len(persons)
        if len(persons) < page:
            break
    if len(tops) == 1 and tops[0][1] is condition:
        counts[0] = result.match_count
    result.condition_counts = [(top_path, count) for (top_path, _), count in zip(tops, counts, strict=True)]
    return result
