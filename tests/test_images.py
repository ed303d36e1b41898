"""Tests for pipeline.images: infotext format/parse, PNG/EXIF metadata, grids, encodings, paths."""

from __future__ import annotations

import io
import multiprocessing
import random
import re
import threading
import zlib
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from sd_parsers import ParserManager
from sd_parsers.data import Generators

from pipeline.errors import InvalidRequestError
from pipeline.images import (
    EncodedImage,
    Infotext,
    encode_within_limit,
    format_infotext,
    grid_shape,
    make_grid,
    output_path,
    parse_infotext,
    read_infotext,
    safe_stem,
    save_png,
)

BASIC = Infotext(
    prompt="a cat",
    steps=20,
    sampler="Euler a",
    cfg_scale=7.0,
    seed=123,
    width=512,
    height=512,
    model_hash="0123456789",
    model="tiny",
)

FULL = Infotext(
    prompt="a cat, on a mat",
    negative_prompt="blurry",
    steps=30,
    sampler="DPM++ 2M",
    schedule_type="Karras",
    cfg_scale=7.5,
    seed=4242,
    width=768,
    height=512,
    model_hash="abcdef0123",
    model="sd15",
    variation_seed=99,
    variation_seed_strength=0.25,
    denoising_strength=0.75,
    clip_skip=2,
    tiling=True,
    version="v1.10.1",
    extra=(("Hires upscale", "2"), ("Lora hashes", "detail: 7c6bad76eb54")),
)

KOREAN = Infotext(
    prompt="고양이, 벚꽃 아래에서: 수채화",
    negative_prompt="흐릿함",
    steps=20,
    sampler="Euler a",
    cfg_scale=7.0,
    seed=7,
    width=64,
    height=64,
)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    data = random.Random(seed).randbytes(width * height * 3)
    return Image.frombytes("RGB", (width, height), data)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (10, 8)) -> Image.Image:
    return Image.new("RGB", size, color)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- format


def test_format_basic_exact() -> None:
    assert format_infotext(BASIC) == (
        "a cat\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512, "
        "Model hash: 0123456789, Model: tiny"
    )


def test_format_all_keys_in_a1111_order_exact() -> None:
    assert format_infotext(FULL) == (
        "a cat, on a mat\n"
        "Negative prompt: blurry\n"
        "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 4242, "
        "Size: 768x512, Model hash: abcdef0123, Model: sd15, Variation seed: 99, "
        "Variation seed strength: 0.25, Denoising strength: 0.75, Clip skip: 2, Tiling: True, "
        'Hires upscale: 2, Lora hashes: "detail: 7c6bad76eb54", Version: v1.10.1'
    )


def test_format_writes_rng_between_clip_skip_and_tiling() -> None:
    info = Infotext(
        prompt="p",
        steps=20,
        sampler="Euler",
        seed=1,
        clip_skip=2,
        rng="CPU",
        tiling=True,
        version="x",
    )
    assert format_infotext(info).endswith("Clip skip: 2, RNG: CPU, Tiling: True, Version: x")


def test_format_leaves_out_defaults() -> None:
    info = Infotext(prompt="p", steps=4, sampler="Euler", seed=1, clip_skip=1, width=64)
    assert format_infotext(info) == "p\nSteps: 4, Sampler: Euler, Seed: 1"


def test_format_quotes_commas_colons_and_newlines_like_a1111() -> None:
    info = Infotext(
        prompt="line one\nline two",
        negative_prompt="bad\nworse",
        steps=20,
        sampler="Euler",
        seed=1,
        model="merge, v2",
        extra=(("Note", "a:b"), ("Multi", "x\ny"), ("Plain", 'say "hi" there')),
    )
    assert format_infotext(info) == (
        "line one\nline two\n"
        "Negative prompt: bad\nworse\n"
        'Steps: 20, Sampler: Euler, Seed: 1, Model: "merge, v2", Note: "a:b", '
        'Multi: "x\\ny", Plain: say "hi" there'
    )


def test_format_keeps_non_ascii_unescaped_in_quotes() -> None:
    info = Infotext(prompt="p", steps=1, sampler="Euler", seed=1, model="모델, 하나")
    assert format_infotext(info).endswith('Model: "모델, 하나"')


def test_format_without_prompts_is_only_the_parameter_line() -> None:
    info = Infotext(prompt="", steps=1, sampler="Euler", seed=2)
    assert format_infotext(info) == "Steps: 1, Sampler: Euler, Seed: 2"


