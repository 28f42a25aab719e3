"""Which channel a journey reaches a person on: the first of its channels profile's verdict allows marketing on."""

from __future__ import annotations

from collections.abc import Sequence

from omni_kit.contact import PersonVerdicts, Purpose


def choose_channel(preferred: Sequence[int], verdicts: PersonVerdicts) -> int | None:
    """Return the first channel of `preferred` (omni.common.v1.Channel numbers) on which the person may be
    sent marketing, or None.

    A journey's message is marketing. The verdicts are profile's (omni_kit.contact): a channel the person
    never answered for is not used, because sending without consent is the one mistake we must not make.
    """
    for channel in preferred:
        if verdicts.of(channel, Purpose.MARKETING).allowed:
            return channel
    return None
