"""``python -m bench.run_start``: how long `make run` (``omni run``) takes to bring everything to SERVING.

Starts the real run twice in a fresh root directory, as a newcomer would: the first start creates the
PostgreSQL cluster and applies every migration, the second finds them ("once the environment exists", the
figure that counts). Each time it measures, from the command's start, when each service says it is serving,
when the console answers, and when the banner ("Omni is running") appears, then stops the run with Ctrl-C.
Writes bench/results/run-start.{json,md}, with the machine's load average (the figure depends on it: the
start is mostly Python processes importing their code).

Run it inside its own network namespace (the run uses fixed ports), e.g.
    unshare -n bash -c 'ip link set lo up; .venv/bin/python -m bench.run_start'
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SERVING = re.compile(r"omni +\| (\w+) is serving on")
CONSOLE = re.compile(r"omni +\| the console is serving on")


def start_once(root: Path, timeout_s: float = 300.0) -> dict[str, float]:
    """Start `omni run` in root, return the seconds to each milestone, stop it."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "omni_kit.cli", "run"],
        cwd=root,  # the run keeps its data in .omni under the working directory
        env={**os.environ, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    marks: dict[str, float] = {}
    done = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            now = time.monotonic() - started
            if match := SERVING.search(line):
                marks.setdefault(match.group(1), now)
            elif CONSOLE.search(line):
                marks.setdefault("console", now)
            elif "Omni is running" in line:
                marks.setdefault("all serving", now)
                done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not done.wait(timeout_s):
            raise SystemExit(f"omni run did not start within {timeout_s:.0f} s")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    return {name: round(seconds, 1) for name, seconds in marks.items()}


def main() -> None:
    """Measure the first and the second start, write the results."""
    with tempfile.TemporaryDirectory(prefix="omni-run-start-") as directory:
        root = Path(directory)
        first = start_once(root)
        second = start_once(root)
    load = os.getloadavg()
    result = {
        "what": "omni run: seconds from the command to each service SERVING, the console answering, the banner",
        "first start (creates the database cluster, applies migrations)": first,
        "second start (the environment exists)": second,
        "cpus": os.cpu_count(),
        "load average (1, 5, 15 min) after the run": [round(x, 2) for x in load],
        "target": "all serving within 20 s once the environment exists",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "run-start.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# `make run` start time",
        "",
        f"{os.cpu_count()} CPUs, load average after the run {', '.join(f'{x:.1f}' for x in load)}.",
        "",
        "| milestone | first start (s) | second start (s) |",
        "|---|---|---|",
    ]
    for name in second:
        lines.append(f"| {name} | {first.get(name, '')} | {second[name]} |")
    (RESULTS / "run-start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
