"""``medblip demo``: the whole study in one command, offline, on tiny models and synthetic data.

Stages (each skipped when its outputs already exist, so a rerun resumes where the last one stopped)::

    1 data       synthetic benchmark (ROCOv2 layout + facts + lesion masks)   DIR/data/synth/
    2 validate   dataset summary (``medblip data validate``'s JSON)           DIR/dataset/
    3 models     tiny BLIP and ViT-GPT2 (real transformers classes) pretrained  DIR/models/
                 on the lay shapes corpus: the "zero-shot" systems and the
                 start of every fine-tuning (configs/demo/pretrain_tiny.yaml)
    4 ablation   BLIP fine-tuned with full / decoder_only / encoder_only /     DIR/ablation/
                 lora on one budget, each evaluated on the test split          (its ``full`` run is the
                                                                               fine-tuned BLIP below)
    5 vit-gpt2   ViT-GPT2 fine-tuned with the same recipe                     DIR/runs/vit-gpt2/
    6 compare    zero-shot BLIP vs fine-tuned BLIP vs fine-tuned ViT-GPT2     DIR/compare/
    7 explain    attention maps of the fine-tuned BLIP on a few test images   DIR/explain/
    8 grounding  pointing game / energy of the maps inside the lesion masks   DIR/grounding/
    9 report     HTML + Markdown report of all of the above                   DIR/report/report.html

``DIR/demo.json`` records the settings, seeds, versions, git commit and stage timings. The tiny models
are *pretrained stand-ins* (:mod:`medblip.experiments.pretrain`): before fine-tuning they look at
pictures and write plain-language captions ("A dark oval with a small bright spot on its left side."),
as a general-domain BLIP does, so the zero-shot system is a captioner meeting radiology and the
strategies freeze pretrained parts, as in the study. They are made once per output folder (a rerun
finds them by their recipe's key). ``quick`` shrinks everything (60 images, 1 epoch) for CI. The
recipes are ``configs/demo/full.yaml`` and ``demo/quick.yaml`` (and ``configs/demo/pretrain_tiny.yaml``
for the stand-ins).

With ``model`` (e.g. ``Salesforce/blip-image-captioning-base``) and ``data`` (e.g. ROCOv2) the same
pipeline runs the real study (``configs/demo/real.yaml``): the shipped configs' hyper-parameters
(``configs/ablation_roco.yaml``, ``configs/vit_gpt2.yaml``), no synthetic data, and grounding only when
the data has lesion masks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from medblip import configfile
from medblip.configfile import shipped_config
from medblip.errors import MedblipError
from medblip.formatting import fmt_num, metric_cell
from medblip.io import atomic_write_json, atomic_write_text
from medblip.perf.threads import torch_threads
from medblip.results import Comparison, Grounding

if TYPE_CHECKING:
    from medblip.experiments.ablation import AblationResult
    from medblip.training.config import ExperimentConfig

Log = Callable[[str], None]

DEMO_JSON = "demo.json"
ZERO_SHOT, FINE_TUNED, VIT_GPT2 = "blip-zero-shot", "blip-fine-tuned", "vit-gpt2-fine-tuned"

# -- the recipes -----------------------------------------------------------------------------------------
class _Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SynthRecipe(_Recipe):
    """The synthetic benchmark (:func:`medblip.data.synth.generate`)."""

    n: int
    size: int
    seed: int = 0
    splits: tuple[float, float, float] | None = None


class TinyRecipe(_Recipe):
    """``configs/demo/full.yaml`` / ``demo/quick.yaml``: tiny pretrained stand-ins fine-tuned on synthetic data."""

    synth: SynthRecipe
    #: the recipe of ``configs/demo/pretrain_tiny.yaml`` that makes the stand-ins (``full`` or ``quick``)
    pretrain: str
    #: the experiment config's ``train:`` and ``generation:`` sections
    train: dict[str, Any]
    generation: dict[str, Any]
    bootstrap: int
    #: :func:`medblip.evaluation.score_predictions` options
    scoring: dict[str, Any]
    explain_images: int
    grounding_images: int | None


class RealRecipe(_Recipe):
    """``configs/demo/real.yaml``: the real study, from the shipped configs it names."""

    blip_config: str
    vit_gpt2_config: str
    vit_gpt2_model: str
    zero_shot_prompt: str
    bootstrap: int
    scoring: dict[str, Any]
    explain_images: int
    grounding_images: int | None
    #: ``--set`` items that cap the budget under ``--quick``
    quick_overrides: list[str]


def load_recipe(name: str) -> TinyRecipe:
    """The tiny recipe ``full`` or ``quick`` (``configs/demo/<name>.yaml``)."""
    return configfile.load(TinyRecipe, shipped_config(f"demo/{name}.yaml"))


def load_real_recipe() -> RealRecipe:
    return configfile.load(RealRecipe, shipped_config("demo/real.yaml"))


STRATEGIES = ("full", "decoder_only", "encoder_only", "lora")
STANDIN_FAMILIES = ("blip", "vit-gpt2")


@dataclass
class DemoOptions:
    out: Path = Path("demo_output")
    quick: bool = False
    model: str | None = None  # real model (hub id / checkpoint); None: tiny BLIP
    data: Path | None = None  # dataset; None: generate the synthetic benchmark
    device: str | None = None
    progress: bool = True
    overwrite: bool = False  # write into a non-empty folder that holds no demo run
    seed: int = 0  # the tiny stand-ins' initialisation and every fine-tuning's seed (data order, LoRA init)

    @property
    def real(self) -> bool:
        return self.model is not None


@dataclass
class DemoResult:
    out: Path
    report: Path | None
    headline: list[str]
    stages: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    interrupted: Any = None


# -- helpers -------------------------------------------------------------------------------------------------
def _fingerprint(opts: DemoOptions) -> dict[str, Any]:
    """What decides the outputs; a folder written with another fingerprint is not reused (the stand-ins'
    recipes are part of it: runs fine-tuned from other stand-ins must not be mixed in)."""
    fingerprint = {"quick": opts.quick, "model": opts.model,
                   "data": str(opts.data.expanduser().resolve()) if opts.data else None,
                   "recipe": "real" if opts.real else ("quick" if opts.quick else "full"), "seed": opts.seed,
                   "pretrain": None if opts.real else {f: r.as_dict() for f, r in standin_recipes(opts).items()}}
    return json.loads(json.dumps(fingerprint))  # as demo.json holds it (tuples are lists there)


def standin_recipes(opts: DemoOptions) -> dict[str, Any]:
    """The pretraining recipes of the tiny stand-ins (configs/demo/pretrain_tiny.yaml) by family."""
    from medblip.experiments.pretrain import load_recipe as load_pretrain_recipe

    name = load_recipe("quick" if opts.quick else "full").pretrain
    return {family: load_pretrain_recipe(family, name) for family in STANDIN_FAMILIES}


@contextlib.contextmanager
def _cpu_only(device: str | None) -> Iterator[None]:
    """``--device cpu``: make accelerate (the trainer) stay on the CPU too."""
    if device != "cpu":
        yield
        return
    old = os.environ.get("ACCELERATE_USE_CPU")
    os.environ["ACCELERATE_USE_CPU"] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = old


class _Stages:
    """Numbered stage headers with timings; remembered in demo.json."""

    def __init__(self, total: int, log: Log, record: dict[str, dict[str, Any]], save: Callable[[], None]) -> None:
        self.total, self.log, self.record, self.save = total, log, record, save
        self.k = 0

    @contextlib.contextmanager
    def stage(self, name: str, what: str) -> Iterator[dict[str, Any]]:
        self.k += 1
        self.log(f"[{self.k}/{self.total}] {what}")
        info: dict[str, Any] = {"status": "done"}
        t0 = time.perf_counter()
        yield info
        info["seconds"] = round(time.perf_counter() - t0, 1)
        self.record[name] = info
        self.save()
        self.log(f"      {info['status']} in {info['seconds']:.1f} s")


# -- the stages ------------------------------------------------------------------------------------------------
def make_synth(out: Path, params: SynthRecipe, log: Log) -> bool:
    """Generate the benchmark unless ``out`` holds one with the same parameters. True when generated."""
    from medblip.data.synth import SYNTH_VERSION, generate

    meta_path = out / "synth.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            meta = {}
        if (meta.get("n"), meta.get("seed"), meta.get("size"), meta.get("version")) == \
                (params.n, params.seed, params.size, SYNTH_VERSION):
            log(f"      {out} already holds it (n={params.n}, seed={params.seed}, {params.size} px)")
            return False
    summary = generate(out, **params.model_dump(exclude_none=True))
    log(f"      {summary.n} images of {params.size} px: " + ", ".join(f"{k} {v}" for k, v in summary.splits.items()))
    return True


def validate_data(data: Path, out: Path, log: Log) -> Path:
    from medblip.data import load_dataset
    from medblip.data.validate import render_markdown, validate_dataset
    from medblip.errors import DataError

    dataset = load_dataset(data)
    if len(dataset) == 0:
        raise DataError(f"{data}: no usable records ({dataset.report.summary()})")
    result = validate_dataset(dataset, sample=32, seed=0)
    result["options"] = {"format": "auto", "splits": None, "limit": None, "seed": 0, "sample": 32}
    path = atomic_write_json(out / "data_summary.json", result)
    atomic_write_text(out / "data_summary.md", render_markdown(result))
    log("      " + ", ".join(f"{s} {v['records']}" for s, v in result["splits"].items()) + f" records; {path}")
    return path


def train_captions(data: Path) -> list[str]:
    from medblip.data import load_dataset

    return [r.caption for r in load_dataset(data, splits=["train"]).records]


def tiny_config(model: Path, data: Path, out: Path, recipe: TinyRecipe, name: str,
                image_size: int, seed: int = 0) -> ExperimentConfig:
    from medblip.training.config import validate_config

    return validate_config({
        "name": name,
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data), "image_size": image_size, "cache_images": True},
        "strategy": {"name": "full"},
        "train": {**recipe.train, "seed": seed},
        "generation": dict(recipe.generation),
        "output": {"dir": str(out)},
    }, f"demo {name}")


def real_config(file: str, out: Path, overrides: list[str]) -> ExperimentConfig:
    from medblip.training.config import load_config

    return load_config(shipped_config(file), overrides, out=out)


def explain_images(adapter: Any, data: Path, out: Path, n: int, log: Log) -> Path:
    """Attention maps of ``adapter``'s captions for the first ``n`` test images (as ``medblip explain
    --data``). An empty generated caption falls back to the reference caption."""
    from medblip.data import load_dataset
    from medblip.explain.dataset import ExplainItem, explain_items

    records = load_dataset(data, splits=["test"]).records[:n]
    if not records:
        raise MedblipError(f"{data}: no test images to explain")
    explain_items(adapter, [ExplainItem(r.id, r.image, None, r.caption) for r in records], out,
                  fallback_to_reference=True, log=lambda m: log("      " + m))
    return out / "summary.json"


def compare_config(opts: DemoOptions, data: Path, out: Path, zero_shot: str, fine_tuned: Path,
                   vit_gpt2: Path | None, blip_cfg: ExperimentConfig, bootstrap: int,
                   scoring: Mapping[str, Any]) -> Any:
    from medblip.experiments.compare import CompareConfig

    gen = asdict(blip_cfg.generation_settings())
    systems: list[dict[str, Any]] = [
        {"name": ZERO_SHOT, "model": zero_shot,
         "description": "BLIP before fine-tuning" if opts.real else
         "the tiny BLIP stand-in before fine-tuning (pretrained on plain-language captions of shapes)",
         **({"family": "blip", "generation": {"prompt": load_real_recipe().zero_shot_prompt}} if opts.real else {})},
        {"name": FINE_TUNED, "model": str(fine_tuned), "description": "BLIP, all parameters fine-tuned"},
    ]
    if vit_gpt2 is not None:
        systems.append({"name": VIT_GPT2, "model": str(vit_gpt2), "description": "ViT-GPT2, fine-tuned"})
    return CompareConfig.model_validate({
        "data": str(data), "split": "test", "format": blip_cfg.data.format, "limit": blip_cfg.data.limit,
        "seed": blip_cfg.data.seed, "out": str(out), "reference": FINE_TUNED, "systems": systems,
        "generation": gen, "batch_size": blip_cfg.train.batch_size, "device": opts.device,
        "bootstrap": bootstrap, "significance_samples": bootstrap, "scoring": dict(scoring),
    })


def _seed_predictions(src: Path, dst: Path) -> None:
    """Reuse the ablation's captions of the fine-tuned BLIP (same checkpoint, same settings)."""
    from medblip.evaluation.predict import fingerprint_path

    if src.is_file() and not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        if fingerprint_path(src).is_file():
            shutil.copyfile(fingerprint_path(src), fingerprint_path(dst))
        shutil.copyfile(src, dst)


