"""Merging persons: which one survives, and the lineage record each merge leaves.

When one resolve links identifiers held by several persons, they are one customer. The oldest person (the
smallest UUIDv7) survives, so the id most systems have already seen stays valid and merges are
order-independent; every other person gets ``merged_into`` pointing at the survivor and gives it their
identifiers. An operator may also merge two persons and name the survivor (MergePersons). Only live persons
are ever merged, into another live person, so ``merged_into`` links form trees and never a cycle.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from omni_identity.normalise import IdentifierKey


class MergeRule(StrEnum):
    """Why persons were merged."""

    SHARED_IDENTIFIERS = "shared_identifiers"
    """A resolve saw identifiers of both persons together."""
    OPERATOR = "operator"
    """An operator merged them (MergePersons)."""


@dataclass(frozen=True)
class MergeRecord:
    """One person merged into another: the lineage of a merge, kept for audit and for undoing it."""

    id: uuid.UUID
    survivor_id: uuid.UUID
    merged_id: uuid.UUID
    cause_identifiers: tuple[IdentifierKey, ...]
    source: str
    merged_at: datetime
    rule: MergeRule = MergeRule.SHARED_IDENTIFIERS
    reason: str = ""
    """The operator's reason, for operator merges."""
    undone_at: datetime | None = None
    """When an unmerge undid this merge; None while it stands."""
    undo_reason: str = ""
    reference: str = ""
    """What caused it: the resolve request's reference, or the operator call's request id."""


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
