"""What caps the pointing game of the demo's captioner: the patch grid, or where the model looks?

Usage: python benchmarks/grounding_ceiling.py [--demo demo_output] [--model FOLDER] [--data SYNTH_DIR]
       [--json FILE.json]

`medblip demo`'s fine-tuned BLIP points at the lesion for 0.04-0.06 of the test findings (issue 21,
item 2, asks for 0.15 and 5x the uniform map). This scores, on the same test findings, maps that live
on the model's own patch grid, each upsampled and scored exactly as ``medblip explain --evaluate``
scores the model's attention (``to_original``, min-max, the maximum inside the lesion mask):

- ``uniform``: the expected hit rate of a pointer dropped at random (the mask's area);
- ``ideal``: each patch's share of lesion pixels: what the grid allows a map that always picks the
  right patch;
- ``pixel_anomaly``: model-free; per modality, each patch's mean squared z-score of its input pixels
  against the finding-free training images of that modality at the same place;
- ``pixel_asymmetry``: model-free too; each patch's mean squared difference from the mirrored patch
  across the vertical midline. Most of the benchmark's anatomy is left-right symmetric and its lesions
  are one-sided, so this is the cue that a model needs no normal images for; it marks the lesion's
  mirror place as much as the lesion;
- ``feature_anomaly``: the same on the model's vision-tower patch features (last hidden state);
- ``attention``: the finding words' decoder cross-attention, mean over layers and heads, as
  ``medblip explain --evaluate`` (``evaluate_grounding``) computes it; ``heads`` has each
  (layer, head) alone;
- ``attention_rollout`` (BLIP): the same attention carried back through the vision tower's
  self-attention to the input patches (attention rollout, Abnar & Zuidema 2020: per layer the
  head-mean attention plus the identity for the residual, rows renormalised, multiplied over the
  layers). The decoder attends to encoder *outputs*, and each output mixes the patches its
  self-attention drew from; if the lesion's evidence travelled to other tokens, rollout traces it back;
- ``gradcam``: ``medblip explain --method gradcam``, the cross-attention of the last layer weighted by
  the positive gradient of the words' log-probability (the ALBEF / BLIP convention);
- ``saliency``: not attention and not on the grid: ``medblip explain --method saliency``, the
  |gradient| of the same words' log-probabilities at the input's resolution, i.e. which pixels the
  caption's words depend on;
- ``random_*`` (unless ``--no-randomised``): every model map above of the same architecture with its
  weights redrawn (``random_weights_copy``, seed 0), the model randomisation test of Adebayo et al.
  (2018): a map that scores as well without training measures the image, not the model.

If the anomaly maps hit far more lesions than the attention, the grid is not what limits the
pointing game: the information is in the image (and survives the encoder, trained or not), and the caption loss
has not taught the decoder's attention to find it. By default it reads a ``medblip demo`` output
folder (``--demo``, default ``demo_output``): the fine-tuned BLIP ``DEMO/ablation/full/checkpoints/best``
and the benchmark ``DEMO/data/synth``. ``--model`` scores another captioner (e.g. the stand-in
``DEMO/models/tiny-blip``); without a benchmark, the demo's is rendered afresh (1,440 images, 64 px,
seed 0).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_utils import encode_patches, environment, image_size_of, write_json

TOLERANCE = 0.05  # of the image's longer side, as evaluate_grounding's tolerant game
MIN_NORMALS = 5  # finding-free training images of a modality, for its per-place statistics


def _anomaly(test: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Per patch, the mean squared z-score against the normal images' statistics at that place."""
    mean, std = normal.mean(0), normal.std(0) + 1e-3
    return (((test - mean) / std) ** 2).mean(-1)


def _asymmetry(pixels: np.ndarray, grid: int, patch: int) -> np.ndarray:
    """Per patch, the mean squared difference from its mirror image across the vertical midline (the
    patch at the mirrored place, flipped left to right): symmetric anatomy cancels, a one-sided lesion
    does not, and it marks its mirror place as much as itself. ``pixels``: (grid * grid, channels *
    patch * patch), as ``encode_patches`` lays them out."""
    patches = pixels.reshape(grid, grid, -1, patch, patch)
    mirror = patches[:, ::-1, :, :, ::-1]
    return ((patches - mirror) ** 2).mean(axis=(2, 3, 4))


def _ideal(mask: np.ndarray, box: tuple[float, ...], grid: int) -> np.ndarray:
    """Each patch's share of lesion pixels, over the part of the image the model sees."""
    from PIL import Image

    left, top, right, bottom = (int(round(v)) for v in box)
    crop = Image.fromarray(mask[top:bottom, left:right].astype(np.float32))
    return np.asarray(crop.resize((grid, grid), Image.Resampling.BOX), dtype=np.float32)  # area means


MODEL_METHODS = ("attention", "gradcam", "saliency")


