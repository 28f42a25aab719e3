"""Templates over gRPC: variants per channel and locale, versions, update masks, listing, archiving, previews,
and what sends make of them (the version recorded, the person's locale), against the real servers."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from nats.js import JetStreamContext

from omni.common.v1 import common_pb2
from omni.gateway.v1 import gateway_pb2
from omni.profile.v1 import profile_pb2
from omni_gateway.email_links import LinkKind
from omni_kit.embedded import SmtpSink
from omni_kit.errors import StatusDetails, status_details

from .email_support import email_links
from .support import (
    CART_TEMPLATE,
    EventLog,
    Gateway,
    Neighbours,
    StartGateway,
    add_to_cart,
    create_cart_template,
    create_person,
    publish,
    send_request,
    send_requested,
    unique,
)


def _email(
    subject: str, text: str = "", html: str = "", locale: str = "", mjml: str = ""
) -> gateway_pb2.TemplateVariant:
    return gateway_pb2.TemplateVariant(
        locale=locale, email=gateway_pb2.EmailVariant(subject=subject, text=text, html=html, mjml=mjml)
    )


MJML = (
    "<mjml><mj-body><mj-section><mj-column>"
    "<mj-text>Your 10th coffee is free, {{ traits.first_name | default: 'friend' }}</mj-text>"
    '<mj-button href="https://coffee.example/offers/{{ variables.code }}">Show the coupon</mj-button>'
    "</mj-column></mj-section></mj-body></mjml>"
)


def _sms(text: str, locale: str = "") -> gateway_pb2.TemplateVariant:
    return gateway_pb2.TemplateVariant(locale=locale, sms=gateway_pb2.SmsVariant(text=text))


def _push(title: str, body: str = "", locale: str = "", **parts: str) -> gateway_pb2.TemplateVariant:
    return gateway_pb2.TemplateVariant(
        locale=locale, push=gateway_pb2.PushVariant(title=title, body=body, **parts)
    )


def _terminal(text: str, locale: str = "") -> gateway_pb2.TemplateVariant:
    return gateway_pb2.TemplateVariant(locale=locale, terminal=gateway_pb2.TerminalVariant(text=text))


def _webhook(body: str, locale: str = "") -> gateway_pb2.TemplateVariant:
    return gateway_pb2.TemplateVariant(locale=locale, webhook=gateway_pb2.WebhookVariant(body=body))


COFFEE_VARIANTS = [
    _email(
        "{{ traits.first_name | default: 'Hi' }}, your 10th coffee is free",
        text="Show this at the till: {{ variables.code }}",
        html="<p>Your <b>10th coffee</b> is free, {{ traits.first_name }}</p>",
    ),
    _email(
        "{{ traits.first_name | default: 'Hallo' }}, dein 10. Kaffee ist gratis",
        text="Code: {{ variables.code }}",
        locale="de",
    ),
    _email(
        "Servus {{ traits.first_name }}, dein 10. Kaffee geht aufs Haus",
        text="Code: {{ variables.code }}",
        locale="de-AT",
    ),
    _sms("Your 10th coffee is free: {{ variables.code }}"),
    _sms("Dein 10. Kaffee ist gratis: {{ variables.code }}", locale="de"),
    _push(
        "Your 10th coffee is free",
        "{{ cart.item_count }} in your cart",
        deep_link="coffee://offers/{{ variables.code }}",
        image_url="https://cdn.example.com/coffee.png",
    ),
    _terminal("COUPON {{ variables.code }} - 1 free coffee"),
    _webhook(
        '{"event": "free_coffee", "code": {{ variables.code | json }}, "name": {{ traits.first_name | json }}}'
    ),
]


async def _create(
    gateway: Gateway, variants: list[gateway_pb2.TemplateVariant], **fields: Any
) -> gateway_pb2.Template:
    template = gateway_pb2.Template(id=fields.pop("id", None) or unique("coffee-"), variants=variants)
    response = await gateway.stub.CreateTemplate(
        gateway_pb2.CreateTemplateRequest(template=template, **fields)
    )
    return response.template


async def _refused(call: Any, request: Any) -> StatusDetails:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(request)
    return status_details(raised.value)


def _struct(**values: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


async def _set_traits(neighbours: Neighbours, person_id: str, **traits: Any) -> None:
    await neighbours.profile.SetTraits(
        profile_pb2.SetTraitsRequest(person_id=person_id, traits=_struct(**traits), source="crm")
    )


# --- create and get -----------------------------------------------------------------------------------------


async def test_a_template_with_variants_is_stored_as_version_1_and_answered_whole(gateway: Gateway) -> None:
    created = await _create(gateway, COFFEE_VARIANTS)

    assert created.version == 1
    assert created.state == gateway_pb2.TEMPLATE_STATE_ACTIVE
    assert list(created.variants) == COFFEE_VARIANTS
    assert created.channel == common_pb2.CHANNEL_UNSPECIFIED
    assert list(created.channels) == [
        common_pb2.CHANNEL_EMAIL,
        common_pb2.CHANNEL_SMS,
        common_pb2.CHANNEL_PUSH,
        common_pb2.CHANNEL_APP,
        common_pb2.CHANNEL_STORE,
        common_pb2.CHANNEL_WEBHOOK,
    ]
    assert (created.subject, created.body_text, created.body_html) == ("", "", "")
    assert created.HasField("create_time") and created.update_time == created.create_time
    assert not created.HasField("archive_time")
    fetched = await gateway.stub.GetTemplate(gateway_pb2.GetTemplateRequest(template_id=created.id))
    assert fetched.template == created


async def test_a_template_written_for_one_channel_is_its_variant_and_reads_as_before(
    gateway: Gateway,
) -> None:
    template_id = await create_cart_template(gateway)

    fetched = (
        await gateway.stub.GetTemplate(gateway_pb2.GetTemplateRequest(template_id=template_id))
    ).template

    assert fetched.channel == common_pb2.CHANNEL_EMAIL
    assert list(fetched.channels) == [common_pb2.CHANNEL_EMAIL]
    assert (fetched.subject, fetched.body_text, fetched.body_html) == (
        CART_TEMPLATE.subject,
        CART_TEMPLATE.body_text,
        CART_TEMPLATE.body_html,
    )
    assert list(fetched.variants) == [
        _email(CART_TEMPLATE.subject, text=CART_TEMPLATE.body_text, html=CART_TEMPLATE.body_html)
    ]
    assert fetched.version == 1


@pytest.mark.parametrize(
    ("channel", "variant"),
    [
        (common_pb2.CHANNEL_SMS, _sms("Hi {{ person_id }}")),
        (common_pb2.CHANNEL_STORE, _terminal("Hi {{ person_id }}")),
        (common_pb2.CHANNEL_PUSH, _push("Title", "Hi {{ person_id }}")),
        (common_pb2.CHANNEL_APP, _push("Title", "Hi {{ person_id }}")),
    ],
    ids=["sms", "store", "push", "app"],
)
async def test_each_channel_written_the_old_way_becomes_its_channels_variant(
    gateway: Gateway, channel: int, variant: gateway_pb2.TemplateVariant
) -> None:
    template = gateway_pb2.Template(
        id=unique("old-"),
        channel=channel,
        subject="Title",
        body_text="Hi {{ person_id }}",  # type: ignore[arg-type]
    )
    created = (
        await gateway.stub.CreateTemplate(gateway_pb2.CreateTemplateRequest(template=template))
    ).template
    assert list(created.variants) == [variant]
    assert created.channel == channel
    assert created.body_text == "Hi {{ person_id }}"


# --- update and versions ------------------------------------------------------------------------------------


async def test_an_update_stores_the_next_version_and_the_earlier_stays_readable(gateway: Gateway) -> None:
    created = await _create(gateway, [_sms("v1 {{ variables.code }}")])
    new_variants = [_sms("v2 {{ variables.code }}"), _push("Coffee")]

    updated = (
        await gateway.stub.UpdateTemplate(
            gateway_pb2.UpdateTemplateRequest(
                template=gateway_pb2.Template(id=created.id, variants=new_variants),
                update_mask=field_mask_pb2.FieldMask(paths=["variants"]),
            )
        )
    ).template

    assert updated.version == 2
    assert list(updated.variants) == new_variants
    assert updated.create_time == created.create_time
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()
    latest = await gateway.stub.GetTemplate(gateway_pb2.GetTemplateRequest(template_id=created.id))
    assert latest.template == updated
    first = await gateway.stub.GetTemplate(gateway_pb2.GetTemplateRequest(template_id=created.id, version=1))
    assert first.template == created
    missing = await _refused(
        gateway.stub.GetTemplate, gateway_pb2.GetTemplateRequest(template_id=created.id, version=3)
    )
    assert missing.code == grpc.StatusCode.NOT_FOUND
    assert missing.error_info is not None and missing.error_info.reason == "TEMPLATE_VERSION_NOT_FOUND"


async def test_an_update_that_changes_nothing_stores_no_version(gateway: Gateway) -> None:
    created = await _create(gateway, [_sms("same")])
    request = gateway_pb2.UpdateTemplateRequest(
        template=gateway_pb2.Template(id=created.id, variants=[_sms("same")])
    )

    answer = await gateway.stub.UpdateTemplate(request)

    assert answer.template == created


async def test_an_update_is_done_once_per_request_id(gateway: Gateway) -> None:
    created = await _create(gateway, [_sms("v1")])

    def update(text: str) -> gateway_pb2.UpdateTemplateRequest:
        return gateway_pb2.UpdateTemplateRequest(
            template=gateway_pb2.Template(id=created.id, variants=[_sms(text)]), request_id="upd-1"
        )

    first = await gateway.stub.UpdateTemplate(update("v2"))
    again = await gateway.stub.UpdateTemplate(update("v2"))
    reused = await _refused(gateway.stub.UpdateTemplate, update("v3"))

    assert first.template.version == 2
    assert again == first
    assert reused.code == grpc.StatusCode.ALREADY_EXISTS
    assert reused.error_info is not None and reused.error_info.reason == "IDEMPOTENCY_KEY_REUSED"
    latest = await gateway.stub.GetTemplate(gateway_pb2.GetTemplateRequest(template_id=created.id))
    assert latest.template.version == 2


async def test_an_update_from_a_version_that_moved_on_is_aborted(gateway: Gateway) -> None:
    created = await _create(gateway, [_sms("v1")])

    def update(text: str, expected: int) -> gateway_pb2.UpdateTemplateRequest:
        return gateway_pb2.UpdateTemplateRequest(
            template=gateway_pb2.Template(id=created.id, variants=[_sms(text)]), expected_version=expected
        )

    second = await gateway.stub.UpdateTemplate(update("v2", 1))
    stale = await _refused(gateway.stub.UpdateTemplate, update("v2 again", 1))

    assert second.template.version == 2
    assert stale.code == grpc.StatusCode.ABORTED
    assert stale.error_info is not None and stale.error_info.reason == "TEMPLATE_VERSION_CHANGED"
    assert dict(stale.error_info.metadata) == {"template_id": created.id, "version": "2"}
    latest = await gateway.stub.GetTemplate(gateway_pb2.GetTemplateRequest(template_id=created.id))
    assert latest.template == second.template


async def test_an_update_checks_only_the_fields_its_mask_names(gateway: Gateway) -> None:
    template_id = await create_cart_template(gateway)

    updated = await gateway.stub.UpdateTemplate(
        gateway_pb2.UpdateTemplateRequest(
            # body_text left empty (it is required), but the mask names only the subject.
            template=gateway_pb2.Template(id=template_id, subject="Still here?", body_html="x" * 300_000),
            update_mask=field_mask_pb2.FieldMask(paths=["subject"]),
        )
    )

    assert updated.template.subject == "Still here?"
    assert updated.template.body_text == CART_TEMPLATE.body_text


async def test_concurrent_updates_get_consecutive_versions(gateway: Gateway) -> None:
    created = await _create(gateway, [_sms("v1")])
    answers = await asyncio.gather(
        *(
            gateway.stub.UpdateTemplate(
                gateway_pb2.UpdateTemplateRequest(
                    template=gateway_pb2.Template(id=created.id, variants=[_sms(f"text {n}")])
                )
            )
            for n in range(5)
        )
    )
    assert sorted(a.template.version for a in answers) == [2, 3, 4, 5, 6]


async def test_the_old_fields_of_a_one_channel_template_are_updated_by_the_mask(gateway: Gateway) -> None:
    template_id = await create_cart_template(gateway)

    updated = (
        await gateway.stub.UpdateTemplate(
            gateway_pb2.UpdateTemplateRequest(
                template=gateway_pb2.Template(id=template_id, subject="New subject", body_text="ignored"),
                update_mask=field_mask_pb2.FieldMask(paths=["subject"]),
            )
        )
    ).template

    assert updated.version == 2
    assert updated.subject == "New subject"
    assert updated.body_text == CART_TEMPLATE.body_text  # not in the mask
    assert updated.body_html == CART_TEMPLATE.body_html
    assert updated.channel == common_pb2.CHANNEL_EMAIL


async def test_a_one_channel_template_can_get_locales_and_channels_as_variants(gateway: Gateway) -> None:
    template_id = await create_cart_template(gateway)
    variants = [_email("Hi", text="Hello"), _email("Hallo", text="Hallo", locale="de"), _sms("Hi")]

    updated = (
        await gateway.stub.UpdateTemplate(
            gateway_pb2.UpdateTemplateRequest(
                template=gateway_pb2.Template(id=template_id, variants=variants)
            )
        )
    ).template

    assert list(updated.variants) == variants
    assert (updated.subject, updated.body_text, updated.body_html) == ("Hi", "Hello", "")


# --- sends: the version recorded, the locale chosen, archived templates ---------------------------------------


async def test_a_message_records_the_version_it_was_rendered_with(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink
) -> None:
    email = f"{unique('ver-')}@example.com"
    person_id = await create_person(neighbours, email, consent=True)
    created = await _create(gateway, [_email("Version one", text="one")])
    first = (await gateway.stub.SendMessage(send_request(person_id, created.id))).message
    await gateway.stub.UpdateTemplate(
        gateway_pb2.UpdateTemplateRequest(
            template=gateway_pb2.Template(id=created.id, variants=[_email("Version two", text="two")])
        )
    )

    second = (await gateway.stub.SendMessage(send_request(person_id, created.id))).message

    assert first.status == second.status == gateway_pb2.MESSAGE_STATUS_SENT, (first.error, second.error)
    assert (first.template_version, second.template_version) == (1, 2)
    subjects = {m["X-Omni-Message-Id"]: m["Subject"] for m in await asyncio.to_thread(smtp_sink.messages)}
    assert (subjects[first.id], subjects[second.id]) == ("Version one", "Version two")
    stored = await gateway.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=first.id))
    assert stored.message.template_version == 1


@pytest.mark.parametrize(
    ("locale", "subject"),
    [
        ("de-AT", "Servus Mia, dein 10. Kaffee geht aufs Haus"),
        ("de_CH", "Mia, dein 10. Kaffee ist gratis"),
        ("fr-FR", "Mia, your 10th coffee is free"),
        (None, "Mia, your 10th coffee is free"),
    ],
    ids=["exact", "language", "default", "no-locale"],
)
async def test_a_send_renders_the_variant_of_the_persons_locale_trait_falling_back(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink, locale: str | None, subject: str
) -> None:
    email = f"{unique('loc-')}@example.com"
    person_id = await create_person(neighbours, email, consent=True)
    await _set_traits(neighbours, person_id, first_name="Mia", **({"locale": locale} if locale else {}))
    created = await _create(gateway, COFFEE_VARIANTS)

    message = (await gateway.stub.SendMessage(send_request(person_id, created.id, code="C10"))).message

    assert message.status == gateway_pb2.MESSAGE_STATUS_SENT, message.error
    received = await smtp_sink.wait_for(lambda m: m["To"] == email)
    assert received["Subject"] == subject


async def test_an_email_written_with_html_alone_gets_its_text_from_the_html(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink
) -> None:
    email = f"{unique('html-')}@example.com"
    person_id = await create_person(neighbours, email, consent=True)
    created = await _create(
        gateway, [_email("Hi", html="<p>Hello &amp; <b>welcome</b></p><p>{{ variables.code }}</p>")]
    )

    await gateway.stub.SendMessage(send_request(person_id, created.id, code="<C10>"))

    received = await smtp_sink.wait_for(lambda m: m["To"] == email)
    text = received.get_body(preferencelist=("plain",))
    assert text is not None and text.get_content().replace("\r\n", "\n").strip() == "Hello & welcome\n\n<C10>"


async def test_an_mjml_email_is_sent_as_the_html_it_compiles_to(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink
) -> None:
    email = f"{unique('mjml-')}@example.com"
    person_id = await create_person(neighbours, email, consent=True)
    await _set_traits(neighbours, person_id, first_name="<Mia>")
    created = await _create(gateway, [_email("Coffee", mjml=MJML)])

    message = (await gateway.stub.SendMessage(send_request(person_id, created.id, code="C10"))).message

    assert message.status == gateway_pb2.MESSAGE_STATUS_SENT, message.error
    received = await smtp_sink.wait_for(lambda m: m["To"] == email)
    html = received.get_body(preferencelist=("html",))
    text = received.get_body(preferencelist=("plain",))
    assert html is not None and text is not None
    assert html.get_content().startswith("<!doctype html>")
    assert "<mj-" not in html.get_content()
    assert "free, &lt;Mia&gt;" in html.get_content()
    # A marketing email's links go through the gateway's click redirect, to the rendered URL.
    [href] = re.findall(r'<a href="([^"]+)"', html.get_content())
    assert email_links().verify(LinkKind.CLICK, href.rpartition("/c/")[2]).url == (
        "https://coffee.example/offers/C10"
    )
    assert "Your 10th coffee is free, <Mia>" in text.get_content()


async def test_a_send_on_a_channel_the_template_has_no_variant_for_is_invalid(
    gateway: Gateway, neighbours: Neighbours
) -> None:
    person_id = await create_person(neighbours, f"{unique('novar-')}@example.com", consent=True)
    created = await _create(gateway, [_sms("only sms")])

    details = await _refused(gateway.stub.SendMessage, send_request(person_id, created.id))

    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"template_id"}


async def test_an_archived_template_refuses_new_sends_and_its_messages_stay_readable(
    gateway: Gateway, neighbours: Neighbours
) -> None:
    person_id = await create_person(neighbours, f"{unique('arch-')}@example.com", consent=True)
    created = await _create(gateway, [_email("Hi", text="Hello")])
    sent = (await gateway.stub.SendMessage(send_request(person_id, created.id))).message

    archived = (
        await gateway.stub.ArchiveTemplate(gateway_pb2.ArchiveTemplateRequest(template_id=created.id))
    ).template
    again = (
        await gateway.stub.ArchiveTemplate(
            gateway_pb2.ArchiveTemplateRequest(template_id=created.id, request_id="archive-1")
        )
    ).template
    replayed = (
        await gateway.stub.ArchiveTemplate(
            gateway_pb2.ArchiveTemplateRequest(template_id=created.id, request_id="archive-1")
        )
    ).template
    assert replayed == again
    refused = await _refused(gateway.stub.SendMessage, send_request(person_id, created.id))
    update = await _refused(
        gateway.stub.UpdateTemplate,
        gateway_pb2.UpdateTemplateRequest(template=gateway_pb2.Template(id=created.id, variants=[_sms("x")])),
    )

    assert archived.state == gateway_pb2.TEMPLATE_STATE_ARCHIVED and archived.HasField("archive_time")
    assert again == archived
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.error_info is not None and refused.error_info.reason == "TEMPLATE_ARCHIVED"
    assert update.code == grpc.StatusCode.FAILED_PRECONDITION
    stored = await gateway.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=sent.id))
    assert stored.message == sent
    fetched = await gateway.stub.GetTemplate(gateway_pb2.GetTemplateRequest(template_id=created.id))
    assert fetched.template == archived
    preview = await gateway.stub.RenderPreview(gateway_pb2.RenderPreviewRequest(template_id=created.id))
    assert preview.variants[0].email.subject == "Hi"


async def test_a_journeys_send_with_an_archived_template_fails_and_is_announced(
    gateway: Gateway, neighbours: Neighbours, events: EventLog, js: JetStreamContext
) -> None:
    person_id = await create_person(neighbours, f"{unique('jarch-')}@example.com", consent=True)
    created = await _create(gateway, [_email("Hi", text="Hello")])
    await gateway.stub.ArchiveTemplate(gateway_pb2.ArchiveTemplateRequest(template_id=created.id))
    request_id = unique("journey-")

    await publish(js, neighbours.namespace, send_requested(person_id, created.id, request_id))

    failed = await events.wait_for_message("gateway.message_failed", lambda m: m.request_id == request_id)
    assert "archived" in failed.error


# --- list ---------------------------------------------------------------------------------------------------


async def test_templates_are_listed_by_id_in_pages_without_the_archived_unless_asked(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway()
    ids = [f"list-{n}" for n in range(5)]
    for template_id in reversed(ids):
        await _create(gateway, [_sms(template_id)], id=template_id)
    await gateway.stub.ArchiveTemplate(gateway_pb2.ArchiveTemplateRequest(template_id="list-2"))
    await gateway.stub.UpdateTemplate(
        gateway_pb2.UpdateTemplateRequest(template=gateway_pb2.Template(id="list-3", variants=[_sms("v2")]))
    )

    async def every(show_archived: bool) -> tuple[list[str], list[int]]:
        seen: list[gateway_pb2.Template] = []
        token = ""
        while True:
            page = await gateway.stub.ListTemplates(
                gateway_pb2.ListTemplatesRequest(page_size=2, page_token=token, show_archived=show_archived)
            )
            assert len(page.templates) <= 2
            seen.extend(page.templates)
            token = page.next_page_token
            if not token:
                return [t.id for t in seen], [t.version for t in seen]

    assert await every(False) == (["list-0", "list-1", "list-3", "list-4"], [1, 1, 2, 1])
    assert await every(True) == (ids, [1, 1, 1, 2, 1])
    first = await gateway.stub.ListTemplates(gateway_pb2.ListTemplatesRequest(page_size=2))
    other_list = await _refused(
        gateway.stub.ListTemplates,
        gateway_pb2.ListTemplatesRequest(page_token=first.next_page_token, show_archived=True),
    )
    assert other_list.code == grpc.StatusCode.INVALID_ARGUMENT and other_list.fields == {"page_token"}


# --- preview ------------------------------------------------------------------------------------------------


async def test_a_preview_renders_every_channel_for_sample_values(gateway: Gateway) -> None:
    created = await _create(gateway, COFFEE_VARIANTS)

    preview = await gateway.stub.RenderPreview(
        gateway_pb2.RenderPreviewRequest(
            template_id=created.id, variables=_struct(code="C10"), traits=_struct(first_name="Ada")
        )
    )

    assert preview.version == 1 and preview.locale == ""
    kinds = [v.WhichOneof("content") for v in preview.variants]
    assert kinds == ["email", "sms", "push", "terminal", "webhook"]
    email, sms, push, terminal, webhook = preview.variants
    assert email.email == gateway_pb2.RenderedEmail(
        subject="Ada, your 10th coffee is free",
        text="Show this at the till: C10",
        html="<p>Your <b>10th coffee</b> is free, Ada</p>",
    )
    assert sms.sms.text == "Your 10th coffee is free: C10"
    assert push.push == gateway_pb2.RenderedPush(
        title="Your 10th coffee is free",
        body="0 in your cart",
        deep_link="coffee://offers/C10",
        image_url="https://cdn.example.com/coffee.png",
    )
    assert terminal.terminal.text == "COUPON C10 - 1 free coffee"
    assert json_format.MessageToDict(webhook.webhook.payload) == {
        "event": "free_coffee",
        "code": "C10",
        "name": "Ada",
    }
    assert all(not v.error and v.locale == "" for v in preview.variants)


async def test_a_preview_for_a_person_uses_their_traits_cart_and_locale(
    gateway: Gateway, neighbours: Neighbours
) -> None:
    person_id = await create_person(neighbours, f"{unique('prev-')}@example.com")
    await _set_traits(neighbours, person_id, first_name="Mia", locale="de-AT")
    await add_to_cart(neighbours, person_id, product_id="sku-1", name="Beans", quantity=3, price_minor=999)
    created = await _create(gateway, COFFEE_VARIANTS)

    preview = await gateway.stub.RenderPreview(
        gateway_pb2.RenderPreviewRequest(
            template_id=created.id, person_id=person_id, variables=_struct(code="C10")
        )
    )

    assert preview.locale == "de-AT"
    by_kind = {v.WhichOneof("content"): v for v in preview.variants}
    assert by_kind["email"].locale == "de-AT"
    assert by_kind["email"].email.subject == "Servus Mia, dein 10. Kaffee geht aufs Haus"
    assert by_kind["sms"].locale == "de"  # no de-AT SMS: falls back to German
    assert by_kind["push"].locale == ""  # no German push: the default
    assert by_kind["push"].push.body == "3 in your cart"


@pytest.mark.parametrize(
    ("locale", "variant_locale", "subject"),
    [("DE-at", "de-AT", "Servus"), ("de-DE", "de", "Hallo"), ("de", "de", "Hallo"), ("fr", "", "Hi")],
)
async def test_a_preview_in_a_locale_falls_back_to_the_language_then_the_default(
    gateway: Gateway, locale: str, variant_locale: str, subject: str
) -> None:
    created = await _create(
        gateway,
        [
            _email("Hi", text="x"),
            _email("Hallo", text="x", locale="de"),
            _email("Servus", text="x", locale="de-AT"),
        ],
    )
    preview = await gateway.stub.RenderPreview(
        gateway_pb2.RenderPreviewRequest(
            template_id=created.id, channel=common_pb2.CHANNEL_EMAIL, locale=locale
        )
    )
    assert [(v.locale, v.email.subject) for v in preview.variants] == [(variant_locale, subject)]


async def test_a_preview_of_an_earlier_version_and_one_channel(gateway: Gateway) -> None:
    created = await _create(gateway, [_sms("one"), _push("one")])
    await gateway.stub.UpdateTemplate(
        gateway_pb2.UpdateTemplateRequest(
            template=gateway_pb2.Template(id=created.id, variants=[_sms("two"), _push("two")])
        )
    )
    preview = await gateway.stub.RenderPreview(
        gateway_pb2.RenderPreviewRequest(template_id=created.id, version=1, channel=common_pb2.CHANNEL_SMS)
    )
    assert preview.version == 1
    assert [v.sms.text for v in preview.variants] == ["one"]


async def test_a_variant_that_fails_to_render_is_answered_with_its_error(gateway: Gateway) -> None:
    created = await _create(
        gateway,
        [
            _sms("{% for i in (1..100000000) %}{{ i }}{% endfor %}"),
            _push("Hi", image_url="{{ variables.image }}"),
            _webhook("{% if variables.body %}{{ variables.body }}{% else %}{}{% endif %}"),
        ],
    )
    preview = await gateway.stub.RenderPreview(
        gateway_pb2.RenderPreviewRequest(
            template_id=created.id, variables=_struct(image="ftp://x/y.png", body="[1, 2]")
        )
    )
    sms, push, webhook = preview.variants
    assert sms.WhichOneof("content") == "sms" and sms.error and not sms.sms.text
    assert push.WhichOneof("content") == "push" and "http" in push.error
    assert webhook.WhichOneof("content") == "webhook" and "JSON object" in webhook.error


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variants", "fields", "bad_fields"),
    [
        ([_sms("x", locale="german!")], {}, {"template.variants[0].locale"}),
        ([_sms("x", locale="d")], {}, {"template.variants[0].locale"}),
        ([gateway_pb2.TemplateVariant(locale="de")], {}, {"template.variants[0].content"}),
        ([_sms("x"), _sms("y")], {}, {"template.variants[1].locale"}),
        ([_sms("x"), _sms("y", locale="DE"), _sms("z", locale="de")], {}, {"template.variants[2].locale"}),
        ([_sms("x", locale="de")], {}, {"template.variants"}),
        ([_sms("{{ oops")], {}, {"template.variants[0].sms.text"}),
        ([_sms("  ")], {}, {"template.variants[0].sms.text"}),
        ([_sms("x" * 4097)], {}, {"template.variants[0].sms.text"}),
        ([_push("{{ x | bogus }}")], {}, {"template.variants[0].push.title"}),
        ([_push("t", image_url="{% if %}")], {}, {"template.variants[0].push.image_url"}),
        ([_push("t", deep_link="x" * 2049)], {}, {"template.variants[0].push.deep_link"}),
        ([_email("", text="x")], {}, {"template.variants[0].email.subject"}),
        ([_email("s")], {}, {"template.variants[0].email.text"}),
        ([_email("s", html="<p>{% if x %}</p>")], {}, {"template.variants[0].email.html"}),
        ([_email("s\x00", text="x")], {}, {"template.variants[0].email.subject"}),
        ([_email("s", mjml="<mjml><mj-body>")], {}, {"template.variants[0].email.mjml"}),
        ([_email("s", html="<p>x</p>", mjml=MJML)], {}, {"template.variants[0].email.mjml"}),
        (
            [
                _email(
                    "s", mjml='<mjml><mj-body><mj-include path="/etc/passwd" type="html" /></mj-body></mjml>'
                )
            ],
            {},
            {"template.variants[0].email.mjml"},
        ),
        ([_terminal("")], {}, {"template.variants[0].terminal.text"}),
        ([_webhook('{"a": {{ x }}}')], {}, {"template.variants[0].webhook.body"}),
        ([_webhook("[1]")], {}, {"template.variants[0].webhook.body"}),
        ([_sms(str(n), locale=f"l{n:02d}") for n in range(101)], {}, {"template.variants"}),
        (
            [_email("s", text="x" * 200_000, html="y" * 200_000, locale=f"a{n}") for n in range(3)],
            {},
            {"template.variants"},
        ),
        ([_sms("x")], {"subject": "s"}, {"template.subject"}),
        ([_sms("x")], {"channel": common_pb2.CHANNEL_SMS}, {"template.channel"}),
        ([], {"channel": common_pb2.CHANNEL_WEB, "body_text": "x"}, {"template.channel"}),
        ([], {"channel": common_pb2.CHANNEL_PUSH, "body_text": "x"}, {"template.subject"}),
        ([], {"body_text": "x"}, {"template.channel"}),
    ],
    ids=[
        "bad-locale",
        "short-locale",
        "no-content",
        "two-defaults",
        "same-locale-other-case",
        "no-default",
        "bad-liquid",
        "blank-sms",
        "long-sms",
        "unknown-filter",
        "bad-image-liquid",
        "long-deep-link",
        "email-no-subject",
        "email-no-body",
        "bad-html",
        "control-character",
        "bad-mjml",
        "html-and-mjml",
        "mjml-include",
        "blank-terminal",
        "webhook-not-json",
        "webhook-not-object",
        "too-many-variants",
        "too-large",
        "old-fields-with-variants",
        "channel-with-variants",
        "web-channel",
        "push-without-title",
        "nothing-at-all",
    ],
)
async def test_a_template_with_bad_variants_is_invalid_and_nothing_is_stored(
    gateway: Gateway,
    variants: list[gateway_pb2.TemplateVariant],
    fields: dict[str, Any],
    bad_fields: set[str],
) -> None:
    template = gateway_pb2.Template(id=unique("bad-"), variants=variants, **fields)

    details = await _refused(
        gateway.stub.CreateTemplate, gateway_pb2.CreateTemplateRequest(template=template)
    )

    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == bad_fields
    gone = await _refused(gateway.stub.GetTemplate, gateway_pb2.GetTemplateRequest(template_id=template.id))
    assert gone.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("paths", "template", "bad_fields"),
    [
        (["channel"], {"variants": [_sms("x")]}, {"update_mask.paths[0]"}),
        (["variants", "nope"], {"variants": [_sms("x")]}, {"update_mask.paths[1]"}),
        (["variants"], {}, {"template.variants"}),
        (["variants"], {"variants": [_sms("{{ x")]}, {"template.variants[0].sms.text"}),
        (["subject"], {"subject": "x"}, {"update_mask"}),
        (["variants"], {"variants": [_sms("x")], "request_id": "x\x00"}, {"request_id"}),
    ],
    ids=[
        "fixed-field",
        "unknown-field",
        "no-variants",
        "bad-liquid",
        "old-field-of-variants",
        "bad-request-id",
    ],
)
async def test_a_bad_update_is_invalid_and_stores_no_version(
    gateway: Gateway, paths: list[str], template: dict[str, Any], bad_fields: set[str]
) -> None:
    created = await _create(gateway, [_sms("v1")])
    request_id = template.pop("request_id", "")
    request = gateway_pb2.UpdateTemplateRequest(
        template=gateway_pb2.Template(id=created.id, **template),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
        request_id=request_id,
    )

    details = await _refused(gateway.stub.UpdateTemplate, request)

    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == bad_fields
    latest = await gateway.stub.GetTemplate(gateway_pb2.GetTemplateRequest(template_id=created.id))
    assert latest.template == created


async def test_a_one_channel_template_updated_into_a_bad_one_is_invalid(gateway: Gateway) -> None:
    template_id = await create_cart_template(gateway)
    details = await _refused(
        gateway.stub.UpdateTemplate,
        gateway_pb2.UpdateTemplateRequest(
            template=gateway_pb2.Template(id=template_id, subject="", body_text="{{ broken"),
            update_mask=field_mask_pb2.FieldMask(paths=["subject", "body_text"]),
        ),
    )
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"template.subject"}  # required first; the Liquid is checked once it is there


async def test_unknown_templates_are_not_found_everywhere(gateway: Gateway) -> None:
    for call, request in [
        (
            gateway.stub.UpdateTemplate,
            gateway_pb2.UpdateTemplateRequest(template=gateway_pb2.Template(id="nope", variants=[_sms("x")])),
        ),
        (gateway.stub.ArchiveTemplate, gateway_pb2.ArchiveTemplateRequest(template_id="nope")),
        (gateway.stub.RenderPreview, gateway_pb2.RenderPreviewRequest(template_id="nope")),
    ]:
        details = await _refused(call, request)
        assert details.code == grpc.StatusCode.NOT_FOUND
        assert details.error_info is not None and details.error_info.reason == "TEMPLATE_NOT_FOUND"


@pytest.mark.parametrize(
    ("fields", "bad_fields"),
    [
        ({"page_size": -1}, {"page_size"}),
        ({"page_token": "garbage"}, {"page_token"}),
    ],
)
async def test_a_bad_list_request_is_invalid(
    gateway: Gateway, fields: dict[str, Any], bad_fields: set[str]
) -> None:
    details = await _refused(gateway.stub.ListTemplates, gateway_pb2.ListTemplatesRequest(**fields))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == bad_fields


@pytest.mark.parametrize(
    ("fields", "bad_fields"),
    [
        ({"template_id": ""}, {"template_id"}),
        ({"version": -1}, {"version"}),
        ({"channel": common_pb2.CHANNEL_WEB}, {"channel"}),
        ({"channel": common_pb2.CHANNEL_PUSH}, {"channel"}),
        ({"locale": "not a locale"}, {"locale"}),
        ({"person_id": "not-a-uuid"}, {"person_id"}),
        ({"person_id": "0193a0b4-5f6e-7c3d-9a1b-2c3d4e5f6a7b", "traits": _struct(a=1)}, {"traits"}),
        ({"variables": _struct(big="x" * 17_000)}, {"variables"}),
        ({"traits": _struct(bad="a\x00b")}, {"traits.bad"}),
    ],
    ids=[
        "no-id",
        "negative-version",
        "web",
        "no-variant",
        "bad-locale",
        "bad-person",
        "person-and-traits",
        "big-variables",
        "control-character",
    ],
)
async def test_a_bad_preview_request_is_invalid(
    gateway: Gateway, fields: dict[str, Any], bad_fields: set[str]
) -> None:
    created = await _create(gateway, [_sms("Hi {{ traits.bad }}")])
    request = gateway_pb2.RenderPreviewRequest(template_id=created.id)
    for name, value in fields.items():
        if isinstance(value, struct_pb2.Struct):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)

    details = await _refused(gateway.stub.RenderPreview, request)

    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == bad_fields


@pytest.mark.parametrize(
    ("method", "request_", "bad_fields"),
    [
        ("GetTemplate", gateway_pb2.GetTemplateRequest(template_id="ok", version=-1), {"version"}),
        ("GetTemplate", gateway_pb2.GetTemplateRequest(template_id="Not OK"), {"template_id"}),
        ("ArchiveTemplate", gateway_pb2.ArchiveTemplateRequest(template_id=""), {"template_id"}),
        ("ArchiveTemplate", gateway_pb2.ArchiveTemplateRequest(template_id="x" * 65), {"template_id"}),
        ("UpdateTemplate", gateway_pb2.UpdateTemplateRequest(), {"template"}),
        (
            "UpdateTemplate",
            gateway_pb2.UpdateTemplateRequest(
                template=gateway_pb2.Template(id="Bad Id", variants=[_sms("x")])
            ),
            {"template.id"},
        ),
    ],
    ids=[
        "negative-version",
        "bad-id",
        "archive-no-id",
        "archive-long-id",
        "update-no-template",
        "update-bad-id",
    ],
)
async def test_bad_ids_and_versions_are_invalid(
    gateway: Gateway, method: str, request_: Any, bad_fields: set[str]
) -> None:
    details = await _refused(getattr(gateway.stub, method), request_)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == bad_fields
