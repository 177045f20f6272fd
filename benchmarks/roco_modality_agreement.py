"""Agreement of medblip's clinical extractor with the modality CUIs of the real ROCO captions.

Usage: python benchmarks/roco_modality_agreement.py [--roco ../shared/roco-text] [--out FILE.json]

For every ROCO validation caption whose UMLS CUIs name an imaging modality, compares the extractor's
modalities with the CUIs (semantics in medblip.evaluation.clinical.validation), prints the
agreement, per-modality rates and the confusion matrix, and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medblip.errors import MedblipError
from medblip.evaluation.clinical.validation import confusion_markdown, roco_modality_agreement
from medblip.io import atomic_write_json

DEFAULT_ROCO = Path(__file__).resolve().parents[1].parent / "shared" / "roco-text"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roco", type=Path, default=DEFAULT_ROCO, help="ROCO text folder (default: %(default)s)")
    parser.add_argument("--subset", default="radiology", help="radiology or non-radiology (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("roco_modality_agreement.json"),
                        help="JSON output (default: %(default)s)")
    parser.add_argument("--examples", type=int, default=20, help="disagreements to list (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        result = roco_modality_agreement(args.roco, args.subset, examples=args.examples)
    except MedblipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ROCO {args.subset}: {result['evaluated']} of {result['captions']} captions have a modality CUI")
    print(f"agreement (a CUI modality among the extracted ones): {result['agreement_any']:.4f}")
    print(f"primary agreement (first-mentioned modality is a CUI modality): {result['agreement_primary']:.4f}")
    print("\n| modality (CUI) | n | agreement | primary agreement |\n|---|---:|---:|---:|")
    for label, r in result["per_modality"].items():
        print(f"| {label} | {r['n']} | {r['agreement_any']:.3f} | {r['agreement_primary']:.3f} |")
    print("\nConfusion (rows: CUI modalities; columns: extracted primary modality)\n")
    print(confusion_markdown(result["confusion"]))
    if result["disagreement_examples"]:
        print("\nDisagreements (first few):")
        for d in result["disagreement_examples"]:
            print(f"- {d['id']} CUI={d['cui_modalities']} extracted={d['extracted']}: {d['caption'][:120]}")
    atomic_write_json(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
