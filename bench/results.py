"""What a benchmark reports: figures with their baselines and targets, and how they are written out.

A Result is one figure (throughput or a latency percentile). It carries the baselines measured in the same
run, each with the ratio figure/baseline, and the design targets it is checked against. Results are written
to JSON (for tools) and Markdown (for people) together with a description of the machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

Op = Literal[">=", "<"]


@dataclass(frozen=True)
class Baseline:
    """A figure measured in the same run that the result is compared with."""

    name: str
    value: float
    unit: str


@dataclass(frozen=True)
class Target:
    """A design target: on the value itself, or on the ratio to the baseline at ``baseline_index``."""

    op: Op
    threshold: float
    on: Literal["value", "ratio"] = "value"
    baseline_index: int = 0

    def describe(self, unit: str) -> str:
        """The target as a person reads it, e.g. ">= 20,000 sets/s" or ">= 10% of raw COPY"."""
        if self.on == "ratio":
            return f"{self.op} {self.threshold:.0%} of baseline"
        return f"{self.op} {_number(self.threshold)} {unit}"


@dataclass
class Result:
    """One measured figure of a suite."""

    suite: str
    name: str
    value: float | None
    unit: str
    higher_is_better: bool
    baselines: list[Baseline] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    """Set when the figure could not be measured (the suite failed); value is then None."""
    clean: bool = True
    """False when the run saw errors that make the figure doubtful (failed calls, a lagging generator)."""

    def ratio(self, baseline: Baseline) -> float | None:
        """The figure divided by the baseline (for latency: how many times slower than the baseline)."""
        if self.value is None or baseline.value == 0:
            return None
        return self.value / baseline.value

    def target_met(self, target: Target) -> bool | None:
        """Whether one target holds; None when it cannot be judged."""
        if self.value is None:
            return None
        if target.on == "ratio":
            if target.baseline_index >= len(self.baselines):
                return None
            measured = self.ratio(self.baselines[target.baseline_index])
            if measured is None:
                return None
        else:
            measured = self.value
        return measured >= target.threshold if target.op == ">=" else measured < target.threshold

    def met(self) -> bool | None:
        """Whether every target holds on a clean run; None when there is no target."""
        if not self.targets:
            return None
        verdicts = [self.target_met(t) for t in self.targets]
        if any(v is None for v in verdicts):
            return False
        return all(verdicts) and self.clean

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON data, ratios and verdicts included."""
        data = asdict(self)
        data["baselines"] = [asdict(b) | {"ratio": _rounded(self.ratio(b), 4)} for b in self.baselines]
        data["targets"] = [
            asdict(t) | {"text": t.describe(self.unit), "met": self.target_met(t)} for t in self.targets
        ]
        data["value"] = _rounded(self.value, 4)
        data["met"] = self.met()
        return data


def failed(suite: str, name: str, unit: str, error: str, *, targets: list[Target] | None = None) -> Result:
    """A result standing for a figure that could not be measured."""
    return Result(
        suite, name, None, unit, higher_is_better=True, targets=targets or [], error=error, clean=False
    )


# -- the machine ---------------------------------------------------------------------------------------


def machine_info(repo: Path) -> dict[str, Any]:
    """CPU model, cores, memory, load, Python and library versions, git commit and the date."""
    import grpc

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _memory_gib(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    info |= _git(repo)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git(repo: Path) -> dict[str, Any]:
    def run(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=False
        )
        return result.stdout.strip()

    try:
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit or None, "git_dirty": dirty}


# -- writing -------------------------------------------------------------------------------------------


