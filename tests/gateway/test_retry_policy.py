"""The backoff between attempts."""

from __future__ import annotations

from datetime import timedelta

from omni_gateway.retry import RetryPolicy


def test_delay_doubles_per_attempt_and_is_capped() -> None:
    policy = RetryPolicy(first_delay_s=10, max_delay_s=60)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [
        timedelta(seconds=10),
        timedelta(seconds=20),
        timedelta(seconds=40),
        timedelta(seconds=60),
        timedelta(seconds=60),
    ]


def test_lease_is_a_timedelta_of_the_setting() -> None:
    assert RetryPolicy(lease_s=90).lease == timedelta(seconds=90)


def test_a_providers_own_schedule_replaces_the_backoff_and_a_hint_is_never_cut_short() -> None:
    policy = RetryPolicy(first_delay_s=30, max_delay_s=3600)
    assert policy.next_delay(1) == timedelta(seconds=30)
    assert policy.next_delay(1, scheduled_s=5) == timedelta(seconds=5)
    assert policy.next_delay(3, scheduled_s=1800) == timedelta(seconds=1800)
    assert policy.next_delay(1, scheduled_s=5, hint_s=60) == timedelta(seconds=60)
    assert policy.next_delay(1, hint_s=120) == timedelta(seconds=120)
    assert policy.next_delay(1, hint_s=1) == timedelta(seconds=30)


def test_attempts_are_the_providers_own_when_each_keeps_a_schedule_else_the_policys() -> None:
    policy = RetryPolicy(max_attempts=8)
    assert policy.attempts_for([]) == 8
    assert policy.attempts_for([None]) == 8
    assert policy.attempts_for([3]) == 3
    assert policy.attempts_for([3, 12]) == 12
    assert policy.attempts_for([3, None]) == 8
