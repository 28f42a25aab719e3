"""Which source's value of a trait wins: a ranking of sources, and a staleness after which any source may
overwrite.

Sources are ranked from the most to the least trusted (by default crm > call_center > app > web > api);
sources not in the ranking come after all of them, equal among themselves. Each value carries the time it
was true (an identify call's time, or when it was set), and so does each write. A write replaces a trait's
value when its source ranks higher than the one that set the value, or ranks the same and the write is not
older than the value, or when the value is older than the write by more than `stale_after` (a year by
default: a customer who moved house tells the web shop, and a CRM record untouched for years should not
hide that forever); a write older than the value by more than `stale_after` replaces nothing, whatever its
rank. These look only at the two values' sources and times, never at which arrived first: two writes end
the same in either order, and so do more when one of them wins over each of the others (always so within a
year, or from one source), so late writes end where in-order ones would. Removing a trait follows the same rule. When persons
merge, each trait takes the value of the highest-ranked source; among equals the survivor's own value,
then the most recently set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from omni_profile.domain import Trait

DEFAULT_RANKING = ("crm", "call_center", "app", "web", "api")


@dataclass(frozen=True)
class SourcePolicy:
    """The precedence of trait sources."""

    ranking: tuple[str, ...] = DEFAULT_RANKING
    stale_after: timedelta = timedelta(days=365)

    def rank(self, source: str) -> int:
        """A source's rank: 0 is the most trusted; unknown sources rank after every listed one."""
        try:
            return self.ranking.index(source)
        except ValueError:
            return len(self.ranking)

    def may_overwrite(self, existing: Trait, source: str, at: datetime) -> bool:
        """Whether a write from `source` of a value true at `at` replaces (or removes) the existing value."""
        if existing.updated_at < at - self.stale_after:
            return True
        if at < existing.updated_at - self.stale_after:
            return False
        rank, existing_rank = self.rank(source), self.rank(existing.source)
        if rank != existing_rank:
            return rank < existing_rank
        return at >= existing.updated_at

    def merge(self, survivor: Mapping[str, Trait], merged: Sequence[Mapping[str, Trait]]) -> dict[str, Trait]:
        """The survivor's traits after a merge: per trait, the highest-ranked source's value; among equals
        the survivor's own, then the most recently set."""
        result = dict(survivor)
        for traits in merged:
            for name, trait in traits.items():
                current = result.get(name)
                if current is None or self._better(trait, current, survivor.get(name) is current):
                    result[name] = trait
        return result

    def _better(self, candidate: Trait, current: Trait, current_is_survivors: bool) -> bool:
        candidate_rank, current_rank = self.rank(candidate.source), self.rank(current.source)
        if candidate_rank != current_rank:
            return candidate_rank < current_rank
        return not current_is_survivors and candidate.updated_at > current.updated_at
