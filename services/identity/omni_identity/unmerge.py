"""Undoing a merge: which of the survivor's identifiers go back to the restored person (pure).

Every identifier records the person it was attached to (``attached_to``) and, when a resolve found that
person through other identifiers, the ids of those identifiers (``via``). A merged person's tree is frozen
once it is merged (only live persons are ever merged into or attached to), so when a person is split back
out of the survivor:

1. every identifier attached to the restored person, or to a person merged into it before its merge, goes
   back: it came with the restored person;
2. every identifier attached later that was found only through identifiers going back goes back too (a
   cookie that arrived with the restored person's email after the merge); this repeats until nothing more
   moves, so chains of such attachments follow;
3. everything else stays with the survivor: its own identifiers, those of other persons merged into it, and
   those a resolve attached through identifiers of both sides (there is no telling whose they are).

Persons merged into the survivor after the undone merge stay merged, even when the request that linked
them carried identifiers of the restored person; an operator can unmerge them in turn.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from omni_identity.normalise import IdentifierKey


@dataclass(frozen=True)
class HeldIdentifier:
    """An identifier of the survivor with its lineage."""

    id: uuid.UUID
    key: IdentifierKey
    attached_to: uuid.UUID
    via: tuple[uuid.UUID, ...] = ()


@dataclass(frozen=True)
class Split:
    """The identifiers going back to the restored person."""

    came_with: tuple[HeldIdentifier, ...]
    """Attached to the restored person or a person merged into it (rule 1)."""
    found_through: tuple[HeldIdentifier, ...]
    """Attached later, found only through identifiers going back (rule 2); re-attached to the restored person."""

    @property
    def moved(self) -> tuple[HeldIdentifier, ...]:
        """Every identifier going back, in attach order."""
        return tuple(sorted(self.came_with + self.found_through, key=lambda held: held.id))


def split(identifiers: Sequence[HeldIdentifier], restored_tree: Collection[uuid.UUID]) -> Split:
    """Which of the survivor's identifiers go back to the restored person, whose tree (itself and the
    persons merged into it) is restored_tree."""
    came_with = [held for held in identifiers if held.attached_to in restored_tree]
    back = {held.id for held in came_with}
    found_through: list[HeldIdentifier] = []
    pending = sorted((held for held in identifiers if held.id not in back), key=lambda held: held.id)
    moved = True
    while moved:
        moved = False
        remaining = []
        for held in pending:
            if held.via and all(via in back for via in held.via):
                back.add(held.id)
                found_through.append(held)
                moved = True
            else:
                remaining.append(held)
        pending = remaining
    return Split(tuple(came_with), tuple(found_through))
