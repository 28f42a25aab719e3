"""Event sources, cart and computed-trait state on the profile, trait history, consent purposes and double
opt-in, computed-trait definitions (with the default set), segment memberships, erasure tombstones.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_CART_TYPES = "('cart_item_added', 'cart_item_removed', 'order_completed')"

# The default computed traits, as data: (name, kind, event_type, channels, property, window_days,
# per_channel, currency_code, description).
DEFAULT_COMPUTED_TRAITS = [
    ("last_purchase_at", "last_occurrence", "order_completed", [], None, 0, False, None,
     "When the person last completed an order, on any channel."),
    ("last_email_open_at", "last_occurrence", "email_opened", [], None, 0, False, None,
     "When the person last opened an email."),
    ("last_login_at", "last_occurrence", "logged_in", [], None, 0, True, None,
     "When the person last logged in, per channel."),
    ("preferred_channel", "most_frequent_channel", None, [], None, 0, False, None,
     "The channel the person is most active on."),
    ("favourite_category", "most_frequent_value", None, [], "category", 0, False, None,
     "The product category the person looks at and buys most."),
    ("lifetime_value", "lifetime_value", "order_completed", [], None, 0, False, "EUR",
     "Revenue of all the person's orders, in EUR minor units."),
    ("orders_online", "count", "order_completed", ["web", "app"], None, 0, False, None,
     "Orders completed on the web shop or the app."),
    ("orders_in_store", "count", "order_completed", ["store"], None, 0, False, None,
     "Orders completed in a store."),
    ("orders_30d", "count", "order_completed", [], None, 30, False, None,
     "Orders completed in the last 30 days."),
]  # fmt: skip


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    # Events: ids are unique per source; existing events came through the API.
    op.add_column("events", sa.Column("source", sa.Text, nullable=False, server_default="api"))
    op.alter_column("events", "source", server_default=None)
    op.execute("UPDATE events SET source = 'gateway' WHERE id LIKE 'gateway:%'")
    op.drop_constraint("events_pkey", "events", type_="primary")
    op.create_primary_key("events_pkey", "events", ["source", "id"])
    op.drop_index("events_timeline", table_name="events")
    op.create_index(
        "events_timeline",
        "events",
        ["person_id", sa.text("occurred_at DESC"), sa.text("id DESC"), sa.text("source DESC")],
    )
    op.create_index(
        "events_cart",
        "events",
        ["person_id", "occurred_at"],
        postgresql_where=sa.text(f"type IN {_CART_TYPES}"),
    )

    # Profiles carry their cart and computed-trait state, and a tombstone once erased.
    op.add_column("profiles", sa.Column("cart", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")))
    op.add_column("profiles", _timestamp("cart_as_of", nullable=True))
    op.add_column(
        "profiles", sa.Column("computed", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"))
    )
    op.add_column("profiles", _timestamp("erased_at", nullable=True))
    op.execute(
        "UPDATE profiles AS p SET cart = c.doc FROM ("
        " SELECT person_id, jsonb_object_agg(product_id, jsonb_build_object("
        "  'quantity', quantity, 'name', name, 'unit_price_minor', unit_price_minor,"
        "  'currency_code', currency_code)) AS doc"
        " FROM cart_lines GROUP BY person_id) AS c WHERE p.person_id = c.person_id"
    )
    op.execute(
        "UPDATE profiles AS p SET cart_as_of = e.latest FROM ("
        f" SELECT person_id, max(occurred_at) AS latest FROM events WHERE type IN {_CART_TYPES}"
        " GROUP BY person_id) AS e WHERE p.person_id = e.person_id"
    )
    op.drop_table("cart_lines")

    op.create_table(
        "trait_changes",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("person_id", sa.Uuid, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("old_value", JSONB, nullable=True),
        sa.Column("new_value", JSONB, nullable=True),
        sa.Column("source", sa.Text, nullable=False),
        _timestamp("changed_at"),
    )
    op.create_index(
        "trait_changes_history",
        "trait_changes",
        ["person_id", sa.text("changed_at DESC"), sa.text("id DESC")],
    )

    # Consent per channel and purpose; what was recorded before purposes existed was marketing consent.
    for table in ("consents", "consent_history"):
        op.add_column(table, sa.Column("purpose", sa.Text, nullable=False, server_default="marketing"))
        op.alter_column(table, "purpose", server_default=None)
        op.add_column(table, sa.Column("double_opt_in", sa.Text, nullable=True))
    op.drop_constraint("consents_pkey", "consents", type_="primary")
    op.create_primary_key("consents_pkey", "consents", ["person_id", "channel", "purpose"])
    op.drop_index("ix_consent_history_person_id", table_name="consent_history")
    op.create_index(
        "consent_history_person",
        "consent_history",
        ["person_id", sa.text("recorded_at DESC"), sa.text("id DESC")],
    )

    computed_traits = op.create_table(
        "computed_traits",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=True),
        sa.Column("channels", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'::text[]")),
        sa.Column("property", sa.Text, nullable=True),
        sa.Column("window_days", sa.Integer, nullable=False, server_default="0"),
        sa.Column("per_channel", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("currency_code", sa.Text, nullable=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("backfill_after", sa.Uuid, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    # Backfilled like any new definition when profiles exist already, so that they get them too; on an empty
    # database there is nothing to backfill.
    state = (
        "backfilling"
        if op.get_bind().execute(sa.text("SELECT EXISTS (SELECT 1 FROM profiles)")).scalar()
        else "ready"
    )
    op.bulk_insert(
        computed_traits,
        [
            {
                "name": name,
                "kind": kind,
                "event_type": event_type,
                "channels": channels,
                "property": prop,
                "window_days": window_days,
                "per_channel": per_channel,
                "currency_code": currency_code,
                "description": description,
                "state": state,
            }
            for name, kind, event_type, channels, prop, window_days, per_channel, currency_code, description in (
                DEFAULT_COMPUTED_TRAITS
            )
        ],
    )

    op.create_table(
        "segment_memberships",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("segment_id", sa.Text, primary_key=True),
        sa.Column("segment_name", sa.Text, nullable=False),
        sa.Column("member", sa.Boolean, nullable=False),
        _timestamp("changed_at"),
    )


def downgrade() -> None:
    op.drop_table("segment_memberships")
    op.drop_table("computed_traits")
    op.drop_index("consent_history_person", table_name="consent_history")
    op.create_index("ix_consent_history_person_id", "consent_history", ["person_id"])
    # Only the marketing consent fits the old per-channel table.
    op.execute("DELETE FROM consents WHERE purpose <> 'marketing'")
    op.drop_constraint("consents_pkey", "consents", type_="primary")
    op.create_primary_key("consents_pkey", "consents", ["person_id", "channel"])
    for table in ("consents", "consent_history"):
        op.drop_column(table, "double_opt_in")
        op.drop_column(table, "purpose")
    op.drop_table("trait_changes")
    op.create_table(
        "cart_lines",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("product_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("unit_price_minor", sa.BigInteger, nullable=True),
        sa.Column("currency_code", sa.Text, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("quantity > 0", name="cart_lines_quantity_positive"),
    )
    op.execute(
        "INSERT INTO cart_lines (person_id, product_id, name, quantity, unit_price_minor, currency_code,"
        " updated_at) SELECT p.person_id, l.key, coalesce(l.value->>'name', ''), (l.value->>'quantity')::bigint,"
        " (l.value->>'unit_price_minor')::bigint, l.value->>'currency_code', p.updated_at"
        " FROM profiles AS p, jsonb_each(p.cart) AS l"
    )
    for column in ("erased_at", "computed", "cart_as_of", "cart"):
        op.drop_column("profiles", column)
    op.drop_index("events_cart", table_name="events")
    op.drop_index("events_timeline", table_name="events")
    # Ids were unique on their own: keep the first of each id (the API's, when there is one).
    op.execute(
        "DELETE FROM events AS e USING events AS o WHERE e.id = o.id AND e.source <> 'api'"
        " AND (o.source = 'api' OR o.source < e.source)"
    )
    op.drop_constraint("events_pkey", "events", type_="primary")
    op.drop_column("events", "source")
    op.create_primary_key("events_pkey", "events", ["id"])
    op.create_index(
        "events_timeline", "events", ["person_id", sa.text("occurred_at DESC"), sa.text("id DESC")]
    )
