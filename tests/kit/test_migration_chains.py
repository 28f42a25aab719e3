"""Every service's Alembic migrations form one chain whose revision ids are the files' numbers: two files
claiming one id (as two changes made side by side do when both take the next number) would let Alembic
apply only one of them, silently."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = sorted(ROOT.glob("services/*/omni_*/migrations"))


@pytest.mark.parametrize("migrations", MIGRATIONS, ids=lambda p: p.parent.name)
def test_revision_ids_are_the_file_numbers_and_form_one_chain(migrations: Path) -> None:
    files = sorted((migrations / "versions").glob("[0-9]*.py"))
    assert files, f"no migrations in {migrations}"
    declared = {}
    for path in files:
        found = re.search(r'^revision(?:: str)? = "([^"]+)"', path.read_text(), re.MULTILINE)
        assert found, f"{path.name} declares no revision"
        declared[path.name] = found.group(1)
        assert path.name.startswith(found.group(1) + "_"), f"{path.name} declares revision {found.group(1)}"
    assert len(set(declared.values())) == len(declared), f"revision ids used twice: {declared}"
    config = Config()
    config.set_main_option("script_location", str(migrations))
    script = ScriptDirectory.from_config(config)
    assert len(script.get_heads()) == 1, f"more than one head: {script.get_heads()}"
    chain = list(script.walk_revisions())
    assert len(chain) == len(files), "a migration is not on the chain from the head to the base"
