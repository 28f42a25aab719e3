"""The hub of open till streams: bounded by the streams open, one stream per till, who is at which till."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest

from omni_gateway.terminals.hub import TerminalHub
from omni_gateway.terminals.store import Till
from omni_kit.errors import ResourceExhausted


@dataclass(eq=False)
class _Stream:
    till: Till
    ended: bool = False
    woken: list[uuid.UUID] = field(default_factory=list)

    def superseded(self) -> None:
        self.ended = True

    def waiting(self, person_id: uuid.UUID) -> None:
        self.woken.append(person_id)


async def test_the_hub_holds_what_the_open_streams_hold_and_no_more() -> None:
    hub = TerminalHub(max_streams=2)
    one, two = _Stream(Till("s", "1")), _Stream(Till("s", "2"))
    hub.open(one)
    hub.open(two)
    with pytest.raises(ResourceExhausted):
        hub.open(_Stream(Till("s", "3")))
    ada, bob = uuid.uuid4(), uuid.uuid4()
    hub.identify(one, ada)
    hub.identify(two, ada)
    await hub.announce(ada)
    await hub.announce(bob)
    assert (one.woken, two.woken) == ([ada], [ada])

    # The same till again: the older stream ends, the newer takes its place (the bound is not reached).
    again = _Stream(Till("s", "1"))
    hub.open(again)
    assert one.ended and hub.open_streams == 2 and hub.person_at(Till("s", "1")) is None
    hub.identify(again, bob)
    hub.close(one)  # the ended stream's own close changes nothing
    assert hub.person_at(Till("s", "1")) == bob

    hub.close(again)
    hub.close(two)
    assert hub.open_streams == 0
    assert (hub._persons, hub._at) == ({}, {})  # nothing left behind for persons or tills