def write_results(
    out_dir: Path, stem: str, *, run: dict[str, Any], machine: dict[str, Any], results: list[Result]
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    document = {"run": run, "machine": machine, "results": [r.to_json() for r in results]}
    json_path.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    md_path.write_text(markdown(run=run, machine=machine, results=results))
    return json_path, md_path


def markdown(*, run: dict[str, Any], machine: dict[str, Any], results: list[Result]) -> str:
    """The results as a Markdown page: the machine, one table of figures, then notes per figure."""
    commit = machine.get("git_commit") or "unknown"
    dirty = " (with uncommitted changes)" if machine.get("git_dirty") else ""
    lines = [
        "# Omni benchmark results",
        "",
        f"Measured {machine.get('date')} on {machine.get('cpu_model')}, {machine.get('cores')} cores, "
        f"{machine.get('memory_gib')} GiB, {machine.get('os')}; Python {machine.get('python')}, "
        f"grpcio {machine.get('grpcio')}, {machine.get('postgres', 'PostgreSQL ?')}, "
        f"NATS {machine.get('nats', '?')}. Load average at start: {machine.get('load_average_at_start')}, "
        f"at end: {machine.get('load_average_at_end')}; cores busy before the run: "
        f"{machine.get('busy_cores_before_start')}. Commit `{commit[:12]}`{dirty}.",
        "",
        f"Mode: {run.get('mode')}; suites: {', '.join(run.get('suites', []))}; "
        f"wall time {run.get('elapsed_s')} s. {run.get('setup', '')}",
        "",
        "Ratios are figure ÷ baseline: for throughput the share of the baseline reached, for latency how "
        "many times the baseline's latency. The machine is shared and noisy: compare ratios across runs "
        "rather than absolute figures.",
        "",
        "The last column is the CPU that neither this benchmark nor its PostgreSQL and NATS used while the "
        f"figure was measured (other tenants of the machine); above {NOISY_CORES} cores the figure is noisy (⚠).",
        "",
        "| suite | figure | value | baselines (same run) → ratio | target | met | other CPU |",
        "|---|---|---:|---|---|:-:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.suite} | {r.name} | {_value(r)} | {_baselines(r)} | "
            f"{'; '.join(t.describe(r.unit) for t in r.targets) or '—'} | {_verdict(r)} | {_noise(r)} |"
        )
    lines += ["", "## Notes", ""]
    for r in results:
        text = _one_line(r.error) if r.error else r.notes
        detail = "; ".join(
            f"{k.replace('_', ' ')}: {_detail(r.details[k])}" for k in _SHOWN if r.details.get(k)
        )
        if text or detail:
            lines.append(f"- **{r.suite} / {r.name}**: {text}{' — ' if text and detail else ''}{detail}")
    logged = [
        (r, service, records)
        for r in results
        for service, records in r.details.get("service_log_errors", {}).items()
    ]
    if logged:
        lines += ["", "## Errors the services logged", ""]
        for r, service, records in logged:
            first = records[0].splitlines()
            lines.append(
                f"- **{r.suite} / {service}** ({len(records)} shown in the JSON): `{first[0][:300]}`"
            )
            if len(first) > 1:
                lines.append(f"  last line: `{first[-1].strip()[:300]}`")
    lines += ["", "All details (every percentile, error counts, CPU per process) are in the JSON file.", ""]
    return "\n".join(lines)


# The details worth a person's attention in the Markdown notes; the JSON keeps all of them.
_SHOWN = (
    "calls",
    "ok_per_s",
    "errors",
    "p90_ms",
    "p999_ms",
    "call_p50_ms",
    "call_p99_ms",
    "events_stored",
    "outbox",
    "cpu_cores",
)


def table(results: list[Result]) -> str:
    """A plain-text table for the terminal."""
    rows = [("suite", "figure", "value", "baseline → ratio", "target", "met", "other CPU")]
    for r in results:
        rows.append(
            (
                r.suite,
                r.name,
                _value(r),
                _baselines(r, short=True),
                "; ".join(t.describe(r.unit) for t in r.targets) or "-",
                _verdict(r, plain=True),
                _noise(r, plain=True),
            )
        )
    widths = [min(max(len(row[i]) for row in rows), 70) for i in range(len(rows[0]))]
    out = []
    for index, row in enumerate(rows):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


NOISY_CORES = 0.3
"""CPU used by other tenants of the machine during a measurement above which the figure is flagged."""


def other_cores(r: Result) -> float | None:
    """Cores used by the rest of the machine while the figure was measured, if known."""
    cpu = r.details.get("cpu_cores")
    if not isinstance(cpu, dict) or "other" not in cpu:
        return None
    return float(cpu["other"])


def _noise(r: Result, *, plain: bool = False) -> str:
    other = other_cores(r)
    if other is None:
        return "-" if plain else "—"
    flag = ("!" if plain else " ⚠") if other > NOISY_CORES else ""
    return f"{max(other, 0.0):.2f}{flag}"


def _one_line(error: str) -> str:
    """An error as one line: its first line and, for a child's log tail, the last line (the exception)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    if len(lines) <= 1:
        return error.strip()
    return f"{lines[0]} … {lines[-1]} (see the JSON file for the log tail)"


def _value(r: Result) -> str:
    if r.value is None:
        return "FAILED"
    return f"{_number(r.value)} {r.unit}"


def _baselines(r: Result, *, short: bool = False) -> str:
    parts = []
    for b in r.baselines:
        ratio = r.ratio(b)
        shown = "?" if ratio is None else (f"{ratio:.1%}" if r.higher_is_better else f"{ratio:.2f}x")
        parts.append(f"{b.name} {_number(b.value)} {b.unit} → {shown}")
    if not parts:
        return "-" if short else "—"
    return "; ".join(parts) if short else "<br>".join(parts)


def _verdict(r: Result, *, plain: bool = False) -> str:
    met = r.met()
    if met is None:
        return "-" if plain else "—"
    if plain:
        return "yes" if met else "NO"
    return "✅" if met else "❌"


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _detail(value: Any) -> str:
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {_detail(v)}" for k, v in value.items())
    return str(value)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
