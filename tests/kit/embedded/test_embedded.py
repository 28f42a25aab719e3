"""The embedded servers are real: PostgreSQL takes connections and keeps data, NATS keeps streams, the SMTP
sink keeps messages as files."""

from __future__ import annotations

import asyncio
import smtplib
import uuid
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import asyncpg
import nats
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServerError, SmtpSink, free_port
from omni_kit.embedded.ports import port_accepts, port_is_free

# These tests start PostgreSQL, NATS and whole runs of their own.
pytestmark = pytest.mark.integration


async def test_postgres_accepts_asyncpg_connections_on_tcp(postgres: EmbeddedPostgres) -> None:
    assert postgres.host == "127.0.0.1"
    assert postgres.port not in (5432, 0)
    connection = await asyncpg.connect(postgres.dsn())
    try:
        assert await connection.fetchval("SELECT current_user") == "postgres"
        assert await connection.fetchval("SHOW server_encoding") == "UTF8"
        assert int(await connection.fetchval("SHOW max_connections")) >= 300
        assert await connection.fetchval("SHOW fsync") == "off"
    finally:
        await connection.close()


async def test_create_database_is_idempotent(postgres: EmbeddedPostgres) -> None:
    name = f"idempotent_{uuid.uuid4().hex[:8]}"
    postgres.create_database(name)
    postgres.create_database(name)
    connection = await asyncpg.connect(postgres.dsn(name))
    try:
        assert await connection.fetchval("SELECT current_database()") == name
    finally:
        await connection.close()
    postgres.drop_database(name)
    postgres.drop_database(name)


def test_create_database_refuses_names_postgres_would_cut_short(postgres: EmbeddedPostgres) -> None:
    with pytest.raises(ValueError):
        postgres.create_database("x" * 64)


async def test_make_database_gives_each_caller_its_own_database(make_database: Callable[..., str]) -> None:
    first, second = make_database("orders"), make_database("orders")
    assert first != second
    assert first.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    engine = create_async_engine(first)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE seen (id int)"))
            assert (
                (await connection.execute(text("SELECT current_database()")))
                .scalar_one()
                .startswith("orders_")
            )
    finally:
        await engine.dispose()


async def test_make_database_copies_a_template(
    postgres: EmbeddedPostgres, make_database: Callable[..., str]
) -> None:
    template = f"template_{uuid.uuid4().hex[:8]}"
    postgres.create_database(template)
    postgres.psql("CREATE TABLE migrated (id int); INSERT INTO migrated VALUES (7)", database=template)
    url = make_database("copy", template=template)
    connection = await asyncpg.connect(postgres.dsn(url.rsplit("/", 1)[1]))
    try:
        assert await connection.fetchval("SELECT id FROM migrated") == 7
    finally:
        await connection.close()


async def test_postgres_data_survives_a_restart_and_a_leftover_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    first = EmbeddedPostgres(data_dir, durable=False)
    first.start()
    try:
        first.create_database("kept")
        first.psql("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('hello')", database="kept")
        first.stop()
        assert not first.is_running()
        assert port_is_free(first.port)

        first.start()
        assert first.psql("SELECT body FROM notes", database="kept").strip() == "hello"

        # A second object on the same directory while the first server still runs stands for a run whose
        # process was killed: it takes over the directory on its own (here fixed) port.
        port = free_port()
        second = EmbeddedPostgres(data_dir, port, durable=False)
        second.start()
        assert second.port == port
        assert not port_accepts(first.port)
        connection = await asyncpg.connect(second.dsn("kept"))
        try:
            assert await connection.fetchval("SELECT body FROM notes") == "hello"
        finally:
            await connection.close()
    finally:
        first.stop()
    assert not first.is_running()


def test_postgres_reports_a_taken_port_clearly(tmp_path: Path, postgres: EmbeddedPostgres) -> None:
    with pytest.raises(EmbeddedServerError, match="something else is listening"):
        EmbeddedPostgres(tmp_path / "pg", postgres.port, durable=False).start()


async def test_nats_runs_jetstream_and_keeps_streams(nats_server: EmbeddedNats) -> None:
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.port != 4222
    client = await nats.connect(nats_server.url)
    try:
        jetstream = client.jetstream()
        stream = f"TEST_{uuid.uuid4().hex[:8]}"
        await jetstream.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
        ack = await jetstream.publish(f"{stream.lower()}.hello", b"ada", headers={"Nats-Msg-Id": "event-1"})
        duplicate = await jetstream.publish(
            f"{stream.lower()}.hello", b"ada", headers={"Nats-Msg-Id": "event-1"}
        )
        assert duplicate.duplicate and duplicate.seq == ack.seq

        subscription = await jetstream.pull_subscribe(f"{stream.lower()}.>", durable="reader", stream=stream)
        [message] = await subscription.fetch(1, timeout=5)
        assert message.data == b"ada"
        await message.ack()
    finally:
        await client.close()


async def test_nats_store_survives_a_restart(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "nats") as server:
        client = await nats.connect(server.url)
        jetstream = client.jetstream()
        await jetstream.add_stream(name="KEPT", subjects=["kept.>"])
        await jetstream.publish("kept.one", b"1")
        await client.close()
    with EmbeddedNats(tmp_path / "nats") as server:
        client = await nats.connect(server.url)
        info = await client.jetstream().stream_info("KEPT")
        await client.close()
    assert info.state.messages == 1


async def test_smtp_sink_keeps_each_message_as_an_eml_file(smtp_sink: SmtpSink) -> None:
    subject = f"Your cart misses you {uuid.uuid4().hex[:8]}"
    email = EmailMessage()
    email["From"] = "omni@localhost"
    email["To"] = "ada@example.com"
    email["Subject"] = subject
    email.set_content("Come back, the shoes are still there.")

    def send() -> None:
        with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=5) as client:
            client.send_message(email, to_addrs=["ada@example.com", "audit@example.com"])

    await asyncio.to_thread(send)
    received = await smtp_sink.wait_for(lambda message: message["Subject"] == subject, timeout=5)
    assert received["To"] == "ada@example.com"
    assert received["X-Omni-Rcpt-To"] == "ada@example.com, audit@example.com"
    assert "shoes are still there" in received.get_content()

    [path] = [p for p in smtp_sink.message_paths() if subject.encode() in p.read_bytes()]
    assert path.parent == smtp_sink.mail_dir and path.suffix == ".eml"
    parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert parsed["Subject"] == subject
    assert parsed["To"] == "ada@example.com"


async def test_smtp_sink_wait_for_times_out_with_what_arrived(tmp_path: Path) -> None:
    with SmtpSink(tmp_path / "mail") as sink:
        with pytest.raises(TimeoutError, match="nothing"):
            await sink.wait_for(lambda message: True, timeout=0.1)
        assert sink.messages() == []
