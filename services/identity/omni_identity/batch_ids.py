"""Ids for the rows of one batch: one UUIDv7, then the values counting up from it.

A batch of 500 identifier sets creates a thousand or more persons, identifiers and lineage rows; a fresh
UUIDv7 each costs a few microseconds, a sum well under one. Counting up in the random bits keeps the ids
unique (the start is random and carries the batch's millisecond) and in the order they were made.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

# The low 62 bits of a UUIDv7 are random (rand_b); counting stays inside them.
_RAND_B = (1 << 62) - 1


def batch_ids(new_id: Callable[[], uuid.UUID], *, room: int = 1 << 20) -> Callable[[], uuid.UUID]:
    """A factory of ids for one batch, starting from new_id() and taking a new start every `room` ids."""
    state = {"base": 0, "left": 0}

    def next_id() -> uuid.UUID:
        if state["left"] == 0:
            start = new_id().int
            # Leave room to count up without carrying into the variant bits.
            if (start & _RAND_B) > _RAND_B - room:
                start -= room
            state["base"], state["left"] = start, room
        value = state["base"]
        state["base"] += 1
        state["left"] -= 1
        return uuid.UUID(int=value)

    return next_id
