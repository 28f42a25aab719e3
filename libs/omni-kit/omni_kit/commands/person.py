"""`omni person show EMAIL|PHONE|ID`: one person's 360 view in the terminal.

Who: a person id (a UUID), an email (has an @), a phone (+ and digits; national numbers are read in
identity's default region), or any identifier as TYPE:VALUE (loyalty_card:LC-1, user_id:42). Identity
finds the person and shows their identifiers and merges; profile shows traits with their source, computed
traits, consent per channel and purpose, the cart, segments with since-when, and the newest events.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import uuid
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni_kit.commands.connect import Clients, CommandError, clients, explain, load_settings

PHONE = re.compile(r"\+?[0-9][0-9 ()./-]{4,}")
TYPED = re.compile(r"([a-z][a-z0-9_]*):(.+)")


def identifier_of(who: str) -> common_pb2.Identifier | None:
    """The identifier a command-line argument names; None for a person id."""
    who = who.strip()
    try:
        uuid.UUID(who)
        return None
    except ValueError:
        pass
    if (typed := TYPED.fullmatch(who)) and "@" not in who:
        return common_pb2.Identifier(type=typed.group(1), value=typed.group(2))
    if "@" in who:
        return common_pb2.Identifier(type="email", value=who)
    if PHONE.fullmatch(who):
        return common_pb2.Identifier(type="phone", value=who)
    raise CommandError(f"{who!r} is not a person id, an email, a phone or TYPE:VALUE (loyalty_card:LC-1)")


def _time(stamp: Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


def _enum(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower().replace("_", " ")


def _value(value: Any) -> str:
    if isinstance(value, dict | list):
        import orjson

        return orjson.dumps(value).decode()
    return str(value)


async def find_person(opened: Clients, who: str) -> identity_pb2.Person:
    """The person an argument names, through identity."""
    stub = identity_pb2_grpc.IdentityServiceStub(opened.channel("identity"))
    identifier = identifier_of(who)
    try:
        if identifier is None:
            return (await stub.GetPerson(identity_pb2.GetPersonRequest(person_id=who.strip()))).person
        return (await stub.LookupPerson(identity_pb2.LookupPersonRequest(identifier=identifier))).person
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            what = "id" if identifier is None else identifier.type
            raise CommandError(f"no person with {what} {who!r}") from None
        raise explain(error, "identity", opened.settings) from error


async def show(opened: Clients, who: str, events: int) -> Group:
    """The 360 view as rich renderables."""
    person = await find_person(opened, who)
    profile_stub = profile_pb2_grpc.ProfileServiceStub(opened.channel("profile"))
    try:
        profile = (
            await profile_stub.GetProfile(
                profile_pb2.GetProfileRequest(person_id=person.id, recent_event_count=events)
            )
        ).profile
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise explain(error, "profile", opened.settings) from error
        profile = profile_pb2.Profile(person_id=person.id)
    parts: list[Any] = []
    header = (
        f"[bold]{person.id}[/]  known since {_time(person.create_time)}  ·  {profile.event_count:,} events"
    )
    if person.merged_person_ids:
        header += f"  ·  merged from {', '.join(person.merged_person_ids)}"
    parts.append(header)

    ids = Table(title="identity", title_justify="left", expand=True)
    ids.add_column("type")
    ids.add_column("value")
    for identifier in sorted(person.identifiers, key=lambda i: (i.type, i.value)):
        ids.add_row(identifier.type, identifier.value)
    parts.append(ids)

    traits = Table(title="traits", title_justify="left", expand=True)
    for column in ("trait", "value", "source", "as of"):
        traits.add_column(column)
    trait_values = json_format.MessageToDict(profile.traits)
    for name in sorted(trait_values):
        meta = profile.trait_metadata.get(name)
        traits.add_row(
            name,
            _value(trait_values[name]),
            meta.source if meta else "",
            _time(meta.update_time) if meta else "",
        )
    for name, value in sorted(json_format.MessageToDict(profile.computed_traits).items()):
        traits.add_row(name, _value(value), "[italic]computed[/]", "")
    parts.append(traits)

    consent = Table(title="consent", title_justify="left", expand=True)
    for column in ("channel", "purpose", "state", "may contact", "source", "since"):
        consent.add_column(column)
    for item in profile.consents:
        consent.add_row(
            _enum(common_pb2.Channel.Name(item.channel), "CHANNEL_"),
            _enum(profile_pb2.ConsentPurpose.Name(item.purpose), "CONSENT_PURPOSE_"),
            _enum(profile_pb2.ConsentState.Name(item.state), "CONSENT_STATE_"),
            "yes" if item.contact_allowed else "[red]no[/]",
            item.source,
            _time(item.update_time),
        )
    parts.append(consent)

    if profile.cart.items:
        cart = Table(title="cart", title_justify="left", expand=True)
        for column in ("product", "name", "quantity", "unit price"):
            cart.add_column(column)
        for line in profile.cart.items:
            price = line.unit_price
            cart.add_row(
                line.product_id,
                line.name,
                str(line.quantity),
                f"{price.amount_minor / 100:,.2f} {price.currency_code}" if price.currency_code else "",
            )
        parts.append(cart)

    segments = Table(title="segments", title_justify="left", expand=True)
    segments.add_column("segment")
    segments.add_column("since")
    for membership in sorted(profile.segments, key=lambda m: m.segment_name):
        segments.add_row(membership.segment_name or membership.segment_id, _time(membership.enter_time))
    parts.append(segments)

    timeline = Table(title=f"recent events (newest {events})", title_justify="left", expand=True)
    for column in ("when", "channel", "type", "details"):
        timeline.add_column(column)
    for event in profile.recent_events:
        details = json_format.MessageToDict(event.properties)
        if event.HasField("cart_item"):
            details["cart_item"] = f"{event.cart_item.quantity} x {event.cart_item.product_id}"
        text = ", ".join(f"{k}={_value(v)}" for k, v in details.items())
        timeline.add_row(
            _time(event.occurred_at),
            _enum(common_pb2.Channel.Name(event.channel), "CHANNEL_"),
            event.type,
            text[:120] + ("…" if len(text) > 120 else ""),
        )
    parts.append(timeline)
    return Group(*parts)


async def _show(args: argparse.Namespace, console: Console) -> int:
    async with clients(load_settings()) as opened:
        view = await show(opened, args.who, args.events)
    console.print(Panel(view, title="person", title_align="left"))
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `omni person show`."""
    person = commands.add_parser("person", help="look at one person")
    actions = person.add_subparsers(dest="action", required=True)
    show_cmd = actions.add_parser(
        "show",
        help="the 360 view: identity, traits, consent, segments, timeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show_cmd.add_argument("who", help="person id, email, phone or TYPE:VALUE")
    show_cmd.add_argument("--events", type=int, default=10, help="how many recent events (10)")
    show_cmd.set_defaults(run=lambda args: asyncio.run(_show(args, Console())))
