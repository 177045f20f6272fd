"""Checking the extractor against independent labels: ROCO's UMLS CUIs and MedPix's modality field.

ROCO semantics (documented because several choices are possible):

* A caption is *evaluated* when at least one of its CUIs is in :data:`MODALITY_CUIS`; the set of
  modalities those CUIs name is the caption's *CUI modalities*.
* **any-agreement** (the headline number): the CUI modalities and the extracted modalities (every
  modality the caption mentions) share at least one label.
* **primary agreement** (stricter): the extractor's primary (first-mentioned) modality is one of
  the CUI modalities. "CT angiography" captions whose CUIs name only angiography disagree here,
  because the extractor's primary is CT.
* Labels must be equal; the lexicon's ``is_a`` hierarchy (echocardiography is ultrasound) is not
  used, so that a vague extraction cannot agree with a specific CUI.
* A caption without any extracted modality disagrees (column ``none`` of the confusion matrix).

CUIs not used, and why: C0024485 (magnetic resonance imaging) does not occur in this release (MR
captions carry C0231881, used here); C0040399 (SPECT) is attached to captions containing the word
"aspect" (103 of its 104 captions), an artefact of ROCO's approximate concept matching, so SPECT
is not evaluated.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medblip.errors import DataError
from medblip.evaluation.clinical.extractor import extract_concepts, normalize_modality

#: UMLS CUI -> (lexicon modality label, concept name as used in ROCO)
MODALITY_CUIS: dict[str, tuple[str, str]] = {
    "C0040405": ("CT", "X-Ray Computed Tomography"),
    "C0024485": ("MRI", "Magnetic Resonance Imaging"),
    # Not a textbook MRI CUI: in this release it accompanies the words "magnetic resonance" (362 of
    # its 369 captions) and stands in for C0024485, which never occurs.
    "C0231881": ("MRI", "magnetic resonance (as annotated in ROCO)"),
    "C0041618": ("ultrasound", "Ultrasonography"),
    "C0013516": ("echocardiography", "Echocardiography"),
    "C0043299": ("X-ray", "Diagnostic radiologic examination"),
    "C1306645": ("X-ray", "Plain x-ray"),
    "C0039985": ("X-ray", "Plain chest X-ray"),
    "C0032743": ("PET", "Positron-Emission Tomography"),
    "C0034606": ("scintigraphy", "Radionuclide Imaging"),
    "C0024671": ("mammography", "Mammography"),
    "C0016356": ("fluoroscopy", "Fluoroscopy"),
    "C0740170": ("fluoroscopy", "Barium swallow"),
    "C0002978": ("angiography", "Angiography"),
    "C0031545": ("angiography", "Phlebography"),
}


def _read_tsv(path: Path) -> dict[str, list[str]]:
    """ROCO's ``ID<TAB>field<TAB>...`` files -> id -> non-empty fields."""
    out: dict[str, list[str]] = {}
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 2:
                    raise DataError(f"{path}:{lineno}: expected 'ROCO_ID<TAB>...', got {line[:60]!r}")
                out[parts[0]] = [p.strip() for p in parts[1:] if p.strip()]
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    return out


def roco_modality_agreement(roco_dir: str | Path, subset: str = "radiology",
                            examples: int = 20) -> dict[str, Any]:
    """Agreement of the extracted modality with ROCO's modality CUIs (see module docstring)."""
    root = Path(roco_dir)
    folder = next((p for p in (root / "validation" / subset, root / subset, root) if (p / "cuis.txt").exists()),
                  None)
    if folder is None:
        raise DataError(f"{root}: no cuis.txt under validation/{subset}/ (expected ROCO's text layout)")
    cuis = _read_tsv(folder / "cuis.txt")
    captions = {k: " ".join(v) for k, v in _read_tsv(folder / "captions.txt").items()}

    confusion: Counter[tuple[str, str]] = Counter()
    per_label: dict[str, Counter[str]] = {}
    n_any = n_primary = n = 0
    disagreements: list[dict[str, Any]] = []
    for rid, codes in cuis.items():
        truth = sorted({MODALITY_CUIS[c][0] for c in codes if c in MODALITY_CUIS})
        if not truth or rid not in captions:
            continue
        concepts = extract_concepts(captions[rid])
        n += 1
        any_ok = bool(set(truth) & set(concepts.modalities))
        primary_ok = concepts.modality in truth
        n_any += any_ok
        n_primary += primary_ok
        confusion["+".join(truth), concepts.modality or "none"] += 1
        for label in truth:
            per_label.setdefault(label, Counter())["n"] += 1
            per_label[label]["any"] += label in concepts.modalities
            per_label[label]["primary"] += concepts.modality == label
        if not any_ok and len(disagreements) < examples:
            disagreements.append({"id": rid, "cui_modalities": truth, "extracted": list(concepts.modalities),
                                  "caption": captions[rid]})
    return {
        "source": str(folder),
        "evaluated": n,
        "captions": len(captions),
        "agreement_any": n_any / n if n else float("nan"),
        "agreement_primary": n_primary / n if n else float("nan"),
        "per_modality": {lab: {"n": c["n"], "agreement_any": c["any"] / c["n"],
                               "agreement_primary": c["primary"] / c["n"]}
                         for lab, c in sorted(per_label.items(), key=lambda kv: -kv[1]["n"])},
        "confusion": _nested(confusion),
        "disagreement_examples": disagreements,
        "cuis": {c: {"modality": lab, "name": name} for c, (lab, name) in MODALITY_CUIS.items()},
    }