# -- the headline ----------------------------------------------------------------------------------------------
#: the comparison's columns in the terminal table (the first one present leads, with its CI)
TABLE_METRICS = ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "modality_accuracy", "laterality_agreement", "finding_f1")


def headline_table(comparison: Comparison, ablation: AblationResult | None,
                   grounding: Grounding | None) -> list[str]:
    """Plain-text tables for the terminal: the comparison's headline metrics, the ablation, grounding."""
    from medblip.experiments.ablation import summary_lines

    lines: list[str] = []
    systems = comparison.systems
    metrics = [m for m in TABLE_METRICS if any(m in s.metrics for s in systems)]
    if systems and metrics:
        first = metrics[0]
        lines.append(f"Comparison on {comparison.split} ({comparison.n_images} images; {first} with 95% CI):")
        width = max(len(s.name) for s in systems) + 2
        lines.append(f"{'system':<{width}}" + f"{first:>24}" + "".join(f"{m[:20]:>22}" for m in metrics[1:]))
        for s in systems:
            head = metric_cell(s.metrics[first].model_dump() if first in s.metrics else None, missing="-")
            lines.append(f"{s.name:<{width}}{head:>24}" + "".join(
                f"{fmt_num(s.metrics[m].value if m in s.metrics else None, missing='-'):>22}" for m in metrics[1:]))
    if ablation is not None and ablation.rows:
        lines += ["", "Ablation (same data, seed and budget; time = training steps):", *summary_lines(ablation)]
    if grounding is not None:
        sc = grounding.summary.scores
        random = f", random-weights model {fmt_num(sc['random'].hit)}" if "random" in sc else ""
        lines += ["", f"Grounding (pointing game on {grounding.summary.n} lesions): model "
                      f"{fmt_num(sc['model'].hit)}{random}, uniform baseline {fmt_num(sc['uniform'].hit)}, centre "
                      f"baseline {fmt_num(sc['centre'].hit)}"]
    return lines


