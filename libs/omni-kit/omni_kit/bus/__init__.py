"""The event log on NATS JetStream: transactional outbox, relay, durable consumers with an inbox."""

from omni_kit.bus.consumer import EventConsumer, Handler
from omni_kit.bus.envelope import (
    BATCH_HEADER,
    DEFAULT_MAX_ENVELOPE_BYTES,
    EncodedEnvelope,
    EnvelopeTooLarge,
    PermanentError,
    check_envelope_size,
    envelopes_in,
    make_envelope,
    subject_for,
    unpack,
)
from omni_kit.bus.outbox import (
    Outbox,
    OutboxRelay,
    OutboxRows,
    mark_outbox_staged,
    outbox_rows,
    outbox_staged,
)
from omni_kit.bus.streams import DLQ_STREAM, EVENTS_STREAM, dlq_stream, ensure_streams, events_stream
from omni_kit.bus.tables import (
    bus_metadata,
    create_bus_tables,
    create_outbox_dead_letters,
    drop_outbox_dead_letters,
    inbox_table,
    outbox_dead_letters_table,
    outbox_table,
)

__all__ = [
    "BATCH_HEADER",
    "DEFAULT_MAX_ENVELOPE_BYTES",
    "DLQ_STREAM",
    "EVENTS_STREAM",
    "EncodedEnvelope",
    "EnvelopeTooLarge",
    "EventConsumer",
    "Handler",
    "Outbox",
    "OutboxRelay",
    "OutboxRows",
    "PermanentError",
    "bus_metadata",
    "check_envelope_size",
    "create_bus_tables",
    "create_outbox_dead_letters",
    "dlq_stream",
    "drop_outbox_dead_letters",
    "ensure_streams",
    "envelopes_in",
    "events_stream",
    "inbox_table",
    "make_envelope",
    "mark_outbox_staged",
    "outbox_dead_letters_table",
    "outbox_rows",
    "outbox_staged",
    "outbox_table",
    "subject_for",
    "unpack",
]
