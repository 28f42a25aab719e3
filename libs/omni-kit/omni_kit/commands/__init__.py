"""The operator's and marketer's commands of `omni` that talk to running services over gRPC.

Each module listed in COMMANDS offers ``register(commands)``: it adds its sub-command(s) to the `omni`
parser and sets ``run`` (args -> exit code) as the parser default. A new command is one new module and one
line here.

connect.py     where the services are (OMNI_CLI_* settings, TLS, token), channels, readable errors
importing.py   `omni import events|customers FILE`: rows -> events, streamed to profile, checkpointed
apply.py       `omni apply|diff|get`: configuration as YAML, one module per kind under kinds/
person.py      `omni person show`: the 360 view in the terminal
"""

from __future__ import annotations

COMMANDS = (
    "omni_kit.commands.importing",
    "omni_kit.commands.apply",
    "omni_kit.commands.person",
)
