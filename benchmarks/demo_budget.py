"""The demo's fine-tuning at larger budgets: when does the stand-in learn the lesion side and point?

Usage: python benchmarks/demo_budget.py [--n 4000] [--epochs 8,16] [--model standin|FOLDER] [--seed 0]
       [--lr LR] [--json FILE.json] [--keep DIR]

`medblip demo` fine-tunes the BLIP stand-in on 1,152 images for 8 epochs (288 steps) and, so measured,
names the side of one-sided lesions no better than the majority side, and its attention hits the lesion
for 0.04-0.06 of the test findings (issue 21, item 2). This runs *the demo's own recipe*
(``configs/demo/full.yaml``: its ``train:`` section, strategy ``full``, greedy captions) on a benchmark
of ``--n`` images for each ``--epochs`` value, and prints, as the demo's ``shape.json`` computes them:

- the side named right on one-sided lesions (``medblip.experiments.shape.side_rates``) and the
  majority side's rate;
- the pointing game of the finding words' attention (``medblip explain --evaluate``'s strict one),
  the uniform map's expected score, and the tolerant one (within 0.05 of the image side);
- optimizer steps and training seconds.

``--model standin`` pretrains the demo's BLIP stand-in (``configs/demo/pretrain_tiny.yaml``, recipe
``full``, the benchmark's captions in its tokenizer; about 2 minutes on one thread).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench_utils import environment, greedy_test_captions, image_size_of, write_json


def measure(model_dir: Path, image_size: int, data: Path, epochs: int, seed: int, work: Path,
            keep: Path | None = None, lr: float | None = None) -> dict[str, Any]:
    from medblip.data.synth import load_facts
    from medblip.experiments.demo import load_recipe, tiny_config
    from medblip.experiments.shape import side_rates
    from medblip.explain.benchmark import evaluate_grounding
    from medblip.models import create_model
    from medblip.training.trainer import train

    recipe = load_recipe("full")
    train_section = {**recipe.train, "epochs": epochs, **({"lr": lr} if lr is not None else {})}
    recipe = recipe.model_copy(update={"train": train_section})
    config = tiny_config(model_dir, data, work / f"epochs{epochs}", recipe, f"budget-e{epochs}", image_size, seed)
    t0 = time.perf_counter()
    result = train(config, progress=False)
    seconds = time.perf_counter() - t0
    checkpoint = result.best_checkpoint or result.last_checkpoint  # the demo scores `best`
    if keep is not None:
        shutil.copytree(checkpoint, keep / f"epochs{epochs}", dirs_exist_ok=True)
    adapter = create_model(checkpoint)
    side, majority, n_sided = side_rates(greedy_test_captions(adapter, data, dict(recipe.generation)), load_facts(data))
    grounding = evaluate_grounding(adapter, data, split="test")
    scores = grounding["summary"]["scores"]
    return {
        "epochs": epochs, "lr": train_section["lr"], "steps": result.global_step,
        "train_seconds": round(seconds, 1),
        "side": side, "side_majority": majority, "one_sided_lesions": n_sided,
        "side_over_majority": None if side is None or majority is None else round(side - majority, 4),
        "pointing": scores["model"]["hit"], "pointing_uniform": scores["uniform"]["hit"],
        "pointing_tolerant": scores["model"]["hit_tol"], "pointing_uniform_tolerant": scores["uniform"]["hit_tol"],
        "findings_scored": grounding["summary"]["n"], "pointing_p_vs_uniform": grounding["p_value"]["vs_uniform"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="standin", help="standin or a model folder (default: %(default)s)")
    parser.add_argument("--data", type=Path, help="an existing synthetic benchmark folder (else one is rendered)")
    parser.add_argument("--n", type=int, default=4000, help="images to render (default: %(default)s; the demo's: 1440)")
    parser.add_argument("--size", type=int, default=64, help="their size in pixels (default: %(default)s, the demo's)")
    parser.add_argument("--data-seed", type=int, default=0, help="their seed (default: %(default)s)")
    parser.add_argument("--epochs", default="8,16", help="comma-separated budgets (default: %(default)s; the demo's: 8)")
    parser.add_argument("--seed", type=int, default=0, help="stand-in and fine-tuning seed (default: %(default)s)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the demo's, configs/demo/full.yaml)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s, as the demo)")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--keep", type=Path, help="keep each budget's fine-tuned model as KEEP/epochsE "
                                                  "(for grounding_ceiling.py --model)")
    args = parser.parse_args(argv)
    try:
        budgets = [int(e) for e in args.epochs.split(",") if e.strip()]
    except ValueError:
        parser.error(f"--epochs {args.epochs!r}: comma-separated whole numbers expected")
    if not budgets or min(budgets) < 1:
        parser.error("--epochs: at least one budget of 1 epoch or more")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr {args.lr}: a positive learning rate expected")
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="demo-budget-") as tmp:
        work = Path(tmp)
        data = args.data
        if data is None:
            from medblip.data.synth import generate

            data = work / "data"
            generate(data, args.n, seed=args.data_seed, size=args.size)
        if args.model == "standin":
            from medblip.experiments.demo import train_captions
            from medblip.experiments.pretrain import pretrain_tiny

            print("pretraining the demo's BLIP stand-in (about 2 minutes) ...", flush=True)
            model_dir = pretrain_tiny("blip", work / "standin", seed=args.seed, captions=train_captions(data))
        else:
            model_dir = Path(args.model)
            if not (model_dir / "config.json").is_file():
                raise SystemExit(f"error: --model {args.model}: not standin or a model folder with config.json")
        from medblip.models import create_model

        image_size = image_size_of(create_model(model_dir))
        print("| epochs | steps | train s | side | majority | pointing | uniform | tolerant |", flush=True)
        print("|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
        for epochs in budgets:
            r = measure(model_dir, image_size, data, epochs, args.seed, work, args.keep, args.lr)
            rows.append(r)
            side = "n/a" if r["side"] is None else f"{r['side']:.3f}"
            majority = "n/a" if r["side_majority"] is None else f"{r['side_majority']:.3f}"
            print(f"| {epochs} | {r['steps']} | {r['train_seconds']:.0f} | {side} | {majority} | "
                  f"{r['pointing']:.3f} | {r['pointing_uniform']:.3f} | {r['pointing_tolerant']:.3f} |", flush=True)
    result = {"benchmark": "demo_budget", "model": args.model, "seed": args.seed,
              "data": str(args.data) if args.data else {"n": args.n, "size": args.size, "seed": args.data_seed},
              "budgets": rows, "environment": environment("cpu"), "command": " ".join(sys.argv)}
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
