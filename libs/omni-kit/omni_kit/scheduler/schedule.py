"""Scheduling and cancelling jobs inside the caller's transaction.

A job is scheduled with the state change that makes it due (a message queued for a retry, a person whose
membership will change at a given time) and is run only if that transaction commits. A kind and key name
one job: scheduling the same again changes nothing (or, with replace=True, moves it to the new time and
payload as a fresh job), so events applied twice or a request retried do not double the work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from opentelemetry import propagate
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.db import json_text

DueAt = datetime | timedelta
"""An instant, or a delay after the database's clock (now()): replicas whose clocks differ agree on it."""

_EARLIEST = "omni_jobs_earliest_due"

_INSERT = (
    "INSERT INTO scheduled_jobs AS j (kind, key, due_at, payload, trace_context) "
    "SELECT :kind, t.key, coalesce(t.at, now() + make_interval(secs => t.delay)), t.payload, "
    "CAST(:trace AS jsonb) "
    "FROM unnest(CAST(:keys AS text[]), CAST(:ats AS timestamptz[]), CAST(:delays AS double precision[]), "
    "CAST(:payloads AS jsonb[])) AS t(key, at, delay, payload) "
)
_KEEP = sa.text(_INSERT + "ON CONFLICT (kind, key) DO NOTHING RETURNING j.key")
# A job scheduled anew is a fresh job: its attempts start again, and the run that may hold it (claim) no
# longer does, so that run's completion leaves it in place.
_REPLACE = sa.text(
    _INSERT + "ON CONFLICT (kind, key) DO UPDATE SET due_at = excluded.due_at, payload = excluded.payload, "
    "trace_context = excluded.trace_context, attempts = 0, claim = NULL, last_error = NULL, failed_at = NULL "
    "RETURNING j.key"
)
_CANCEL = sa.text("DELETE FROM scheduled_jobs WHERE kind = :kind AND key = ANY(CAST(:keys AS text[]))")


async def schedule(
    session: AsyncSession,
    kind: str,
    key: str,
    due_at: DueAt | None = None,
    payload: Mapping[str, Any] | None = None,
    *,
    replace: bool = False,
) -> bool:
    """Schedule one job (due now when due_at is None) in the session's transaction.

    Returns whether it was written: False when a job of this kind and key exists already and replace is
    False (it keeps its time and payload). The job carries the current trace context, so its run continues
    the trace of the work that scheduled it.
    """
    written = await schedule_many(
        session, kind, {key: due_at}, None if payload is None else {key: payload}, replace=replace
    )
    return bool(written)


async def schedule_many(
    session: AsyncSession,
    kind: str,
    due: Mapping[str, DueAt | None],
    payloads: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    replace: bool = False,
) -> list[str]:
    """Schedule many jobs of one kind in one statement: key → due time (None: now), payloads by key.

    Returns the keys written (see schedule for what replace changes).
    """
    if not due:
        return []
    keys = list(due)
    ats: list[datetime | None] = []
    delays: list[float | None] = []
    for key in keys:
        at = due[key]
        if isinstance(at, timedelta):
            ats.append(None)
            delays.append(at.total_seconds())
        else:
            ats.append(at)
            delays.append(None if at is not None else 0.0)
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    rows = await session.scalars(
        _REPLACE if replace else _KEEP,
        {
            "kind": kind,
            "keys": keys,
            "ats": ats,
            "delays": delays,
            "payloads": [json_text(dict((payloads or {}).get(key, {}))) for key in keys],
            "trace": json_text(carrier),
        },
    )
    written = list(rows)
    if written:
        _note_due(session, [at for at in due.values()])
    return written


async def cancel(session: AsyncSession, kind: str, keys: str | Sequence[str]) -> int:
    """Delete jobs of a kind by key in the session's transaction (a run holding one then completes nothing);
    return how many there were."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        return 0
    result = await session.execute(_CANCEL, {"kind": kind, "keys": keys})
    return int(getattr(result, "rowcount", 0) or 0)


def _note_due(session: AsyncSession, dues: Sequence[DueAt | None]) -> None:
    now = datetime.now(UTC)
    earliest = min(now if d is None else now + d if isinstance(d, timedelta) else d for d in dues)
    current = session.info.get(_EARLIEST)
    if current is None or earliest < current:
        session.info[_EARLIEST] = earliest


def scheduled_due(session: AsyncSession) -> datetime | None:
    """The earliest due time of the jobs the session's transaction scheduled, or None; after the commit a
    worker waiting longer than that is woken (Runtime.transaction does it)."""
    value = session.info.get(_EARLIEST)
    return value if isinstance(value, datetime) else None
