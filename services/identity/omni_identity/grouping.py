"""Single resolves that arrive together are resolved together: one transaction for a group of them.

A single ResolvePerson costs a handful of database round trips and a durable commit, which on a small
machine cost more than resolving the identifiers. Calls that arrive while earlier groups are being written
wait for a slot and then go in one batch, resolved in arrival order exactly like BatchResolvePersons (a
later request sees what the earlier ones did), so each costs a share of one transaction. A call that
arrives when a slot is free starts at once: on a quiet service nothing waits. One group is in flight by
default: once the graph's statements stopped scanning (see repository.py), a group's transaction took less
time than the Python work of the calls around it, and a second slot only made the groups smaller and the
work per call larger (at 1,000 calls/s offered, 597 answered a second with two slots, 891 with one).

Each call still gets its own answer. If the group's transaction fails, every call in it gets that error,
as it would have from its own transaction failing the same way (the errors left after reruns are the
database's or the service's, not the request's: requests are checked before they join a group).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from omni_identity.changes import Resolution, ResolveRequest

ResolveMany = Callable[[Sequence[ResolveRequest]], Awaitable[list[Resolution]]]


class ResolveGroups:
    """Resolves single requests in groups of those waiting, with a bounded number of groups in flight."""

    def __init__(self, resolve: ResolveMany, *, max_group: int = 64, max_in_flight: int = 1) -> None:
        self._resolve = resolve
        self._max_group = max_group
        self._max_in_flight = max_in_flight
        self._waiting: list[tuple[ResolveRequest, asyncio.Future[Resolution]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def resolve(self, request: ResolveRequest) -> Resolution:
        """Resolve one request, in a group with whatever else is waiting."""
        future: asyncio.Future[Resolution] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            task = asyncio.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # A caller that gives up (deadline, cancellation) only stops waiting: its group goes on.
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                group = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
                group = [(request, future) for request, future in group if not future.done()]
                if not group:
                    continue
                try:
                    resolutions = await self._resolve([request for request, _ in group])
                except Exception as error:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(error)
                    continue
                except BaseException:
                    # Cancelled (the loop is closing): the callers of this group are told so.
                    for _, future in group:
                        future.cancel()
                    raise
                for (_, future), resolution in zip(group, resolutions, strict=True):
                    if not future.done():
                        future.set_result(resolution)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                # Nobody is left to take the calls still waiting (only when cancelled): fail them.
                for _, future in self._waiting:
                    future.cancel()
                self._waiting.clear()
