"""How an SMS text travels: in the GSM 7-bit default alphabet (3GPP TS 23.038) when every character is in it,
else in UCS-2 (UTF-16), and in how many segments the network carries (and charges) it.

A single message holds 160 GSM-7 septets or 70 UCS-2 code units; a concatenated one gives 7 septets (6 octets)
of each segment to the user data header, leaving 153 septets or 67 code units. A character of the GSM-7
extension table (`€ [ ] { } | ^ ~ \\` and form feed) takes two septets (escape + code) and is never split
across segments; neither is a UTF-16 surrogate pair (an emoji counts two code units).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DATA_CODING",
    "SmsEncoding",
    "SmsPlan",
    "decode_gsm7",
    "encode_gsm7",
    "plan",
    "udh_parts",
]

# The GSM 03.38 default alphabet, septet value = index (0x1B is the escape to the extension table).
_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_EXTENSION = {"\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D, "]": 0x3E}
_EXTENSION["|"] = 0x40
_EXTENSION["€"] = 0x65
_ESCAPE = 0x1B
_BASIC_CODES = {char: code for code, char in enumerate(_BASIC) if code != _ESCAPE}
_EXTENSION_CHARS = {code: char for char, code in _EXTENSION.items()}

_SINGLE = {"GSM-7": 160, "UCS-2": 70}
_CONCATENATED = {"GSM-7": 153, "UCS-2": 67}


class SmsEncoding(StrEnum):
    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


DATA_CODING = {SmsEncoding.GSM7: 0x00, SmsEncoding.UCS2: 0x08}
"""SMPP data_coding: 0 the SMSC default alphabet (GSM-7, one septet per octet), 8 UCS-2 (big-endian)."""


@dataclass(frozen=True)
class SmsPlan:
    """How a text goes: its encoding, its units (septets or UTF-16 code units) and the segments it needs."""

    encoding: SmsEncoding
    units: int
    segments: int


def _units(text: str) -> list[int] | None:
    """The width of each character in GSM-7 septets, or None when a character is not in GSM-7."""
    widths = []
    for char in text:
        if char in _BASIC_CODES:
            widths.append(1)
        elif char in _EXTENSION:
            widths.append(2)
        else:
            return None
    return widths


def _utf16_widths(text: str) -> list[int]:
    return [2 if ord(char) > 0xFFFF else 1 for char in text]


def _chunks(widths: list[int], limit: int) -> list[tuple[int, int]]:
    """Split characters of the given widths into (start, end) runs of at most `limit` units, never
    splitting a character."""
    runs: list[tuple[int, int]] = []
    start = used = 0
    for index, width in enumerate(widths):
        if used + width > limit:
            runs.append((start, index))
            start, used = index, 0
        used += width
    if start < len(widths) or not runs:
        runs.append((start, len(widths)))
    return runs


def _layout(text: str) -> tuple[SmsEncoding, list[int]]:
    gsm = _units(text)
    if gsm is not None:
        return SmsEncoding.GSM7, gsm
    return SmsEncoding.UCS2, _utf16_widths(text)


def plan(text: str) -> SmsPlan:
    """The encoding of `text`, its length in units and the number of segments it is sent in."""
    encoding, widths = _layout(text)
    units = sum(widths)
    if units <= _SINGLE[encoding]:
        return SmsPlan(encoding, units, 1)
    return SmsPlan(encoding, units, len(_chunks(widths, _CONCATENATED[encoding])))


def encode_gsm7(text: str) -> bytes:
    """GSM-7 unpacked, one septet per octet, as SMPP carries it with data_coding 0. ValueError if a
    character is not in the alphabet."""
    out = bytearray()
    for char in text:
        if char in _BASIC_CODES:
            out.append(_BASIC_CODES[char])
        elif char in _EXTENSION:
            out += bytes((_ESCAPE, _EXTENSION[char]))
        else:
            raise ValueError(f"{char!r} is not in the GSM 7-bit default alphabet")
    return bytes(out)


def decode_gsm7(data: bytes) -> str:
    """Unpacked GSM-7 septets to text; an unknown escape code reads as a space, as 23.038 says."""
    out: list[str] = []
    escaped = False
    for octet in data:
        code = octet & 0x7F
        if escaped:
            out.append(_EXTENSION_CHARS.get(code, " "))
            escaped = False
        elif code == _ESCAPE:
            escaped = True
        else:
            out.append(_BASIC[code])
    return "".join(out)


def encode(text: str, encoding: SmsEncoding) -> bytes:
    """The text in the given encoding, as SMPP carries it."""
    return encode_gsm7(text) if encoding is SmsEncoding.GSM7 else text.encode("utf-16-be")


def decode(data: bytes, data_coding: int) -> str:
    """A short message as the SMSC delivered it: UCS-2 for data_coding 8, Latin-1 for 3, GSM-7 otherwise."""
    if data_coding == 0x08:
        return data.decode("utf-16-be", errors="replace")
    if data_coding == 0x03:
        return data.decode("latin-1")
    return decode_gsm7(data)


def udh_parts(text: str, reference: int | None = None) -> tuple[SmsPlan, list[bytes]]:
    """The text's plan and its short messages: one without a header when it fits, else one per segment,
    each starting with a concatenation header (IEI 0x00: reference, total, sequence number)."""
    encoding, widths = _layout(text)
    result = plan(text)
    if result.segments == 1:
        return result, [encode(text, encoding)]
    ref = secrets.randbelow(256) if reference is None else reference & 0xFF
    runs = _chunks(widths, _CONCATENATED[encoding])
    total = len(runs)
    parts = [
        bytes((0x05, 0x00, 0x03, ref, total, number)) + encode(text[start:end], encoding)
        for number, (start, end) in enumerate(runs, start=1)
    ]
    return result, parts
