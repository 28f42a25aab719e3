"""Templates with versions and variants: a template's content moves to `template_versions` (one row per
version, its variants as JSON), `templates` keeps which version is the latest and whether it is archived, and
every message records the template version it is rendered with.

Each template stored so far becomes version 1 with one variant for its channel in the default locale, as
CreateTemplate maps a template written the old way: email keeps subject, text and HTML; SMS and store keep
the text; push and app become a push whose title is the subject and body the text. Templates for web or the
call centre (which no send could use) keep their parts in an email-shaped variant and are archived. Their
messages were all rendered with version 1. Downgrading keeps each template's latest version, in the old
columns, from its variant for its channel (or its first default variant).

Revision ID: 0009
Revises: 0008
Create Date: 2027-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_VARIANT = """
CASE channel
  WHEN 'sms' THEN jsonb_build_object('kind', 'sms', 'locale', '', 'text', body_text)
  WHEN 'store' THEN jsonb_build_object('kind', 'terminal', 'locale', '', 'text', body_text)
  WHEN 'push' THEN jsonb_build_object(
    'kind', 'push', 'locale', '', 'title', subject, 'body', body_text, 'deep_link', '', 'image_url', '')
  WHEN 'app' THEN jsonb_build_object(
    'kind', 'push', 'locale', '', 'title', subject, 'body', body_text, 'deep_link', '', 'image_url', '')
  ELSE jsonb_build_object('kind', 'email', 'locale', '', 'subject', subject, 'html', body_html, 'text', body_text)
END
"""


def upgrade() -> None:
    op.create_table(
        "template_versions",
        sa.Column("template_id", sa.Text, sa.ForeignKey("templates.id"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("variants", JSONB, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("version >= 1", name="template_versions_version"),
        sa.CheckConstraint("jsonb_typeof(variants) = 'array'", name="template_versions_variants"),
    )
    op.add_column("templates", sa.Column("version", sa.Integer, nullable=False, server_default="1"))
    op.add_column(
        "templates",
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.add_column("templates", sa.Column("archive_time", sa.DateTime(timezone=True), nullable=True))
    op.alter_column("templates", "channel", nullable=True)
    op.create_check_constraint("templates_version", "templates", "version >= 1")
    op.execute(
        "INSERT INTO template_versions (template_id, version, variants, create_time) "
        f"SELECT id, 1, jsonb_build_array({_VARIANT}), create_time FROM templates"
    )
    op.execute(
        "UPDATE templates SET update_time = create_time, "
        "archive_time = CASE WHEN channel IN ('web', 'call_center') THEN now() END"
    )
    op.drop_column("templates", "subject")
    op.drop_column("templates", "body_text")
    op.drop_column("templates", "body_html")
    op.add_column("messages", sa.Column("template_version", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE messages SET template_version = 1 WHERE template_id IN (SELECT id FROM templates)")


def downgrade() -> None:
    op.drop_column("messages", "template_version")
    op.add_column("templates", sa.Column("subject", sa.Text, nullable=False, server_default=""))
    op.add_column("templates", sa.Column("body_text", sa.Text, nullable=False, server_default=""))
    op.add_column("templates", sa.Column("body_html", sa.Text, nullable=False, server_default=""))
    # The latest version's variant for the template's channel in the default locale, else its first default
    # variant; a template written with variants only takes the channel of that variant.
    op.execute(
        """
        WITH latest AS (
          SELECT t.id, t.channel, v.variants FROM templates t
          JOIN template_versions v ON v.template_id = t.id AND v.version = t.version
        ), chosen AS (
          SELECT DISTINCT ON (latest.id) latest.id, variant FROM latest,
            jsonb_array_elements(latest.variants) WITH ORDINALITY AS e(variant, position)
          WHERE variant->>'locale' = ''
          ORDER BY latest.id,
            (variant->>'kind') <> CASE latest.channel
              WHEN 'sms' THEN 'sms' WHEN 'store' THEN 'terminal' WHEN 'push' THEN 'push' WHEN 'app' THEN 'push'
              ELSE 'email' END,
            position
        )
        UPDATE templates SET
          channel = COALESCE(templates.channel, CASE chosen.variant->>'kind'
            WHEN 'terminal' THEN 'store' WHEN 'webhook' THEN 'web' ELSE chosen.variant->>'kind' END),
          subject = COALESCE(chosen.variant->>'subject', chosen.variant->>'title', ''),
          body_text = COALESCE(
            chosen.variant->>'text', chosen.variant->>'body', ''),
          body_html = COALESCE(chosen.variant->>'html', '')
        FROM chosen WHERE chosen.id = templates.id
        """
    )
    op.execute("UPDATE templates SET channel = 'email' WHERE channel IS NULL")
    op.alter_column("templates", "channel", nullable=False)
    op.alter_column("templates", "body_text", server_default=None)
    op.drop_constraint("templates_version", "templates", type_="check")
    op.drop_column("templates", "archive_time")
    op.drop_column("templates", "update_time")
    op.drop_column("templates", "version")
    op.drop_table("template_versions")
