"""Fixtures every test can use: one PostgreSQL, one NATS and one SMTP sink per test session.

They are real servers started from Python packages on free ports under pytest's temporary directory, never
the machine's own PostgreSQL (5432) or NATS (4222). Tests isolate themselves with ``make_database``, which
gives each caller a database of its own.

Every test is of one kind, marked here, which `make test-unit`, `make test-integration` and `make test-e2e`
select: ``e2e`` under tests/e2e (the stories across all five services, and `omni run`); ``integration`` if it
needs servers (its fixtures reach PostgreSQL, NATS or the SMTP sink, or its module starts servers of its own
and says so with ``pytestmark = pytest.mark.integration``); ``unit`` otherwise. The fault tests under
tests/faults are marked ``faults`` only: plain pytest leaves them out (pyproject's addopts), `make test-faults`
runs them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres, SmtpSink

_SERVERS = frozenset({"postgres", "nats_server", "smtp_sink", "make_database"})
_E2E = Path(__file__).parent / "e2e"
_FAULTS = Path(__file__).parent / "faults"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test e2e, integration or unit (see the module's docstring)."""
    for item in items:
        if item.path.is_relative_to(_FAULTS):
            item.add_marker(pytest.mark.faults)
        elif item.path.is_relative_to(_E2E):
            item.add_marker(pytest.mark.e2e)
        elif item.get_closest_marker("integration") is None and _SERVERS & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.integration)
        elif item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server for the whole session (fsync off: fast, and the data is thrown away anyway)."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A NATS server with JetStream for the whole session; connect with ``nats_server.url``."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def smtp_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    """An SMTP sink for the whole session; messages from every test accumulate, so match on something unique."""
    sink = SmtpSink(tmp_path_factory.mktemp("mail"))
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


def fresh_database(postgres: EmbeddedPostgres, prefix: str = "test", *, template: str | None = None) -> str:
    """Create a database with a unique name starting with ``prefix`` and return its SQLAlchemy URL.

    With ``template`` it starts as a copy of that database (for instance one migrated once per session).
    """
    cleaned = re.sub(r"[^a-z0-9_]", "_", prefix.lower())[:40] or "test"
    name = f"{cleaned}_{uuid.uuid4().hex[:16]}"
    postgres.create_database(name, template=template)
    return postgres.url(name)


@pytest.fixture
def make_database(postgres: EmbeddedPostgres) -> Iterator[Callable[..., str]]:
    """Return ``make(prefix="test", *, template=None) -> url`` that creates a fresh database per call.

    The databases are dropped when the test ends (open sessions are cut), so close engines before that.
    """
    created: list[str] = []

    def make(prefix: str = "test", *, template: str | None = None) -> str:
        url = fresh_database(postgres, prefix, template=template)
        created.append(url.rsplit("/", 1)[1])
        return url

    yield make
    for name in created:
        postgres.drop_database(name)
