"""Protobuf ⇄ domain for the servicer: the checks of request values identity.proto cannot declare (page
tokens, the batch's fast screen), and the messages of answers."""

from __future__ import annotations

import re
import uuid

from omni.identity.v1 import identity_pb2
from omni_identity import paging
from omni_identity.changes import Attachment, RefusalRule, RefusedLink, Resolution
from omni_identity.erasure import ErasureRecord
from omni_identity.events import identifier_messages
from omni_identity.merge import MergeRecord, MergeRule
from omni_identity.reads import IdentifierRecord, PersonRecord
from omni_kit import validation
from omni_kit.errors import FieldViolation, Violations, capped, has_control_characters

# The limits of an identifier set as identity.proto declares them, for the batch's screen below.
_IDENTIFIERS = validation.field_rules(identity_pb2.ResolvePersonRequest, "identifiers").repeated
_MAX_SOURCE = validation.field_rules(identity_pb2.ResolvePersonRequest, "source").string.max_len
_MAX_REFERENCE = validation.field_rules(identity_pb2.ResolvePersonRequest, "reference").string.max_len

_SET_PATH = re.compile(r"^requests\[(\d+)\](?:\.(.*))?$")

_RULES = {
    RefusalRule.LIMIT: identity_pb2.REFUSAL_RULE_LIMIT,
    RefusalRule.TRUST: identity_pb2.REFUSAL_RULE_TRUST,
}
_MERGE_RULES = {
    MergeRule.SHARED_IDENTIFIERS: identity_pb2.MERGE_RULE_SHARED_IDENTIFIERS,
    MergeRule.OPERATOR: identity_pb2.MERGE_RULE_OPERATOR,
}
_ATTACHMENTS = {
    Attachment.NEW_PERSON: identity_pb2.ATTACHMENT_NEW_PERSON,
    Attachment.MATCHED: identity_pb2.ATTACHMENT_MATCHED,
    Attachment.UNMERGE: identity_pb2.ATTACHMENT_UNMERGE,
    Attachment.RECORD_MATCH: identity_pb2.ATTACHMENT_RECORD_MATCH,
}


def surely_well_formed(request: identity_pb2.ResolvePersonRequest) -> bool:
    """Whether an identifier set surely keeps what identity.proto declares for it: a count of identifiers
    within the limits, a source and a reference no longer than theirs and without control characters (the
    `plain` rule).

    A screen for BatchResolvePersons, which checks thousands of sets: protovalidate takes about 2.6 µs a
    set, this 0.6 µs, so protovalidate runs only over a batch with a set this does not clear, to name what is
    wrong. The screen is never looser than the proto: the limits are read from it, and a test holds the
    rules it knows to those declared.
    """
    source, reference = request.source, request.reference
    return (
        _IDENTIFIERS.min_items <= len(request.identifiers) <= _IDENTIFIERS.max_items
        and len(source) <= _MAX_SOURCE
        and len(reference) <= _MAX_REFERENCE
        and not (source and has_control_characters(source))
        and not (reference and has_control_characters(reference))
    )


def page_token(token: str, kind: str, violations: Violations) -> uuid.UUID | None:
    """The position after which a page starts (None for the first), or a violation of page_token."""
    try:
        return paging.decode_token(token, kind)
    except ValueError as error:
        violations.add("page_token", str(error))
        return None


def resolution_message(resolution: Resolution) -> identity_pb2.Resolution:
    """A resolution as the API shows it."""
    if not (
        resolution.merged_person_ids
        or resolution.added_identifiers
        or resolution.refused_links
        or resolution.ignored_identifiers
        or resolution.person_id is None
    ):
        # Most answers of a batch: a known person, or a new one holding just what was asked.
        return identity_pb2.Resolution(person_id=str(resolution.person_id), created=resolution.created)
    return identity_pb2.Resolution(
        person_id="" if resolution.person_id is None else str(resolution.person_id),
        created=resolution.created,
        merged_person_ids=[str(pid) for pid in resolution.merged_person_ids],
        added_identifiers=identifier_messages(resolution.added_identifiers),
        refused_links=[refused_link_message(link) for link in resolution.refused_links],
        ignored_identifiers=identifier_messages(resolution.ignored_identifiers),
        forgotten=resolution.forgotten,
    )


