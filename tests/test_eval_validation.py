"""The clinical extractor against independent labels: ROCO's UMLS CUIs, MedPix's modality field and
the synthetic benchmark's exact facts."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from medblip.evaluation.clinical.validation import (
    facts_agreement,
    medpix_modality_agreement,
    roco_modality_agreement,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ROCO = SHARED / "roco-text"
MEDPIX_MANIFEST = SHARED / "medpix-dev" / "manifest.jsonl"
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "roco_modality_agreement.py"

needs_roco = pytest.mark.skipif(not (ROCO / "validation" / "radiology" / "cuis.txt").is_file(),
                                reason=f"real ROCO metadata not found at {ROCO} (../shared beside the repository)")
needs_medpix = pytest.mark.skipif(not MEDPIX_MANIFEST.is_file(),
                                  reason=f"MedPix manifest not found at {MEDPIX_MANIFEST} (../shared)")


@pytest.mark.shared
@needs_roco
def test_roco_modality_agreement_with_cuis_via_the_benchmark_script(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("roco_modality_agreement", BENCHMARK)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "agreement.json"
    assert script.main(["--roco", str(ROCO), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["evaluated"] > 2500  # captions with a modality CUI
    assert result["agreement_any"] >= 0.95
    assert result["agreement_primary"] >= 0.95
    for label in ("CT", "MRI", "X-ray", "ultrasound"):
        assert result["per_modality"][label]["agreement_any"] >= 0.95, label
    assert result["confusion"]["MRI"]["MRI"] > 300


def test_roco_agreement_semantics_on_a_tiny_layout(tmp_path: Path) -> None:
    folder = tmp_path / "validation" / "radiology"
    folder.mkdir(parents=True)
    (folder / "captions.txt").write_text(
        "ROCO_1\t CT angiography of the aorta.\nROCO_2\t Chest radiograph.\nROCO_3\t Axial image of the liver.\n"
        "ROCO_4\t No modality CUI here.\n")
    (folder / "cuis.txt").write_text(
        "ROCO_1\t\tC0002978\nROCO_2\t\tC1306645\tC0817096\nROCO_3\t\tC0040405\nROCO_4\t\tC0817096\n")
    r = roco_modality_agreement(tmp_path)
    assert r["evaluated"] == 3
    # ROCO_1: CUI angiography is among {CT, angiography} but the primary is CT; ROCO_3 names no modality.
    assert r["agreement_any"] == pytest.approx(2 / 3)
    assert r["agreement_primary"] == pytest.approx(1 / 3)
    assert r["confusion"]["CT"] == {"none": 1}


@pytest.mark.shared
@needs_medpix
def test_medpix_modality_field_and_captions() -> None:
    r = medpix_modality_agreement(MEDPIX_MANIFEST)
    assert r["rows"] == 197
    assert r["field_agreement"] == 1.0, r["unmapped_fields"]  # every MedPix spelling maps to CT or MRI
    assert r["captions_with_modality"] >= 50
    assert r["caption_agreement"] >= 0.95, r["caption_disagreements"]


@pytest.mark.slow
def test_synthetic_benchmark_facts(tmp_path: Path) -> None:
    from medblip.data import synth

    synth.generate(tmp_path, 200, seed=11, size=32)
    captions = {}
    for csv_path in sorted(tmp_path.glob("*_captions.csv")):
        with csv_path.open(encoding="utf-8", newline="") as fh:
            captions.update({row["ID"]: row["Caption"] for row in csv.DictReader(fh)})
    facts = synth.load_facts(tmp_path)
    assert len(captions) == 200 and set(captions) == set(facts)
    result = facts_agreement(captions, facts)
    for field in ("modality", "side", "finding"):
        assert result[field]["n"] == 200
        assert result[field]["agreement"] >= 0.98, (field, result[field]["disagreements"])
