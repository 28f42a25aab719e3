"""Identity rules over gRPC: refused links returned, recorded, counted and listed; identifiers listed."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from omni.identity.v1 import identity_pb2

from .support import Identity, ident, identifiers_of, pairs, person, refused_links_of, resolve, unique


async def test_a_shared_tablet_does_not_fuse_two_account_holders(identity: Identity) -> None:
    mom, dad, tablet = unique("mom-"), unique("dad-"), unique("tablet-")
    owner = await resolve(identity, ident("user_id", mom), ident("device_id", tablet), source="app")

    other = await resolve(identity, ident("user_id", dad), ident("device_id", tablet), source="app")

    assert other.created and other.person_id != owner.person_id
    assert pairs(other.added_identifiers) == {("user_id", dad)}
    [link] = other.refused_links
    assert (link.identifier.type, link.identifier.value) == ("device_id", tablet)
    assert link.holder_person_id == owner.person_id and link.resolved_person_id == other.person_id
    assert link.rule == identity_pb2.REFUSAL_RULE_LIMIT and link.rule_identifier_type == "user_id"
    assert set(link.person_ids) == {owner.person_id, other.person_id}
    assert link.source == "app" and link.refuse_count == 1
    assert pairs((await person(identity, owner.person_id)).identifiers) == {
        ("user_id", mom),
        ("device_id", tablet),
    }

    again = await resolve(identity, ident("user_id", dad), ident("device_id", tablet), source="app")
    [repeat] = again.refused_links
    assert repeat.id == link.id and repeat.refuse_count == 2 and repeat.refuse_time == link.refuse_time
    async with identity.runtime.engine.connect() as connection:
        rows = (
            await connection.execute(
                sa.text("SELECT count, holder_id FROM refused_links WHERE id = :id"),
                {"id": uuid.UUID(link.id)},
            )
        ).all()
    assert [(r.count, str(r.holder_id)) for r in rows] == [(2, owner.person_id)]
    for person_id in (owner.person_id, other.person_id):
        [listed] = await refused_links_of(identity, person_id)
        assert listed.id == link.id and listed.refuse_count == 2


async def test_a_set_aside_identifier_nobody_holds_is_not_stored(identity: Identity) -> None:
    account, second = unique("u-"), unique("u-")
    owner = await resolve(identity, ident("user_id", account))

    resolution = await resolve(identity, ident("user_id", account), ident("user_id", second))

    assert resolution.person_id == owner.person_id and list(resolution.added_identifiers) == []
    [link] = resolution.refused_links
    assert link.holder_person_id == "" and (link.identifier.type, link.identifier.value) == (
        "user_id",
        second,
    )
    assert pairs((await person(identity, owner.person_id)).identifiers) == {("user_id", account)}
    # Seen alone later, it is a person of its own.
    assert (await resolve(identity, ident("user_id", second))).created


async def test_refused_links_are_listed_page_by_page_with_those_of_merged_persons(identity: Identity) -> None:
    account, device = unique("u-"), unique("d-")
    owner = await resolve(identity, ident("user_id", account), ident("device_id", device))
    links = []
    for _ in range(3):
        resolution = await resolve(identity, ident("user_id", unique("other-")), ident("device_id", device))
        links += resolution.refused_links
    # A person merged into the owner later brings the owner's refused links into its listing too.
    cookie = unique("c-")
    merged = await resolve(identity, ident("anonymous_id", cookie))
    await resolve(identity, ident("anonymous_id", cookie), ident("device_id", device))

    listed = await refused_links_of(identity, merged.person_id, page_size=2)
    assert [link.id for link in listed] == [link.id for link in links]
    assert all(link.holder_person_id == owner.person_id for link in listed)


async def test_identifiers_are_listed_in_attach_order_with_how_they_came(identity: Identity) -> None:
    cookie, email, device = unique("c-"), f"{unique('i')}@example.com", unique("d-")
    web = await resolve(identity, ident("anonymous_id", cookie), source="web")
    await resolve(identity, ident("anonymous_id", cookie), ident("email", email), source="newsletter")
    app = await resolve(identity, ident("device_id", device), source="app")
    await resolve(identity, ident("device_id", device), ident("email", email), source="app")

    listed = await identifiers_of(identity, app.person_id, page_size=1)

    assert [(i.identifier.type, i.identifier.value) for i in listed] == [
        ("anonymous_id", cookie),
        ("email", email),
        ("device_id", device),
    ]
    first, second, third = listed
    assert (first.attachment, first.source, first.attached_person_id) == (
        identity_pb2.ATTACHMENT_NEW_PERSON,
        "web",
        web.person_id,
    )
    assert second.attachment == identity_pb2.ATTACHMENT_MATCHED and second.source == "newsletter"
    assert pairs(second.via_identifiers) == {("anonymous_id", cookie)}
    # The device came with the person merged into the web person.
    assert (
        third.attached_person_id == app.person_id and third.attachment == identity_pb2.ATTACHMENT_NEW_PERSON
    )
    assert first.attach_time.ToDatetime() <= second.attach_time.ToDatetime() <= third.attach_time.ToDatetime()
    assert all(uuid.UUID(i.id).version == 7 for i in listed)


async def test_a_sixth_cookie_in_a_week_is_refused_and_older_cookies_stop_counting(
    identity: Identity,
) -> None:
    # anonymous_id: at most 5 values attached within 7 days (the defaults); counted by the database.
    account = unique("u-")
    owner = await resolve(identity, ident("user_id", account))
    cookies = [unique("c-") for _ in range(6)]
    for cookie in cookies[:5]:
        assert (
            await resolve(identity, ident("user_id", account), ident("anonymous_id", cookie))
        ).person_id == (owner.person_id)

    sixth = await resolve(identity, ident("user_id", account), ident("anonymous_id", cookies[5]))

    assert sixth.person_id == owner.person_id and list(sixth.added_identifiers) == []
    [link] = sixth.refused_links
    assert (link.identifier.type, link.identifier.value) == ("anonymous_id", cookies[5])
    assert link.rule == identity_pb2.REFUSAL_RULE_LIMIT and link.rule_identifier_type == "anonymous_id"
    assert "within 7 days" in link.description

    # A week later the five no longer count: the next cookie is attached.
    async with identity.runtime.engine.begin() as connection:
        await connection.execute(
            sa.text(
                "UPDATE identifiers SET created_at = created_at - interval '8 days'"
                " WHERE type = 'anonymous_id' AND value = ANY(:values)"
            ),
            {"values": cookies[:5]},
        )
    later = await resolve(identity, ident("user_id", account), ident("anonymous_id", cookies[5]))
    assert later.person_id == owner.person_id and later.refused_links == []
    assert pairs(later.added_identifiers) == {("anonymous_id", cookies[5])}


async def test_a_device_alone_does_not_join_two_loyalty_card_holders(identity: Identity) -> None:
    # Trust: a low-trust identifier may not on its own join a person holding a high-trust identifier to a
    # side carrying another one, although the loyalty card limit (3) would allow the two cards.
    tablet, card, other_card = unique("tablet-"), unique("card-"), unique("card-")
    owner = await resolve(identity, ident("loyalty_card", card), ident("device_id", tablet), source="pos")

    other = await resolve(
        identity, ident("device_id", tablet), ident("loyalty_card", other_card), source="pos"
    )

    assert other.created and other.person_id != owner.person_id
    assert pairs(other.added_identifiers) == {("loyalty_card", other_card)}
    [link] = other.refused_links
    assert (link.identifier.type, link.identifier.value) == ("device_id", tablet)
    assert link.rule == identity_pb2.REFUSAL_RULE_TRUST and link.rule_identifier_type == "device_id"
    assert link.holder_person_id == owner.person_id
    [listed] = await refused_links_of(identity, owner.person_id)
    assert listed.id == link.id and listed.rule == identity_pb2.REFUSAL_RULE_TRUST
    # An email (medium trust) seen with both cards does join them.
    email = f"{unique('card')}@example.com"
    await resolve(identity, ident("loyalty_card", card), ident("email", email))
    joined = await resolve(identity, ident("email", email), ident("loyalty_card", other_card))
    assert joined.person_id == owner.person_id and set(joined.merged_person_ids) == {other.person_id}
