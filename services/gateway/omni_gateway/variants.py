"""What a template holds: variants, each the Liquid parts of one kind of content (email, SMS, push, store
terminal, webhook) in one locale, and how the variant of a locale is chosen ("de-AT" → "de" → the default)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class VariantKind(StrEnum):
    """What a variant holds: the content of one kind of channel (providers/base.py's Content types)."""

    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    TERMINAL = "terminal"
    WEBHOOK = "webhook"


@dataclass(frozen=True)
class Part:
    """How a part is checked and rendered: required (not blank), HTML (values escaped), one line (line
    breaks from the data made spaces)."""

    required: bool = False
    html: bool = False
    one_line: bool = False


# The parts of each kind, in order. Sizes are capped by gateway.proto (protovalidate), not here.
PARTS: dict[VariantKind, dict[str, Part]] = {
    VariantKind.EMAIL: {
        "subject": Part(required=True, one_line=True),
        "html": Part(html=True),
        "text": Part(),
        "mjml": Part(html=True),
    },
    VariantKind.SMS: {"text": Part(required=True)},
    VariantKind.PUSH: {
        "title": Part(required=True, one_line=True),
        "body": Part(),
        "deep_link": Part(one_line=True),
        "image_url": Part(one_line=True),
    },
    VariantKind.TERMINAL: {"text": Part(required=True), "store_id": Part(one_line=True)},
    VariantKind.WEBHOOK: {"body": Part(required=True)},
}


@dataclass(frozen=True)
class Variant:
    """One kind of content in one locale ("" is the default): each part's Liquid source by name (PARTS)."""

    kind: VariantKind
    locale: str
    parts: Mapping[str, str]

    def part(self, name: str) -> str:
        return self.parts.get(name, "")

    def to_json(self) -> dict[str, str]:
        """As stored (template_versions.variants): kind, locale and every part of the kind."""
        return {"kind": self.kind.value, "locale": self.locale, **{n: self.part(n) for n in PARTS[self.kind]}}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Variant:
        kind = VariantKind(value["kind"])
        return cls(kind, str(value.get("locale", "")), {n: str(value.get(n, "")) for n in PARTS[kind]})


def locale_key(locale: str) -> str:
    """A locale as compared: BCP 47 tags ignore case, and "_" (as in "de_AT") counts as "-"."""
    return locale.strip().replace("_", "-").lower()


def fallback_chain(locale: str) -> list[str]:
    """The locales tried for a locale, most specific first, ending at the default: "de-AT" → ["de-at",
    "de", ""]."""
    subtags = [s for s in locale_key(locale).split("-") if s]
    chain = ["-".join(subtags[:n]) for n in range(len(subtags), 0, -1)]
    return [*chain, ""]


def choose_variant(variants: Iterable[Variant], kind: VariantKind, locale: str) -> Variant | None:
    """The variant of a kind for a locale, falling back as fallback_chain says; None if the kind has none."""
    by_locale = {locale_key(v.locale): v for v in variants if v.kind == kind}
    for candidate in fallback_chain(locale):
        if candidate in by_locale:
            return by_locale[candidate]
    return None


def locale_of(traits: Mapping[str, Any]) -> str:
    """The locale a person's messages are rendered in: their `locale` trait, if it is a string."""
    value = traits.get("locale")
    return value.strip() if isinstance(value, str) else ""
