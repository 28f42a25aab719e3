"""The `omni` command: one way to start, migrate and check every service.

omni serve <service>     run one service until SIGTERM/SIGINT
omni migrate <service>   apply the service's migrations to its database
omni health <host:port>  exit 0 when the server answers SERVING on grpc.health.v1
omni run [--tls]         the laptop run: PostgreSQL, NATS, an SMTP sink, all five services and the console
omni console             the web console (services/console), configured by OMNI_CONSOLE_* variables
omni certs [name …]      a local CA and certificates for the services (and an operator) for TLS/mTLS
omni nats-config [--secret]  the NATS users and permissions of the services (for the server's configuration),
                             or a Secret nats-users with new random passwords (Kubernetes)
omni write-key <source>      a new write key for profile's HTTP intake, and the hash to configure (only it is kept)
omni dead-letters list <service>                 the service's outbox and consumer dead letters
omni dead-letters replay <service> REF… | --all  replay them once their cause is fixed (omni_kit.bus.dead_letters)
omni import events|customers FILE   stream a CSV/NDJSON file to profile, resumable (omni_kit.commands.importing)
omni apply|diff -f PATH, omni get KIND   segments, offers, templates … as YAML (omni_kit.commands.apply)
omni person show EMAIL|PHONE|ID     the 360 view of a person in the terminal (omni_kit.commands.person)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from types import ModuleType

import grpc

from omni_kit.commands import COMMANDS
from omni_kit.db import create_engine, migrate
from omni_kit.grpc_client import channel
from omni_kit.runtime import settle_garbage_collector
from omni_kit.security import ClientSecurity, TlsFiles, nats_security
from omni_kit.telemetry import setup_telemetry

SERVICES = ("identity", "profile", "segmentation", "decisioning", "gateway")


def load_service(name: str) -> ModuleType:
    """Import a service's main module (omni_<name>.main), which offers Settings, MIGRATIONS and start()."""
    if name not in SERVICES:
        raise SystemExit(f"unknown service {name!r}; one of: {', '.join(SERVICES)}")
    return importlib.import_module(f"omni_{name}.main")


async def serve(name: str) -> None:
    """Run one service until a termination signal, then stop it gracefully (also while it still waits for
    its database or NATS at start)."""
    module = load_service(name)
    settings = module.Settings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(module.start(settings), name=f"start-{name}")
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    log = logging.getLogger("omni")
    if not starting.done():
        log.info("%s stopping before it was ready", name)
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        return
    stopping.cancel()
    runtime = starting.result()
    settle_garbage_collector()
    log.info("%s ready on port %d", name, runtime.port)
    await stop.wait()
    log.info("%s stopping", name)
    await runtime.close()


async def migrate_service(name: str) -> None:
    """Apply the migrations of one service."""
    module = load_service(name)
    settings = module.Settings()
    engine = create_engine(settings.database_url, application_name=f"omni-{name}-migrate")
    try:
        await migrate(engine, module.MIGRATIONS)
    finally:
        await engine.dispose()


async def dead_letters(name: str, action: str, refs: list[str], replay_all: bool) -> int:
    """List or replay a service's dead letters, reaching its database and NATS with its settings."""
    import nats

    from omni_kit.bus import dead_letters as letters

    if action == "replay" and not refs and not replay_all:
        raise SystemExit("name the dead letters to replay (outbox:<event id>, bus:<sequence>) or pass --all")
    try:
        outbox_ids, sequences = letters.parse_refs(refs)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    settings = load_service(name).Settings()
    engine = create_engine(settings.database_url, application_name=f"omni-{name}-dead-letters")
    client = await nats.connect(
        servers=settings.nats_servers, name=f"omni-{name}-dead-letters", **nats_security(settings)
    )
    js = client.jetstream()
    namespace = settings.event_namespace
    try:
        if action == "list":
            listed = [*await letters.list_outbox(engine), *await letters.list_bus(js, namespace, name)]
            for letter in listed:
                where = letter.consumer or letter.subject
                events = ",".join(letter.event_ids) or "-"
                print(f"{letter.ref}\t{where}\t{letter.size} bytes\tevents {events}\t{letter.error}")
            print(f"{len(listed)} dead letters of {name}", file=sys.stderr)
            return 0
        moved = (
            await letters.replay_outbox(engine, None if replay_all else outbox_ids)
            if replay_all or outbox_ids
            else []
        )
        replayed = (
            await letters.replay_bus(js, engine, namespace, name, None if replay_all else sequences)
            if replay_all or sequences
            else []
        )
        print(
            f"replayed {len(moved)} outbox and {len(replayed)} consumer dead letters of {name}",
            file=sys.stderr,
        )
        wanted = len(outbox_ids) + len(sequences)
        return 0 if replay_all or len(moved) + len(replayed) == wanted else 1
    finally:
        await client.drain()
        await engine.dispose()


def _health_security(ca: Path | None, cert: Path | None, key: Path | None) -> ClientSecurity | None:
    if cert is not None and key is not None:
        return ClientSecurity(tls=TlsFiles(cert, key, ca), ca_file=ca)
    if ca is not None:
        return ClientSecurity(ca_file=ca)
    return None


