"""The write keys come from OMNI_PROFILE_WRITE_KEYS as JSON; the endpoint's port and host have defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from omni.common.v1 import common_pb2
from omni_profile.main import Settings

BASE = {"database_url": "postgresql+asyncpg://u@db/profile", "nats_url": "nats://127.0.0.1:4222"}


def test_write_keys_are_read_as_json_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI_PROFILE_DATABASE_URL", BASE["database_url"])
    monkeypatch.setenv("OMNI_PROFILE_NATS_URL", BASE["nats_url"])
    monkeypatch.setenv(
        "OMNI_PROFILE_WRITE_KEYS", '{"wk_web": "web", "wk_pos": {"name": "pos", "channel": "store"}}'
    )
    settings = Settings()  # type: ignore[call-arg]
    assert settings.write_keys["wk_web"].name == "web"
    assert settings.write_keys["wk_web"].default_channel == common_pb2.CHANNEL_WEB
    assert settings.write_keys["wk_pos"].default_channel == common_pb2.CHANNEL_STORE
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 8088)


def test_without_write_keys_there_is_no_endpoint_to_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNI_PROFILE_WRITE_KEYS", raising=False)
    assert Settings.model_validate(BASE).write_keys == {}


@pytest.mark.parametrize(
    "write_keys",
    [
        {"wk": "Web Shop"},
        {"wk": {"name": "pos", "channel": "telepathy"}},
        {"": "web"},
        {"wk": {"name": "pos", "colour": "red"}},
    ],
)
def test_bad_write_keys_stop_the_service_from_starting(write_keys: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate({**BASE, "write_keys": write_keys})
