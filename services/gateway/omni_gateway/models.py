"""The gateway's tables: templates and their versions, the message log (one row per request id) and the copy of profile's contact
verdicts (omni_kit.contact)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from omni_gateway.domain import Channel, MessageStatus, Purpose
from omni_kit import contact


def _enum(enum: type[StrEnum]) -> sa.Enum:
    # Stored as the lower-case values ("email", "queued") in a text column; the migration adds the checks.
    return sa.Enum(enum, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    """The gateway's own declarative base."""


class Template(Base):
    """A template, named by the caller: which version is the latest, and whether it is archived.

    `channel` is set for a template written for one channel the old way (subject and bodies), whose parts are
    its variant for that channel; NULL for a template written with variants. `update_time` is when the latest
    version was stored.
    """

    __tablename__ = "templates"

    id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    channel: Mapped[Channel | None] = mapped_column(_enum(Channel), nullable=True)
    version: Mapped[int] = mapped_column(sa.Integer)
    create_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    archive_time: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


class TemplateVersion(Base):
    """One version of a template, never changed once stored: its variants, each a JSON object with its kind,
    locale and parts (rendering.Variant.to_json)."""

    __tablename__ = "template_versions"

    template_id: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("templates.id"), primary_key=True)
    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    variants: Mapped[list[dict[str, str]]] = mapped_column(JSONB)
    create_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class Message(Base):
    """One message to one person; request_id is the caller's idempotency key.

    `fingerprint` is a hash of what was asked (person, channel, template, variables, purpose: wire.
    send_fingerprint, omni_kit.idempotency's hash), so a reused key with other content is refused. The row is
    the record of what its request id did, kept after an erasure (redacted) and beyond omni_kit's retention,
    so a replay is answered from it and never sent again (README, "Sending, once"). `purpose` decides which consent the send needs. `claimed_until` is
    the lease of the attempt in progress: while it lies in the future no one else starts an attempt, and if
    the attempt's process dies the lease runs out and its scheduled job (omni_kit.scheduler, kind
    gateway.delivery_attempt) takes the message up again. `next_attempt_at` is when that job is due.
    """

    __tablename__ = "messages"
    __table_args__ = (
        sa.Index("messages_person", "person_id", "create_time"),
        sa.Index(
            "messages_provider_message",
            "provider",
            "provider_message_id",
            postgresql_where=sa.text("provider_message_id <> ''"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    request_id: Mapped[str] = mapped_column(sa.Text, unique=True)
    fingerprint: Mapped[bytes] = mapped_column(sa.LargeBinary)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    channel: Mapped[Channel] = mapped_column(_enum(Channel))
    template_id: Mapped[str] = mapped_column(sa.Text)
    # The template version the message is rendered with (the latest when it was accepted); 0 for none.
    template_version: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    variables: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    journey_id: Mapped[str] = mapped_column(sa.Text, default="")
    purpose: Mapped[Purpose] = mapped_column(_enum(Purpose), default=Purpose.MARKETING)
    # The contact verdict version the sender decided by (SendRequest.contact_verdict_version); 0 for none.
    contact_verdict_version: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    recipient: Mapped[str] = mapped_column(sa.Text, default="")
    status: Mapped[MessageStatus] = mapped_column(_enum(MessageStatus))
    error: Mapped[str] = mapped_column(sa.Text, default="")
    attempt_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    trace_context: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    # The provider instance that took the message ("smtp", "smtp-backup"), its id for it and what it said.
    provider: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    provider_message_id: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    provider_details: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=sa.text("'{}'::jsonb")
    )
    # The provider an attempt handed the message to, recorded before the call and cleared with the outcome:
    # set on a queued message, it says an attempt may have reached that provider before its process died.
    attempt_provider: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    attempt_started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    # The first delivery receipt, and the first (human) open and click reported.
    delivered_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    opened_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    clicked_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    create_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class ReceiptRow(Base):
    """An outcome a provider reported after the send, once per (provider, provider_event_id): providers
    repeat themselves, and a repeat changes nothing. message_id is None when no message was found."""

    __tablename__ = "receipts"
    __table_args__ = (sa.Index("receipts_message", "message_id"),)

    provider: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    provider_event_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    message_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    occurred_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    detail: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    machine: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())


class Suppression(Base):
    """An address not to send to on a channel, for a reason, since when. The address is kept as the SHA-256 of
    its normalised form (suppression.address_hash): the list holds no personal data and outlives erasures."""

    __tablename__ = "suppressions"

    channel: Mapped[Channel] = mapped_column(_enum(Channel), primary_key=True)
    address_hash: Mapped[bytes] = mapped_column(sa.LargeBinary, primary_key=True)
    reason: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    since: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    provider: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    message_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)


contact_verdicts = contact.define_table(Base.metadata)
"""Profile's contact verdicts as last announced, fed by profile.contact_verdict_changed (omni_kit.contact)."""


class TerminalMessage(Base):
    """A store-channel message waiting for its person to be at a till (providers/terminal.py).

    A message goes to whichever till the person is identified at (`store_id` NULL: any store), and is then
    delivered to that till (`delivered_store_id`, `delivered_terminal_id`) until the till acknowledges it
    (`acked_at`, final) or it expires unacknowledged (`expired_at`, final). A till that reconnects is sent its
    delivered, unacknowledged messages again; a message delivered to a till that the person left unacknowledged
    waits again. `person_id` is the id the message was sent to (a person merged later is found through
    person_lineage).
    """

    __tablename__ = "terminal_messages"
    __table_args__ = (
        sa.Index(
            "terminal_messages_waiting",
            "person_id",
            postgresql_where=sa.text("acked_at IS NULL AND expired_at IS NULL"),
        ),
        sa.Index(
            "terminal_messages_delivered",
            "delivered_store_id",
            "delivered_terminal_id",
            postgresql_where=sa.text("acked_at IS NULL AND expired_at IS NULL"),
        ),
        sa.Index(
            "terminal_messages_expiry",
            "expires_at",
            postgresql_where=sa.text("acked_at IS NULL AND expired_at IS NULL"),
        ),
        sa.Index("terminal_messages_acked", "delivered_store_id", "delivered_terminal_id", "acked_at"),
    )

    message_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    store_id: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    text: Mapped[str] = mapped_column(sa.Text)
    create_time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    delivered_store_id: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    delivered_terminal_id: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    delivery_count: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    acked_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
