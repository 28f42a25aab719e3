"""Translation of computed-trait definitions between omni.profile.v1.ComputedTrait and the domain."""

from __future__ import annotations

from omni.profile.v1 import profile_pb2
from omni_profile import wire
from omni_profile.computed import Definition

_KIND_PREFIX = "COMPUTED_TRAIT_KIND_"
_STATE_PREFIX = "COMPUTED_TRAIT_STATE_"


def definition_from_proto(message: profile_pb2.ComputedTrait) -> Definition:
    """The domain definition of a checked ComputedTrait (state and create_time are the service's)."""
    return Definition(
        name=message.name,
        kind=str(profile_pb2.ComputedTraitKind.Name(message.kind)).removeprefix(_KIND_PREFIX).lower(),
        event_type=message.event_type or None,
        channels=frozenset(name for name in (wire.channel_name(c) for c in message.channels) if name),
        property=message.property or None,
        window_days=message.window_days,
        per_channel=message.per_channel,
        currency_code=message.currency_code or None,
        description=message.description,
    )


def definition_to_proto(definition: Definition) -> profile_pb2.ComputedTrait:
    """The ComputedTrait of a stored definition."""
    message = profile_pb2.ComputedTrait(
        name=definition.name,
        kind=profile_pb2.ComputedTraitKind.Value(_KIND_PREFIX + definition.kind.upper()),
        event_type=definition.event_type or "",
        channels=sorted(wire.channel_value(c) for c in definition.channels),
        property=definition.property or "",
        window_days=definition.window_days,
        per_channel=definition.per_channel,
        currency_code=definition.currency_code or "",
        description=definition.description,
        state=profile_pb2.ComputedTraitState.Value(_STATE_PREFIX + definition.state.upper()),
    )
    if definition.created_at is not None:
        message.create_time.CopyFrom(wire.timestamp(definition.created_at))
    return message
