"""The settings glue the push providers share: a credential given either as a value (a secret in an
environment variable) or as a file (a mounted secret), an empty variable meaning none, and a provider made
from its registry entry with its settings class.

Web Push (the VAPID key), FCM (the service account) and APNs (the .p8 key) each had their own copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import SecretStr

__all__ = ["empty_is_none", "from_registry", "one_of", "secret_text"]


def empty_is_none(value: object) -> object:
    """A field validator (mode "before"): an empty variable (a Compose pass-through set to nothing) means no
    credential, not a bad one."""
    return None if isinstance(value, str) and not value.strip() else value


def one_of(value: SecretStr | None, file: Path | None, names: tuple[str, str], *, required: bool) -> bool:
    """Whether a credential is given; ValueError when both ways are, or (`required`) neither."""
    if value is not None and file is not None:
        raise ValueError(f"give {names[0]} or {names[1]}, not both")
    if required and value is None and file is None:
        raise ValueError(f"give {names[0]} or {names[1]}")
    return value is not None or file is not None


def secret_text(value: SecretStr | None, file: Path | None, what: str) -> str:
    """The credential's text, from the value or else the file; ValueError when neither is given."""
    if file is not None:
        return file.read_text()
    if value is not None:
        return value.get_secret_value()
    raise ValueError(f"no {what} configured")


class _Named(Protocol):
    name: str


P = TypeVar("P", bound=_Named)


def from_registry(
    make: Callable[[Any], P], settings: Callable[..., Any], name: str, options: Mapping[str, Any]
) -> P:
    """A provider from its registry entry: `options` are its settings' fields, what they do not give comes
    from the settings' environment variables; named as the entry is."""
    provider = make(settings(**dict(options)))
    provider.name = name
    return provider
