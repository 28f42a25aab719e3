"""The kinds of segmentation's due work, as jobs of omni_kit's scheduler (run by the clock, clock.py)."""

from __future__ import annotations

PERSON_CHECK = "segmentation.person_check"
"""Re-evaluate a person whose membership may change by time alone (key: the person id), at next_check_at."""
BACKFILL = "segmentation.backfill"
"""Evaluate a new segment for the next slice of persons known before it (key: the segment id)."""
PURGE = "segmentation.purge_occurrences"
"""Delete event occurrences no segment can count any more (one job, key "occurrences"), then again later."""
PURGE_KEY = "occurrences"
SIZES = "segmentation.segment_sizes"
"""Record every live segment's member count for the day (one job, key "sizes"), then again later."""
SIZES_KEY = "sizes"
