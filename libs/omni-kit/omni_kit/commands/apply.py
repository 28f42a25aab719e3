"""`omni apply -f`, `omni diff -f` and `omni get`: marketing configuration as YAML files in git.

A file holds one or more YAML documents, each one object::

    apiVersion: omni/v1
    kind: Segment
    spec:
      name: buyers
      condition: {event_count: {event_type: order_completed, comparison: COMPARISON_GTE, count: 1}}

Objects are matched with the live ones by their key (a segment's, offer's, journey's or computed trait's
name; a template's id). `apply` creates what is missing and updates what differs through the Update RPCs
with an update mask of the changed fields and the version it read (so a concurrent change is refused, not
overwritten); `--prune` archives the live objects of the kinds in the files that the files do not name.
Calls carry idempotency keys derived from their content, so an apply cut short can simply be run again.
`diff` shows the same plan and changes nothing (exit 1 when there are changes). `get KIND` prints the live
objects as documents `apply` takes unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import difflib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf.message import Message
from rich.console import Console

from omni_kit.commands.connect import Clients, CommandError, clients, explain, load_settings
from omni_kit.commands.kinds import KIND_MODULES, Kind, Lookup, find, registry

API_VERSION = "omni/v1"


@dataclass
class Desired:
    """An object as a file wants it: its spec (references by name still unresolved) and where it is."""

    kind: Kind
    spec: dict[str, Any]
    key: str
    where: str


@dataclass
class Change:
    """One step of the plan."""

    action: str  # create, update, unchanged, prune, refused (a change the service cannot make), kept (a
    # prune the service cannot make: said, not failed)
    kind: Kind
    key: str
    desired: Message | None = None
    live: Message | None = None
    fields: list[str] = field(default_factory=list)
    why: str = ""
    aliases: dict[str, str] = field(default_factory=dict)
    """Stand-in id -> name of references not resolvable yet (the object is created first by this apply)."""


def _plain(value: Any) -> Any:
    """YAML's own types (an unquoted 2026-01-01T00:00:00Z is a datetime) back to protobuf JSON's strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise CommandError(f"no such file or directory: {path}")
    if not found:
        raise CommandError(f"no .yaml or .yml files in {', '.join(map(str, paths))}")
    return found


def _unchecked(alias: str, target: str, name: str) -> str:
    """A stand-in id for a reference by name while the files are only checked (not yet planned)."""
    return f"<{target} {name}>"


def load(paths: list[Path]) -> list[Desired]:
    """The objects of the files, checked: known kinds, known fields, one object per key."""
    kinds = registry()
    objects: list[Desired] = []
    seen: dict[tuple[str, str], str] = {}
    for path in _files(paths):
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as error:
            raise CommandError(f"{path}: not YAML: {error}") from None
        for number, doc in enumerate(documents, start=1):
            if doc is None:
                continue
            where = f"{path} (document {number})"
            if not isinstance(doc, dict) or "kind" not in doc or "spec" not in doc:
                raise CommandError(f"{where}: a document needs `kind` and `spec`")
            if doc.get("apiVersion", API_VERSION) != API_VERSION:
                raise CommandError(
                    f"{where}: apiVersion {doc['apiVersion']!r}; this omni knows {API_VERSION}"
                )
            kind = kinds.get(str(doc["kind"]))
            if kind is None:
                raise CommandError(f"{where}: unknown kind {doc['kind']!r}; one of {', '.join(kinds)}")
            if not isinstance(doc["spec"], dict):
                raise CommandError(f"{where}: spec must be a mapping")
            spec = _plain(doc["spec"])
            key = kind.key_of(kind.parse(kind.with_ids(spec, _unchecked, where), where))
            if (kind.name, key) in seen:
                raise CommandError(f"{where}: {kind.name} {key!r} is also in {seen[kind.name, key]}")
            seen[kind.name, key] = where
            objects.append(Desired(kind, spec, key, where))
    return objects


class Index:
    """Live objects of each kind by key, listed once per kind (again after apply changed that kind)."""

    def __init__(self, opened: Clients) -> None:
        self._opened = opened
        self._live: dict[str, dict[str, Message]] = {}

    async def live(self, kind: Kind, *, fresh: bool = False) -> dict[str, Message]:
        """The kind's live objects by key."""
        if fresh or kind.name not in self._live:
            try:
                resources = await kind.list_live(self._opened)
            except grpc.aio.AioRpcError as error:
                raise explain(error, kind.service, self._opened.settings) from error
            live: dict[str, Message] = {}
            for resource in resources:
                live.setdefault(kind.key_of(resource), resource)
            self._live[kind.name] = live
        return self._live[kind.name]

    async def names(self, kind: Kind) -> dict[str, str]:
        """Id -> key of the objects the kind's references point at, by referenced kind."""
        kinds = registry()
        names: dict[str, str] = {}
        for _, target in kind.references.values():
            for key, resource in (await self.live(kinds[target])).items():
                names[kinds[target].id_of(resource)] = key
        return names


