"""Liquid templates: checking their syntax when stored, and rendering them with a person's data when sent.

A template sees:
- `person_id`: the person's id;
- `traits`: the profile's traits (numbers without a fraction come out as integers, so "3" not "3.0");
- `cart.items`: each with `product_id`, `name`, `quantity`, `unit_price` and `line_total` (formatted amounts
  such as "19.99 EUR"), and `cart.item_count`;
- `variables`: the values of the send request.

Undefined names render as nothing, so a template does not fail for a person who lacks a trait; use
`{{ traits.first_name | default: "there" }}`. HTML bodies are rendered with autoescape on.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from liquid import BoundTemplate, Environment
from liquid.exceptions import LiquidError

from omni_gateway.domain import PermanentFailure
from omni_kit.money import minor_unit_digits


class _BoundedEnvironment(Environment):
    """A Liquid environment whose templates cannot loop or write without end (templates come from callers)."""

    loop_iteration_limit = 10_000
    output_stream_limit = 1_000_000
    context_depth_limit = 30


@dataclass(frozen=True)
class TemplateParts:
    """The Liquid sources of one template."""

    subject: str
    body_text: str
    body_html: str = ""


@dataclass(frozen=True)
class CartLine:
    """One cart line as the profile holds it (money in minor units)."""

    product_id: str
    name: str
    quantity: int
    unit_price_minor: int
    currency: str


@dataclass(frozen=True)
class Rendered:
    """A rendered message: subject (one line), plain text and optional HTML."""

    subject: str
    text: str
    html: str


def format_amount(amount_minor: int, currency: str) -> str:
    """Format minor units as a display amount: (1999, "EUR") → "19.99 EUR", (500, "JPY") → "500 JPY"."""
    code = currency.upper()
    exponent = minor_unit_digits(code)
    value = Decimal(amount_minor).scaleb(-exponent)
    text = f"{value:.{exponent}f}"
    return f"{text} {code}".strip()


def plain_values(value: Any) -> Any:
    """Values from a protobuf Struct with whole-number floats turned into ints, so 3.0 renders as "3"."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): plain_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_values(v) for v in value]
    return value


def template_context(
    *,
    person_id: str,
    traits: Mapping[str, Any],
    cart: Sequence[CartLine],
    variables: Mapping[str, Any],
) -> dict[str, Any]:
    """The names a template sees, built from the person's profile and the request's variables."""
    items = [
        {
            "product_id": line.product_id,
            "name": line.name,
            "quantity": line.quantity,
            "unit_price": format_amount(line.unit_price_minor, line.currency),
            "line_total": format_amount(line.unit_price_minor * line.quantity, line.currency),
        }
        for line in cart
    ]
    return {
        "person_id": person_id,
        "traits": plain_values(traits),
        "cart": {"items": items, "item_count": sum(line.quantity for line in cart)},
        "variables": plain_values(variables),
    }


class Renderer:
    """Parses and renders templates; parsed templates are cached by their source."""

    def __init__(self) -> None:
        self._text = _BoundedEnvironment()
        self._html = _BoundedEnvironment(autoescape=True)

    def problems(self, parts: TemplateParts) -> dict[str, str]:
        """What is wrong with each part's Liquid, by part name ("subject", "body_text", "body_html")."""
        found: dict[str, str] = {}
        for name, source, html in (
            ("subject", parts.subject, False),
            ("body_text", parts.body_text, False),
            ("body_html", parts.body_html, True),
        ):
            if not source:
                continue
            environment = self._html if html else self._text
            try:
                template = self._parse(source, html=html)
            except LiquidError as error:
                found[name] = f"invalid Liquid: {_first_line(error)}"
                continue
            unknown = sorted(f for f in template.analyze().filters if f not in environment.filters)
            if unknown:
                found[name] = f"invalid Liquid: unknown filter {', '.join(unknown)}"
        return found

    def render(self, parts: TemplateParts, context: Mapping[str, Any]) -> Rendered:
        """Render every part; a template that fails to render is a permanent failure of the message."""
        try:
            subject = self._parse(parts.subject, html=False).render(**context) if parts.subject else ""
            text = self._parse(parts.body_text, html=False).render(**context)
            html = self._parse(parts.body_html, html=True).render(**context) if parts.body_html else ""
        except LiquidError as error:
            raise PermanentFailure(f"template could not be rendered: {_first_line(error)}") from error
        # A subject is one header line: newlines from data must not start new headers.
        return Rendered(subject=" ".join(subject.split()), text=text, html=html)

    @functools.lru_cache(maxsize=512)  # noqa: B019 - one Renderer lives as long as the service
    def _parse(self, source: str, *, html: bool) -> BoundTemplate:
        return (self._html if html else self._text).from_string(source)


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