# -- the pipeline ------------------------------------------------------------------------------------------------
def run_demo(opts: DemoOptions, log: Log = print) -> DemoResult:
    """Run (or resume) every stage; see the module docstring."""
    from medblip.outputs import prepare_output_dir
    from medblip.runinfo import run_metadata, set_seed

    out = opts.out.expanduser()
    if opts.data is not None and not opts.data.expanduser().exists():
        raise MedblipError(f"--data {opts.data}: no such file or folder")
    out = prepare_output_dir(out, "demo", overwrite=opts.overwrite, known_files=(DEMO_JSON,))
    state_path = out / DEMO_JSON
    fingerprint = _fingerprint(opts)
    state: dict[str, Any] = {}
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            state = {}
        if state.get("fingerprint") not in (None, fingerprint):
            old = state["fingerprint"]
            raise MedblipError(f"{out} holds a demo run with other settings ({old.get('recipe')}, model "
                               f"{old.get('model') or 'tiny'}, data {old.get('data') or 'synthetic'}); "
                               "use another --out or delete it")
    recipe: TinyRecipe | RealRecipe = load_real_recipe() if opts.real else load_recipe("quick" if opts.quick else "full")
    seed = opts.seed
    set_seed(seed)
    stages: dict[str, dict[str, Any]] = dict(state.get("stages") or {})
    notes: list[str] = []
    resolved: dict[str, Any] = {}

    def save() -> None:
        atomic_write_json(state_path, {
            "fingerprint": fingerprint, "options": {**asdict(opts), "out": str(opts.out),
                                                    "data": str(opts.data) if opts.data else None},
            "recipe": recipe.model_dump(mode="json"),
            "pretrain_recipes": fingerprint["pretrain"],
            "resolved_configs": resolved, "stages": stages, "notes": notes,
            **run_metadata(seed=seed, command="demo")})

    save()
    st = _Stages(9, log, stages, save)
    with _cpu_only(opts.device), torch_threads(None if opts.real else 1):
        return _pipeline(opts, out, recipe, st, notes, resolved, save, log)


