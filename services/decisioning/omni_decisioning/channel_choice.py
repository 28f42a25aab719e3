"""Which channel a journey reaches a person on: the first of its channels the person has consented to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from omni.profile.v1 import profile_pb2

GRANTED = profile_pb2.CONSENT_STATE_GRANTED


def choose_channel(preferred: Sequence[int], consents: Mapping[int, int]) -> int | None:
    """Return the first channel of `preferred` whose consent state is GRANTED, or None.

    `consents` maps omni.common.v1.Channel numbers to omni.profile.v1.ConsentState numbers; a channel with no
    known consent is not used, because sending without consent is the one mistake we must not make.
    """
    for channel in preferred:
        if consents.get(channel) == GRANTED:
            return channel
    return None
