"""The output-size rule: about one megapixel at the last image's aspect ratio, as the pipeline computes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.domain.errors import InvalidInput
from processor.domain.sizing import ModelSizing, default_output_size, dimensions_for_area, output_size

REAL = ModelSizing()


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1920, 1080), (1376, 768)),
        ((800, 600), (1184, 896)),
        ((4000, 3000), (1184, 896)),
        ((512, 512), (1024, 1024)),
    ],
)
def test_about_one_megapixel_whatever_the_input_resolution(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert default_output_size(size, REAL) == expected


def test_the_rule_is_diffusers_own() -> None:
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

    for width in range(32, 3000, 37):
        for height in range(32, 3000, 53):
            for area in (REAL.output_area, REAL.condition_image_area, 64 * 64):
                assert dimensions_for_area(area, width, height) == calculate_dimensions(area, width / height)


def test_the_last_image_sets_the_aspect_ratio() -> None:
    assert output_size([(1000, 1000), (1920, 1080)], REAL) == (1376, 768)
    assert output_size([(1920, 1080), (1000, 1000)], REAL) == (1024, 1024)


def test_default_sides_are_multiples_of_16_near_one_megapixel() -> None:
    for width in range(100, 4000, 97):
        out_width, out_height = default_output_size((width, 1000), REAL)
        assert out_width % 16 == out_height % 16 == 0
        assert 0.8 * 1024**2 < out_width * out_height < 1.2 * 1024**2


def test_explicit_sizes_are_returned_unchanged() -> None:
    assert output_size([(640, 480)], REAL, width=512, height=768) == (512, 768)


@pytest.mark.parametrize(
    ("width", "height"), [(512, None), (None, 512), (520, 512), (16, 512), (4112, 512), (4096, 1040)]
)
def test_invalid_explicit_sizes_are_refused(width: int | None, height: int | None) -> None:
    with pytest.raises(InvalidInput) as caught:
        output_size([(640, 480)], REAL, width=width, height=height)
    assert caught.value.reason == "invalid_size"


def test_inputs_the_vision_encoder_cannot_take_are_refused() -> None:
    output_size([(6000, 40)], REAL)  # 150:1 is still within Qwen2-VL's 200:1
    with pytest.raises(InvalidInput) as caught:
        output_size([(640, 480), (12000, 40)], REAL, width=512, height=512)
    assert caught.value.reason == "invalid_size"
    assert "image 2" in str(caught.value)


def test_sizing_reads_only_known_keys(tmp_path: Path) -> None:
    folder = tmp_path
    (folder / "edit_processor.json").write_text('{"output_area": 4096, "comment": "tiny"}')
    assert ModelSizing.for_model(folder) == ModelSizing(output_area=4096)
    (folder / "edit_processor.json").write_text('{"output_area": 100}')
    with pytest.raises(ValueError, match="at least"):
        ModelSizing.for_model(folder)
