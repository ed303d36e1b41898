"""`--cn` and its companions: parsed once for every front end, the control image taken from
the message, and clear refusals."""

from __future__ import annotations

import pytest

from bot.core.options import OptionsError, options_from_fields, parse_options
from pipeline.prompts.vocabulary import Vocabulary
from pipeline.request import ControlMode, ImageRef

VOCABULARY = Vocabulary.load()
PICTURE = ImageRef(data=b"png bytes")


def test_cn_with_an_attached_image_makes_a_controlled_text_to_image_job() -> None:
    options = options_from_fields(
        "a knight --cn canny:0.8 --cn-start 0.1 --cn-end 0.9 --cn-mode control --cn-show",
        VOCABULARY,
        init_image=PICTURE,
    )
    request = options.to_request(VOCABULARY, 512)
    assert request.init_image is None  # the attachment is the control image, not an init
    control = request.control
    assert control is not None
    assert control.image == PICTURE
    assert (control.preprocessor, control.model, control.weight) == ("canny", "", 0.8)
    assert (control.guidance_start, control.guidance_end) == (0.1, 0.9)
    assert control.mode is ControlMode.CONTROL and control.show


def test_a_model_name_means_a_ready_made_map() -> None:
    options = options_from_fields(
        "a knight --cn control_v11p_sd15_openpose", VOCABULARY, init_image=PICTURE
    )
    control = options.to_request(VOCABULARY, 512).control
    assert control is not None
    assert (control.preprocessor, control.model) == ("none", "control_v11p_sd15_openpose")
    assert control.mode is ControlMode.BALANCED and not control.show


def test_a_separate_control_image_leaves_the_init_image_for_img2img() -> None:
    control_image = ImageRef(data=b"other")
    options = options_from_fields(
        "a knight", VOCABULARY, init_image=PICTURE, control_image=control_image, cn="canny"
    )
    request = options.to_request(VOCABULARY, 512)
    assert request.init_image == PICTURE
    assert request.control is not None and request.control.image == control_image


@pytest.mark.parametrize(
    ("line", "english", "korean"),
    [
        ("a knight --cn canny", "--cn needs a control image", "컨트롤 이미지가 필요"),
        ("a knight --cn-show", "need --cn NAME", "--cn 이름"),
        ("a knight --cn canny:3", "weight must be from 0 to 2", "0에서 2 사이"),
        ("a knight --cn canny:heavy", "NAME or NAME:WEIGHT", "이름:가중치"),
        ("a knight --cn canny --cn-start 1.5", "--cn-start takes a share", "단계 비율"),
        ("a knight --cn canny --cn-start 0.6 --cn-end 0.4", "must be below", "작아야"),
        ("a knight --cn canny --cn-mode loud", "balanced, prompt or control", "중 하나"),
        (
            "a knight --cn canny --strength 0.5",
            "so --strength has no picture",
            "컨트롤 이미지를 따로",
        ),
    ],
)
def test_control_mistakes_are_clear_in_both_languages(line: str, english: str, korean: str) -> None:
    image = None if "needs a control image" in english else PICTURE
    with pytest.raises(OptionsError) as caught:
        options_from_fields(line, VOCABULARY, init_image=image)
    assert english in str(caught.value)
    assert korean in caught.value.ko


def test_without_cn_an_image_stays_img2img() -> None:
    request = parse_options("a knight", VOCABULARY).to_request(VOCABULARY, 512)
    assert request.control is None
    img2img = options_from_fields("a knight", VOCABULARY, init_image=PICTURE)
    assert img2img.to_request(VOCABULARY, 512).init_image == PICTURE


def test_a_remix_line_gives_the_same_control_back_and_keeps_its_image() -> None:
    from bot.core.work import remix_line

    line = "a knight --cn canny:0.7 --cn-start 0.2 --cn-mode prompt --cn-show --steps 20"
    original = options_from_fields(line, VOCABULARY, init_image=PICTURE).to_request(VOCABULARY, 512)
    edited = remix_line(original)
    assert "--cn canny:0.7 --cn-start 0.2 --cn-mode prompt --cn-show" in edited
    again = options_from_fields(edited, VOCABULARY, kept_control_image=PICTURE)
    assert again.to_request(VOCABULARY, 512).control == original.control
    # Without --cn in the edited line the control image is simply not used.
    plain = options_from_fields("a knight --steps 20", VOCABULARY, kept_control_image=PICTURE)
    assert plain.to_request(VOCABULARY, 512).control is None
