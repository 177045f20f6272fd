"""Shared pieces of the ``benchmarks/`` scripts (imported as ``bench_utils``: the scripts' folder is on
``sys.path`` when they run): models of real shapes from random weights, synthetic
batches, timing, peak memory, environment description, JSON output.

``shapes="base"`` builds the published checkpoint's architecture from its config with random weights
(speed does not depend on the values; nothing is downloaded): BLIP-base = ViT-B/16 at 384 px +
BERT-base text decoder with cross-attention, vocabulary 30,524; ViT-GPT2 = ViT-B/16 at 224 px +
GPT-2 (124M) with cross-attention, vocabulary 50,257. ``shapes="tiny"`` is ``init_tiny``'s model.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel

SHAPES = ("tiny", "base")


# -- models ----------------------------------------------------------------------------------------

def _blip_base(seed: int) -> CaptionModel:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    from medblip.models.blip import BlipCaptioner
    from medblip.models.tiny import _blip_image_processor, radiology_corpus
    from medblip.models.vocab import wordpiece_vocab

    vocab = wordpiece_vocab(radiology_corpus(seed=seed), 30522, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    vocab["[DEC]"] = len(vocab)
    vocab["[ENC]"] = len(vocab)
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", additional_special_tokens=["[ENC]"], model_max_length=512)
    processor = BlipProcessor(_blip_image_processor(384), tokenizer)
    # Salesforce/blip-image-captioning-base's config (defaults of BlipVisionConfig/BlipTextConfig are
    # the base sizes); the tokenizer is smaller than the real 30,524-entry one, the model is not.
    config = BlipConfig(
        vision_config={"image_size": 384, "patch_size": 16, "hidden_size": 768, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "intermediate_size": 3072},
        text_config={"vocab_size": 30524, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "intermediate_size": 3072, "encoder_hidden_size": 768, "max_position_embeddings": 512,
                     "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id,
                     "sep_token_id": tokenizer.sep_token_id, "eos_token_id": tokenizer.sep_token_id},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config)
    model.eval()
    return BlipCaptioner(model, processor, "random-init:blip-base")


def _vit_gpt2_base(seed: int) -> CaptionModel:
    from transformers import (
        GPT2Config,
        GPT2Tokenizer,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    from medblip.models.tiny import _vit_image_processor, radiology_corpus
    from medblip.models.vit_gpt2 import ViTGPT2Captioner, VitGpt2Processor
    from medblip.models.vocab import bpe_vocab

    vocab, merges = bpe_vocab(radiology_corpus(seed=seed), 2000, ["<|endoftext|>"])
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=1024)
    eos = tokenizer.eos_token_id
    decoder = GPT2Config(vocab_size=50257, add_cross_attention=True, is_decoder=True, bos_token_id=eos,
                         eos_token_id=eos)
    encoder = ViTConfig(image_size=224, patch_size=16)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionEncoderDecoderModel(config=config)
    gen = model.generation_config
    gen.decoder_start_token_id = gen.pad_token_id = gen.eos_token_id = gen.bos_token_id = eos
    model.eval()
    return ViTGPT2Captioner(model, VitGpt2Processor(_vit_image_processor(224), tokenizer), "random-init:vit-gpt2-base")


def build_adapter(family: str = "blip", shapes: str = "tiny", *, device: str | torch.device = "cpu",
                  seed: int = 0, tiny_dir: str | Path | None = None, **options: Any) -> CaptionModel:
    """An adapter of ``family`` with ``shapes`` (``tiny``: ``init_tiny``; ``base``: real sizes, random)."""
    from medblip.models import create_model, get_family, init_tiny

    family = get_family(family).family
    if shapes not in SHAPES:
        raise ValueError(f"shapes must be one of {SHAPES}, got {shapes!r}")
    if shapes == "tiny":
        out = Path(tiny_dir) if tiny_dir else Path(tempfile.mkdtemp(prefix="medblip-bench-")) / "tiny"
        if not (out / "config.json").is_file():
            init_tiny(family, out, image_size=64, hidden_size=64, num_layers=2, num_heads=2, seed=seed)
        adapter = create_model(out, family, **options)
    else:
        builders = {"blip": _blip_base, "vit-gpt2": _vit_gpt2_base}
        if family not in builders:
            raise ValueError(f"no base-shape builder for family {family!r} (have: {', '.join(builders)})")
        adapter = builders[family](seed)
        adapter.options.update(options)
    adapter.model.to(device)
    return adapter


def image_size_of(adapter: CaptionModel) -> int:
    from medblip.data.cache import processor_image_settings

    return processor_image_settings(adapter.processor.image_processor)[0]


def encode_patches(adapter: CaptionModel, images: list[Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """(input pixels per patch, vision-tower features per patch), each (n, grid * grid, dim), and grid."""
    pixels, features, grid = [], [], 0
    with torch.no_grad():
        for i in range(0, len(images), 64):
            pv = adapter.pixel_values(images[i:i + 64]).float()
            hidden = adapter.encode_images(pv)
            grid = math.isqrt(hidden.shape[1] - 1)  # after the CLS token
            if grid * grid != hidden.shape[1] - 1:
                raise SystemExit(f"error: {hidden.shape[1]} image tokens are not CLS + a square grid")
            n, c, h, w = pv.shape
            p = h // grid
            pixels.append(pv.reshape(n, c, grid, p, grid, p).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, -1))
            features.append(hidden[:, 1:].float())
    return torch.cat(pixels).numpy(), torch.cat(features).numpy(), grid


def greedy_test_captions(adapter: CaptionModel, data: Path, generation: dict[str, Any] | None = None
                         ) -> dict[str, str]:
    """Test-split captions, generated as `medblip evaluate` and the demo generate them (``generation``:
    default the demo's, ``configs/demo/full.yaml``)."""
    from medblip.data import load_dataset
    from medblip.evaluation.predict import make_settings, predict
    from medblip.experiments.demo import load_recipe

    records = load_dataset(data, splits=["test"]).records
    settings = make_settings(generation if generation is not None else dict(load_recipe("full").generation))
    run = predict(adapter, records, None, settings, batch_size=32, progress=False)
    return {row["id"]: row["prediction"] for row in run.rows}


# -- data ------------------------------------------------------------------------------------------

def synthetic_pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 images: a smooth gradient, a bright blob and noise (compressible, varied)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.25)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        base = 60 + 80 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) + 150 * blob
        noise = rng.normal(0, 12, (size, size))
        gray = np.clip(base + noise, 0, 255).astype(np.uint8)
        out[i] = gray[..., None]
    return out


