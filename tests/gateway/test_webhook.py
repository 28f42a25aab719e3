"""The webhook provider against real endpoints on this machine (tests/gateway/webhook_receiver.py), each
delivery verified by the Standard Webhooks library's own verifier: signatures, secret rotation, what each
answer of an endpoint means, the per-endpoint circuit breaker and rate, pooled connections, and destination
settings refused at start."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import MappingProxyType
from typing import Any

import pydantic
import pytest
from pydantic_settings import SettingsConfigDict

from omni_gateway.domain import Channel, Purpose
from omni_gateway.providers.base import (
    ChannelProvider,
    FailureKind,
    Outgoing,
    PersonContacts,
    ProviderFailure,
    Receipt,
    WebhookContent,
)
from omni_gateway.providers.registry import ProviderSpec, build_registry
from omni_gateway.providers.webhook import WebhookProvider, build_webhook_provider, create
from omni_gateway.providers.webhook_settings import DEFAULT_RETRY_SCHEDULE_S, WebhookSettings
from omni_kit.embedded import free_port
from omni_kit.settings import ServiceSettings

from .webhook_receiver import Answer, Receiver, new_secret, receiving

pytestmark = pytest.mark.integration


async def _no_receipts(receipt: Receipt) -> None:
    raise AssertionError(f"a webhook reports no later outcome, got {receipt}")


def _destination(name: str, url: str, *secrets: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "secrets": list(secrets), **more}


@pytest.fixture
async def started() -> AsyncIterator[Callable[..., Any]]:
    """Start providers from settings (as the gateway would); all are closed after the test."""
    providers: list[WebhookProvider] = []

    async def start(*destinations: dict[str, Any], **settings: Any) -> WebhookProvider:
        provider = build_webhook_provider(
            WebhookSettings.model_validate({"destinations": list(destinations), **settings})
        )
        assert provider is not None
        await provider.start(_no_receipts)
        providers.append(provider)
        return provider

    yield start
    for provider in providers:
        await provider.close()


def _outgoing(destination: str, payload: dict[str, Any] | None = None, **more: Any) -> Outgoing:
    return Outgoing(
        message_id=more.pop("message_id", None) or uuid.uuid4(),
        person_id=uuid.uuid4(),
        channel=Channel.WEBHOOK,
        purpose=Purpose.TRANSACTIONAL,
        address=destination,
        content=WebhookContent(payload if payload is not None else {"type": "order.paid", "n": 1}),
        **more,
    )


async def test_every_delivery_is_signed_so_the_receivers_own_verifier_accepts_it(
    started: Callable[..., Any],
) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as crm:
        provider = await started(_destination("crm", crm.url, secret))
        assert isinstance(provider, ChannelProvider)
        payload = {"type": "order.paid", "data": {"order": "A-1", "total_minor": 1999, "name": "Zoë ☕"}}
        message_id = uuid.uuid4()

        accepted = await provider.send(_outgoing("crm", payload, message_id=message_id))
        again = await provider.send(_outgoing("crm", payload, message_id=message_id, attempt=2))

    assert accepted.provider == "webhook"
    assert accepted.provider_message_id == str(message_id)
    assert accepted.details["destination"] == "crm"
    assert accepted.details["status"] == 200
    assert again.provider_message_id == str(message_id)
    assert [d.verified for d in crm.deliveries] == [True, True]
    first, second = crm.deliveries
    assert first.payload == payload
    assert first.headers["Content-Type"] == "application/json"
    # The same id on every attempt of a message, so the receiver keeps one; each attempt signed anew.
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == str(message_id)
    assert abs(int(first.headers["webhook-timestamp"]) - time.time()) < 60
    assert first.headers["webhook-signature"].startswith("v1,")
    assert " " not in first.headers["webhook-signature"]  # one secret, one signature


async def test_during_a_rotation_a_receiver_knowing_either_secret_verifies_every_message(
    started: Callable[..., Any],
) -> None:
    old, new = new_secret(), new_secret(48)
    async with (
        receiving(Receiver(old)) as not_yet_rotated,
        receiving(Receiver(new)) as rotated,
    ):
        both = await started(
            _destination("old-side", not_yet_rotated.url, old, new),
            _destination("new-side", rotated.url, new, old),
        )
        for _ in range(3):
            await both.send(_outgoing("old-side"))
            await both.send(_outgoing("new-side"))
        assert len(not_yet_rotated.verified) == len(rotated.verified) == 3
        assert all(len(d.headers["webhook-signature"].split(" ")) == 2 for d in rotated.deliveries)

        # The rotation over (only the new secret left), a receiver still on the old one refuses: final.
        after = await started(_destination("old-side", not_yet_rotated.url, new))
        with pytest.raises(ProviderFailure) as refused:
            await after.send(_outgoing("old-side"))
    assert refused.value.kind is FailureKind.PERMANENT
    assert "401" in refused.value.detail and "signature does not verify" in refused.value.detail
    assert len(not_yet_rotated.verified) == 3


@pytest.mark.parametrize(
    ("answer", "kind", "retry_after_s"),
    [
        (Answer(410, "endpoint disabled"), FailureKind.ADDRESS_INVALID, None),
        (Answer(429, "slow down", {"Retry-After": "7"}), FailureKind.TRANSIENT, 7.0),
        (Answer(408, "request timeout"), FailureKind.TRANSIENT, None),
        (Answer(500, "boom"), FailureKind.TRANSIENT, None),
        (Answer(503, "maintenance", {"Retry-After": "in-a-while"}), FailureKind.TRANSIENT, None),
        (Answer(503, "maintenance", {"Retry-After": "31536000"}), FailureKind.TRANSIENT, 86400.0),
        (Answer(502, "bad gateway", {"Retry-After": "1.5"}), FailureKind.TRANSIENT, 1.5),
        (Answer(400, "no such order"), FailureKind.PERMANENT, None),
        (Answer(404, "not here"), FailureKind.PERMANENT, None),
        (Answer(301, "", {"Location": "http://127.0.0.1:1/elsewhere"}), FailureKind.PERMANENT, None),
    ],
    ids=[
        "410-gone",
        "429-retry-after",
        "408",
        "500",
        "503-bad-retry-after",
        "503-retry-after-a-year-capped-at-a-day",
        "502-retry-after-fraction",
        "400",
        "404",
        "301-not-followed",
    ],
)
async def test_what_an_endpoints_answer_means(
    started: Callable[..., Any], answer: Answer, kind: FailureKind, retry_after_s: float | None
) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as crm:
        crm.answer = answer
        provider = await started(_destination("crm", crm.url, secret))
        with pytest.raises(ProviderFailure) as failed:
            await provider.send(_outgoing("crm"))
    failure = failed.value
    assert failure.kind is kind
    assert failure.provider == "webhook"
    assert failure.retry_after_s == retry_after_s
    assert f"destination crm answered {answer.status}" in failure.detail
    assert answer.body in failure.detail
    assert len(crm.deliveries) == 1  # a redirect is not followed


async def test_retry_after_as_an_http_date_and_an_answer_with_control_characters(
    started: Callable[..., Any],
) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as crm:
        provider = await started(_destination("crm", crm.url, secret))
        later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
        crm.answer = Answer(503, "down\x00for\x1bnow " + "x" * 5000, {"Retry-After": later})
        with pytest.raises(ProviderFailure) as failed:
            await provider.send(_outgoing("crm"))
    assert failed.value.retry_after_s is not None and 100 < failed.value.retry_after_s <= 120
    assert "\x00" not in failed.value.detail and "\x1b" not in failed.value.detail
    assert "down\ufffdfor\ufffdnow" in failed.value.detail
    assert len(failed.value.detail) < 300  # the answer is quoted, not stored whole


async def test_a_timeout_and_a_refused_connection_may_pass_later(started: Callable[..., Any]) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as slow:
        slow.answer = Answer(200, delay_s=5)
        provider = await started(
            _destination("slow", slow.url, secret, timeout_s=0.3),
            _destination("nobody", f"http://127.0.0.1:{free_port()}/hooks", secret),
        )
        begun = time.monotonic()
        with pytest.raises(ProviderFailure) as timed_out:
            await provider.send(_outgoing("slow"))
        assert time.monotonic() - begun < 2
        with pytest.raises(ProviderFailure) as refused:
            await provider.send(_outgoing("nobody"))
    assert timed_out.value.kind is FailureKind.TRANSIENT
    assert "did not answer within 0.3 s" in timed_out.value.detail
    assert refused.value.kind is FailureKind.TRANSIENT
    assert "cannot be reached" in refused.value.detail


async def test_a_dead_endpoint_opens_its_circuit_while_a_healthy_one_keeps_taking_deliveries_at_full_speed(
    started: Callable[..., Any],
) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as dead, receiving(Receiver(secret)) as healthy:
        dead.answer = Answer(200, delay_s=30)  # accepts the connection, never answers in time
        provider = await started(
            _destination("dead", dead.url, secret, timeout_s=1.0),
            _destination("healthy", healthy.url, secret),
            breaker_failures=3,
            breaker_reset_s=60,
        )

        async def healthy_sends(count: int) -> list[float]:
            took = []
            for _ in range(count):
                begun = time.monotonic()
                await provider.send(_outgoing("healthy"))
                took.append(time.monotonic() - begun)
            return took

        solo = await healthy_sends(50)

        # The dead endpoint hangs three sends for their whole timeout; the healthy one is not held up.
        dead_sends = [asyncio.create_task(provider.send(_outgoing("dead"))) for _ in range(3)]
        beside_dead = await healthy_sends(50)
        failures = await asyncio.gather(*dead_sends, return_exceptions=True)
        assert all(isinstance(f, ProviderFailure) and f.transient for f in failures)
        assert await provider.circuit_state("dead") == "opened"

        # Open: the dead endpoint is not called, its sends fail at once, with when to try again.
        begun = time.monotonic()
        for _ in range(100):
            with pytest.raises(ProviderFailure) as refused:
                await provider.send(_outgoing("dead"))
            assert refused.value.kind is FailureKind.TRANSIENT
            assert refused.value.retry_after_s is not None and 55 < refused.value.retry_after_s <= 60
        assert time.monotonic() - begun < 1.0
        assert "is not called for now" in refused.value.detail
        beside_open = await healthy_sends(50)

    assert len(dead.deliveries) == 3
    assert len(healthy.verified) == 150
    median = sorted(solo)[len(solo) // 2]
    # Full speed: the healthy endpoint's sends beside the dead one take what they take alone, far from the
    # dead one's 1 s timeout (a loaded machine gets slack, not the timeout).
    for batch in (beside_dead, beside_open):
        assert sorted(batch)[len(batch) // 2] < max(5 * median, 0.25)
        assert max(batch) < 1.0
    assert await provider.circuit_state("healthy") == "closed"


async def test_an_open_circuit_tries_once_when_its_time_is_up_and_closes_when_the_endpoint_answers(
    started: Callable[..., Any],
) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as crm:
        crm.answer = Answer(503, "restarting")
        provider = await started(
            _destination("crm", crm.url, secret), breaker_failures=2, breaker_reset_s=0.3
        )
        for _ in range(2):
            with pytest.raises(ProviderFailure):
                await provider.send(_outgoing("crm"))
        with pytest.raises(ProviderFailure, match="not called for now"):
            await provider.send(_outgoing("crm"))
        assert len(crm.deliveries) == 2

        crm.answer = Answer(200)
        await asyncio.sleep(0.35)
        await provider.send(_outgoing("crm"))  # the trial
        await provider.send(_outgoing("crm"))
    assert len(crm.deliveries) == 4
    assert await provider.circuit_state("crm") == "closed"


async def test_a_permanent_refusal_shows_the_endpoint_alive_and_opens_no_circuit(
    started: Callable[..., Any],
) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as crm:
        crm.answer = Answer(422, "unknown event type")
        provider = await started(_destination("crm", crm.url, secret), breaker_failures=2)
        for _ in range(5):
            with pytest.raises(ProviderFailure) as refused:
                await provider.send(_outgoing("crm"))
            assert refused.value.kind is FailureKind.PERMANENT
    assert len(crm.deliveries) == 5


async def test_connections_are_pooled_per_destination(started: Callable[..., Any]) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as crm:
        provider = await started(_destination("crm", crm.url, secret, max_connections=4))
        for _ in range(20):
            await provider.send(_outgoing("crm"))
        await asyncio.gather(*(provider.send(_outgoing("crm")) for _ in range(40)))
    assert len(crm.verified) == 60
    assert len({d.peer_port for d in crm.deliveries}) <= 4


async def test_a_destination_over_its_rate_fails_over_with_when_to_try_again(
    started: Callable[..., Any],
) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as crm:
        # One message every two seconds; a send does not wait for it.
        provider = await started(_destination("crm", crm.url, secret, rate_per_s=0.5), rate_wait_s=0)
        await provider.send(_outgoing("crm"))
        with pytest.raises(ProviderFailure) as throttled:
            await provider.send(_outgoing("crm"))
    assert throttled.value.kind is FailureKind.TRANSIENT
    assert throttled.value.retry_after_s == pytest.approx(2.0)
    assert "at its rate of 0.5/s" in throttled.value.detail
    assert len(crm.deliveries) == 1


async def test_sends_wait_for_their_destinations_rate_and_the_others_do_not(
    started: Callable[..., Any],
) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as crm, receiving(Receiver(secret)) as erp:
        provider = await started(
            _destination("crm", crm.url, secret, rate_per_s=10),
            _destination("erp", erp.url, secret),
            rate_wait_s=5,
        )
        begun = time.monotonic()
        await asyncio.gather(*(provider.send(_outgoing("crm")) for _ in range(15)))
        crm_took = time.monotonic() - begun
        begun = time.monotonic()
        await asyncio.gather(*(provider.send(_outgoing("erp")) for _ in range(15)))
        erp_took = time.monotonic() - begun
    assert len(crm.verified) == len(erp.verified) == 15
    assert crm_took >= 0.45  # ten at once, then five more at 10/s
    assert erp_took < crm_took


async def test_a_payload_of_any_mapping_is_sent_as_json(started: Callable[..., Any]) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as crm:
        provider = await started(_destination("crm", crm.url, secret))
        payload = MappingProxyType({"type": "offer", "data": MappingProxyType({"skus": ("a", "b")})})
        await provider.send(_outgoing("crm", payload))  # type: ignore[arg-type]
    assert crm.verified[0].payload == {"type": "offer", "data": {"skus": ["a", "b"]}}


async def test_what_cannot_be_sent_is_refused_before_any_call(started: Callable[..., Any]) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as crm:
        provider = await started(_destination("crm", crm.url, secret, max_payload_bytes=1024))
        with pytest.raises(ProviderFailure) as unknown:
            await provider.send(_outgoing("erp"))
        with pytest.raises(ProviderFailure) as too_big:
            await provider.send(_outgoing("crm", {"blob": "x" * 2000}))
        with pytest.raises(ProviderFailure) as not_json:
            await provider.send(_outgoing("crm", {"when": object()}))
    assert unknown.value.kind is FailureKind.ADDRESS_INVALID
    assert "no webhook destination named 'erp'" in unknown.value.detail
    assert (
        too_big.value.kind is FailureKind.PERMANENT and "over destination crm's 1024" in too_big.value.detail
    )
    assert not_json.value.kind is FailureKind.PERMANENT
    assert crm.deliveries == []


async def test_the_address_and_the_retry_schedule() -> None:
    secret = new_secret()
    one = {"destinations": [_destination("crm", "https://crm.example.com/hooks", secret)]}
    two = {
        "destinations": [
            _destination("crm", "https://crm.example.com/hooks", secret),
            _destination("erp", "https://erp.example.com/omni", secret),
        ]
    }
    person = PersonContacts(uuid.uuid4(), {"email": ["ada@example.com"]})
    assert WebhookProvider(WebhookSettings.model_validate(one)).address_of(person) == "crm"
    assert WebhookProvider(WebhookSettings.model_validate(two)).address_of(person) is None
    chosen = WebhookProvider(WebhookSettings.model_validate({**two, "default_destination": "erp"}))
    assert chosen.address_of(person) == "erp"

    assert chosen.retry_schedule == DEFAULT_RETRY_SCHEDULE_S == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert chosen.max_attempts == 8
    assert [chosen.retry_delay_s(n) for n in range(1, 9)] == [*DEFAULT_RETRY_SCHEDULE_S, None]
    assert sum(DEFAULT_RETRY_SCHEDULE_S) == 27 * 3600 + 35 * 60 + 5
    assert build_webhook_provider(WebhookSettings()) is None


async def test_a_registry_creates_it_by_kind_from_its_options() -> None:
    secret = new_secret()
    options = {"destinations": [_destination("crm", "https://crm.example.com/hooks", secret)]}
    provider = create("retailer-hooks", options, {"sender": "ignored"})
    assert isinstance(provider, ChannelProvider)
    assert provider.name == "retailer-hooks" and provider.channel is Channel.WEBHOOK
    assert provider.own_circuit_breakers
    assert provider.breaker_name("crm") == "retailer-hooks:crm"
    with pytest.raises(ValueError, match="has no destinations"):
        create("retailer-hooks", {}, {})
    with pytest.raises(ValueError, match="Extra inputs are not permitted") as refused:
        create("retailer-hooks", {**options, "kind": "webhook"}, {})
    assert secret not in str(refused.value)


@pytest.mark.parametrize(
    ("destinations", "more", "says"),
    [
        ([{"secrets": ["whsec_c2hvcnQ"]}], {}, "a secret's key is 24 to 64 bytes (this one is 5)"),
        ([{"secrets": ["c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"]}], {}, "a secret starts with 'whsec_'"),
        ([{"secrets": ["whsec_!!not base64!!"]}], {}, "followed by base64"),
        ([{"secrets": ["whsec_" + "A" * 100]}], {}, "24 to 64 bytes (this one is 75)"),
        ([{"secrets": []}], {}, "at least 1 item"),
        ([{"secrets": [new_secret(), new_secret(), new_secret()]}], {}, "at most 2 items"),
        ([{"url": "http://crm.example.com/hooks"}], {}, "plain http to crm.example.com"),
        ([{"url": "ftp://crm.example.com/hooks"}], {}, "URL scheme should be 'http' or 'https'"),
        ([{"url": "https://user:pw@crm.example.com/hooks"}], {}, "no credentials in the URL"),
        ([{"name": "CRM system"}], {}, "String should match pattern"),
        ([{}, {}], {}, "the name 'crm' is used twice"),
        ([{"timeout_s": 0}], {}, "greater than 0"),
        ([{"retries": 3}], {}, "Extra inputs are not permitted"),
        ([{}], {"default_destination": "erp"}, "'erp' is none of the destinations ('crm')"),
        ([{}], {"retry_schedule_s": [5, -1]}, "every wait is more than 0"),
    ],
)
def test_bad_destination_settings_are_refused_at_start_with_a_clear_error(
    destinations: list[dict[str, Any]], more: dict[str, Any], says: str
) -> None:
    secret = new_secret()
    base = {"name": "crm", "url": "https://crm.example.com/hooks", "secrets": [secret]}
    raw = {"destinations": [{**base, **d} for d in destinations], **more}
    with pytest.raises(pydantic.ValidationError) as refused:
        WebhookSettings.model_validate(raw)
    message = str(refused.value)
    assert says in message
    assert secret not in message  # an error is logged: it never shows a secret
    assert secret.removeprefix("whsec_") not in message


def test_good_settings_from_json_as_the_environment_gives_them() -> None:
    old, new = new_secret(), new_secret()
    settings = WebhookSettings.model_validate_json(
        '{"destinations": ['
        f'{{"name": "crm", "url": "https://crm.example.com/hooks", "secrets": ["{old}", "{new}"], '
        '"rate_per_s": 50, "timeout_s": 5},'
        f'{{"name": "pos-bridge", "url": "http://pos-bridge.shop.svc:8080/omni", "secrets": ["{new}"], '
        '"allow_http": true},'
        f'{{"name": "local", "url": "http://[::1]:9000/hooks", "secrets": ["{new}"]}}'
        '], "default_destination": "crm"}'
    )
    assert [d.name for d in settings.destinations] == ["crm", "pos-bridge", "local"]
    assert old not in repr(settings) and old not in str(settings.model_dump())


class _GatewaySettings(ServiceSettings):
    """The gateway's settings as the delivery flow's registry will hold the provider's (a `webhook` field)."""

    model_config = SettingsConfigDict(env_prefix="OMNI_GATEWAY_", extra="ignore", frozen=True)

    webhook: WebhookSettings = WebhookSettings()


