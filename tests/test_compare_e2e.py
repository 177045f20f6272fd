"""``medblip compare`` end to end: tiny model systems plus a predictions-file system."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import medblip.cli.evaluate_cmd  # noqa: F401  (registers evaluate/compare on the app)


def _has_family(name: str) -> bool:
    from medblip.models import list_families

    return name in list_families()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from medblip.data import load_dataset, synth
    from medblip.models import init_tiny

    root = tmp_path_factory.mktemp("cmp")
    data = synth.generate(root / "synth", n=12, seed=1, size=64, splits=(0.25, 0.0, 0.75)).out
    models = {"blip": init_tiny("blip", root / "tiny-blip", image_size=64, seed=0)}
    # a second family when the models helper has it; otherwise a second tiny BLIP (other weights)
    if _has_family("vit-gpt2"):
        models["second"] = init_tiny("vit-gpt2", root / "tiny-vit-gpt2", image_size=64, seed=0)
    else:
        models["second"] = init_tiny("blip", root / "tiny-blip-b", image_size=64, seed=1)
    records = load_dataset(data, splits=["test"]).records
    # an "external API" predictions file: references with a word changed, two ids missing, one
    # id that is not in the split
    api = root / "api.jsonl"
    with api.open("w") as fh:
        for r in records[2:]:
            words = r.caption.split()
            fh.write(json.dumps({"id": r.id, "prediction": " ".join(words[:-1] + ["image"]),
                                 "reference": r.caption, "gen_seconds": 1.5}) + "\n")
        fh.write(json.dumps({"id": "NOT-IN-SPLIT", "prediction": "ct of the chest"}) + "\n")
    return {"root": root, "data": data, "models": models, "api": api, "ids": [r.id for r in records]}


def _config(bench, out, **extra) -> str:
    m = bench["models"]
    cfg = {
        "data": str(bench["data"]), "split": "test", "out": str(out), "reference": "tiny-blip",
        "bootstrap": 20, "significance_samples": 20, "batch_size": 6,
        "generation": {"num_beams": 1, "max_new_tokens": 6},
        "scoring": {"meteor": False},  # METEOR's Java start is 10-40 s per scoring; covered elsewhere
        "systems": [
            {"name": "tiny-blip", "model": str(m["blip"])},
            {"name": "tiny-second", "model": str(m["second"]), "generation": {"repetition_penalty": 1.2}},
            {"name": "api", "predictions": str(bench["api"])},
        ],
        **extra,
    }
    path = bench["root"] / f"{out.name}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_compare_end_to_end(bench, tmp_path, medblip_cli, capsys):
    from PIL import Image

    out = tmp_path / "cmp"
    config = _config(bench, out)
    assert medblip_cli("compare", config, "--no-progress") == 0
    printed = capsys.readouterr()
    for name in ("comparison.md", "comparison.csv", "comparison.json", "comparison.png", "run.json"):
        assert (out / name).is_file(), name
    for s in ("tiny-blip", "tiny-second", "api"):
        assert (out / "systems" / s / "metrics.json").is_file()
    assert (out / "systems" / "tiny-blip" / "predictions.jsonl").is_file()

    comp = json.loads((out / "comparison.json").read_text())
    n = len(bench["ids"])
    assert comp["n_images"] == n - 2 and comp["reference"] == "tiny-blip"
    assert comp["excluded"]["total"] == 3  # two missing from the API file, one not in the split
    assert comp["excluded"]["per_system"]["api"] == {"missing": 2, "not_in_data": 1}
    systems = {s["name"]: s for s in comp["systems"]}
    metrics = comp["metrics"]
    assert len(metrics) >= 8  # BLEU-1..4, METEOR, ROUGE-L, CIDEr, clinical metrics, ...
    # every metric of score_predictions is in the table, for every system
    from medblip.results import Scores

    assert set(Scores.read(out / "systems" / "api").metrics) == set(metrics)
    for name, s in systems.items():
        assert set(s["metrics"]) == set(metrics)
        for m, v in s["metrics"].items():
            assert v["value"] is not None, (name, m)
            if v["ci_low"] is not None:
                assert v["ci_low"] - 1e-9 <= v["value"] <= v["ci_high"] + 1e-9, (name, m, v)
            if name == "tiny-blip":
                assert v["p_value"] is None
            else:
                assert v["p_value"] is not None and 0 <= v["p_value"] <= 1, (name, m)
    assert sum(v["ci_low"] is not None for v in systems["api"]["metrics"].values()) >= len(metrics) // 2
    assert systems["api"]["seconds_per_image"] == pytest.approx(1.5)
    assert systems["tiny-blip"]["seconds_per_image"] > 0
    assert systems["tiny-second"]["generation"]["repetition_penalty"] == 1.2
    # the near-copy of the references beats a random tiny model clearly
    bleu = next(m for m in metrics if "bleu" in m.lower() and "1" in m)
    assert systems["api"]["metrics"][bleu]["value"] > systems["tiny-blip"]["metrics"][bleu]["value"]
    assert systems["api"]["metrics"][bleu]["p_value"] < 0.2

    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert len(rows) == 3 * len(metrics)
    assert {"ci_low", "ci_high", "p_value", "seconds_per_image"} <= set(rows[0])
    md = (out / "comparison.md").read_text()
    for m in metrics:
        assert f"| {m} |" in md
    assert "tiny-blip (ref)" in md and "p=" in md and "generation s/image" in md
    assert "excluded" in md
    assert md.splitlines()[0] in printed.out

    with Image.open(out / "comparison.png") as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100

    # a rerun resumes every model system: no captions are generated again
    lines = (out / "systems" / "tiny-blip" / "predictions.jsonl").read_text()
    assert medblip_cli("compare", config, "--no-progress") == 0
    printed = capsys.readouterr()
    assert printed.err.count("resuming") == 2
    assert (out / "systems" / "tiny-blip" / "predictions.jsonl").read_text() == lines


@pytest.mark.slow
def test_compare_strict_ids_and_predictions_only(bench, tmp_path):
    from medblip.errors import MedblipError
    from medblip.experiments.compare import run_compare

    with pytest.raises(MedblipError, match="id sets differ"):
        run_compare(_config(bench, tmp_path / "strict", strict_ids=True), progress=False)
    assert not (tmp_path / "strict" / "systems" / "tiny-blip" / "predictions.jsonl").exists()

    # a missing checkpoint folder is reported before any other system runs
    import yaml

    cfg = yaml.safe_load(Path(_config(bench, tmp_path / "missing")).read_text())
    cfg["systems"].append({"name": "ghost", "model": str(tmp_path / "runs" / "never-trained")})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(MedblipError, match=r"bad\.yaml: systems\[3\]\.model: no such checkpoint or run folder"):
        run_compare(bad, progress=False)
    assert not (tmp_path / "missing" / "systems" / "tiny-blip" / "predictions.jsonl").exists()

    # predictions-only comparison, no data: references come from the files
    copy = tmp_path / "copy.jsonl"
    copy.write_text("".join(
        json.dumps({"id": r["id"], "prediction": r["reference"], "reference": r["reference"]}) + "\n"
        for r in map(json.loads, bench["api"].read_text().splitlines()) if "reference" in r))
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({
        "reference": "api", "bootstrap": 10, "significance_samples": 10, "scoring": {"meteor": False},
        "significance": "randomization", "out": str(tmp_path / "p"),
        "systems": [{"name": "api", "predictions": str(bench["api"])},
                    {"name": "oracle", "predictions": str(copy)}]}))
    comp = run_compare(cfg, progress=False)
    assert comp.n_images == len(bench["ids"]) - 2
    assert comp.excluded.total == 1  # NOT-IN-SPLIT is only in the api file
    assert (tmp_path / "p" / "comparison.png").stat().st_size > 0
