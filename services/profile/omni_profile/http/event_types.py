"""A track call's event name as an event type: "Product Added" → product_added, "Товар добавлен" →
товар_добавлен, "商品を追加" → 商品を追加.

Segment takes any string as an event name; the profile keeps the name as sent (Event.name) and derives the
type that rules, computed traits and segments match: lower snake case in the name's own script (validation.
is_event_type). Latin letters lose their accents ("Café" → cafe, as they always did here), other scripts keep
their marks (a Devanagari vowel sign or a Japanese voicing mark is part of its letter); compatibility forms
are folded (the full-width forms of Latin letters are those letters). A type longer than MAX_EVENT_TYPE keeps its beginning and ends with a
hash of the whole, so two long names that differ only at the end stay two types.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

from omni_profile import validation

MAX_EVENT_TYPE = validation.MAX_EVENT_TYPE
_HASH_CHARACTERS = 8
_UNDERSCORES = re.compile(r"_+")


@functools.lru_cache(maxsize=4096)
def snake_case(name: str) -> str:
    """The event type of an event name; empty when the name has no letter or digit."""
    words = _words(_folded(name))
    snake = _UNDERSCORES.sub("_", "".join(words)).strip("_")
    snake = unicodedata.normalize("NFC", snake)
    if snake and unicodedata.category(snake[0])[0] != "L":
        snake = f"event_{snake}"
    if len(snake) > MAX_EVENT_TYPE:
        digest = hashlib.sha256(snake.encode()).hexdigest()[:_HASH_CHARACTERS]
        head = snake[: MAX_EVENT_TYPE - _HASH_CHARACTERS - 1].rstrip("_")
        snake = f"{head}_{digest}"
    return snake


def _folded(name: str) -> str:
    """Compatibility forms folded, accents of Latin letters dropped, other marks kept; composed again."""
    kept: list[str] = []
    latin_base = False
    for character in unicodedata.normalize("NFKD", name):
        if unicodedata.category(character)[0] == "M":
            if not latin_base:
                kept.append(character)
            continue
        latin_base = character.isascii()
        kept.append(character)
    return unicodedata.normalize("NFC", "".join(kept))


def _words(text: str) -> list[str]:
    """The characters of text in lower case, with "_" between words: at anything but a letter, digit or mark,
    and where case shows a new word begins ("signedUp", "HTMLPage")."""
    out: list[str] = []
    previous = ""
    for index, character in enumerate(text):
        kind = unicodedata.category(character)
        if kind[0] not in "LNM":
            out.append("_")
            previous = ""
            continue
        if kind in ("Lu", "Lt") and previous:
            following = text[index + 1 : index + 2]
            if previous.islower() or previous.isdigit() or (previous.isupper() and following.islower()):
                out.append("_")
        out.append(character.lower())
        previous = character
    return out
