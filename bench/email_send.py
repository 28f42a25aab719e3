"""The processes of the `gateway_send` suite: a local SMTP server, and the senders it measures.

    python -m bench.email_send sink                       an aiosmtpd server that accepts and drops every
                                                          email; prints "READY <port>", stops when stdin closes
    python -m bench.email_send send MODE PORT SECONDS WARMUP CONNECTIONS
                                                          sends to 127.0.0.1:PORT for SECONDS after WARMUP;
                                                          prints one JSON line of figures

Modes (SENDERS):
- `raw`: the baseline. The same emails as the gateway builds, built and flattened to bytes before the clock
  starts, sent by aiosmtplib's `sendmail` on CONNECTIONS persistent connections: the least a Python SMTP
  client can do here.
- `gateway`: what the gateway's email provider does per message, all of it inside the clock: the pooled SMTP
  provider (providers/smtp.py, configured as main.py configures it) given the rendered message (`Outgoing`)
  builds the email with the RFC 8058 headers, tracked links and pixel and a DKIM signature (RSA 2048) and
  sends it from its VERP return path on a pool of CONNECTIONS connections, CONNECTIONS sends at once. The
  email is written directly as bytes, signed over them and sent as they are (`email_message.wire_email`).
- `built`: the design before, for comparison: the same email built by the email package (`build_email`,
  DKIM included) and flattened again by aiosmtplib's `send_message`, on the same pool.

The suite runs several `gateway` processes at once too (as gateway replicas would), summing their figures.

Each sender is its own process (as the gateway is), so it does not share a GIL with the SMTP server or the
bench. The JSON line: sent, errors, seconds, per_second, cpu_s (user+system of the process over the window),
cpu_ms_per_email (what one email costs the sender, the figure that moves least on a busy machine),
peak_rss_mib (the process's peak resident memory).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from omni_gateway.dkim_signing import DkimSigner
from omni_gateway.domain import Channel, Purpose
from omni_gateway.email_links import EmailLinks
from omni_gateway.email_message import build_email
from omni_gateway.providers.base import EmailContent, Outgoing, ProviderFailure
from omni_gateway.providers.smtp import SmtpConfig, SmtpPool
from omni_gateway.providers.smtp import create as create_smtp
from omni_gateway.rendering import Rendered

SENDER = "Coffee Club <news@coffee.example>"
DOMAIN = "coffee.example"
SUBJECT = "Your 10th coffee is free, {name}"
TEXT = (
    "Hello {name},\n\nYou have 9 stamps on your card: the next coffee is on us.\n"
    "Show this email at the till or open https://coffee.example/app/offers/10th-free\n\n"
    + "Our new autumn blends are in the shops this week. " * 12
    + "\n\nCoffee Club, 1 Bean Street\n"
)
HTML = (
    "<!doctype html><html><head><meta charset='utf-8'><title>Your 10th coffee</title></head><body>"
    "<table width='100%'><tr><td><h1>Hello {name},</h1>"
    "<p>You have 9 stamps on your card: <a href='https://coffee.example/app/offers/10th-free?utm_source=email'>"
    "the next coffee is on us</a>.</p>"
    + "<p>Our new autumn blends are in the shops this week. <a href='https://coffee.example/blends/{n}'>"
    "See the blends</a></p>" * 6 + "<p><a href='https://coffee.example/stores'>Find a store</a> · "
    "<a href='https://coffee.example/account'>Your account</a></p></td></tr></table></body></html>"
)

Send = Callable[[int], Awaitable[None]]


def _key() -> DkimSigner:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return DkimSigner(domain=DOMAIN, selector="bench", private_key_pem=pem)


LINKS = EmailLinks(
    secrets=["bench-secret"],
    public_url="https://mail.coffee.example",
    bounce_domain=DOMAIN,
    ttl_s=180 * 86_400,
)


def gateway_email(n: int, dkim: DkimSigner | None) -> tuple[uuid.UUID, EmailMessage]:
    """The n-th email as the gateway builds a marketing message (links, tracking, DKIM when given)."""
    message_id = uuid.uuid4()
    name = f"Customer {n}"
    email = build_email(
        message_id=message_id,
        sender=SENDER,
        recipient=f"customer{n}@example.com",
        rendered=Rendered(
            subject=SUBJECT.format(name=name), text=TEXT.format(name=name), html=HTML.format(name=name, n=n)
        ),
        person_id=uuid.uuid4(),
        purpose=Purpose.MARKETING,
        links=LINKS,
        track=True,
        dkim=dkim,
    )
    return message_id, email


async def _persistent(port: int, connections: int) -> list[aiosmtplib.SMTP]:
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) for _ in range(connections)]
    await asyncio.gather(*(c.connect() for c in clients))
    return clients


async def _raw_sender(port: int, connections: int) -> tuple[list[Send], Callable[[], Awaitable[None]]]:
    """Pre-flattened bytes of the gateway's emails, sent with sendmail on persistent connections."""
    signer = _key()
    prepared = []
    for n in range(2000):
        message_id, email = gateway_email(n, signer)
        prepared.append((LINKS.return_path(message_id), str(email["To"]), email.as_bytes()))
    clients = await _persistent(port, connections)

    def worker(client: aiosmtplib.SMTP) -> Send:
        async def send(n: int) -> None:
            sender, recipient, data = prepared[n % len(prepared)]
            await client.sendmail(sender, [recipient], data)

        return send

    async def close() -> None:
        await asyncio.gather(*(c.quit() for c in clients), return_exceptions=True)

    return [worker(c) for c in clients], close


