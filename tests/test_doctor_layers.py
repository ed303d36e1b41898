"""`easel doctor` depends on the store, never on the command line's modules, and what it
prints goes through the same secret masking as the logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bot.store import missing_sqlite_file

ROOT = Path(__file__).resolve().parent.parent


def test_a_missing_sqlite_file_is_named_and_other_databases_are_not(tmp_path: Path) -> None:
    there = tmp_path / "easel.db"
    there.write_bytes(b"")
    assert missing_sqlite_file(f"sqlite:///{tmp_path}/new.db") == tmp_path / "new.db"
    assert missing_sqlite_file(f"sqlite:///{there}") is None
    assert missing_sqlite_file("sqlite://") is None
    assert missing_sqlite_file("sqlite:///:memory:") is None
    assert missing_sqlite_file("postgresql+psycopg://easel:pw@db/easel") is None


def test_the_database_check_loads_no_command_line_module(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from bot.doctor.storage import check_database\n"
        "from bot.settings import Settings\n"
        f"check = check_database(Settings(_env_file=None, database_url='sqlite:///{tmp_path}/"
        "new.db'))\n"
        "print(json.dumps([check.detail, sorted(m for m in sys.modules if m.startswith("
        "'bot.cli'))]))"
    )
    finished = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    detail, cli_modules = json.loads(finished.stdout.splitlines()[-1])
    assert detail == f"no database yet: {tmp_path}/new.db does not exist"
    assert cli_modules == []
