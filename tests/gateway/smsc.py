"""A small real SMSC for the tests: an asyncio SMPP 3.4 server on a local port.

It accepts bind_transceiver/transmitter/receiver (checking system_id and password), answers submit_sm with a
message id (or the command_status a test set for a number), sends a delivery receipt as deliver_sm when
registered_delivery asks for one (as text, or with the receipted_message_id/message_state TLVs), delivers
inbound (mobile-originated) messages, answers and sends enquire_link, answers unbind, and can drop every
connection at once. submit_sm and deliver_sm go through smpp34's codec (`decode`, `DeliverSm.encode`); the
PDUs with a header and a C-string at most are packed here, per the spec. It counts every PDU it received by
command name.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections import Counter
from dataclasses import dataclass, field

import smpp34

from omni_gateway.sms_text import encode_gsm7

BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER = 0x01, 0x02, 0x09
SUBMIT_SM, DELIVER_SM, UNBIND, ENQUIRE_LINK, GENERIC_NACK = 0x04, 0x05, 0x06, 0x15, 0x80000000
RESP = 0x80000000
NAMES = {
    BIND_RECEIVER: "bind_receiver",
    BIND_TRANSMITTER: "bind_transmitter",
    BIND_TRANSCEIVER: "bind_transceiver",
    SUBMIT_SM: "submit_sm",
    DELIVER_SM: "deliver_sm",
    UNBIND: "unbind",
    ENQUIRE_LINK: "enquire_link",
}
ESME_RINVPASWD = 0x0E
ESME_RINVBNDSTS = 0x04


def _pdu(command_id: int, status: int, sequence: int, body: bytes = b"") -> bytes:
    return struct.pack("!IIII", 16 + len(body), command_id, status, sequence) + body


def _cstrings(body: bytes, count: int) -> list[str]:
    values = body.split(b"\x00", count)[:count]
    return [value.decode("latin-1") for value in values]


@dataclass
class Submitted:
    """A submit_sm as the SMSC received it."""

    destination: str
    source: str
    short_message: bytes
    data_coding: int
    esm_class: int
    registered_delivery: int
    tlvs: dict[int, bytes]
    message_id: str
    status: int

    @property
    def user_data(self) -> bytes:
        """The short message (or message_payload) without a concatenation header."""
        data = self.tlvs.get(0x0424) or self.short_message
        return data[data[0] + 1 :] if self.esm_class & 0x40 else data


@dataclass
class _Session:
    writer: asyncio.StreamWriter
    sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(0x10000))
    pending: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    bound: bool = False

    def next_sequence(self) -> int:
        return next(self.sequence)


class TestSmsc:
    """The server; `start()`, then point an ESME at `port`."""

    __test__ = False

    def __init__(self, *, system_id: str = "omni", password: str = "secret", port: int = 0) -> None:
        self.system_id = system_id
        self.password = password
        self.port = port
        self.received: Counter[str] = Counter()
        self.submitted: list[Submitted] = []
        self.status_for: dict[str, int] = {}
        """command_status to answer submit_sm with, by destination_addr (digits, no +)."""
        self.receipt_stat: str | None = "DELIVRD"
        """The stat of the receipt sent for each submit asking for one (None: none sent)."""
        self.receipt_err = "000"
        self.receipt_style = "text"
        """"text": the receipt text only; "tlv": also receipted_message_id and message_state TLVs."""
        self.refuse_binds = False
        self.receipt_first = False
        """Write each receipt before the submit_sm_resp it is for."""
        self.submit_arrived = asyncio.Event()
        self._sessions: list[_Session] = []
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TestSmsc:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        await self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()

    @property
    def sessions(self) -> int:
        """Bound sessions open now."""
        return sum(1 for session in self._sessions if session.bound)

    async def drop(self) -> None:
        """Close every connection without unbinding, as a crashing SMSC or a broken link would."""
        for session in list(self._sessions):
            session.writer.transport.abort()
        self._sessions.clear()

    async def until_submitted(self, count: int, within: float = 10.0) -> list[Submitted]:
        async with asyncio.timeout(within):
            while len(self.submitted) < count:
                self.submit_arrived.clear()
                await self.submit_arrived.wait()
        return self.submitted

    async def deliver(
        self, source: str, text: str, *, to: str = "12345", ton: int = 1, within: float = 10.0
    ) -> int:
        """An inbound message from `source` (digits) to the ESME: GSM-7 when it can be, else UCS-2. Returns
        the deliver_sm_resp command_status."""
        try:
            short_message, coding = encode_gsm7(text), 0x00
        except ValueError:
            short_message, coding = text.encode("utf-16-be"), 0x08
        return await self._deliver(
            smpp34.DeliverSm(
                source,
                to,
                short_message,
                data_coding=coding,
                esm_class=0x00,
                source_addr_ton=ton,
                source_addr_npi=1,
            ),
            within,
        )

    def _receipt_pdu(self, submitted: Submitted, stat: str, err: str) -> smpp34.DeliverSm:
        text = (
            f"id:{submitted.message_id} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'} "
            f"submit date:2612071200 done date:2612071201 stat:{stat} err:{err} text:"
        ).encode("ascii")
        tlvs = []
        if self.receipt_style == "tlv":
            states = {"DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5, "ACCEPTD": 6, "UNKNOWN": 7}
            states["REJECTD"] = 8
            tlvs = [
                smpp34.Tlv(0x001E, submitted.message_id.encode("ascii") + b"\x00"),
                smpp34.Tlv(0x0427, bytes([states[stat]])),
            ]
            text = b""
        return smpp34.DeliverSm(submitted.destination, submitted.source, text, esm_class=0x04, tlvs=tlvs)

    async def send_receipt(
        self, submitted: Submitted, stat: str, err: str = "000", within: float = 10.0
    ) -> int:
        """A delivery receipt for a submitted message; returns the deliver_sm_resp command_status."""
        return await self._deliver(self._receipt_pdu(submitted, stat, err), within)

    async def enquire(self, within: float = 5.0) -> int:
        """Send an enquire_link to the first bound ESME; return its answer's command_status."""
        session = self._bound_session()
        sequence = session.next_sequence()
        answer = asyncio.get_running_loop().create_future()
        session.pending[sequence] = answer
        session.writer.write(_pdu(ENQUIRE_LINK, 0, sequence))
        async with asyncio.timeout(within):
            return await answer

    def _bound_session(self) -> _Session:
        for session in self._sessions:
            if session.bound:
                return session
        raise AssertionError("no ESME is bound")

    async def _deliver(self, pdu: smpp34.DeliverSm, within: float) -> int:
        answer = self._write_deliver(self._bound_session(), pdu)
        async with asyncio.timeout(within):
            return await answer

    def _write_deliver(self, session: _Session, pdu: smpp34.DeliverSm) -> asyncio.Future[int]:
        sequence = session.next_sequence()
        encoded = bytearray(pdu.encode())
        struct.pack_into("!I", encoded, 12, sequence)
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        session.pending[sequence] = answer
        session.writer.write(bytes(encoded))
        return answer

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(writer)
        self._sessions.append(session)
        try:
            while True:
                header = await reader.readexactly(16)
                length, command_id, status, sequence = struct.unpack("!IIII", header)
                body = await reader.readexactly(length - 16)
                if command_id & RESP:
                    self.received[NAMES.get(command_id & ~RESP, hex(command_id)) + "_resp"] += 1
                    waiter = session.pending.pop(sequence, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(status)
                    continue
                self.received[NAMES.get(command_id, hex(command_id))] += 1
                if command_id in (BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER):
                    system_id, password = _cstrings(body, 2)
                    ok = not self.refuse_binds and (system_id, password) == (self.system_id, self.password)
                    answer = 0 if ok else ESME_RINVPASWD
                    session.bound = ok
                    writer.write(_pdu(command_id | RESP, answer, sequence, b"TestSMSC\x00"))
                elif not session.bound:
                    writer.write(_pdu(GENERIC_NACK, ESME_RINVBNDSTS, sequence))
                elif command_id == SUBMIT_SM:
                    self._on_submit(session, smpp34.decode(header + body), sequence)
                elif command_id == ENQUIRE_LINK:
                    writer.write(_pdu(ENQUIRE_LINK | RESP, 0, sequence))
                elif command_id == UNBIND:
                    writer.write(_pdu(UNBIND | RESP, 0, sequence))
                    await writer.drain()
                    break
                else:
                    writer.write(_pdu(GENERIC_NACK, 0x03, sequence))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            session.bound = False
            with contextlib.suppress(ValueError):
                self._sessions.remove(session)
            for waiter in session.pending.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("session closed"))
            writer.close()

    def _on_submit(self, session: _Session, pdu: object, sequence: int) -> None:
        assert isinstance(pdu, smpp34.SubmitSm)
        status = self.status_for.get(pdu.destination_addr, 0)
        message_id = f"smsc-{next(self._ids)}" if status == 0 else ""
        submitted = Submitted(
            destination=pdu.destination_addr,
            source=pdu.source_addr,
            short_message=pdu.short_message,
            data_coding=pdu.data_coding,
            esm_class=pdu.esm_class,
            registered_delivery=pdu.registered_delivery,
            tlvs={tlv.tag: tlv.value for tlv in pdu.tlvs},
            message_id=message_id,
            status=status,
        )
        self.submitted.append(submitted)
        self.submit_arrived.set()
        body = message_id.encode("ascii") + b"\x00" if status == 0 else b""
        wants_receipt = status == 0 and pdu.registered_delivery & 0x01 and self.receipt_stat is not None
        if wants_receipt and self.receipt_first and self.receipt_stat is not None:
            # Some SMSCs deliver the receipt of a message handed on at once before the submit_sm_resp.
            self._write_deliver(session, self._receipt_pdu(submitted, self.receipt_stat, self.receipt_err))
            session.writer.write(_pdu(SUBMIT_SM | RESP, status, sequence, body))
            return
        session.writer.write(_pdu(SUBMIT_SM | RESP, status, sequence, body))
        if wants_receipt and self.receipt_stat is not None:
            task = asyncio.create_task(self._receipt_later(submitted, self.receipt_stat, self.receipt_err))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _receipt_later(self, submitted: Submitted, stat: str, err: str) -> None:
        await asyncio.sleep(0.01)
        with contextlib.suppress(ConnectionError, AssertionError, TimeoutError):
            await self.send_receipt(submitted, stat, err)