def test_the_environment_gives_the_settings_as_json_and_a_bad_one_stops_the_start_without_its_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMNI_GATEWAY_DATABASE_URL", "postgresql+asyncpg://u@h/db")
    monkeypatch.setenv("OMNI_GATEWAY_NATS_URL", "nats://h:4222")
    secret = new_secret()
    destination = {"name": "crm", "url": "https://crm.example.com/hooks", "secrets": [secret]}
    monkeypatch.setenv("OMNI_GATEWAY_WEBHOOK", json.dumps({"destinations": [destination]}))
    settings = _GatewaySettings()
    assert settings.webhook.fallback_destination == "crm"

    short = "whsec_c2VjcmV0c2VjcmV0"
    monkeypatch.setenv(
        "OMNI_GATEWAY_WEBHOOK", json.dumps({"destinations": [{**destination, "secrets": [short]}]})
    )
    with pytest.raises(pydantic.ValidationError) as refused:
        _GatewaySettings()
    assert "webhook.destinations.0.secrets" in str(refused.value)
    assert "24 to 64 bytes" in str(refused.value)
    assert "c2VjcmV0c2VjcmV0" not in str(refused.value)


async def test_in_the_registry_a_dead_destination_opens_its_own_circuit_not_the_providers() -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as dead, receiving(Receiver(secret)) as healthy:
        dead.answer = Answer(503, "down")
        spec = ProviderSpec.model_validate(
            {
                "name": "hooks",
                "kind": "webhook",
                "channel": "webhook",
                "breaker_failures": 1,  # a provider-wide breaker would open at the first failure
                "destinations": [
                    _destination("dead", dead.url, secret),
                    _destination("healthy", healthy.url, secret),
                ],
            }
        )
        registry = build_registry([spec])
        await registry.start(_no_receipts)
        try:
            [slot] = registry.chain(Channel.WEBHOOK)
            for _ in range(3):
                with pytest.raises(ProviderFailure) as failed:
                    await slot.send(_outgoing("dead"))
                assert failed.value.transient
            await slot.send(_outgoing("healthy"))
            assert await slot.circuit_state() == "closed"
            assert isinstance(slot.provider, WebhookProvider)
            assert await slot.provider.circuit_state("healthy") == "closed"
        finally:
            await registry.close()
    assert len(healthy.verified) == 1
