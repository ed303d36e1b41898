"""`easel presets list|check|reload` and `easel models [list]|use` as an operator runs them,
beside (or without) a running bot: what they print, what they write to the database, and
what they refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from bot.cli import app
from bot.cli.common import out
from bot.store import Store

PRESETS = """
[presets.ink]
description_en = "Ink"
description_ko = "잉크"
loras = [{ name = "ink-v1", unet = 0.8, te = 0.5 }]
trigger = "ink drawing"

[presets.pixel-art]
description_en = "Pixel art"
description_ko = "픽셀 아트"
loras = [{ name = "pixel-v2", source = "https://example.com/pixel-v2" }]
trigger = "pixel art, 8-bit"
"""


@pytest.fixture(autouse=True)
def wide_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as on a wide terminal, so that a cell's text is on one line."""
    monkeypatch.setattr(out, "_width", 240)


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated database the commands open (the setting's variable is DATABASE_URL)."""
    url = f"sqlite:///{tmp_path}/easel.db"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("EASEL_OUTPUTS_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    store = Store(url)
    store.upgrade()
    store.close()
    return url


@pytest.fixture
def presets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A models folder with presets.toml, one preset's LoRA present and one's missing."""
    models = tmp_path / "models"
    (models / "lora").mkdir(parents=True)
    (models / "lora" / "ink-v1.safetensors").write_bytes(b"")
    (models / "presets.toml").write_text(PRESETS, encoding="utf-8")
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models))
    return models


@pytest.fixture
def checkpoints(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models_dir))
    return models_dir


def easel(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def control(url: str) -> tuple[str | None, int]:
    store = Store(url)
    try:
        state = store.control_state()
        return state.model, state.sources_revision
    finally:
        store.close()


# ---------------------------------------------------------------- presets


def test_presets_list_shows_loras_weights_triggers_and_missing_files(presets_dir: Path) -> None:
    result = easel("presets", "list")
    assert result.exit_code == 0, result.output
    assert "ink-v1 0.8/0.5" in result.stdout
    assert "pixel-v2 1/1 (missing)" in result.stdout
    assert "pixel art, 8-bit" in result.stdout and "잉크" in result.stdout
    assert "all present" in result.stdout


def test_presets_list_json_is_one_document(presets_dir: Path) -> None:
    result = easel("presets", "list", "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing["presets_file"] == str(presets_dir / "presets.toml")
    by_id = {preset["id"]: preset for preset in listing["presets"]}
    assert list(by_id) == ["ink", "pixel-art"]
    ink = by_id["ink"]
    assert ink["description_ko"] == "잉크" and ink["trigger"] == "ink drawing"
    assert ink["loras"] == [
        {"name": "ink-v1", "unet": 0.8, "te": 0.5, "present": True, "source": ""}
    ]
    assert ink["complete"] is True
    assert by_id["pixel-art"]["complete"] is False
    assert by_id["pixel-art"]["loras"][0]["source"] == "https://example.com/pixel-v2"


def test_presets_list_of_a_broken_file_says_why_and_exits_1(presets_dir: Path) -> None:
    (presets_dir / "presets.toml").write_text("[presets.ink\n", encoding="utf-8")
    result = easel("presets", "list")
    assert result.exit_code == 1
    assert "presets.toml: cannot read it" in result.stderr
    assert "Traceback" not in result.output


def test_presets_check_names_the_missing_lora_and_exits_1(presets_dir: Path) -> None:
    result = easel("presets", "check")
    assert result.exit_code == 1
    assert "Preset 'pixel-art' needs pixel-v2.safetensors" in result.stderr
    assert "https://example.com/pixel-v2" in result.stderr
    assert "ink" not in result.stderr  # its file is there

    as_json = easel("presets", "check", "--json")
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert [(p["kind"], p["preset"], p["lora"]) for p in report["problems"]] == [
        ("missing_lora", "pixel-art", "pixel-v2")
    ]


def test_presets_check_passes_once_the_file_is_there(presets_dir: Path) -> None:
    (presets_dir / "lora" / "pixel-v2.safetensors").write_bytes(b"")
    result = easel("presets", "check")
    assert result.exit_code == 0, result.output
    assert "OK: 2 preset(s)" in result.stdout
    report = json.loads(easel("presets", "check", "--json").stdout)
    assert report["ok"] is True and report["problems"] == []


def test_presets_check_reports_parse_errors_and_a_broken_vocabulary(presets_dir: Path) -> None:
    (presets_dir / "presets.toml").write_text(
        '[presets.ink]\ndescription_en = "Ink"\n', encoding="utf-8"
    )
    (presets_dir / "vocabulary.toml").write_text("not = [valid", encoding="utf-8")
    result = easel("presets", "check", "--json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    kinds = [problem["kind"] for problem in problems]
    assert kinds == ["presets_file", "vocabulary"], problems
    assert "'description_ko' is missing" in problems[0]["message"]


def test_presets_reload_bumps_the_shared_row(presets_dir: Path, database: str) -> None:
    assert control(database) == (None, 0)
    result = easel("presets", "reload")
    assert result.exit_code == 0, result.output
    assert "Asked the bot to reload" in result.stdout
    assert "pixel-v2.safetensors" in result.stderr  # what the bot will find wrong, said now
    assert control(database) == (None, 1)

    as_json = easel("presets", "reload", "--json")
    assert as_json.exit_code == 0, as_json.output
    asked = json.loads(as_json.stdout)
    assert asked["sources_revision"] == 2 and asked["changed_by"].startswith("cli")
    assert asked["ok"] is False and asked["check"]["presets"][0]["id"] == "ink"
    assert control(database) == (None, 2)


def test_presets_reload_without_a_database_says_what_to_do(
    presets_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/none.db")
    result = easel("presets", "reload")
    assert result.exit_code == 1
    assert "No database yet" in str(result.exception)  # `easel` prints it as one line
    assert not (tmp_path / "none.db").exists()


# ---------------------------------------------------------------- models


def test_models_alone_and_models_list_show_the_checkpoints(
    checkpoints: Path, database: str
) -> None:
    for args in (["models"], ["models", "list"]):
        result = easel(*args)
        assert result.exit_code == 0, result.output
        assert "tiny-sd1-single" in result.stdout and "SD 1.x" in result.stdout
        assert "Chosen for the bot: none" in result.stdout


def test_models_list_json_says_which_is_chosen(checkpoints: Path, database: str) -> None:
    listing = json.loads(easel("models", "list", "--json").stdout)
    assert [row["name"] for row in listing["checkpoints"]] == ["tiny-sd1", "tiny-sd1-single"]
    assert listing["chosen"] is None
    single = listing["checkpoints"][1]
    assert single["kind"] == "single-file" and len(single["short_hash"]) == 10
    assert (
        single["size_bytes"]
        == (checkpoints / "stable-diffusion" / "tiny-sd1-single.safetensors").stat().st_size
    )

    assert easel("models", "use", "tiny-sd1-single").exit_code == 0
    listing = json.loads(easel("models", "--json").stdout)
    assert listing["chosen"] == "tiny-sd1-single"
    assert [row["chosen"] for row in listing["checkpoints"]] == [False, True]


def test_models_use_writes_the_choice_and_default_clears_it(
    checkpoints: Path, database: str
) -> None:
    result = easel("models", "use", "TINY-SD1-SINGLE")  # case is forgiven when unambiguous
    assert result.exit_code == 0, result.output
    assert "Jobs queued from now on run on tiny-sd1-single" in result.stdout
    assert control(database)[0] == "tiny-sd1-single"

    as_json = easel("models", "use", "tiny-sd1", "--json")
    assert as_json.exit_code == 0, as_json.output
    choice = json.loads(as_json.stdout)
    assert choice["model"] == "tiny-sd1" and choice["changed_by"].startswith("cli")
    assert control(database)[0] == "tiny-sd1"

    cleared = easel("models", "use", "--default", "--json")
    assert cleared.exit_code == 0, cleared.output
    assert json.loads(cleared.stdout)["model"] is None
    assert control(database)[0] is None


def test_models_use_refuses_what_is_not_a_local_checkpoint(
    checkpoints: Path, database: str, tmp_path: Path
) -> None:
    assert easel("models", "use", "tiny-sd1").exit_code == 0
    for name in ("tiny-sd3", "stable-diffusion-v1-5/stable-diffusion-v1-5"):
        result = easel("models", "use", name)
        assert result.exit_code == 1, result.output
        assert f"No checkpoint named {name!r}" in result.stderr
        assert "tiny-sd1, tiny-sd1-single" in result.stderr
    assert control(database)[0] == "tiny-sd1"  # unchanged

    usage = easel("models", "use")
    assert usage.exit_code == 2 and "--default" in usage.output
    both = easel("models", "use", "tiny-sd1", "--default")
    assert both.exit_code == 2
    assert control(database)[0] == "tiny-sd1"


def test_models_use_refuses_a_broken_checkpoint_file(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    (models / "stable-diffusion").mkdir(parents=True)
    (models / "stable-diffusion" / "half.safetensors").write_bytes(b"\x10\x00not a header")
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models))
    result = easel("models", "use", "half")
    assert result.exit_code == 1
    assert "half cannot be used" in result.stderr
    assert control(database)[0] is None


def test_the_commands_answer_in_korean_under_a_korean_terminal(
    checkpoints: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_LANG", "ko")
    chosen = easel("models", "use", "tiny-sd1-single")
    assert chosen.exit_code == 0, chosen.output
    assert "이제부터 대기열에 들어오는 작업은 tiny-sd1-single(으)로 실행됩니다" in chosen.stdout
    refused = easel("models", "use", "tiny-sd3")
    assert refused.exit_code == 1
    assert "체크포인트를 바꾸지 않았습니다" in refused.stderr
    assert control(database)[0] == "tiny-sd1-single"
    asked = easel("presets", "reload")
    assert "봇에 presets.toml과 어휘를 다시 읽으라고 요청했습니다" in asked.stdout