@pytest.mark.parametrize(
    ("cfg", "written"),
    [(7.0, "7"), (7.5, "7.5"), (0.75, "0.75"), (12.25, "12.25"), (1e-05, "1e-05")],
)
def test_format_floats_the_short_way(cfg: float, written: str) -> None:
    info = Infotext(prompt="p", steps=1, sampler="Euler", cfg_scale=cfg)
    assert format_infotext(info) == f"p\nSteps: 1, Sampler: Euler, CFG scale: {written}"


# --------------------------------------------------------------------------- parse

A1111_TEXT = (
    "masterpiece, 1girl, (smile:1.2)\n"
    "looking at viewer\n"
    "Negative prompt: lowres, bad anatomy\n"
    "extra fingers\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592653, "
    "Size: 832x1216, Model hash: 7f96a1a9ca, Model: animagineXL, Denoising strength: 0.4, "
    "Clip skip: 2, Hires upscale: 1.5, Hires upscaler: R-ESRGAN 4x+ Anime6B, "
    'Lora hashes: "add_detail: 7c6bad76eb54, more_art: 1f2a", Version: v1.10.1'
)


def test_parse_a1111_text() -> None:
    assert parse_infotext(A1111_TEXT) == Infotext(
        prompt="masterpiece, 1girl, (smile:1.2)\nlooking at viewer",
        negative_prompt="lowres, bad anatomy\nextra fingers",
        steps=28,
        sampler="DPM++ 2M",
        schedule_type="Karras",
        cfg_scale=6.5,
        seed=3141592653,
        width=832,
        height=1216,
        model_hash="7f96a1a9ca",
        model="animagineXL",
        denoising_strength=0.4,
        clip_skip=2,
        version="v1.10.1",
        extra=(
            ("Hires upscale", "1.5"),
            ("Hires upscaler", "R-ESRGAN 4x+ Anime6B"),
            ("Lora hashes", "add_detail: 7c6bad76eb54, more_art: 1f2a"),
        ),
    )


def test_parse_then_format_reproduces_a1111_text() -> None:
    parsed = parse_infotext(A1111_TEXT)
    assert parsed is not None
    assert format_infotext(parsed) == A1111_TEXT


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n  ",
        "a cat on a mat",
        "a cat\nNegative prompt: dog",
        "a cat\nSteps: 20, Seed: 1",
        '{"prompt": "a cat", "steps": 20, "seed": 1, "sampler": "euler"}',
    ],
)
def test_parse_returns_none_without_a_parameter_line(text: str) -> None:
    assert parse_infotext(text) is None


def test_parse_reads_rng_into_its_field_not_extra() -> None:
    parsed = parse_infotext(
        "p\nSteps: 20, Sampler: Euler, Seed: 1, Clip skip: 2, RNG: NV, Tiling: True, Version: x"
    )
    assert parsed == Infotext(
        prompt="p",
        steps=20,
        sampler="Euler",
        seed=1,
        clip_skip=2,
        rng="NV",
        tiling=True,
        version="x",
    )
    assert parsed.extra == ()


def test_parse_keeps_values_that_do_not_convert_in_extra() -> None:
    parsed = parse_infotext("p\nSteps: many, Sampler: Euler, Seed: 0x1f, Size: big, Tiling: yes")
    assert parsed == Infotext(
        prompt="p",
        sampler="Euler",
        extra=(("Steps", "many"), ("Seed", "0x1f"), ("Size", "big"), ("Tiling", "yes")),
    )


def test_parse_strips_windows_line_endings_and_outer_whitespace() -> None:
    parsed = parse_infotext(
        "  a cat\r\nNegative prompt: dog\r\nSteps: 5, Sampler: Euler, Seed: 3\r\n"
    )
    assert parsed == Infotext(
        prompt="a cat", negative_prompt="dog", steps=5, sampler="Euler", seed=3
    )


