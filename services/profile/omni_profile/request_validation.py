"""Checks of the requests other than tracking and traits: consent, reads, computed-trait definitions."""

from __future__ import annotations

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.errors import Violations, has_control_characters
from omni_profile.validation import (
    MAX_SOURCE,
    MAX_TRAIT_NAME,
    SNAKE_CASE,
    check_channel,
    check_person_id,
    is_currency,
    is_event_type,
)

MAX_COMPUTED_TRAIT_NAME = 64
MAX_WINDOW_DAYS = 3650
MAX_DESCRIPTION = 500
MAX_PROPERTY = 128

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
    violations = Violations()
    check_person_id(request.person_id, "person_id", violations)
    if not request.HasField("consent"):
        violations.add("consent", "is required")
        violations.raise_if_any()
    consent = request.consent
    check_channel(consent.channel, "consent.channel", violations, required=True)
    state = consent.state
    if state not in profile_pb2.ConsentState.values():
        violations.add("consent.state", f"unknown consent state {state}")
    elif state == profile_pb2.CONSENT_STATE_UNSPECIFIED:
        violations.add("consent.state", "is required")
    if len(consent.source) > MAX_SOURCE:
        violations.add("consent.source", f"must be at most {MAX_SOURCE} characters")
    elif has_control_characters(consent.source):
        violations.add("consent.source", "holds control characters")
    if consent.purpose not in profile_pb2.ConsentPurpose.values():
        violations.add("consent.purpose", f"unknown consent purpose {consent.purpose}")
    opt_in = consent.double_opt_in
    if opt_in not in profile_pb2.DoubleOptInState.values():
        violations.add("consent.double_opt_in", f"unknown double opt-in state {opt_in}")
    elif opt_in != profile_pb2.DOUBLE_OPT_IN_STATE_UNSPECIFIED:
        if consent.channel != common_pb2.CHANNEL_EMAIL:
            violations.add("consent.double_opt_in", "double opt-in is for email consent only")
        elif state != profile_pb2.CONSENT_STATE_GRANTED:
            violations.add("consent.double_opt_in", "double opt-in applies to a grant (state GRANTED)")
    violations.raise_if_any()


def validate_get_profile(request: profile_pb2.GetProfileRequest) -> None:
    """Check a GetProfile request."""
    violations = Violations()
    check_person_id(request.person_id, "person_id", violations)
    violations.check(request.recent_event_count >= 0, "recent_event_count", "must not be negative")
    violations.raise_if_any()


def validate_list_timeline(request: profile_pb2.ListTimelineRequest) -> None:
    """Check a ListTimeline request (the page token is checked when it is decoded)."""
    violations = Violations()
    check_person_id(request.person_id, "person_id", violations)
    violations.check(request.page_size >= 0, "page_size", "must not be negative")
    violations.raise_if_any()


def validate_list_trait_history(request: profile_pb2.ListTraitHistoryRequest) -> None:
    """Check a ListTraitHistory request."""
    violations = Violations()
    check_person_id(request.person_id, "person_id", violations)
    if violations.check(len(request.trait_name) <= MAX_TRAIT_NAME, "trait_name", "is too long"):
        violations.check(
            not has_control_characters(request.trait_name), "trait_name", "holds control characters"
        )
    violations.check(request.page_size >= 0, "page_size", "must not be negative")
    violations.raise_if_any()


def validate_list_consent_history(request: profile_pb2.ListConsentHistoryRequest) -> None:
    """Check a ListConsentHistory request."""
    violations = Violations()
    check_person_id(request.person_id, "person_id", violations)
    violations.check(request.page_size >= 0, "page_size", "must not be negative")
    violations.raise_if_any()


def validate_list_computed_traits(request: profile_pb2.ListComputedTraitsRequest) -> None:
    """Check a ListComputedTraits request."""
    violations = Violations()
    violations.check(request.page_size >= 0, "page_size", "must not be negative")
    violations.raise_if_any()


def validate_create_computed_trait(request: profile_pb2.CreateComputedTraitRequest) -> None:
    """Check a computed-trait definition: what each kind needs, and nothing it cannot use."""
    violations = Violations()
    if not request.HasField("computed_trait"):
        violations.add("computed_trait", "is required")
        violations.raise_if_any()
    trait = request.computed_trait
    path = "computed_trait"
    if not trait.name:
        violations.add(f"{path}.name", "is required")
    elif len(trait.name) > MAX_COMPUTED_TRAIT_NAME or not SNAKE_CASE.fullmatch(trait.name):
        violations.add(
            f"{path}.name", f"must be lower snake case, at most {MAX_COMPUTED_TRAIT_NAME} characters"
        )
    kind = trait.kind
    if kind not in profile_pb2.ComputedTraitKind.values():
        violations.add(f"{path}.kind", f"unknown kind {kind}")
    elif kind == profile_pb2.COMPUTED_TRAIT_KIND_UNSPECIFIED:
        violations.add(f"{path}.kind", "is required")
    if trait.event_type and not is_event_type(trait.event_type):
        violations.add(f"{path}.event_type", "must be an event type (lower snake case, in any script)")
    elif not trait.event_type and kind in _NEEDS_EVENT_TYPE:
        violations.add(f"{path}.event_type", "is required for this kind")
    for index, channel in enumerate(trait.channels):
        check_channel(channel, f"{path}.channels[{index}]", violations, required=True)
    if kind in _NEEDS_PROPERTY:
        if not trait.property:
            violations.add(f"{path}.property", "is required for this kind")
        elif len(trait.property) > MAX_PROPERTY:
            violations.add(f"{path}.property", f"must be at most {MAX_PROPERTY} characters")
        elif has_control_characters(trait.property):
            violations.add(f"{path}.property", "holds control characters")
    elif trait.property:
        violations.add(f"{path}.property", "is not used by this kind")
    if not 0 <= trait.window_days <= MAX_WINDOW_DAYS:
        violations.add(f"{path}.window_days", f"must be between 0 and {MAX_WINDOW_DAYS}")
    elif trait.window_days and kind not in _WINDOWED:
        violations.add(f"{path}.window_days", "only counts and sums have a window")
    if trait.per_channel and kind not in _PER_CHANNEL:
        violations.add(f"{path}.per_channel", "this kind has no per-channel form")
    elif trait.per_channel and trait.window_days:
        violations.add(f"{path}.per_channel", "cannot be combined with a window")
    if kind == profile_pb2.COMPUTED_TRAIT_KIND_LIFETIME_VALUE:
        if not is_currency(trait.currency_code):
            violations.add(f"{path}.currency_code", "must be an ISO 4217 code such as EUR")
    elif trait.currency_code:
        violations.add(f"{path}.currency_code", "is only for lifetime values")
    if len(trait.description) > MAX_DESCRIPTION:
        violations.add(f"{path}.description", f"must be at most {MAX_DESCRIPTION} characters")
    violations.raise_if_any()
