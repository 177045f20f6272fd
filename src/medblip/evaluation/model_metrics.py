"""Metrics that need a model or another package: BERTScore, CLIPScore, RefCLIPScore, ROUGE-1, BLEURT.

Each returns one value per image, wrapped as a :func:`~medblip.evaluation.statistics.mean_metric`, so
bootstrap intervals and paired tests treat them like every other metric. Settings follow the
ImageCLEFmedical Caption evaluation (the organisers' evaluator script; Rückert et al., "Overview of
ImageCLEFmedical 2024 - Caption Prediction and Concept Detection", CLEF 2024 Working Notes,
CEUR-WS Vol-3740):

* **BERTScore** -- ``bert_score`` with ``microsoft/deberta-xlarge-mnli`` at bert-score's own layer for
  it (40), no idf weighting, no baseline rescaling; the F1 of each caption against its reference,
  averaged over images; a caption and reference that are both empty score 1.
* **ROUGE-1** -- Google's ``rouge-score`` (what the ``evaluate`` library wraps), F-measure, no
  stemming; both empty score 1.
* **CLIPScore / RefCLIPScore** -- Hessel et al., EMNLP 2021, as their reference code computes them:
  the caption is prefixed with "A photo depicts", CLIP-S = 2.5 * max(cos(image, caption), 0),
  RefCLIP-S = harmonic mean of CLIP-S and max(max over references of cos(caption, reference), 0);
  ``openai/clip-vit-base-patch32`` (ViT-B/32, the model of the paper) by default.
* **BLEURT** -- as the ImageCLEFmedical 2025 Caption evaluator computes it (its ``CaptionEvaluator.
  compute_bleurt``: the PyTorch BLEURT checkpoint ``lucadiliello/BLEURT-20-D12``, the preprocessed
  reference and caption as one pair, ``truncation=True, max_length=512``, the model's raw output, mean
  over images; no rule for empty captions), with transformers' BERT/RemBERT classes
  (:mod:`medblip.evaluation.bleurt`, since the ``bleurt-pytorch`` package does not import with
  transformers 5). The evaluator has one reference per image; with several, an image scores its best
  reference, as BERTScore and ROUGE-1 do here.

Models load through ``from_pretrained`` (a hub id, downloaded once into the Hugging Face cache, or a
local folder), once per process, on the GPU when there is one. A model that cannot be loaded (e.g.
offline and not in the cache) makes its metric *unavailable*: one line naming the model and how to
get it, while every other metric is still computed.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medblip.errors import ImageError, MedblipError
from medblip.evaluation.metric_sets import METRIC_NAMES, MetricSelection
from medblip.evaluation.statistics import AdditiveMetric, mean_metric
from medblip.runinfo import versions_of

#: Hessel et al.'s weight and text prompt (clipscore.py: ``w=2.5``, ``prefix='A photo depicts'``)
CLIP_W = 2.5
CLIP_PREFIX = "A photo depicts "
_TEXT_BATCH, _IMAGE_BATCH = 64, 32
_BERTSCORE_CHUNK = 512  # captions per bert-score call: its own bar prints to stdout, so medblip counts chunks

Progress = Callable[[int], Any] | None


def _bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr (``enabled=False``: a silent one), counting ``total`` items."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="caption", leave=False, disable=not enabled)

ImageSource = str | Path | bytes | None


class MetricUnavailable(MedblipError):
    """A metric that cannot be computed here; the message says why and how to get it (one line)."""


@dataclass
class ModelMetricResult:
    """What :func:`model_metrics` computed: metrics, per-image values, provenance, and what is missing."""

    metrics: dict[str, AdditiveMetric] = field(default_factory=dict)
    per_image: dict[str, list[float | None]] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def resolve_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _unavailable_model(metric: str, model: str, key: str, exc: BaseException) -> MetricUnavailable:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    local = Path(model).expanduser()
    if model.startswith((".", "/", "~")) or local.exists():
        how = f"check the folder (it needs config.json and the weights), or pass another with --metric-model {key}=DIR"
    else:
        how = (f"download it once with `huggingface-cli download {model}` (it is then read from the Hugging Face "
               f"cache, also offline), or pass a local folder with --metric-model {key}=DIR")
    return MetricUnavailable(f"{metric} not computed: cannot load model {model!r} ({reason[:160]}); {how}")


def _revision(model: str) -> str | None:
    """The commit of the hub snapshot ``model`` was loaded from (None for a local folder). transformers 5
    configs no longer carry ``_commit_hash``; the cached config.json's snapshot folder names it."""
    from medblip.fingerprint import model_signature

    return model_signature(model).get("revision")


# -- result cache: compare scores the same system again for its paired tests -------------------------
_RESULTS: OrderedDict[str, Any] = OrderedDict()
_RESULTS_MAX = 16


