"""``medblip serve`` under load: micro-batching vs one request at a time, and shedding load with 503.

    python benchmarks/serve_load.py --json results/cpu-serve-load.json          # 200 requests, 16 clients
    python benchmarks/serve_load.py --model runs/roco-blip-full --device cuda --requests 1000 --clients 64

Starts ``medblip serve`` (a tiny random BLIP made with ``init_tiny`` unless ``--model`` is given) in a
child process on 127.0.0.1, sends synthetic radiology images as OpenAI chat completions (base64 data
URIs) with ``httpx``, and measures, in the same run against the same server:

1. **sequential**: ``--sequential`` requests from one client, one at a time (the rate without batching);
2. **concurrent**: ``--requests`` requests from ``--clients`` concurrent clients (each sends its next
   request when the previous one is answered): p50/p95 latency, throughput, its ratio to (1), how many
   forward passes the server ran (``/stats``) and whether every image got the caption it got alone;
3. **overload**: ``--burst`` requests at once against a queue of ``--max-queue``: the surplus must be
   refused with 503 + ``Retry-After`` at once, not hang; for scale, the same burst of ``GET /health``
   (no work behind it) is timed first, since opening that many connections at once has its own cost.

Every request has a timeout (``--timeout``) and the whole run a deadline (``--time-limit``), so a
broken server ends the benchmark with failures counted instead of hanging it. Exits 1 when a request
of phases 1-2 failed or was lost, or when the overload phase got no 503.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from medblip.perf import bench_utils as bu


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model to serve (default: a tiny random BLIP)")
    p.add_argument("--requests", type=int, default=200, help="requests of the concurrent phase")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--sequential", type=int, default=40, help="requests of the one-at-a-time phase")
    p.add_argument("--burst", type=int, default=None, help="overload phase: requests at once (default 4 x --max-queue)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--image-size", type=int, default=256, help="side of the synthetic images sent")
    p.add_argument("--images", type=int, default=16, help="distinct images, sent in turn")
    p.add_argument("--device", default=None, help="the server's --device")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server (OMP_NUM_THREADS)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole run")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def tiny_model(root: Path) -> Path:
    from medblip.models import init_tiny

    # vision weights of ordinary scale, so different images get different captions
    return init_tiny("blip", root / "tiny-blip", image_size=64, seed=0, vision_init_std=0.02)


def image_bodies(n: int, size: int, model: str) -> list[dict[str, Any]]:
    from medblip.data.synth import render_record

    bodies = []
    for i in range(n):
        _, jpeg, _ = render_record(0, i, size)
        uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        bodies.append({"model": model, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Caption this radiology image."},
            {"type": "image_url", "image_url": {"url": uri}}]}]})
    return bodies


async def send(client: httpx.AsyncClient, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        resp = await client.post("/v1/chat/completions", json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        return {"status": None, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
    out: dict[str, Any] = {"status": resp.status_code, "seconds": time.perf_counter() - t0,
                           "retry_after": resp.headers.get("retry-after")}
    if resp.status_code == 200:
        out["caption"] = resp.json()["choices"][0]["message"]["content"]
    else:
        out["error"] = resp.text[:200]
    return out


async def closed_loop(url: str, bodies: list[dict[str, Any]], n: int, clients: int, timeout: float,
                      deadline: float) -> tuple[list[dict[str, Any]], float]:
    """``n`` requests from ``clients`` clients, each sending its next one when answered."""
    results: list[dict[str, Any] | None] = [None] * n
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        async def worker() -> None:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                r = await send(client, bodies[i % len(bodies)], timeout)
                results[i] = {**r, "image": i % len(bodies)}

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return [r if r is not None else {"status": None, "error": "not sent (deadline)", "lost": True} for r in results], elapsed


async def burst(url: str, body: dict[str, Any] | None, n: int, timeout: float) -> tuple[list[dict[str, Any]], float]:
    """``n`` requests at once on fresh connections: chat completions, or ``GET /health`` (``body=None``)
    to measure what a burst costs the machine (connections, the event loop) with no work behind it."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        async def health() -> dict[str, Any]:
            t0 = time.perf_counter()
            resp = await client.get("/health", timeout=timeout)
            return {"status": resp.status_code, "seconds": time.perf_counter() - t0}

        t0 = time.perf_counter()
        results = await asyncio.gather(*(send(client, body, timeout) if body else health() for _ in range(n)))
        return list(results), time.perf_counter() - t0


