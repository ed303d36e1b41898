"""Refused requests speak the user's language: every user-facing InvalidRequestError carries a
Korean text, and the core shows it to a Korean user (the CLI keeps the English)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.core.dispatcher import Dispatcher
from bot.core.events import message_to_json
from bot.core.messages import error_text
from bot.settings import Settings
from pipeline.engine import Engine
from pipeline.errors import InvalidRequestError
from pipeline.executors.local import _failed
from pipeline.executors.work import Task
from pipeline.lora_names import UnknownLoraError
from pipeline.presets import UnknownPresetError
from pipeline.prompts.syntax import WeightOutOfRange
from pipeline.prompts.vocabulary import UnknownVocabularyId
from pipeline.sampler_names import resolve_sampler_name
from tests.test_console import chat, console_settings

REPO = Path(__file__).resolve().parents[1]
HANGUL = re.compile(r"[\uac00-\ud7a3]")
# Raise sites whose message no chat user can see: argument checks on internal helpers (a grid
# of no images, an encoder budget, a file suffix, upscale tiling) and the English-only CLI.
ENGLISH_ONLY = {
    ("pipeline/images.py", "grid_shape"),
    ("pipeline/images.py", "make_grid"),
    ("pipeline/images.py", "encode_within_limit"),
    ("pipeline/images.py", "_lossy_format"),
    ("pipeline/images.py", "_encode_lossy_within"),
    ("pipeline/images.py", "output_path"),
    ("pipeline/upscale.py", "_validate_tiling"),
}
ENGLISH_ONLY_FOLDERS = ("bot/cli/",)


def _error_family(trees: dict[str, ast.Module]) -> set[str]:
    """InvalidRequestError and every class that derives from it, by name."""
    family = {"InvalidRequestError"}
    classes = [node for tree in trees.values() for node in ast.walk(tree)]
    classes = [node for node in classes if isinstance(node, ast.ClassDef)]
    grew = True
    while grew:
        grew = False
        for node in classes:
            bases = {base.id for base in node.bases if isinstance(base, ast.Name)}
            if node.name not in family and bases & family:
                family.add(node.name)
                grew = True
    return family


def _own_init_classes(trees: dict[str, ast.Module], family: set[str]) -> dict[str, ast.FunctionDef]:
    found: dict[str, ast.FunctionDef] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in family - {"InvalidRequestError"}:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        found[node.name] = item
    return found


def _gives_korean(call: ast.Call) -> bool:
    return len(call.args) >= 2 or any(keyword.arg == "ko" for keyword in call.keywords)


def _sources() -> dict[str, ast.Module]:
    files = [*sorted((REPO / "pipeline").rglob("*.py")), *sorted((REPO / "bot").rglob("*.py"))]
    return {str(path.relative_to(REPO)): ast.parse(path.read_text()) for path in files}


def _functions_with_calls(tree: ast.Module) -> list[tuple[str, ast.Call]]:
    """(enclosing function, call) for every `raise X(...)` and `return X(...)`."""
    found: list[tuple[str, ast.Call]] = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            value = node.exc if isinstance(node, ast.Raise) else None
            if isinstance(node, ast.Return):
                value = node.value
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
                found.append((function.name, value))
    return found


def test_every_user_facing_invalid_request_error_is_raised_with_korean() -> None:
    trees = _sources()
    family = _error_family(trees)
    own_init = _own_init_classes(trees, family)
    missing: list[str] = []
    for name, init in own_init.items():  # these build both texts themselves
        supers = [
            node
            for node in ast.walk(init)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "__init__"
        ]
        if not any(_gives_korean(call) for call in supers):
            missing.append(f"{name}.__init__ gives no Korean to super().__init__")
    checked = 0
    english_only_seen: set[tuple[str, str]] = set()
    for path, tree in trees.items():
        if path.startswith(ENGLISH_ONLY_FOLDERS):
            continue
        for function, call in _functions_with_calls(tree):
            name = call.func.id  # type: ignore[attr-defined]
            if name not in family or name in own_init:
                continue
            checked += 1
            if (path, function) in ENGLISH_ONLY:
                english_only_seen.add((path, function))
            elif not _gives_korean(call):
                missing.append(
                    f"{path}:{call.lineno} in {function}() raises {name} in English only"
                )
    assert checked > 40  # the walk really sees the raise sites
    assert english_only_seen == ENGLISH_ONLY  # no stale exemption
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize(
    "error",
    [
        UnknownPresetError("nope", None, ["pixel-art", "voxel-art"]),
        UnknownPresetError("pixle-art", "pixel-art", ["pixel-art"]),
        UnknownLoraError("nope", "noodle", ["noodle"]),
        UnknownVocabularyId("style", "watercolour", "watercolor"),
        WeightOutOfRange("lora", "<lora:x:9>", 9.0, -4.0, 4.0),
        WeightOutOfRange("emphasis", "cat", 9.0, 0.0, 4.0),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_built_from_fields_have_a_korean_text(error: InvalidRequestError) -> None:
    assert HANGUL.search(error.message("ko"))
    assert error.message("en") == str(error) == error.en
    assert not HANGUL.search(str(error))


def test_unknown_sampler_says_so_in_korean() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        resolve_sampler_name("Eulr a")
    assert caught.value.message("ko-KR").startswith("알 수 없는 샘플러입니다: 'Eulr a'.")
    assert str(caught.value).startswith("Unknown sampler 'Eulr a'. Did you mean 'Euler a'?")


def test_an_error_without_korean_shows_its_english_text() -> None:
    error = InvalidRequestError("Something only a program sees.")
    assert error.message("ko") == "Something only a program sees."
    assert error_text(error).in_locale("ko") == "Something only a program sees."


def test_a_failed_job_keeps_both_languages_in_the_stored_message() -> None:
    """A job refused when it runs (its LoRA went missing) is told to a Korean user in Korean,
    from the message the dispatcher stores in the job's error column."""
    outcome = _failed(Task(7, None), UnknownLoraError("nope", None, []))  # type: ignore[arg-type]
    assert outcome.failure is not None
    assert outcome.failure.detail.startswith("Unknown LoRA 'nope'.")
    # The INVALID branch uses neither the dispatcher nor the job.
    made = Dispatcher._failure_message(None, None, outcome.failure)  # type: ignore[arg-type]
    job = SimpleNamespace(id=7, error=message_to_json(made))
    told = Dispatcher.failure_message(None, job)  # type: ignore[arg-type]
    assert told.render("ko").startswith("작업 #7 실패: 알 수 없는 LoRA입니다: 'nope'.")
    assert told.render("en").startswith("Job #7 failed: Unknown LoRA 'nope'.")


