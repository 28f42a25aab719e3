"""What operators do to the identity graph: merge two persons, undo a wrong merge, forget a person.

Each runs inside the caller's transaction with the storage and event sink bound to it, after locking
every identifier of the persons it changes and then their rows (operator_repository.py), so resolves
running at the same time see the graph either before or after. A person changed by someone else between
the unlocked read and the locks raises ConcurrentMerge: the caller runs the transaction again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from omni_identity.changes import PersonForgotten, PersonsMerged, PersonsUnmerged
from omni_identity.erasure import ErasureRecord, Tombstones
from omni_identity.merge import MergeRecord, MergeRule
from omni_identity.normalise import IdentifierKey
from omni_identity.operator_repository import OperatorRepository, PersonRow, StoredIdentifier
from omni_identity.persons import EventSink, person_forgotten
from omni_identity.reads import PersonRecord
from omni_identity.repository import ConcurrentMerge, IdentityRepository, identifier_lock_key
from omni_identity.rules import Rules
from omni_identity.unmerge import split
from omni_kit.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from omni_kit.ids import new_id

OPERATOR_SOURCE = "operator"


@dataclass(frozen=True)
class Merged:
    """The outcome of an operator merge."""

    survivor: PersonRecord
    merge: MergeRecord


@dataclass(frozen=True)
class Unmerged:
    """The outcome of an unmerge: both persons as they are now, what moved, and the undone merge."""

    restored: PersonRecord
    survivor: PersonRecord
    moved: tuple[IdentifierKey, ...]
    merge: MergeRecord


@dataclass(frozen=True)
class Forgotten:
    """The outcome of a forget: the erasure, and whether it happened before this call."""

    erasure: ErasureRecord
    already: bool = False


class Operators:
    """Operator changes of the identity graph."""

    def __init__(
        self,
        rules: Rules,
        tombstones: Tombstones,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        id_factory: Callable[[], uuid.UUID] = new_id,
    ) -> None:
        self._rules = rules
        self._tombstones = tombstones
        self._clock = clock
        self._new_id = id_factory

    async def merge(
        self,
        repository: OperatorRepository,
        graph: IdentityRepository,
        events: EventSink,
        survivor_id: uuid.UUID,
        merged_id: uuid.UUID,
        reason: str,
        *,
        request_id: str = "",
    ) -> Merged:
        """Merge the person merged_id leads to into the one survivor_id leads to, if no limit forbids it.

        The call's request_id is the merge's reference in the lineage."""
        survivor = _live_root(await repository.chain(survivor_id), survivor_id, "survivor_person_id")
        merged = _live_root(await repository.chain(merged_id), merged_id, "merged_person_id")
        if survivor.id == merged.id:
            raise InvalidArgument(
                message="a person cannot be merged with itself",
                violations=[
                    FieldViolation("merged_person_id", "leads to the same person as survivor_person_id")
                ],
            )
        held = await self._lock(repository, [survivor.id, merged.id])
        now = self._clock()
        tallies = {
            person_id: self._rules.tally(
                ((h.key.type, h.attached_at) for h in held if h.person_id == person_id), now
            )
            for person_id in (survivor.id, merged.id)
        }
        objection = self._rules.merge_objection(tallies)
        if objection is not None:
            type_name, description = objection
            raise FailedPrecondition(
                message=f"merging would break an identity rule: {description}",
                reason="IDENTIFIER_LIMIT_EXCEEDED",
                metadata={"identifier_type": type_name},
            )
        await repository.merge(survivor.id, merged.id, now)
        record = MergeRecord(
            id=self._new_id(),
            survivor_id=survivor.id,
            merged_id=merged.id,
            cause_identifiers=(),
            source=OPERATOR_SOURCE,
            merged_at=now,
            rule=MergeRule.OPERATOR,
            reason=reason,
            reference=request_id,
        )
        await graph.insert_merges([record])
        await events.publish(
            [PersonsMerged(survivor.id, (merged.id,), (), OPERATOR_SOURCE, reason, reference=request_id)]
        )
        person = await graph.person(survivor.id)
        assert person is not None
        return Merged(person, record)

    async def unmerge(
        self,
        repository: OperatorRepository,
        graph: IdentityRepository,
        events: EventSink,
        person_id: uuid.UUID,
        reason: str,
    ) -> Unmerged:
        """Split a merged person back out of the person it was merged into (see unmerge.py for who gets what)."""
        chain = await repository.chain(person_id)
        if not chain:
            raise NotFound(
                message=f"person {person_id} not found",
                reason="PERSON_NOT_FOUND",
                metadata={"person_id": str(person_id)},
            )
        restored, root = chain[0], chain[-1]
        if root.forgotten_at is not None:
            raise FailedPrecondition(
                message=f"person {person_id} was forgotten",
                reason="PERSON_FORGOTTEN",
                metadata={"person_id": str(person_id)},
            )
        if restored.merged_into is None:
            raise FailedPrecondition(
                message=f"person {person_id} is not merged into another person; only a merged person can be "
                "split back out",
                reason="PERSON_NOT_MERGED",
            )
        held = await self._lock(repository, [root.id], also=[restored.id])
        if await repository.chain(person_id) != chain:
            raise ConcurrentMerge(f"the persons between {person_id} and {root.id} changed meanwhile")
        merge = await repository.active_merge(restored.id)
        if merge is None or merge.survivor_id != restored.merged_into:
            raise FailedPrecondition(
                message=f"the merge of person {person_id} is not in the lineage", reason="MERGE_NOT_RECORDED"
            )
        now = self._clock()
        tree = [restored.id, *await repository.tree(restored.id)]
        parts = split([h.held for h in held], tree)
        await repository.unmerge(
            merge,
            root.id,
            [h.id for h in parts.came_with],
            [h.id for h in parts.found_through],
            now=now,
            reason=reason,
        )
        moved = tuple(h.key for h in parts.moved)
        await events.publish(
            [PersonsUnmerged(root.id, restored.id, tuple(sorted(tree[1:])), moved, merge.id, reason)]
        )
        restored_person, survivor_person = await graph.person(restored.id), await graph.person(root.id)
        assert restored_person is not None and survivor_person is not None
        return Unmerged(
            restored_person, survivor_person, moved, replace(merge, undone_at=now, undo_reason=reason)
        )

    async def forget(
        self,
        repository: OperatorRepository,
        events: EventSink,
        person_id: uuid.UUID,
        *,
        requested_by: str,
        reason: str,
        request_id: str,
    ) -> Forgotten:
        """Erase the person an id leads to, with every person merged into it, leaving tombstones."""
        chain = await repository.chain(person_id)
        if not chain:
            raise NotFound(
                message=f"person {person_id} not found",
                reason="PERSON_NOT_FOUND",
                metadata={"person_id": str(person_id)},
            )
        root = chain[-1]
        if root.forgotten_at is not None:
            earlier = await repository.erasure_of(root.id)
            if earlier is None:  # pragma: no cover - every forget writes its erasure
                raise person_forgotten(person_id)
            return Forgotten(earlier, already=True)
        held = await self._lock(repository, [root.id])
        now = self._clock()
        tree = (root.id, *await repository.tree(root.id))
        keys = [h.key for h in held]
        erasure = ErasureRecord(
            id=self._new_id(),
            person_id=root.id,
            person_ids=tree,
            requested_by=requested_by,
            reason=reason,
            request_id=request_id,
            identifier_count=len(keys),
            forgotten_at=now,
        )
        await repository.forget(erasure, root.id, keys, [self._tombstones.hash(key) for key in keys])
        await events.publish([PersonForgotten(root.id, tree, erasure.id, now)])
        return Forgotten(erasure)

    async def _lock(
        self, repository: OperatorRepository, roots: Sequence[uuid.UUID], *, also: Sequence[uuid.UUID] = ()
    ) -> list[StoredIdentifier]:
        """Lock the identifiers of live persons, then their rows (and those of `also`); return what they hold."""
        before = await repository.held_by(roots)
        await repository.lock_identifiers(identifier_lock_key(h.key) for h in before)
        rows = await repository.lock_persons([*roots, *also])
        if any(root not in rows or not rows[root].live for root in roots):
            raise ConcurrentMerge(f"one of {list(roots)} was merged or forgotten meanwhile")
        after = await repository.held_by(roots)
        if {h.held.id for h in after} - {h.held.id for h in before}:
            raise ConcurrentMerge(f"identifiers were attached to {list(roots)} meanwhile")
        return after


def _live_root(chain: list[PersonRow], person_id: uuid.UUID, field: str) -> PersonRow:
    if not chain:
        raise NotFound(
            message=f"{field} {person_id} not found",
            reason="PERSON_NOT_FOUND",
            metadata={"person_id": str(person_id), "field": field},
        )
    root = chain[-1]
    if root.forgotten_at is not None:
        raise FailedPrecondition(
            message=f"{field} {person_id} was forgotten",
            reason="PERSON_FORGOTTEN",
            metadata={"person_id": str(person_id), "field": field},
        )
    return root
