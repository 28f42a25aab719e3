"""The journey frequency guard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from omni_decisioning.reentry import is_reentry

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
DAY = timedelta(days=1)


def test_first_entry_is_not_a_reentry() -> None:
    assert not is_reentry([], T0, DAY)


def test_an_entry_inside_the_window_after_a_started_run_is_a_reentry() -> None:
    assert is_reentry([T0], T0 + timedelta(hours=23), DAY)
    assert is_reentry([T0], T0, DAY)


def test_an_entry_after_the_window_starts_again() -> None:
    assert not is_reentry([T0], T0 + DAY, DAY)
    assert not is_reentry([T0], T0 + timedelta(days=3), DAY)


def test_a_late_event_from_before_a_started_run_is_a_reentry_too() -> None:
    assert is_reentry([T0], T0 - timedelta(hours=1), DAY)
    assert not is_reentry([T0], T0 - 2 * DAY, DAY)


def test_a_zero_window_turns_the_guard_off() -> None:
    assert not is_reentry([T0], T0, timedelta(0))
