"""Submitting one email to an SMTP server outside the delivery flow (tools, tests), with the failures as the
domain's. The provider itself (pooled connections, failure kinds) is `providers.smtp`."""

from __future__ import annotations

import uuid
from email.message import EmailMessage

from omni_gateway.domain import PermanentFailure, TransientFailure
from omni_gateway.providers.base import ProviderFailure
from omni_gateway.providers.smtp import SmtpConfig, SmtpProvider, classify

__all__ = ["Mailer", "SmtpConfig", "classify"]


class Mailer:
    """Submits emails to one SMTP server through an SmtpProvider's pool."""

    def __init__(self, config: SmtpConfig, *, name: str = "smtp") -> None:
        self._provider = SmtpProvider(name, config, sender="")

    async def send(self, email: EmailMessage, *, message_id: uuid.UUID) -> None:
        """Submit one email; raise TransientFailure or PermanentFailure if refused."""
        try:
            await self._provider.submit(email, message_id=message_id)
        except ProviderFailure as failure:
            raise (TransientFailure if failure.transient else PermanentFailure)(str(failure)) from failure

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._provider.close()
