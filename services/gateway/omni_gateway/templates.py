"""Templates: their versions, their variants per channel and locale, archiving, and the one call the delivery
flow makes to render a message (`Templates.content_for`).

A template is stored as versions that never change: an update stores the next version, and a message keeps
the version it was accepted with (the latest then), so it renders the same at every attempt, whatever
happens to the template meanwhile. An archived template takes no new sends; the messages already accepted
are still sent and the versions can still be read and previewed.

A template written the old way, for one channel with a subject and bodies, keeps that channel
(`StoredTemplate.channel`): its parts are its variant for that channel in the default locale
(`legacy_variant`), and are shown again from it (`legacy_parts`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from omni_gateway.domain import Channel, PermanentFailure
from omni_gateway.models import Template, TemplateVersion
from omni_gateway.providers.base import Content
from omni_gateway.rendering import Renderer, TemplateParts
from omni_gateway.repository import Repository
from omni_gateway.variants import Variant, VariantKind, choose_variant, locale_key
from omni_kit.errors import Aborted, FailedPrecondition, FieldViolation, InvalidArgument, NotFound

Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]

CHANNEL_KINDS: Mapping[Channel, VariantKind] = {
    Channel.EMAIL: VariantKind.EMAIL,
    Channel.SMS: VariantKind.SMS,
    Channel.PUSH: VariantKind.PUSH,
    # An app's notifications are pushes.
    Channel.APP: VariantKind.PUSH,
    Channel.STORE: VariantKind.TERMINAL,
    Channel.WEBHOOK: VariantKind.WEBHOOK,
}
"""The variant a channel's messages are rendered from. Web and the call centre have none."""

_CACHED_VERSIONS = 1024


def kind_of(channel: Channel | VariantKind) -> VariantKind | None:
    """The kind of variant a channel is rendered from; a VariantKind names itself."""
    if isinstance(channel, VariantKind):
        return channel
    return CHANNEL_KINDS.get(channel)


@dataclass(frozen=True)
class StoredTemplate:
    """One version of a template, with the template's state."""

    id: str
    channel: Channel | None
    """The one channel of a template written without variants; None for one written with variants."""
    version: int
    latest_version: int
    variants: tuple[Variant, ...]
    create_time: datetime
    """When the template's first version was stored."""
    update_time: datetime
    """When this version was stored."""
    archive_time: datetime | None

    @property
    def archived(self) -> bool:
        return self.archive_time is not None

    def channels(self) -> list[Channel]:
        """The channels this version can be sent on (those whose variant kind it has)."""
        kinds = set(self.kinds())
        return [channel for channel, kind in CHANNEL_KINDS.items() if kind in kinds]

    def kinds(self) -> list[VariantKind]:
        """The kinds this version has variants of, in VariantKind's order."""
        present = {v.kind for v in self.variants}
        return [kind for kind in VariantKind if kind in present]


def legacy_variant(channel: Channel, subject: str, body_text: str, body_html: str) -> Variant | None:
    """The variant a template written for one channel stands for (None for a channel without variants):
    email keeps all three parts; SMS and store the text; push and app take the subject as the title."""
    kind = kind_of(channel)
    if kind == VariantKind.EMAIL:
        return Variant(kind, "", {"subject": subject, "text": body_text, "html": body_html})
    if kind in (VariantKind.SMS, VariantKind.TERMINAL):
        return Variant(kind, "", {"text": body_text})
    if kind == VariantKind.PUSH:
        return Variant(kind, "", {"title": subject, "body": body_text})
    return None


def legacy_parts(template: StoredTemplate) -> TemplateParts:
    """The subject and bodies a template written for one channel is shown with: its channel's default variant
    (or, for a channel without variants, its first default one). Empty for a template written with variants."""
    if template.channel is None:
        return TemplateParts("", "", "")
    kind = kind_of(template.channel)
    defaults = [v for v in template.variants if not v.locale]
    chosen = next((v for v in defaults if v.kind == kind), defaults[0] if kind is None and defaults else None)
    if chosen is None:
        return TemplateParts("", "", "")
    return TemplateParts(
        subject=chosen.part("subject") or chosen.part("title"),
        body_text=chosen.part("text") or chosen.part("body"),
        body_html=chosen.part("html"),
    )


