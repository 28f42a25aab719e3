"""Single calls arriving together are carried out in groups (omni_kit.grouping), each call getting its own
answer or error. The requests are identity's resolves, its first user."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from omni_identity.changes import Resolution, ResolveRequest
from omni_identity.normalise import IdentifierKey
from omni_kit.grouping import Groups


async def settle() -> None:
    """Let the tasks started so far run until they wait."""
    for _ in range(5):
        await asyncio.sleep(0)


def request(n: int) -> ResolveRequest:
    return ResolveRequest((IdentifierKey("device_id", f"d{n}"),), "test")


class Recorder:
    """Resolves each request to a person id derived from its value, recording the groups it was given."""

    def __init__(self, *, fail: bool = False) -> None:
        self.groups: list[list[str]] = []
        self.fail = fail
        self.release = asyncio.Event()

    async def __call__(self, requests: Sequence[ResolveRequest]) -> list[Resolution]:
        self.groups.append([r.identifiers[0].value for r in requests])
        await self.release.wait()
        if self.fail:
            raise RuntimeError("database gone")
        return [
            Resolution(person_id=uuid.uuid5(uuid.NAMESPACE_OID, r.identifiers[0].value)) for r in requests
        ]


async def test_calls_waiting_for_a_slot_go_together_in_arrival_order() -> None:
    recorder = Recorder()
    groups = Groups(recorder, max_in_flight=1)
    calls = [asyncio.create_task(groups.call(request(0)))]
    await settle()  # the first group (d0) is being written
    calls += [asyncio.create_task(groups.call(request(n))) for n in range(1, 5)]
    await settle()
    recorder.release.set()
    answers = await asyncio.gather(*calls)
    assert recorder.groups == [["d0"], ["d1", "d2", "d3", "d4"]]
    assert [a.person_id for a in answers] == [uuid.uuid5(uuid.NAMESPACE_OID, f"d{n}") for n in range(5)]


async def test_groups_are_bounded_in_size_and_in_flight() -> None:
    recorder = Recorder()
    groups = Groups(recorder, max_group=2, max_in_flight=2)
    calls = [asyncio.create_task(groups.call(request(n))) for n in range(6)]
    await settle()
    assert recorder.groups == [["d0", "d1"], ["d2", "d3"]]  # two in flight, the rest wait
    recorder.release.set()
    await asyncio.gather(*calls)
    assert all(len(group) <= 2 for group in recorder.groups)
    assert sorted(v for group in recorder.groups for v in group) == [f"d{n}" for n in range(6)]


async def test_a_failed_group_fails_each_of_its_calls() -> None:
    recorder = Recorder(fail=True)
    groups = Groups(recorder, max_in_flight=1)
    calls = [asyncio.create_task(groups.call(request(n))) for n in range(3)]
    await settle()
    recorder.release.set()
    for call in calls:
        with pytest.raises(RuntimeError, match="database gone"):
            await call


async def test_a_caller_giving_up_does_not_stop_the_others() -> None:
    recorder = Recorder()
    groups = Groups(recorder, max_in_flight=1)
    first = asyncio.create_task(groups.call(request(0)))
    await settle()
    waiting = [asyncio.create_task(groups.call(request(n))) for n in (1, 2)]
    await settle()
    waiting[0].cancel()
    await settle()
    recorder.release.set()
    assert (await first).person_id is not None
    assert (await waiting[1]).person_id == uuid.uuid5(uuid.NAMESPACE_OID, "d2")
    assert recorder.groups == [["d0"], ["d2"]]


async def test_callers_are_not_left_waiting_when_the_group_is_cancelled() -> None:
    recorder = Recorder()
    groups = Groups(recorder, max_in_flight=1)
    first = asyncio.create_task(groups.call(request(0)))
    await settle()
    second = asyncio.create_task(groups.call(request(1)))
    await settle()
    for task in list(groups._tasks):
        task.cancel()
    await settle()
    assert first.cancelled() and second.cancelled()
