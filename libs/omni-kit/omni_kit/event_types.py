"""What an event type is, for every service that records, counts or matches events by type: profile records
them, its computed traits and segmentation's rules name them. One rule, so that a rule can name every type
an event can have, and no type a rule names is one no event can have."""

from __future__ import annotations

import functools
import re
import unicodedata

MAX_EVENT_TYPE = 100
"""The longest event type, in characters."""

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
"""ASCII lower snake case: words of letters and digits joined by single underscores, starting with a letter."""

EVENT_TYPE_RULE = "must be lower snake case in any script, e.g. cart_item_added, товар_добавлен"
"""How a bad event type is described to the caller."""


@functools.lru_cache(maxsize=4096)
def is_event_type(name: str) -> bool:
    """Whether name is an event type: lower snake case of at most MAX_EVENT_TYPE characters, in any script.

    Words of letters, digits and combining marks, joined by single underscores, starting with a letter; in
    lower case and in Unicode normal form C, so one name has one spelling: "order_completed",
    "товар_добавлен", "商品を追加". (A few types make up almost every event: the answer is remembered.)
    """
    if len(name) > MAX_EVENT_TYPE:
        return False
    if name.isascii():
        return SNAKE_CASE.fullmatch(name) is not None  # match() with $ would let a final line break through
    if name.lower() != name or unicodedata.normalize("NFC", name) != name:
        return False
    if unicodedata.category(name[0])[0] != "L" or any(not word for word in name.split("_")):
        return False
    return all(c == "_" or unicodedata.category(c)[0] in "LNM" for c in name)
