"""Model-free parts of medblip.explain: aggregation, grids, normalisation, word merging, rendering, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medblip.errors import MedblipError
from medblip.explain.grounding import (
    baseline_scores,
    centre_map,
    dilate,
    energy_fraction,
    pointing_hit,
    summarise,
)
from medblip.explain.maps import (
    aggregate,
    detect_scheme,
    group_words,
    merge_maps,
    normalize,
    select_words,
    to_grid,
    upsample,
)
from medblip.explain.render import grid_figure, input_box, overlay, save_png, to_original


def _layers(n_layers: int = 3, heads: int = 2, t: int = 4, p: int = 6, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((heads, t, p)) for _ in range(n_layers)]


# -- aggregation ------------------------------------------------------------------------------------

def test_aggregate_mean_max_last_and_selection() -> None:
    att = _layers()
    assert aggregate(att).shape == (4, 6)
    np.testing.assert_allclose(aggregate(att, how="mean"), np.mean([a.mean(0) for a in att], axis=0))
    np.testing.assert_allclose(aggregate(att, how="max"), np.max(np.stack(att), axis=(0, 1)))
    np.testing.assert_allclose(aggregate(att, how="last"), att[-1].mean(0))
    np.testing.assert_allclose(aggregate(att, layers=[0, -1], heads=[1], how="last"), att[2][1])
    np.testing.assert_allclose(aggregate(att, layers=[1], how="mean"), att[1].mean(0))


@pytest.mark.parametrize("kw", [{"layers": [3]}, {"heads": [-3]}, {"how": "median"}])
def test_aggregate_bad_choices_are_one_line_errors(kw: dict) -> None:
    with pytest.raises(MedblipError) as exc:
        aggregate(_layers(), **kw)
    assert "\n" not in str(exc.value)


def test_to_grid_is_row_major_and_checks_size() -> None:
    maps = np.arange(12.0).reshape(2, 6)
    g = to_grid(maps, (2, 3))
    assert g.shape == (2, 2, 3) and g[0, 1, 0] == 3.0
    with pytest.raises(MedblipError):
        to_grid(maps, (2, 2))


def test_normalize_min_max_and_constant_maps() -> None:
    maps = np.stack([np.arange(6.0).reshape(2, 3) * 3 + 7, np.full((2, 3), 0.4)])
    n = normalize(maps)
    assert n.dtype == np.float32
    assert n[0].min() == 0.0 and n[0].max() == 1.0
    np.testing.assert_allclose(n[0], np.arange(6.0).reshape(2, 3) / 5, rtol=1e-6)
    assert not n[1].any()  # a constant map says nothing about where: zeros, not NaN


def test_upsample_bilinear_shapes_and_peak_position() -> None:
    grid = np.zeros((1, 4, 4), dtype=np.float32)
    grid[0, 0, 3] = 1.0  # top-right patch
    up = upsample(grid, (40, 80))
    assert up.shape == (1, 40, 80)
    y, x = np.unravel_index(np.argmax(up[0]), up[0].shape)
    assert y < 10 and x >= 60


# -- sub-words -> words -----------------------------------------------------------------------------

def test_wordpiece_merging() -> None:
    tokens = ["right", "lung", "nod", "##ule", "##s", ",", "no", "eff", "##usion", "."]
    g = group_words(tokens)
    assert detect_scheme(tokens) == "wordpiece"
    assert g.words == ["right", "lung", "nodules", ",", "no", "effusion", "."]
    assert g.groups[2] == [2, 3, 4]


def test_gpt2_bytelevel_merging_splits_punctuation() -> None:
    tokens = ["C", "T", "Ġshows", "Ġa", "Ġnod", "ule", ".", "Ġx", "-", "ray"]
    g = group_words(tokens)
    assert detect_scheme(tokens) == "bytelevel"
    assert g.words == ["CT", "shows", "a", "nodule", ".", "x", "-", "ray"]
    assert g.groups[3] == [4, 5]


def test_sentencepiece_merging_with_bare_marker() -> None:
    tokens = ["▁a", "▁nod", "ule", "▁", "5", "mm", "▁mass"]
    g = group_words(tokens)
    assert detect_scheme(tokens) == "sentencepiece"
    assert g.words == ["a", "nodule", "5mm", "mass"]
    assert g.groups == [[0], [1, 2], [4, 5], [6]]


def test_merge_maps_averages_subtokens_and_select_words() -> None:
    maps = np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2)
    merged = merge_maps(maps, [[0], [1, 2], [3]])
    assert merged.shape == (3, 2, 2)
    np.testing.assert_allclose(merged[1], (maps[1] + maps[2]) / 2)
    assert select_words(["a", "Nodule", "in", "a", "lung"], ["nodule", "A"]) == [1, 0, 3]
    with pytest.raises(MedblipError, match="not in the caption"):
        select_words(["a", "nodule"], ["mass"])


# -- rendering --------------------------------------------------------------------------------------

class _Proc:
    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


def test_input_box_for_squash_resize_and_centre_crop() -> None:
    squash = _Proc(do_resize=True, size={"height": 384, "width": 384})
    assert input_box(squash, (120, 80)) == (0.0, 0.0, 120.0, 80.0)
    clip = _Proc(do_resize=True, size={"shortest_edge": 40}, do_center_crop=True,
                 crop_size={"height": 40, "width": 40})
    left, top, right, bottom = input_box(clip, (120, 80))
    assert (top, bottom) == (0.0, 80.0)
    assert left == pytest.approx(20.0) and right == pytest.approx(100.0)  # the middle 80 x 80 square


def test_to_original_places_crop_and_keeps_size() -> None:
    grid = np.ones((2, 3, 3), dtype=np.float32)
    full = to_original(grid, (120, 80))
    assert full.shape == (2, 80, 120) and np.allclose(full, 1.0)
    cropped = to_original(grid, (120, 80), (20.0, 0.0, 100.0, 80.0))
    assert cropped.shape == (2, 80, 120)
    assert not cropped[:, :, :20].any() and not cropped[:, :, 100:].any() and np.allclose(cropped[:, :, 20:100], 1)


def test_overlay_png_has_original_size_on_non_square_image(tmp_path: Path) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120), dtype=np.uint8), mode="L")
    heat = to_original(np.random.default_rng(1).random((4, 4)), image.size)
    out = save_png(overlay(image, heat, alpha=0.4), tmp_path / "o.png")
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (120, 80) and im.mode == "RGB"
    # alpha 0 leaves the image untouched
    same = np.asarray(overlay(image, heat, alpha=0.0))
    np.testing.assert_array_equal(same[..., 0], np.asarray(image))


def test_grid_figure_written(tmp_path: Path) -> None:
    image = Image.new("RGB", (120, 80), (40, 40, 40))
    heats = [to_original(np.eye(4)[None] * k, image.size)[0] for k in (1, 2, 3)]
    out = grid_figure(image, heats, ["a", "nodule", "left"], "a nodule in the left lung", tmp_path / "g.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 300


# -- grounding metrics ------------------------------------------------------------------------------

def _mask(h: int = 40, w: int = 60, box: tuple[int, int, int, int] = (5, 5, 15, 15)) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_pointing_game_strict_and_tolerant() -> None:
    mask = _mask()
    heat = np.zeros(mask.shape)
    heat[10, 10] = 1.0
    assert pointing_hit(heat, mask)
    heat = np.zeros(mask.shape)
    heat[10, 18] = 1.0  # 4 px right of the mask
    assert not pointing_hit(heat, mask)
    assert pointing_hit(heat, mask, tolerance_px=4.0)
    assert not pointing_hit(np.ones(mask.shape), mask)  # a flat map points nowhere
    assert dilate(mask, 2).sum() > mask.sum()


def test_energy_fraction_and_baselines() -> None:
    mask = _mask()
    assert energy_fraction(mask.astype(float), mask) == 1.0
    assert energy_fraction(np.ones(mask.shape), mask) == pytest.approx(mask.mean())
    assert energy_fraction(np.zeros(mask.shape), mask) == 0.0
    b = baseline_scores(mask, tolerance_px=0)
    assert b["uniform"]["hit"] == pytest.approx(mask.mean()) == b["uniform"]["energy"]
    assert b["centre"]["hit"] == 0.0  # the lesion is in the corner
    centred = _mask(box=(15, 25, 25, 35))
    b2 = baseline_scores(centred, tolerance_px=0)
    assert b2["centre"]["hit"] == 1.0 and b2["centre"]["energy"] > b2["uniform"]["energy"]
    c = centre_map((40, 60))
    assert c.shape == (40, 60) and np.unravel_index(np.argmax(c), c.shape) in {(19, 29), (19, 30), (20, 29), (20, 30)}


def test_summarise_means() -> None:
    row = {"model": {"hit": 1.0, "hit_tol": 1.0, "energy": 0.5},
           "uniform": {"hit": 0.1, "hit_tol": 0.2, "energy": 0.1},
           "centre": {"hit": 0.0, "hit_tol": 0.0, "energy": 0.2}}
    zero = {**row, "model": {"hit": 0.0, "hit_tol": 1.0, "energy": 0.1}}
    s = summarise([row, zero], 0.05, {"no finding": 3})
    assert s.n == 2 and s.scores["model"].hit == 0.5 and s.scores["model"].energy == pytest.approx(0.3)
    assert s.model_dump()["skipped"] == {"no finding": 3}
