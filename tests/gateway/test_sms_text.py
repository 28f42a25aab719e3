"""GSM-7 or UCS-2, and how many segments: the limits of 3GPP 23.038 at their edges."""

from __future__ import annotations

import pytest

from omni_gateway.sms_text import SmsEncoding, decode_gsm7, encode_gsm7, plan, udh_parts

GSM, UCS = SmsEncoding.GSM7, SmsEncoding.UCS2


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("a" * 160, GSM, 160, 1),
        ("a" * 161, GSM, 161, 2),
        ("a" * 306, GSM, 306, 2),
        ("a" * 307, GSM, 307, 3),
        # Extension characters take two septets each.
        ("€" * 80, GSM, 160, 1),
        ("a" * 159 + "€", GSM, 161, 2),
        ("[]{}|^~\\", GSM, 16, 1),
        # Accented letters of the default alphabet stay GSM-7; others force UCS-2.
        ("Grüße à Málaga? ñ é", UCS, 19, 1),
        ("Grüße à Ñ é ¿¡ § Ø Å", GSM, 20, 1),
        ("ő" * 70, UCS, 70, 1),
        ("ő" * 71, UCS, 71, 2),
        ("ő" * 134, UCS, 134, 2),
        ("ő" * 135, UCS, 135, 3),
        # An emoji is two UTF-16 code units.
        ("😀" * 35, UCS, 70, 1),
        ("😀" * 36, UCS, 72, 2),
    ],
)
def test_encoding_and_segments(text: str, encoding: SmsEncoding, units: int, segments: int) -> None:
    result = plan(text)
    assert (result.encoding, result.units, result.segments) == (encoding, units, segments)


def test_gsm7_bytes_are_the_alphabet_s_septets() -> None:
    assert encode_gsm7("@£$") == b"\x00\x01\x02"
    assert encode_gsm7("€") == b"\x1b\x65"
    assert encode_gsm7("A a ä") == b"\x41\x20\x61\x20\x7b"
    assert decode_gsm7(b"\x1b\x65\x1b\x3c\x00") == "€[@"
    with pytest.raises(ValueError):
        encode_gsm7("ő")


def test_udh_segments_carry_header_and_never_split_an_escape_or_a_surrogate() -> None:
    result, parts = udh_parts("a" * 152 + "€" + "b" * 10, reference=7)
    assert result.segments == 2
    assert [part[:6] for part in parts] == [b"\x05\x00\x03\x07\x02\x01", b"\x05\x00\x03\x07\x02\x02"]
    assert parts[0][6:] == b"a" * 152  # the € (two septets) would make 154, so it opens the second part
    assert parts[1][6:8] == b"\x1b\x65"

    result, parts = udh_parts("x" * 66 + "😀" + "y" * 5, reference=1)
    assert result.encoding is UCS and result.segments == 2
    assert len(parts[0]) == 6 + 66 * 2
    assert parts[1][6:].decode("utf-16-be") == "😀yyyyy"

    _, single = udh_parts("hello")
    assert single == [b"hello"]
