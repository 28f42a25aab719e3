"""Phonetic codes of names, so that blocking groups names that sound alike ("meyer", "maier", "myer")."""

from __future__ import annotations

_SOUNDEX_CODES = {
    **dict.fromkeys("bfpv", "1"),
    **dict.fromkeys("cgjkqsxz", "2"),
    **dict.fromkeys("dt", "3"),
    "l": "4",
    **dict.fromkeys("mn", "5"),
    "r": "6",
}


def soundex(name: str) -> str:
    """American Soundex of a folded name: its first letter and three digits ("robert" → "r163"), or ""."""
    letters = [c for c in name if "a" <= c <= "z"]
    if not letters:
        return ""
    first = letters[0]
    digits: list[str] = []
    previous = _SOUNDEX_CODES.get(first, "")
    for letter in letters[1:]:
        code = _SOUNDEX_CODES.get(letter, "")
        if code and code != previous:
            digits.append(code)
            if len(digits) == 3:
                break
        # h and w do not separate letters of the same code; vowels do.
        if letter not in "hw":
            previous = code
    return first + "".join(digits).ljust(3, "0")