def _cached(key_parts: Sequence[Any], compute: Callable[[], Any]) -> Any:
    key = hashlib.sha256(json.dumps(key_parts, default=str, sort_keys=True).encode()).hexdigest()
    if key in _RESULTS:
        _RESULTS.move_to_end(key)
        return _RESULTS[key]
    value = compute()
    _RESULTS[key] = value
    while len(_RESULTS) > _RESULTS_MAX:
        _RESULTS.popitem(last=False)
    return value


def _image_key(src: ImageSource) -> str | None:
    if src is None:
        return None
    if isinstance(src, bytes):
        return hashlib.sha256(src).hexdigest()
    return str(Path(src).expanduser().resolve())


# -- BERTScore ---------------------------------------------------------------------------------------------
def bertscore_layers(model: str) -> int:
    """The layer bert-score uses for ``model``: its own table for known hub ids (a local folder named
    like one, e.g. ``.../deberta-xlarge-mnli``, counts as that model), else the model's last layer."""
    from bert_score.utils import model2layers

    if model in model2layers:
        return int(model2layers[model])
    by_name = {k.rsplit("/", 1)[-1]: v for k, v in model2layers.items()}
    local = Path(model).expanduser()
    if local.is_dir() and local.name in by_name:
        return int(by_name[local.name])
    if (local / "config.json").is_file():
        config = json.loads((local / "config.json").read_text(encoding="utf-8"))
        return int(config["num_hidden_layers"])
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model).num_hidden_layers)


@functools.lru_cache(maxsize=2)
def _bert_scorer(model: str, num_layers: int, device: str) -> Any:
    import bert_score

    return bert_score.BERTScorer(model_type=model, num_layers=num_layers, idf=False, rescale_with_baseline=False,
                                 device=device, batch_size=_TEXT_BATCH, lang="en")


