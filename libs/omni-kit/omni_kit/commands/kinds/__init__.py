"""The kinds of configuration `omni apply|diff|get` manage, one small module each.

A kind says which protobuf message it is, which of its fields a user writes (the spec; the rest is the
service's: ids it generates, versions, times), which field names an object (its key: a segment's name, a
template's id), and how to list, create, update and archive objects through the owning service. The YAML
of an object is ``{kind: Segment, spec: {...}}`` with the spec in protobuf's JSON mapping (field names as in
the proto, enums by name), so what `omni get` prints `omni apply` takes unchanged.

Adding a kind: a module here with a ``KIND = …`` instance of a Kind subclass, and its name in KIND_MODULES.
A kind whose service has no Update RPC leaves ``update`` as is: apply reports the difference and refuses
to change it; one without an archive RPC cannot be pruned. A kind whose service can make some changes and
not others says which in ``refusal``.

References by name may sit at any depth of a spec (a journey's ``entry: {segment: {segment: buyers}}``, a
condition step's ``in_segment``): wherever a mapping holds a reference's alias with a text value, it stands
for the id field with the referenced object's id.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from typing import Any, ClassVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

from omni_kit.commands.connect import Clients, CommandError

KIND_MODULES = (
    "segments",
    "computed_traits",
    "offers",
    "templates",
    "journeys",
    "conversion_definitions",
    "multi_step_journeys",
    "experiments",
)
"""In apply order: what others refer to first (offers and journeys name segments and templates, experiments
name journeys, offers and conversion definitions)."""

Lookup = Callable[[str, str, str], str]
"""(alias, referenced kind, name) -> the id a reference by name stands for (CommandError when none)."""


class Kind:
    """One kind of object; subclasses fill in the class attributes and the service calls."""

    name: ClassVar[str]
    """As in YAML's `kind:` (Segment)."""
    plural: ClassVar[str]
    """As `omni get` takes it (segments)."""
    service: ClassVar[str]
    """The service owning it (segmentation)."""
    message: ClassVar[type[Message]]
    """The protobuf resource."""
    key: ClassVar[str] = "name"
    """The spec field naming an object."""
    spec_fields: ClassVar[tuple[str, ...]]
    """The fields a user writes; the others are the service's."""
    can_update: ClassVar[bool] = True
    can_archive: ClassVar[bool] = True
    references: ClassVar[dict[str, tuple[str, str]]] = {}
    """Fields a file may name another object by instead of by id: alias -> (id field, kind). An offer's
    ``segment: buyers`` stands for its ``segment_id``, so files stay the same between installations."""

    def id_of(self, resource: Message) -> str:
        """The id the service gave the object (what references hold)."""
        return str(getattr(resource, "id", ""))

    def spec(self, resource: Message) -> dict[str, Any]:
        """The user's part of a resource, in protobuf's JSON mapping (defaults left out)."""
        data = json_format.MessageToDict(resource, preserving_proto_field_name=True)
        return {field: data[field] for field in self.spec_fields if field in data}

    def parse(self, spec: dict[str, Any], where: str) -> Message:
        """A spec from YAML as the resource; CommandError naming the document when it is not one."""
        unknown = sorted(set(spec) - set(self.spec_fields) - set(self.references))
        if unknown:
            raise CommandError(
                f"{where}: {self.name} has no field {', '.join(unknown)} (its fields: {', '.join(self.spec_fields)})"
            )
        if not spec.get(self.key):
            raise CommandError(f"{where}: {self.name} needs `{self.key}`, which names it")
        resource = self.message()
        try:
            json_format.ParseDict(spec, resource)
        except json_format.ParseError as error:
            raise CommandError(f"{where}: {error}") from None
        return resource

    def with_ids(self, spec: Any, lookup: Lookup, where: str) -> Any:
        """The spec with each reference by name (at any depth) replaced by its id field holding the id."""
        if isinstance(spec, list):
            return [self.with_ids(item, lookup, where) for item in spec]
        if not isinstance(spec, dict):
            return spec
        resolved: dict[str, Any] = {}
        for key, value in spec.items():
            if key in self.references and isinstance(value, str):
                id_field, target = self.references[key]
                if id_field in spec:
                    raise CommandError(f"{where}: give `{key}` or `{id_field}`, not both")
                resolved[id_field] = lookup(key, target, value)
            else:
                resolved[key] = self.with_ids(value, lookup, where)
        return resolved

    def with_names(self, spec: Any, names: dict[str, str]) -> Any:
        """The spec with each id field (at any depth) whose id has a name replaced by the reference by name."""
        aliases = {id_field: alias for alias, (id_field, _) in self.references.items()}
        if isinstance(spec, list):
            return [self.with_names(item, names) for item in spec]
        if not isinstance(spec, dict):
            return spec
        named: dict[str, Any] = {}
        for key, value in spec.items():
            if key in aliases and isinstance(value, str) and value in names:
                named[aliases[key]] = names[value]
            else:
                named[key] = self.with_names(value, names)
        return named

    def refusal(self, live: Message, desired: Message, fields: list[str]) -> str:
        """Why the service cannot make this change ("" when it can)."""
        if self.can_update:
            return ""
        return f"{self.service} cannot change {self.plural}: create it under a new {self.key}"

    def key_of(self, resource: Message) -> str:
        """The object's name (its key field)."""
        return str(getattr(resource, self.key))

    def changed_fields(self, live: Message, desired: Message) -> list[str]:
        """The spec fields whose values differ: the update mask."""
        have, want = self.spec(live), self.spec(desired)
        return [field for field in self.spec_fields if have.get(field) != want.get(field)]

    def request_id(self, verb: str, desired: Message, live: Message | None = None) -> str:
        """An idempotency key from the content, so a rerun after a failure does not act twice."""
        content = orjson.dumps(
            {"spec": self.spec(desired), "version": getattr(live, "version", 0) if live else 0},
            option=orjson.OPT_SORT_KEYS,
        )
        return f"omni-apply-{verb}-{hashlib.sha256(content).hexdigest()[:40]}"

    async def list_live(self, clients: Clients) -> list[Message]:
        """Every live (not archived) object."""
        raise NotImplementedError

    async def create(self, clients: Clients, desired: Message) -> Message:
        """Create an object; the stored one."""
        raise NotImplementedError

    async def update(self, clients: Clients, live: Message, desired: Message, mask: list[str]) -> Message:
        """Change the masked fields of a live object to the desired values."""
        raise CommandError(f"{self.service} has no Update RPC for {self.plural}")

    async def archive(self, clients: Clients, live: Message) -> None:
        """Archive (the services' delete) an object."""
        raise CommandError(f"{self.service} has no way to archive {self.plural}")


async def list_all(call: Any, request: Any, field: str) -> list[Any]:
    """Every item of a paged List RPC."""
    items: list[Any] = []
    request.page_size = 500
    while True:
        response = await call(request)
        items.extend(getattr(response, field))
        if not response.next_page_token:
            return items
        request.page_token = response.next_page_token


def registry() -> dict[str, Kind]:
    """The kinds by name, in apply order."""
    kinds: dict[str, Kind] = {}
    for module_name in KIND_MODULES:
        kind = importlib.import_module(f"{__name__}.{module_name}").KIND
        kinds[kind.name] = kind
    return kinds


def find(name: str) -> Kind:
    """A kind by its name (Segment), plural (segments) or singular in lower case (segment)."""
    wanted = name.lower()
    for kind in registry().values():
        if wanted in (kind.name.lower(), kind.plural.lower(), kind.plural.lower().rstrip("s")):
            return kind
    known = ", ".join(kind.plural for kind in registry().values())
    raise CommandError(f"unknown kind {name!r}; one of {known}")
