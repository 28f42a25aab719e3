"""`omni import events|customers FILE`: a file of rows streamed to profile, resumable, with a rejects file.

The rows are cut into segments (10,000 rows); each segment is one StreamTrackEvents call sending batches of
1,000 events, and a few segments are in flight at once. Profile resolves each batch's identifiers through
identity in one call (customers become `identified` events, whose traits profile sets and whose identifiers
identity links). Every event has an id (the row's, or one derived from its content), so sending a segment
again is answered DUPLICATE for what was recorded the first time: a segment whose call failed is simply sent
again, and so is what was in flight when the command was stopped.

The checkpoint (FILE.checkpoint.json) records, after each segment that completes the prefix of the file,
how many rows are done, the counts so far and how long the rejects file is; a second run of the same command
continues from it (it truncates the rejects file to that length and skips the rows done). It refuses a
checkpoint of another file or another content of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import io
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import stamina
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni_kit.commands import rows as rowlib
from omni_kit.commands.connect import CliSettings, CommandError, clients, explain, load_settings

SEGMENT_ROWS = 10_000
BATCH = 1_000
STREAMS = 4
SOURCE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
"""What profile takes as an event source (and ids are unique per source)."""
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)


@dataclass
class Counts:
    """What happened to the rows so far."""

    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass
class Checkpoint:
    """How far an import got: rows done (a prefix of the file), counts, the rejects file's length."""

    kind: str
    source: str
    file: str
    size: int
    head_sha256: str
    rows_done: int = 0
    rejects_bytes: int = 0
    finished: bool = False
    counts: Counts = field(default_factory=Counts)

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves the old checkpoint or the new one, never half of one."""
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Read a checkpoint written by save."""
        data = orjson.loads(path.read_bytes())
        data["counts"] = Counts(**data.get("counts", {}))
        return cls(**data)


def file_identity(path: Path) -> tuple[int, str]:
    """Size and a hash of the first MiB: enough to tell another file, or an edited one, from this one."""
    with path.open("rb") as handle:
        head = handle.read(1 << 20)
    return path.stat().st_size, hashlib.sha256(head).hexdigest()


@dataclass
class Segment:
    """Consecutive rows: the events to send (with their row numbers) and the rows refused before sending."""

    index: int
    last_row: int
    events: list[profile_pb2.Event] = field(default_factory=list)
    sent_rows: list[rowlib.Row] = field(default_factory=list)
    rejects: list[tuple[rowlib.Row, str, str]] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)


class RejectsWriter:
    """The refused rows in the input's format, with _row, _field and _reason added."""

    def __init__(self, path: Path, file_format: str, header: list[str], keep_bytes: int) -> None:
        self.path = path
        self._format = file_format
        self._header = [*header, "_row", "_field", "_reason"]
        self._handle: Any = None
        if keep_bytes and path.exists():
            self._handle = path.open("r+b")
            self._handle.truncate(keep_bytes)
            self._handle.seek(0, os.SEEK_END)
        else:
            # An earlier import's, now out of date; the file is made again at the first reject.
            path.unlink(missing_ok=True)

    def _open(self) -> Any:
        if self._handle is None:
            self._handle = self.path.open("wb")
            if self._format == "csv":
                self._write_csv({k: k for k in self._header})
        return self._handle

    def _write_csv(self, record: dict[str, Any]) -> None:
        out = io.StringIO()
        csv.DictWriter(out, self._header, extrasaction="ignore").writerow(record)
        self._open().write(out.getvalue().encode())

    def write(self, row: rowlib.Row, field_name: str, reason: str) -> None:
        """One refused row."""
        record = {**row.fields, "_row": row.number, "_field": field_name, "_reason": reason}
        if self._format == "csv":
            self._write_csv(record)
        else:
            self._open().write(orjson.dumps(record) + b"\n")

    def flush(self) -> int:
        """Flush to disk; the file's length."""
        if self._handle is None:
            return 0
        self._handle.flush()
        os.fsync(self._handle.fileno())
        return self._handle.tell()

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()


def _segments(
    path: Path, file_format: str, kind: str, source: str, skip: int, segment_rows: int
) -> Iterator[Segment]:
    """The file's rows after the first `skip`, turned into events and cut into segments."""
    segment: Segment | None = None
    index = 0
    typed = file_format == "csv"
    for row in rowlib.read_rows(path, file_format):
        if row.number <= skip:
            continue
        if segment is None:
            segment = Segment(index, row.number)
            index += 1
        segment.last_row = row.number
        segment.counts.rows += 1
        if row.error is not None:
            segment.rejects.append((row, row.error.field, row.error.reason))
        else:
            try:
                event = rowlib.to_event(kind, row.fields, typed)
                event.source = source
                segment.events.append(event)
                segment.sent_rows.append(row)
            except rowlib.RowError as error:
                segment.rejects.append((row, error.field, error.reason))
        if segment.counts.rows >= segment_rows:
            yield segment
            segment = None
    if segment is not None:
        yield segment


