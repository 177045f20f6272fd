"""Every shipped config (``configs/*.yaml``, found by glob: a new one is covered without editing this file)
runs end to end with the command its own comments name (``medblip train`` / ``ablation`` / ``compare``), the
model swapped for its twin (medblip.models.twins: the published ids and sizes, tiny widths) and the data for a
small fixture in the config's own layout, for a couple of optimizer steps: training with validation captioning
and early stopping on the config's metric (CIDEr for the ROCO configs), the ablation, the comparison and the
zero-shot passes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from medblip.configfile import load_yaml

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# What each run is cut down to: a couple of steps and a few images (values only; no key is removed).
QUICK_TRAIN = ["train.epochs=1", "train.max_steps=2", "train.batch_size=2", "train.grad_accum=1",
               "train.val_subset=3", "train.save_every_steps=null", "train.log_every=1",
               "train.mixed_precision=no", "data.num_workers=0", "data.limit=4", "data.cache_images=false",
               "generation.max_new_tokens=6", "generation.min_new_tokens=1"]


def command_of(config: Path) -> str:
    """The medblip command the config's comments name for it (train, ablation or compare)."""
    text = config.read_text(encoding="utf-8")
    commands = re.findall(rf"medblip (train|ablation|compare) configs/{re.escape(config.name)}", text)
    assert commands, f"{config.name}: its comments name no `medblip train|ablation|compare configs/{config.name}`"
    return commands[0]


def is_hub_id(name: str) -> bool:
    return not Path(name).exists() and not name.startswith((".", "/", "~")) and name.count("/") == 1 \
        and not name.startswith(("demo/", "runs/"))


@pytest.fixture(scope="module")
def data_fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny synthetic benchmark (ROCOv2 layout, what the synth configs and data/rocov2 expect) and the same
    records in the original ROCO layout (with a non-radiology subset that must not be loaded)."""
    from medblip.data.synth import generate

    root = tmp_path_factory.mktemp("shipped-data")
    rocov2 = root / "rocov2"
    generate(rocov2, 24, seed=0, size=64, splits=(0.5, 0.25, 0.25), workers=1)
    return {"rocov2": rocov2, "roco": _as_roco(rocov2, root / "roco")}


def _as_roco(rocov2: Path, out: Path) -> Path:
    import csv

    for split, prefix in (("train", "train"), ("validation", "valid"), ("test", "test")):
        with (rocov2 / f"{prefix}_captions.csv").open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        for subset, chosen in (("radiology", rows), ("non-radiology", rows[:1])):
            folder = out / "data" / split / subset
            (folder / "images").mkdir(parents=True)
            lines = []
            for row in chosen:
                rid = f"ROCO_{'9' if subset != 'radiology' else '0'}{row['ID'][-5:]}"
                shutil.copy(next((rocov2 / prefix).glob(f"{row['ID']}.*")), folder / "images" / f"{rid}.jpg")
                lines.append(f"{rid}\t {row['Caption']}")
            (folder / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def data_for(data_cfg: dict[str, Any], fixtures: dict[str, Path]) -> Path:
    """The fixture in the config's layout: ROCO for format roco (or a ROCO-named path), else ROCOv2."""
    path = str(data_cfg.get("path", ""))
    roco = data_cfg.get("format") == "roco" or ("roco" in path.lower() and "rocov2" not in path.lower())
    return fixtures["roco" if roco else "rocov2"]


def model_for(name: str, family: str | None, twin: Any, tiny: Any) -> Path:
    """A hub id's twin; a local tiny model (demo/models/...) made as its comment says, at tiny sizes."""
    return twin(name) if is_hub_id(name) else tiny(family)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from medblip.models import init_tiny

    made: dict[str, Path] = {}

    def make(family: str | None) -> Path:
        family = family or "blip"
        if family not in made:
            made[family] = init_tiny(family, tmp_path_factory.mktemp("tiny") / family, image_size=64, seed=0)
        return made[family]

    return make


def experiment_sets(raw: dict[str, Any], model: Path, data: Path, out: Path) -> list[str]:
    return [f"model.name_or_path={model}", f"data.path={data}", f"output.dir={out}", *QUICK_TRAIN]