def _nested(confusion: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (row, col), count in sorted(confusion.items(), key=lambda kv: (-kv[1], kv[0])):
        out.setdefault(row, {})[col] = count
    return out


def confusion_markdown(confusion: dict[str, dict[str, int]], max_rows: int = 25) -> str:
    """Rows: the CUI modalities; columns: the extractor's primary modality."""
    cols = sorted({c for row in confusion.values() for c in row}, key=lambda c: (c == "none", c))
    rows = sorted(confusion, key=lambda r: -sum(confusion[r].values()))[:max_rows]
    lines = ["| CUI modality \\ extracted | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {r} | " + " | ".join(str(confusion[r].get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def medpix_modality_agreement(manifest: str | Path, examples: int = 20) -> dict[str, Any]:
    """MedPix's ``modality`` field ("MR - T2 weighted", "CT w/contrast (IV)") vs the extractor.

    Two numbers: ``field_agreement`` normalises the field itself through the lexicon (every
    MedPix spelling must map to a label), ``caption_agreement`` compares the modality extracted
    from the caption with the field, over captions that mention a modality at all (MedPix
    captions mostly describe findings and name no modality).
    """
    path = Path(manifest)
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
    field_ok = cap_n = cap_ok = 0
    unmapped: Counter[str] = Counter()
    bad: list[dict[str, Any]] = []
    for row in rows:
        field_label = normalize_modality(str(row.get("modality", "")))
        if field_label is None:
            unmapped[str(row.get("modality"))] += 1
        else:
            field_ok += 1
        concepts = extract_concepts(str(row.get("caption", "")))
        if concepts.modality is not None and field_label is not None:
            cap_n += 1
            ok = field_label in concepts.modalities
            cap_ok += ok
            if not ok and len(bad) < examples:
                bad.append({"modality": row.get("modality"), "caption": row.get("caption"),
                            "extracted": list(concepts.modalities)})
    return {
        "source": str(path),
        "rows": len(rows),
        "field_agreement": field_ok / len(rows) if rows else float("nan"),
        "unmapped_fields": dict(unmapped),
        "captions_with_modality": cap_n,
        "caption_agreement": cap_ok / cap_n if cap_n else float("nan"),
        "caption_disagreements": bad,
    }


def facts_agreement(captions: dict[str, str], facts: dict[str, dict[str, Any]],
                    fields: Iterable[str] = ("modality", "side", "finding", "region")) -> dict[str, Any]:
    """Extractor vs exact facts (the synthetic benchmark's ``facts.jsonl``): per field, the share
    of captions whose extracted value matches the fact, where the fact is not empty.

    Facts are normalised through the same lexicon (a fact "MRI" and a caption saying "MR image"
    agree); ``finding`` agrees when the fact's finding is extracted as present (or, when the fact
    says there is no finding, when no finding is extracted as present).
    """
    from medblip.evaluation.clinical.lexicon import load_lexicon

    lex = load_lexicon()
    counts: dict[str, Counter[str]] = {f: Counter() for f in fields}
    bad: dict[str, list[dict[str, Any]]] = {f: [] for f in fields}
    for cid, caption in captions.items():
        fact = facts.get(cid)
        if fact is None:
            continue
        c = extract_concepts(caption)
        for f in fields:
            value = fact.get(f)
            if value in (None, ""):
                continue
            if f == "modality":
                ok = c.modality == normalize_modality(str(value))
            elif f == "side":
                ok = _fact_side(str(value)) == c.laterality
            elif f == "region":
                wanted = _labels(lex.region_matcher, str(value))
                ok = bool(wanted) and wanted <= set(c.regions)
            else:
                wanted = _labels(lex.finding_matcher, str(value))
                present = c.findings_present("absent")
                ok = (not present) if str(value).lower() in {"none", "normal", "no finding"} else (
                    bool(wanted) and wanted <= present)
            counts[f]["n"] += 1
            counts[f]["ok"] += ok
            if not ok and len(bad[f]) < 10:
                bad[f].append({"id": cid, "fact": value, "caption": caption})
    return {f: {"n": counts[f]["n"], "agreement": counts[f]["ok"] / counts[f]["n"] if counts[f]["n"] else None,
                "disagreements": bad[f]} for f in fields}


def _fact_side(value: str) -> str | None:
    v = value.strip().lower()
    if v in {"", "none", "midline", "central", "n/a"}:
        return None
    return extract_concepts(v).laterality or v


def _labels(matcher: Any, text: str) -> set[str]:
    low = text.lower()
    return {lab for m in matcher.find(low, text) for lab in m.labels}
