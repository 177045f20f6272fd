"""``medblip export``: a trained model as a folder plain transformers loads, with a model card.

:func:`export_model` copies a checkpoint (the ``save_pretrained`` folder a training run writes; a run
folder means its best checkpoint) without medblip's resume files, writes the run's generation settings
into ``generation_config.json`` and a model card ``README.md`` (base model, data, strategy, metrics with
95% CIs from ``medblip evaluate`` runs of this checkpoint, intended use, not-a-medical-device warning),
and puts the folder in place with medblip's output guard (:mod:`medblip.outputs`: a new, empty or
earlier ``export`` folder; files a user added to an earlier export survive). :func:`push_to_hub`
uploads it with huggingface_hub.

Loading the export needs nothing from medblip::

    from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig, pipeline
    model = AutoModelForImageTextToText.from_pretrained(DIR)
    pipe = pipeline("image-text-to-text", model=DIR, generation_config=GenerationConfig.from_pretrained(DIR))

BLIP, BLIP-2 and InstructBLIP generate through an inner language model whose own generation config
transformers builds from ``config.json``, so for them the saved settings apply when they are passed:
``model.generate(**inputs, generation_config=model.generation_config)`` (the card says so).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from medblip.errors import ConfigError, MedblipError
from medblip.io import atomic_write_json, atomic_write_text, read_json_object

#: written into every export: where it came from, the generation settings, the evaluations in the card
EXPORT_INFO = "medblip_export.json"
#: checkpoint files that only medblip's ``--resume`` reads
_RESUME_FILES = ("trainer_state.pt", "trainable.safetensors")
#: families whose ``generate`` delegates to an inner model (see the module doc)
_NESTED_GENERATE = ("blip", "blip-2", "instructblip")


@dataclass
class ExportResult:
    out: Path
    checkpoint: Path
    run_dir: Path | None
    generation: dict[str, Any]
    evaluations: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def export_model(source: str | Path, out: str | Path, *, evaluations: Sequence[str | Path] = (),
                 overwrite: bool = False) -> ExportResult:
    """Write the export of ``source`` (a training run or checkpoint folder) to ``out``.

    ``out`` must be new, empty or an earlier export, unless ``overwrite`` (then files of the same names
    are replaced and others kept; :mod:`medblip.outputs`). ``evaluations``: ``medblip evaluate`` output
    folders whose ``metrics.json`` go into the card (default: those inside the run folder that
    evaluated this checkpoint).
    """
    from medblip.models.loading import resolve_checkpoint
    from medblip.outputs import check_output_dir, install_output_dir

    checkpoint_text, _, notes = resolve_checkpoint(source)
    notes = [n.replace("; evaluating its", "; exporting its") for n in notes]
    checkpoint = Path(checkpoint_text)
    if not (checkpoint / "config.json").is_file():
        raise MedblipError(f"{source}: not a training run or checkpoint folder (no config.json"
                           + (", no checkpoints/best or checkpoints/last" if checkpoint.is_dir() else "") + ")")
    out = check_output_dir(out, "export", overwrite=overwrite, known_files=(EXPORT_INFO,), replaces=True)
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    config = _read_yaml(run_dir / "config.resolved.yaml") if run_dir else {}
    if run_dir is not None and not config:
        run_dir = None
    settings = _generation_settings(config, notes)
    model_config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    family = _family(checkpoint)
    evals = _find_evaluations(run_dir, checkpoint, evaluations, notes)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for item in sorted(checkpoint.iterdir()):
            if item.name in _RESUME_FILES or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        generation = _write_generation_config(checkpoint, tmp, settings)
        card = model_card(checkpoint=checkpoint, run_dir=run_dir, config=config, model_config=model_config,
                          family=family, generation=generation, settings=settings, evaluations=evals)
        atomic_write_text(tmp / "README.md", card)
        atomic_write_json(tmp / EXPORT_INFO, {"source": str(checkpoint),
                                              "run_dir": str(run_dir) if run_dir else None,
                                              "generation": generation, "evaluations": [str(e) for e in evals]})
        out.parent.mkdir(parents=True, exist_ok=True)
        install_output_dir(tmp, out, "export", known_files=(EXPORT_INFO,))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, checkpoint, run_dir, generation, evals, notes)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _generation_settings(config: dict[str, Any], notes: list[str]) -> Any:
    from medblip.evaluation.predict import make_settings

    section = config.get("generation")
    if not isinstance(section, dict):
        notes.append("no training run config beside the checkpoint: medblip's default generation settings "
                     "are exported")
        return make_settings(None)
    return make_settings(section, source="config.resolved.yaml: generation")


def _family(checkpoint: Path) -> str:
    from medblip.models import detect_family

    return detect_family(checkpoint, local_files_only=True)


def _write_generation_config(checkpoint: Path, out: Path, settings: Any) -> dict[str, Any]:
    """The checkpoint's generation config with the run's settings in it, and the length limits in the
    text config of the families that generate through an inner language model (as a checkpoint saved by
    the trainer carries them: :func:`medblip.models.base.carried_generation_settings`); returns the fields set."""
    from transformers import AutoConfig, GenerationConfig

    from medblip.models.base import checkpoint_generation_config, text_config_limits

    config = AutoConfig.from_pretrained(checkpoint)
    try:
        gc = GenerationConfig.from_pretrained(checkpoint)
    except OSError:
        gc = GenerationConfig.from_model_config(config)
    checkpoint_generation_config(SimpleNamespace(generation_config=gc), settings).save_pretrained(out)
    text = getattr(config, "text_config", None)
    if text is not None:
        for key, value in text_config_limits(settings).items():
            setattr(text, key, value)
        config.save_pretrained(out)
    return {k: v for k, v in settings.generate_kwargs().items() if v is not None}


def _find_evaluations(run_dir: Path | None, checkpoint: Path, given: Sequence[str | Path],
                      notes: list[str]) -> list[Path]:
    """metrics.json files of ``medblip evaluate`` runs of ``checkpoint``."""
    found: list[Path] = []
    for folder in given:
        path = Path(folder)
        metrics = path if path.name == "metrics.json" else path / "metrics.json"
        if not metrics.is_file():
            raise ConfigError(f"--evaluation {folder}: no metrics.json (a `medblip evaluate` output folder)")
        found.append(metrics)
    if not given and run_dir is not None:
        for metrics in sorted(run_dir.rglob("metrics.json")):
            if "checkpoints" in metrics.relative_to(run_dir).parts:
                continue
            try:
                model = json.loads(metrics.read_text(encoding="utf-8")).get("model")
            except (OSError, ValueError):
                continue
            if model and Path(str(model)).resolve() == checkpoint.resolve():
                found.append(metrics)
    if not found:
        notes.append("no `medblip evaluate` results of this checkpoint were found: the model card has no metrics "
                     "with confidence intervals (evaluate it into the run folder, or pass --evaluation DIR)")
    return found


# -- the model card --------------------------------------------------------------------------------------
def model_card(*, checkpoint: Path, run_dir: Path | None, config: dict[str, Any], model_config: dict[str, Any],
               family: str, generation: dict[str, Any], settings: Any, evaluations: Sequence[Path]) -> str:
    """README.md of an export: what the model is, how it was made and measured, how (not) to use it."""
    model_sec = config.get("model") or {}
    data_sec = config.get("data") or {}
    strategy_sec = config.get("strategy") or {}
    train_sec = config.get("train") or {}
    base = str(model_sec.get("name_or_path") or "")
    hub_base = base if base and not Path(base).expanduser().exists() and base.count("/") == 1 else None
    run_info = _read_json(run_dir / "run.json") if run_dir else {}
    result = _read_json(run_dir / "result.json") if run_dir else {}
    arch = ", ".join(model_config.get("architectures") or []) or family
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text",
             "tags:", "- medical", "- radiology", "- image-captioning", "- medblip"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front.append("---")
    name = run_dir.name if run_dir else checkpoint.name
    lines = [*front, "", f"# {name}: radiology image captioning ({family})", "",
             "> **Not a medical device.** This model writes draft descriptions of radiology images for research. "
             "It has not been validated for clinical use, must not be used for diagnosis or treatment decisions, "
             "and its captions can be wrong in ways that look plausible (wrong side, missed or invented findings).",
             "", "## Model", "",
             f"- Architecture: `{arch}` (transformers), family `{family}`",
             f"- Base model: {f'`{base}`' if base else 'unknown (no training run config)'}",
             f"- Exported from: `{checkpoint}`"]
    strategy = (result.get("strategy") or run_info.get("strategy") or {})
    if strategy_sec or strategy:
        trainable = strategy.get("trainable_params")
        total = strategy.get("total_params")
        lines.append(f"- Fine-tuning strategy: `{strategy_sec.get('name') or strategy.get('strategy')}`"
                     + (f" ({trainable:,} of {total:,} parameters trained)"
                        if isinstance(trainable, int) and isinstance(total, int) else ""))
    lines += ["", "## Training data", ""]
    if data_sec:
        lines.append(f"- Data: `{data_sec.get('path')}` (format `{data_sec.get('format', 'auto')}`, training split "
                     f"`{data_sec.get('train_split', 'train')}`, validation split `{data_sec.get('val_split', 'validation')}`"
                     + (f", at most {data_sec['limit']} records per split" if data_sec.get("limit") else "") + ")")
        if run_info.get("validation"):
            lines.append(f"- Validation: {run_info['validation']}")
    else:
        lines.append("- Unknown: the checkpoint has no training run folder beside it.")
    if train_sec:
        lines += ["", "## Training procedure", "",
                  f"- {train_sec.get('epochs')} epoch(s)" + (f", at most {train_sec['max_steps']} steps"
                                                             if train_sec.get("max_steps") else "")
                  + f", batch size {train_sec.get('batch_size')} x {train_sec.get('grad_accum', 1)} accumulation, "
                  f"AdamW lr {train_sec.get('lr')}, weight decay {train_sec.get('weight_decay')}, "
                  f"{train_sec.get('schedule')} schedule, seed {train_sec.get('seed')}"]
        if result:
            lines.append(f"- Run status: {result.get('status')} after {result.get('global_step')} optimizer steps; "
                         f"checkpoint chosen by {result.get('best_metric_name')} = {_num(result.get('best_metric'))} "
                         f"(step {result.get('best_step')})")
    lines += ["", "## Evaluation", ""]
    if evaluations:
        for path in evaluations:
            lines += _evaluation_section(path)
    else:
        lines.append("No `medblip evaluate` results of this checkpoint were found, so no metrics with confidence "
                     "intervals are reported. Evaluate it on a held-out test split before relying on it.")
    final = result.get("final_metrics") or {}
    numeric = {k: v for k, v in final.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if numeric:
        lines += ["", "Last validation during training (no confidence intervals; the validation split chose the "
                      "checkpoint, so these numbers are optimistic):", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {_num(v)} |" for k, v in numeric.items()]
    lines += ["", "## Use", "", "Generation settings of the run (`generation_config.json`): "
              + ", ".join(f"`{k}={v}`" for k, v in generation.items()) + ".",
              *([f"Prompt: `{settings.prompt}`."] if settings.prompt else []), "",
              "```python", "from PIL import Image",
              "from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig, pipeline", "",
              'model = AutoModelForImageTextToText.from_pretrained("MODEL_DIR_OR_REPO")',
              'processor = AutoProcessor.from_pretrained("MODEL_DIR_OR_REPO")',
              'inputs = processor(images=Image.open("image.png").convert("RGB"), return_tensors="pt")',
              "ids = model.generate(**inputs, generation_config=model.generation_config)",
              "print(processor.batch_decode(ids, skip_special_tokens=True))", "",
              'pipe = pipeline("image-text-to-text", model="MODEL_DIR_OR_REPO",',
              '                generation_config=GenerationConfig.from_pretrained("MODEL_DIR_OR_REPO"))',
              f'print(pipe(images=Image.open("image.png").convert("RGB"), text={settings.prompt or ""!r}))',
              "```", ""]
    if family in _NESTED_GENERATE:
        lines += [f"For {family} models transformers' `generate` runs an inner language model with its own "
                  "defaults: pass the saved `generation_config` as above, or the run's settings are not used.", ""]
    lines += ["DICOM images: window them first (medblip does: `medblip caption scan.dcm --model MODEL_DIR`).", "",
              "## Intended use and limitations", "",
              "- Intended use: research on radiology image captioning: comparing models, studying failure modes, "
              "drafting captions that a qualified reader checks.",
              "- Out of scope: any clinical use (diagnosis, triage, reporting to patients), use without review by a "
              "qualified reader, images unlike the training data (other modalities, body regions, institutions).",
              "- Captions may omit findings, invent them, or get laterality and negation wrong; word-overlap metrics "
              "(BLEU, CIDEr) do not measure clinical correctness.", "",
              "## Reproducibility", ""]
    versions = run_info.get("versions") or {}
    lines.append(f"- Trained with medblip {versions.get('medblip', '?')} (git {run_info.get('git_commit') or '?'}), "
                 f"transformers {versions.get('transformers', '?')}, torch {versions.get('torch', '?')}"
                 if run_info else "- No run.json beside the checkpoint.")
    lines.append(f"- Exported with `medblip export`; `{EXPORT_INFO}` names the checkpoint and the evaluations.")
    return "\n".join(lines) + "\n"


def _evaluation_section(metrics_path: Path) -> list[str]:
    from medblip.evaluation.scoring import metrics_markdown

    result = _read_json(metrics_path)
    title = (f"`{result.get('split', '?')}` split of `{result.get('data', '?')}` "
             f"({result.get('n_images', '?')} images; from `{metrics_path}`)")
    md = metrics_markdown(result, title=title)
    return [("###" + line[1:]) if line.startswith("# ") else line.replace("## ", "#### ", 1)
            if line.startswith("## ") else line for line in md.rstrip("\n").splitlines()] + [""]


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path) or {}


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload ``folder`` to the Hub model repo ``repo_id`` (created if needed); returns its URL.

    Any failure (offline mode, no network, no or wrong token, no permission) is one
    :class:`MedblipError` line saying what failed; the exported folder stays as it is.
    """
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", ignore_patterns=[".*"],
                          commit_message="Upload model exported by medblip")
    except Exception as exc:  # noqa: BLE001 -- network, auth and offline errors come in many types
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise MedblipError(f"cannot push {folder} to the Hugging Face Hub ({repo_id}): {type(exc).__name__}: "
                           f"{reason[:300]}; the export itself is complete") from None
    return str(url)
