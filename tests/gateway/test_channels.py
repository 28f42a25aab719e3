"""Every channel omni.common.v1 names is one of the gateway's, both ways, so a channel added to the proto
cannot make the gateway raise where it maps channels (templates, messages, contact verdicts)."""

from __future__ import annotations

from omni.common.v1 import common_pb2
from omni_gateway.domain import Channel
from omni_gateway.wire import channel_from_proto, channel_to_proto
from omni_kit import contact
from omni_kit.contact import Purpose, Reason


def test_every_proto_channel_maps_to_a_domain_channel_and_back() -> None:
    numbers = [n for n in common_pb2.Channel.values() if n != common_pb2.CHANNEL_UNSPECIFIED]
    assert {channel_from_proto(n) for n in numbers} == set(Channel)
    for number in numbers:
        channel = channel_from_proto(number)
        assert channel is not None
        assert channel_to_proto(channel) == number
        assert channel.value == contact.channel_name(number)
    assert channel_from_proto(common_pb2.CHANNEL_UNSPECIFIED) is None
    assert channel_from_proto(99) is None


def test_the_webhook_is_no_contact_of_the_person_so_the_gateway_copy_always_lets_it_out() -> None:
    number = channel_to_proto(Channel.WEBHOOK)
    assert number == common_pb2.CHANNEL_WEBHOOK
    for purpose in Purpose:
        verdict = contact.judge(number, purpose, None)
        assert verdict.allowed and verdict.reason is Reason.NOT_A_CONTACT
        assert verdict.refusal is None
