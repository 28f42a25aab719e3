"""The GatewayService servicer: validates requests, translates protobuf ⇄ domain, owns the transactions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc

from omni.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from omni_gateway.contacts import Contacts
from omni_gateway.delivery import Delivery, Transaction
from omni_gateway.domain import Channel, PermanentFailure, TransientFailure
from omni_gateway.rendering import Renderer, TemplateParts, template_context
from omni_gateway.repository import Repository
from omni_gateway.template_requests import (
    LEGACY_FIELDS,
    change_one_channel,
    check_one_channel,
    check_template_size,
    check_update,
    request_variants,
)
from omni_gateway.templates import (
    StoredTemplate,
    Templates,
    kind_of,
    legacy_variant,
    variant_problems,
)
from omni_gateway.terminals.stream import TerminalStreams
from omni_gateway.variants import Variant, choose_variant, locale_of
from omni_gateway.wire import (
    channel_from_proto,
    check_variables,
    content_to_proto,
    message_to_proto,
    parse_send_request,
    struct_to_dict,
    template_to_proto,
)
from omni_kit import paging, validation
from omni_kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from omni_kit.idempotency import idempotent

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_TEMPLATES_PAGE = "templates"


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Templates and messages over gRPC; sending itself is the Delivery's."""

    def __init__(
        self,
        *,
        transaction: Transaction,
        repository: Repository,
        renderer: Renderer,
        delivery: Delivery,
        templates: Templates,
        contacts: Contacts,
        terminals: TerminalStreams | None = None,
    ) -> None:
        self._terminals = terminals
        self._transaction = transaction
        self._repository = repository
        self._renderer = renderer
        self._delivery = delivery
        self._templates = templates
        self._contacts = contacts

    async def CreateTemplate(
        self, request: gateway_pb2.CreateTemplateRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CreateTemplateResponse:
        """Store a template at version 1 after checking its id and content, once per request id; the id must
        be new. Written with variants, or the old way for one channel (subject and bodies, made its variant)."""
        violations = check_template_size(request.template)
        if not violations:
            validation.check(request, violations)
        if not request.HasField("template"):
            violations.raise_if_any("the template is missing")
        template = request.template
        channel: Channel | None = None
        variants: list[Variant] = []
        if template.variants:
            for name in ("subject", "body_text", "body_html"):
                if getattr(template, name):
                    violations.add(
                        f"template.{name}", "leave empty when giving variants (a variant has its parts)"
                    )
            if template.channel:
                violations.add("template.channel", "leave unspecified when giving variants")
            if not violations:
                variants = request_variants(template, self._renderer, violations)
        else:
            channel = channel_from_proto(template.channel)
            if channel is None:
                violations.add("template.channel", "required (or give variants)")
            parts = TemplateParts(template.subject, template.body_text, template.body_html)
            check_one_channel(channel, parts, set(LEGACY_FIELDS), self._renderer, violations)
            if channel is not None and not violations:
                variant = legacy_variant(channel, template.subject, template.body_text, template.body_html)
                assert variant is not None  # check_one_channel refused channels without variants
                variants = [variant]
        violations.raise_if_any("the template is not valid")
        async with self._transaction() as session:

            async def create() -> gateway_pb2.CreateTemplateResponse:
                stored = await self._templates.create(session, template.id, channel, variants)
                if stored is None:
                    raise AlreadyExists(
                        message=f"template {template.id!r} exists already",
                        metadata={"template_id": template.id},
                    )
                return gateway_pb2.CreateTemplateResponse(template=template_to_proto(stored))

            return await idempotent(
                session,
                "CreateTemplate",
                request.request_id,
                request,
                gateway_pb2.CreateTemplateResponse,
                create,
            )

    async def GetTemplate(
        self, request: gateway_pb2.GetTemplateRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetTemplateResponse:
        """Return a template's latest version, or the version asked for (archived templates too)."""
        validation.validate(request)
        async with self._transaction() as session:
            template = await self._templates.get(session, request.template_id, request.version)
        return gateway_pb2.GetTemplateResponse(template=template_to_proto(template))

    async def UpdateTemplate(
        self, request: gateway_pb2.UpdateTemplateRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.UpdateTemplateResponse:
        """Store the next version of a template with the fields the mask names changed, once per request id;
        an update that changes nothing answers the latest version."""
        paths, violations = check_update(request)
        if not request.HasField("template"):
            violations.raise_if_any("the template is missing")
        template = request.template
        new_variants: list[Variant] | None = None
        if "variants" in paths and not violations:
            new_variants = request_variants(template, self._renderer, violations)
            if not template.variants:
                violations.add("template.variants", "a template needs at least one variant")
        legacy_fields = paths & set(LEGACY_FIELDS)
        violations.raise_if_any("the template is not valid")

        def change(latest: StoredTemplate) -> list[Variant]:
            variants = list(latest.variants) if new_variants is None else new_variants
            if legacy_fields:
                variants = change_one_channel(latest, variants, template, legacy_fields, self._renderer)
            problems = variant_problems(variants, self._renderer)
            if problems:
                raise InvalidArgument(
                    message="the template is not valid",
                    violations=[
                        FieldViolation(f"template.variants{path}", problem) for path, problem in problems
                    ],
                )
            return variants

        async with self._transaction() as session:

            async def update() -> gateway_pb2.UpdateTemplateResponse:
                stored = await self._templates.update(
                    session, template.id, change, expected_version=request.expected_version
                )
                return gateway_pb2.UpdateTemplateResponse(template=template_to_proto(stored))

            return await idempotent(
                session,
                "UpdateTemplate",
                request.request_id,
                request,
                gateway_pb2.UpdateTemplateResponse,
                update,
            )

    async def ListTemplates(
        self, request: gateway_pb2.ListTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListTemplatesResponse:
        """A page of templates at their latest versions, by id; archived ones only when asked for."""
        violations = validation.check(request)
        after: str | None = None
        if request.page_token:
            try:
                position = paging.unpack(request.page_token, _TEMPLATES_PAGE)
                after = position.get("a")
                if not isinstance(after, str) or position.get("s") != request.show_archived:
                    raise paging.PageTokenError("not for this list")
            except paging.PageTokenError:
                violations.add("page_token", "not a token from an earlier page of this list")
        violations.raise_if_any()
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        async with self._transaction() as session:
            templates = await self._templates.page(
                session, after=after, size=size + 1, show_archived=request.show_archived
            )
        response = gateway_pb2.ListTemplatesResponse(
            templates=[template_to_proto(t) for t in templates[:size]]
        )
        if len(templates) > size:
            response.next_page_token = paging.pack(
                _TEMPLATES_PAGE, {"a": templates[size - 1].id, "s": request.show_archived}
            )
        return response

    async def ArchiveTemplate(
        self, request: gateway_pb2.ArchiveTemplateRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ArchiveTemplateResponse:
        """Archive a template: new sends are refused, its messages and versions stay readable."""
        validation.validate(request)
        async with self._transaction() as session:

            async def archive() -> gateway_pb2.ArchiveTemplateResponse:
                template = await self._templates.archive(session, request.template_id)
                return gateway_pb2.ArchiveTemplateResponse(template=template_to_proto(template))

            return await idempotent(
                session,
                "ArchiveTemplate",
                request.request_id,
                request,
                gateway_pb2.ArchiveTemplateResponse,
                archive,
            )

    async def RenderPreview(
        self, request: gateway_pb2.RenderPreviewRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.RenderPreviewResponse:
        """Render a template's variants for a person (traits and cart from profile) or sample values; nothing
        is sent or stored. A variant that fails to render is answered with its error."""
        violations = validation.check(request)
        for name in ("variables", "traits"):
            check_variables(getattr(request, name), name, violations)
        if request.person_id and request.traits.fields:
            violations.add(
                "traits", "sample traits are for a preview without a person (leave person_id empty)"
            )
        violations.raise_if_any()
        async with self._transaction() as session:
            template = await self._templates.get(session, request.template_id, request.version)
        channel = channel_from_proto(request.channel)
        if channel is None:
            kinds = template.kinds()
        else:
            kind = kind_of(channel)
            assert kind is not None  # the proto's rules
            if kind not in template.kinds():
                raise InvalidArgument(
                    message="the template has no variant for the channel",
                    violations=[
                        FieldViolation(
                            "channel",
                            f"template {template.id!r} version {template.version} has no variant for "
                            f"{channel.value}",
                        )
                    ],
                )
            kinds = [kind]
        if request.person_id:
            try:
                data = await self._contacts.data_of(uuid.UUID(request.person_id))
            except TransientFailure as failure:
                raise Unavailable(message=f"the person's profile cannot be read now: {failure}") from failure
            except PermanentFailure as failure:
                raise FailedPrecondition(
                    message=f"the person's profile cannot be read: {failure}"
                ) from failure
            traits, cart = data.traits, data.cart
        else:
            traits, cart = struct_to_dict(request.traits), []
        locale = request.locale or locale_of(traits)
        render_context = template_context(
            person_id=request.person_id, traits=traits, cart=cart, variables=struct_to_dict(request.variables)
        )
        response = gateway_pb2.RenderPreviewResponse(version=template.version, locale=locale)
        for kind in kinds:
            variant = choose_variant(template.variants, kind, locale)
            assert variant is not None  # every kind has a default variant
            try:
                content = self._templates.render(variant, render_context)
            except PermanentFailure as failure:
                response.variants.append(content_to_proto(None, kind, variant.locale, str(failure)))
            else:
                response.variants.append(content_to_proto(content, kind, variant.locale))
        return response

    async def SendMessage(
        self, request: gateway_pb2.SendMessageRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.SendMessageResponse:
        """Send once per request id; the answer is the message as it stands (SENT, FAILED or QUEUED)."""
        send = parse_send_request(request)
        # Transactions are the delivery's: the message is committed before the SMTP conversation.
        message = await self._delivery.send(send)
        return gateway_pb2.SendMessageResponse(message=message_to_proto(message))

    async def GetMessage(
        self, request: gateway_pb2.GetMessageRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetMessageResponse:
        """Return a message and its status."""
        validation.validate(request)
        message_id = uuid.UUID(request.message_id)
        async with self._transaction() as session:
            message = await self._repository.get_message(session, message_id)
        if message is None:
            raise NotFound(
                message=f"message {request.message_id} not found",
                reason="MESSAGE_NOT_FOUND",
                metadata={"message_id": str(message_id)},
            )
        return gateway_pb2.GetMessageResponse(message=message_to_proto(message))

    def ConnectTerminal(
        self,
        request_iterator: AsyncIterator[gateway_pb2.ConnectTerminalRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[gateway_pb2.ConnectTerminalResponse]:
        """A till's stream (terminals.stream)."""
        if self._terminals is None:
            raise FailedPrecondition(message="store terminals are not served here", reason="NO_TERMINALS")
        return self._terminals.connect(request_iterator, context)
