"""NATS users with least privilege: what each service may publish and subscribe to, written once, for the
embedded run's server and for the Kubernetes overlays (`omni nats-config`).

A service may publish only
- its own events: `<namespace>.events.<service>.>` (it is their producer; another's subjects are refused),
- the dead letters of its own durable consumers: `<namespace>.dlq.<service>-<durable>`,
- its live subjects (the gateway's `<namespace>.live.gateway.>`, which its replicas also subscribe to),
- the JetStream API calls it makes: creating or updating the two streams (every service ensures them at start),
  and creating, reading and pulling from its own durable consumers, and acknowledging their messages.
It may subscribe only to its own inbox prefix, `_INBOX.<service>.>` (the runtime connects with that prefix),
so it cannot read the replies, pulled messages included, that other services receive.

It reads other services' events only through its durable consumers, which JetStream delivers to its inbox.
The filter of a consumer with several subjects travels in the request's body, not its subject, so NATS cannot
restrict it by permission: a service could widen its own consumers' filters. Creating the consumers with an
administrative user ahead of the services would close that gap; it is not done yet.

An administrative user (`admin`) may do everything: for `omni dead-letters` (which re-publishes a dead letter
on the subject it came from) and for operators.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from omni_kit.bus.streams import dlq_stream, events_stream

ADMIN = "admin"
"""The user with every permission."""


@dataclass(frozen=True)
class NatsGrant:
    """What one service does on NATS beyond publishing its own events: its durable consumers (the names
    after `<service>-`) and its live (core NATS, not stored) subject families."""

    service: str
    durables: tuple[str, ...] = ()
    live: bool = False


GRANTS: Mapping[str, NatsGrant] = {
    "identity": NatsGrant("identity"),
    "profile": NatsGrant("profile", ("identity-lineage", "segment-memberships", "gateway-outcomes")),
    "segmentation": NatsGrant("segmentation", ("facts",)),
    "decisioning": NatsGrant("decisioning", ("read-models", "journey-profile", "outcomes")),
    "gateway": NatsGrant("gateway", ("send-requests", "contact-verdicts"), live=True),
}
"""Every service's grant. A new durable consumer must be named here, or it cannot be created under users."""


def inbox_prefix(service: str) -> str:
    """The inbox prefix a service's NATS connection uses, so that its permission can name its inbox alone."""
    return f"_INBOX.{service}"


def permissions(grant: NatsGrant, namespace: str = "omni") -> dict[str, dict[str, list[str]]]:
    """A service's NATS permissions (the server configuration's `permissions` block)."""
    events, dlq = events_stream(namespace), dlq_stream(namespace)
    publish = [f"{namespace}.events.{grant.service}.>", "$JS.API.INFO"]
    for stream in (events, dlq):
        publish += [f"$JS.API.STREAM.{verb}.{stream}" for verb in ("INFO", "CREATE", "UPDATE")]
    for durable in grant.durables:
        name = f"{grant.service}-{durable}"
        publish += [
            f"{namespace}.dlq.{name}",
            f"$JS.API.CONSUMER.CREATE.{events}.{name}",
            f"$JS.API.CONSUMER.CREATE.{events}.{name}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{events}.{name}",
            f"$JS.API.CONSUMER.INFO.{events}.{name}",
            f"$JS.API.CONSUMER.MSG.NEXT.{events}.{name}",
            f"$JS.ACK.{events}.{name}.>",
        ]
    subscribe = [f"{inbox_prefix(grant.service)}.>"]
    if grant.live:
        live = f"{namespace}.live.{grant.service}.>"
        publish.append(live)
        subscribe.append(live)
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def make_passwords(services: list[str] | tuple[str, ...]) -> dict[str, str]:
    """A random password for every service and for the administrative user."""
    return {name: secrets.token_urlsafe(24) for name in [*services, ADMIN]}


def password_variable(user: str) -> str:
    """The environment variable a NATS server reads a user's password from in `server_config(variables=True)`
    (Kubernetes: the Secret `nats-users`, one key per user, given to the server with the prefix NATS_PASSWORD_)."""
    return f"NATS_PASSWORD_{user}"


def server_config(
    passwords: Mapping[str, str] | None = None,
    namespace: str = "omni",
    *,
    users: list[str] | tuple[str, ...] | None = None,
) -> str:
    """The `authorization` block of a NATS server's configuration: a user per service with its permissions
    (services without a grant get none but their own events and inbox), and the administrative user.

    With passwords, they are written into the block (the embedded run); with users instead, each password is
    a reference to the environment variable `password_variable(user)`, which the server resolves at start
    (the Kubernetes overlays keep them in a Secret)."""
    if passwords is not None:
        entries = [(name, json.dumps(password)) for name, password in passwords.items()]
    else:
        entries = [(name, "$" + password_variable(name)) for name in users or [*GRANTS, ADMIN]]
    lines = ["authorization {", "  users: ["]
    for name, password in entries:
        lines.append(f"    {{user: {json.dumps(name)}, password: {password}")
        if name != ADMIN:
            granted = permissions(GRANTS.get(name, NatsGrant(name)), namespace)
            lines.append("     permissions: {")
            for kind in ("publish", "subscribe"):
                allowed = ", ".join(json.dumps(subject) for subject in granted[kind]["allow"])
                lines.append(f"       {kind}: {{allow: [{allowed}]}}")
            lines.append("     }")
        lines.append("    }")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def secret_manifest(name: str = "nats-users") -> str:
    """A Kubernetes Secret with a new random password per user (keys: the user names), for the overlays."""
    lines = ["apiVersion: v1", "kind: Secret", "metadata:", f"  name: {name}", "type: Opaque", "stringData:"]
    lines += [f"  {user}: {json.dumps(password)}" for user, password in make_passwords(list(GRANTS)).items()]
    return "\n".join(lines) + "\n"


def write_passwords(directory: Path, passwords: Mapping[str, str]) -> None:
    """Keep the passwords (readable by the owner only) for the next start of the same run."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nats-users.json"
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(dict(passwords)))


def read_passwords(directory: Path, services: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The passwords a run kept, with new ones for users it did not have."""
    path = directory / "nats-users.json"
    kept: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    fresh = make_passwords(services)
    return {name: kept.get(name, fresh[name]) for name in fresh}
