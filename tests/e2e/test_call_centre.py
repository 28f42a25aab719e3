"""The call-centre view: a customer phones in; the agent's screen finds them by phone number and shows at
once whether they open emails, when they last logged in, and what they bought online and in the store."""

from __future__ import annotations

import uuid

from google.protobuf.struct_pb2 import Struct

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from tests.e2e.conftest import Omni
from tests.e2e.test_abandoned_cart import event, eventually


def _with_properties(message: profile_pb2.Event, **properties: float | str) -> profile_pb2.Event:
    values = Struct()
    values.update(properties)
    message.properties.CopyFrom(values)
    return message


async def test_agent_sees_the_whole_customer_by_phone(omni: Omni) -> None:
    email = f"lin.{uuid.uuid4().hex[:8]}@example.com"
    national = f"20255{uuid.uuid4().int % 100000:05d}"  # a US number, as the app's sign-up form took it
    pos_id = f"POS-{uuid.uuid4().hex[:8]}"

    events = [
        # The app sign-up carries the email and the phone number as typed.
        event(
            "signed_up",
            common_pb2.CHANNEL_APP,
            ("email", email),
            ("phone", f"({national[:3]}) {national[3:]}"),
        ),
        event("logged_in", common_pb2.CHANNEL_APP, ("email", email)),
        _with_properties(
            event("order_completed", common_pb2.CHANNEL_WEB, ("email", email)), revenue=59.9, currency="EUR"
        ),
        event("email_opened", common_pb2.CHANNEL_EMAIL, ("email", email)),
        # In the store the till knows the POS customer id and the receipt email.
        _with_properties(
            event("order_completed", common_pb2.CHANNEL_STORE, ("pos_customer_id", pos_id), ("email", email)),
            revenue=20.1,
            currency="EUR",
        ),
    ]
    await omni.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=events))

    # The caller id arrives in E.164; identity normalised the app's form input to the same number.
    caller = (
        await omni.identity.LookupPerson(
            identity_pb2.LookupPersonRequest(
                identifier=common_pb2.Identifier(type="phone", value=f"+1{national}")
            )
        )
    ).person
    assert ("pos_customer_id", pos_id) in {(i.type, i.value) for i in caller.identifiers}

    async def screen() -> profile_pb2.Profile | None:
        profile = (await omni.profile.GetProfile(profile_pb2.GetProfileRequest(person_id=caller.id))).profile
        computed = profile.computed_traits
        ready = "orders_in_store" in computed and "last_email_open_at" in computed
        return profile if ready and computed["orders_in_store"] == 1 else None

    profile = await eventually(screen, "the call-centre screen with opens, logins and purchases")
    computed = profile.computed_traits
    assert computed["orders_online"] == 1
    assert computed["orders_in_store"] == 1
    assert computed["last_email_open_at"], "the agent sees that this customer opens emails"
    assert "last_login_at" in computed
    assert computed["lifetime_value"]["amount_minor"] == 8000
    assert {e.channel for e in profile.recent_events} >= {
        common_pb2.CHANNEL_APP,
        common_pb2.CHANNEL_WEB,
        common_pb2.CHANNEL_STORE,
        common_pb2.CHANNEL_EMAIL,
    }
