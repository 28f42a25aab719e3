"""Following identity's lineage: one component every service uses for merges, unmerges and erasures.

`Lineage` (follow.py) is the consumer handler of identity.persons_merged, persons_unmerged and
person_forgotten; `LineageTable` (table.py) is where a service keeps where each id leads and its tombstones,
and answers where ids lead now, many at once.
"""

from omni_kit.lineage.follow import (
    LINEAGE_EVENTS,
    PERSON_FORGOTTEN,
    PERSONS_MERGED,
    PERSONS_UNMERGED,
    Erasure,
    ErasureHook,
    Lineage,
    Merge,
    MergeHook,
    Unmerge,
    UnmergeHook,
)
from omni_kit.lineage.table import (
    PERSON_LINEAGE,
    LineageTable,
    Whereabouts,
    aliases_from_lineage,
    create_lineage_table,
    drop_lineage_table,
    lineage_from_aliases,
    lineage_metadata,
    lock_persons,
    person_lineage,
    person_lock_key,
)

__all__ = [
    "LINEAGE_EVENTS",
    "PERSONS_MERGED",
    "PERSONS_UNMERGED",
    "PERSON_FORGOTTEN",
    "PERSON_LINEAGE",
    "Erasure",
    "ErasureHook",
    "Lineage",
    "LineageTable",
    "Merge",
    "MergeHook",
    "Unmerge",
    "UnmergeHook",
    "Whereabouts",
    "aliases_from_lineage",
    "create_lineage_table",
    "drop_lineage_table",
    "lineage_from_aliases",
    "lineage_metadata",
    "lock_persons",
    "person_lineage",
    "person_lock_key",
]