ROUND_TRIP_CASES = [
    BASIC,
    FULL,
    KOREAN,
    Infotext(prompt="p", steps=1, sampler="Euler", seed=-1),
    Infotext(prompt="", negative_prompt="only negative", steps=1, sampler="Euler", seed=1),
    Infotext(
        prompt="a, b: c\n(d:1.2), e\n\nafter blank line",
        negative_prompt="bad, worse\nworst: yes",
        steps=50,
        sampler="DPM++ SDE",
        cfg_scale=3.25,
        seed=2**32 - 1,
        width=1024,
        height=576,
    ),
    Infotext(prompt="x", steps=20, sampler="Euler a", seed=5, model="merge, v2: final"),
    Infotext(
        prompt="x",
        steps=20,
        sampler="Euler a",
        seed=5,
        extra=(
            ("Quoted", 'he said "hi", twice'),
            ("Backslash", "C:\\models\\a.safetensors"),
            ("Newline", "one\ntwo"),
            ("Empty", ""),
        ),
        version="f2.0.1v1.10.1-previous",
    ),
    Infotext(prompt="x", steps=20, sampler="Euler", seed=1, tiling=True, clip_skip=12),
    Infotext(
        prompt="x",
        steps=20,
        sampler="Euler",
        seed=1,
        clip_skip=2,
        rng="CPU",
        tiling=True,
        extra=(("Hires upscale", "2"),),
        version="x",
    ),
    Infotext(prompt="x", steps=20, sampler="Euler", seed=1, denoising_strength=0.0),
    Infotext(prompt="x", steps=20, sampler="Euler", seed=1, extra=(("Steps", "not a number"),)),
]


@pytest.mark.parametrize("info", ROUND_TRIP_CASES)
def test_round_trip(info: Infotext) -> None:
    assert parse_infotext(format_infotext(info)) == info


# --------------------------------------------------------------------------- PNG / EXIF


def test_save_png_writes_a_parameters_chunk(tmp_path: Path) -> None:
    path = save_png(solid((1, 2, 3)), tmp_path / "a.png", BASIC)
    assert path == tmp_path / "a.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.info["parameters"] == format_infotext(BASIC)
    assert b"tEXtparameters\x00" in path.read_bytes()


def test_read_infotext_from_path_bytes_and_image(tmp_path: Path) -> None:
    path = save_png(solid((1, 2, 3)), tmp_path / "a.png", FULL)
    assert read_infotext(path) == FULL
    assert read_infotext(path.read_bytes()) == FULL
    with Image.open(path) as image:
        assert read_infotext(image) == FULL


def test_korean_prompt_survives_in_itxt(tmp_path: Path) -> None:
    path = save_png(solid((9, 9, 9)), tmp_path / "k.png", KOREAN)
    assert b"iTXtparameters\x00" in path.read_bytes()
    assert read_infotext(path) == KOREAN


def test_read_infotext_finds_a_chunk_after_the_image_data(tmp_path: Path) -> None:
    data = png_bytes(solid((5, 5, 5)))
    chunk = b"parameters\x00" + format_infotext(BASIC).encode("latin-1")
    trailer = data[-12:]  # IEND
    late = data[:-12] + _png_chunk(b"tEXt", chunk) + trailer
    assert read_infotext(late) == BASIC


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body).to_bytes(4, "big")
    return len(body).to_bytes(4, "big") + kind + body + crc


def test_read_infotext_is_none_for_a_foreign_png() -> None:
    assert read_infotext(png_bytes(solid((1, 1, 1)))) is None


def test_read_infotext_is_none_for_a_png_with_a_non_a1111_parameters_chunk(
    tmp_path: Path,
) -> None:
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text("parameters", '{"prompt": "fooocus json", "seed": 1}')
    Image.new("RGB", (4, 4)).save(tmp_path / "f.png", pnginfo=pnginfo)
    assert read_infotext(tmp_path / "f.png") is None


def test_read_infotext_is_none_for_a_foreign_jpeg() -> None:
    buffer = io.BytesIO()
    solid((200, 10, 10)).save(buffer, format="JPEG")
    assert read_infotext(buffer.getvalue()) is None


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"hello, world",
        bytes(range(256)) * 4,
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\xff" * 30,
        b"\xff\xd8\xff\xe1" + b"\x12" * 64,
        b"GIF89a" + b"\x01" * 20,
        b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 12,
    ],
)
def test_read_infotext_rejects_non_image_bytes(junk: bytes) -> None:
    with pytest.raises(InvalidRequestError, match="not an image"):
        read_infotext(junk)


def test_read_infotext_rejects_a_non_image_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not really a png")
    with pytest.raises(InvalidRequestError, match=r"not an image: .*notes\.png"):
        read_infotext(path)


# --------------------------------------------------------------------------- sd-parsers


