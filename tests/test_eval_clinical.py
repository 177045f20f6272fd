"""The clinical concept extractor (modality, regions, findings with negation, laterality) and its metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medblip.errors import ConfigError
from medblip.evaluation.clinical import extract_concepts, load_lexicon, normalize_modality
from medblip.evaluation.clinical.metrics import clinical_metrics


@pytest.mark.parametrize(("text", "finding", "status"), [
    ("No evidence of pneumothorax.", "pneumothorax", "negated"),
    ("Chest X-ray: no pleural effusion, pneumothorax or focal consolidation.", "consolidation", "negated"),
    ("CT of the head without acute haemorrhage.", "haemorrhage", "negated"),
    ("Negative for pulmonary embolism.", "embolism", "negated"),
    ("The lungs are free of nodules.", "nodule", "negated"),
    ("A fracture of the left femur was excluded.", "fracture", "negated"),
    ("Liver metastases are no longer seen.", "metastasis", "negated"),
    ("There is no mass in the liver.", "mass", "negated"),
    ("Metastasis cannot be excluded.", "metastasis", "uncertain"),
    ("Cannot exclude a small abscess.", "abscess", "uncertain"),
    ("Possible fracture of the right radius.", "fracture", "uncertain"),
    ("Findings suspicious for malignancy.", "mass", "uncertain"),
    ("Nodule, likely a granuloma.", "nodule", "present"),
    # The scope ends at 'but' / 'however' / a full stop: the later finding is present.
    ("No pneumothorax, but a small left pleural effusion.", "effusion", "present"),
    ("No fracture. Large haematoma of the thigh.", "haemorrhage", "present"),
    ("No haemorrhage; however, an acute infarct in the left MCA territory.", "infarct", "present"),
    # Pseudo-negations do not negate.
    ("No change in the size of the right lung nodule.", "nodule", "present"),
    ("Not only a cyst but also calcification.", "cyst", "present"),
    # A backward scope stops at a comma: the spleen is unremarkable, the liver mass is not.
    ("Large mass in the liver, spleen unremarkable.", "mass", "present"),
    ("Non-enhancing cystic lesion in the pancreas.", "cyst", "present"),
])
def test_negation_and_uncertainty(text: str, finding: str, status: str) -> None:
    concepts = extract_concepts(text)
    assert concepts.finding_status.get(finding) == status, concepts.to_dict()


def test_finding_present_wins_over_negated_mentions() -> None:
    c = extract_concepts("No effusion on the left; moderate effusion on the right.")
    assert c.finding_status["effusion"] == "present"
    assert [m.status for m in c.findings] == ["negated", "present"]
    assert c.findings[0].trigger == "no"


@pytest.mark.parametrize(("text", "primary", "modalities"), [
    ("Axial computed tomography scan of the pelvis", "CT", ["CT"]),
    ("Non-contrast CT of the head", "CT", ["CT"]),
    ("ct of the chest showing a nodule", "CT", ["CT"]),  # lower-cased model output
    ("mri of the brain", "MRI", ["MRI"]),
    ("Sagittal T2-weighted image of the lumbar spine", "MRI", ["MRI"]),
    ("Axial FLAIR shows hyperintensity", "MRI", ["MRI"]),
    ("MR - T2 weighted", "MRI", ["MRI"]),
    ("Posteroanterior chest X-ray", "X-ray", ["X-ray"]),
    ("Plain film of the abdomen", "X-ray", ["X-ray"]),
    ("Panoramic radiograph of the mandible", "X-ray", ["X-ray"]),
    ("Transvaginal sonography of the uterus", "ultrasound", ["ultrasound"]),
    ("US of the liver shows a cyst", "ultrasound", ["ultrasound"]),
    ("Colour Doppler of the carotid artery", "ultrasound", ["ultrasound"]),
    ("Transthoracic echocardiography, four-chamber view", "echocardiography", ["echocardiography"]),
    ("CT angiography of the circle of Willis", "CT", ["CT", "angiography"]),
    ("CTA shows occlusion of the basilar artery", "CT", ["CT", "angiography"]),
    ("MR angiography of the renal arteries", "MRI", ["MRI", "angiography"]),
    ("Digital subtraction angiography of the left ICA", "angiography", ["angiography"]),
    ("Cerebral DSA, lateral projection", "angiography", ["angiography"]),
    # uncased tokenizers (BLIP's) write acronyms in lower case: those that are not ordinary words still count
    ("cerebral dsa, anteroposterior projection : saccular aneurysm", "angiography", ["angiography"]),
    ("axr shows dilated loops", "X-ray", ["X-ray"]),
    ("trus guided biopsy of the prostate", "ultrasound", ["ultrasound"]),
    ("tte shows a pericardial effusion", "echocardiography", ["echocardiography"]),
    ("a cat sat on the table", None, []),  # ... unlike CAT, US, MR, TOE
    ("the big toe was swollen", None, []),
    ("FDG PET-CT of the whole body", "PET", ["PET", "CT"]),
    ("Bone scan shows increased uptake", "scintigraphy", ["scintigraphy"]),
    ("SPECT/CT of the parathyroid", "SPECT", ["SPECT", "CT"]),
    ("Mammogram of the right breast", "mammography", ["mammography"]),
    ("Barium swallow shows a stricture", "fluoroscopy", ["fluoroscopy"]),
    ("Chest radiograph and CT of the same patient", "X-ray", ["X-ray", "CT"]),
    ("Échographie vésicale", "ultrasound", ["ultrasound"]),
    ("Optical coherence tomography of the macula", None, []),
    ("Let us look at the follow-up", None, []),  # the pronoun is not ultrasound
    ("The mass was resected.", None, []),
])
def test_modality(text: str, primary: str | None, modalities: list[str]) -> None:
    c = extract_concepts(text)
    assert c.modality == primary
    assert list(c.modalities) == modalities
    assert c.angiography == ("angiography" in modalities)


@pytest.mark.parametrize(("text", "side"), [
    ("Left-sided pleural effusion", "left"),
    ("Mass in the right kidney", "right"),
    ("Bilateral hilar lymphadenopathy", "bilateral"),
    ("Nodules in the left and the right lung", "bilateral"),
    ("R lung nodule", "right"),
    ("Disc herniation at L5-S1", None),  # 'L' of a vertebra is not a side
    ("Image taken right after surgery", None),
    ("Axial CT of the abdomen", None),
])
def test_laterality(text: str, side: str | None) -> None:
    assert extract_concepts(text).laterality == side


def test_regions_use_synonyms() -> None:
    c = extract_concepts("Hepatic lesion and renal cyst on CT head and pulmonary nodules")
    assert {"liver", "kidney", "brain", "lung"} <= set(c.regions)
    assert extract_concepts("Femoral head necrosis").regions == ("hip",)
    assert "brain" not in extract_concepts("Mass in the head of the pancreas").regions


def test_normalize_modality_of_free_text_labels() -> None:
    assert normalize_modality("CT w/contrast (IV)") == "CT"
    assert normalize_modality("MR - ADC Map (App Diff Coeff)") == "MRI"
    assert normalize_modality("xray") == "X-ray"
    assert normalize_modality("pet") == "PET"


def test_to_dict_is_json_ready() -> None:
    d = extract_concepts("No effusion. Possible left lower lobe pneumonia on chest X-ray.").to_dict()
    json.dumps(d)
    assert d["modality"] == "X-ray"
    assert {"finding": "effusion", "status": "negated"} in d["findings"]
    assert {"finding": "pneumonia", "status": "uncertain"} in d["findings"]
    assert d["laterality"] == "left"


def test_clinical_metrics_perfect_and_negation_counts_absent() -> None:
    refs = [["CT of the chest: right lung nodule, no effusion."], ["MRI of the brain showing a left frontal mass."]]
    metrics, details = clinical_metrics(refs, [r[0] for r in refs])
    assert {name: m.value() for name, m in metrics.items()} == {
        "modality_accuracy": 1.0, "region_f1": 1.0, "finding_f1": 1.0, "laterality_agreement": 1.0}
    assert details["reference_findings_negated"] == 1

    # Predicting the negated finding as present is a false positive; wrong modality and side count.
    preds = ["MRI of the chest: left lung nodule and effusion.", "MRI of the brain showing a left frontal mass."]
    metrics, details = clinical_metrics(refs, preds)
    assert metrics["modality_accuracy"].value() == 0.5
    assert metrics["laterality_agreement"].value() == 0.5
    assert metrics["finding_f1"].value() == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    assert details["modality_confusion"] == {"CT": {"MRI": 1}, "MRI": {"MRI": 1}}


def test_uncertain_findings_are_configurable() -> None:
    refs, preds = [["Possible fracture of the left wrist."]], ["Fracture of the left wrist."]
    present, _ = clinical_metrics(refs, preds, uncertain_as="present")
    absent, _ = clinical_metrics(refs, preds, uncertain_as="absent")
    assert present["finding_f1"].value() == 1.0
    assert absent["finding_f1"].value() == 0.0


def test_multiple_references_score_against_the_best() -> None:
    refs = [["CT of the chest", "Chest radiograph with effusion"]]
    metrics, _ = clinical_metrics(refs, ["radiograph of the chest with effusion"])
    assert metrics["modality_accuracy"].value() == 1.0
    assert metrics["finding_f1"].value() == 1.0


def test_shipped_lexicon_and_bad_lexicon_file(tmp_path: Path) -> None:
    lex = load_lexicon()
    assert {"CT", "MRI", "X-ray", "ultrasound", "PET", "SPECT", "scintigraphy", "angiography", "mammography",
            "fluoroscopy", "echocardiography"} <= set(lex.modality_labels)
    bad = tmp_path / "lexicon.json"
    bad.write_text('{\n  "modalities": {,\n}\n')
    with pytest.raises(ConfigError, match=r"lexicon.json:2: invalid JSON"):
        load_lexicon(bad)
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text('{"modalities": {}}')
    with pytest.raises(ConfigError, match="malformed lexicon"):
        load_lexicon(incomplete)


def test_detokenised_hyphens_are_read_like_hyphens() -> None:
    """BLIP's tokenizer decodes "x-ray" as "x - ray"; the extractor must read both the same way."""
    spaced = extract_concepts("frontal x - ray of the chest shows a left - sided effusion")
    joined = extract_concepts("frontal x-ray of the chest shows a left-sided effusion")
    assert spaced.modality == joined.modality == "X-ray"
    assert spaced.regions == joined.regions and spaced.laterality == joined.laterality == "left"
