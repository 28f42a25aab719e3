"""Erasure: forgetting a person leaves tombstones, so later events cannot silently bring the person back.

A tombstone is a keyed one-way hash (HMAC-SHA256 with ``OMNI_IDENTITY_TOMBSTONE_KEY``) of an identifier's
type and normalised value: it recognises the identifier when it comes again, yet neither it nor the key's
absence lets anyone read which identifiers were forgotten. Changing the key makes every existing tombstone
unrecognisable, so the key must be kept (and rotated only together with re-forgetting).

What happens to a resolve carrying tombstoned identifiers is the tombstone policy:
- ``drop``: those identifiers are ignored; a request holding nothing else answers FAILED_PRECONDITION,
  reason PERSON_FORGOTTEN (in a batch: that resolution is marked forgotten), so callers drop the event;
- ``new_person``: they are treated as never seen: they start a new person unlinked to the forgotten one
  (or join the person the request's other identifiers lead to), and the tombstone stays.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from omni_identity.normalise import IdentifierKey

# Tests and the laptop run (services bound to 127.0.0.1) use this key when none is configured; anything
# serving other machines must set its own (see main.Settings).
DEVELOPMENT_KEY = b"omni-identity-development-tombstone-key"


class TombstonePolicy(StrEnum):
    """What a resolve does with identifiers of forgotten persons."""

    DROP = "drop"
    NEW_PERSON = "new_person"


@dataclass(frozen=True)
class Tombstones:
    """Hashes identifiers for tombstones and says which of a resolve's identifiers to ignore."""

    key: bytes
    policy: TombstonePolicy = TombstonePolicy.DROP

    def hash(self, key: IdentifierKey) -> bytes:
        """The tombstone hash of an identifier: HMAC-SHA256 over type, a NUL, and the normalised value."""
        return hmac.digest(self.key, f"{key.type}\x00{key.value}".encode(), "sha256")

    def hashes(self, keys: Iterable[IdentifierKey]) -> dict[bytes, IdentifierKey]:
        """The tombstone hash of each identifier, by hash."""
        return {self.hash(key): key for key in keys}


@dataclass(frozen=True)
class ErasureRecord:
    """The audit of one erasure: who asked, when, why and how much went. It holds no identifiers."""

    id: uuid.UUID
    person_id: uuid.UUID
    person_ids: tuple[uuid.UUID, ...]
    """The person and every person merged into it."""
    requested_by: str
    reason: str
    request_id: str
    identifier_count: int
    forgotten_at: datetime
