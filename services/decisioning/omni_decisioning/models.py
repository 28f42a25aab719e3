"""Decisioning's tables: journeys, offers, the read models fed by events, journey runs and the decision log.

Where merged ids lead, and the tombstones of forgotten ones, are in omni_kit.lineage's person_lineage."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from omni_kit import contact


class Base(DeclarativeBase):
    """Declarative base of decisioning's own tables (the outbox and inbox come from omni_kit)."""


class JourneyRow(Base):
    """A journey. A one-message journey (no draft or versions): on entering its trigger segment, send its
    template on the first channel profile's verdict allows marketing on. A multi-step journey: its draft, its
    lifecycle state and where its latest published version is entered (journey_versions holds the versions)."""

    __tablename__ = "journeys"
    __table_args__ = (
        sa.Index(
            "journeys_by_entry_event",
            "entry_event_type",
            postgresql_where=sa.text("entry_event_type IS NOT NULL"),
        ),
        sa.Index(
            "journeys_by_entry_segment",
            "entry_segment_id",
            postgresql_where=sa.text("entry_segment_id IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    trigger_segment_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True, nullable=True)
    # omni.common.v1.Channel numbers, best first.
    channels: Mapped[list[int] | None] = mapped_column(ARRAY(sa.SmallInteger), nullable=True)
    template_id: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    create_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    multi_step: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    # draft, published, paused or archived (a one-message journey: published).
    state: Mapped[str] = mapped_column(sa.Text, server_default="published")
    # The latest published version (0: never published).
    version: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    # The draft's JourneySpec (protobuf JSON), or NULL without one.
    draft: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    update_time: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    # Where the latest published version is entered (one of them set): for finding the journeys an event or a
    # segment entry starts.
    entry_segment_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    entry_event_type: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # The event types the latest published version reacts to or looks back at (kept in journey_person_events).
    event_types: Mapped[list[str] | None] = mapped_column(ARRAY(sa.Text), nullable=True)


class OfferRow(Base):
    """An offer that Decide may return."""

    __tablename__ = "offers"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    description: Mapped[str] = mapped_column(sa.Text)
    # Empty means every touchpoint.
    touchpoints: Mapped[list[str]] = mapped_column(ARRAY(sa.Text))
    segment_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    priority: Mapped[int] = mapped_column(sa.Integer)
    create_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    group: Mapped[str] = mapped_column(sa.Text, server_default="")
    valid_from: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    valid_until: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    version: Mapped[int] = mapped_column(sa.BigInteger, server_default="1")
    update_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    archive_time: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


class OfferVersionRow(Base):
    """An offer as one of its versions made it (the history of the offer)."""

    __tablename__ = "offer_versions"

    offer_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    version: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    offer: Mapped[dict[str, Any]] = mapped_column(JSONB, comment="The offer as this version made it.")
    update_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class ContactLogRow(Base):
    """A marketing send counted against the contact policy's caps (contact_policy.py)."""

    __tablename__ = "contact_log"
    __table_args__ = (sa.Index("contact_log_person", "person_id", "contacted_at"),)

    request_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    channel: Mapped[int] = mapped_column(sa.SmallInteger)
    contacted_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    source: Mapped[str] = mapped_column(sa.Text, comment="journey (requested here) or gateway (sent)")


class OfferCatalogRow(Base):
    """One row: the version of the offers, raised by every change to them (replicas' caches compare it)."""

    __tablename__ = "offer_catalog"
    __table_args__ = (sa.CheckConstraint("id = 1", name="offer_catalog_one_row"),)

    id: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, server_default="1")
    version: Mapped[int] = mapped_column(sa.BigInteger)


class MembershipRow(Base):
    """Read model of segmentation: whether a person is in a segment, as of the newest event seen."""

    __tablename__ = "memberships"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    segment_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    # Exits are kept as rows (is_member false) so an older "entered" arriving late cannot undo them.
    is_member: Mapped[bool] = mapped_column(sa.Boolean)
    as_of: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


contact_verdicts = contact.define_table(Base.metadata)
"""Read model of profile: its contact verdicts as last announced (omni_kit.contact), which journeys choose
channels by."""


class JourneyRunRow(Base):
    """One start (or refused start) of a journey for a person, caused by one segment-entry event."""

    __tablename__ = "journey_runs"
    __table_args__ = (
        sa.UniqueConstraint("journey_id", "person_id", "trigger_event_id", name="journey_runs_trigger_key"),
        sa.Index("journey_runs_by_person", "journey_id", "person_id", "trigger_time"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    journey_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("journeys.id"))
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    trigger_event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    # When the person entered the segment (the triggering event's occurred_at).
    trigger_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    # "send_requested", "no_consented_channel" or "suppressed_reentry".
    outcome: Mapped[str] = mapped_column(sa.Text)
    channel: Mapped[int | None] = mapped_column(sa.SmallInteger, nullable=True)
    request_id: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    create_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    # The person the run was for, when a merge has moved it to another (the first, through a chain of
    # merges); NULL when it is with that person. An unmerge of that person gives the run back.
    origin_person_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)


class DecisionRow(Base):
    """The decision log: what Decide answered, for learning and attribution."""

    __tablename__ = "decisions"
    __table_args__ = (sa.Index("ix_decisions_touchpoint_create_time", "touchpoint", "create_time"),)

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    touchpoint: Mapped[str] = mapped_column(sa.Text)
    channel: Mapped[int] = mapped_column(sa.SmallInteger)
    context: Mapped[dict[str, Any]] = mapped_column(JSONB)
    offer_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(sa.Uuid))
    create_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    # Every eligible offer with its score, rank and propensities (learning/decision_log.py), the deciding
    # policy and the learning version it used (migration 0010).
    candidates: Mapped[list[Any]] = mapped_column(JSONB, server_default="[]")
    policy: Mapped[str] = mapped_column(sa.Text, server_default="priority")
    model_version: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")


class OutcomeRow(Base):
    """An outcome of a chosen action (impression, click, conversion), once per outcome id (migration 0010)."""

    __tablename__ = "outcomes"

    outcome_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    decision_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    offer_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    type: Mapped[int] = mapped_column(sa.SmallInteger)
    value: Mapped[float] = mapped_column(sa.Float)
    occur_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    create_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class OutcomeCountRow(Base):
    """What an offer's Beta posterior at a touchpoint is made of."""

    __tablename__ = "outcome_counts"

    offer_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    touchpoint: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    impressions: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    clicks: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    conversions: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    value: Mapped[float] = mapped_column(sa.Float, server_default="0")


class LearningPolicyRow(Base):
    """A touchpoint's learning policy (learning/policy.py's JSON form)."""

    __tablename__ = "learning_policies"

    touchpoint: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    policy: Mapped[dict[str, Any]] = mapped_column(JSONB)
    update_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class LearningStateRow(Base):
    """One row: the learning policies' version, raised by every change (Decide reloads on a new one)."""

    __tablename__ = "learning_state"
    __table_args__ = (sa.CheckConstraint("id = 1", name="learning_state_one_row"),)

    id: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, server_default="1")
    version: Mapped[int] = mapped_column(sa.BigInteger)


