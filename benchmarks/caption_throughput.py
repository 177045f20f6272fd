"""Captioning throughput: transformers' ``generate`` vs medblip's :class:`FastCaptioner`, same model and batch.

    python benchmarks/caption_throughput.py --device cpu --shapes tiny --batches 3 --json out.json
    python benchmarks/caption_throughput.py --device cuda --shapes base --json h100.json   # 3 beams, 40 tokens, batch 32

Variants (``--variants``; default ``naive,medblip,evaluate`` on CPU, ``naive,naive_bf16,medblip,evaluate`` on
CUDA):

* ``naive``: ``processor(images)`` then ``model.generate(pixel_values, num_beams, max_new_tokens)`` in fp32.
* ``naive_bf16``: the same under ``torch.autocast(bfloat16)``.
* ``medblip``: uint8 pixels normalised on the device, then :class:`medblip.perf.captioner.FastCaptioner`
  (SDPA vision encoder, cross-attention K/V once per image, preallocated KV cache, bf16 autocast
  and CUDA-graph decode steps on CUDA; fp32 and eager steps on CPU).
* ``evaluate``: captioning the way ``medblip evaluate`` / ``medblip caption`` do it:
  :func:`medblip.evaluation.predict` on the in-memory images as records (the captioner it selects --
  :func:`medblip.perf.captioner.select_captioner`, the fast one when it supports the settings, in the
  model's own dtype --, the processor, the prediction rows), timed batch by batch through its
  ``on_batch`` callback after ``--warmup`` batches.

``--min-new-tokens`` defaults to ``--max-new-tokens``: every caption is decoded to its full length,
so random weights (which stop at random places) give the worst case, the same work in every variant.
Captions per second = batch size / median batch time. ``identical_captions``: the fraction of the
medblip captions equal to the naive fp32 ones (1.0 expected in fp32; bf16 may differ);
``identical_captions_evaluate``: the same for the evaluate variant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch

import bench_utils as bu


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--family", default="blip", help="blip or vit-gpt2 (vit-gpt2: transformers' generate + bf16/SDPA)")
    p.add_argument("--shapes", default="tiny", choices=bu.SHAPES)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=5, help="timed batches per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches first (and CUDA-graph capture)")
    p.add_argument("--beams", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--min-new-tokens", type=int, default=None, help="default: = --max-new-tokens")
    p.add_argument("--variants", default=None, help="comma list of naive, naive_bf16, medblip, evaluate")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="medblip's precision")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--no-sdpa", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", default="wall", choices=sorted(bu.CLOCKS),
                   help="wall time, or the process's CPU time (steadier on a shared CPU machine; wall time on CUDA)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = bu.bench_device(args.device, args.threads, args.clock)
    variants = (args.variants.split(",") if args.variants else
                (["naive", "naive_bf16", "medblip", "evaluate"] if device.type == "cuda"
                 else ["naive", "medblip", "evaluate"]))
    min_new = args.max_new_tokens if args.min_new_tokens is None else args.min_new_tokens
    adapter = bu.build_adapter(args.family, args.shapes, device=device, seed=args.seed)
    adapter.eval_mode()
    size = bu.image_size_of(adapter)
    bs = args.batch_size
    n = bs * (args.warmup + args.batches)
    pixels = bu.synthetic_pixels(n, size, seed=args.seed)
    from PIL import Image

    pil = [Image.fromarray(p, "RGB") for p in pixels]
    gen = {"num_beams": args.beams, "max_new_tokens": args.max_new_tokens, "min_new_tokens": min_new}
    result: dict[str, Any] = {
        "benchmark": "caption_throughput", "environment": bu.environment(device), "command": " ".join(sys.argv),
        "family": adapter.family, "shapes": args.shapes, "batch_size": bs, "batches": args.batches,
        "warmup": args.warmup, "image_size": size, "generation": gen, "clock": bu.clock_name(), "results": {},
    }
    captions: dict[str, list[str]] = {}

    def naive(bf16: bool) -> dict[str, Any]:
        out_caps: list[str] = []
        prep = [0.0]
        model = adapter.base_model

        def run(i: int) -> None:
            imgs = pil[i * bs:(i + 1) * bs]
            t0 = bu.clock()
            pv = adapter.processor.image_processor(images=imgs, return_tensors="pt")["pixel_values"].to(device)
            prep[0] += bu.clock() - t0
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)
            with ctx, torch.no_grad():
                ids = model.generate(pixel_values=pv, **gen)
            if i >= args.warmup:
                out_caps.extend(adapter.decode(ids))

        r = bu.run_timed(run, steps=args.batches, warmup=args.warmup, device=device)
        r["prep_seconds_total"] = prep[0]
        captions["naive_bf16" if bf16 else "naive"] = out_caps
        return r

    def medblip() -> dict[str, Any]:
        from medblip.perf.batching import PixelNormalizer
        from medblip.perf.captioner import FastCaptioner

        fc = FastCaptioner(adapter, precision=args.precision, cuda_graphs=not args.no_cuda_graphs,
                           sdpa=not args.no_sdpa)
        norm = PixelNormalizer(adapter.processor.image_processor)
        out_caps: list[str] = []

        def run(i: int) -> None:
            pv = norm(pixels[i * bs:(i + 1) * bs], device=device)
            caps = fc.generate(pixel_values=pv, **gen) if adapter.family == "blip" else \
                fc.generate(pil[i * bs:(i + 1) * bs], **gen)
            if i >= args.warmup:
                out_caps.extend(caps)

        r = bu.run_timed(run, steps=args.batches, warmup=args.warmup, device=device)
        r["options"] = {"precision": fc.precision, "cuda_graphs": fc.cuda_graphs, "static_cache": fc.static,
                        "sdpa": fc.sdpa, "fallbacks": dict(fc.fallbacks)}
        captions["medblip"] = out_caps
        return r

    def evaluate() -> dict[str, Any]:
        from types import SimpleNamespace

        from medblip.evaluation.predict import make_settings, predict

        # in-memory images like the other variants' (evaluate decodes files in a thread, ahead of captioning)
        items = [SimpleNamespace(id=f"img{i:06d}", image=None, pil=im) for i, im in enumerate(pil)]
        ends: list[float] = []

        def batch_done(rows: list[dict[str, Any]]) -> None:
            bu.sync(device)
            ends.append(bu.clock())

        with bu.PeakMemory(device) as mem:
            bu.sync(device)
            start = bu.clock()
            run = predict(adapter, items, None, make_settings(gen), batch_size=bs, progress=False,
                          image_of=lambda item: item.pil, fields_of=lambda item: {}, on_batch=batch_done)
        times = np.diff([start, *ends])[args.warmup:]
        captions["evaluate"] = [row["prediction"] for row in run.rows][args.warmup * bs:]
        return {"seconds": float(times.sum()), "step_seconds_median": float(np.median(times)),
                "step_seconds": [round(float(t), 6) for t in times], "peak_memory_bytes": mem.peak,
                "memory_kind": mem.kind, "captioner": run.captioner}

    for name in variants:
        bu.release(device)
        if name == "naive":
            r = naive(False)
        elif name == "naive_bf16":
            r = naive(True)
        elif name == "medblip":
            r = medblip()
        elif name == "evaluate":
            r = evaluate()
        else:
            raise SystemExit(f"unknown variant {name!r}")
        r["captions_per_second"] = bs / r["step_seconds_median"]
        r["captions_per_second_mean"] = bs * args.batches / r["seconds"]
        result["results"][name] = r
    res = result["results"]
    bu.add_ratios(result, "captions_per_second")
    if "evaluate" in res and "naive" in res:
        result["ratio_evaluate"] = res["evaluate"]["captions_per_second"] / res["naive"]["captions_per_second"]
    for name, key in (("medblip", "identical_captions"), ("evaluate", "identical_captions_evaluate")):
        if name in res and "naive" in res:
            same = sum(a == b for a, b in zip(captions["naive"], captions[name], strict=True))
            result[key] = same / max(1, len(captions["naive"]))
    result["example_captions"] = {k: v[:2] for k, v in captions.items()}
    bu.print_table(f"caption throughput: {adapter.family} {args.shapes}, batch {bs}, {args.beams} beams, "
                   f"{args.max_new_tokens} new tokens on {result['environment'].get('gpu') or result['environment']['cpu']}",
                   list(res.items()), "captions_per_second", "captions/s")
    bu.print_ratios(result)
    if "ratio_evaluate" in result:
        print(f"  ratio evaluate / naive: {result['ratio_evaluate']:.2f}x")
    for name, key in (("medblip", "identical_captions"), ("evaluate", "identical_captions_evaluate")):
        if key in result:
            print(f"  identical captions {name} / naive: {result[key]:.0%}")
    bu.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