def _as_args(sets: list[str]) -> list[str]:
    return [arg for item in sets for arg in ("--set", item)]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_config_runs_end_to_end(config: Path, twin: Any, tiny: Any, data_fixtures: dict[str, Path],
                                        tmp_path: Path, medblip_cli: Any) -> None:
    raw = load_yaml(config.read_text(encoding="utf-8"))
    command = command_of(config)
    if command == "compare":
        run_compare_config(config, raw, twin, tiny, data_fixtures, tmp_path, medblip_cli)
        return
    model = model_for(raw["model"]["name_or_path"], raw["model"].get("family"), twin, tiny)
    out = tmp_path / "run"
    sets = experiment_sets(raw, model, data_for(raw["data"], data_fixtures), out)
    if command == "ablation":
        strategies = "full,lora"  # two of the four keep it short; the runner is the same for each
        assert medblip_cli("ablation", str(config), "--strategies", strategies, *_as_args(sets), "--bootstrap", "10",
                           "--no-meteor", "--no-progress") == 0
        table = json.loads((out / "ablation.json").read_text())
        assert [r["strategy"] for r in table["strategies"]] == ["full", "lora"]
        assert all("CIDEr" in r["metrics"] for r in table["strategies"])
        for strategy in ("full", "lora"):
            check_training_run(out / strategy, raw)
        return
    assert medblip_cli("train", str(config), *_as_args(sets), "--no-progress") == 0
    if raw.get("strategy", {}).get("name") == "none":
        result = json.loads((out / "result.json").read_text())
        assert result["status"] == "zero_shot" and result["final_metrics"]["val_images"] > 0
        if raw.get("train", {}).get("val_generate", True):
            assert "CIDEr" in result["final_metrics"]
        return
    check_training_run(out, raw)


def check_training_run(out: Path, raw: dict[str, Any]) -> None:
    result = json.loads((out / "result.json").read_text())
    assert result["status"] in ("completed", "early_stopped") and result["global_step"] >= 1
    es = raw.get("train", {}).get("early_stopping", {}).get("metric", "val_loss")
    assert result["best_metric_name"] == es and result["best_metric"] is not None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    validation = [r for r in rows if r.get("split") == "validation"]
    assert validation and all(es in r for r in validation)
    best = Path(result["best_checkpoint"])
    generation = json.loads((best / "generation_config.json").read_text())
    assert generation["max_new_tokens"] == 6, "the checkpoint carries the run's generation settings"
    assert generation["num_beams"] == raw.get("generation", {}).get("num_beams", 3)
    info = json.loads((out / "run.json").read_text())
    family = json.loads((best / "config.json").read_text())["model_type"]
    assert info["label_smoothing"] == raw.get("train", {}).get("label_smoothing", 0.1 if family == "blip" else 0.0)


def run_compare_config(config: Path, raw: dict[str, Any], twin: Any, tiny: Any, fixtures: dict[str, Path],
                       tmp_path: Path, medblip_cli: Any) -> None:
    """The compare config with its systems' models swapped: hub ids for twins, training run folders (the
    output.dir of a shipped training config) for a run folder holding that config's model as checkpoints/best."""
    runs = {}
    for other in CONFIGS:
        doc = load_yaml(other.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "output" in doc and "model" in doc:
            runs[doc["output"]["dir"]] = doc["model"]
    cfg = dict(raw)
    cfg.update(data=str(data_for({"path": raw.get("data")}, fixtures)), out=str(tmp_path / "compare"), limit=3,
               batch_size=2, bootstrap=10, significance_samples=10, device="cpu",
               generation={**raw.get("generation", {}), "max_new_tokens": 6, "min_new_tokens": 1},
               scoring={**raw.get("scoring", {}), "meteor": False})
    systems = []
    for system in raw["systems"]:
        system = dict(system)
        if system.get("model") in runs:
            source = runs[system["model"]]
            best = tmp_path / "runs" / system["name"] / "checkpoints" / "best"
            shutil.copytree(model_for(source["name_or_path"], source.get("family"), twin, tiny), best)
            system["model"] = str(best.parent.parent)
        elif system.get("model"):
            system["model"] = str(model_for(system["model"], system.get("family"), twin, tiny))
        system.pop("batch_size", None)
        systems.append(system)
    cfg["systems"] = systems
    path = tmp_path / config.name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    assert medblip_cli("compare", str(path), "--no-progress") == 0
    table = json.loads((tmp_path / "compare" / "comparison.json").read_text())
    names = [s["name"] for s in raw["systems"]]
    assert sorted(s["name"] for s in table["systems"]) == sorted(names)
