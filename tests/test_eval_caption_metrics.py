"""COCO caption metrics: equal to pycocoevalcap on fixed examples, also on bootstrap resamples."""

from __future__ import annotations

import numpy as np
import pytest

from medblip.evaluation.caption_metrics import bleu_metrics, caption_metrics, pycocoevalcap_scores
from medblip.evaluation.cider import CiderD
from medblip.evaluation.tokenization import imageclef_preprocess, java_available, simple_tokenize

needs_java = pytest.mark.skipif(not java_available(), reason="no Java runtime: PTB tokenizer and METEOR need one")

# Already tokenised (lower-case, no punctuation), as pycocoevalcap's scorers expect.
REFS = [
    ["axial ct of the chest shows a spiculated nodule in the right upper lobe",
     "chest ct with a right upper lobe nodule"],
    ["t2-weighted mri of the brain shows a left temporal lobe cyst"],
    ["frontal chest radiograph shows a large left pleural effusion"],
    ["ultrasound of the thyroid shows a hypoechoic nodule in the right lobe"],
    ["ct angiography of the head shows an aneurysm of the left middle cerebral artery"],
    ["pelvic radiograph shows a displaced fracture of the right femoral neck"],
]
PREDS = [
    "ct of the chest shows a nodule in the right upper lobe",
    "mri of the brain shows a cyst in the left temporal lobe",
    "chest radiograph shows a large left pleural effusion",
    "",
    "ct of the head shows an aneurysm",
    "pelvic radiograph shows a displaced fracture of the right femoral neck",
]


def _duplicate(idx: np.ndarray) -> tuple[list[list[str]], list[str]]:
    return [REFS[i] for i in idx], [PREDS[i] for i in idx]


def test_bleu_rouge_cider_equal_pycocoevalcap() -> None:
    ours = {name: m.value() for name, m in caption_metrics(REFS, PREDS).items()}
    ref = pycocoevalcap_scores(REFS, PREDS)
    assert set(ref) <= set(ours)
    for name, value in ref.items():
        assert ours[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_cider_per_image_equal_pycocoevalcap() -> None:
    from pycocoevalcap.cider.cider import Cider

    _, per_image = Cider().compute_score({i: r for i, r in enumerate(REFS)}, {i: [p] for i, p in enumerate(PREDS)})
    np.testing.assert_allclose(CiderD(REFS, PREDS).per_image(), per_image, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resampled_bleu_and_cider_equal_pycocoevalcap_on_the_resample(seed: int) -> None:
    # A resample is scored as if the duplicated images were a corpus of their own: CIDEr's document
    # frequencies must be recomputed from the resample, not reused from the full set.
    idx = np.random.default_rng(seed).integers(0, len(PREDS), len(PREDS))
    weights = np.bincount(idx, minlength=len(PREDS)).astype(float)[None, :]
    expected = pycocoevalcap_scores(*_duplicate(idx))
    metrics = caption_metrics(REFS, PREDS)
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert metrics[name].on_weights(weights)[0] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name


def test_identical_prediction_scores_the_maximum() -> None:
    refs = [[r[0]] for r in REFS]
    preds = [r[0] for r in REFS]
    ours = {name: m.value() for name, m in caption_metrics(refs, preds).items()}
    for k in range(1, 5):
        assert ours[f"BLEU-{k}"] == pytest.approx(1.0, abs=1e-6)
    assert ours["ROUGE-L"] == pytest.approx(1.0)
    # CIDEr-D of a perfect caption is not a fixed constant (it depends on idf); it equals
    # pycocoevalcap's value and beats any imperfect system on the same references.
    assert ours["CIDEr"] == pytest.approx(pycocoevalcap_scores(refs, preds)["CIDEr"], rel=1e-9)
    assert ours["CIDEr"] > CiderD(refs, PREDS).value()


def test_bleu_brevity_penalty_and_empty_prediction() -> None:
    bleu = bleu_metrics([["a b c d e f g h"]], ["a b c d"])
    # 4 of 4 unigrams correct, but half the reference length: BP = exp(1 - 8/4).
    assert bleu["BLEU-1"].value() == pytest.approx(np.exp(1 - 2), rel=1e-6)
    assert bleu_metrics([["a b"]], [""])["BLEU-1"].value() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("text", "tokens"), [
    ("Axial CT (arrow) shows a 5.2-cm mass, the patient's T2-weighted scan.",
     "axial ct -lrb- arrow -rrb- shows a 5.2-cm mass the patient 's t2-weighted scan"),
    ("PET/CT: no FDG-avid lesion; see Fig. 2!", "pet/ct no fdg-avid lesion see fig. 2"),
    ("It doesn't   show\u2028anything.", "it does n't show anything"),
])
def test_fallback_tokenizer_imitates_ptb(text: str, tokens: str) -> None:
    assert simple_tokenize(text) == tokens


def test_imageclef_preprocessing() -> None:
    # the organisers' order: lower-case, digits -> "number", then punctuation deleted (so 5.2 -> numbernumber)
    assert imageclef_preprocess("CT: a 5.2 cm mass (arrow), T2-weighted!") == "ct a numbernumber cm mass arrow tnumberweighted"
    assert imageclef_preprocess("Mass  in\nthe LEFT lobe.") == "mass  in\nthe left lobe"


@needs_java
def test_ptb_tokenizer_is_pycocoevalcap_and_keeps_captions_aligned() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from medblip.evaluation.tokenization import ptb_tokenize

    captions = {"a": ["Axial CT (arrow) shows a 5.2-cm mass."], "b": ["first line\u2028second line", ""],
                "c": ["The patient's MRI."]}
    got = ptb_tokenize(captions)
    assert got["b"] == ["first line second line", ""]  # a raw \u2028 would shift "c" onto "b"
    assert got["c"] == ["the patient 's mri"]
    direct = PTBTokenizer().tokenize({"a": [{"caption": captions["a"][0]}]})
    assert got["a"] == direct["a"]
    # The fallback agrees with PTB on ordinary captions.
    assert simple_tokenize(captions["a"][0]) == got["a"][0]


@needs_java
@pytest.mark.slow
def test_meteor_equals_pycocoevalcap_including_resamples_and_stops_java() -> None:
    from medblip.evaluation.meteor import MeteorSession

    refs = REFS + [["a perfectly matched caption"]]
    preds = PREDS + ["a perfectly matched caption"]
    with MeteorSession() as session:
        metric = session.metric(refs, preds)
        gts = {i: r for i, r in enumerate(refs)}
        res = {i: [p] for i, p in enumerate(preds)}
        assert metric.value() == pytest.approx(session.compute_score(gts, res), abs=1e-12)
        idx = np.random.default_rng(3).integers(0, len(preds), len(preds))
        weights = np.bincount(idx, minlength=len(preds)).astype(float)[None, :]
        expected = session.compute_score({k: refs[i] for k, i in enumerate(idx)}, {k: [preds[i]] for k, i in enumerate(idx)})
        assert metric.on_weights(weights)[0] == pytest.approx(expected, abs=1e-12)
        proc = session._meteor.meteor_p
    assert proc.poll() is not None  # the Java process is gone