def latency(results: list[dict[str, Any]]) -> dict[str, float | None]:
    secs = sorted(r["seconds"] for r in results if r.get("status") == 200)
    if not secs:
        return {"p50": None, "p95": None, "max": None}
    q = statistics.quantiles(secs, n=20, method="inclusive") if len(secs) > 1 else [secs[0]] * 19
    return {"p50": statistics.median(secs), "p95": q[18], "max": secs[-1]}


def stats(url: str) -> dict[str, Any]:
    return httpx.get(url + "/stats", timeout=10).json()


def batch_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    sizes: dict[str, int] = {}
    for k, v in after["batch_sizes"].items():
        d = v - before["batch_sizes"].get(k, 0)
        if d:
            sizes[k] = d
    requests = sum(int(k) * v for k, v in sizes.items())
    batches = sum(sizes.values())
    return {"forward_passes": batches, "requests": requests, "mean_batch": requests / batches if batches else 0.0,
            "batch_sizes": sizes}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from medblip.serving.process import ServerProcess

    deadline = time.monotonic() + args.time_limit
    tmp = Path(tempfile.mkdtemp(prefix="medblip-serve-load-"))
    model = args.model or str(tiny_model(tmp))
    burst_n = args.burst or 4 * args.max_queue
    server_args = ["--model", f"bench={model}", "--max-batch", str(args.max_batch), "--batch-wait-ms",
                   str(args.batch_wait_ms), "--max-queue", str(args.max_queue), "--num-beams", str(args.num_beams),
                   "--max-new-tokens", str(args.max_new_tokens), "--no-page"]
    if args.device:
        server_args += ["--device", args.device]
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    bodies = image_bodies(args.images, args.image_size, "bench")
    result: dict[str, Any] = {
        "benchmark": "serve_load", "environment": bu.environment("cpu" if not args.device else args.device),
        "command": " ".join(sys.argv), "model": model if args.model else "init_tiny blip (64 px, hidden 32)",
        "server": {"max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms, "max_queue": args.max_queue,
                   "num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens, "threads": args.threads},
    }
    with ServerProcess(server_args, env=env, log_path=tmp / "server.log") as server:
        url = server.url
        asyncio.run(closed_loop(url, bodies, min(4, args.images), 1, args.timeout, deadline))  # warm-up
        seq, seq_s = asyncio.run(closed_loop(url, bodies, args.sequential, 1, args.timeout, deadline))
        before = stats(url)["bench"]
        conc, conc_s = asyncio.run(closed_loop(url, bodies, args.requests, args.clients, args.timeout, deadline))
        batching = batch_delta(before, stats(url)["bench"])
        health, _ = asyncio.run(burst(url, None, burst_n, args.timeout))
        over, over_s = asyncio.run(burst(url, bodies[0], burst_n, args.timeout))
        result["server"]["rejected_total"] = stats(url)["bench"]["rejected"]

    alone = {r["image"]: r["caption"] for r in seq if r.get("status") == 200}
    same = [r["caption"] == alone[r["image"]] for r in conc if r.get("status") == 200 and r["image"] in alone]
    seq_ok = sum(r.get("status") == 200 for r in seq)
    conc_ok = sum(r.get("status") == 200 for r in conc)
    result["sequential"] = {"requests": args.sequential, "ok": seq_ok, "failed": args.sequential - seq_ok,
                            "seconds": seq_s, "requests_per_second": seq_ok / seq_s, "latency": latency(seq)}
    result["concurrent"] = {
        "requests": args.requests, "clients": args.clients, "ok": conc_ok,
        "failed": sum(r.get("status") != 200 and not r.get("lost") for r in conc),
        "lost": sum(bool(r.get("lost")) for r in conc), "seconds": conc_s,
        "requests_per_second": conc_ok / conc_s, "latency": latency(conc), "batching": batching,
        "identical_to_alone": sum(same) / len(same) if same else None,
        "errors": sorted({r["error"] for r in conc if "error" in r})[:5]}
    rejected = [r for r in over if r.get("status") == 503]
    result["overload"] = {
        "burst": burst_n, "ok": sum(r.get("status") == 200 for r in over), "rejected_503": len(rejected),
        "rejected_with_retry_after": sum(bool(r.get("retry_after")) for r in rejected),
        "other": sum(r.get("status") not in (200, 503) for r in over), "seconds": over_s,
        "median_503_seconds": statistics.median([r["seconds"] for r in rejected]) if rejected else None,
        "slowest_503_seconds": max((r["seconds"] for r in rejected), default=None),
        "slowest_ok_seconds": max((r["seconds"] for r in over if r.get("status") == 200), default=None),
        "health_burst_median_seconds": statistics.median([r["seconds"] for r in health]),
        "health_burst_slowest_seconds": max(r["seconds"] for r in health)}
    result["ratio"] = result["concurrent"]["requests_per_second"] / result["sequential"]["requests_per_second"]

    s, c, o = result["sequential"], result["concurrent"], result["overload"]
    print(f"serve load: {result['model']}, beams {args.num_beams}, {args.max_new_tokens} new tokens, "
          f"{args.threads} thread(s) on {result['environment']['cpu']}")
    print(f"  one at a time  {s['ok']:4d}/{s['requests']} ok  {s['requests_per_second']:7.1f} req/s  "
          f"p50 {_ms(s['latency']['p50'])}  p95 {_ms(s['latency']['p95'])}")
    print(f"  {args.clients:2d} clients     {c['ok']:4d}/{c['requests']} ok  {c['requests_per_second']:7.1f} req/s  "
          f"p50 {_ms(c['latency']['p50'])}  p95 {_ms(c['latency']['p95'])}  failed {c['failed']}  lost {c['lost']}")
    print(f"  batching: {c['batching']['requests']} requests in {c['batching']['forward_passes']} forward passes "
          f"(mean batch {c['batching']['mean_batch']:.1f}); captions identical to one-at-a-time: "
          f"{(c['identical_to_alone'] or 0) * 100:.0f}%")
    print(f"  throughput ratio (concurrent / one at a time): {result['ratio']:.2f}x "
          f"({'meets' if result['ratio'] >= 2 else 'BELOW'} the 2x target)")
    print(f"  overload: {o['burst']} at once -> {o['ok']} ok, {o['rejected_503']} x 503 "
          f"({o['rejected_with_retry_after']} with Retry-After; answered in {_ms(o['median_503_seconds'])} median, "
          f"{_ms(o['slowest_503_seconds'])} at most), {o['other']} other; slowest 200: {_ms(o['slowest_ok_seconds'])}")
    print(f"  (the same burst of GET /health on the idle server: {_ms(o['health_burst_median_seconds'])} median, "
          f"{_ms(o['health_burst_slowest_seconds'])} at most: what {burst_n} new connections at once cost here)")
    bu.write_json(args.json, result)
    broken = s["failed"] or c["failed"] or c["lost"] or not o["rejected_503"] or o["other"]
    if broken:
        print("FAILED: requests failed or were lost, or the overload got no 503", file=sys.stderr)
        sys.exit(1)
    return result


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


if __name__ == "__main__":
    main()
