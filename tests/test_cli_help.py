"""The command line's help speaks the terminal's language: every command, group and option
has its Korean help under a Korean LANG, and English otherwise."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

# Walks the click tree of `easel` and prints each command's and each option's help.
DUMP_HELP = """
import json
import typer.main
from bot.cli import app

def walk(command, path):
    yield " ".join(path), command.help or ""
    for parameter in command.params:
        if getattr(parameter, "help", None) is not None or parameter.name != "help":
            yield " ".join(path) + " " + parameter.name, getattr(parameter, "help", None) or ""
    for name, child in getattr(command, "commands", {}).items():
        yield from walk(child, [*path, name])

root = typer.main.get_command(app)
print(json.dumps(dict(walk(root, ["easel"]))))
"""
HANGUL = re.compile("[\uac00-\ud7a3]")


def help_texts(lang: str) -> dict[str, str]:
    env = {**os.environ, "LANG": lang}
    env.pop("EASEL_LANG", None)
    done = subprocess.run(
        [sys.executable, "-c", DUMP_HELP], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_command_and_option_has_korean_help_under_a_korean_lang() -> None:
    korean = help_texts("ko_KR.UTF-8")
    english = help_texts("C.UTF-8")
    # Arguments carry no help in click; options and commands do.
    missing = [name for name, text in korean.items() if text and not HANGUL.search(text)]
    undocumented = [name for name, text in english.items() if not text and " " not in name]
    assert not missing, f"no Korean help: {missing}"
    assert not undocumented, f"no help at all: {undocumented}"
    assert korean.keys() == english.keys()
    assert not any(HANGUL.search(text) for text in english.values())
    assert "imagine" in " ".join(korean)
