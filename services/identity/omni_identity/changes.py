"""What resolving does to the identity graph, as plain data: requests, resolutions, refusals and changes.

The resolver (resolution.py) produces these; storage (repository.py) writes them in bulk; events.py turns
the graph events into payloads.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from omni_identity.merge import MergeRecord
from omni_identity.normalise import IdentifierKey


@dataclass(frozen=True)
class ResolveRequest:
    """Normalised, de-duplicated identifiers seen together, and where they were seen."""

    identifiers: tuple[IdentifierKey, ...]
    source: str = ""
    reference: str = ""
    """The caller's name for what carried the identifiers (an event's source and id); kept on merges."""

    def __post_init__(self) -> None:
        if not self.identifiers:
            raise ValueError("a resolve request needs at least one identifier")


class Held(NamedTuple):
    """Who holds a stored identifier, and the identifier's own id (lineage refers to identifiers by id)."""

    person_id: uuid.UUID
    identifier_id: uuid.UUID


class RefusalRule(StrEnum):
    """Which kind of rule refused a link."""

    LIMIT = "limit"
    """The person would hold more values of a type than its limit allows."""
    TRUST = "trust"
    """Only low-trust identifiers would link sides that each carry a high-trust identifier."""


class Attachment(StrEnum):
    """How an identifier came to the person it is attached to."""

    NEW_PERSON = "new_person"
    """The person was created with it."""
    MATCHED = "matched"
    """A resolve matched the person through other identifiers (recorded as `via`) and added it."""
    UNMERGE = "unmerge"
    """An unmerge moved it back to the restored person, because everything it was attached through went."""
    RECORD_MATCH = "record_match"
    """The probabilistic matcher filed a record carrying it under the person (MatchRecord, or a settled
    review); attached_to is the person the record was filed under."""


@dataclass(frozen=True)
class Refusal:
    """A rule's verdict on one attempt: the identifier set aside and why."""

    key: IdentifierKey
    holder_id: uuid.UUID | None
    """Who holds the identifier set aside; None when no one does (it is then not stored)."""
    person_ids: tuple[uuid.UUID, ...]
    """The persons the attempt would have merged or extended."""
    rule: RefusalRule
    rule_type: str
    """The identifier type whose limit or trust the link would have broken."""
    description: str


@dataclass
class RefusedLink:
    """A refusal as recorded: repeats of the same refusal for the same person update one record."""

    id: uuid.UUID
    key: IdentifierKey
    holder_id: uuid.UUID | None
    person_ids: tuple[uuid.UUID, ...]
    resolved_person_id: uuid.UUID
    rule: RefusalRule
    rule_type: str
    description: str
    source: str
    refused_at: datetime
    last_refused_at: datetime
    count: int = 1

    @property
    def dedupe_key(self) -> tuple[str, str, uuid.UUID, str, str]:
        """What makes two refusals the same refusal."""
        return (self.key.type, self.key.value, self.resolved_person_id, self.rule.value, self.rule_type)


@dataclass
class Resolution:
    """What one request resolved to, at the moment it was resolved."""

    person_id: uuid.UUID | None
    """None only when every identifier belonged to a forgotten person and the policy drops them."""
    created: bool = False
    merged_person_ids: list[uuid.UUID] = field(default_factory=list)
    added_identifiers: list[IdentifierKey] = field(default_factory=list)
    refused_links: list[RefusedLink] = field(default_factory=list)
    ignored_identifiers: list[IdentifierKey] = field(default_factory=list)
    """Identifiers of forgotten persons that the tombstone policy told us to ignore."""

    @property
    def forgotten(self) -> bool:
        """True when nothing was resolved because every identifier belonged to a forgotten person."""
        return self.person_id is None


@dataclass(frozen=True)
class PersonCreated:
    """A person was created holding these identifiers."""

    person_id: uuid.UUID
    identifiers: tuple[IdentifierKey, ...]
    source: str


@dataclass(frozen=True)
class PersonsMerged:
    """Persons were merged into a survivor because these identifiers were seen together (or an operator said so)."""

    survivor_id: uuid.UUID
    merged_ids: tuple[uuid.UUID, ...]
    cause_identifiers: tuple[IdentifierKey, ...]
    source: str
    reason: str = ""
    reference: str = ""


@dataclass(frozen=True)
class PersonsUnmerged:
    """A merged person was split back out of its survivor, taking these identifiers with it."""

    survivor_id: uuid.UUID
    restored_id: uuid.UUID
    restored_merged_ids: tuple[uuid.UUID, ...]
    moved_identifiers: tuple[IdentifierKey, ...]
    merge_id: uuid.UUID
    reason: str


@dataclass(frozen=True)
class PersonForgotten:
    """A person and every person merged into it were erased."""

    person_id: uuid.UUID
    forgotten_ids: tuple[uuid.UUID, ...]
    erasure_id: uuid.UUID
    forgotten_at: datetime


GraphEvent = PersonCreated | PersonsMerged | PersonsUnmerged | PersonForgotten


@dataclass(frozen=True)
class NewIdentifier:
    """An identifier to store, with the person that holds it once the whole batch is applied."""

    key: IdentifierKey
    person_id: uuid.UUID
    source: str
    id: uuid.UUID
    attached_to: uuid.UUID
    """The person it was attached to (person_id, or a person of the batch merged into person_id since)."""
    via: tuple[uuid.UUID, ...] = ()
    """The ids of the stored identifiers through which the request found the person."""
    attachment: Attachment = Attachment.NEW_PERSON


@dataclass
class GraphChanges:
    """Everything a batch of resolves changes, ready to be written in bulk."""

    now: datetime
    resolutions: list[Resolution] = field(default_factory=list)
    created_person_ids: list[uuid.UUID] = field(default_factory=list)
    new_identifiers: list[NewIdentifier] = field(default_factory=list)
    merged_into: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    """Each person merged by the batch → the person it was merged into (its immediate survivor)."""
    moved_identifiers: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    """Each person that existed before the batch and was merged → the live person its identifiers go to."""
    merges: list[MergeRecord] = field(default_factory=list)
    refused_links: list[RefusedLink] = field(default_factory=list)
    """One per distinct refusal of the batch (repeats counted in it)."""
    events: list[GraphEvent] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when the batch writes anything."""
        return bool(self.created_person_ids or self.new_identifiers or self.merged_into or self.refused_links)
