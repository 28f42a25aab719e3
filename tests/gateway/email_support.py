"""Helpers of the email tests: a DKIM key and its DNS record, link settings, a receipt recorder."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from omni_gateway.dkim_signing import DkimSigner
from omni_gateway.email_links import EmailLinks
from omni_gateway.providers.base import Receipt

DOMAIN = "shop.example"
SELECTOR = "omni2026"
SECRET = "test-secret-of-the-links"


@dataclass
class DkimKey:
    """An RSA key pair, the signer using it and the DNS TXT record publishing its public half."""

    private_pem: bytes
    signer: DkimSigner
    record: bytes

    def dnsfunc(self) -> Callable[..., bytes | None]:
        """A dkimpy dnsfunc answering the selector's TXT record, and nothing else."""
        name = f"{SELECTOR}._domainkey.{DOMAIN}."

        def lookup(query: bytes, timeout: float = 5) -> bytes | None:
            return self.record if query.decode().rstrip(".") + "." == name else None

        return lookup


def dkim_key(bits: int = 2048) -> DkimKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)
    return DkimKey(
        private_pem, DkimSigner(domain=DOMAIN, selector=SELECTOR, private_key_pem=private_pem), record
    )


def email_links(
    public_url: str = "https://mail.shop.example",
    *,
    secrets: tuple[str, ...] = (SECRET,),
    ttl_s: float = 30 * 86_400,
    clock: Callable[[], float] | None = None,
    mailto: str | None = "unsubscribe@shop.example",
) -> EmailLinks:
    extra = {"clock": clock} if clock is not None else {}
    return EmailLinks(
        secrets=list(secrets),
        public_url=public_url,
        bounce_domain=DOMAIN,
        ttl_s=ttl_s,
        unsubscribe_mailto=mailto,
        **extra,
    )


@dataclass
class Receipts:
    """A ReceiptSink recording every receipt it is given, in order."""

    received: list[Receipt] = field(default_factory=list)

    async def __call__(self, receipt: Receipt) -> None:
        self.received.append(receipt)

    def of(self, message_id: uuid.UUID) -> list[Receipt]:
        return [r for r in self.received if r.message_id == message_id]

    def distinct(self, message_id: uuid.UUID) -> dict[str, Receipt]:
        """The message's receipts as a sink deduplicating by provider event id keeps them (first wins)."""
        kept: dict[str, Receipt] = {}
        for receipt in self.of(message_id):
            kept.setdefault(receipt.provider_event_id, receipt)
        return kept