async def _send(
    stub: profile_pb2_grpc.ProfileServiceStub, segment: Segment, batch: int, deadline_s: float
) -> None:
    """Send a segment in one stream (again, after a retryable failure: the ids make that harmless)."""

    async def requests() -> AsyncIterator[profile_pb2.StreamTrackEventsRequest]:
        for start in range(0, len(segment.events), batch):
            yield profile_pb2.StreamTrackEventsRequest(events=segment.events[start : start + batch])

    if not segment.events:
        return
    async for attempt in stamina.retry_context(
        on=lambda e: isinstance(e, grpc.aio.AioRpcError) and e.code() in RETRYABLE,
        attempts=6,
        wait_initial=0.5,
        wait_max=10.0,
    ):
        with attempt:
            response = await stub.StreamTrackEvents(requests(), timeout=deadline_s)
    segment.counts.accepted = response.accepted
    segment.counts.duplicates = response.duplicates
    segment.counts.rejected = len(segment.rejects) + response.rejected
    for error in response.errors:
        row = segment.sent_rows[error.position]
        if error.field_violations:
            violation = error.field_violations[0]
            segment.rejects.append((row, violation.field, violation.description))
        else:
            segment.rejects.append((row, "", error.reason or error.message))
    segment.rejects.sort(key=lambda item: item[0].number)


def run_import(args: argparse.Namespace, console: Console) -> int:
    """The import command; exit 0 when every row was taken, 1 when some were refused."""
    path: Path = args.file
    if not path.is_file():
        raise CommandError(f"no such file: {path}")
    try:
        file_format = rowlib.detect_format(path, args.format)
    except rowlib.RowError as error:
        raise CommandError(error.reason) from None
    if not SOURCE.fullmatch(args.source):
        raise CommandError(
            f"--source {args.source!r} must be lower snake case, at most 64 characters (crm, shop_a)"
        )
    settings = load_settings()
    checkpoint_path: Path = args.checkpoint or path.with_name(path.name + ".checkpoint.json")
    rejects_path: Path = args.rejects or path.with_name(f"{path.stem}.rejects.{file_format}")
    size, head = file_identity(path)
    checkpoint = Checkpoint(args.kind, args.source, str(path.resolve()), size, head)
    if checkpoint_path.exists() and not args.restart:
        found = Checkpoint.load(checkpoint_path)
        if (found.size, found.head_sha256, found.kind, found.source) != (size, head, args.kind, args.source):
            raise CommandError(
                f"{checkpoint_path} belongs to another import (another file, content, kind or --source).\n"
                "Pass --restart to start this one from its first row, or --checkpoint for another path."
            )
        if found.finished:
            console.print(
                f"[green]{path.name} was imported completely[/] ({checkpoint_path}); --restart imports it again."
            )
            return 0
        checkpoint = found
        console.print(f"resuming after row {checkpoint.rows_done:,} ({checkpoint_path})")
    header: list[str] = []
    if file_format == "csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    rejects = RejectsWriter(rejects_path, file_format, header, checkpoint.rejects_bytes)
    total = rowlib.count_rows(path, file_format)
    started = time.monotonic()
    done_at_start = checkpoint.rows_done
    try:
        asyncio.run(
            _pump(args, settings, path, file_format, checkpoint, checkpoint_path, rejects, total, console)
        )
    except KeyboardInterrupt:
        console.print(
            f"[yellow]stopped after row {checkpoint.rows_done:,}[/]; run the same command again to continue."
        )
        raise
    finally:
        rejects.close()
    checkpoint.finished = True
    checkpoint.save(checkpoint_path)
    elapsed = time.monotonic() - started
    _summary(console, checkpoint, checkpoint.rows_done - done_at_start, elapsed, rejects_path)
    return 1 if checkpoint.counts.rejected else 0


