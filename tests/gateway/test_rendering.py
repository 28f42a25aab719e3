"""Liquid rendering with traits, cart and variables; syntax checks of stored templates."""

from __future__ import annotations

import pytest

from omni_gateway.domain import PermanentFailure
from omni_gateway.providers.base import EmailContent, PushContent, WebhookContent
from omni_gateway.rendering import (
    CartLine,
    Renderer,
    TemplateParts,
    format_amount,
    html_to_text,
    plain_values,
    template_context,
)
from omni_gateway.variants import Variant, VariantKind, choose_variant, fallback_chain

CART = [
    CartLine(product_id="sku-1", name="Trail Shoes", quantity=2, unit_price_minor=8999, currency="EUR"),
    CartLine(product_id="sku-2", name="Socks <3-pack>", quantity=1, unit_price_minor=1250, currency="eur"),
]


def _context(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "person_id": "p-1",
        "traits": {"first_name": "Ada", "visits": 3.0},
        "cart": CART,
        "variables": {"coupon": "BACK10"},
    }
    values.update(overrides)
    return template_context(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (1999, "EUR", "19.99 EUR"),
        (5, "usd", "0.05 USD"),
        (500, "JPY", "500 JPY"),
        (12345, "KWD", "12.345 KWD"),
        (-250, "GBP", "-2.50 GBP"),
    ],
)
def test_amounts_are_formatted_in_the_currencys_minor_units(
    amount: int, currency: str, expected: str
) -> None:
    assert format_amount(amount, currency) == expected


def test_whole_numbers_from_a_struct_render_without_a_fraction() -> None:
    assert plain_values({"a": 3.0, "b": [1.5, 2.0], "c": {"d": 7.0}, "e": "x"}) == {
        "a": 3,
        "b": [1.5, 2],
        "c": {"d": 7},
        "e": "x",
    }


def test_template_sees_traits_cart_items_variables_and_person() -> None:
    parts = TemplateParts(
        subject="{{ traits.first_name }}, you left {{ cart.item_count }} items",
        body_text=(
            "Hi {{ traits.first_name }} ({{ person_id }}), visit {{ traits.visits }}.\n"
            "{% for item in cart.items %}- {{ item.quantity }} x {{ item.name }} [{{ item.product_id }}] "
            "at {{ item.unit_price }} = {{ item.line_total }}\n{% endfor %}"
            "Use {{ variables.coupon }}."
        ),
    )
    rendered = Renderer().render(parts, _context())
    assert rendered.subject == "Ada, you left 3 items"
    assert rendered.text == (
        "Hi Ada (p-1), visit 3.\n"
        "- 2 x Trail Shoes [sku-1] at 89.99 EUR = 179.98 EUR\n"
        "- 1 x Socks <3-pack> [sku-2] at 12.50 EUR = 12.50 EUR\n"
        "Use BACK10."
    )
    assert rendered.html == ""


def test_html_body_escapes_values_and_text_body_does_not() -> None:
    parts = TemplateParts(
        subject="Cart",
        body_text="{{ cart.items[1].name }}",
        body_html="<p>{{ cart.items[1].name }}</p>",
    )
    rendered = Renderer().render(parts, _context())
    assert rendered.text == "Socks <3-pack>"
    assert rendered.html == "<p>Socks &lt;3-pack&gt;</p>"


def test_missing_traits_and_an_empty_cart_render_as_nothing_or_defaults() -> None:
    parts = TemplateParts(
        subject="Hello {{ traits.first_name | default: 'there' }}",
        body_text="{% if cart.items.size == 0 %}Your cart is empty{% endif %}{{ traits.nope.deeper }}",
    )
    rendered = Renderer().render(parts, _context(traits={}, cart=[], variables={}))
    assert rendered.subject == "Hello there"
    assert rendered.text == "Your cart is empty"


def test_subject_is_kept_on_one_line_whatever_the_data_holds() -> None:
    parts = TemplateParts(subject="Hi {{ traits.first_name }}", body_text="x")
    rendered = Renderer().render(parts, _context(traits={"first_name": "Ada\r\nBcc: evil@example.com"}))
    assert rendered.subject == "Hi Ada Bcc: evil@example.com"


def test_a_template_that_fails_while_rendering_is_a_permanent_failure() -> None:
    parts = TemplateParts(subject="x", body_text="{{ 'a' | nosuchfilter }}")
    with pytest.raises(PermanentFailure, match="nosuchfilter"):
        Renderer().render(parts, _context())


def test_problems_name_each_part_with_bad_liquid() -> None:
    parts = TemplateParts(
        subject="Hi {{ traits.first_name",
        body_text="{% if cart %}never closed",
        body_html="<p>{{ x | upcase | bogus }}</p>",
    )
    problems = Renderer().problems(parts)
    assert set(problems) == {"subject", "body_text", "body_html"}
    assert "invalid Liquid" in problems["subject"]
    assert "bogus" in problems["body_html"]


def test_valid_templates_have_no_problems() -> None:
    parts = TemplateParts(
        subject="{{ traits.first_name | capitalize }}",
        body_text="{% for i in cart.items %}{{ i.name }}{% endfor %}",
        body_html="",
    )
    assert Renderer().problems(parts) == {}


