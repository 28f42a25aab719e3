"""`make test-unit`, `make test-integration` and `make test-e2e` split the tests honestly: each test is of one
kind, the unit tests start no server, and the three targets together run what `make test` runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
PATHS = ["tests/kit", "tests/e2e/test_local_run.py", "tests/gateway/test_rendering.py"]

# Collects the tests under the given paths and prints each one's kinds, as JSON.
KINDS = """
import json, sys
import pytest

class Kinds:
    def pytest_collection_finish(self, session):
        kinds = {
            item.nodeid.split("[", 1)[0]: sorted(
                {m.name for m in item.iter_markers() if m.name in ("unit", "integration", "e2e")}
            )
            for item in session.items
        }
        print("KINDS " + json.dumps(kinds))

pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[Kinds()])
"""


def test_each_test_is_of_one_kind() -> None:
    output = subprocess.run(
        [sys.executable, "-c", KINDS, *PATHS], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    kinds: dict[str, list[str]] = json.loads(output.split("KINDS ", 1)[1].splitlines()[0])
    assert [test for test, marked in kinds.items() if len(marked) != 1] == []
    assert kinds["tests/kit/test_money.py::test_an_unknown_code_has_two_digits"] == ["unit"]
    assert kinds[
        "tests/gateway/test_rendering.py::test_whole_numbers_from_a_struct_render_without_a_fraction"
    ] == ["unit"]
    # PostgreSQL through make_database; servers started by the test itself; the real run.
    assert kinds["tests/kit/test_db.py::test_other_errors_are_raised_at_once"] == ["integration"]
    assert kinds["tests/kit/embedded/test_embedded_run.py::test_a_service_that_dies_is_started_again"] == [
        "integration"
    ]
    assert kinds["tests/e2e/test_local_run.py::test_local_run_serves_all_five_and_stops_on_ctrl_c"] == ["e2e"]


def test_unit_tests_start_no_server() -> None:
    plan = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--setup-plan",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "unit",
            *PATHS,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "test_money.py" in plan
    servers = ("postgres", "nats_server", "smtp_sink")
    assert [line for line in plan.splitlines() if "SETUP    S" in line and line.split()[2] in servers] == []


def test_the_make_targets_select_the_kinds() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target, kind in (("test-unit", "unit"), ("test-integration", "integration"), ("test-e2e", "e2e")):
        recipe = makefile.split(f"\n{target}: env\n", 1)[1].split("\n\n", 1)[0]
        assert recipe.strip() == f"$(PY) -m pytest -q -m {kind}", target
    assert makefile.split("\ntest: env\n", 1)[1].split("\n\n", 1)[0].strip() == "$(PY) -m pytest -q"