def synthetic_captions(n: int, *, lengths: str = "mixed", max_words: int = 48, seed: int = 0) -> list[str]:
    """Radiology-style captions. ``mixed``: word counts ~ log-normal (median 14, like ROCOv2's),
    capped at ``max_words``; ``long``: every caption ``max_words`` words (no padding to save)."""
    from medblip.models.tiny import radiology_corpus

    rng = np.random.default_rng(seed)
    words = " ".join(radiology_corpus(n=200, seed=seed)).split()
    out = []
    for _ in range(n):
        k = max_words if lengths == "long" else int(np.clip(rng.lognormal(np.log(14), 0.55), 4, max_words))
        start = int(rng.integers(0, len(words) - max_words))
        out.append(" ".join(words[start:start + k]))
    return out


# -- measuring -------------------------------------------------------------------------------------

#: what the scripts time with (``set_clock``): wall time, or this process's CPU time
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock: list[Any] = [time.perf_counter, "wall"]


def set_clock(name: str) -> None:
    """``--clock cpu``: time with the process's CPU time. With one torch thread and no loader workers
    it leaves out the time other processes hold the CPU, so a ratio measured on a machine shared with
    other work is steadier (it still sees their pressure on caches and memory bandwidth). Wall time
    is the default and the figure for a GPU, whose work the CPU clock does not see."""
    _clock[:] = [CLOCKS[name], name]


def clock() -> float:
    return _clock[0]()