def bertscore_f1(references: Sequence[Sequence[str]], predictions: Sequence[str], model: str,
                 device: str | None = None, key: str = "bertscore",
                 progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-image BERTScore F1 (the best over an image's references) and what produced it. Scored in chunks
    (each caption's F1 depends on its own references only: no idf), with a bar when ``progress``."""
    try:
        import bert_score  # noqa: F401
    except ImportError:
        raise MetricUnavailable("BERTScore-F1 not computed: it needs the bert-score package: "
                                "pip install 'medblip[imageclef]'") from None
    device = resolve_device(device)
    try:
        layers = bertscore_layers(model)
        scorer = _bert_scorer(model, layers, device)
    except (OSError, ValueError, KeyError) as exc:
        raise _unavailable_model("BERTScore-F1", model, key, exc) from None
    both_empty = np.array([not p.strip() and all(not r.strip() for r in refs)
                           for refs, p in zip(references, predictions, strict=True)])
    todo = [i for i in range(len(predictions)) if not both_empty[i]]

    def compute() -> np.ndarray:
        values = np.ones(len(predictions), dtype=np.float64)
        with _bar(len(todo), "BERTScore", progress) as bar:
            for start in range(0, len(todo), _BERTSCORE_CHUNK):
                chunk = todo[start:start + _BERTSCORE_CHUNK]
                _, _, f1 = scorer.score([predictions[i] for i in chunk], [list(references[i]) for i in chunk])
                values[chunk] = np.asarray(f1, dtype=np.float64)
                bar.update(len(chunk))
        return values

    values = _cached(["bertscore", model, layers, device, list(references), list(predictions)], compute)
    info = {"model": model, "revision": _revision(model), "num_layers": layers,
            "idf": False, "rescale_with_baseline": False, "hash": scorer.hash, "device": device,
            "versions": versions_of("bert-score", "transformers", "torch")}
    return values, info


# -- ROUGE-1 --------------------------------------------------------------------------------------------------
def rouge1_f(references: Sequence[Sequence[str]], predictions: Sequence[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-image ROUGE-1 F-measure (``rouge-score``, no stemming; best over the references)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise MetricUnavailable("ROUGE-1 not computed: it needs the rouge-score package: "
                                "pip install 'medblip[imageclef]'") from None
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    values = []
    for refs, pred in zip(references, predictions, strict=True):
        if not pred.strip() and all(not r.strip() for r in refs):
            values.append(1.0)
        else:
            values.append(float(scorer.score_multi(list(refs), pred)["rouge1"].fmeasure))
    return np.asarray(values, dtype=np.float64), {"use_stemmer": False, "versions": versions_of("rouge-score")}


# -- BLEURT ------------------------------------------------------------------------------------------------------
def bleurt_scores(references: Sequence[Sequence[str]], predictions: Sequence[str], model: str,
                  device: str | None = None, key: str = "bleurt",
                  progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-image BLEURT (the best over an image's references) and what produced it (a bar of the
    (reference, caption) pairs when ``progress``)."""
    from medblip.evaluation.bleurt import load_bleurt, score_pairs

    device = resolve_device(device)
    try:
        bleurt = load_bleurt(model, device)
    except ImportError as exc:
        raise MetricUnavailable(f"BLEURT not computed: {exc}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise _unavailable_model("BLEURT", model, key, exc) from None
    owner = np.array([i for i, refs in enumerate(references) for _ in refs], dtype=np.int64)

    def compute() -> np.ndarray:
        with _bar(len(owner), "BLEURT", progress) as bar:
            pairs = score_pairs(bleurt, [r for refs in references for r in refs], [predictions[i] for i in owner],
                                progress=bar.update)
        values = np.full(len(predictions), -np.inf)
        np.maximum.at(values, owner, pairs)
        return values

    values = _cached(["bleurt", model, device, list(references), list(predictions)], compute)
    info = {"model": model, "revision": _revision(model), "architecture": type(bleurt.model).__name__,
            "tokenizer": bleurt.tokenizer, "max_length": bleurt.max_length, "device": device,
            "versions": versions_of("transformers", "torch", "sentencepiece")}
    return values, info


# -- CLIPScore / RefCLIPScore ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _clip(model: str, device: str) -> tuple[Any, Any, Any]:
    from transformers import AutoTokenizer, CLIPModel

    try:  # the PIL backend, named, so that transformers does not warn about torchvision on every load
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - other transformers versions
        from transformers import CLIPImageProcessor as ImageProcessor
    clip = CLIPModel.from_pretrained(model).to(device).eval()
    return clip, AutoTokenizer.from_pretrained(model), ImageProcessor.from_pretrained(model)


def _features(out: Any) -> Any:
    # transformers 5 returns a model output whose pooler_output is the projected embedding
    return out if not hasattr(out, "pooler_output") else out.pooler_output


def _unit(x: Any) -> np.ndarray:
    x = np.asarray(x.detach().float().cpu().numpy(), dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clip_text_features(texts: Sequence[str], clip: Any, tokenizer: Any, device: str) -> np.ndarray:
    import torch

    out = []
    for start in range(0, len(texts), _TEXT_BATCH):
        batch = [CLIP_PREFIX + t for t in texts[start:start + _TEXT_BATCH]]
        enc = tokenizer(batch, padding=True, truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt").to(device)
        with torch.inference_mode():
            out.append(_unit(_features(clip.get_text_features(input_ids=enc["input_ids"],
                                                                attention_mask=enc["attention_mask"]))))
    return np.concatenate(out) if out else np.zeros((0, 0))


def clip_image_features(images: Sequence[Any], clip: Any, processor: Any, device: str,
                        progress: Progress = None) -> np.ndarray:
    import torch

    out = []
    for start in range(0, len(images), _IMAGE_BATCH):
        batch = list(images[start:start + _IMAGE_BATCH])
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out.append(_unit(_features(clip.get_image_features(pixel_values=pixels.to(device)))))
        if progress is not None:
            progress(len(batch))
    return np.concatenate(out) if out else np.zeros((0, 0))


def _load_images(images: Sequence[ImageSource]) -> tuple[list[Any], list[int], list[str]]:
    from medblip.data import load_image

    loaded, kept, problems = [], [], []
    for i, src in enumerate(images):
        if src is None:
            problems.append("no image given")
            continue
        try:
            loaded.append(load_image(src))
            kept.append(i)
        except (ImageError, OSError) as exc:
            problems.append(str(exc).splitlines()[0])
    return loaded, kept, problems


def clip_scores(references: Sequence[Sequence[str]], predictions: Sequence[str], images: Sequence[ImageSource],
                model: str, device: str | None = None, key: str = "clip",
                progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any], list[str]]:
    """Per-image CLIP-S and RefCLIP-S (NaN where the image is missing), the mask of scored images,
    provenance, and a note on the images that could not be used (a bar of the images when ``progress``)."""
    device = resolve_device(device)
    try:
        clip, tokenizer, processor = _clip(model, device)
    except (OSError, ValueError, KeyError) as exc:
        raise _unavailable_model("CLIPScore", model, key, exc) from None

    def compute() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        pil, kept, problems = _load_images(images)
        clip_s = np.full(len(predictions), np.nan)
        ref_clip_s = np.full(len(predictions), np.nan)
        if kept:
            with _bar(len(pil), "CLIP images", progress) as bar:
                v = clip_image_features(pil, clip, processor, device, progress=bar.update)
            c = clip_text_features([predictions[i] for i in kept], clip, tokenizer, device)
            flat = [(j, r) for j, i in enumerate(kept) for r in references[i]]
            r = clip_text_features([t for _, t in flat], clip, tokenizer, device)
            owner = np.array([j for j, _ in flat])
            cs = CLIP_W * np.clip(np.sum(v * c, axis=1), 0, None)
            best = np.array([np.max(r[owner == j] @ c[j]) for j in range(len(kept))])
            best = np.clip(best, 0, None)
            with np.errstate(divide="ignore", invalid="ignore"):
                rcs = np.where(cs + best > 0, 2 * cs * best / np.where(cs + best > 0, cs + best, 1), 0.0)
            clip_s[kept], ref_clip_s[kept] = cs, rcs
        mask = np.zeros(len(predictions))
        mask[kept] = 1.0
        return clip_s, ref_clip_s, mask, problems

    clip_s, ref_clip_s, mask, problems = _cached(
        ["clip", model, device, list(references), list(predictions), [_image_key(s) for s in images]], compute)
    notes = []
    if problems:
        notes.append(f"{len(problems)} of {len(predictions)} image(s) could not be used "
                     f"(e.g. {problems[0]}); scored on the other {int(mask.sum())}")
    info = {"model": model, "revision": _revision(model), "w": CLIP_W, "prefix": CLIP_PREFIX.strip(),
            "device": device, "images_scored": int(mask.sum()), "versions": versions_of("transformers", "torch")}
    return clip_s, ref_clip_s, mask, info, notes


# -- all of them ----------------------------------------------------------------------------------------------
def _values(x: np.ndarray, mask: np.ndarray | None = None) -> list[float | None]:
    return [None if (mask is not None and not m) or not np.isfinite(v) else float(v)
            for v, m in zip(x, mask if mask is not None else np.ones(len(x)), strict=True)]


def model_metrics(selection: MetricSelection, references: Sequence[Sequence[str]], predictions: Sequence[str],
                  texts_references: Sequence[Sequence[str]], texts_predictions: Sequence[str],
                  images: Sequence[ImageSource] | None, device: str | None = None,
                  progress: bool = False) -> ModelMetricResult:
    """The selection's model-based metrics. ``references``/``predictions`` are the raw captions (CLIP
    reads them), ``texts_*`` the ones the text metrics read (ImageCLEF-preprocessed when chosen).
    ``progress``: a bar per model (these take minutes on a CPU for a few thousand captions)."""
    out = ModelMetricResult()
    wanted = selection.model_metrics
    if "rouge1" in wanted:
        _run(out, "rouge1", lambda: rouge1_f(texts_references, texts_predictions))
    if "bertscore" in wanted:
        _run(out, "bertscore", lambda: bertscore_f1(texts_references, texts_predictions,
                                                    selection.model_for("bertscore"), device, progress=progress))
    if "bleurt" in wanted:
        _run(out, "bleurt", lambda: bleurt_scores(texts_references, texts_predictions, selection.model_for("bleurt"),
                                                  device, progress=progress))
    clip_wanted = [m for m in ("clipscore", "refclipscore") if m in wanted]
    if clip_wanted:
        names = [METRIC_NAMES[m] for m in clip_wanted]
        if images is None or all(s is None for s in images):
            reason = (f"{' and '.join(names)} not computed: they need the images; give each predictions row an "
                      f"'image' field (a path, relative to the predictions file)")
            out.unavailable.update(dict.fromkeys(names, reason))
        else:
            try:
                clip_s, ref_s, mask, info, notes = clip_scores(references, predictions, images,
                                                               selection.model_for("clipscore"), device,
                                                               progress=progress)
            except MetricUnavailable as exc:
                out.unavailable.update(dict.fromkeys(names, str(exc)))
            else:
                for m, values in (("clipscore", clip_s), ("refclipscore", ref_s)):
                    if m in clip_wanted:
                        name = METRIC_NAMES[m]
                        out.metrics[name] = mean_metric(name, np.nan_to_num(values), eligible=mask)
                        out.per_image[name] = _values(values, mask)
                        out.info[name] = info
                out.warnings += [f"{' and '.join(names)}: {n}" for n in notes]
    return out


def _run(out: ModelMetricResult, metric: str, compute: Callable[[], tuple[np.ndarray, dict[str, Any]]]) -> None:
    name = METRIC_NAMES[metric]
    try:
        values, info = compute()
    except MetricUnavailable as exc:
        out.unavailable[name] = str(exc)
        return
    out.metrics[name] = mean_metric(name, values)
    out.per_image[name] = _values(values)
    out.info[name] = info


__all__ = ["CLIP_PREFIX", "CLIP_W", "MetricUnavailable", "ModelMetricResult", "bertscore_f1", "bleurt_scores", "clip_scores", "model_metrics", "rouge1_f"]
