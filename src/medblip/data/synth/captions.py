"""ROCO-style captions written from a scene's facts (many templates and synonyms, never contradicting).

Guarantees the tests and the clinical extractor rely on:
- every caption names the modality (a term from ``vocab.MODALITY_TERMS``) and the region
  (``vocab.REGION_TERMS``);
- a positive caption names exactly its finding family (``vocab.FINDING_TERMS``), the patient's side
  (and never the other side) and, for focal lesions, the size exactly as in ``facts.jsonl`` (in mm
  or cm); effusions are graded small/moderate/large from ``size_mm``;
- a negative caption contains a negation cue (``vocab.NEGATION_CUES``) and no side word; positive
  captions contain no negation cue.
"""

from __future__ import annotations

import numpy as np

from medblip.data.synth import vocab
from medblip.data.synth.scene import Scene

_REGION_NOUNS = {
    "chest": ("chest", "thorax"),
    "abdomen": ("abdomen", "upper abdomen"),
    "head": ("head", "brain"),
    "pelvis": ("pelvis",),
    "neck": ("neck", "thyroid"),
    "whole_body": ("whole body",),
}

_MARKERS = ("", "", "", "", " (arrow)", " (arrow)", " (arrows)", " (arrowhead)", " (asterisk)")

_NEGATED_ITEMS = {
    ("ct", "chest"): ("focal lesion", "pleural effusion", "pulmonary nodule"),
    ("ct", "abdomen"): ("focal lesion", "focal hepatic or renal lesion"),
    ("ct", "head"): ("focal lesion", "skull fracture", "intracranial lesion"),
    ("mri", "head"): ("focal lesion", "abnormal signal"),
    ("xray", "chest"): ("effusion", "focal lesion", "pleural effusion", "fracture"),
    ("xray", "pelvis"): ("fracture", "acute bony injury"),
    ("ultrasound", "neck"): ("thyroid nodule", "focal lesion"),
    ("ultrasound", "pelvis"): ("adnexal mass", "ovarian cyst", "focal lesion"),
    ("angiography", "head"): ("aneurysm", "vascular malformation"),
    ("pet", "whole_body"): ("hypermetabolic lesion", "abnormal FDG uptake"),
}

_CLOSINGS = ("", "", "", "", "", " Follow-up imaging was recommended.", " Findings were confirmed at surgery.",
             " Compare with prior imaging.")


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lower_first(text: str) -> str:
    """Lower-case the first letter unless it starts an abbreviation (CT, MRI, PA, FDG...)."""
    if len(text) > 1 and text[1].isupper():
        return text
    return text[:1].lower() + text[1:]


def article(word: str) -> str:
    """'a' or 'an' before ``word`` (handles numbers like 8, 11, 18, 80 and initialisms like FDG)."""
    w = word.strip()
    head = w.split()[0] if w else w
    if head[:1].isdigit():
        num = head.split(".")[0].split("-")[0]
        return "an" if num.startswith("8") or num in {"11", "18"} else "a"
    if head[:2].isupper() or head.split("-")[0].isupper():
        return "an" if head[0] in "AEFHILMNORSX" else "a"
    return "an" if head[:1].lower() in "aeiou" else "a"


def size_text(size_mm: int, rng: np.random.Generator) -> str:
    """The size in mm or cm; the value is exact (``12 mm`` or ``1.2 cm``, never rounded)."""
    if size_mm >= 10 and rng.random() < 0.5:
        return f"{size_mm / 10:g} cm"
    return f"{size_mm} mm"


def modality_phrase(scene: Scene, rng: np.random.Generator) -> str:
    """How the caption names the study, always with a modality term and a region term."""
    region = _pick(rng, _REGION_NOUNS[scene.region])
    tech = scene.technique
    m = scene.modality
    if m == "ct":
        options = [f"Axial {tech} CT of the {region}", f"{_cap(tech)} computed tomography (CT) of the {region}",
                   f"Axial {tech} CT image of the {region}", f"{_cap(tech)} CT scan of the {region}",
                   f"Computed tomography of the {region}"]
    elif m == "mri":
        options = [f"{_cap(tech)} MRI of the brain", f"Axial {tech} MR image of the brain",
                   f"Brain MRI ({tech})", f"Axial {tech} magnetic resonance imaging of the brain"]
    elif m == "xray" and scene.region == "chest":
        options = ["Chest X-ray", "Chest radiograph", "PA chest radiograph", "Posteroanterior chest X-ray",
                   "Plain radiograph of the chest", f"Frontal radiograph of the {region}"]
    elif m == "xray":
        options = ["AP radiograph of the pelvis", "Pelvic X-ray", "Anteroposterior pelvic radiograph",
                   "Plain radiography of the pelvis"]
    elif m == "ultrasound" and scene.region == "neck":
        options = ["Transverse ultrasound of the thyroid", "Thyroid ultrasonography", "Transverse sonography of the neck",
                   "US of the thyroid gland", "Neck ultrasound (transverse view)"]
    elif m == "ultrasound":
        options = ["Transabdominal pelvic ultrasound", "Transverse sonogram of the pelvis", "Pelvic US",
                   "Transabdominal ultrasonography of the pelvis"]
    elif m == "angiography":
        options = ["Cerebral angiography (AP view)", "Digital subtraction angiography (DSA) of the head",
                   "Cerebral DSA, anteroposterior projection", "Catheter cerebral angiogram"]
    else:
        options = ["Whole-body FDG PET maximum intensity projection", "FDG PET MIP (whole body)",
                   "Whole-body positron emission tomography (PET)", "Whole-body PET (MIP)"]
    return _pick(rng, options)


