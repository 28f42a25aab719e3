"""Experiments, their exposures, conversion definitions, and the analytical copy of outcomes reports read:
touches (messages sent, offers shown) with their receipts, credits of conversions to touches per attribution
model, per-person facts (acquisition source, channels reached) and hourly rollups by dimension.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


_TABLES = """
        CREATE TABLE conversion_definitions (
            id uuid PRIMARY KEY,
            name text NOT NULL UNIQUE,
            event_type text NOT NULL,
            filters jsonb NOT NULL,
            window_s integer NOT NULL,
            anchor text NOT NULL,
            revenue_property text NOT NULL,
            currency text NOT NULL,
            create_time timestamptz NOT NULL
        );
        CREATE INDEX conversion_definitions_event_type ON conversion_definitions (event_type);

        CREATE TABLE experiments (
            id uuid PRIMARY KEY,
            name text NOT NULL UNIQUE,
            description text NOT NULL,
            attachment_kind text NOT NULL,
            attachment_value text NOT NULL,
            arms jsonb NOT NULL,
            conversion_definition_id uuid NOT NULL REFERENCES conversion_definitions (id),
            state text NOT NULL,
            create_time timestamptz NOT NULL,
            start_time timestamptz,
            stop_time timestamptz,
            archive_time timestamptz
        );
        -- At most one experiment runs on an attachment, so a send has one assignment.
        CREATE UNIQUE INDEX experiments_running_attachment ON experiments (attachment_kind, attachment_value)
            WHERE state = 'running';

        -- One row per person and experiment (the global control group is the nil experiment id): the first
        -- time they reached their arm. Their conversions are read from outcome_conversions, by the window.
        CREATE TABLE experiment_exposures (
            experiment_id uuid NOT NULL,
            person_id uuid NOT NULL,
            arm text NOT NULL,
            exposed_at timestamptz NOT NULL,
            request_id text,
            PRIMARY KEY (experiment_id, person_id)
        );
        CREATE INDEX experiment_exposures_person ON experiment_exposures (person_id);
        CREATE INDEX experiment_exposures_request ON experiment_exposures (request_id)
            WHERE request_id IS NOT NULL;

        -- A touch: a message the gateway sent, or an offer a decision showed (kind 'impression').
        CREATE TABLE outcome_touches (
            touch_id text PRIMARY KEY,
            kind text NOT NULL,
            person_id uuid NOT NULL,
            channel smallint NOT NULL,
            journey text NOT NULL,
            template text NOT NULL,
            experiment_arm text NOT NULL,
            offer text NOT NULL,
            source text NOT NULL,
            sent_at timestamptz NOT NULL,
            bucket timestamptz NOT NULL,
            delivered_at timestamptz,
            opened boolean NOT NULL DEFAULT false,
            clicked boolean NOT NULL DEFAULT false
        );
        CREATE INDEX outcome_touches_person ON outcome_touches (person_id, sent_at);

        -- What a conversion credited to a touch, per definition and model (converted once, revenue summed).
        CREATE TABLE outcome_credits (
            touch_id text NOT NULL,
            definition_id uuid NOT NULL,
            model text NOT NULL,
            revenue_minor bigint NOT NULL,
            PRIMARY KEY (touch_id, definition_id, model)
        );

        -- Every event that matched a definition (once per event and definition), touched or not: experiments
        -- count holdout persons' conversions too.
        CREATE TABLE outcome_conversions (
            event_id text NOT NULL,
            definition_id uuid NOT NULL,
            person_id uuid NOT NULL,
            occurred_at timestamptz NOT NULL,
            revenue_minor bigint NOT NULL,
            PRIMARY KEY (event_id, definition_id)
        );
        CREATE INDEX outcome_conversions_person ON outcome_conversions (definition_id, person_id, occurred_at);

        CREATE TABLE outcome_persons (
            person_id uuid PRIMARY KEY,
            source text NOT NULL DEFAULT 'unknown',
            channel_mask integer NOT NULL DEFAULT 0,
            channel_count smallint NOT NULL DEFAULT 0,
            sent integer NOT NULL DEFAULT 0,
            delivered integer NOT NULL DEFAULT 0,
            opened integer NOT NULL DEFAULT 0,
            clicked integer NOT NULL DEFAULT 0
        );
        CREATE INDEX outcome_persons_reached ON outcome_persons (channel_count) WHERE channel_count > 0;

        -- Per person and definition: converted after being reached, and the revenue (for the channel count).
        CREATE TABLE outcome_person_conversions (
            person_id uuid NOT NULL,
            definition_id uuid NOT NULL,
            revenue_minor bigint NOT NULL,
            PRIMARY KEY (definition_id, person_id)
        );

        -- Persons by the number of channels they were reached on ('1', '2', '3+'), kept as persons move up:
        -- reached, with a delivery, an open, a click; and per definition, converted, revenue and its squares.
        CREATE TABLE reach_rollups (
            value text PRIMARY KEY,
            persons bigint NOT NULL DEFAULT 0,
            delivered bigint NOT NULL DEFAULT 0,
            opened bigint NOT NULL DEFAULT 0,
            clicked bigint NOT NULL DEFAULT 0
        );
        CREATE TABLE reach_conversion_rollups (
            definition_id uuid NOT NULL,
            value text NOT NULL,
            converted bigint NOT NULL DEFAULT 0,
            revenue_minor bigint NOT NULL DEFAULT 0,
            revenue_sq numeric NOT NULL DEFAULT 0,
            PRIMARY KEY (definition_id, value)
        );

        -- Counts of touches by the hour and by the day (grain 'hour' or 'day', UTC) they were sent, and a
        -- dimension's value. A report over a range reads its whole days from the day rows and the hours at
        -- either end from the hour rows: a quarter is 90 rows per value, not 2,160.
        CREATE TABLE outcome_rollups (
            grain text NOT NULL,
            bucket timestamptz NOT NULL,
            dimension text NOT NULL,
            value text NOT NULL,
            sent bigint NOT NULL DEFAULT 0,
            delivered bigint NOT NULL DEFAULT 0,
            opened bigint NOT NULL DEFAULT 0,
            clicked bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (dimension, grain, bucket, value)
        );
        -- Credited conversions by the hour and day their touch was sent, a dimension's value, definition and model.
        -- revenue_sq is the sum over touches of the square of each touch's credited revenue, kept as each
        -- touch's revenue grows ((r + a)² - r² = 2ra + a²), so a mean's variance comes from the rollup alone.
        CREATE TABLE conversion_rollups (
            grain text NOT NULL,
            bucket timestamptz NOT NULL,
            dimension text NOT NULL,
            value text NOT NULL,
            definition_id uuid NOT NULL,
            model text NOT NULL,
            converted bigint NOT NULL DEFAULT 0,
            revenue_minor bigint NOT NULL DEFAULT 0,
            revenue_sq numeric NOT NULL DEFAULT 0,
            PRIMARY KEY (definition_id, model, dimension, grain, bucket, value)
        );
"""


def upgrade() -> None:
    """Create the tables (one statement at a time: asyncpg runs one per call)."""
    for statement in _TABLES.split(";\n"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    """Drop the tables."""
    op.execute(
        """
        DROP TABLE reach_conversion_rollups, reach_rollups, conversion_rollups, outcome_rollups, outcome_person_conversions, outcome_persons,
            outcome_conversions, outcome_credits, outcome_touches, experiment_exposures, experiments,
            conversion_definitions;
        """
    )
