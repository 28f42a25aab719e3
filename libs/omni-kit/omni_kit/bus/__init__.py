"""The event log on NATS JetStream: transactional outbox, relay, durable consumers with an inbox."""

from omni_kit.bus.consumer import EventConsumer, Handler
from omni_kit.bus.envelope import (
    BATCH_HEADER,
    EncodedEnvelope,
    PermanentError,
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
from omni_kit.bus.tables import bus_metadata, create_bus_tables, inbox_table, outbox_table

__all__ = [
    "BATCH_HEADER",
    "DLQ_STREAM",
    "EVENTS_STREAM",
    "EncodedEnvelope",
    "EventConsumer",
    "Handler",
    "Outbox",
    "OutboxRelay",
    "OutboxRows",
    "PermanentError",
    "bus_metadata",
    "create_bus_tables",
    "dlq_stream",
    "ensure_streams",
    "envelopes_in",
    "events_stream",
    "inbox_table",
    "make_envelope",
    "mark_outbox_staged",
    "outbox_rows",
    "outbox_staged",
    "outbox_table",
    "subject_for",
    "unpack",
]