def _model_maps(adapter: Any, data: Path, split: str) -> dict[str, dict[str, dict[str, float]]]:
    """Per map (attention, gradcam, saliency), each test finding's score, as ``medblip explain --evaluate``
    gives it."""
    from medblip.explain.benchmark import evaluate_grounding
    from medblip.explain.explainer import ExplainSettings

    return {method: {row["id"]: row["model"] for row in evaluate_grounding(
        adapter, data, split=split, settings=ExplainSettings(method=method))["rows"]}
        for method in MODEL_METHODS}


def rollout(attentions: Any) -> torch.Tensor:
    """(batch, tokens, tokens) attention rollout of self-attention layers, each (batch, heads, tokens, tokens),
    first layer first: per layer the head mean plus the identity (the residual path), rows renormalised,
    multiplied over the layers. Row i: how much output token i draws on each input token."""
    keys = attentions[0].shape[-1]
    eye = torch.eye(keys)
    rolled = eye.expand(attentions[0].shape[0], keys, keys)
    for layer in attentions:
        mixed = 0.5 * layer.float().mean(dim=1).cpu() + 0.5 * eye
        rolled = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rolled
    return rolled


def _vision_rollout(adapter: Any, images: list[Any]) -> np.ndarray | None:
    """(n, patches, patches): :func:`rollout` of the vision tower over its patch tokens (CLS, the first
    token, left out); None for a family without BLIP's ``vision_model``."""
    from medblip.models.base import eager_attention

    model = adapter.base_model
    vision = getattr(model, "vision_model", None)
    if vision is None:
        return None
    out = []
    with torch.no_grad(), eager_attention(model):
        for i in range(0, len(images), 64):
            attentions = vision(pixel_values=adapter.pixel_values(images[i:i + 64]), output_attentions=True).attentions
            out.append(rollout(attentions)[:, 1:, 1:])
    return torch.cat(out).numpy()


def _finding_attention(adapter: Any, image: Any, caption: str, finding: str) -> np.ndarray | None:
    """The finding words' attention on the patch grid, before upsampling, as ``evaluate_grounding`` averages it."""
    from medblip.explain.benchmark import finding_word_indices
    from medblip.explain.explainer import explain_image

    expl = explain_image(adapter, image, caption, caption_source="reference")
    words = finding_word_indices(expl.words, finding)
    return expl.word_maps[words].mean(axis=0) if words else None


