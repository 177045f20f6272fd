"""Is the lesion's side in the captioner's image features, or is it lost on the way to the caption?

Usage: python benchmarks/side_probe.py [--demo demo_output] [--model FOLDER ...] [--data SYNTH_DIR]
       [--no-randomised] [--json FILE.json]

`medblip demo`'s fine-tuned BLIP names the side of one-sided lesions no better than the majority side
(issue 21, item 2). This asks where the side is lost. On the benchmark's one-sided lesions it fits
L2-regularised logistic regressions ("linear probes") on the training split and scores them on the test
split, from:

- ``pixels``: the processor's input pixels, flattened (no model);
- ``features``: the vision tower's patch features (last hidden state, CLS left out), flattened;
- ``halves``: those features' mean over the left half of the patch grid minus their mean over the
  right half (one vector per image; a readout that knows nothing of where the lesion is);

and sets beside them the side that the model's own greedy test captions name (as the demo's
``shape.json`` counts it) and the majority side's rate. ``random weights`` (unless ``--no-randomised``)
probes the first model's architecture with its weights redrawn (``random_weights_copy``, seed 0).

The penalty of each probe is chosen on a fifth of the training lesions held out (``PENALTIES``), then the
probe is refitted on all of them. A probe that reads the side well where the captions do not name it
says that the features hold it and the decoder does not use it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_utils import encode_patches, environment, greedy_test_captions, write_json

PENALTIES = (1e-3, 1e-2, 1e-1, 1.0)  # L2 weight on the standardised features (mean squared loss scale)
HOLD_OUT = 0.2  # share of the training lesions that chooses the penalty


def _fit(x: torch.Tensor, y: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + penalty * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    return float((((x @ w + b) > 0).double() == y).double().mean())


def probe(features: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int = 0
          ) -> dict[str, float]:
    """Test accuracy of a linear probe fitted on ``train`` (penalty chosen on a held-out fifth of it)."""
    x = torch.from_numpy(features.reshape(len(features), -1)).double()
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)  # standardised on the training lesions only
    t = torch.from_numpy(y).double()
    idx = np.flatnonzero(train)
    held = np.random.default_rng(seed).permutation(idx)[: int(len(idx) * HOLD_OUT)]
    fit = np.setdiff1d(idx, held)
    chosen = max(PENALTIES, key=lambda p: _accuracy(x[held], t[held], *_fit(x[fit], t[fit], p)))
    w, b = _fit(x[idx], t[idx], chosen)
    return {"accuracy": round(_accuracy(x[test], t[test], w, b), 4), "penalty": chosen}


def measure(models: list[Path], data: Path, randomised: Path | None = None) -> dict[str, Any]:
    from medblip.data import load_dataset, load_image
    from medblip.data.synth import load_facts
    from medblip.experiments.shape import side_rates
    from medblip.models import create_model

    facts = load_facts(data)
    records = [r for r in load_dataset(data, splits=["train", "test"]).records
               if (facts.get(r.id) or {}).get("side") in ("left", "right")
               and facts[r.id].get("finding") not in (None, "none")]
    train = np.array([r.split == "train" for r in records])
    test = np.array([r.split == "test" for r in records])
    if train.sum() < 20 or test.sum() < 10:
        raise SystemExit(f"error: {data}: too few one-sided lesions ({train.sum()} train, {test.sum()} test)")
    y = np.array([facts[r.id]["side"] == "left" for r in records], dtype=np.float64)
    images = [load_image(r.image) for r in records]
    adapters = [(str(m), create_model(m)) for m in models]
    if randomised is not None:
        from medblip.explain.benchmark import random_weights_copy

        adapters.append(("random weights", random_weights_copy(adapters[0][1], randomised, seed=0)))
    rows: list[dict[str, Any]] = []
    for name, adapter in adapters:
        pixels, feats, grid = encode_patches(adapter, images)
        if not rows:
            rows.append({"model": "none", "features": "pixels", **probe(pixels, y, train, test)})
        by_place = feats.reshape(len(feats), grid, grid, -1)
        halves = by_place[:, :, : grid // 2].mean((1, 2)) - by_place[:, :, grid // 2:].mean((1, 2))
        named, majority, _ = side_rates(greedy_test_captions(adapter, data), facts)
        rows.append({"model": name, "features": "features", **probe(feats, y, train, test)})
        rows.append({"model": name, "features": "halves", **probe(halves, y, train, test)})
        rows.append({"model": name, "features": "its greedy captions (not a probe)", "accuracy": named,
                     "majority": majority})
    return {"one_sided_lesions": {"train": int(train.sum()), "test": int(test.sum())},
            "majority": round(float(max(y[test].mean(), 1 - y[test].mean())), 4), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo_output"),
                        help="a `medblip demo` output folder: its fine-tuned BLIP, its stand-in and benchmark "
                             "(default: %(default)s)")
    parser.add_argument("--model", type=Path, action="append",
                        help="a captioner folder (repeat for several; default: DEMO's stand-in and fine-tuned BLIP)")
    parser.add_argument("--data", type=Path, help="a synthetic benchmark folder (default: DEMO/data/synth)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--randomised", action=argparse.BooleanOptionalAction, default=True,
                        help="also probe the first model's architecture with random weights (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    models = args.model or [args.demo / "models" / "tiny-blip", args.demo / "ablation" / "full" / "checkpoints" / "best"]
    for m in models:
        if not (m / "config.json").is_file():
            parser.error(f"{m}: not a model folder with config.json (run `medblip demo` first, or give --model)")
    data = args.data or args.demo / "data" / "synth"
    if not (data / "facts.jsonl").is_file():
        parser.error(f"{data}: not a synthetic benchmark (no facts.jsonl); give --data")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="side-probe-") as tmp:
        result = measure(models, data, Path(tmp) / "random" if args.randomised else None)
    n = result["one_sided_lesions"]
    print(f"one-sided lesions: {n['train']} train, {n['test']} test; majority side {result['majority']:.3f}")
    print("| model | read from | side right (test) | probe penalty |\n|---|---|---:|---:|")
    for r in result["rows"]:
        acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        print(f"| {r['model']} | {r['features']} | {acc} | {r.get('penalty', '')} |")
    write_json(args.json, {"benchmark": "side_probe", "models": [str(m) for m in models], "data": str(data),
                           **result, "environment": environment("cpu"), "command": " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