def _finding_noun(scene: Scene, rng: np.random.Generator) -> str:
    if scene.finding == "mass":
        return _pick(rng, ("mass", "lesion", "lesion", "tumour", "tumor"))
    return scene.finding


def _focal(scene: Scene, mod: str, rng: np.random.Generator) -> str:
    assert scene.size_mm is not None and scene.location is not None and scene.appearance is not None
    size = size_text(scene.size_mm, rng)
    noun, adj, loc = _finding_noun(scene, rng), scene.appearance, scene.location
    marker = _pick(rng, _MARKERS)
    templates = [
        f"{mod} showing {article(size)} {size} {adj} {noun} in the {loc}{marker}.",
        f"{mod} demonstrating {article(adj)} {adj} {noun} measuring {size} in the {loc}{marker}.",
        f"{mod} reveals {article(size)} {size} {adj} {noun} of the {loc}{marker}.",
        f"{_cap(article(size))} {size} {adj} {noun} in the {loc} on {_lower_first(mod)}{marker}.",
        f"{mod}: {adj} {noun} ({size}) in the {loc}{marker}.",
        f"{mod} with {article(size)} {size} {adj} {noun} involving the {loc}{marker}.",
    ]
    return _pick(rng, templates)


def _effusion(scene: Scene, mod: str, rng: np.random.Generator) -> str:
    assert scene.size_mm is not None
    grade, side = vocab.effusion_grade(scene.size_mm), scene.side
    marker = _pick(rng, _MARKERS)
    templates = [
        f"{mod} demonstrating {article(grade)} {grade} {side}-sided pleural effusion{marker}.",
        f"{mod} showing {article(grade)} {grade} pleural effusion on the {side}{marker}.",
        f"{_cap(grade)} {side} pleural effusion on {_lower_first(mod)}{marker}.",
        f"{mod} with {article(grade)} {grade} {side} pleural effusion measuring {size_text(scene.size_mm, rng)} in depth.",
    ]
    if scene.modality == "xray":
        templates.append(f"{mod} with {article(grade)} {grade} {side}-sided pleural effusion "
                         f"blunting the {side} costophrenic angle.")
    return _pick(rng, templates)


def _fracture(scene: Scene, mod: str, rng: np.random.Generator) -> str:
    assert scene.location is not None and scene.appearance is not None
    adj, loc = scene.appearance, scene.location
    marker = _pick(rng, _MARKERS)
    templates = [
        f"{mod} showing {article(adj)} {adj} fracture of the {loc}{marker}.",
        f"{mod} demonstrating {article(adj)} {adj} {loc} fracture{marker}.",
        f"{_cap(article(adj))} {adj} fracture of the {loc} on {_lower_first(mod)}{marker}.",
    ]
    if scene.modality == "ct":
        templates.append(f"{mod} showing {article(adj)} {adj} fracture of the {loc} with overlying scalp haematoma.")
    return _pick(rng, templates)


def _negative(scene: Scene, mod: str, rng: np.random.Generator) -> str:
    item = _pick(rng, _NEGATED_ITEMS[(scene.modality, scene.region)])
    low = _lower_first(mod)
    templates = [
        f"{mod}. No focal lesion is seen.",
        f"{mod} showing no abnormality.",
        f"Normal {low}.",
        f"Unremarkable {low} without {item}.",
        f"{mod} without evidence of {item}.",
        f"No {item} is identified on {low}.",
        f"{mod}: no acute findings.",
        f"{mod}, negative for {item}.",
    ]
    return _pick(rng, templates)


def write_caption(scene: Scene, rng: np.random.Generator) -> str:
    mod = modality_phrase(scene, rng)
    if not scene.has_finding:
        return _negative(scene, mod, rng)
    if scene.finding == "effusion":
        text = _effusion(scene, mod, rng)
    elif scene.finding == "fracture":
        text = _fracture(scene, mod, rng)
    else:
        text = _focal(scene, mod, rng)
    return text + _pick(rng, _CLOSINGS)


def concept_cuis(scene: Scene) -> list[str]:
    """UMLS CUIs for the ROCOv2 concepts file: modality first, then region and finding."""
    cuis = [vocab.MODALITY_CUIS[scene.modality]]
    if scene.region in vocab.REGION_CUIS:
        cuis.append(vocab.REGION_CUIS[scene.region])
    if scene.has_finding:
        cuis.append(vocab.FINDING_CUIS[scene.finding])
    return cuis