def _sd_parsers_fields(result: object) -> dict[str, object]:
    """The fields sd-parsers 0.6 gives for an A1111 image; its values are all strings."""
    assert result is not None
    sampler = result.samplers[0]  # type: ignore[attr-defined]
    return {
        "generator": result.generator,  # type: ignore[attr-defined]
        "prompt": result.full_prompt,  # type: ignore[attr-defined]
        "negative_prompt": result.full_negative_prompt,  # type: ignore[attr-defined]
        "sampler": sampler.name,
        "seed": sampler.parameters["seed"],
        "steps": sampler.parameters["steps"],
        "cfg_scale": sampler.parameters["cfg_scale"],
        "size": result.metadata["Size"],  # type: ignore[attr-defined]
        "model": sampler.model.name if sampler.model else None,
    }


SD_PARSERS_CASE = Infotext(
    prompt="a lighthouse at dusk, (oil painting:1.2)\nwide shot",
    negative_prompt="blurry, lowres",
    steps=25,
    sampler="DPM++ 2M",
    schedule_type="Karras",
    cfg_scale=6.5,
    seed=3141592653,
    width=512,
    height=768,
    model_hash="0123456789",
    model="tiny",
)


@pytest.mark.parametrize("info", [SD_PARSERS_CASE, KOREAN], ids=["latin", "korean"])
def test_sd_parsers_reads_our_png(tmp_path: Path, info: Infotext) -> None:
    path = save_png(solid((30, 60, 90)), tmp_path / "out.png", info)
    fields = _sd_parsers_fields(ParserManager().parse(path))
    assert fields == {
        "generator": Generators.AUTOMATIC1111,
        "prompt": info.prompt,
        "negative_prompt": info.negative_prompt,
        "sampler": info.sampler,
        "seed": str(info.seed),
        "steps": str(info.steps),
        "cfg_scale": format(info.cfg_scale, "g"),
        "size": f"{info.width}x{info.height}",
        "model": info.model,
    }


@pytest.mark.parametrize("prefer", ["JPEG", "WEBP"])
def test_sd_parsers_reads_our_lossy_encoding(prefer: str) -> None:
    encoded = encode_within_limit(noise_image(128, 128), 20_000, SD_PARSERS_CASE, prefer=prefer)
    assert encoded.format == prefer
    with Image.open(io.BytesIO(encoded.data)) as image:
        fields = _sd_parsers_fields(ParserManager().parse(image))
    assert fields["prompt"] == SD_PARSERS_CASE.prompt
    assert fields["negative_prompt"] == SD_PARSERS_CASE.negative_prompt
    assert fields["seed"] == "3141592653"
    assert fields["steps"] == "25"
    assert fields["sampler"] == "DPM++ 2M"
    assert fields["cfg_scale"] == "6.5"
    assert fields["size"] == "512x768"


# --------------------------------------------------------------------------- grids


@pytest.mark.parametrize(
    ("n", "shape"),
    [
        (1, (1, 1)),
        (2, (1, 2)),
        (3, (2, 2)),
        (4, (2, 2)),
        (5, (2, 3)),
        (6, (2, 3)),
        (7, (3, 3)),
        (8, (3, 3)),
        (9, (3, 3)),
        (10, (3, 4)),
        (16, (4, 4)),
    ],
)
def test_grid_shape(n: int, shape: tuple[int, int]) -> None:
    assert grid_shape(n) == shape


@pytest.mark.parametrize("n", [0, -1])
def test_grid_shape_rejects_no_images(n: int) -> None:
    with pytest.raises(InvalidRequestError):
        grid_shape(n)


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def _cell_colors(grid: Image.Image, box: tuple[int, int, int, int]) -> set[tuple[int, ...]]:
    return {color for _, color in grid.crop(box).getcolors(maxcolors=1 << 16) or []}


def test_make_grid_without_border_places_cells_row_major() -> None:
    grid = make_grid([solid(color) for color in COLORS])  # 5 images of 10x8 -> 2 rows x 3 cols
    assert grid.size == (30, 16)
    for index, color in enumerate(COLORS):
        row, col = divmod(index, 3)
        assert _cell_colors(grid, (col * 10, row * 8, col * 10 + 10, row * 8 + 8)) == {color}
    assert _cell_colors(grid, (20, 8, 30, 16)) == {(0, 0, 0)}