def outgoing(n: int) -> Outgoing:
    """The n-th message as the delivery flow hands it to the email provider (rendered, marketing)."""
    name = f"Customer {n}"
    return Outgoing(
        message_id=uuid.uuid4(),
        person_id=uuid.uuid4(),
        channel=Channel.EMAIL,
        purpose=Purpose.MARKETING,
        address=f"customer{n}@example.com",
        content=EmailContent(
            subject=SUBJECT.format(name=name), text=TEXT.format(name=name), html=HTML.format(name=name, n=n)
        ),
    )


async def _gateway_sender(port: int, connections: int) -> tuple[list[Send], Callable[[], Awaitable[None]]]:
    """The gateway's pooled SMTP provider (providers/smtp.py), configured as main.py does: it builds each
    email (RFC 8058 headers, tracked links and pixel, DKIM) and sends it from the VERP return path on a pool
    of `connections` connections; `connections` concurrent sends, as the delivery job pool makes them."""
    provider = create_smtp(
        "smtp",
        {"host": "127.0.0.1", "port": port, "timeout_s": 30, "pool_size": connections},
        {"sender": SENDER, "email_links": LINKS, "dkim": _key(), "email_tracking": True},
    )

    async def send(n: int) -> None:
        try:
            await provider.send(outgoing(n))
        except ProviderFailure as failure:
            raise aiosmtplib.SMTPException(str(failure)) from failure

    return [send] * connections, provider.close


async def _built_sender(port: int, connections: int) -> tuple[list[Send], Callable[[], Awaitable[None]]]:
    """The design before `wire_email`, for comparison in the same run: each email built as an EmailMessage
    by the email package (`build_email`, signed there over one flattening, its headers then set again),
    then flattened again by aiosmtplib's send_message, on the same pool."""
    signer = _key()
    pool = SmtpPool(SmtpConfig(host="127.0.0.1", port=port, timeout_s=30, pool_size=connections))

    async def send(n: int) -> None:
        message_id, email = gateway_email(n, signer)
        await pool.send(email, sender=LINKS.return_path(message_id))

    return [send] * connections, pool.close


SENDERS = {"raw": _raw_sender, "gateway": _gateway_sender, "built": _built_sender}


async def send(mode: str, port: int, seconds: float, warmup: float, connections: int) -> dict[str, Any]:
    """Closed loop: each worker sends back to back; sends that end inside the window after warm-up count."""
    workers, close = await SENDERS[mode](port, connections)
    return await closed_loop(mode, workers, close, seconds, warmup, connections)


async def closed_loop(
    mode: str,
    workers: list[Send],
    close: Callable[[], Awaitable[None]],
    seconds: float,
    warmup: float,
    connections: int,
    errors_of: tuple[type[BaseException], ...] = (aiosmtplib.SMTPException, OSError),
) -> dict[str, Any]:
    """Run the workers back to back for `warmup` + `seconds`; the figures of the window (see the module)."""
    counter = iter(range(10**9))
    started = time.monotonic()
    window_start, window_end = started + warmup, started + warmup + seconds
    sent = errors = 0
    cpu_before: float | None = None

    async def loop(one: Send) -> None:
        nonlocal sent, errors
        while (now := time.monotonic()) < window_end:
            try:
                await one(next(counter))
            except errors_of as error:
                if not errors:
                    print(f"{mode}: first error: {error}", file=sys.stderr, flush=True)
                errors += 1
                continue
            if now >= window_start and time.monotonic() <= window_end:
                sent += 1

    async def mark_window() -> None:
        nonlocal cpu_before
        await asyncio.sleep(max(0.0, window_start - time.monotonic()))
        cpu_before = _cpu_s()

    await asyncio.gather(mark_window(), *(loop(w) for w in workers))
    cpu = _cpu_s() - (cpu_before or 0.0)
    await close()
    return {
        "mode": mode,
        "connections": connections,
        "sent": sent,
        "errors": errors,
        "seconds": seconds,
        "per_second": sent / seconds,
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_email": round(1000 * cpu / sent, 3) if sent else None,
        "process_cpu_s": round(_cpu_s(), 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Drop:
    """Accepts every email and keeps nothing."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.count += 1
        return "250 2.0.0 OK"


async def sink() -> None:
    """Serve SMTP on a free port of 127.0.0.1 until stdin closes."""
    handler = _Drop()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bench-smtp", data_size_limit=10 * 1024 * 1024), "127.0.0.1", 0
    )
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()
    print(json.dumps({"received": handler.count}), flush=True)


def main(argv: list[str]) -> None:
    if argv[:1] == ["sink"]:
        asyncio.run(sink())
        return
    if argv[:1] == ["send"] and len(argv) == 6:
        mode, port, seconds, warmup, connections = (
            argv[1],
            int(argv[2]),
            float(argv[3]),
            float(argv[4]),
            int(argv[5]),
        )
        print(json.dumps(asyncio.run(send(mode, port, seconds, warmup, connections))), flush=True)
        return
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