def variant_problems(variants: Sequence[Variant], renderer: Renderer) -> list[tuple[str, str]]:
    """What is wrong with a template's variants, as (path, problem): "[2].email.subject" for a part, "[3]"
    for a variant repeating a kind and locale, "" for a kind without a default variant."""
    found: list[tuple[str, str]] = []
    seen: dict[tuple[VariantKind, str], int] = {}
    for index, variant in enumerate(variants):
        key = (variant.kind, locale_key(variant.locale))
        if key in seen:
            found.append(
                (
                    f"[{index}].locale",
                    f"variants[{seen[key]}] is the {variant.kind.value} variant for this locale already",
                )
            )
        else:
            seen[key] = index
        for part, problem in renderer.variant_problems(variant).items():
            found.append((f"[{index}].{variant.kind.value}.{part}", problem))
    for kind in VariantKind:
        if any(k == kind for k, _ in seen) and (kind, "") not in seen:
            found.append(("", f"the {kind.value} variants have no default (a variant with no locale)"))
    return found


class Templates:
    """Templates in the gateway's database, and their rendering."""

    def __init__(self, *, transaction: Transaction, repository: Repository, renderer: Renderer) -> None:
        self._transaction = transaction
        self._repository = repository
        self._renderer = renderer
        # Versions never change: parsed variants are kept by (template id, version).
        self._versions: OrderedDict[tuple[str, int], tuple[Variant, ...]] = OrderedDict()

    async def create(
        self, session: AsyncSession, template_id: str, channel: Channel | None, variants: Sequence[Variant]
    ) -> StoredTemplate | None:
        """Store a new template at version 1; None if the id is taken."""
        stored = await self._repository.insert_template(
            session, template_id, channel, [v.to_json() for v in variants]
        )
        return None if stored is None else _stored(*stored)

    async def get(self, session: AsyncSession, template_id: str, version: int = 0) -> StoredTemplate:
        """A version of a template (0: the latest); NotFound if either does not exist."""
        template = await self._repository.get_template(session, template_id)
        if template is None:
            raise _not_found(template_id)
        number = version or template.version
        row = await self._repository.get_template_version(session, template_id, number)
        if row is None:
            raise NotFound(
                message=f"template {template_id!r} has no version {version}",
                reason="TEMPLATE_VERSION_NOT_FOUND",
                metadata={"template_id": template_id, "version": str(version)},
            )
        return _stored(template, row)

    async def update(
        self,
        session: AsyncSession,
        template_id: str,
        change: Callable[[StoredTemplate], Sequence[Variant]],
        *,
        expected_version: int = 0,
    ) -> StoredTemplate:
        """Store the next version, with the variants `change` makes of the latest (it may raise
        InvalidArgument); a change that changes nothing stores nothing and answers the latest. NotFound for
        an unknown template, Aborted (TEMPLATE_VERSION_CHANGED) when expected_version is set and the latest is
        another, FailedPrecondition (TEMPLATE_ARCHIVED) for an archived one."""
        template = await self._repository.get_template(session, template_id, for_update=True)
        if template is None:
            raise _not_found(template_id)
        if expected_version and expected_version != template.version:
            raise Aborted(
                message=f"template {template_id!r} is at version {template.version}, not {expected_version}",
                reason="TEMPLATE_VERSION_CHANGED",
                metadata={"template_id": template_id, "version": str(template.version)},
            )
        if template.archive_time is not None:
            raise FailedPrecondition(
                message=f"template {template_id!r} is archived",
                reason="TEMPLATE_ARCHIVED",
                metadata={"template_id": template_id},
            )
        latest_row = await self._repository.get_template_version(session, template_id, template.version)
        assert latest_row is not None
        latest = _stored(template, latest_row)
        variants = [v.to_json() for v in change(latest)]
        if variants == [v.to_json() for v in latest.variants]:
            return latest
        row = await self._repository.insert_template_version(session, template, variants)
        return _stored(template, row)

    async def archive(self, session: AsyncSession, template_id: str) -> StoredTemplate:
        """Archive a template (an archived one stays as it is) and answer its latest version."""
        template = await self._repository.archive_template(session, template_id)
        if template is None:
            raise _not_found(template_id)
        row = await self._repository.get_template_version(session, template_id, template.version)
        assert row is not None
        return _stored(template, row)

    async def page(
        self, session: AsyncSession, *, after: str | None, size: int, show_archived: bool
    ) -> list[StoredTemplate]:
        """Up to `size` templates at their latest versions, by id, after the id `after`."""
        rows = await self._repository.list_templates(
            session, after=after, size=size, show_archived=show_archived
        )
        return [_stored(template, version) for template, version in rows]

    async def sendable_version(self, session: AsyncSession, template_id: str, channel: Channel) -> int:
        """The version a new message on a channel is rendered with: the template's latest. NotFound for an
        unknown template (reason TEMPLATE_NOT_FOUND), FailedPrecondition for an archived one (reason
        TEMPLATE_ARCHIVED), InvalidArgument on template_id when it has no variant for the channel."""
        template = await self.get(session, template_id)
        if template.archived:
            raise FailedPrecondition(
                message=f"template {template_id!r} is archived and takes no new sends",
                reason="TEMPLATE_ARCHIVED",
                metadata={"template_id": template_id},
            )
        kind = kind_of(channel)
        if kind is None or kind not in template.kinds():
            raise InvalidArgument(
                message="the template has no variant for the channel",
                violations=[
                    FieldViolation(
                        "template_id", f"template {template_id!r} has no variant for {channel.value}"
                    )
                ],
            )
        return template.version

    async def content_for(
        self,
        template_id: str,
        version: int,
        channel: Channel | VariantKind,
        *,
        locale: str,
        context: Mapping[str, Any],
    ) -> Content:
        """A message's content: the template version's variant for the channel, in the locale or the nearest
        it falls back to ("de-AT" → "de" → the default), rendered with the context (rendering.
        template_context). Version 0 is the latest. A template or version that does not exist, a channel
        the version has no variant for, or a variant that fails to render is a PermanentFailure."""
        variants = await self._variants(template_id, version)
        kind = kind_of(channel)
        variant = choose_variant(variants, kind, locale) if kind is not None else None
        if variant is None:
            raise PermanentFailure(f"template {template_id!r} has no variant for {channel.value}")
        return self._renderer.render_variant(variant, context)

    def render(self, variant: Variant, context: Mapping[str, Any]) -> Content:
        """One variant rendered (a preview); PermanentFailure when it does not render."""
        return self._renderer.render_variant(variant, context)

    async def _variants(self, template_id: str, version: int) -> tuple[Variant, ...]:
        if version and (template_id, version) in self._versions:
            self._versions.move_to_end((template_id, version))
            return self._versions[(template_id, version)]
        try:
            async with self._transaction() as session:
                stored = await self.get(session, template_id, version)
        except NotFound as error:
            raise PermanentFailure(str(error)) from error
        self._versions[(template_id, stored.version)] = stored.variants
        while len(self._versions) > _CACHED_VERSIONS:
            self._versions.popitem(last=False)
        return stored.variants


def _stored(template: Template, row: TemplateVersion) -> StoredTemplate:
    return StoredTemplate(
        id=template.id,
        channel=template.channel,
        version=row.version,
        latest_version=template.version,
        variants=tuple(Variant.from_json(v) for v in row.variants),
        create_time=template.create_time,
        update_time=row.create_time,
        archive_time=template.archive_time,
    )


def _not_found(template_id: str) -> NotFound:
    return NotFound(
        message=f"template {template_id!r} not found",
        reason="TEMPLATE_NOT_FOUND",
        metadata={"template_id": template_id},
    )