def refused_link_message(link: RefusedLink) -> identity_pb2.RefusedLink:
    """A refused link as the API shows it."""
    [identifier] = identifier_messages([link.key])
    message = identity_pb2.RefusedLink(
        id=str(link.id),
        identifier=identifier,
        holder_person_id="" if link.holder_id is None else str(link.holder_id),
        person_ids=[str(pid) for pid in link.person_ids],
        resolved_person_id=str(link.resolved_person_id),
        rule=_RULES[link.rule],
        rule_identifier_type=link.rule_type,
        description=link.description,
        source=link.source,
        refuse_count=link.count,
    )
    message.refuse_time.FromDatetime(link.refused_at)
    message.last_refuse_time.FromDatetime(link.last_refused_at)
    return message


def merge_message(merge: MergeRecord) -> identity_pb2.Merge:
    """A lineage record as the API shows it."""
    message = identity_pb2.Merge(
        id=str(merge.id),
        survivor_person_id=str(merge.survivor_id),
        merged_person_id=str(merge.merged_id),
        cause_identifiers=identifier_messages(merge.cause_identifiers),
        source=merge.source,
        rule=_MERGE_RULES[merge.rule],
        reason=merge.reason,
        undo_reason=merge.undo_reason,
        reference=merge.reference,
    )
    message.merge_time.FromDatetime(merge.merged_at)
    if merge.undone_at is not None:
        message.undo_time.FromDatetime(merge.undone_at)
    return message


def person_message(person: PersonRecord) -> identity_pb2.Person:
    """A person as the API shows it."""
    message = identity_pb2.Person(
        id=str(person.id),
        identifiers=identifier_messages(person.identifiers),
        merged_person_ids=[str(pid) for pid in person.merged_person_ids],
    )
    message.create_time.FromDatetime(person.created_at)
    return message


def person_identifier_message(record: IdentifierRecord) -> identity_pb2.PersonIdentifier:
    """An identifier with its attachment as the API shows it."""
    [identifier] = identifier_messages([record.key])
    message = identity_pb2.PersonIdentifier(
        id=str(record.id),
        identifier=identifier,
        source=record.source,
        attached_person_id=str(record.attached_to),
        attachment=_ATTACHMENTS[record.attachment],
        via_identifiers=identifier_messages(record.via),
    )
    message.attach_time.FromDatetime(record.attached_at)
    return message


def erasure_message(erasure: ErasureRecord) -> identity_pb2.Erasure:
    """An erasure's audit record as the API shows it."""
    message = identity_pb2.Erasure(
        id=str(erasure.id),
        person_id=str(erasure.person_id),
        forgotten_person_ids=[str(pid) for pid in erasure.person_ids],
        requested_by=erasure.requested_by,
        reason=erasure.reason,
        request_id=erasure.request_id,
        identifier_count=erasure.identifier_count,
    )
    message.forget_time.FromDatetime(erasure.forgotten_at)
    return message


def violations_by_set(violations: Violations, sets: int) -> dict[int, list[FieldViolation]]:
    """A batch's violations by the identifier set they name ("requests[3].identifiers[0].value" is set 3's
    "identifiers[0].value"), for a batch refusing its sets individually. A violation naming no set (the batch
    as a whole) still refuses the whole call: raised as InvalidArgument with every such violation."""
    by_set: dict[int, list[FieldViolation]] = {}
    whole = Violations()
    for violation in violations.items:
        match = _SET_PATH.match(violation.field)
        if match is None or int(match.group(1)) >= sets:
            whole.add(violation.field, violation.description)
        else:
            by_set.setdefault(int(match.group(1)), []).append(
                FieldViolation(match.group(2) or "", violation.description)
            )
    whole.raise_if_any()
    return by_set


def refusal_message(index: int, violations: list[FieldViolation]) -> identity_pb2.IdentifierSetRefusal:
    """The answer for a refused identifier set: its first violations (omni_kit's cap) and how many more."""
    kept, omitted = capped(violations)
    return identity_pb2.IdentifierSetRefusal(
        index=index,
        field_violations=[
            identity_pb2.IdentifierSetViolation(field=v.field, description=v.description) for v in kept
        ],
        omitted_violation_count=omitted,
    )
