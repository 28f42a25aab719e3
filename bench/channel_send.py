"""The SMS and push processes of the `gateway_send` suite: the local protocol servers of the gateway's tests,
and the gateway's providers sending to them.

    python -m bench.channel_send serve KIND          a server of KIND (smsc, vendor, push) on a free port of
                                                     127.0.0.1; prints "READY <port> <json>", stops when stdin
                                                     closes
    python -m bench.channel_send send KIND PORT SECONDS WARMUP CONCURRENCY JSON
                                                     sends through the provider for KIND for SECONDS after
                                                     WARMUP, CONCURRENCY at once; prints one JSON line

- `smsc`: the SMPP 3.4 SMSC of tests/gateway/smsc.py (bind, submit_sm, a deliver_sm receipt per message);
  the sender is the `smpp` provider (one bound transceiver session, windowed submits).
- `vendor`: the Twilio-shaped HTTP API of tests/gateway/sms_vendor.py (basic auth, form body, a JSON answer);
  the sender is the `http-sms` provider (pooled httpx connections). No status callbacks (none configured).
- `push`: the Web Push service of tests/gateway/push_service.py, which checks each request's VAPID JWT and
  decrypts its payload (RFC 8291) as a browser would; the sender is the `webpush` provider (pywebpush over a
  pooled aiohttp session), to one subscription the service made (JSON on the READY line).

Figures as bench/email_send.py's (messages/s over the window, CPU of the sender per message).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.email_send import Send, closed_loop
from omni_gateway.domain import Channel, Purpose
from omni_gateway.providers.base import Outgoing, ProviderFailure, PushContent, Receipt, SmsContent
from omni_gateway.providers.http_sms import create as create_http_sms
from omni_gateway.providers.smpp import create as create_smpp
from omni_gateway.providers.webpush import create as create_webpush

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "bench-auth-token"


@contextlib.asynccontextmanager
async def _server(kind: str) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    if kind == "smsc":
        from tests.gateway.smsc import TestSmsc

        smsc = await TestSmsc().start()
        try:
            yield smsc.port, {}
        finally:
            await smsc.stop()
    elif kind == "vendor":
        from tests.gateway.sms_vendor import SmsVendor

        vendor = await SmsVendor(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN).start()
        try:
            yield vendor.port, {}
        finally:
            await vendor.stop()
    elif kind == "push":
        from tests.gateway.push_service import running_push_service

        async with running_push_service() as service:
            subscription = service.subscribe()
            port = int(service.origin.rsplit(":", 1)[1])
            yield port, {"subscription": json.loads(subscription.to_json())}
    else:
        raise SystemExit(f"no server kind {kind!r}")


async def serve(kind: str) -> None:
    async with _server(kind) as (port, extra):
        print(f"READY {port} {json.dumps(extra)}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _noop(receipt: Receipt) -> None:
    return None


def _provider(kind: str, port: int) -> Any:
    if kind == "smsc":
        return create_smpp(
            "smsc",
            {"host": "127.0.0.1", "port": port, "system_id": "omni", "password": "secret",
             "source_addr": "CoffeeCo"},
            {},
        )  # fmt: skip
    if kind == "vendor":
        return create_http_sms(
            "vendor",
            {"base_url": f"http://127.0.0.1:{port}", "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN,
             "from_number": "+15005550006"},
            {},
        )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return create_webpush(
        "webpush",
        {
            "vapid_private_key": pem,
            "vapid_subject": "mailto:bench@coffee.example",
            "allow_http_loopback": True,
        },
        {},
    )


def _outgoing(kind: str, n: int, extra: dict[str, Any]) -> Outgoing:
    if kind == "push":
        channel, address = Channel.PUSH, json.dumps(extra["subscription"])
        content: Any = PushContent(
            title="Thanks for coming by",
            body=f"Customer {n}, your 10th coffee is free",
            deep_link="app://offers",
        )
    else:
        channel, address = Channel.SMS, f"+49151{n % 10_000_000:08d}"
        content = SmsContent(
            f"Customer {n}: your 10th coffee is free. Show this at the till. Reply STOP to opt out"
        )
    return Outgoing(
        message_id=uuid.uuid4(),
        person_id=uuid.uuid4(),
        channel=channel,
        purpose=Purpose.MARKETING,
        address=address,
        content=content,
    )


async def _sender(
    kind: str, port: int, concurrency: int, extra: dict[str, Any]
) -> tuple[list[Send], Callable[[], Awaitable[None]]]:
    provider = _provider(kind, port)
    await provider.start(_noop)

    async def send(n: int) -> None:
        await provider.send(_outgoing(kind, n, extra))

    return [send] * concurrency, provider.close


async def send(
    kind: str, port: int, seconds: float, warmup: float, concurrency: int, extra: dict[str, Any]
) -> dict[str, Any]:
    workers, close = await _sender(kind, port, concurrency, extra)
    return await closed_loop(kind, workers, close, seconds, warmup, concurrency, (ProviderFailure, OSError))


def main(argv: list[str]) -> None:
    if argv[:1] == ["serve"] and len(argv) == 2:
        asyncio.run(serve(argv[1]))
        return
    if argv[:1] == ["send"] and len(argv) == 7:
        figures = asyncio.run(
            send(argv[1], int(argv[2]), float(argv[3]), float(argv[4]), int(argv[5]), json.loads(argv[6]))
        )
        print(json.dumps(figures), flush=True)
        return
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
