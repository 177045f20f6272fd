"""The figures behind the report (issue 21.3), checked on the PNGs they write: the explain grid (title,
panel titles, colour bar, flat maps), overlays, the training curves, and which caption words get one."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

from medblip.explain.maps import is_flat, map_ranges
from medblip.explain.render import grid_figure, overlay
from medblip.explain.words import is_content_word, rank_words
from medblip.reports.plots import training_curves, val_metric_for


def _image(size: int = 96) -> Image.Image:
    img = Image.new("L", (size, size), 30)
    ImageDraw.Draw(img).ellipse([20, 20, 70, 70], fill=200)
    return img.convert("RGB")


def _colourful(arr: np.ndarray) -> np.ndarray:
    """Pixels that are clearly not grey."""
    return (arr.max(axis=-1).astype(int) - arr.min(axis=-1).astype(int)) > 60


def test_flat_maps_are_marked_not_stretched() -> None:
    flat = np.full((8, 8), 1 / 64) + np.random.default_rng(0).normal(0, 1e-5, (8, 8))
    peaked = np.full((8, 8), 0.01)
    peaked[2:4, 5:7] = 0.2
    (lo_f, hi_f), (lo_p, hi_p) = map_ranges(np.stack([flat, peaked]))
    assert is_flat(lo_f, hi_f) and not is_flat(lo_p, hi_p) and is_flat(0.0, 0.0)
    img = _image()
    assert not _colourful(np.asarray(overlay(img, flat, flat=True))).any()  # grey: no heat drawn
    assert _colourful(np.asarray(overlay(img, peaked))).mean() > 0.3


def test_grid_has_a_colour_bar_ranges_and_a_title_clear_of_the_panels(tmp_path: Path) -> None:
    img = _image()
    flat = np.full((96, 96), 0.0156, dtype=np.float32)
    path = grid_figure(img, [flat] * 5, ["chest", "left", "nodule", "of", "the"], "Chest CT with a left nodule.",
                       tmp_path / "grid.png", title="blip · attention", ranges=[(0.0154, 0.0156)] * 5)
    arr = np.asarray(Image.open(path).convert("RGB"))
    # every map is flat, so the only colour in the figure is the colour bar: jet from dark blue to dark red
    rows = np.where(_colourful(arr).any(axis=1))[0]
    assert len(rows) and rows.min() > 0.6 * arr.shape[0]
    bar = arr[rows[len(rows) // 2]]
    jet = matplotlib.colormaps["jet"]
    for x in (0.02, 0.5, 0.98):
        want = np.array(jet(x)[:3]) * 255
        assert np.abs(bar.astype(float) - want).sum(axis=1).min() < 40, x
    # the title is its own band of ink, separated from the panel titles by blank rows
    ink = (arr.min(axis=-1) < 128).any(axis=1)
    starts = [y for y in range(1, len(ink)) if ink[y] and not ink[y - 1]]
    ends = [y for y in range(1, len(ink)) if ink[y - 1] and not ink[y]]
    assert len(starts) >= 2 and starts[1] - ends[0] >= 10  # >= 10 blank pixel rows (the old layout left 4)


def test_caption_words_clinical_first_without_punctuation_or_function_words() -> None:
    words = ["(", "axial", "ct", "of", "the", "chest", ":", "left", "upper", "lobe", "nodule", ")", "."]
    ranked = [words[i] for i in rank_words(words)]
    assert ranked[0] == "ct"  # modality, then region, finding, side, then the other content words
    assert ranked.index("chest") < ranked.index("nodule") < ranked.index("left") < ranked.index("axial")
    assert not {"(", ":", "of", "the", ")", "."} & set(ranked)
    assert [words[i] for i in rank_words(words, limit=2)] == ranked[:2]
    assert is_content_word("27") and not is_content_word("—")


def _run(name: str, val: list[dict], train: bool = True) -> dict:
    return {"name": name, "train_loss": [[float(s), 3.0 - 0.1 * s] for s in range(1, 7)] if train else [],
            "val": val, "val_metrics": list(dict.fromkeys(m for v in val for m in v["metrics"]))}


def test_training_curves_plot_steps_and_caption_only_what_is_drawn(tmp_path: Path) -> None:
    # the trainer's time stamps and bookkeeping numbers are never taken for a caption metric
    only_loss = [{"step": s, "epoch": s // 3, "metrics": {"val_loss": 2.0 - 0.1 * s, "val_seconds": 1.2,
                                                          "time": 1_795_794_646.4 + s}} for s in (3, 6)]
    assert val_metric_for([_run("a", only_loss)]) is None
    path, caption = training_curves([_run("a", only_loss)], tmp_path / "loss.png")
    assert caption == "Training loss and validation loss against the optimizer step."
    assert Image.open(path).width == round(2 * 4.3 * 110)  # two panels
    with_metric = [{"step": 0, "epoch": 0, "metrics": {"val_loss": 2.5, "CIDEr": 0.1}}] + [
        {"step": s, "epoch": s // 3, "metrics": {"val_loss": 2.0, "CIDEr": 0.2 * s}} for s in (3, 6)]
    path, caption = training_curves([_run("a", only_loss), _run("b", with_metric)], tmp_path / "all.png")
    assert caption == ("Training loss, validation loss and validation CIDEr against the optimizer step; "
                       "step 0: before training.")
    assert Image.open(path).width == round(3 * 4.3 * 110)
    assert training_curves([_run("c", [], train=False)], tmp_path / "none.png") is None
