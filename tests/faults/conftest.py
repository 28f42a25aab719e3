"""One stack of separate processes for the fault tests (tests/faults/stack.py), started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PostgreSQL, NATS, the SMTP sink and the five services as processes, on free loopback ports."""
    running = Stack(tmp_path_factory.mktemp("faults"))
    try:
        running.start()
        yield running
    finally:
        running.stop()
