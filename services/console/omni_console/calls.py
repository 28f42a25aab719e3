"""One part of a page fetched from a service: its value, or why the page shows none (the console lacks the
scope, or the service said no or did not answer). A page is many parts fetched at once; one failing part
does not take the page down."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from omni_console.clients import Clients

T = TypeVar("T")


@dataclass(frozen=True)
class Part(Generic[T]):
    """A value, or a problem to show in its place."""

    value: T | None = None
    problem: str | None = None
    denied: bool = False
    """True when the console's credentials lack the scope (its own, or as the service answered)."""

    @property
    def ok(self) -> bool:
        """Whether the value is there."""
        return self.problem is None


def describe(error: grpc.aio.AioRpcError) -> str:
    """A service's error as one line for the page."""
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {error.details() or ''}".strip()


async def fetch(clients: Clients, scope: str, call: Callable[[], Awaitable[T]]) -> Part[T]:
    """Call when the console holds scope; a refusal or failure becomes the part's problem."""
    if not clients.allows(scope):
        return Part(problem=f"the console's credentials do not hold {scope}", denied=True)
    try:
        return Part(await call())
    except grpc.aio.AioRpcError as error:
        denied = error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        return Part(problem=describe(error), denied=denied)
