"""The settings the embedded run gives the services: each its own database and the others' addresses, the
development write keys (a store source among them), and the user's environment over them but not over the
run's wiring."""

from __future__ import annotations

import json

from omni_kit.embedded.run import SERVICES, ServiceSpec, child_environment, service_environment


def test_service_environment_points_each_service_at_its_own_database() -> None:
    services = (ServiceSpec("identity", 6001), ServiceSpec("profile", 6002), ServiceSpec("gateway", 6005))
    env = service_environment(
        services, lambda database: f"postgresql+asyncpg://pg/{database}", "nats://n", 2525
    )
    assert env["OMNI_IDENTITY_DATABASE_URL"] == "postgresql+asyncpg://pg/omni_identity"
    assert env["OMNI_GATEWAY_DATABASE_URL"] == "postgresql+asyncpg://pg/omni_gateway"
    assert env["OMNI_PROFILE_NATS_URL"] == "nats://n"
    assert env["OMNI_PROFILE_GRPC_PORT"] == "6002"
    assert env["OMNI_PROFILE_GRPC_HOST"] == "127.0.0.1"
    assert env["OMNI_PROFILE_IDENTITY_TARGET"] == "127.0.0.1:6001"
    assert env["OMNI_GATEWAY_IDENTITY_TARGET"] == "127.0.0.1:6001"
    assert env["OMNI_GATEWAY_PROFILE_TARGET"] == "127.0.0.1:6002"
    assert (env["OMNI_GATEWAY_SMTP_HOST"], env["OMNI_GATEWAY_SMTP_PORT"]) == ("127.0.0.1", "2525")
    assert env["OMNI_GATEWAY_SMTP_FROM"] == "omni@localhost"
    assert "OMNI_PROFILE_WRITE_KEYS" not in env  # no tracking port: no endpoint
    assert "OMNI_GATEWAY_BOUNCE_SMTP_PORT" not in env  # the gateway's own defaults


def test_the_gateways_endpoints_get_ports_apart_from_the_smtp_sink() -> None:
    env = service_environment(
        SERVICES,
        lambda database: f"postgresql+asyncpg://pg/{database}",
        "nats://n",
        2525,
        8088,
        gateway_http_port=8089,
        bounce_port=2526,
    )
    assert env["OMNI_GATEWAY_EMAIL_HTTP_PORT"] == "8089"
    assert env["OMNI_GATEWAY_EMAIL_PUBLIC_URL"] == "http://127.0.0.1:8089"
    assert (env["OMNI_GATEWAY_BOUNCE_SMTP_HOST"], env["OMNI_GATEWAY_BOUNCE_SMTP_PORT"]) == (
        "127.0.0.1",
        "2526",
    )
    assert (
        len({"2525", "8088", env["OMNI_GATEWAY_EMAIL_HTTP_PORT"], env["OMNI_GATEWAY_BOUNCE_SMTP_PORT"]}) == 4
    )


def test_the_run_has_a_write_key_for_the_store() -> None:
    env = service_environment(
        (ServiceSpec("profile", 6002),),
        lambda database: f"postgresql+asyncpg://pg/{database}",
        "nats://n",
        2525,
        8088,
    )
    keys = json.loads(env["OMNI_PROFILE_WRITE_KEYS"])
    assert keys["omni-dev-pos"] == {"name": "pos", "channel": "store"}
    assert keys["omni-dev-web"] == "web" and keys["omni-dev-app"] == "app"


def test_the_users_environment_goes_over_the_runs_settings_but_not_its_wiring() -> None:
    run = service_environment(
        SERVICES, lambda database: f"postgresql+asyncpg://pg/{database}", "nats://n", 2525, 8088
    )
    user = {
        "PATH": "/usr/bin",
        "OMNI_PROFILE_WRITE_KEYS": '{"wk_pos": {"name": "pos", "channel": "store"}}',
        "OMNI_GATEWAY_SMTP_HOST": "smtp.example.com",
        "OMNI_GATEWAY_SMTP_PORT": "587",
        "OMNI_IDENTITY_DEFAULT_PHONE_REGION": "GB",
        "OMNI_PROFILE_DATABASE_URL": "postgresql+asyncpg://elsewhere/db",
        "OMNI_GATEWAY_PROFILE_TARGET": "elsewhere:1",
    }
    merged = child_environment(run, user)
    env = merged.variables
    assert env["OMNI_PROFILE_WRITE_KEYS"] == user["OMNI_PROFILE_WRITE_KEYS"]
    assert (env["OMNI_GATEWAY_SMTP_HOST"], env["OMNI_GATEWAY_SMTP_PORT"]) == ("smtp.example.com", "587")
    assert env["OMNI_IDENTITY_DEFAULT_PHONE_REGION"] == "GB"
    assert env["PATH"] == "/usr/bin" and env["PYTHONUNBUFFERED"] == "1"
    assert env["OMNI_PROFILE_DATABASE_URL"] == "postgresql+asyncpg://pg/omni_profile"
    assert env["OMNI_GATEWAY_PROFILE_TARGET"] == run["OMNI_GATEWAY_PROFILE_TARGET"]
    assert merged.ignored == ("OMNI_GATEWAY_PROFILE_TARGET", "OMNI_PROFILE_DATABASE_URL")
    assert merged.overridden == (
        "OMNI_GATEWAY_SMTP_HOST",
        "OMNI_GATEWAY_SMTP_PORT",
        "OMNI_IDENTITY_DEFAULT_PHONE_REGION",
        "OMNI_PROFILE_WRITE_KEYS",
    )
