"""Checks of the requests other than tracking and traits: consent, reads, computed-trait definitions.

What profile.proto declares (person ids, channels, states, sizes, names, ranges) is checked by
omni_kit.validation; here is what a proto cannot say: no consent for a channel that is not a contact of the
person (the webhook, omni_kit.contact), double opt-in only on email grants, what each kind of
computed trait needs and may not have, event types in any script. Page tokens are checked when decoded.
"""

from __future__ import annotations

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2
from omni_kit import contact, validation
from omni_kit.event_types import is_event_type

_NEEDS_EVENT_TYPE = (profile_pb2.COMPUTED_TRAIT_KIND_SUM, profile_pb2.COMPUTED_TRAIT_KIND_LIFETIME_VALUE)
_NEEDS_PROPERTY = (profile_pb2.COMPUTED_TRAIT_KIND_SUM, profile_pb2.COMPUTED_TRAIT_KIND_MOST_FREQUENT_VALUE)
_WINDOWED = (profile_pb2.COMPUTED_TRAIT_KIND_COUNT, profile_pb2.COMPUTED_TRAIT_KIND_SUM)
_PER_CHANNEL = (
    profile_pb2.COMPUTED_TRAIT_KIND_COUNT,
    profile_pb2.COMPUTED_TRAIT_KIND_SUM,
    profile_pb2.COMPUTED_TRAIT_KIND_FIRST_OCCURRENCE,
    profile_pb2.COMPUTED_TRAIT_KIND_LAST_OCCURRENCE,
)


def validate_set_consent(request: profile_pb2.SetConsentRequest) -> None:
    """Check a SetConsent request: person, channel and state are required; double opt-in only on email
    grants."""
    violations = validation.check(request)
    consent = request.consent
    if consent.channel in contact.NOT_A_CONTACT_CHANNELS:
        violations.add(
            "consent.channel",
            f"{contact.channel_name(consent.channel)} reaches the retailer's systems, not the person: "
            "there is no consent to give for it",
        )
    # A double opt-in state (not UNSPECIFIED) the proto's rules found known.
    if consent.double_opt_in and not violations.names("consent.double_opt_in"):
        if consent.channel != common_pb2.CHANNEL_EMAIL:
            violations.add("consent.double_opt_in", "double opt-in is for email consent only")
        elif consent.state != profile_pb2.CONSENT_STATE_GRANTED:
            violations.add("consent.double_opt_in", "double opt-in applies to a grant (state GRANTED)")
    violations.raise_if_any()


def validate_get_profile(request: profile_pb2.GetProfileRequest) -> None:
    """Check a GetProfile request."""
    validation.validate(request)


def validate_batch_get_profiles(request: profile_pb2.BatchGetProfilesRequest) -> None:
    """Check a BatchGetProfiles request (1 to 500 UUIDs)."""
    validation.validate(request)


def validate_list_timeline(request: profile_pb2.ListTimelineRequest) -> None:
    """Check a ListTimeline request (the page token is checked when it is decoded)."""
    validation.validate(request)


def validate_list_trait_history(request: profile_pb2.ListTraitHistoryRequest) -> None:
    """Check a ListTraitHistory request (the page token is checked when it is decoded)."""
    validation.validate(request)


def validate_list_consent_history(request: profile_pb2.ListConsentHistoryRequest) -> None:
    """Check a ListConsentHistory request (the page token is checked when it is decoded)."""
    validation.validate(request)


def validate_list_computed_traits(request: profile_pb2.ListComputedTraitsRequest) -> None:
    """Check a ListComputedTraits request (the page token is checked when it is decoded)."""
    validation.validate(request)


def validate_create_computed_trait(request: profile_pb2.CreateComputedTraitRequest) -> None:
    """Check a computed-trait definition: what each kind needs, and nothing it cannot use."""
    violations = validation.check(request)
    if not request.HasField("computed_trait"):
        violations.raise_if_any()
    trait = request.computed_trait
    path = "computed_trait"
    kind = trait.kind
    if trait.event_type and not is_event_type(trait.event_type):
        violations.add(f"{path}.event_type", "must be an event type (lower snake case, in any script)")
    elif not trait.event_type and kind in _NEEDS_EVENT_TYPE:
        violations.add(f"{path}.event_type", "is required for this kind")
    if kind in _NEEDS_PROPERTY:
        violations.check(bool(trait.property), f"{path}.property", "is required for this kind")
    elif trait.property and not violations.names(f"{path}.property"):
        violations.add(f"{path}.property", "is not used by this kind")
    if trait.window_days and kind not in _WINDOWED and not violations.names(f"{path}.window_days"):
        violations.add(f"{path}.window_days", "only counts and sums have a window")
    if trait.per_channel and kind not in _PER_CHANNEL:
        violations.add(f"{path}.per_channel", "this kind has no per-channel form")
    elif trait.per_channel and trait.window_days:
        violations.add(f"{path}.per_channel", "cannot be combined with a window")
    if kind == profile_pb2.COMPUTED_TRAIT_KIND_LIFETIME_VALUE:
        violations.check(
            bool(trait.currency_code), f"{path}.currency_code", "must be an ISO 4217 code such as EUR"
        )
    elif trait.currency_code and not violations.names(f"{path}.currency_code"):
        violations.add(f"{path}.currency_code", "is only for lifetime values")
    violations.raise_if_any()