def clock_name() -> str:
    """The clock in use: ``wall`` or ``cpu``."""
    return _clock[1]


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory of a block: CUDA max allocated (reset at entry), or process RSS sampled every 2 ms."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.peak = 0
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "rss"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = _rss()

            def sample() -> None:
                while not self._stop.wait(0.002):
                    self.peak = max(self.peak, _rss())

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, _rss())


@contextmanager
def timed(device: torch.device | str) -> Iterator[dict[str, float]]:
    """``with timed(dev) as t: ...`` -> ``t["seconds"]`` (device synchronised at both ends)."""
    out: dict[str, float] = {}
    sync(device)
    t0 = clock()
    yield out
    sync(device)
    out["seconds"] = clock() - t0


def run_timed(fn: Callable[[int], Any], *, steps: int, warmup: int, device: torch.device | str) -> dict[str, Any]:
    """Call ``fn(i)`` ``warmup`` times untimed, then ``steps`` times, each timed; with peak memory.

    ``seconds``: total of the timed calls; ``step_seconds_median``: the median call, the figure the
    scripts turn into a rate (robust to another process stealing the CPU for a moment).
    """
    for i in range(warmup):
        fn(i)
    sync(device)
    times: list[float] = []
    with PeakMemory(device) as mem:
        for i in range(steps):
            t0 = clock()
            fn(warmup + i)
            sync(device)
            times.append(clock() - t0)
    return {"seconds": float(sum(times)), "step_seconds_median": float(np.median(times)),
            "step_seconds_min": float(min(times)), "step_seconds": [round(t, 6) for t in times],
            "peak_memory_bytes": mem.peak, "memory_kind": mem.kind}


def release(device: torch.device | str) -> None:
    import gc

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# -- environment and output ------------------------------------------------------------------------

def environment(device: torch.device | str) -> dict[str, Any]:
    import transformers

    device = torch.device(device)
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        from medblip.runinfo import git_commit

        info["git_commit"] = git_commit()
    except Exception:  # pragma: no cover
        info["git_commit"] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or "unknown"


def write_json(path: str | Path | None, result: dict[str, Any]) -> None:
    if path is None:
        return
    from medblip.io import atomic_write_json

    atomic_write_json(path, result)


def print_table(title: str, rows: list[tuple[str, dict[str, Any]]], rate_key: str, unit: str) -> None:
    print(title)
    for name, r in rows:
        if "error" in r:
            print(f"  {name:<14} error: {r['error']}")
            continue
        mem = r.get("peak_memory_bytes", 0) / 2**20
        print(f"  {name:<14} {r[rate_key]:10.2f} {unit}   peak {mem:9.1f} MiB ({r.get('memory_kind', '')})")


def bench_device(name: str, threads: int | None, clock: str = "wall") -> torch.device:
    """The device a benchmark runs on (exits with a message when CUDA is asked for and absent) and the
    clock it times with (:func:`set_clock`; ``cpu`` on a CUDA device is wall time: the CPU clock does not
    see GPU work, and the same command line then measures a GPU)."""
    if clock == "cpu" and torch.device(name).type == "cuda":
        print("note: --clock cpu does not see GPU work; timing with wall time", file=sys.stderr)
        clock = "wall"
    set_clock(clock)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {name}: no CUDA device is available")
    return device


#: result key -> what a benchmark's ratio compares (printed when the result has it)
RATIOS = {"ratio": "medblip / naive", "ratio_vs_naive_bf16": "medblip / naive_bf16",
          "ratio_trainer": "trainer / naive (mean rates)"}


def add_ratios(result: dict[str, Any], rate_key: str) -> None:
    """medblip's rate over the naive baselines' that ran (``result["results"][name][rate_key]``)."""
    res = result["results"]
    for key, baseline in (("ratio", "naive"), ("ratio_vs_naive_bf16", "naive_bf16")):
        if "medblip" in res and baseline in res:
            result[key] = res["medblip"][rate_key] / res[baseline][rate_key]


def print_ratios(result: dict[str, Any]) -> None:
    for key, label in RATIOS.items():
        if key in result:
            print(f"  ratio {label}: {result[key]:.2f}x")


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
