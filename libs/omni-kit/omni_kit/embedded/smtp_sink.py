"""An SMTP server that accepts every message and keeps it as an .eml file, for the embedded run and tests."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from omni_kit.embedded._process import EmbeddedServerError
from omni_kit.embedded.ports import free_port

SERVER_HOSTNAME = "omni-smtp-sink"
"""The name the sink greets with; fixed, because aiosmtpd would otherwise look up the FQDN per connection."""


class SmtpSink:
    """A local SMTP server that delivers nothing: each message lands in ``mail_dir`` as ``<time>-<n>.eml``.

    The envelope sender and recipients are added as ``X-Omni-Mail-From`` and ``X-Omni-Rcpt-To`` headers, so
    Bcc recipients show up too. The server runs in its own thread (aiosmtpd's ``Controller``), so it can be
    started and stopped from synchronous code and keeps answering while an event loop is busy elsewhere.
    """

    def __init__(self, mail_dir: Path, host: str = "127.0.0.1", port: int | None = None) -> None:
        """Describe the sink; nothing listens until ``start()``. A free port is chosen when ``port`` is None."""
        self.mail_dir = Path(mail_dir).expanduser().resolve()
        self.host = host
        self._requested_port = port
        self._port = port
        self._controller: Controller | None = None
        self._handler = _SaveToFolder(self.mail_dir)
        self._parsed: dict[str, EmailMessage] = {}

    @property
    def port(self) -> int:
        """The SMTP port; known once started (or when given)."""
        if self._port is None:
            raise EmbeddedServerError("SmtpSink has no port yet: call start() first")
        return self._port

    @property
    def received(self) -> int:
        """How many messages this sink has received since it was created."""
        return self._handler.count

    def start(self) -> None:
        """Start listening; returns once the server answers."""
        if self._controller is not None:
            return
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        port = self._requested_port if self._requested_port is not None else free_port(self.host)
        controller = Controller(
            self._handler,
            hostname=self.host,
            port=port,
            server_hostname=SERVER_HOSTNAME,
            ready_timeout=10.0,
        )
        try:
            controller.start()
        except Exception as error:
            raise EmbeddedServerError(f"SMTP sink could not listen on {self.host}:{port}: {error}") from error
        self._controller = controller
        self._port = port

    def stop(self) -> None:
        """Stop listening; messages already saved stay in ``mail_dir``."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> Self:
        """Start the sink."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the sink."""
        self.stop()

    def message_paths(self) -> list[Path]:
        """Return the saved .eml files in arrival order (their names sort by time, then by counter)."""
        return sorted(self.mail_dir.glob("*.eml"))

    def messages(self) -> list[EmailMessage]:
        """Return every message in ``mail_dir``, parsed, oldest first (including ones from earlier runs)."""
        result = []
        for path in self.message_paths():
            message = self._parsed.get(path.name)
            if message is None:
                message = cast(EmailMessage, message_from_bytes(path.read_bytes(), policy=policy.default))
                self._parsed[path.name] = message
            result.append(message)
        return result

    async def wait_for(
        self,
        predicate: Callable[[EmailMessage], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - a deadline for the polling, as tests read it best
        interval: float = 0.05,
    ) -> EmailMessage:
        """Wait until a message satisfying ``predicate`` has arrived and return the first such message.

        Raises ``TimeoutError`` listing what did arrive if none does within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            messages = await asyncio.to_thread(self.messages)
            for message in messages:
                if predicate(message):
                    return message
            if time.monotonic() >= deadline:
                seen = "; ".join(f"{m['To']!s}: {m['Subject']!s}" for m in messages[-10:]) or "nothing"
                raise TimeoutError(
                    f"no matching message in {self.mail_dir} after {timeout} s (last received: {seen})"
                )
            await asyncio.sleep(interval)

    def clear(self) -> None:
        """Delete the saved messages."""
        for path in self.message_paths():
            path.unlink(missing_ok=True)
        self._parsed.clear()


class _SaveToFolder:
    """aiosmtpd handler that writes each message to a file, atomically, so readers never see half of one."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir
        self.count = 0
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Save the message with its envelope as headers and accept it."""
        with self._lock:
            number = next(self._counter)
            self.count += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        content: Any = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8")
        envelope_headers = (
            f"X-Omni-Mail-From: {envelope.mail_from}\r\nX-Omni-Rcpt-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        path = self.mail_dir / f"{stamp}-{number:06d}.eml"
        partial = path.with_suffix(".part")
        partial.write_bytes(envelope_headers + content)
        os.replace(partial, path)
        return "250 Message accepted for delivery"
