"""The BatchResolvePersons request profile writes as bytes is the one the message classes would build."""

from __future__ import annotations

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni_profile.domain import Identifier
from omni_profile.identity_client import IdentifierSet, batch_resolve_request


def test_the_request_bytes_parse_to_the_request_the_message_classes_build() -> None:
    sets = [
        IdentifierSet([Identifier("email", "Zoë.Ångström@example.com")], "web", "web_sdk/evt-ü1"),
        IdentifierSet([Identifier("anonymous_id", "a" * 300), Identifier("device_id", "d-1")], "app"),
        IdentifierSet([Identifier("phone", "+33 6 12 34 56 78")], ""),
    ]
    expected = identity_pb2.BatchResolvePersonsRequest(
        requests=[
            identity_pb2.ResolvePersonRequest(
                identifiers=[common_pb2.Identifier(type=i.type, value=i.value) for i in s.identifiers],
                source=s.source,
                reference=s.reference,
            )
            for s in sets
        ],
        refuse_sets_individually=True,
    )
    written = batch_resolve_request(sets)
    assert identity_pb2.BatchResolvePersonsRequest.FromString(written) == expected
    assert written == expected.SerializeToString()