def _resolver(
    targets: dict[str, dict[str, Message]], planned: set[tuple[str, str]], where: str, aliases: dict[str, str]
) -> Lookup:
    """Names to ids from the live objects; an object the files create gets a stand-in id (kept in aliases)."""
    kinds = registry()

    def lookup(alias: str, target: str, name: str) -> str:
        found = targets[target].get(name)
        if found is not None:
            return kinds[target].id_of(found)
        if (target, name) in planned:
            stand_in = f"<new {target} {name}>"
            aliases[stand_in] = name
            return stand_in
        raise CommandError(f"{where}: {alias} {name!r}: no such {target}, live or in the files")

    return lookup


async def plan_kind(index: Index, kind: Kind, objects: list[Desired], prune: bool) -> list[Change]:
    """What apply would do to one kind's objects."""
    kinds = registry()
    planned = {(o.kind.name, o.key) for o in objects}
    live = dict(await index.live(kind))
    changes: list[Change] = []
    targets = {target: await index.live(kinds[target]) for _, target in kind.references.values()}
    for item in (o for o in objects if o.kind is kind):
        aliases: dict[str, str] = {}
        lookup = _resolver(targets, planned, item.where, aliases)
        resource = kind.parse(kind.with_ids(item.spec, lookup, item.where), item.where)
        current = live.pop(item.key, None)
        if current is None:
            changes.append(Change("create", kind, item.key, desired=resource, aliases=aliases))
            continue
        fields = kind.changed_fields(current, resource)
        why = kind.refusal(current, resource, fields) if fields else ""
        if not fields:
            changes.append(Change("unchanged", kind, item.key, resource, current))
        elif not why:
            changes.append(Change("update", kind, item.key, resource, current, fields, aliases=aliases))
        else:
            changes.append(Change("refused", kind, item.key, resource, current, fields, why, aliases))
    if prune:
        for key, current in sorted(live.items()):
            if kind.can_archive:
                changes.append(Change("prune", kind, key, live=current))
            else:
                changes.append(
                    Change("kept", kind, key, live=current, why=f"{kind.service} cannot archive them")
                )
    return changes


def document(
    kind: Kind, resource: Message, names: dict[str, str], aliases: dict[str, str] | None = None
) -> dict[str, Any]:
    """The YAML document of an object; references by name where the referenced object has one (or, for
    one this apply creates, the name `aliases` keeps for its stand-in id)."""
    spec = kind.with_names(kind.spec(resource), names | (aliases or {}))
    return {"apiVersion": API_VERSION, "kind": kind.name, "spec": spec}


def dump(documents: Iterable[dict[str, Any]]) -> str:
    """Documents as multi-document YAML."""
    return yaml.safe_dump_all(list(documents), sort_keys=False, allow_unicode=True, width=110)


def _label(change: Change) -> str:
    return f"{change.kind.plural}/{change.key}"


MARKS = {
    "create": "[green]+ create",
    "update": "[yellow]~ update",
    "prune": "[red]- archive",
    "refused": "[bold red]! cannot",
    "unchanged": "[dim]= unchanged",
    "kept": "[yellow]! cannot archive",
}


def show(console: Console, change: Change, names: dict[str, str]) -> None:
    """One step of the plan, readable: what is created, changed (a diff of the YAML), archived or refused."""
    detail = f" ({', '.join(change.fields)})" if change.fields else ""
    console.print(f"{MARKS[change.action]}[/] {_label(change)}{detail}", highlight=False)
    if change.why:
        console.print(f"    {change.why}", highlight=False)
    if change.desired is None:
        return
    after = dump([document(change.kind, change.desired, names, change.aliases)]).splitlines()
    if change.live is None:
        for line in after:
            console.print(f"    [green]+{line}[/]", highlight=False, soft_wrap=True)
        return
    if change.action in ("update", "refused"):
        before = dump([document(change.kind, change.live, names)]).splitlines()
        for line in list(difflib.unified_diff(before, after, "live", "file", lineterm=""))[2:]:
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
            console.print(f"    [{style}]{line}[/]", highlight=False, soft_wrap=True)