# --------------------------------------------------------------------------- through the console


def _korean_refusal(output: str, fragment: str) -> None:
    """The refusal holds `fragment`, and no English sentence is left in it."""
    lines = [line for line in output.splitlines() if "실행할 수 없습니다" in line]
    assert lines, output
    refusal = next((line for line in lines if fragment in line), None)
    assert refusal is not None, output
    assert not re.search(r"\b(?:the|is|are|must|not|Unknown|limit)\b", refusal), refusal


@pytest.fixture
def korean_settings(tmp_path: Path, models_dir: Path) -> Settings:
    return console_settings(tmp_path, models_dir)


def test_korean_user_gets_korean_refusals_in_the_console(
    korean_settings: Settings, engine: Engine
) -> None:
    long_prompt = "a very long prompt about a small red cat " * 100  # 12 chunks; 8 allowed
    lines = [
        "/imagine a cat --preset nope",
        f"/imagine {long_prompt}",
        "/imagine big --size 512x512 --hires 4",
        "/admin rules preset nope",
    ]
    output = chat(korean_settings, engine, lines, "ko")
    _korean_refusal(output, "알 수 없는 프리셋입니다: 'nope'. 프리셋: 없음(presets.toml에")
    _korean_refusal(output, "75토큰 단위 12개를 차지합니다")
    _korean_refusal(output, "Hires fix로 2048x2048로 키우면 4,194,304픽셀입니다.")
    assert output.count("알 수 없는 프리셋입니다: 'nope'.") == 2  # /imagine and /admin rules
    assert "Unknown preset" not in output
    assert "chunks of 75 tokens" not in output


def test_english_user_keeps_the_english_refusals(korean_settings: Settings, engine: Engine) -> None:
    output = chat(korean_settings, engine, ["/imagine a cat --preset nope"], "en")
    assert "Unknown preset 'nope'. Presets: none (presets.toml defines none)." in output
    assert not HANGUL.search(output)
