"""Profile's settings come from OMNI_PROFILE_* variables, with defaults for the embedded run."""

from __future__ import annotations

import pytest

from omni_profile.main import Settings


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI_PROFILE_DATABASE_URL", "postgresql+asyncpg://u@db:5432/profile")
    monkeypatch.setenv("OMNI_PROFILE_NATS_URL", "nats://nats:4222")
    monkeypatch.setenv("OMNI_PROFILE_IDENTITY_TARGET", "identity:15051")
    settings = Settings()  # type: ignore[call-arg]
    assert settings.identity_target == "identity:15051"
    assert settings.grpc_port == 15052


def test_the_identity_target_defaults_to_the_local_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNI_PROFILE_IDENTITY_TARGET", raising=False)
    settings = Settings.model_validate(
        {"database_url": "postgresql+asyncpg://u@db/profile", "nats_url": "nats://127.0.0.1:4222"}
    )
    assert settings.identity_target == "127.0.0.1:15051"
