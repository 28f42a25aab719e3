"""Profile's contact verdicts (omni_kit.contact) replace the consents decisioning kept and judged itself.

The verdicts are derived from the consents kept so far, which are marketing consents only (journeys send
marketing) with a grant awaiting double opt-in stored as state 0: granted allows marketing on the channel,
denied, revoked and awaiting confirmation refuse it. They carry version 0, so the first announcement of
profile (its republish after the upgrade, or any later consent answer) replaces them. Downgrading keeps the
marketing verdicts as consents.

Revision ID: 0002
Revises: 0001
Create Date: 2027-02-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from omni.common.v1 import common_pb2
from omni_kit import contact

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)

# omni.profile.v1.ConsentState numbers as decisioning stored them (0: granted, awaiting confirmation).
_REASONS = {
    1: contact.Reason.CONSENT_GRANTED,
    2: contact.Reason.DENIED,
    3: contact.Reason.REVOKED,
    0: contact.Reason.AWAITING_CONFIRMATION,
}


def _channel_names() -> str:
    cases = " ".join(
        f"WHEN {number} THEN '{contact.channel_name(number)}'"
        for number in common_pb2.Channel.values()
        if number != common_pb2.CHANNEL_UNSPECIFIED
    )
    return f"CASE channel {cases} ELSE channel::text END"


def upgrade() -> None:
    contact.create_table(op)
    reasons = " ".join(f"WHEN {state} THEN '{reason.value}'" for state, reason in _REASONS.items())
    op.execute(
        "INSERT INTO contact_verdicts (person_id, version, verdicts, decide_time) "
        "SELECT person_id, 0, jsonb_agg(jsonb_build_object("
        f"'channel', {_channel_names()}, 'purpose', 'marketing', 'allowed', state = 1, "
        f"'reason', CASE state {reasons} ELSE 'no_consent' END) ORDER BY channel), max(update_time) "
        "FROM consents GROUP BY person_id"
    )
    op.drop_table("consents")


def downgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("channel", sa.SmallInteger, primary_key=True),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("update_time", _TS, nullable=False),
    )
    channels = " ".join(
        f"WHEN '{contact.channel_name(number)}' THEN {number}"
        for number in common_pb2.Channel.values()
        if number != common_pb2.CHANNEL_UNSPECIFIED
    )
    states = " ".join(f"WHEN '{reason.value}' THEN {state}" for state, reason in _REASONS.items())
    known = ", ".join(f"'{reason.value}'" for reason in _REASONS.values())
    op.execute(
        "INSERT INTO consents (person_id, channel, state, update_time) "
        f"SELECT person_id, CASE v->>'channel' {channels} END, CASE v->>'reason' {states} END, decide_time "
        "FROM contact_verdicts, jsonb_array_elements(verdicts) AS v "
        f"WHERE v->>'purpose' = 'marketing' AND v->>'reason' IN ({known}) "
        f"AND CASE v->>'channel' {channels} END IS NOT NULL"
    )
    contact.drop_table(op)