class JourneyVersionRow(Base):
    """A published version of a multi-step journey: immutable."""

    __tablename__ = "journey_versions"

    journey_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("journeys.id"), primary_key=True)
    version: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    # The JourneySpec as protobuf JSON.
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    publish_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class FlowRunRow(Base):
    """One person's run through a multi-step journey: where it is and what it carries."""

    __tablename__ = "journey_flow_runs"
    __table_args__ = (
        sa.UniqueConstraint("journey_id", "person_id", "trigger_id", name="journey_flow_runs_trigger_key"),
        sa.Index("journey_flow_runs_by_person", "person_id", "journey_id", "key"),
        sa.Index("journey_flow_runs_active", "journey_id", postgresql_where=sa.text("state = 'active'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    journey_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("journeys.id"))
    version: Mapped[int] = mapped_column(sa.BigInteger)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    # The keyed re-entry key ('' when the journey is not keyed).
    key: Mapped[str] = mapped_column(sa.Text)
    # What started it: a segment-entry or event id, a TriggerJourney request id.
    trigger_id: Mapped[str] = mapped_column(sa.Text)
    # active, completed or exited.
    state: Mapped[str] = mapped_column(sa.Text)
    current_step: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    due_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    # Per step id, how often the run took it (the attempt key of a message's request id).
    visits: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # The trigger's properties and what steps passed on (the offer a decide step chose).
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    start_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    end_time: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class FlowRunStepRow(Base):
    """A step a run took: when, what came of it and why."""

    __tablename__ = "journey_flow_steps"

    run_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("journey_flow_runs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    step_id: Mapped[str] = mapped_column(sa.Text)
    kind: Mapped[str] = mapped_column(sa.Text)
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    outcome: Mapped[str] = mapped_column(sa.Text)
    detail: Mapped[str] = mapped_column(sa.Text)
    next_step: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class PersonEventRow(Base):
    """Read model of profile: the tracked events multi-step journeys look back at (an event in a window), of the
    types their published versions name."""

    __tablename__ = "journey_person_events"
    __table_args__ = (sa.Index("journey_person_events_by_type", "person_id", "type", "occurred_at"),)

    event_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    type: Mapped[str] = mapped_column(sa.Text)
    occurred_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB)


class PersonTraitsRow(Base):
    """Read model of profile: a person's traits as last announced (conditions, waits until a trait's date, the
    person's time zone)."""

    __tablename__ = "journey_person_traits"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    traits: Mapped[dict[str, Any]] = mapped_column(JSONB)
    as_of: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