def test_make_grid_cells_equal_their_images_pixel_for_pixel() -> None:
    images = [noise_image(13, 7, seed) for seed in range(4)]
    grid = make_grid(images)
    assert grid.size == (26, 14)
    for index, image in enumerate(images):
        row, col = divmod(index, 2)
        cell = grid.crop((col * 13, row * 7, col * 13 + 13, row * 7 + 7))
        assert cell.tobytes() == image.tobytes()


def test_make_grid_with_border() -> None:
    white = (255, 255, 255)
    grid = make_grid([solid(color) for color in COLORS], border=2, border_color=white)
    assert grid.size == (3 * 10 + 4 * 2, 2 * 8 + 3 * 2)
    for index, color in enumerate(COLORS):
        row, col = divmod(index, 3)
        left, top = 2 + col * 12, 2 + row * 10
        assert _cell_colors(grid, (left, top, left + 10, top + 8)) == {color}
    assert _cell_colors(grid, (0, 0, 38, 2)) == {white}  # top edge
    assert _cell_colors(grid, (12, 0, 14, 22)) == {white}  # gap between columns 0 and 1
    assert _cell_colors(grid, (26, 12, 36, 20)) == {white}  # the empty sixth cell


def test_make_grid_keeps_alpha() -> None:
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    grid = make_grid([clear, solid((1, 2, 3), (4, 4))])
    assert grid.mode == "RGBA"
    assert grid.getpixel((0, 0)) == (10, 20, 30, 0)
    assert grid.getpixel((4, 0)) == (1, 2, 3, 255)


def test_make_grid_rejects_mixed_sizes_and_no_images() -> None:
    with pytest.raises(InvalidRequestError, match="same size"):
        make_grid([solid((0, 0, 0), (10, 8)), solid((0, 0, 0), (8, 10))])
    with pytest.raises(InvalidRequestError):
        make_grid([])
    with pytest.raises(InvalidRequestError):
        make_grid([solid((0, 0, 0))], border=-1)


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize(("prefer", "mime"), [("PNG", "image/jpeg"), ("WEBP", "image/webp")])
def test_encode_noisy_image_under_limit(prefer: str, mime: str) -> None:
    limit = 60_000
    encoded = encode_within_limit(noise_image(512, 512), limit, FULL, prefer=prefer)
    assert isinstance(encoded, EncodedImage)
    assert encoded.mime_type == mime
    assert encoded.format == mime.split("/")[1].upper()
    assert len(encoded.data) <= limit
    assert read_infotext(encoded.data) == FULL
    with Image.open(io.BytesIO(encoded.data)) as image:
        assert image.format == encoded.format
        assert image.size == (encoded.width, encoded.height)
    assert encoded.width < 512  # random noise cannot fit at full size


def test_encode_keeps_full_size_when_lower_quality_is_enough() -> None:
    image = Image.effect_noise((512, 512), 8).convert("RGB")  # smooth enough for JPEG at 512
    encoded = encode_within_limit(image, 120_000, BASIC)
    assert encoded.format == "JPEG"
    assert (encoded.width, encoded.height) == (512, 512)
    assert len(encoded.data) <= 120_000


def test_encode_small_image_stays_png() -> None:
    image = solid((12, 34, 56), (64, 64))
    encoded = encode_within_limit(image, 60_000, KOREAN)
    assert (encoded.format, encoded.mime_type) == ("PNG", "image/png")
    assert (encoded.width, encoded.height) == (64, 64)
    assert read_infotext(encoded.data) == KOREAN
    with Image.open(io.BytesIO(encoded.data)) as decoded:
        assert decoded.convert("RGB").tobytes() == image.tobytes()


def test_encode_without_info_carries_none() -> None:
    encoded = encode_within_limit(noise_image(256, 256), 30_000)
    assert encoded.format == "JPEG"
    assert len(encoded.data) <= 30_000
    assert read_infotext(encoded.data) is None


def test_encode_rgba_as_jpeg() -> None:
    image = noise_image(256, 256).convert("RGBA")
    encoded = encode_within_limit(image, 40_000, BASIC)
    assert encoded.format == "JPEG"
    assert read_infotext(encoded.data) == BASIC


