"""predictions.jsonl handling of ``medblip evaluate``: torn last lines, bad lines, settings checks."""

from __future__ import annotations

import json
import logging

import pytest

from medblip.errors import ConfigError, DataError, MedblipError
from medblip.evaluation.predict import (
    _check_compatible,
    make_settings,
    read_predictions_file,
    seconds_per_image,
    settings_dict,
)
from medblip.models.base import GenerationSettings


def _line(i: int, **extra: object) -> str:
    return json.dumps({"id": f"img{i}", "reference": f"ref {i}", "prediction": f"pred {i}", **extra}) + "\n"


def test_torn_last_line_is_dropped_and_file_repaired(tmp_path, caplog):
    path = tmp_path / "predictions.jsonl"
    good = _line(1) + _line(2)
    path.write_text(good + _line(3)[:17], encoding="utf-8")  # crash in the middle of line 3
    with caplog.at_level(logging.WARNING, logger="medblip.evaluation.predict"):
        pf = read_predictions_file(path, repair=True)
    assert [r["id"] for r in pf.rows] == ["img1", "img2"]
    assert pf.repaired
    assert len(pf.notes) == 1 and ":3: dropped a half-written last line" in pf.notes[0]
    assert "half-written" in caplog.text
    assert path.read_text(encoding="utf-8") == good  # appends continue on a clean line boundary


def test_torn_line_is_not_repaired_without_repair(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_line(1) + '{"id": "img', encoding="utf-8")
    pf = read_predictions_file(path)
    assert [r["id"] for r in pf.rows] == ["img1"] and not pf.repaired
    assert path.read_text(encoding="utf-8").endswith('{"id": "img')


def test_complete_last_line_without_newline_gets_one(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_line(1) + _line(2).rstrip("\n"), encoding="utf-8")
    pf = read_predictions_file(path, repair=True)
    assert len(pf.rows) == 2 and pf.notes == []
    assert path.read_text(encoding="utf-8") == _line(1) + _line(2)


def test_bad_line_in_the_middle_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_line(1) + "{not json\n" + _line(3), encoding="utf-8")
    with pytest.raises(DataError, match=r"p\.jsonl:2: invalid JSON"):
        read_predictions_file(path, repair=True)


def test_missing_field_and_duplicates(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"p\.jsonl:1: missing field 'prediction'"):
        read_predictions_file(path)
    path.write_text(_line(1) + _line(2) + json.dumps({"id": "img1", "prediction": "newer"}) + "\n",
                    encoding="utf-8")
    pf = read_predictions_file(path)
    assert pf.by_id["img1"]["prediction"] == "newer" and len(pf.rows) == 2
    assert any("repeated id" in n for n in pf.notes)


def test_missing_file_is_empty(tmp_path):
    assert read_predictions_file(tmp_path / "nope.jsonl").rows == []


def test_make_settings_overrides_and_validation():
    s = make_settings({"num_beams": 1}, max_new_tokens=12, top_p=None)
    assert (s.num_beams, s.max_new_tokens, s.top_p) == (1, 12, 1.0)
    base = GenerationSettings(num_beams=5)
    assert make_settings(None, base).num_beams == 5
    with pytest.raises(ConfigError, match=r"cfg\.yaml: systems\[0\]\.generation: unknown generation setting 'beams'"):
        make_settings({"beams": 2}, source="cfg.yaml: systems[0].generation")
    with pytest.raises(ConfigError, match="min_new_tokens"):
        make_settings({"min_new_tokens": 50, "max_new_tokens": 10})
    with pytest.raises(ConfigError, match="top_p"):
        make_settings({"top_p": 0})


def test_existing_predictions_must_match_model_and_settings(tmp_path):
    gen = settings_dict(GenerationSettings())
    rows = [{"id": "a", "prediction": "x", "model": "/m/tiny", "generation": gen}]
    _check_compatible(tmp_path / "p.jsonl", rows, "/m/tiny", gen)  # same: fine
    with pytest.raises(MedblipError, match="num_beams: 3 -> 1.*--overwrite"):
        _check_compatible(tmp_path / "p.jsonl", rows, "/m/tiny", {**gen, "num_beams": 1})
    with pytest.raises(MedblipError, match="holds predictions of model '/m/tiny'"):
        _check_compatible(tmp_path / "p.jsonl", rows, "/m/other", gen)


def test_seconds_per_image():
    assert seconds_per_image([{"gen_seconds": 0.5}, {"gen_seconds": 1.5}, {}]) == 1.0
    assert seconds_per_image([{}]) is None
