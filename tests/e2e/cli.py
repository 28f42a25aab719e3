"""Running the `omni` command against the services a test started."""

from __future__ import annotations

import asyncio
import os
import sys

from tests.e2e.conftest import Omni


def cli_env(omni: Omni) -> dict[str, str]:
    """The environment that points the command at the test's services."""
    env = dict(os.environ)
    for name, runtime in omni.runtimes.items():
        env[f"OMNI_CLI_{name.upper()}_TARGET"] = f"127.0.0.1:{runtime.port}"
    env["COLUMNS"] = "160"
    return env


async def omni_cli(omni: Omni, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `omni …` to its end (with `env` over the test's settings): exit code and what it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "omni_kit.cli",
        *args,
        env=cli_env(omni) | (env or {}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    return process.returncode or 0, out.decode()
