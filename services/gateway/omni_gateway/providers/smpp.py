"""SMS over SMPP 3.4 to an SMSC, with the smpp34 library (its Rust core keeps the session: framing, sequence
window, enquire_link keep-alive and answering the SMSC's enquire_link and deliver_sm).

One transceiver bind (`bind_transceiver`) carries submits, delivery receipts and inbound messages. It is kept
by a background task: bound at start, bound again with exponential backoff whenever the SMSC drops the
connection, refuses the bind or stops answering. A send waits a moment for the bind (`bind_wait_s`), then fails
as transient so the delivery flow tries the next provider or later.

A text is sent in GSM-7 when every character is in that alphabet, else UCS-2 (`omni_gateway.sms_text`);
one that needs several segments goes either as one submit_sm per segment with a concatenation header (UDH,
esm_class 0x40), or whole in the `message_payload` TLV for the SMSC to split (`multipart`). The encoding and
segment count are kept in `Accepted.details`; the submit_sm_resp message_id (the first segment's) is the
provider message id.

Delivery receipts (deliver_sm with esm_class 0x04) are read from the TLVs `receipted_message_id` and
`message_state` when present, else from the text "id:... sub:... dlvrd:... stat:DELIVRD err:..."; DELIVRD
becomes a DELIVERED receipt, UNDELIV/EXPIRED/DELETED/REJECTD/UNKNOWN a FAILED one (address_invalid for the
error codes in `address_invalid_errors`), ACCEPTD and ENROUTE are not final and are dropped. A message sent in
UDH segments is delivered when all its segments are, failed when one fails (tracked in memory). Any other
deliver_sm is an inbound message: it goes to the inbound handler (`sms_keywords`), whose reply is submitted
back to the sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import smpp34
from pydantic import BaseModel, ConfigDict, Field

from omni_gateway.domain import Channel
from omni_gateway.providers.base import (
    Accepted,
    FailureKind,
    Outgoing,
    PersonContacts,
    ProviderFailure,
    Receipt,
    ReceiptKind,
    ReceiptSink,
    SmsContent,
)
from omni_gateway.sms_keywords import InboundHandler, keyword_handler, to_e164
from omni_gateway.sms_text import DATA_CODING, decode, encode, plan, udh_parts

__all__ = ["SmppProvider", "SmppSettings", "classify_status", "parse_receipt", "smpp_provider"]

_log = logging.getLogger(__name__)

# SMPP 3.4 command_status values (section 5.1.3) the provider tells apart.
STATUS_NAMES: dict[int, str] = {
    0x00: "ESME_ROK",
    0x01: "ESME_RINVMSGLEN",
    0x02: "ESME_RINVCMDLEN",
    0x03: "ESME_RINVCMDID",
    0x04: "ESME_RINVBNDSTS",
    0x05: "ESME_RALYBND",
    0x08: "ESME_RSYSERR",
    0x0A: "ESME_RINVSRCADR",
    0x0B: "ESME_RINVDSTADR",
    0x0C: "ESME_RINVMSGID",
    0x0D: "ESME_RBINDFAIL",
    0x0E: "ESME_RINVPASWD",
    0x0F: "ESME_RINVSYSID",
    0x14: "ESME_RMSGQFUL",
    0x15: "ESME_RINVSERTYP",
    0x43: "ESME_RINVESMCLASS",
    0x45: "ESME_RSUBMITFAIL",
    0x48: "ESME_RINVSRCTON",
    0x49: "ESME_RINVSRCNPI",
    0x50: "ESME_RINVDSTTON",
    0x51: "ESME_RINVDSTNPI",
    0x58: "ESME_RTHROTTLED",
    0x61: "ESME_RINVSCHED",
    0x62: "ESME_RINVEXPIRY",
    0x64: "ESME_RX_T_APPN",
    0x65: "ESME_RX_P_APPN",
    0x66: "ESME_RX_R_APPN",
    0xC0: "ESME_ROPTPARNOTALLWD",
    0xC1: "ESME_RINVPARLEN",
    0xFE: "ESME_RDELIVERYFAILURE",
    0xFF: "ESME_RUNKNOWNERR",
}
_THROTTLED = frozenset({0x14, 0x58})
_ADDRESS_INVALID = frozenset({0x0B, 0x50, 0x51})
# The message itself (its source, class, length, parameters) is refused, or the SMSC says it will never take
# it: another try or another provider of the same account would not change that.
_PERMANENT = frozenset({0x01, 0x0A, 0x15, 0x43, 0x48, 0x49, 0x61, 0x62, 0x65, 0x66, 0xC0, 0xC1})

_REMEMBERED = 100_000
"""Segment and message ids kept in memory for receipts."""

TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_MESSAGE_STATE = 0x0427
TLV_MESSAGE_PAYLOAD = 0x0424
TLV_NETWORK_ERROR_CODE = 0x0423

# message_state values (5.2.28) and the stat words of the receipt text (Appendix B).
_STATES = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}
_FAILED_STATS = frozenset({"UNDELIV", "EXPIRED", "DELETED", "REJECTD", "UNKNOWN"})
_RECEIPT_FIELD = re.compile(r"(id|stat|err):(\S*)", re.IGNORECASE)


def classify_status(status: int, *, throttle_retry_s: float = 1.0, provider: str = "smpp") -> ProviderFailure:
    """The failure a non-zero submit_sm_resp command_status stands for."""
    name = STATUS_NAMES.get(status, f"0x{status:08X}")
    detail = f"submit_sm refused: {name}"
    if status in _THROTTLED:
        return ProviderFailure(
            FailureKind.TRANSIENT, detail, provider=provider, retry_after_s=throttle_retry_s
        )
    if status in _ADDRESS_INVALID:
        return ProviderFailure(FailureKind.ADDRESS_INVALID, detail, provider=provider)
    if status in _PERMANENT:
        return ProviderFailure(FailureKind.PERMANENT, detail, provider=provider)
    return ProviderFailure(FailureKind.TRANSIENT, detail, provider=provider)


@dataclass(frozen=True)
class ParsedReceipt:
    message_id: str
    stat: str
    err: str = ""


def parse_receipt(short_message: bytes, tlvs: Iterable[smpp34.Tlv]) -> ParsedReceipt | None:
    """The receipted message id, its state word and error code, from the TLVs or the receipt text."""
    by_tag = {tlv.tag: tlv.value for tlv in tlvs}
    fields = {
        m.group(1).lower(): m.group(2) for m in _RECEIPT_FIELD.finditer(short_message.decode("latin-1"))
    }
    message_id = fields.get("id", "")
    stat = fields.get("stat", "").upper()
    if TLV_RECEIPTED_MESSAGE_ID in by_tag:
        message_id = by_tag[TLV_RECEIPTED_MESSAGE_ID].rstrip(b"\x00").decode("latin-1")
    if by_tag.get(TLV_MESSAGE_STATE):
        stat = _STATES.get(by_tag[TLV_MESSAGE_STATE][0], stat or "UNKNOWN")
    err = fields.get("err", "")
    if not err and TLV_NETWORK_ERROR_CODE in by_tag and len(by_tag[TLV_NETWORK_ERROR_CODE]) == 3:
        err = f"{int.from_bytes(by_tag[TLV_NETWORK_ERROR_CODE][1:], 'big'):03d}"
    if not message_id or not stat:
        return None
    return ParsedReceipt(message_id, stat, err)


class SmppSettings(BaseModel):
    """How to reach and bind to the SMSC (environment: the gateway's settings hold one of these)."""

    # A bad value is logged at start: it must not show the password it was given.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field("smpp", description="The provider's name on messages and receipts.")
    host: str = Field(description="The SMSC's host.")
    port: int = Field(2775, ge=1, le=65535)
    system_id: str = Field(max_length=15, description="ESME system_id of the bind.")
    password: str = Field("", max_length=8, description="Bind password (from a secret in production).")
    system_type: str = Field("", max_length=12)
    source_addr: str = Field(
        max_length=20,
        description="Sender: a number in E.164 (sent as international, TON 1/NPI 1), a short code (digits, "
        "TON 3) or an alphanumeric sender id of up to 11 characters (TON 5).",
    )
    registered_delivery: bool = Field(True, description="Ask the SMSC for a final delivery receipt.")
    multipart: Literal["udh", "message_payload"] = Field(
        "udh", description="Long texts as UDH-concatenated segments, or whole in the message_payload TLV."
    )
    max_segments: int = Field(10, ge=1, le=255, description="Longer texts are refused as permanent failures.")
    window_size: int = Field(10, ge=1, le=1000, description="Submits in flight on the bind.")
    connect_timeout_s: float = Field(5.0, gt=0)
    submit_timeout_s: float = Field(10.0, gt=0, description="Wait for a submit_sm_resp; then transient.")
    bind_wait_s: float = Field(2.0, ge=0, description="How long a send waits for the bind to come back.")
    reconnect_min_s: float = Field(0.2, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    throttle_retry_s: float = Field(1.0, ge=0, description="Retry hint on ESME_RTHROTTLED / ESME_RMSGQFUL.")
    national_region: str | None = Field(
        None,
        description="ISO 3166 region of inbound senders given as national numbers (TON 2), e.g. DE; "
        "without it such senders are read as international.",
    )
    address_invalid_errors: list[str] = Field(
        default_factory=lambda: ["001"],
        description="Receipt err codes of UNDELIV/REJECTD that mean the number does not exist (SMSC specific; "
        "001 is GSM MAP unknown subscriber).",
    )


def _source_ton_npi(source: str) -> tuple[int, int, str]:
    if source.startswith("+") and source[1:].isdigit():
        return 1, 1, source[1:]
    if source.isdigit():
        return (3, 0, source) if len(source) <= 8 else (1, 1, source)
    return 5, 0, source


@dataclass
class _Multipart:
    """A message sent in UDH segments, while its segments' receipts come in."""

    message_id: uuid.UUID
    ids: list[str] = field(default_factory=list)
    delivered: set[str] = field(default_factory=set)
    complete: bool = False
    """Every segment has its submit_sm_resp."""
    done: bool = False
    """Its receipt went out (or its send failed): later segment receipts are dropped."""


class SmppProvider:
    """SMS through one SMSC bind (see the module docstring)."""

    channel = Channel.SMS

    def __init__(self, settings: SmppSettings, inbound: InboundHandler | None = None) -> None:
        self.name = settings.name
        self._settings = settings
        self._inbound = inbound
        self._receipts: ReceiptSink | None = None
        self._smsc: smpp34.Smsc | None = None
        self._client: smpp34.Client | None = None
        self._bound = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._last_error = "not bound yet"
        self._multipart: OrderedDict[str, _Multipart] = OrderedDict()
        self._seen: OrderedDict[str, uuid.UUID | None] = OrderedDict()
        """Message ids of recent submit_sm_resps (to Omni's message id), for receipts that overtake their
        submit_sm_resp, and so a receipt names Omni's message even before the send is recorded."""
        self._submitting = 0
        self._submitted = asyncio.Condition()
        self._ton, self._npi, self._source = _source_ton_npi(settings.source_addr)
        self.binds = 0
        """How many times the provider has bound (1 after start, more after reconnects)."""

    def address_of(self, person: PersonContacts) -> str | None:
        for phone in person.identifiers.get("phone") or ():
            number = to_e164(phone) if phone.startswith("+") else None
            if number:
                return number
        return None

    async def start(self, receipts: ReceiptSink) -> None:
        self._receipts = receipts
        self._closing = False
        self._runner = asyncio.create_task(self._keep_bound(), name=f"{self.name}-bind")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.connect_timeout_s):
                await self._bound.wait()

    @property
    def bound(self) -> bool:
        return self._bound.is_set()

    async def close(self) -> None:
        self._closing = True
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._settings.submit_timeout_s)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        await self._drop()

    async def _drop(self) -> None:
        self._bound.clear()
        smsc, client = self._smsc, self._client
        self._smsc = self._client = None
        if smsc is not None:
            with contextlib.suppress(smpp34.SmppError, RuntimeError, OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await smsc.unbind()
        if client is not None:
            with contextlib.suppress(smpp34.SmppError, RuntimeError, OSError):
                await client.stop()

    async def _keep_bound(self) -> None:
        delay = self._settings.reconnect_min_s
        while not self._closing:
            settings = self._settings
            client = smpp34.Client(
                settings.host,
                settings.port,
                settings.system_id,
                settings.password,
                bind_type="TRX",
                system_type=settings.system_type,
                window_size=settings.window_size,
                connect_timeout_ms=int(settings.connect_timeout_s * 1000),
            )
            try:
                async with asyncio.timeout(settings.connect_timeout_s * 2):
                    smsc = await client.connect()
            except (smpp34.SmppError, OSError, TimeoutError) as error:
                self._last_error = f"bind failed: {error}"
                _log.warning("%s: %s; again in %.1fs", self.name, self._last_error, delay)
                with contextlib.suppress(smpp34.SmppError, RuntimeError, OSError):
                    await client.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, settings.reconnect_max_s)
                continue
            self._client, self._smsc = client, smsc
            self.binds += 1
            self._bound.set()
            delay = settings.reconnect_min_s
            _log.info("%s: bound to %s:%d", self.name, settings.host, settings.port)
            try:
                while True:
                    event = await smsc.next()
                    if isinstance(event, smpp34.Disconnected):
                        break
                    self._spawn(self._on_deliver(event))
            finally:
                self._last_error = "the SMSC closed the session"
                await self._drop()
            if not self._closing:
                _log.warning("%s: session ended, binding again", self.name)

    def _spawn(self, coroutine: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _session(self) -> smpp34.Smsc:
        if not self._bound.is_set() and self._settings.bind_wait_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.bind_wait_s):
                    await self._bound.wait()
        smsc = self._smsc
        if smsc is None or self._closing:
            raise ProviderFailure(FailureKind.TRANSIENT, f"not bound: {self._last_error}", provider=self.name)
        return smsc

    async def _submit(
        self,
        smsc: smpp34.Smsc,
        omni_id: uuid.UUID | None,
        destination: str,
        short_message: bytes,
        **fields: object,
    ) -> str:
        self._submitting += 1
        try:
            message_id = await self._submit_once(smsc, destination, short_message, **fields)
            self._seen[message_id] = omni_id
            while len(self._seen) > _REMEMBERED:
                self._seen.popitem(last=False)
            return message_id
        finally:
            self._submitting -= 1
            async with self._submitted:
                self._submitted.notify_all()

    async def _submit_once(
        self, smsc: smpp34.Smsc, destination: str, short_message: bytes, **fields: object
    ) -> str:
        try:
            async with asyncio.timeout(self._settings.submit_timeout_s):
                response = await smsc.submit_sm(
                    destination,
                    short_message,
                    source_addr=self._source,
                    source_addr_ton=self._ton,
                    source_addr_npi=self._npi,
                    dest_addr_ton=1,
                    dest_addr_npi=1,
                    **fields,  # type: ignore[arg-type]
                )
        except TimeoutError as error:
            raise ProviderFailure(
                FailureKind.TRANSIENT,
                "no submit_sm_resp in time (the SMSC may have taken it)",
                provider=self.name,
            ) from error
        except (smpp34.SmppError, RuntimeError, OSError) as error:
            raise ProviderFailure(
                FailureKind.TRANSIENT, f"submit_sm failed: {error}", provider=self.name
            ) from error
        if response.command_status != 0:
            raise classify_status(
                response.command_status, throttle_retry_s=self._settings.throttle_retry_s, provider=self.name
            )
        return response.message_id or ""

    async def send(self, outgoing: Outgoing) -> Accepted:
        if not isinstance(outgoing.content, SmsContent):
            raise ProviderFailure(FailureKind.PERMANENT, "not an SMS", provider=self.name)
        number = to_e164(outgoing.address) if outgoing.address.startswith("+") else None
        if number is None:
            raise ProviderFailure(
                FailureKind.ADDRESS_INVALID, f"not an E.164 number: {outgoing.address!r}", provider=self.name
            )
        text = outgoing.content.text
        if not text:
            raise ProviderFailure(FailureKind.PERMANENT, "empty text", provider=self.name)
        sms = plan(text)
        if sms.segments > self._settings.max_segments:
            raise ProviderFailure(
                FailureKind.PERMANENT,
                f"{sms.segments} segments, more than the {self._settings.max_segments} allowed",
                provider=self.name,
            )
        registered = 1 if self._settings.registered_delivery else 0
        coding = DATA_CODING[sms.encoding]
        smsc = await self._session()
        destination = number[1:]
        ids: list[str] = []
        if sms.segments == 1 or self._settings.multipart == "udh":
            _, parts = udh_parts(text)
            esm_class = 0x40 if len(parts) > 1 else 0x00
            entry = _Multipart(outgoing.message_id) if len(parts) > 1 and registered else None
            try:
                for part in parts:
                    ids.append(
                        await self._submit(
                            smsc,
                            outgoing.message_id,
                            destination,
                            part,
                            esm_class=esm_class,
                            data_coding=coding,
                            registered_delivery=registered,
                        )
                    )
                    if entry is not None:
                        # Known before this segment's receipt is looked at (it waits for _submit to end).
                        entry.ids.append(ids[-1])
                        self._remember(entry, ids[-1])
            except ProviderFailure:
                if entry is not None:
                    entry.done = True
                raise
            if entry is not None:
                entry.complete = True
                self._spawn(self._settle(entry))
        else:
            payload = smpp34.Tlv(TLV_MESSAGE_PAYLOAD, encode(text, sms.encoding))
            ids.append(
                await self._submit(
                    smsc,
                    outgoing.message_id,
                    destination,
                    b"",
                    data_coding=coding,
                    registered_delivery=registered,
                    tlvs=[payload],
                )
            )
        details: dict[str, object] = {"encoding": sms.encoding.value, "segments": sms.segments}
        if len(ids) > 1:
            details["segment_message_ids"] = ids
        return Accepted(provider=self.name, provider_message_id=ids[0], details=details)

    def _remember(self, entry: _Multipart, segment_id: str) -> None:
        self._multipart[segment_id] = entry
        while len(self._multipart) > _REMEMBERED:
            self._multipart.popitem(last=False)

    async def _known(self, provider_message_id: str) -> None:
        """Wait (at most a submit timeout) while a receipt's id may still be in a submit_sm_resp not yet
        read: some SMSCs send the receipt of a message handed on at once ahead of that answer."""
        if provider_message_id in self._seen or not self._submitting:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.submit_timeout_s), self._submitted:
                await self._submitted.wait_for(
                    lambda: provider_message_id in self._seen or not self._submitting
                )

    async def _settle(self, entry: _Multipart, failed: ParsedReceipt | None = None) -> None:
        """Send the message's receipt once a segment failed, or once every segment was delivered."""
        if entry.done:
            return
        if failed is None and not (entry.complete and entry.delivered.issuperset(entry.ids)):
            return
        entry.done = True
        for segment_id in entry.ids:
            self._multipart.pop(segment_id, None)
        last = failed or ParsedReceipt(entry.ids[-1], "DELIVRD")
        await self._emit(last, entry.ids[0], entry.message_id)

    async def _on_deliver(self, event: smpp34.DeliverSmEvent) -> None:
        try:
            if (event.esm_class & 0x3C) == 0x04:
                await self._on_receipt(event)
            else:
                await self._on_inbound(event)
        except Exception:
            _log.exception("%s: deliver_sm not handled", self.name)

    async def _on_receipt(self, event: smpp34.DeliverSmEvent) -> None:
        parsed = parse_receipt(event.short_message, event.tlvs)
        if parsed is None:
            _log.warning("%s: a delivery receipt without message id or state", self.name)
            return
        if parsed.stat == "DELIVRD":
            kind = ReceiptKind.DELIVERED
        elif parsed.stat in _FAILED_STATS:
            kind = ReceiptKind.FAILED
        else:
            return  # ACCEPTD, ENROUTE: not final
        await self._known(parsed.message_id)
        entry = self._multipart.get(parsed.message_id)
        if entry is None:
            await self._emit(parsed, parsed.message_id, self._seen.get(parsed.message_id))
        elif kind is ReceiptKind.DELIVERED:
            entry.delivered.add(parsed.message_id)
            await self._settle(entry)
        else:
            await self._settle(entry, failed=parsed)

    async def _emit(
        self, parsed: ParsedReceipt, provider_message_id: str, message_id: uuid.UUID | None
    ) -> None:
        kind = ReceiptKind.DELIVERED if parsed.stat == "DELIVRD" else ReceiptKind.FAILED
        receipt = Receipt(
            provider=self.name,
            kind=kind,
            provider_event_id=f"{parsed.message_id}:{parsed.stat}",
            occurred_at=datetime.now(UTC),
            message_id=message_id,
            provider_message_id=provider_message_id,
            detail=f"stat:{parsed.stat} err:{parsed.err}" if parsed.err else f"stat:{parsed.stat}",
            address_invalid=kind is ReceiptKind.FAILED
            and parsed.err in self._settings.address_invalid_errors,
        )
        if self._receipts is not None:
            await self._receipts(receipt)

    async def _on_inbound(self, event: smpp34.DeliverSmEvent) -> None:
        by_tag = {tlv.tag: tlv.value for tlv in event.tlvs}
        raw = by_tag.get(TLV_MESSAGE_PAYLOAD) or event.short_message
        if event.esm_class & 0x40 and raw:
            raw = raw[raw[0] + 1 :]  # a segment of a concatenated message: skip its header
        text = decode(raw, event.data_coding)
        if self._inbound is None:
            return
        # TON 2 is a national number, read in the SMSC's country; anything else as international.
        region = self._settings.national_region if event.source_addr_ton == 2 else None
        number = to_e164(event.source_addr, region)
        if number is None:
            _log.warning("%s: an inbound message from a number that is not valid, ignored", self.name)
            return
        reply = await self._inbound(number, text)
        if not reply:
            return
        sms = plan(reply)
        smsc = await self._session()
        _, parts = udh_parts(reply)
        for part in parts:
            await self._submit(
                smsc,
                None,  # a reply, no message of Omni's
                number[1:],
                part,
                esm_class=0x40 if len(parts) > 1 else 0x00,
                data_coding=DATA_CODING[sms.encoding],
                registered_delivery=0,
            )


def smpp_provider(settings: SmppSettings, inbound: InboundHandler | None = None) -> SmppProvider:
    """The provider for these settings; `inbound` answers inbound messages (SmsKeywords.handle_inbound)."""
    return SmppProvider(settings, inbound)


def create(name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> SmppProvider:
    """The provider from a registry entry (kind "smpp"): `options` are SmppSettings (host, system_id, ...)
    and the keyword options (sms_keywords.KEYWORD_OPTIONS); inbound messages are answered by the keyword
    handler made from the registry's defaults (identity and profile). Raises ValueError (pydantic's
    ValidationError) naming what is wrong."""
    own, keywords = keyword_handler(options, defaults)
    settings = SmppSettings.model_validate({**own, "name": name})
    return SmppProvider(settings, keywords.handle_inbound if keywords is not None else None)
