"""The five services started once for all fuzz tests, each on an event namespace of its own.

They are the end-to-end services (tests/e2e/conftest.py), calling each other over gRPC as in production, but
not hearing each other's events: what a service writes then comes only from the requests the fuzz sends it,
which is what the nothing-written check compares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres, SmtpSink

from ..conftest import fresh_database
from ..e2e.conftest import Omni, running_omni


@pytest.fixture(scope="package")
async def omni(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, smtp_sink: SmtpSink
) -> AsyncIterator[Omni]:
    """Identity, profile, segmentation, decisioning and gateway, for the whole fuzz package."""
    created: list[str] = []

    def make_database(prefix: str) -> str:
        url = fresh_database(postgres, f"fuzz_{prefix}")
        created.append(url.rsplit("/", 1)[1])
        return url

    # A computed trait's backfill starts soon after its definition, so waiting for it to end is short.
    settings = {"profile": {"computed_traits_refresh_s": 0.2}}
    async with running_omni(
        make_database, nats_server, smtp_sink, shared_events=False, settings=settings
    ) as running:
        yield running
    for name in created:
        postgres.drop_database(name)