async def _pump(
    args: argparse.Namespace,
    settings: CliSettings,
    path: Path,
    file_format: str,
    checkpoint: Checkpoint,
    checkpoint_path: Path,
    rejects: RejectsWriter,
    total: int,
    console: Console,
) -> None:
    """Read, send and checkpoint: `streams` segments in flight, checkpoints in file order."""
    queue: asyncio.Queue[Segment | None] = asyncio.Queue(maxsize=args.streams)
    finished: dict[int, Segment] = {}
    next_to_commit = 0
    progress = Progress(
        TextColumn(f"[bold]{args.kind}[/] {path.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} rows/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("import", total=total or None, completed=checkpoint.rows_done, rate="-")
    started, done_at_start = time.monotonic(), checkpoint.rows_done

    def commit(segment: Segment) -> None:
        nonlocal next_to_commit
        finished[segment.index] = segment
        while next_to_commit in finished:
            ready = finished.pop(next_to_commit)
            for row, field_name, reason in ready.rejects:
                rejects.write(row, field_name, reason)
            checkpoint.rejects_bytes = rejects.flush() if ready.rejects else checkpoint.rejects_bytes
            checkpoint.rows_done = ready.last_row
            for name in ("rows", "accepted", "duplicates", "rejected"):
                setattr(
                    checkpoint.counts, name, getattr(checkpoint.counts, name) + getattr(ready.counts, name)
                )
            checkpoint.save(checkpoint_path)
            next_to_commit += 1
            rate = (checkpoint.rows_done - done_at_start) / max(time.monotonic() - started, 1e-6)
            progress.update(task, completed=checkpoint.rows_done, rate=f"{rate:,.0f}")

    async with clients(settings) as opened:
        stub = profile_pb2_grpc.ProfileServiceStub(opened.channel("profile"))

        async def worker() -> None:
            while (segment := await queue.get()) is not None:
                try:
                    await _send(stub, segment, args.batch, settings.timeout_s * 10)
                except grpc.aio.AioRpcError as error:
                    raise explain(error, "profile", settings) from error
                commit(segment)

        with progress:
            workers = [asyncio.create_task(worker()) for _ in range(args.streams)]
            try:
                for segment in _segments(
                    path, file_format, args.kind, args.source, checkpoint.rows_done, args.segment_rows
                ):
                    put = asyncio.create_task(queue.put(segment))
                    done, _ = await asyncio.wait({put, *workers}, return_when=asyncio.FIRST_COMPLETED)
                    for failed in done - {put}:
                        failed.result()  # a worker stops only by failing: raise its error
                    await put
                for _ in workers:
                    await queue.put(None)
                await asyncio.gather(*workers)
            finally:
                for worker_task in workers:
                    worker_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, CommandError, grpc.aio.AioRpcError):
                    await asyncio.gather(*workers)


def _summary(console: Console, checkpoint: Checkpoint, rows_now: int, elapsed: float, rejects: Path) -> None:
    counts = checkpoint.counts
    table = Table(title="import summary", show_header=False)
    table.add_row("rows read", f"{counts.rows:,}")
    table.add_row("recorded", f"{counts.accepted:,}")
    table.add_row("already there (duplicates)", f"{counts.duplicates:,}")
    table.add_row("rejected", f"[red]{counts.rejected:,}[/] → {rejects}" if counts.rejected else "0")
    table.add_row(
        "this run", f"{rows_now:,} rows in {elapsed:,.1f} s ({rows_now / max(elapsed, 1e-6):,.0f} rows/s)"
    )
    console.print(table)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `omni import events|customers FILE`."""
    import_cmd = commands.add_parser("import", help="import events or customers from a CSV or NDJSON file")
    kinds = import_cmd.add_subparsers(dest="kind", required=True)
    for kind, what in (
        (
            "events",
            "events (type, channel, occurred_at, identifiers, properties …) through StreamTrackEvents",
        ),
        (
            "customers",
            "customers (identifiers and traits) as `identified` events: identity links, profile keeps",
        ),
    ):
        sub = kinds.add_parser(
            kind, help=what, description=rowlib.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub.add_argument("file", type=Path, help="the .csv or .ndjson file")
        sub.add_argument("--format", choices=rowlib.FORMATS, help="csv or ndjson (default: by the extension)")
        sub.add_argument(
            "--source", default="import", help="the events' source; ids are unique per source (import)"
        )
        sub.add_argument("--checkpoint", type=Path, help="checkpoint file (default FILE.checkpoint.json)")
        sub.add_argument("--rejects", type=Path, help="refused rows (default FILE-stem.rejects.<format>)")
        sub.add_argument(
            "--restart", action="store_true", help="ignore the checkpoint, start at the first row"
        )
        sub.add_argument("--streams", type=int, default=STREAMS, help=f"segments in flight ({STREAMS})")
        sub.add_argument("--batch", type=int, default=BATCH, help=f"events per stream message ({BATCH})")
        sub.add_argument(
            "--segment-rows",
            type=int,
            default=SEGMENT_ROWS,
            help=f"rows per stream call and checkpoint ({SEGMENT_ROWS:,})",
        )
        sub.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    return run_import(args, console)
