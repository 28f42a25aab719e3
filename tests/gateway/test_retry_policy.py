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
