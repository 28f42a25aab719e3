"""The rules that keep strangers apart: identifier limits and trust, and what a refused link sets aside.

A resolve attempt joins the persons its identifiers are held by (merging them) and the identifiers nobody
holds yet (attaching them). Before it is applied, two rules look at the result:

- **limit**: no type may end with more values on the person than its limit (counting, for a windowed limit,
  only values attached within the window). An attempt that adds no value to any person already at or over
  a limit (say after the limit was lowered) is not refused for it.
- **trust**: a side of the attempt (each person found, and the new identifiers together) carrying a
  high-trust identifier may not be joined to another side carrying one if it was reached only through
  low-trust identifiers: a shared tablet's device id does not make two account holders one person.

When a rule objects, one identifier is set aside: among the identifiers that cause the objection, the one
with the largest priority number; at equal priority a new identifier before a stored one, a lower-trust
one before a higher, one held by a newer person before one held by an older, a later one in the request
before an earlier one. The attempt is then made again without it, until no rule objects (an attempt with
one identifier never breaks a rule, so this ends).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from omni_identity.changes import Refusal, RefusalRule
from omni_identity.identifier_types import IdentifierType, IdentifierTypeRegistry, Trust
from omni_identity.normalise import IdentifierKey

Tally = dict[str, list[int]]
"""One person's count of values per watched type: [attached within the type's window, all]."""

_TRUST_RANK = {Trust.HIGH: 0, Trust.MEDIUM: 1, Trust.LOW: 2}


@dataclass(frozen=True)
class _Objection:
    rule: RefusalRule
    rule_type: str
    description: str
    candidates: tuple[IdentifierKey, ...]


class Rules:
    """The configured limits and trust levels, ready to judge attempts."""

    def __init__(self, registry: IdentifierTypeRegistry) -> None:
        self._types: dict[str, IdentifierType] = dict(registry.as_mapping())
        self.watched = registry.watched
        self._limited = {name: t for name, t in self._types.items() if t.limit is not None}
        self._high = frozenset(name for name, t in self._types.items() if t.trust is Trust.HIGH)

    def windows(self, now: datetime) -> dict[str, datetime | None]:
        """For each watched type, the oldest attach time that counts towards its limit (None: all count)."""
        result: dict[str, datetime | None] = {}
        for name in self.watched:
            window = self._types[name].limit_window
            result[name] = None if window is None else now - window
        return result

    def refusal(
        self,
        identifiers: Sequence[IdentifierKey],
        holder_of: Mapping[IdentifierKey, uuid.UUID],
        tallies: Mapping[uuid.UUID, Tally],
    ) -> Refusal | None:
        """The identifier to set aside from this attempt and why, or None when every rule allows it."""
        reached: dict[uuid.UUID, list[IdentifierKey]] = {}
        new: list[IdentifierKey] = []
        for key in identifiers:
            person_id = holder_of.get(key)
            if person_id is None:
                new.append(key)
            else:
                reached.setdefault(person_id, []).append(key)
        # The common cases, answered without counting: a new person with at most one value per type (every
        # limit is at least 1), or one person gaining nothing that is counted.
        if not reached:
            if len(new) < 2 or len({key.type for key in new}) == len(new):
                return None
        elif len(reached) == 1 and not any(key.type in self.watched for key in new):
            return None
        objections = self._limits(reached, new, tallies)
        if len(reached) + (1 if new else 0) > 1:
            objections += self._trust(reached, new, tallies)
        if not objections:
            return None
        position = {key: i for i, key in enumerate(identifiers)}
        candidates = {key for objection in objections for key in objection.candidates}

        def order(key: IdentifierKey) -> tuple[int, int, int, int, int]:
            holder = holder_of.get(key)
            t = self._types[key.type]
            return (
                t.priority,
                holder is None,
                _TRUST_RANK[t.trust],
                holder.int if holder else 0,
                position[key],
            )

        victim = max(candidates, key=order)
        objection = next(o for o in objections if victim in o.candidates)
        return Refusal(
            key=victim,
            holder_id=holder_of.get(victim),
            person_ids=tuple(sorted(reached)),
            rule=objection.rule,
            rule_type=objection.rule_type,
            description=objection.description,
        )

    def merge_objection(self, tallies: Mapping[uuid.UUID, Tally]) -> tuple[str, str] | None:
        """For persons merged as they are (an operator merge): the type whose limit the merge would break
        and the rule in words, or None."""
        objections = self._limits({person_id: [] for person_id in tallies}, [], tallies)
        return None if not objections else (objections[0].rule_type, objections[0].description)

    def tally(self, identifiers: Iterable[tuple[str, datetime]], now: datetime) -> Tally:
        """One person's watched-type counts from its identifiers' types and attach times."""
        windows = self.windows(now)
        tally: Tally = {}
        for type_name, attached_at in identifiers:
            if type_name not in windows:
                continue
            counts = tally.setdefault(type_name, [0, 0])
            since = windows[type_name]
            counts[0] += since is None or attached_at >= since
            counts[1] += 1
        return tally

    def _limits(
        self,
        reached: Mapping[uuid.UUID, list[IdentifierKey]],
        new: Sequence[IdentifierKey],
        tallies: Mapping[uuid.UUID, Tally],
    ) -> list[_Objection]:
        types = {key.type for key in new if key.type in self._limited}
        if len(reached) > 1:
            for person_id in reached:
                types.update(t for t in tallies.get(person_id, ()) if t in self._limited)
        objections = []
        for name in sorted(types):
            identifier_type = self._limited[name]
            limit = identifier_type.limit
            assert limit is not None
            counts = [tallies.get(person_id, {}).get(name, (0, 0))[0] for person_id in reached]
            added = sum(1 for key in new if key.type == name)
            total = sum(counts) + added
            if total <= limit or total <= max(counts, default=0):
                continue
            candidates = [key for key in new if key.type == name]
            for person_id, keys in reached.items():
                if tallies.get(person_id, {}).get(name, (0, 0))[0] > 0:
                    candidates += keys
            window = identifier_type.limit_window
            within = f" attached within {_duration(window.total_seconds())}" if window else ""
            objections.append(
                _Objection(
                    RefusalRule.LIMIT,
                    name,
                    f"a person may hold at most {limit} {name}{within}; this would make {total}",
                    tuple(candidates),
                )
            )
        return objections

    def _trust(
        self,
        reached: Mapping[uuid.UUID, list[IdentifierKey]],
        new: Sequence[IdentifierKey],
        tallies: Mapping[uuid.UUID, Tally],
    ) -> list[_Objection]:
        carrying = [
            person_id
            for person_id in reached
            if any(tallies.get(person_id, {}).get(name, (0, 0))[1] > 0 for name in self._high)
        ]
        sides = len(carrying) + (1 if any(key.type in self._high for key in new) else 0)
        if sides < 2:
            return []
        objections = []
        for person_id in carrying:
            keys = reached[person_id]
            if all(self._types[key.type].trust is Trust.LOW for key in keys):
                objections.append(
                    _Objection(
                        RefusalRule.TRUST,
                        keys[0].type,
                        f"{keys[0].type} is low-trust and alone does not link a person holding a "
                        "high-trust identifier to another high-trust identifier",
                        tuple(keys),
                    )
                )
        return objections


def _duration(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86_400)
    if days and not rest:
        return f"{days} day" + ("s" if days != 1 else "")
    hours, rest = divmod(int(seconds), 3600)
    if hours and not rest:
        return f"{hours} hour" + ("s" if hours != 1 else "")
    return f"{int(seconds)} s"
