"""Merging persons: which one survives, and the lineage record each merge leaves.

When one resolve links identifiers held by several persons, they are one customer. The oldest person (the
smallest UUIDv7) survives, so the id most systems have already seen stays valid and merges are
order-independent; every other person gets ``merged_into`` pointing at the survivor and gives it their
identifiers. Because survivors are always older than the persons merged into them, ``merged_into`` chains
always lead to older persons and can never form a cycle.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from omni_identity.normalise import IdentifierKey


@dataclass(frozen=True)
class MergeRecord:
    """One person merged into another: the lineage of a merge, kept for audit and for undoing it."""

    id: uuid.UUID
    survivor_id: uuid.UUID
    merged_id: uuid.UUID
    cause_identifiers: tuple[IdentifierKey, ...]
    source: str
    merged_at: datetime


@dataclass(frozen=True)
class MergeDecision:
    """The survivor among persons found to be one, and the others that merge into it."""

    survivor_id: uuid.UUID
    merged_ids: tuple[uuid.UUID, ...] = field(default_factory=tuple)


def choose_survivor(person_ids: Iterable[uuid.UUID]) -> MergeDecision:
    """Pick the oldest person (smallest UUIDv7) as survivor; the rest are merged into it."""
    ordered = sorted(set(person_ids))
    if not ordered:
        raise ValueError("choose_survivor needs at least one person")
    return MergeDecision(survivor_id=ordered[0], merged_ids=tuple(ordered[1:]))


def final_survivor(person_id: uuid.UUID, merged_into: Mapping[uuid.UUID, uuid.UUID]) -> uuid.UUID:
    """Follow merged_into links from person_id to the person that is still live."""
    seen: set[uuid.UUID] = set()
    while person_id in merged_into:
        if person_id in seen:  # pragma: no cover - survivors are older, so links cannot loop
            raise RuntimeError(f"merge cycle through {person_id}")
        seen.add(person_id)
        person_id = merged_into[person_id]
    return person_id