def test_encode_moves_to_webp_when_infotext_is_too_big_for_jpeg_exif() -> None:
    # 34,000 characters are 68,000 bytes of UTF-16, past JPEG's 65,533-byte EXIF segment.
    info = Infotext(prompt=("long prompt " * 2834).strip(), steps=1, sampler="Euler", seed=1)
    encoded = encode_within_limit(noise_image(256, 256), 100_000, info, prefer="JPEG")
    assert encoded.format == "WEBP"
    assert len(encoded.data) <= 100_000
    assert read_infotext(encoded.data) == info


@pytest.mark.parametrize("limit", [0, -5, 200])
def test_encode_rejects_absurd_limits(limit: int) -> None:
    with pytest.raises(InvalidRequestError):
        encode_within_limit(noise_image(64, 64), limit, FULL)


def test_encode_rejects_unknown_format() -> None:
    with pytest.raises(InvalidRequestError, match="prefer"):
        encode_within_limit(noise_image(64, 64), 1000, prefer="GIF")


# --------------------------------------------------------------------------- output paths

WHEN = datetime(2025, 3, 7, 12, 30)


def test_output_paths_are_sequential_in_the_date_folder(tmp_path: Path) -> None:
    paths = [output_path(tmp_path, "a cat", WHEN) for _ in range(3)]
    folder = tmp_path / "2025-03-07"
    assert paths == [folder / f"0000{n}-a-cat.png" for n in (1, 2, 3)]
    assert all(path.is_file() for path in paths)  # reserved on disk
    assert output_path(tmp_path, "dog", WHEN, suffix=".jpg") == folder / "00004-dog.jpg"


def test_output_path_continues_after_the_highest_number(tmp_path: Path) -> None:
    folder = tmp_path / "2025-03-07"
    folder.mkdir()
    (folder / "00041-old.png").touch()
    (folder / "00007-older.png").touch()
    (folder / "notes.txt").touch()
    assert output_path(tmp_path, "new", WHEN).name == "00042-new.png"


def test_output_path_default_date_is_today(tmp_path: Path) -> None:
    path = output_path(tmp_path, "x")
    assert path.parent.name == datetime.now().strftime("%Y-%m-%d")


def test_output_path_numbers_are_unique_across_threads(tmp_path: Path) -> None:
    results: list[Path] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(index: int) -> None:
        start.wait(60)
        for call in range(10):
            path = output_path(tmp_path, f"thread {index} call {call}", WHEN)
            with lock:
                results.append(path)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    numbers = sorted(int(path.name[:5]) for path in results)
    assert numbers == list(range(1, 81))
    assert len(set(results)) == 80
    assert sorted(p.name for p in (tmp_path / "2025-03-07").iterdir()) == sorted(
        path.name for path in results
    )


def test_output_path_numbers_are_unique_across_processes(tmp_path: Path) -> None:
    jobs = [(tmp_path, f"process job {index}", WHEN) for index in range(120)]
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        results = pool.starmap(output_path, jobs, chunksize=1)
    assert sorted(int(path.name[:5]) for path in results) == list(range(1, 121))
    assert not list((tmp_path / "2025-03-07").glob(".*"))  # no lock files left behind


def test_output_path_then_save_png(tmp_path: Path) -> None:
    path = save_png(solid((4, 5, 6)), output_path(tmp_path, "a cat", WHEN), BASIC)
    assert read_infotext(path) == BASIC


@pytest.mark.parametrize(
    ("stem", "safe"),
    [
        ("a cat, on a mat!", "a-cat-on-a-mat"),
        ("고양이 그림", "고양이-그림"),
        ("../../etc/passwd", "etcpasswd"),
        ("under_score-dash", "under_score-dash"),
        ("  \n\t ", "image"),
        ("(masterpiece:1.2), café", "masterpiece12-café"),
    ],
)
def test_safe_stem(stem: str, safe: str) -> None:
    assert safe_stem(stem) == safe


def test_safe_stem_is_short_and_output_name_is_safe(tmp_path: Path) -> None:
    stem = "a very long prompt, " * 20
    assert len(safe_stem(stem)) <= 60
    name = output_path(tmp_path, stem, WHEN).name
    assert re.fullmatch(r"00001-[\w-]{1,60}\.png", name)


@pytest.mark.parametrize("suffix", ["png", "/x.png", ".p/ng", ""])
def test_output_path_rejects_bad_suffix(tmp_path: Path, suffix: str) -> None:
    with pytest.raises(InvalidRequestError):
        output_path(tmp_path, "x", WHEN, suffix=suffix)
