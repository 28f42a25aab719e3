"""The gateway's email sending: emails/s to a local SMTP server, against raw aiosmtplib sends of the same emails.

A local SMTP server (aiosmtpd, accepting and dropping every email) runs in its own process; each sender runs in
its own process too (bench/email_send.py says what each does): the baseline `raw` (the gateway's emails built
and flattened before the clock starts, then aiosmtplib's sendmail on persistent connections), `gateway`
(build_email with the RFC 8058 headers, tracked links and DKIM, handed to the gateway's SMTP provider) and
`gateway-pooled` (the same emails sent on persistent connections with the VERP return path: what a pooled
provider reaches). Figures: emails/s over the window, the sender's CPU and peak resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.children import REPO
from bench.context import BenchContext, cpu_sample_machine, log
from bench.results import Baseline, Result, Target

SUITE = "gateway_send"
CONNECTIONS = 8
"""Concurrent sends (persistent connections for raw and pooled, senders for the connection-per-email
provider)."""
TARGET_PER_S = 1000.0


@dataclass(frozen=True)
class _Server:
    port: int
    pid: int

    def cpu_s(self) -> float:
        """User + system CPU seconds of the SMTP server process so far."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def _smtp_server() -> AsyncIterator[_Server]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.email_send",
        "sink",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
        if not line.startswith("READY "):
            raise RuntimeError(f"the bench SMTP server did not start: {line!r}")
        yield _Server(int(line.split()[1]), process.pid)
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _send(mode: str, server: _Server, ctx: BenchContext) -> dict[str, Any]:
    machine_before, server_before, started = cpu_sample_machine(), server.cpu_s(), time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.email_send",
        "send",
        mode,
        str(server.port),
        str(ctx.durations.throughput),
        str(ctx.durations.warmup),
        str(CONNECTIONS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"sender {mode} failed: {err.decode()[-2000:]}")
    figures: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    # Cores over the sender's whole life (set-up included, so "other" is an upper bound of the neighbours').
    wall = time.monotonic() - started
    machine = (cpu_sample_machine() - machine_before) / wall
    smtp_server = (server.cpu_s() - server_before) / wall
    sender = figures["cpu_s"] / figures["seconds"]
    figures["cpu_cores"] = {
        "machine": round(machine, 2),
        "sender": round(sender, 2),
        "smtp server": round(smtp_server, 2),
        "other": round(max(0.0, machine - smtp_server - figures["process_cpu_s"] / wall), 2),
    }
    log(
        f"gateway_send {mode}: {figures['per_second']:,.0f} emails/s, {figures['cpu_s'] / figures['seconds']:.2f} "
        f"cores ({figures['cpu_ms_per_email']} ms CPU an email), peak {figures['peak_rss_mib']} MiB, "
        f"{figures['errors']} errors"
    )
    return figures


async def run(ctx: BenchContext) -> list[Result]:
    """The raw baseline, then the gateway's provider, then the pooled variant, against one SMTP server."""
    async with _smtp_server() as server:
        raw = await _send("raw", server, ctx)
        gateway = await _send("gateway", server, ctx)
        pooled = await _send("gateway-pooled", server, ctx)
    baseline = Baseline(
        f"raw aiosmtplib sendmail, {CONNECTIONS} persistent connections", raw["per_second"], "emails/s"
    )
    notes = (
        "Marketing emails of ~6 KB (text + HTML with 11 links), List-Unsubscribe one-click, tracked links and "
        "pixel, DKIM RSA-2048, built and sent inside the clock; sender and SMTP server (aiosmtpd) in their own "
        "processes on 127.0.0.1."
    )
    for figures in (raw, gateway, pooled):
        # What one email costs the sender in CPU: with the cores this machine has, the ceiling of the rate.
        figures["ceiling_per_core"] = (
            1000 / figures["cpu_ms_per_email"] if figures["cpu_ms_per_email"] else None
        )
    results = [
        Result(
            SUITE,
            "emails/s through the gateway's email building + SMTP provider (connection per email)",
            gateway["per_second"],
            "emails/s",
            higher_is_better=True,
            baselines=[baseline],
            targets=[Target(">=", TARGET_PER_S)],
            notes=notes + f" {CONNECTIONS} concurrent sends through omni_gateway.smtp.Mailer.",
            details={"gateway": gateway, "raw": raw, "cpu_cores": gateway["cpu_cores"]},
            clean=gateway["errors"] == 0,
        ),
        Result(
            SUITE,
            "emails/s, gateway's email building, pooled connections",
            pooled["per_second"],
            "emails/s",
            higher_is_better=True,
            baselines=[baseline],
            targets=[Target(">=", TARGET_PER_S)],
            notes=notes
            + f" Sent on {CONNECTIONS} persistent aiosmtplib connections with the VERP return path.",
            details={"pooled": pooled, "cpu_cores": pooled["cpu_cores"]},
            clean=pooled["errors"] == 0,
        ),
        Result(
            SUITE,
            "gateway sender peak memory",
            max(gateway["peak_rss_mib"], pooled["peak_rss_mib"]),
            "MiB",
            higher_is_better=False,
            targets=[Target("<", 1024.0)],
            notes="Peak resident memory of the sender process (ru_maxrss).",
            details={"raw_peak_rss_mib": raw["peak_rss_mib"]},
        ),
    ]
    return results
