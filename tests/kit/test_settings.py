"""Settings are read from the environment with the service's prefix and validated at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from omni_kit.settings import ServiceSettings


class ExampleSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="OMNI_EXAMPLE_", extra="ignore", frozen=True)


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI_EXAMPLE_DATABASE_URL", "postgresql+asyncpg://u@h:5432/omni_example")
    monkeypatch.setenv("OMNI_EXAMPLE_NATS_URL", "nats://a:4222, nats://b:4222")
    monkeypatch.setenv("OMNI_EXAMPLE_GRPC_PORT", "50099")
    settings = ExampleSettings()
    assert settings.grpc_port == 50099
    assert settings.nats_servers == ["nats://a:4222", "nats://b:4222"]
    assert settings.event_namespace == "omni"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("database_url", "postgresql://u@h/db"),
        ("nats_url", "http://localhost:4222"),
        ("grpc_port", "70000"),
        ("event_namespace", "Bad-Namespace"),
    ],
)
def test_rejects_bad_values(field: str, value: str) -> None:
    values = {"database_url": "postgresql+asyncpg://u@h/db", "nats_url": "nats://h:4222", field: value}
    with pytest.raises(ValidationError) as raised:
        ExampleSettings(**values)  # type: ignore[arg-type]
    assert field in str(raised.value)


def test_missing_database_url_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNI_EXAMPLE_DATABASE_URL", raising=False)
    with pytest.raises(ValidationError):
        ExampleSettings(nats_url="nats://h:4222")  # type: ignore[call-arg]


def test_a_refused_value_is_never_shown_since_it_may_be_a_secret() -> None:
    with pytest.raises(ValidationError) as raised:
        ExampleSettings(database_url="postgresql://omni:hunter2-secret@h/db", nats_url="nats://h:4222")
    assert "database_url" in str(raised.value)
    assert "hunter2-secret" not in str(raised.value)