def measure(model_dir: Path, data: Path, split: str = "test", randomised: Path | None = None) -> dict[str, Any]:
    """The table of maps; ``randomised``: a folder for the random-weights copy (None: no random_* rows)."""
    from medblip.data import load_dataset, load_image
    from medblip.data.synth import load_facts
    from medblip.explain.benchmark import evaluate_grounding, load_mask, random_weights_copy
    from medblip.explain.explainer import ExplainSettings
    from medblip.explain.grounding import baseline_scores, score_map
    from medblip.explain.maps import normalize
    from medblip.explain.render import input_box, to_original
    from medblip.models import create_model

    adapter = create_model(str(model_dir))
    facts = load_facts(data)
    model_maps = {"": _model_maps(adapter, data, split)}  # attention as the demo scores it, Grad-CAM, saliency
    attention = model_maps[""]["attention"]
    blip = adapter.family == "blip"  # the per-head loop is BLIP's
    random_adapter = None if randomised is None else random_weights_copy(adapter, randomised, seed=0)
    if random_adapter is not None:
        model_maps["random_"] = _model_maps(random_adapter, data, split)
    records = {r.id: r for r in load_dataset(data, splits=[split, "train"]).records}
    normals = [i for i, r in records.items() if r.split == "train" and facts[i]["finding"] in ("none", "", None)]
    per_modality = Counter(facts[i]["modality"] for i in normals)
    # a finding whose modality has too few finding-free images for statistics is left out of every map
    ids = [i for i in attention if per_modality[facts[i]["modality"]] >= MIN_NORMALS]
    skipped = len(attention) - len(ids)
    if not ids:
        raise SystemExit(f"error: {data}: no modality has {MIN_NORMALS} finding-free training images")
    images = [load_image(records[i].image) for i in ids]
    pix_test, feat_test, grid = encode_patches(adapter, images)
    patch = image_size_of(adapter) // grid
    normal_images = [load_image(records[i].image) for i in normals]
    pix_norm, feat_norm, _ = encode_patches(adapter, normal_images)
    features = {"": (feat_test, feat_norm)}
    rollouts = {"": (adapter, _vision_rollout(adapter, images))}
    if random_adapter is not None:
        features["random_"] = (encode_patches(random_adapter, images)[1], encode_patches(random_adapter, normal_images)[1])
        rollouts["random_"] = (random_adapter, _vision_rollout(random_adapter, images))
    rollouts = {prefix: pair for prefix, pair in rollouts.items() if pair[1] is not None}

    names = ["uniform", "ideal", "pixel_anomaly", "pixel_asymmetry"] + [
        f"{prefix}{name}" for prefix in model_maps
        for name in ("feature_anomaly", "attention", *(("attention_rollout",) if prefix in rollouts else ()),
                     *MODEL_METHODS[1:])]
    scores: dict[str, list[dict[str, float]]] = {k: [] for k in names}
    by_modality: dict[str, list[int]] = {}
    for j, n in enumerate(normals):
        by_modality.setdefault(facts[n]["modality"], []).append(j)
    for k, i in enumerate(ids):
        fact = facts[i]
        same = by_modality[fact["modality"]]
        mask = load_mask(data, fact)
        size = (mask.shape[1], mask.shape[0])
        box = input_box(adapter.processor, size)
        tol = TOLERANCE * max(size)
        maps = {"ideal": _ideal(mask, box, grid),
                "pixel_anomaly": _anomaly(pix_test[k], pix_norm[same]).reshape(grid, grid),
                "pixel_asymmetry": _asymmetry(pix_test[k], grid, patch)}
        for prefix, (test, normal) in features.items():
            maps[f"{prefix}feature_anomaly"] = _anomaly(test[k], normal[same]).reshape(grid, grid)
        for prefix, (model, rolled) in rollouts.items():
            attention_map = _finding_attention(model, images[k], records[i].caption, fact["finding"])
            if attention_map is None or attention_map.shape != (grid, grid):
                raise SystemExit(f"error: {i}: no finding-word attention on the {grid} x {grid} grid to roll out")
            maps[f"{prefix}attention_rollout"] = (attention_map.reshape(-1) @ rolled[k]).reshape(grid, grid)
        for name, grid_map in maps.items():
            scores[name].append(score_map(normalize(to_original(grid_map, size, box)), mask, tol))
        scores["uniform"].append(baseline_scores(mask, tol)["uniform"])
        for prefix, per_method in model_maps.items():
            for method, rows in per_method.items():
                scores[f"{prefix}{method}"].append(rows[i])

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return round(float(np.mean([float(r[key]) for r in rows])), 4)

    table = {name: {"pointing": mean(rows, "hit"), "pointing_tolerant": mean(rows, "hit_tol"),
                    "energy": mean(rows, "energy")} for name, rows in scores.items()}
    heads, chosen = [], set(ids)
    if blip:  # each cross-attention head of each layer alone
        text = adapter.model.config.text_config
        for layer in range(int(text.num_hidden_layers)):
            for head in range(int(text.num_attention_heads)):
                one = evaluate_grounding(adapter, data, split=split, settings=ExplainSettings(layers=[layer], heads=[head]))
                rows = [row["model"] for row in one["rows"] if row["id"] in chosen]
                heads.append({"layer": layer, "head": head, "pointing": mean(rows, "hit"),
                              "pointing_tolerant": mean(rows, "hit_tol")})
    return {"findings_scored": len(ids), "findings_skipped_few_normals": skipped, "normal_images": len(normals),
            "grid": [grid, grid], "maps": table, "heads": heads, "split": split}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo_output"),
                        help="a `medblip demo` output folder: its fine-tuned BLIP and benchmark (default: %(default)s)")
    parser.add_argument("--model", type=Path, help="a captioner folder (default: DEMO/ablation/full/checkpoints/best)")
    parser.add_argument("--data", type=Path, help="a synthetic benchmark folder (default: DEMO/data/synth, else "
                                                  "the demo's benchmark is rendered)")
    parser.add_argument("--n", type=int, default=1440, help="images to render without a benchmark (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--randomised", action=argparse.BooleanOptionalAction, default=True,
                        help="also score the architecture with random weights (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    model = args.model or args.demo / "ablation" / "full" / "checkpoints" / "best"
    if not (model / "config.json").is_file():
        parser.error(f"{model}: not a model folder with config.json (run `medblip demo` first, or give --model)")
    data = args.data or (args.demo / "data" / "synth" if (args.demo / "data" / "synth" / "facts.jsonl").is_file()
                         else None)
    rendered = None if data is not None else {"n": args.n, "size": 64, "seed": 0}
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="grounding-ceiling-") as tmp:
        if data is None:
            from medblip.data.synth import generate

            data = Path(tmp) / "data"
            generate(data, args.n, seed=0, size=64)
        result = measure(model, data, randomised=Path(tmp) / "random" if args.randomised else None)
    print(f"{result['findings_scored']} test findings, {result['grid'][0]} x {result['grid'][1]} patch grid, "
          f"{result['normal_images']} finding-free training images "
          f"({result['findings_skipped_few_normals']} findings left out: under {MIN_NORMALS} of their modality)")
    print("| map | pointing game | tolerant | energy in the lesion |\n|---|---:|---:|---:|")
    for name, row in result["maps"].items():
        print(f"| {name} | {row['pointing']:.3f} | {row['pointing_tolerant']:.3f} | {row['energy']:.4f} |")
    if result["heads"]:
        best = max(result["heads"], key=lambda h: h["pointing"])
        print(f"single heads: pointing {min(h['pointing'] for h in result['heads']):.3f}-{best['pointing']:.3f} "
              f"(best: layer {best['layer']} head {best['head']})")
    write_json(args.json, {"benchmark": "grounding_ceiling", "model": str(model), "data": rendered or str(data),
                           **result, "environment": environment("cpu"), "command": " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
