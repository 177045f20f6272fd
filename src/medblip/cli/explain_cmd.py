"""``medblip explain``: per-token cross-attention / Grad-CAM / saliency maps, and the grounding score."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from medblip.cli.app import app
from medblip.cli.options import MAX_PIXELS_HELP, OVERWRITE_HELP, apply_max_pixels
from medblip.errors import MedblipError


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None or not text.strip():
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise MedblipError(f"--{what} expects comma-separated integers (e.g. 0,-1), got {text!r}") from None


def _words(text: str | None) -> list[str] | None:
    if text is None:
        return None
    words = [w.strip() for w in text.split(",") if w.strip()]
    return words or None


def _bar(items: list[Any], enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="image", file=sys.stderr, disable=not enabled or len(items) < 2)


@app.command("explain")
def explain_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Hub id or local checkpoint folder."),
    image: Path | None = typer.Option(None, "--image", "-i", help="One image file to explain."),
    caption: str | None = typer.Option(None, "--caption", "-c",
                                       help="Caption to explain (teacher-forced); default: the model's greedy caption."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Dataset folder: explain many images (or --evaluate)."),
    split: str = typer.Option("test", "--split", help="Split of --data: train, validation (valid), test."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most N images of --data (a seeded subset)."),
    reference: bool = typer.Option(False, "--reference",
                                   help="With --data: explain the reference captions instead of generated ones."),
    method: str = typer.Option("attention", "--method",
                               help="attention (raw cross-attention), gradcam, or saliency (the gradient at each "
                                    "input pixel: which pixels each word depends on)."),
    layers: str | None = typer.Option(None, "--layers",
                                      help="Cross-attention layers, e.g. 0,-1 (default: all; gradcam: last)."),
    heads: str | None = typer.Option(None, "--heads", help="Heads to keep, e.g. 0,3 (default: all)."),
    aggregate: str = typer.Option("mean", "--aggregate", help="Over layers x heads: mean, max or last (layer)."),
    words: str | None = typer.Option(None, "--words", help="Only these caption words, comma-separated."),
    level: str = typer.Option("word", "--level", help="Panels per word (sub-words averaged) or per token."),
    cmap: str = typer.Option("jet", "--cmap", help="Matplotlib colormap of the overlays."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Overlay opacity."),
    evaluate: bool = typer.Option(False, "--evaluate",
                                  help="Grounding score on a synthetic benchmark (--data): pointing game + energy."),
    generated: bool = typer.Option(False, "--generated",
                                   help="With --evaluate: score generated captions (default: reference captions)."),
    random_baseline: bool = typer.Option(False, "--random-baseline",
                                         help="With --evaluate: also score the same architecture with random weights "
                                              "(the model randomisation test; a second copy of the model in memory)."),
    tolerance: float = typer.Option(0.05, "--tolerance", min=0.0,
                                    help="Tolerant pointing game radius, as a fraction of the longer image side."),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens", min=1, help="Length limit of generated captions."),
    min_new_tokens: int = typer.Option(0, "--min-new-tokens", min=0, help="Minimum length of generated captions."),
    family: str | None = typer.Option(None, "--family", help="Model family (default: from config.json)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: best available, "
                                                            "as medblip evaluate)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, float16, bfloat16 (default: the checkpoint's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --limit subset."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=0, help=MAX_PIXELS_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Explain captions with per-token (or per-word) heat-maps on the original image.

    Writes, per image, <out>/<name>/grid.png (one panel per word, caption underneath), overlays/*.png,
    token_maps.npy and word_maps.npy (raw maps on the patch grid; saliency: at the model's input resolution)
    and explanation.json; plus
    <out>/summary.json and summary.md. With --evaluate, writes grounding.json and grounding.md.
    Maps are min-max normalised to [0, 1] for display and scoring.
    """
    from medblip.explain.explainer import ExplainSettings

    if level not in ("word", "token"):
        raise MedblipError(f"--level must be word or token, got {level!r}")
    settings = ExplainSettings(method=method, layers=_ints(layers, "layers"), heads=_ints(heads, "heads"),
                               aggregate=aggregate, max_new_tokens=max_new_tokens,
                               min_new_tokens=min_new_tokens).check()
    if evaluate:
        if data is None:
            raise MedblipError("--evaluate needs --data SYNTH_DIR (a synthetic benchmark folder)")
        if image is not None or caption is not None:
            raise MedblipError("--evaluate scores a dataset; drop --image/--caption")
    elif (image is None) == (data is None):
        raise MedblipError("give exactly one of --image FILE or --data DIR")
    if data is not None and caption is not None:
        raise MedblipError("--caption applies to --image only (use --reference for dataset captions)")
    if image is not None and not image.is_file():
        raise MedblipError(f"image {image} does not exist")
    if data is not None and not data.exists():
        raise MedblipError(f"dataset {data} does not exist")
    if words is not None and evaluate:
        raise MedblipError("--words does not apply to --evaluate (the finding words are scored)")
    if random_baseline and not evaluate:
        raise MedblipError("--random-baseline applies to --evaluate only")

    from medblip.models import create_model
    from medblip.models.loading import auto_device
    from medblip.outputs import prepare_output_dir

    apply_max_pixels(max_pixels)
    out = prepare_output_dir(out, "explain", overwrite=overwrite, known_files=("summary.json", "grounding.json"))
    adapter = create_model(model, family=family, device=auto_device(device), dtype=dtype)
    if evaluate:
        _evaluate(adapter, data, split, limit, settings, generated, tolerance, seed, out, progress, random_baseline)
    else:
        _explain(adapter, image, caption, data, split, limit, reference, settings, _words(words), level, cmap,
                 alpha, seed, out, progress)