async def health(target: str, service: str, timeout_s: float, security: ClientSecurity | None = None) -> bool:
    """True when target answers SERVING for service on grpc.health.v1 (over TLS with security)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with channel(target, service="grpc.health.v1.Health", security=security) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def _run_command(args: argparse.Namespace) -> int:
    """Run a command registered by a module of omni_kit.commands: its errors as sentences, Ctrl-C as 130."""
    from rich.console import Console

    from omni_kit.commands.connect import CommandError

    try:
        return int(args.run(args))
    except CommandError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `omni` command."""
    parser = argparse.ArgumentParser(
        prog="omni", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run one service")
    serve_cmd.add_argument("service", choices=SERVICES)
    migrate_cmd = commands.add_parser("migrate", help="apply a service's migrations")
    migrate_cmd.add_argument("service", choices=SERVICES)
    health_cmd = commands.add_parser("health", help="check a server's health")
    health_cmd.add_argument("target", help="host:port")
    health_cmd.add_argument("--service", default="", help="service name to check (default: the server)")
    health_cmd.add_argument("--timeout", type=float, default=2.0)
    letters_cmd = commands.add_parser("dead-letters", help="list or replay a service's dead letters")
    letters_cmd.add_argument("action", choices=("list", "replay"))
    letters_cmd.add_argument("service", choices=SERVICES)
    letters_cmd.add_argument("refs", nargs="*", help="outbox:<event id> or bus:<sequence>, as listed")
    letters_cmd.add_argument("--all", action="store_true", dest="replay_all", help="replay every one")

    health_cmd.add_argument("--tls-ca", type=Path, help="verify the server's certificate against this CA")
    health_cmd.add_argument("--tls-cert", type=Path, help="client certificate (servers requiring mTLS)")
    health_cmd.add_argument("--tls-key", type=Path, help="key of --tls-cert")
    run_cmd = commands.add_parser("run", help="run everything locally")
    run_cmd.add_argument(
        "--tls",
        action="store_true",
        help="mTLS between the services and their callers (certificates in .omni/certs)",
    )
    commands.add_parser("console", help="serve the web console (OMNI_CONSOLE_* settings)")
    certs_cmd = commands.add_parser("certs", help="make a local CA and per-service certificates")
    certs_cmd.add_argument(
        "names", nargs="*", default=[*SERVICES, "operator"], help="certificate names (default: the services)"
    )
    certs_cmd.add_argument("--out", type=Path, default=Path(".omni/certs"), help="directory (.omni/certs)")
    certs_cmd.add_argument("--host", action="append", default=[], help="another DNS name or IP, repeatable")
    certs_cmd.add_argument("--days", type=int, default=90, help="validity of the certificates (90)")
    nats_cmd = commands.add_parser("nats-config", help="the services' NATS users and permissions")
    nats_cmd.add_argument(
        "--secret", action="store_true", help="print a Secret nats-users with new random passwords instead"
    )
    key_cmd = commands.add_parser("write-key", help="a new write key for profile's HTTP intake")
    key_cmd.add_argument("source", help="the source the key sends as (web, app, pos …)")
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(commands)
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=os.environ.get("OMNI_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # stamina logs a bare "stamina.retry_scheduled" warning per retry; omni_kit.db.retry_transaction and the
    # runtime's start-up log what was retried and why themselves (a rerun after a concurrent merge is routine).
    logging.getLogger("stamina").setLevel(logging.ERROR)
    if getattr(args, "run", None) is not None:
        return _run_command(args)
    if args.command == "serve":
        setup_telemetry(args.service)
        asyncio.run(serve(args.service))
        return 0
    if args.command == "migrate":
        asyncio.run(migrate_service(args.service))
        return 0
    if args.command == "dead-letters":
        return asyncio.run(dead_letters(args.service, args.action, args.refs, args.replay_all))
    if args.command == "health":
        security = _health_security(args.tls_ca, args.tls_cert, args.tls_key)
        return 0 if asyncio.run(health(args.target, args.service, args.timeout, security)) else 1
    if args.command == "console":
        from omni_console.main import serve_from_environment

        serve_from_environment()
        return 0
    if args.command == "certs":
        from omni_kit.security.certs import make_certificates

        make_certificates(args.out, args.names, hosts=args.host, days=args.days)
        print(f"CA and certificates for {', '.join(args.names)} in {args.out}")
        return 0
    if args.command == "write-key":
        import json

        from omni_profile.http.sources import new_write_key

        key, hashed = new_write_key(args.source)
        print(f"write key (give it to the {args.source} source's SDK; it is not kept): {key}")
        print("add to OMNI_PROFILE_WRITE_KEYS (beside the key it replaces, until that one is retired):")
        print(json.dumps({hashed: args.source}))
        return 0
    if args.command == "nats-config":
        from omni_kit.security import nats_users

        print(nats_users.secret_manifest() if args.secret else nats_users.server_config(), end="")
        return 0
    from omni_kit.embedded.run import run_all

    return run_all(tls=args.tls)


if __name__ == "__main__":
    raise SystemExit(main())
