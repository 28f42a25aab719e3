"""All of segmentation's SQL, one module per part of the store: segments, the per-person facts, event
occurrences, memberships and backfills. Methods take the caller's session; the caller owns the transaction.
Large reads and writes are one statement over arrays, so a batch of persons costs a few round trips whatever
its size."""

from __future__ import annotations

from omni_segmentation.repository.backfills import BackfillQueries
from omni_segmentation.repository.events import EventQueries, Occurrence
from omni_segmentation.repository.memberships import MembershipQueries
from omni_segmentation.repository.persons import PersonQueries
from omni_segmentation.repository.segments import SegmentHead, SegmentQueries

__all__ = ["Occurrence", "Repository", "SegmentHead"]


class Repository(SegmentQueries, PersonQueries, EventQueries, MembershipQueries, BackfillQueries):
    """Queries on segmentation's database; every method runs in the caller's session (and transaction)."""
