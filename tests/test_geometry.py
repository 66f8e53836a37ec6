"""Geometry against the seeds' worked figures and hand-computed cases."""

import pytest

from llavakit import geometry, layout
from llavakit.config import VisualConfig

OV = VisualConfig()  # OneVision: 384 crops, (1x1)..(6x6), anyres_max_9


@pytest.mark.parametrize(
    "size, tokens",
    [((384, 384), 1485), ((480, 640), 2929), ((768, 1024), 4725), ((1080, 1920), 7269)],
)
def test_onevision_token_counts_match_the_seeds(size, tokens):
    # DESIGN.md section 3: SigLIP-384, 6x6 pinpoints, N = 9, newlines included.
    item = layout.plan_image(OV, size, multi_image=False)
    assert layout.token_count(item, OV, 27) == tokens


def test_multi_image_and_video_budgets():
    item = layout.plan_image(OV, (480, 640), multi_image=True)
    assert layout.token_count(item, OV, 27) == 730  # 729 + one newline
    video = layout.plan_video(OV, (360, 640), 32)
    assert layout.token_count(video, OV, 27) == 32 * 196 + 1


def test_range_form_is_rows_major_and_symmetric():
    pins = geometry.parse_grid_pinpoints("(1x1),...,(6x6)", 384)
    assert len(pins) == 36 and pins[:3] == [(384, 384), (384, 768), (384, 1152)]
    assert geometry.parse_grid_pinpoints("(1x2),...,(2x3)", 10) == [(10, 20), (10, 30), (20, 20), (20, 30)]


@pytest.mark.parametrize("bad", ["1x1...6x6", "(3x3),...,(1x1)", [[384, 500]], []])
def test_bad_pinpoints_are_refused(bad):
    with pytest.raises(ValueError):
        geometry.parse_grid_pinpoints(bad, 384)


def test_best_resolution_prefers_effective_pixels_then_less_waste():
    pins = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]
    assert geometry.select_best_resolution((1000, 3000), pins) == (336, 1008)  # wide image -> wide canvas
    assert geometry.select_best_resolution((3000, 1000), pins) == (1008, 336)
    # a small image keeps all its pixels on every canvas: least waste wins, first on ties
    assert geometry.select_best_resolution((100, 300), pins) == (336, 672)


def test_fit_inside_and_offsets():
    assert geometry.fit_inside((100, 200), (384, 384)) == (192, 384)
    assert geometry.fit_inside((1080, 1920), (768, 1152)) == (648, 1152)
    assert geometry.paste_offset((192, 384), (384, 384)) == (96, 0)
    assert geometry.paste_offset((5, 7), (10, 10)) == (2, 1)


def test_unpad_uses_seven_digit_rounding():
    # 1025 x 1247 on a 2x2 grid of 27: width/height scale gives 44.39... -> 44 rows kept
    top, bottom, left, right = geometry.unpad_window((1025, 1247), (54, 54))
    assert (bottom - top, right - left) == (54 - 2 * ((54 - 44) // 2), 54)


def test_reduction_threshold():
    assert geometry.reduced_size((81, 81), 27, 9) == (81, 81)  # exactly 9 grids: ratio 1
    assert geometry.reduced_size((162, 162), 27, 9) == (81, 81)  # ratio 2 -> halve
    assert geometry.reduced_size((162, 162), 27, None) == (162, 162)
    h, w = 27 * 3, int(27 * 3 * 1.2)  # ratio sqrt(1.2) ~ 1.095 < 1.1: untouched
    assert geometry.reduced_size((h, w), 27, 9) == (h, w)


def test_newline_layouts():
    assert geometry.newline_count("row", 14, frames=3) == 42
    assert geometry.newline_count("frame", 14, frames=3) == 3
    assert geometry.newline_count("video", 14, frames=3) == 1
    assert geometry.newline_count("none", 14) == 0
