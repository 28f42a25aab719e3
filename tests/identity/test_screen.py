"""BatchResolvePersons' screen (messages.surely_well_formed) answers as identity.proto's rules do.

The batch runs protovalidate only over a batch with a set the screen does not clear, so a screen looser than
the proto would let a bad set through unnamed: it must know every rule declared on an identifier set, and
agree with protovalidate on every set.
"""

from __future__ import annotations

from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni_identity import messages
from omni_kit import validation


def _declared(message_type: type[Message]) -> dict[str, set[str]]:
    """Field → the names of the rules declared on it (standard and predefined), for fields with any."""
    declared: dict[str, set[str]] = {}
    for field in message_type.DESCRIPTOR.fields:
        rules = validation.field_rules(message_type, field.name)
        names = set()
        for kind, value in rules.ListFields():
            if isinstance(value, Message):  # string, repeated …: the rules inside
                names |= {name.full_name for name, _ in value.ListFields()}
            else:  # required, ignore, cel …
                names.add(kind.full_name)
        if names:
            declared[field.name] = names
    return declared


def test_the_screen_knows_every_rule_an_identifier_set_declares() -> None:
    # A rule added to identity.proto here must be added to the screen too (and then to this list).
    assert _declared(identity_pb2.ResolvePersonRequest) == {
        "identifiers": {"buf.validate.RepeatedRules.min_items", "buf.validate.RepeatedRules.max_items"},
        "source": {"buf.validate.StringRules.max_len", "omni.common.v1.plain"},
        "reference": {"buf.validate.StringRules.max_len", "omni.common.v1.plain"},
    }
    assert not identity_pb2.ResolvePersonRequest.DESCRIPTOR.GetOptions().ListFields()
    # The identifiers are the normaliser's: the proto declares nothing inside them.
    assert _declared(common_pb2.Identifier) == {}
    assert not common_pb2.Identifier.DESCRIPTOR.GetOptions().ListFields()


_TEXT = st.text(st.sampled_from("aZ9 -/é\x00\t\n\x1f\x7f\x80\u2028\U0001f600"), max_size=4) | st.builds(
    lambda head, size, tail: head + "x" * size + tail,
    st.sampled_from(["", "\x00", "é"]),
    st.integers(min_value=120, max_value=260),
    st.sampled_from(["", "\n", "\U0001f600"]),
)


@given(count=st.integers(min_value=0, max_value=102), source=_TEXT, reference=_TEXT)
def test_the_screen_agrees_with_protovalidate(count: int, source: str, reference: str) -> None:
    request = identity_pb2.ResolvePersonRequest(
        identifiers=[common_pb2.Identifier(type="device_id", value="d")] * count,
        source=source,
        reference=reference,
    )
    assert messages.surely_well_formed(request) == (not validation.check(request))
