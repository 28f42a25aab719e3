"""The GatewayService servicer: validates requests, translates protobuf ⇄ domain, owns the transactions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc

from omni.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from omni_gateway.delivery import Delivery, Transaction
from omni_gateway.domain import Channel
from omni_gateway.rendering import Renderer, TemplateParts
from omni_gateway.repository import Repository
from omni_gateway.terminals.stream import TerminalStreams
from omni_gateway.wire import channel_from_proto, message_to_proto, parse_send_request, template_to_proto
from omni_kit import validation
from omni_kit.errors import AlreadyExists, FailedPrecondition, NotFound
from omni_kit.idempotency import idempotent


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Templates and messages over gRPC; sending itself is the Delivery's."""

    def __init__(
        self,
        *,
        transaction: Transaction,
        repository: Repository,
        renderer: Renderer,
        delivery: Delivery,
        terminals: TerminalStreams | None = None,
    ) -> None:
        self._terminals = terminals
        self._transaction = transaction
        self._repository = repository
        self._renderer = renderer
        self._delivery = delivery

    async def CreateTemplate(
        self, request: gateway_pb2.CreateTemplateRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CreateTemplateResponse:
        """Store a template after checking its id, channel and Liquid, once per request id; the id must be
        new."""
        violations = validation.check(request)
        if not request.HasField("template"):
            violations.raise_if_any("the template is missing")
        template = request.template
        # What gateway.proto cannot say: a subject is required for email alone, and the Liquid must parse.
        channel = channel_from_proto(template.channel)
        if channel == Channel.EMAIL and not template.subject.strip():
            violations.add("template.subject", "required for email")
        if not violations:
            parts = TemplateParts(template.subject, template.body_text, template.body_html)
            for name, problem in self._renderer.problems(parts).items():
                violations.add(f"template.{name}", problem)
        violations.raise_if_any("the template is not valid")
        assert channel is not None  # the proto's rules
        async with self._transaction() as session:

            async def create() -> gateway_pb2.CreateTemplateResponse:
                stored = await self._repository.insert_template(
                    session,
                    {
                        "id": template.id,
                        "channel": channel,
                        "subject": template.subject,
                        "body_text": template.body_text,
                        "body_html": template.body_html,
                    },
                )
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
        """Return a template by id."""
        validation.validate(request)
        async with self._transaction() as session:
            template = await self._repository.get_template(session, request.template_id)
        if template is None:
            raise NotFound(
                message=f"template {request.template_id!r} not found",
                reason="TEMPLATE_NOT_FOUND",
                metadata={"template_id": request.template_id},
            )
        return gateway_pb2.GetTemplateResponse(template=template_to_proto(template))

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
