"""The compare config: schema, and one-line errors naming the file and the key."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import medblip.cli.evaluate_cmd  # noqa: F401  (registers evaluate/compare on the app)
from medblip.errors import ConfigError
from medblip.experiments.compare import load_compare_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "api.jsonl").write_text(json.dumps({"id": "a", "prediction": "x", "reference": "y"}) + "\n")
    return tmp_path


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cmp.yaml"
    p.write_text(text, encoding="utf-8")
    return p


GOOD = """
data: data
split: valid
reference: base
generation: {num_beams: 1}
systems:
  - name: base
    model: some/model
    generation: {max_new_tokens: 20}
  - name: api
    predictions: api.jsonl
"""


def test_good_config(workdir):
    cfg = load_compare_config(_write(workdir, GOOD))
    assert [s.kind for s in cfg.systems] == ["model", "predictions"]
    assert cfg.significance == "bootstrap" and cfg.bootstrap == 1000


@pytest.mark.parametrize(("text", "pattern"), [
    (GOOD.replace("reference: base", "reference: nobody"), r"cmp\.yaml: reference: 'nobody' is not a system name"),
    (GOOD.replace("split: valid", "split: valid\nbootstrapp: 10"), r"cmp\.yaml: bootstrapp: unknown key"),
    (GOOD.replace("generation: {max_new_tokens: 20}", "generation: {max_tokens: 20}"),
     r"cmp\.yaml: systems\[0\]\.generation: unknown generation setting 'max_tokens'"),
    (GOOD.replace("    model: some/model\n", ""), r"cmp\.yaml: systems\[0\]: .*exactly one of 'model', 'api' or 'predictions'"),
    (GOOD.replace("predictions: api.jsonl", "predictions: api.jsonl\n    family: blip"),
     r"systems\[1\]: .*'family' only applies to a 'model' system"),
    (GOOD.replace("predictions: api.jsonl", "predictions: missing.jsonl"),
     r"cmp\.yaml: systems\[1\]\.predictions: no such file: missing\.jsonl"),
    (GOOD.replace("name: api", "name: base"), r"cmp\.yaml: systems\[1\]\.name: duplicate system name 'base'"),
    (GOOD.replace("name: api", "name: my api"), r"cmp\.yaml: systems\[1\]\.name: must start with"),
    (GOOD.replace("data: data\n", ""), r"cmp\.yaml: data: required: system 'base'"),
    (GOOD.replace("data: data", "data: elsewhere"), r"cmp\.yaml: data: no such file or folder: elsewhere"),
    (GOOD.replace("significance", "x") + "significance: wilcoxon\n", r"cmp\.yaml: significance: "),
    ("systems: [\n", r"cmp\.yaml:\d+: invalid YAML \("),
    ("- a\n- b\n", r"cmp\.yaml: expected a mapping"),
    ("data: data\nsystems: []\nreference: x\n", r"cmp\.yaml: systems: "),
])
def test_bad_config_is_one_line_naming_file_and_key(workdir, text, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_compare_config(_write(workdir, text))
    assert "\n" not in str(info.value)


def test_missing_config_file(workdir):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_compare_config(workdir / "nope.yaml")


def test_cli_prints_one_line_and_exits_2(workdir, monkeypatch, capsys):
    from medblip.cli import main

    cfg = _write(workdir, GOOD.replace("reference: base", "reference: nobody"))
    monkeypatch.setattr(sys, "argv", ["medblip", "compare", str(cfg)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("medblip: error: ") and "reference" in err and "cmp.yaml" in err


@pytest.mark.parametrize("name", ["compare_synth.yaml", "compare_roco.yaml"])
def test_shipped_configs_validate(name, monkeypatch, tmp_path):
    """The shipped configs parse and pass schema checks (their data/models need not exist here)."""
    import yaml

    from medblip.experiments.compare import CompareConfig

    raw = yaml.safe_load((REPO / "configs" / name).read_text(encoding="utf-8"))
    cfg = CompareConfig.model_validate(raw)
    assert cfg.reference in [s.name for s in cfg.systems]
    assert any(s.model for s in cfg.systems)
