"""Training throughput: the naive Hugging Face loop vs medblip's optimised step, same model, same batch.

    python benchmarks/train_throughput.py --device cpu --shapes tiny --strategy full --steps 5 --json out.json
    python benchmarks/train_throughput.py --device cuda --shapes base --strategy decoder_only --json h100.json

Variants (``--variants``; default ``naive,medblip,trainer`` on CPU, ``naive,naive_bf16,medblip,trainer`` on
CUDA):

* ``naive``: ``BlipForConditionalGeneration`` forward/backward in fp32, ``torch.optim.AdamW`` (default
  implementation), the processor called on PIL images + captions every step, captions padded to
  ``--max-tokens`` (64), frozen groups by ``requires_grad_(False)`` -- what a plain HF script does.
* ``naive_bf16``: the same under ``torch.autocast(bfloat16)``.
* ``medblip``: :class:`fast_step.FastTrainStep` (the trainer's pieces without the loop around them): bf16 autocast on CUDA (fp32 on CPU),
  SDPA attention, fused AdamW on CUDA, uint8 pixels normalised on the device, dynamic padding with
  length buckets; ``decoder_only``: frozen-encoder features cached once (the build is timed
  separately and reported, with the amortised rate over 1/3/10 epochs of the image pool).
* ``trainer``: ``medblip.training.train`` itself, with a user's default settings for the device, on
  the same images (written to a manifest dataset whose training split is the pool, and a ``medblip
  data cache`` image cache) and captions, for ``--warmup + --steps`` optimizer steps. The loop reports
  the end of every step (its ``should_stop`` callback), so its rate covers the same ``--steps`` steps
  after ``--warmup`` as the other variants, with everything the loop does per step (data loading,
  collate, gradient clipping, the scheduler, logging); it is compared with the naive loop's mean rate.
  ``decoder_only``: the feature-cache build runs before the first step; the rate amortised over
  1/3/10 epochs adds it back (the run's own ``cost.json`` figure, which includes it, is kept as
  ``images_per_second_run``).

Both loops prepare their batch inside the timed step (processor vs uint8 + tokenizer) and see the same
images and captions (``--captions mixed``: realistic lengths; ``long``: every caption at the maximum,
so padding saves nothing). Images per second = batch size / median step time (``images_per_second``;
robust on a shared machine), and batch size x steps / total time (``images_per_second_mean``).
Peak memory: CUDA max allocated, or the process RSS on CPU (sampled; includes the model).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch

import bench_utils as bu

GROUPS = {"full": (), "decoder_only": ("vision_encoder",), "encoder_only": ("text_decoder",)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--family", default="blip", help="blip or vit-gpt2")
    p.add_argument("--strategy", default="full", choices=sorted(GROUPS))
    p.add_argument("--shapes", default="tiny", choices=bu.SHAPES)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, autotuning, compile)")
    p.add_argument("--max-tokens", type=int, default=64, help="caption token limit (naive pads to it)")
    p.add_argument("--captions", default="mixed", choices=["mixed", "long"])
    p.add_argument("--pool", type=int, default=None,
                   help="distinct images (default: batch x (warmup + steps), at most 1024); the feature cache holds them all")
    p.add_argument("--variants", default=None, help="comma list of naive, naive_bf16, medblip, trainer")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="medblip's precision")
    p.add_argument("--no-sdpa", action="store_true")
    p.add_argument("--no-bucketing", action="store_true", help="the fast step without length buckets")
    p.add_argument("--length-buckets", default="auto", choices=["auto", "on", "off"],
                   help="train.length_buckets of the trainer variant (default: the config default, auto: on for "
                        "decoder_only on cached features, off otherwise)")
    p.add_argument("--no-feature-cache", action="store_true", help="decoder_only without cached features")
    p.add_argument("--compile", action="store_true", help="torch.compile medblip's module")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", default="wall", choices=sorted(bu.CLOCKS),
                   help="wall time, or the process's CPU time (steadier on a shared CPU machine; wall time on CUDA)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every variant this many times, the order reversed every other round (a shared machine's "
                        "load then falls on both sides alike); each variant's figures are its median round, each "
                        "ratio the median of the rounds' ratios")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def naive_freeze(adapter: Any, strategy: str) -> list[torch.nn.Parameter]:
    adapter.apply_strategy("full")  # everything trainable, nothing pinned
    groups = adapter.group_modules()
    for g in GROUPS[strategy]:
        for m in groups[g]:
            m.requires_grad_(False)
    return [p for p in adapter.model.parameters() if p.requires_grad]


def naive_batch(adapter: Any, images: list[Any], captions: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
    """What a plain script does: processor(images, text) padded to max_length; labels = ids, pad -> -100."""
    if adapter.family == "blip":
        enc = adapter.processor(images=images, text=captions, padding="max_length", max_length=max_tokens,
                                truncation=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return {"pixel_values": enc["pixel_values"], "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"], "labels": labels}
    tok = adapter.tokenizer
    pv = adapter.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    enc = tok([c + tok.eos_token for c in captions], padding="max_length", max_length=max_tokens, truncation=True,
              return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"pixel_values": pv, "labels": labels, "decoder_attention_mask": enc["attention_mask"]}


def run_naive(adapter: Any, args: argparse.Namespace, pil: list[Any], captions: list[str], bf16: bool) -> dict[str, Any]:
    device = adapter.device
    params = naive_freeze(adapter, args.strategy)
    opt = torch.optim.AdamW(params, lr=args.lr)
    model = adapter.base_model
    model.train()
    n, bs = len(pil), args.batch_size
    losses: list[float] = []
    prep = [0.0]

    def step(i: int) -> None:
        idx = [(i * bs + j) % n for j in range(bs)]
        t0 = bu.clock()
        batch = naive_batch(adapter, [pil[k] for k in idx], [captions[k] for k in idx], args.max_tokens)
        batch = {k: v.to(device) for k, v in batch.items()}
        prep[0] += bu.clock() - t0
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)
        with ctx:
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))

    out = bu.run_timed(step, steps=args.steps, warmup=args.warmup, device=device)
    opt.state.clear()
    out.update(images_per_second=bs / out["step_seconds_median"],
               images_per_second_mean=bs * args.steps / out["seconds"], prep_seconds_total=prep[0], loss_first=losses[0], loss_last=losses[-1],
               tokens_per_caption_padded=args.max_tokens)
    return out


def run_medblip(adapter: Any, args: argparse.Namespace, pixels: np.ndarray, captions: list[str]) -> dict[str, Any]:
    from fast_step import FastTrainStep, UInt8Collate, padding_fraction
    from medblip.perf.batching import LengthBucketBatchSampler
    from medblip.perf.captioner import autocast
    from medblip.perf.feature_cache import FeatureCache, encoder_fn, use_feature_cache
    from medblip.training.data import CaptionTokens

    device = adapter.device
    adapter.apply_strategy(args.strategy)
    n, bs = len(pixels), args.batch_size
    ids = [f"img{i:06d}" for i in range(n)]
    lengths = CaptionTokens(adapter, captions).lengths
    if args.no_bucketing:
        batches = [[(i * bs + j) % n for j in range(bs)] for i in range(-(-n // bs))]
    else:
        batches = [b for b in LengthBucketBatchSampler(lengths, bs, seed=args.seed) if len(b) == bs] or \
                  [[(j) % n for j in range(bs)]]
    info: dict[str, Any] = {"padding_fraction": padding_fraction(batches, lengths),
                            "tokens_per_caption_mean": float(np.mean(lengths))}
    cache = None
    if not args.no_feature_cache and use_feature_cache(adapter, "auto"):
        cache = FeatureCache.for_adapter(adapter, ids=ids, image_size=pixels.shape[1], store_device=device)
    stepper = FastTrainStep(adapter, lr=args.lr, precision=args.precision, sdpa=not args.no_sdpa,
                            compile=args.compile, feature_cache=cache)
    collate = UInt8Collate(adapter, pad_multiple=8, with_pixels=cache is None)
    if cache is not None:  # build the cache over the pool: one encoder pass per image, timed
        encode = encoder_fn(adapter, autocast=lambda: autocast(device, stepper.precision))
        index = {rid: i for i, rid in enumerate(ids)}

        def images_fn(chunk: list[str]) -> torch.Tensor:
            return stepper.normalizer(pixels[[index[c] for c in chunk]], device=device)

        with bu.timed(device) as t:
            cache.precompute(ids, images_fn, encode, batch_size=max(bs, 32))
        info["feature_cache"] = {"build_seconds": t["seconds"], "build_images_per_second": n / t["seconds"],
                                 "images": n, "bytes": cache.nbytes(), "store_device": str(device)}
    losses: list[float] = []
    prep = [0.0]

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        t0 = bu.clock()
        batch = collate([(pixels[k], captions[k]) for k in b])
        batch["ids"] = [ids[k] for k in b]
        prep[0] += bu.clock() - t0
        losses.append(float(stepper.step(batch)))

    try:
        out = bu.run_timed(step, steps=args.steps, warmup=args.warmup, device=device)
    finally:
        stepper.close()
    rate = bs / out["step_seconds_median"]
    out.update(images_per_second=rate, images_per_second_mean=bs * args.steps / out["seconds"],
               prep_seconds_total=prep[0],
               loss_first=losses[0], loss_last=losses[-1], **info,
               options={"precision": stepper.precision, "sdpa": not args.no_sdpa, "bucketing": not args.no_bucketing,
                        "fused_adamw": device.type == "cuda", "compile": args.compile,
                        "feature_cache": cache is not None, "pad_multiple": 8})
    if cache is not None:
        fc = info["feature_cache"]
        for epochs in (1, 3, 10):
            total = epochs * n
            out[f"amortized_images_per_second_{epochs}_epochs"] = total / (fc["build_seconds"] + total / rate)
    return out


def run_trainer(adapter: Any, args: argparse.Namespace, pil: list[Any], captions: list[str]) -> dict[str, Any]:
    import json
    import os
    import tempfile
    from pathlib import Path

    from medblip.data.cache import build_image_cache
    from medblip.training.config import validate_config
    from medblip.training.trainer import train

    device = adapter.device
    size = bu.image_size_of(adapter)
    steps = args.warmup + args.steps
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="medblip-train-bench-") as tmp:
        root = Path(tmp)
        (root / "data" / "images").mkdir(parents=True)
        rows = []
        for i, (image, caption) in enumerate(zip(pil, captions, strict=True)):
            image.save(root / "data" / "images" / f"img{i:06d}.png")
            rows.append({"id": f"img{i:06d}", "image": f"images/img{i:06d}.png", "caption": caption, "split": "train"})
        # a small validation split of its own, so the training split is exactly the other variants' pool
        rows += [{**r, "id": f"val{i:06d}", "split": "validation"} for i, r in enumerate(rows[:4])]
        (root / "data" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        build_image_cache(root / "data", root / "cache", size=size)
        adapter.model.save_pretrained(root / "model")
        adapter.processor.save_pretrained(root / "model")
        config = validate_config({
            "model": {"name_or_path": str(root / "model")},
            "data": {"path": str(root / "data"), "image_size": size, "image_cache": str(root / "cache"),
                     "num_workers": min(8, os.cpu_count() or 1) if cuda else 0},
            "strategy": {"name": args.strategy},
            "train": {"max_steps": steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                      "mixed_precision": "bf16" if cuda and args.precision != "fp32" else "no",
                      "sdpa": "off" if args.no_sdpa else "auto", "length_buckets": args.length_buckets,
                      "cache_features": "off" if args.no_feature_cache else "auto",
                      "warmup_steps": 0, "eval_every_epochs": None, "val_generate": False},
            "output": {"dir": str(root / "run")},
        }, "train_throughput")
        # the end of every optimizer step, as the loop itself reports it (data loading, logging and all)
        ends: list[float] = []

        def step_end(step: int) -> bool:
            bu.sync(device)
            ends.append(bu.clock())
            return False

        result = train(config, progress=False, should_stop=step_end)
        cost = json.loads((root / "run" / "cost.json").read_text(encoding="utf-8"))
        run_info = json.loads((root / "run" / "run.json").read_text(encoding="utf-8"))
        kernels = run_info["distributed"]["kernels"]
        rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines() if line]
        losses = [r["loss"] for r in rows if r.get("split") == "train" and "loss" in r]
    # timed like the other variants: the --steps steps after the --warmup ones
    timed = np.diff(ends[max(args.warmup - 1, 0):])  # (without warmup: from the end of the first step)
    bs = args.batch_size
    out = {"images_per_second": bs * len(timed) / float(timed.sum()),
           "images_per_second_median": bs / float(np.median(timed)),
           "seconds": float(timed.sum()), "step_seconds_median": float(np.median(timed)),
           "images_per_second_run": cost["images_per_second"], "train_seconds_run": cost["train_seconds"],
           "wall_seconds": cost["wall_seconds"], "steps": result.global_step,
           "peak_memory_bytes": cost.get("peak_memory_bytes", 0), "memory_kind": cost.get("peak_memory_kind"),
           "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
           "options": {"mixed_precision": config.train.mixed_precision, **kernels,
                       "length_buckets": config.train.length_buckets,
                       "length_buckets_used": run_info["length_buckets"]["used"],
                       "num_workers": config.data.num_workers, "image_cache": True}}
    fc = cost.get("feature_cache") or {}
    if fc.get("used"):  # built before the first step: the timed steps run on cached features
        out["feature_cache"] = fc
        rate = out["images_per_second_after_cache_build"] = out["images_per_second"]
        build = fc["build_cpu_seconds"] if bu.clock_name() == "cpu" else fc["build_seconds"]  # on the bench's clock
        out["feature_cache_build_seconds"] = build
        for epochs in (1, 3, 10):  # the build once, then `epochs` passes over the cached images
            total = epochs * fc["records"]
            out[f"amortized_images_per_second_{epochs}_epochs"] = total / (build + total / rate)
    return out


#: result key -> (numerator variant, its rate key, denominator variant, its rate key)
RATIO_KEYS = {
    "ratio": ("medblip", "images_per_second", "naive", "images_per_second"),
    "ratio_vs_naive_bf16": ("medblip", "images_per_second", "naive_bf16", "images_per_second"),
    # the trainer's rate is the mean over its timed steps: against the naive loop's mean rate
    "ratio_trainer": ("trainer", "images_per_second", "naive", "images_per_second_mean"),
    "ratio_trainer_amortized_3_epochs": ("trainer", "amortized_images_per_second_3_epochs", "naive",
                                         "images_per_second_mean"),
}


def round_ratios(res: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    for key, (a, rate_a, b, rate_b) in RATIO_KEYS.items():
        if rate_a in res.get(a, {}) and rate_b in res.get(b, {}):
            out[key] = res[a][rate_a] / res[b][rate_b]
    return out


def run_variant(name: str, adapter: Any, args: argparse.Namespace, pixels: np.ndarray, pil: list[Any],
                captions: list[str]) -> dict[str, Any]:
    if name == "naive":
        return run_naive(adapter, args, pil, captions, bf16=False)
    if name == "naive_bf16":
        return run_naive(adapter, args, pil, captions, bf16=True)
    if name == "medblip":
        return run_medblip(adapter, args, pixels, captions)
    if name == "trainer":
        return run_trainer(adapter, args, pil, captions)
    raise SystemExit(f"unknown variant {name!r}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = bu.bench_device(args.device, args.threads, args.clock)
    torch.manual_seed(args.seed)
    variants = (args.variants.split(",") if args.variants else
                (["naive", "naive_bf16", "medblip", "trainer"] if device.type == "cuda"
                 else ["naive", "medblip", "trainer"]))
    adapter = bu.build_adapter(args.family, args.shapes, device=device, seed=args.seed, max_length=args.max_tokens)
    size = bu.image_size_of(adapter)
    n = args.pool or min(1024, args.batch_size * (args.warmup + args.steps))
    n = max(n, args.batch_size)
    pixels = bu.synthetic_pixels(n, size, seed=args.seed)
    from PIL import Image

    pil = [Image.fromarray(p, "RGB") for p in pixels]
    captions = bu.synthetic_captions(n, lengths=args.captions, max_words=args.max_tokens, seed=args.seed)
    result: dict[str, Any] = {
        "benchmark": "train_throughput", "environment": bu.environment(device), "command": " ".join(sys.argv),
        "family": adapter.family, "shapes": args.shapes, "strategy": args.strategy, "batch_size": args.batch_size,
        "steps": args.steps, "warmup": args.warmup, "image_size": size, "max_tokens": args.max_tokens,
        "captions": args.captions, "pool_images": n, "clock": bu.clock_name(), "rounds": args.rounds,
        "parameters": sum(p.numel() for p in adapter.model.parameters()), "results": {},
    }
    rounds: list[dict[str, Any]] = []
    for r in range(max(1, args.rounds)):
        runs = {}
        for name in (variants if r % 2 == 0 else variants[::-1]):
            bu.release(device)
            runs[name] = run_variant(name, adapter, args, pixels, pil, captions)
        rounds.append({"results": runs, **round_ratios(runs)})
    res = result["results"]
    for name in variants:  # each variant's median round
        ordered = sorted((rd["results"][name] for rd in rounds), key=lambda x: x["images_per_second"])
        res[name] = ordered[(len(ordered) - 1) // 2]
    for key in RATIO_KEYS:
        values = [rd[key] for rd in rounds if key in rd]
        if values:
            result[key] = float(np.median(values))
    if len(rounds) > 1:
        result["per_round"] = [{k: v for k, v in rd.items() if k != "results"} |
                            {"images_per_second": {n: x["images_per_second"] for n, x in rd["results"].items()}}
                            for rd in rounds]
    bu.print_table(f"train throughput: {adapter.family} {args.shapes} {args.strategy} batch {args.batch_size} "
                   f"on {result['environment'].get('gpu') or result['environment']['cpu']}",
                   list(res.items()), "images_per_second", "images/s")
    if "feature_cache" in res.get("medblip", {}):
        fc = res["medblip"]["feature_cache"]
        print(f"  feature cache build: {fc['build_images_per_second']:.1f} images/s; amortised over 1/3/10 epochs: "
              + " / ".join(f"{res['medblip'][f'amortized_images_per_second_{e}_epochs']:.1f}" for e in (1, 3, 10)))
    if "amortized_images_per_second_3_epochs" in res.get("trainer", {}):
        t = res["trainer"]
        print(f"  trainer, its feature-cache build ({t['feature_cache_build_seconds']:.2f} s) amortised over 1/3/10 "
              "epochs: "
              + " / ".join(f"{t[f'amortized_images_per_second_{e}_epochs']:.1f}" for e in (1, 3, 10)))
    bu.print_ratios(result)
    if "ratio_trainer_amortized_3_epochs" in result:
        print(f"  ratio trainer, cache build amortised over 3 epochs / naive: "
              f"{result['ratio_trainer_amortized_3_epochs']:.2f}x")
    if len(rounds) > 1:
        print(f"  ({len(rounds)} rounds; ratios are medians of: "
              + "; ".join(", ".join(f"{k} {rd[k]:.2f}" for k in RATIO_KEYS if k in rd) for rd in rounds) + ")")
    bu.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