def _explain(adapter: Any, image: Path | None, caption: str | None, data: Path | None, split: str,
             limit: int | None, reference: bool, settings: Any, words: list[str] | None, level: str,
             cmap: str, alpha: float, seed: int, out: Path, progress: bool) -> None:
    from medblip.evaluation.predict import load_split
    from medblip.explain.dataset import ExplainItem, explain_items

    if image is not None:
        items = [ExplainItem(image.stem, image, caption)]
    else:
        # generated captions need no reference: an image-only manifest will do (a split-less one: all of it)
        records, report = load_split(data, split, limit=limit, seed=seed, require_captions=reference)
        for note in report.notes:
            typer.echo(note, err=True)
        items = [ExplainItem(r.id, r.image, r.caption if reference else None, r.caption) for r in records]
    summary = explain_items(adapter, items, out, settings, words=words, level=level, cmap=cmap, alpha=alpha,
                            caption_source="reference" if data is not None and reference else None,
                            progress=lambda xs: _bar(list(xs), progress, "explain"))
    for r in summary.images[:10]:
        typer.echo(f"{r.name}: {r.caption}")
    typer.echo(f"{len(summary.images)} image(s) explained ({settings.method}); written to {out}", err=True)


def _evaluate(adapter: Any, data: Path, split: str, limit: int | None, settings: Any, generated: bool,
              tolerance: float, seed: int, out: Path, progress: bool, random_baseline: bool) -> None:
    from functools import partial

    from medblip.explain.benchmark import evaluate_grounding, grounding_markdown, write_grounding

    result = evaluate_grounding(adapter, data, split=split, limit=limit, settings=settings,
                                caption_source="generated" if generated else "reference", tolerance=tolerance,
                                seed=seed, random_baseline=random_baseline,
                                progress=partial(_bar_list, enabled=progress))
    json_path, md_path = write_grounding(result, out)
    typer.echo(grounding_markdown(result).rstrip("\n"))
    typer.echo(f"written to {json_path} and {md_path}", err=True)


def _bar_list(items: Any, enabled: bool) -> Any:
    return _bar(list(items), enabled, "grounding")