def test_runaway_loops_are_stopped() -> None:
    parts = TemplateParts(subject="x", body_text="{% for i in (1..100000000) %}{{ i }}{% endfor %}")
    with pytest.raises(PermanentFailure):
        Renderer().render(parts, _context())


@pytest.mark.parametrize(
    ("locale", "chain"),
    [
        ("de-AT", ["de-at", "de", ""]),
        ("de_at", ["de-at", "de", ""]),
        ("zh-Hant-TW", ["zh-hant-tw", "zh-hant", "zh", ""]),
        ("", [""]),
        ("  ", [""]),
    ],
)
def test_a_locale_falls_back_subtag_by_subtag_to_the_default(locale: str, chain: list[str]) -> None:
    assert fallback_chain(locale) == chain


def test_the_variant_of_the_nearest_locale_is_chosen() -> None:
    variants = [
        Variant(VariantKind.SMS, "", {"text": "default"}),
        Variant(VariantKind.SMS, "de", {"text": "de"}),
        Variant(VariantKind.SMS, "de-AT", {"text": "de-AT"}),
        Variant(VariantKind.EMAIL, "fr", {"subject": "fr", "text": "fr"}),
    ]
    chosen = {
        locale: (variant.locale if (variant := choose_variant(variants, VariantKind.SMS, locale)) else None)
        for locale in ("de-at", "DE-CH", "de", "fr", "")
    }
    assert chosen == {"de-at": "de-AT", "DE-CH": "de", "de": "de", "fr": "", "": ""}
    assert choose_variant(variants, VariantKind.PUSH, "de") is None


def test_the_json_filter_writes_values_as_json_and_undefined_as_null() -> None:
    variant = Variant(
        VariantKind.WEBHOOK,
        "",
        {
            "body": '{"name": {{ traits.first_name | json }}, "missing": {{ traits.nope | json }}, '
            '"items": {{ cart.items | json }}}'
        },
    )
    content = Renderer().render_variant(variant, _context(traits={"first_name": 'Ada "the" <b>'}))
    assert isinstance(content, WebhookContent)
    assert content.payload["name"] == 'Ada "the" <b>'
    assert content.payload["missing"] is None
    assert [i["product_id"] for i in content.payload["items"]] == ["sku-1", "sku-2"]


def test_one_line_parts_stay_on_one_line_and_a_push_image_must_be_http() -> None:
    variant = Variant(
        VariantKind.PUSH,
        "",
        {"title": "Hi\n{{ traits.first_name }}", "body": "a\nb", "image_url": "{{ variables.coupon }}"},
    )
    with pytest.raises(PermanentFailure, match="http"):
        Renderer().render_variant(variant, _context())
    content = Renderer().render_variant(variant, _context(variables={"coupon": "https://x.example/i.png"}))
    assert content == PushContent(title="Hi Ada", body="a\nb", image_url="https://x.example/i.png")


def test_the_text_of_an_html_email_is_its_html_without_tags() -> None:
    html = "<html><head><style>p {}</style></head><body><h1>Hi&nbsp;Ada</h1><p>Your <b>cart</b>\n  waits</p></body></html>"
    assert html_to_text(html) == "Hi Ada\n\nYour cart waits"  # a no-break space is a space in text
    variant = Variant(VariantKind.EMAIL, "", {"subject": "S", "html": "<p>{{ cart.items[1].name }}</p>"})
    content = Renderer().render_variant(variant, _context())
    assert content == EmailContent(subject="S", text="Socks <3-pack>", html="<p>Socks &lt;3-pack&gt;</p>")


def test_variant_problems_name_their_parts() -> None:
    renderer = Renderer()
    assert renderer.variant_problems(Variant(VariantKind.EMAIL, "", {"subject": " "})) == {
        "subject": "required",
        "text": "one of html, mjml and text is required",
    }
    problems = renderer.variant_problems(Variant(VariantKind.WEBHOOK, "", {"body": '{"a": {{ x }}}'}))
    assert "not JSON" in problems["body"]
    assert (
        renderer.variant_problems(Variant(VariantKind.WEBHOOK, "", {"body": '{"a": {{ x | json }}}'})) == {}
    )
    assert (
        "unknown filter"
        in renderer.variant_problems(Variant(VariantKind.SMS, "", {"text": "{{ x | nope }}"}))["text"]
    )


@pytest.mark.parametrize(
    "body",
    ['{"a": NaN}', '{"a": Infinity}', "[" * 5000 + "]" * 5000, '{"a":' * 40 + "1" + "}" * 40],
    ids=["nan", "infinity", "too-deep-for-json", "too-deep-for-a-struct"],
)
def test_a_webhook_body_that_a_struct_cannot_hold_is_a_permanent_failure(body: str) -> None:
    variant = Variant(VariantKind.WEBHOOK, "", {"body": "{{ variables.body }}"})
    with pytest.raises(PermanentFailure, match="webhook body"):
        Renderer().render_variant(variant, _context(variables={"body": body}))
