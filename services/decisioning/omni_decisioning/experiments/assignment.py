"""Stable assignment: which arm a person is in, and whether they are in the global control group.

A person's arm is a function of (experiment id, person id) alone: SHA-256 of both, read as a number, taken
modulo 10,000, falls into one arm's range of the cumulative allocation (in hundredths of a percent). So every
replica, every retry and every later send puts the person in the same arm without storing anything first,
and two experiments split persons independently of each other. The global control group is the same idea
with a fixed salt: the persons whose hash falls below the configured share receive no marketing at all.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

from omni_decisioning.experiments.entities import Arm

BUCKETS = 10_000


def bucket(key: str, person_id: uuid.UUID) -> int:
    """The person's bucket (0 to 9,999) under a key (an experiment id, or the global control salt)."""
    digest = hashlib.sha256(f"{key}:{person_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def choose_arm(experiment_id: uuid.UUID, arms: Sequence[Arm], person_id: uuid.UUID) -> Arm:
    """The arm the person is in: the arms' shares laid end to end over the 10,000 buckets."""
    position = bucket(str(experiment_id), person_id)
    end = 0
    for arm in arms:
        end += arm.allocation_percent * (BUCKETS // 100)
        if position < end:
            return arm
    return arms[-1]


def in_global_control(salt: str, person_id: uuid.UUID, share_basis_points: int) -> bool:
    """Whether the person is in the global control group of the given share (in hundredths of a percent)."""
    return share_basis_points > 0 and bucket(f"global-control:{salt}", person_id) < share_basis_points
