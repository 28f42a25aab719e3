"""Calls that arrive together are carried out together: one transaction for a group of them (group commit).

A single call that writes costs a handful of database round trips and a durable commit, which on a small
machine cost more than the call's own work. Calls that arrive while earlier groups are being written wait
for a slot and then go in one group, in arrival order, so each costs a share of one transaction. A call that
arrives when a slot is free starts at once: on a quiet service nothing waits.

Each call still gets its own answer. If the group's work fails, every call in it gets that error, as it
would have from its own transaction failing the same way (requests are checked before they join a group, so
the errors left are the database's or the service's, not a request's). A caller that gives up (deadline,
cancellation) only stops waiting: its group goes on, so what it asked for is done or not as for the others.

Used by identity's ResolvePerson and decisioning's Decide.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")


class Groups(Generic[Request, Answer]):
    """Carries out single requests in groups of those waiting, with a bounded number of groups in flight.

    `many` takes a group of requests and answers each, in order (a list as long as the group).
    """

    def __init__(
        self,
        many: Callable[[Sequence[Request]], Awaitable[list[Answer]]],
        *,
        max_group: int = 64,
        max_in_flight: int = 1,
    ) -> None:
        self._many = many
        self._max_group = max_group
        self._max_in_flight = max_in_flight
        self._waiting: list[tuple[Request, asyncio.Future[Answer]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, request: Request) -> Answer:
        """Carry out one request, in a group with whatever else is waiting, and return its answer."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
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
                    answers = await self._many([request for request, _ in group])
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
                for (_, future), answer in zip(group, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                # Nobody is left to take the calls still waiting (only when cancelled): fail them.
                for _, future in self._waiting:
                    future.cancel()
                self._waiting.clear()
