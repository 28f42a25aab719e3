"""All the gateway's SQL: templates and their versions, and messages with their idempotency key and attempt lease.

Times come from the database clock (now()), so replicas agree on leases and retry times.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from omni_gateway.domain import Channel, MessageStatus
from omni_gateway.models import Message, ReceiptRow, Suppression, Template, TemplateVersion
from omni_kit import contact

_NOW = sa.func.now()

_HANDED_OVER = [MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.BOUNCED]

FORGOTTEN = "person forgotten"
"""The error left on a forgotten person's messages that were not sent."""


class Repository:
    """Queries on the gateway's database, run in the caller's session and transaction."""

    async def get_template(
        self, session: AsyncSession, template_id: str, *, for_update: bool = False
    ) -> Template | None:
        """The template with this id (its latest version's number, its state), if any; for_update locks it
        until the transaction ends, so versions are numbered one after the other."""
        statement = sa.select(Template).where(Template.id == template_id)
        if for_update:
            statement = statement.with_for_update()
        return (await session.scalars(statement.execution_options(populate_existing=True))).one_or_none()

    async def get_template_version(
        self, session: AsyncSession, template_id: str, version: int
    ) -> TemplateVersion | None:
        """One version of a template, if it exists."""
        return await session.get(TemplateVersion, (template_id, version))

    async def insert_template(
        self, session: AsyncSession, template_id: str, channel: Channel | None, variants: list[dict[str, str]]
    ) -> tuple[Template, TemplateVersion] | None:
        """Store a new template at version 1; None when the id is taken already."""
        statement = (
            insert(Template)
            .values(id=template_id, channel=channel, version=1, create_time=_NOW, update_time=_NOW)
            .on_conflict_do_nothing(index_elements=[Template.id])
            .returning(Template)
        )
        template = (await session.scalars(statement)).one_or_none()
        if template is None:
            return None
        return template, await self._insert_version(session, template_id, 1, variants)

    async def insert_template_version(
        self, session: AsyncSession, template: Template, variants: list[dict[str, str]]
    ) -> TemplateVersion:
        """Store the next version of a template the caller holds locked (get_template(for_update=True))."""
        version = await self._insert_version(session, template.id, template.version + 1, variants)
        await session.execute(
            sa.update(Template)
            .where(Template.id == template.id)
            .values(version=version.version, update_time=version.create_time)
        )
        await session.refresh(template)
        return version

    async def _insert_version(
        self, session: AsyncSession, template_id: str, version: int, variants: list[dict[str, str]]
    ) -> TemplateVersion:
        statement = (
            insert(TemplateVersion)
            .values(template_id=template_id, version=version, variants=variants, create_time=_NOW)
            .returning(TemplateVersion)
        )
        return (await session.scalars(statement)).one()

    async def archive_template(self, session: AsyncSession, template_id: str) -> Template | None:
        """Archive a template (an archived one keeps its archive time); None if there is none."""
        statement = (
            sa.update(Template)
            .where(Template.id == template_id)
            .values(archive_time=sa.func.coalesce(Template.archive_time, _NOW))
            .returning(Template)
            .execution_options(populate_existing=True)
        )
        return (await session.scalars(statement)).one_or_none()

    async def list_templates(
        self, session: AsyncSession, *, after: str | None, size: int, show_archived: bool
    ) -> list[tuple[Template, TemplateVersion]]:
        """Up to `size` templates with their latest versions, by id, after the id `after`."""
        statement = (
            sa.select(Template, TemplateVersion)
            .join(
                TemplateVersion,
                sa.and_(
                    TemplateVersion.template_id == Template.id, TemplateVersion.version == Template.version
                ),
            )
            .order_by(Template.id)
            .limit(size)
        )
        if after is not None:
            statement = statement.where(Template.id > after)
        if not show_archived:
            statement = statement.where(Template.archive_time.is_(None))
        rows = await session.execute(statement)
        return [(template, version) for template, version in rows.all()]

    async def get_message(self, session: AsyncSession, message_id: uuid.UUID) -> Message | None:
        """The message with this id, if any."""
        return await session.get(Message, message_id, populate_existing=True)

    async def get_message_by_request(self, session: AsyncSession, request_id: str) -> Message | None:
        """The message stored for an idempotency key, if any."""
        statement = sa.select(Message).where(Message.request_id == request_id)
        return (await session.scalars(statement.execution_options(populate_existing=True))).one_or_none()

    async def insert_message(
        self,
        session: AsyncSession,
        values: dict[str, Any],
        *,
        lease: timedelta | None = None,
        status: MessageStatus = MessageStatus.QUEUED,
        error: str = "",
    ) -> Message | None:
        """Store a new message; None if its request id exists already.

        A queued message comes already claimed for its first attempt (`lease`), or, without a lease, due at
        once for the delivery attempts' job pool (no attempt made yet); a failed one (a request that can
        never be sent) is stored final, with its error and no attempt.
        """
        queued = status == MessageStatus.QUEUED
        claimed = queued and lease is not None
        statement = (
            insert(Message)
            .values(
                **values,
                status=status,
                error=error,
                attempt_count=1 if claimed else 0,
                claimed_until=_NOW + lease if claimed and lease is not None else None,
                next_attempt_at=(_NOW + lease if lease is not None else _NOW) if queued else None,
                create_time=_NOW,
                update_time=_NOW,
            )
            .on_conflict_do_nothing(index_elements=[Message.request_id])
            .returning(Message)
        )
        return (await session.scalars(statement)).one_or_none()

    async def claim(
        self, session: AsyncSession, message_id: uuid.UUID, *, lease: timedelta
    ) -> Message | None:
        """Take the lease for one more attempt of a queued message; None if it is final or leased by another.

        The next attempt time moves to the lease's end: if this attempt never reports back, the message is
        attempted again then (its scheduled job is moved with it).
        """
        statement = (
            sa.update(Message)
            .where(
                Message.id == message_id,
                Message.status == MessageStatus.QUEUED,
                sa.or_(Message.claimed_until.is_(None), Message.claimed_until <= _NOW),
            )
            .values(
                attempt_count=Message.attempt_count + 1,
                claimed_until=_NOW + lease,
                next_attempt_at=_NOW + lease,
            )
            .returning(Message)
            .execution_options(populate_existing=True)
        )
        return (await session.scalars(statement)).one_or_none()

    async def release_leases(
        self, session: AsyncSession, leases: dict[uuid.UUID, datetime]
    ) -> list[uuid.UUID]:
        """Give back leases (message id → the lease's end, as claimed) of queued messages, due at once; a
        lease that ran out and was taken by another attempt since is left alone. Return the messages."""
        if not leases:
            return []
        held = [sa.and_(Message.id == id_, Message.claimed_until == end) for id_, end in leases.items()]
        statement = (
            sa.update(Message)
            .where(Message.status == MessageStatus.QUEUED, sa.or_(*held))
            .values(claimed_until=None, next_attempt_at=_NOW)
            .returning(Message.id)
        )
        return list((await session.scalars(statement)).all())

    async def record_outcome(
        self,
        session: AsyncSession,
        message_id: uuid.UUID,
        *,
        status: MessageStatus,
        recipient: str,
        error: str,
        retry_after: timedelta | None = None,
        provider: str = "",
        provider_message_id: str = "",
        provider_details: dict[str, Any] | None = None,
    ) -> Message | None:
        """Record how an attempt ended and release the lease; retry_after schedules the next attempt.

        Only a message still QUEUED is updated: None means it was finished meanwhile (its person forgotten,
        or a stalled attempt's lease taken over), and the outcome must not be recorded nor announced. A SENT
        message whose receipt came before this (an SMSC answering at once) is what the receipt said: BOUNCED
        after a failed or bounced one, else DELIVERED after a delivery receipt.
        """
        outcome: Any = status
        if status == MessageStatus.SENT:
            # A receipt being recorded holds the row: wait for it, so the next statement (a new snapshot)
            # sees the receipt it committed.
            await session.execute(sa.select(Message.id).where(Message.id == message_id).with_for_update())
            failed_already = sa.exists().where(
                ReceiptRow.message_id == message_id, ReceiptRow.kind.in_(["failed", "bounced"])
            )
            outcome = sa.case(
                (failed_already, sa.literal(MessageStatus.BOUNCED, Message.status.type)),
                (Message.delivered_at.is_not(None), sa.literal(MessageStatus.DELIVERED, Message.status.type)),
                else_=sa.literal(MessageStatus.SENT, Message.status.type),
            )
        statement = (
            sa.update(Message)
            .where(Message.id == message_id, Message.status == MessageStatus.QUEUED)
            .values(
                status=outcome,
                recipient=recipient,
                error=error,
                claimed_until=None,
                next_attempt_at=None if retry_after is None else _NOW + retry_after,
                update_time=_NOW,
                provider=provider,
                provider_message_id=provider_message_id,
                provider_details=provider_details or {},
                attempt_provider="",
                attempt_started_at=None,
            )
            .returning(Message)
            .execution_options(populate_existing=True)
        )
        return (await session.scalars(statement)).one_or_none()

    async def mark_attempt(
        self, session: AsyncSession, message_id: uuid.UUID, *, provider: str, recipient: str
    ) -> None:
        """Record, before calling it, that an attempt hands a queued message to this provider and address."""
        await session.execute(
            sa.update(Message)
            .where(Message.id == message_id, Message.status == MessageStatus.QUEUED)
            .values(attempt_provider=provider, attempt_started_at=_NOW, recipient=recipient)
        )

    async def is_suppressed_for(self, session: AsyncSession, channel: str, key: bytes) -> list[str]:
        """The reasons an address (its suppression key) is suppressed for on a channel."""
        statement = sa.select(Suppression.reason).where(
            Suppression.channel == channel, Suppression.address_hash == key
        )
        return list((await session.scalars(statement)).all())

    async def suppress(
        self,
        session: AsyncSession,
        *,
        channel: str,
        key: bytes,
        reason: str,
        provider: str = "",
        message_id: uuid.UUID | None = None,
    ) -> bool:
        """Put an address on the suppression list for a reason; False if it was there for it already."""
        statement = (
            insert(Suppression)
            .values(
                channel=channel, address_hash=key, reason=reason, provider=provider, message_id=message_id
            )
            .on_conflict_do_nothing()
            .returning(Suppression.reason)
        )
        return (await session.scalars(statement)).one_or_none() is not None

    async def recipients_of(
        self, session: AsyncSession, person_ids: list[uuid.UUID]
    ) -> list[tuple[str, str]]:
        """The (channel, address) pairs the messages of these persons went to."""
        statement = (
            sa.select(Message.channel, Message.recipient)
            .where(Message.person_id.in_(person_ids), Message.recipient != "")
            .distinct()
        )
        return [
            (str(getattr(channel, "value", channel)), recipient)
            for channel, recipient in await session.execute(statement)
        ]

    async def insert_receipt(self, session: AsyncSession, values: dict[str, Any]) -> bool:
        """Store a receipt once per (provider, provider_event_id); False for a repeat."""
        statement = (
            insert(ReceiptRow)
            .values(**values)
            .on_conflict_do_nothing(index_elements=[ReceiptRow.provider, ReceiptRow.provider_event_id])
            .returning(ReceiptRow.provider)
        )
        return (await session.scalars(statement)).one_or_none() is not None

    async def find_message(
        self,
        session: AsyncSession,
        *,
        message_id: uuid.UUID | None,
        provider: str,
        provider_message_id: str,
    ) -> Message | None:
        """The message a receipt names: by Omni's id, else by the provider's id for it; locked for update."""
        if message_id is not None:
            statement = sa.select(Message).where(Message.id == message_id)
        elif provider_message_id:
            statement = sa.select(Message).where(
                Message.provider == provider, Message.provider_message_id == provider_message_id
            )
        else:
            return None
        statement = statement.with_for_update().execution_options(populate_existing=True)
        return (await session.scalars(statement)).first()

    async def forget_persons(self, session: AsyncSession, person_ids: list[uuid.UUID]) -> int:
        """Redact the messages of these persons and end the unsent ones; the number of messages touched.

        The rows stay, holding the request id and fingerprint, so a replayed request is answered from them
        and never sent; what could identify or describe the person (address, variables, errors that may
        quote the address, the trace of the request) is wiped. QUEUED messages become FAILED. The persons'
        contact verdicts are forgotten (a tombstone keeps a late announcement out).
        """
        if not person_ids:
            return 0
        await contact.forget(session, person_ids)
        statement = (
            sa.update(Message)
            .where(Message.person_id.in_(person_ids))
            .values(
                status=sa.case(
                    (Message.status == MessageStatus.QUEUED, MessageStatus.FAILED.value),
                    else_=Message.status,
                ),
                recipient="",
                variables=sa.cast(sa.literal("{}"), JSONB),
                trace_context=sa.cast(sa.literal("{}"), JSONB),
                # A message handed to a provider has no error; any other may quote the address in one.
                error=sa.case((Message.status.in_(_HANDED_OVER), ""), else_=FORGOTTEN),
                claimed_until=None,
                next_attempt_at=None,
                update_time=_NOW,
            )
        )
        result = await session.execute(statement)
        # A receipt's detail may quote the address (a DSN's diagnostic).
        await session.execute(
            sa.update(ReceiptRow)
            .where(ReceiptRow.message_id.in_(sa.select(Message.id).where(Message.person_id.in_(person_ids))))
            .values(detail="")
        )
        return int(getattr(result, "rowcount", 0) or 0)
