"""Liquid templates: checking their syntax when stored, and rendering them with a person's data when sent.

`Renderer.render_variant` makes a template's variant (variants.py) the `Content` a channel provider is given
(providers/base.py): Liquid, then for an email written in MJML the compiled HTML, for a webhook the JSON
object. The parts of a template written for one channel the old way
(`TemplateParts`: subject, text, HTML) render with `Renderer.render`, as before.

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
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import mjml
from liquid import BoundTemplate, Environment, Undefined
from liquid.exceptions import LiquidError

from omni_gateway.domain import PermanentFailure
from omni_gateway.providers.base import (
    Content,
    EmailContent,
    PushContent,
    SmsContent,
    TerminalContent,
    WebhookContent,
)
from omni_gateway.variants import PARTS, Part, Variant, VariantKind
from omni_kit.money import minor_unit_digits


def json_filter(value: object) -> str:
    """The `json` filter: a value written as JSON (an undefined name as null), for webhook bodies."""
    if isinstance(value, Undefined):
        return "null"
    return json.dumps(value, ensure_ascii=False, default=str)


class _BoundedEnvironment(Environment):
    """A Liquid environment whose templates cannot loop or write without end (templates come from callers)."""

    loop_iteration_limit = 10_000
    output_stream_limit = 1_000_000
    context_depth_limit = 30

    def setup_tags_and_filters(self, *, extra: bool = False) -> None:
        super().setup_tags_and_filters(extra=extra)
        self.filters["json"] = json_filter


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

    def variant_problems(self, variant: Variant) -> dict[str, str]:
        """What is wrong with a variant, by part name: Liquid that does not parse or names an unknown filter,
        a required part left blank, an email with neither HTML nor text, a webhook body that is not a JSON
        object when rendered with no data."""
        found: dict[str, str] = {}
        for name, rule in PARTS[variant.kind].items():
            source = variant.part(name)
            if not source.strip():
                if rule.required:
                    found[name] = "required"
                continue
            problem = self._liquid_problem(source, html=rule.html)
            if problem:
                found[name] = problem
        if variant.kind == VariantKind.EMAIL:
            html, mjml_source = variant.part("html"), variant.part("mjml")
            if html and mjml_source:
                found.setdefault("mjml", "give html or mjml, not both")
            elif not (html or mjml_source or variant.part("text")):
                found["text"] = "one of html, mjml and text is required"
            elif mjml_source and "mjml" not in found:
                try:
                    mjml_to_html(self._render_part(mjml_source, {}, PARTS[VariantKind.EMAIL]["mjml"]))
                except (PermanentFailure, LiquidError) as failure:
                    found["mjml"] = f"{failure} (with no data)"
        if variant.kind == VariantKind.WEBHOOK and not found:
            try:
                self.render_variant(variant, {})
            except PermanentFailure as failure:
                found["body"] = f"{failure} (with no data; put values in with the json filter)"
        return found

    def render_variant(self, variant: Variant, context: Mapping[str, Any]) -> Content:
        """The content of a variant rendered with a context (template_context); a part that fails to render
        (or a webhook body that is not a JSON object, an image URL that is not http(s)) is a permanent
        failure of the message."""
        rules = PARTS[variant.kind]
        try:
            values = {
                name: self._render_part(variant.part(name), context, rule) for name, rule in rules.items()
            }
        except LiquidError as error:
            raise PermanentFailure(f"template could not be rendered: {_first_line(error)}") from error
        match variant.kind:
            case VariantKind.EMAIL:
                html = mjml_to_html(values["mjml"]) if variant.part("mjml") else values["html"]
                text = values["text"] if variant.part("text") else html_to_text(html)
                return EmailContent(subject=values["subject"], text=text, html=html)
            case VariantKind.SMS:
                return SmsContent(text=values["text"])
            case VariantKind.PUSH:
                image = values["image_url"]
                if image and not image.lower().startswith(("https://", "http://")):
                    raise PermanentFailure(f"the push image URL is not an http(s) URL: {image[:200]!r}")
                return PushContent(
                    title=values["title"], body=values["body"], deep_link=values["deep_link"], image_url=image
                )
            case VariantKind.TERMINAL:
                return TerminalContent(text=values["text"], store_id=values["store_id"].strip())
            case VariantKind.WEBHOOK:
                return WebhookContent(payload=_json_object(values["body"]))
        raise AssertionError(variant.kind)  # pragma: no cover - the match is exhaustive

    def _render_part(self, source: str, context: Mapping[str, Any], rule: Part) -> str:
        if not source:
            return ""
        rendered = self._parse(source, html=rule.html).render(**context)
        # One-line parts (a subject is a header line) must not get line breaks from the data.
        return " ".join(rendered.split()) if rule.one_line else rendered

    def _liquid_problem(self, source: str, *, html: bool) -> str | None:
        environment = self._html if html else self._text
        try:
            template = self._parse(source, html=html)
        except LiquidError as error:
            return f"invalid Liquid: {_first_line(error)}"
        unknown = sorted(f for f in template.analyze().filters if f not in environment.filters)
        if unknown:
            return f"invalid Liquid: unknown filter {', '.join(unknown)}"
        return None

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
            problem = self._liquid_problem(source, html=html)
            if problem:
                found[name] = problem
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


def _no_includes(path: str) -> str:
    raise ValueError(f"mj-include is not allowed ({path[:100]!r})")


def mjml_to_html(source: str) -> str:
    """An MJML document compiled to an HTML email body (mjml-python, a binding of MRML, the Rust port of
    MJML); `mj-include` is refused (a template must not read files); an invalid document is a permanent
    failure."""
    try:
        return mjml.mjml2html(source, include_loader=_no_includes)
    except ValueError as error:
        raise PermanentFailure(f"invalid MJML: {error}") from error


MAX_WEBHOOK_DEPTH = 32
"""How deep a webhook body's JSON may nest (a protobuf Struct holds at most 100 levels)."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_object(text: str) -> dict[str, Any]:
    """A rendered webhook body as a JSON object: standard JSON (no NaN or Infinity), nested at most
    MAX_WEBHOOK_DEPTH levels; anything else is a permanent failure."""
    try:
        payload = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise PermanentFailure(f"the webhook body is not JSON: {error}") from error
    if not isinstance(payload, dict):
        raise PermanentFailure("the webhook body is not a JSON object")
    level: list[dict[str, Any] | list[Any]] = [payload]
    for _ in range(MAX_WEBHOOK_DEPTH):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return payload
    raise PermanentFailure(f"the webhook body nests deeper than {MAX_WEBHOOK_DEPTH} levels")


class _TextOfHtml(HTMLParser):
    _BLOCKS = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"}
    )
    _HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCKS:
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(self._hidden - 1, 0)
        elif tag in self._BLOCKS:
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.chunks.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """The text of an HTML body, for an email written with HTML alone: tags dropped, entities decoded, a line
    per block element."""
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    lines = (line.strip() for line in "".join(parser.chunks).splitlines())
    text: list[str] = []
    for line in lines:
        if line or (text and text[-1]):
            text.append(line)
    return "\n".join(text).strip()


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
