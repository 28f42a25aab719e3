"""Builds the store-terminal parts on a service's runtime (called from main)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from omni.decisioning.v1 import decisioning_pb2_grpc
from omni.identity.v1 import identity_pb2_grpc
from omni_gateway.providers.terminal import TerminalProvider, keep_terminal_messages_expiring
from omni_gateway.terminals.hub import TerminalHub, waiting_subject
from omni_gateway.terminals.identify import Recognition
from omni_gateway.terminals.settings import TerminalSettings
from omni_gateway.terminals.store import TerminalMessages
from omni_gateway.terminals.stream import TerminalStreams
from omni_kit.grpc_client import channel
from omni_kit.runtime import Runtime


async def start_terminals(
    runtime: Runtime, settings: TerminalSettings, identity: identity_pb2_grpc.IdentityServiceAsyncStub
) -> TerminalStreams:
    """The store channel's provider, its expiry job, the hub of open till streams (listening to the other
    replicas) and the ConnectTerminal conversation; the provider is `streams.provider`, to be started with
    the delivery flow's receipt sink."""
    decisioning = decisioning_pb2_grpc.DecisioningServiceStub(
        runtime.track_channel(
            channel(
                settings.decisioning_target,
                service="omni.decisioning.v1.DecisioningService",
                # Decide logs a decision and announces it: not retried, a till does not wait for a retry.
                timeout_s=settings.terminal_call_timeout_s,
                security=runtime.client_security,
            )
        )
    )
    hub = TerminalHub(max_streams=settings.terminal_max_streams)
    messages = TerminalMessages()
    provider = TerminalProvider(
        transaction=runtime.transaction,
        messages=messages,
        announce=hub.announce,
        ttl_s=settings.terminal_message_ttl_s,
    )
    await keep_terminal_messages_expiring(
        runtime, provider, timedelta(seconds=settings.terminal_expiry_interval_s)
    )
    await hub.listen(runtime.nats, waiting_subject(settings.event_namespace))
    runtime.on_close(hub.stop)
    recognition = Recognition(
        identity,
        decisioning,  # type: ignore[arg-type]
        touchpoint=settings.terminal_touchpoint,
        offer_limit=settings.terminal_offer_limit,
        timeout_s=settings.terminal_call_timeout_s,
    )

    @contextlib.asynccontextmanager
    async def autocommit() -> AsyncIterator[AsyncConnection]:
        async with runtime.engine.connect() as connection:
            yield await connection.execution_options(isolation_level="AUTOCOMMIT")

    return TerminalStreams(
        settings=settings,
        transaction=runtime.transaction,
        autocommit=autocommit,
        messages=messages,
        hub=hub,
        recognition=recognition,
        provider=provider,
    )