def _pipeline(opts: DemoOptions, out: Path, recipe: TinyRecipe | RealRecipe, st: _Stages, notes: list[str],
              resolved: dict[str, Any], save: Callable[[], None], log: Log) -> DemoResult:
    from medblip.experiments.ablation import run_ablation, train_strategy

    # 1-2. data
    with st.stage("data", "synthetic benchmark" if opts.data is None else f"dataset {opts.data}") as info:
        if opts.data is None:
            assert isinstance(recipe, TinyRecipe)  # the real recipe needs --data
            data = out / "data" / "synth"
            info["status"] = "done" if make_synth(data, recipe.synth, log) else "skipped (present)"
        else:
            data = opts.data.expanduser()
            info["status"] = "skipped (given)"
    summary_dir = out / "dataset"
    with st.stage("validate", "validate the dataset (summary JSON)") as info:
        if (summary_dir / "data_summary.json").is_file() and st.record.get("data", {}).get("status") != "done":
            info["status"] = "skipped (present)"
        else:
            validate_data(data, summary_dir, log)
    has_masks = (data / "facts.jsonl").is_file()

    # 3. models and configs
    with st.stage("models", "tiny pretrained stand-ins" if not opts.real else f"model {opts.model}") as info:
        if isinstance(recipe, RealRecipe):
            common = [f"data.path={data}", *(recipe.quick_overrides if opts.quick else []),
                      *(["train.mixed_precision=no"] if opts.device == "cpu" else [])]
            blip_cfg = real_config(recipe.blip_config, out / "ablation", [f"model.name_or_path={opts.model}", *common])
            vit_cfg = real_config(recipe.vit_gpt2_config, out / "runs" / "vit-gpt2",
                                  [f"model.name_or_path={recipe.vit_gpt2_model}", *common])
            zero_shot = opts.model
            info["status"] = "skipped (real model)"
        else:
            from medblip.experiments.pretrain import standins

            models = out / "models"
            blip_dir, vit_dir = models / "tiny-blip", models / "tiny-vit-gpt2"
            recipes = standin_recipes(opts)
            # The tokenizers also learn the benchmark's captions, so fine-tuning never changes the vocabulary.
            # Side by side in two processes for the full recipe (the quick one is done before they start).
            made = standins({"blip": blip_dir, "vit-gpt2": vit_dir}, recipes, seed=opts.seed, captions=train_captions(data),
                            parallel=not opts.quick, progress=opts.progress, log=lambda m: log("      " + m))
            info["status"] = f"pretrained {', '.join(made)}" if made else "skipped (present)"
            blip_cfg = tiny_config(blip_dir, data, out / "ablation", recipe, "demo-blip", recipes["blip"].image_size,
                                   opts.seed)
            vit_cfg = tiny_config(vit_dir, data, out / "runs" / "vit-gpt2", recipe, "demo-vit-gpt2",
                                  recipes["vit-gpt2"].image_size, opts.seed)
            zero_shot = str(blip_dir)
        resolved["blip"] = blip_cfg.model_dump(mode="json")
        resolved["vit_gpt2"] = vit_cfg.model_dump(mode="json")
    bootstrap, scoring = recipe.bootstrap, recipe.scoring
    if scoring.get("meteor") is False:
        notes.append("METEOR is skipped in the demo (its Java process costs ~1 min per scoring on a small CPU)")

    # 4. ablation (its full run is the fine-tuned BLIP of the comparison)
    with st.stage("ablation", "ablation: " + ", ".join(STRATEGIES)) as info:
        abl = run_ablation(blip_cfg, out / "ablation", STRATEGIES, source="demo", bootstrap=bootstrap,
                           score_options=scoring, device=opts.device, progress=opts.progress,
                           log=lambda m: log("      " + m))
        if abl.interrupted is not None:
            info["status"] = "interrupted"
            return DemoResult(out, None, [], st.record, notes, interrupted=abl.interrupted)
    fine_tuned_run = out / "ablation" / "full"

    # 5. ViT-GPT2
    vit_run: Path | None = Path(vit_cfg.output.dir)
    with st.stage("vit-gpt2", "fine-tune ViT-GPT2") as info:
        try:
            what, run = train_strategy(vit_cfg, source="demo vit-gpt2", progress=opts.progress,
                                       log=lambda m: log("      " + m))
        except MedblipError as exc:
            if not opts.real:
                raise
            notes.append(f"ViT-GPT2 left out: {exc}")
            info["status"] = "skipped (model unavailable)"
            vit_run, what, run = None, "failed", None
        if run is not None and run.status == "interrupted":
            info["status"] = "interrupted"
            return DemoResult(out, None, [], st.record, notes, interrupted=run)
        if what == "skipped":
            info["status"] = "skipped (finished run present)"

    # 6. comparison
    from medblip.experiments.ablation import best_checkpoint, eval_dir
    from medblip.experiments.compare import run_compare

    compare_dir = out / "compare"
    with st.stage("compare", "zero-shot vs fine-tuned comparison") as info:
        ccfg = compare_config(opts, data, compare_dir, zero_shot, best_checkpoint(fine_tuned_run),
                              best_checkpoint(vit_run) if vit_run else None, blip_cfg, bootstrap, scoring)
        key = ccfg.model_dump(mode="json")
        resolved["compare"] = key
        marker = compare_dir / "demo_compare.json"
        if (compare_dir / "comparison.json").is_file() and marker.is_file() and _load(marker) == key:
            info["status"] = "skipped (present)"
        else:
            marker.unlink(missing_ok=True)
            _seed_predictions(eval_dir(fine_tuned_run, "test") / "predictions.jsonl",
                              compare_dir / "systems" / FINE_TUNED / "predictions.jsonl")
            comp = run_compare(ccfg, progress=opts.progress)
            atomic_write_json(marker, key)
            notes.extend(n for n in comp.notes if "excluded" in n)
    comparison = Comparison.read(compare_dir)

    # 7-8. explanations and grounding with the fine-tuned BLIP
    explain_dir, grounding_dir = out / "explain", out / "grounding"
    n_explain, n_ground = recipe.explain_images, recipe.grounding_images
    adapter = None

    def fine_tuned_adapter() -> Any:
        nonlocal adapter
        if adapter is None:
            from medblip.models import create_model

            adapter = create_model(best_checkpoint(fine_tuned_run), device=opts.device)
        return adapter

    with st.stage("explain", f"attention maps of {n_explain} test image(s)") as info:
        if (explain_dir / "summary.json").is_file():
            info["status"] = "skipped (present)"
        else:
            explain_images(fine_tuned_adapter(), data, explain_dir, n_explain, log)
    grounding: Grounding | None = None
    with st.stage("grounding", "grounding score (pointing game, energy in the lesion mask)") as info:
        if not has_masks:
            msg = f"grounding skipped: {data} has no lesion masks (facts.jsonl + masks/, as the synthetic benchmark)"
            notes.append(msg)
            log("      " + msg)
            info["status"] = "skipped (no masks)"
        elif (grounding_dir / "grounding.json").is_file():
            info["status"] = "skipped (present)"
            grounding = Grounding.read(grounding_dir)
        else:
            from medblip.explain.benchmark import evaluate_grounding, write_grounding

            try:
                # with the model randomisation test: a map that scores as well untrained measures the image
                scored = evaluate_grounding(fine_tuned_adapter(), data, split="test", limit=n_ground, seed=0,
                                            random_baseline=True)
            except MedblipError as exc:  # e.g. no test image with a finding in a tiny split
                notes.append(f"grounding skipped: {exc}")
                info["status"] = "skipped (nothing to score)"
            else:
                write_grounding(scored, grounding_dir)
                grounding = Grounding.read(grounding_dir)

    # 9. report
    report_dir = out / "report"
    with st.stage("report", "HTML report"):
        from medblip.reports import build_report, collect

        roots = [p for p in (out / "dataset", compare_dir, out / "ablation", out / "runs", explain_dir, grounding_dir)
                 if p.is_dir()]
        # the ablation's per-strategy captions stay out of the examples (the comparison has the systems)
        exclude = [report_dir, *(eval_dir(out / "ablation" / s, "test") for s in STRATEGIES)]
        title = "medblip demo" + (" (quick)" if opts.quick else "") if not opts.real else f"medblip study: {opts.model}"
        rep = collect(roots, title=title, examples=6, exclude=exclude)
        paths = build_report(rep, report_dir)
    headline = headline_table(comparison, abl, grounding)
    if not opts.real:
        from medblip.experiments.shape import shape_lines, study_shape, write_shape

        criteria = study_shape(out, FINE_TUNED, ZERO_SHOT)
        write_shape(out, criteria)
        what = " (--quick: tiny budget, the values mean nothing)" if opts.quick else ""
        headline += ["", f"The study's shape, measured on this run (shape.json){what}:", *shape_lines(criteria)]
    atomic_write_text(out / "headline.txt", "\n".join(headline) + "\n")
    save()
    return DemoResult(out, Path(paths["html"]), headline, st.record, notes)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def main_print(result: DemoResult, total_seconds: float) -> None:
    """What the CLI prints at the end."""
    print("", flush=True)
    for line in result.headline:
        print(line)
    for n in result.notes:
        print(f"note: {n}", file=sys.stderr)
    print(f"\nreport: {result.report}  (demo took {total_seconds / 60:.1f} min; a rerun reuses finished stages)")