async def execute(opened: Clients, console: Console, changes: list[Change], counts: dict[str, int]) -> int:
    """Carry out steps of the plan; how many could not be applied."""
    failed = 0
    for change in changes:
        kind = change.kind
        try:
            if change.aliases and change.action in ("create", "update"):
                failed += 1
                missing = ", ".join(sorted(set(change.aliases.values())))
                console.print(
                    f"[bold red]not applied[/] {_label(change)}: {missing} not created", highlight=False
                )
            elif change.action == "create" and change.desired is not None:
                await kind.create(opened, change.desired)
                counts["created"] += 1
                console.print(f"[green]created[/] {_label(change)}", highlight=False)
            elif change.action == "update" and change.desired is not None and change.live is not None:
                await kind.update(opened, change.live, change.desired, change.fields)
                counts["updated"] += 1
                console.print(
                    f"[yellow]updated[/] {_label(change)} ({', '.join(change.fields)})", highlight=False
                )
            elif change.action == "prune" and change.live is not None:
                await kind.archive(opened, change.live)
                counts["archived"] += 1
                console.print(f"[red]archived[/] {_label(change)}", highlight=False)
            elif change.action == "unchanged":
                counts["unchanged"] += 1
            elif change.action == "kept":
                console.print(f"[yellow]cannot archive[/] {_label(change)} ({change.why})", highlight=False)
            else:
                failed += 1
                console.print(f"[bold red]not applied[/] {_label(change)}: {change.why}", highlight=False)
        except grpc.aio.AioRpcError as error:
            failed += 1
            message = explain(error, kind.service, opened.settings)
            console.print(f"[bold red]failed[/] {_label(change)}: {message}", highlight=False)
        except CommandError as error:
            failed += 1
            console.print(f"[bold red]failed[/] {_label(change)}: {error}", highlight=False)
    return failed


async def _apply(args: argparse.Namespace, console: Console) -> int:
    """apply (kinds in order, each planned against what the kinds before it became) or diff."""
    objects = load(args.file)
    failed = pending = 0
    counts = dict.fromkeys(("created", "updated", "archived", "unchanged"), 0)
    async with clients(load_settings()) as opened:
        index = Index(opened)
        for kind in registry().values():
            if not any(o.kind is kind for o in objects):
                continue
            changes = await plan_kind(index, kind, objects, args.prune)
            names = await index.names(kind)
            if args.command == "diff":
                for change in changes:
                    show(console, change, names)
                pending += sum(1 for c in changes if c.action not in ("unchanged", "kept"))
                continue
            failed += await execute(opened, console, changes, counts)
            if any(c.action in ("create", "update", "prune") for c in changes):
                await index.live(kind, fresh=True)
    if args.command == "diff":
        console.print(
            f"{pending} change(s) of {len(objects)} object(s) in the files" if pending else "no changes"
        )
        return 1 if pending else 0
    summary = ", ".join(f"{n} {what}" for what, n in counts.items())
    console.print(summary + (f", [bold red]{failed} not applied[/]" if failed else ""), highlight=False)
    return 1 if failed else 0


async def _get(args: argparse.Namespace) -> int:
    kinds = list(registry().values()) if args.kind == "all" else [find(args.kind)]
    documents = []
    async with clients(load_settings()) as opened:
        index = Index(opened)
        for kind in kinds:
            live = await index.live(kind)
            names = await index.names(kind)
            for key in sorted(live):
                if not args.names or key in args.names:
                    documents.append(document(kind, live[key], names))
    if args.names and len(documents) < len(args.names):
        found = {str(d["spec"][kinds[0].key]) for d in documents}
        missing = ", ".join(n for n in args.names if n not in found)
        raise CommandError(f"no {kinds[0].plural} named {missing}")
    sys.stdout.write(dump(documents))
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `omni apply`, `omni diff` and `omni get`."""
    kinds = ", ".join(KIND_MODULES)  # their plurals; the kinds themselves are imported when a command runs
    for name, what in (
        ("apply", "create or update objects to match YAML files"),
        ("diff", "show what `apply` would change (exit 1 when something would)"),
    ):
        sub = commands.add_parser(
            name, help=what, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub.add_argument(
            "-f",
            "--file",
            type=Path,
            action="append",
            required=True,
            help="a YAML file or a directory of them (repeatable)",
        )
        sub.add_argument(
            "--prune",
            action="store_true",
            help="archive live objects of the kinds in the files that the files do not name",
        )
        sub.set_defaults(run=lambda args: asyncio.run(_apply(args, Console())))
    get = commands.add_parser("get", help=f"print live objects as YAML ({kinds}, or all)")
    get.add_argument("kind", help=f"one of {kinds}, or all")
    get.add_argument("names", nargs="*", help="only these (names; ids for templates)")
    get.set_defaults(run=lambda args: asyncio.run(_get(args)))
