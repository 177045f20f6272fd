"""Regenerate the tiny BLEURT checkpoints in this folder and the scores the PyTorch BLEURT port gives them.

The checkpoints have the format users download from the hub (``lucadiliello/BLEURT-20-D12`` and its
siblings): a ``config.json`` with ``model_type: "bleurt"``, weights named like the port's
``BleurtForSequenceClassification`` (``bleurt.`` prefix, ``encoder.embedding_projection`` when
``embedding_size`` is set), and the tokenizer files the port writes (``spm.model`` for the
SentencePiece checkpoints, ``vocab.txt``/``tokenizer.json`` for the WordPiece ones). The weights are
random (a fixed seed), so only equality with the port means anything, not the values themselves.

``expected_scores.json`` holds, for each checkpoint, the caption pairs and what the port computes for
them the way the ImageCLEFmedical 2025 Caption evaluator calls it (``tokenizer(references, candidates,
padding="longest", truncation=True, max_length=...)``, then the logits; in float32, and in float64 for a
comparison free of rounding), plus the token ids it fed the model. It needs the port, which only imports with transformers 4.x::

    python3 -m venv /tmp/bleurtref
    /tmp/bleurtref/bin/pip install torch 'transformers<4.46' sentencepiece protobuf bleurt-pytorch==0.0.1
    /tmp/bleurtref/bin/python tests/data/bleurt/make_tiny_bleurt.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import sentencepiece as spm
import torch
import transformers
from bleurt_pytorch import BleurtConfig, BleurtForSequenceClassification, BleurtTokenizer
from bleurt_pytorch.bleurt.tokenization_bleurt_fast import BleurtTokenizerFast
from bleurt_pytorch.bleurt.tokenization_bleurt_sp import BleurtSPTokenizer

HERE = Path(__file__).parent
CORPUS = [
    "Axial CT of the chest shows a small nodule in the right upper lobe.",
    "T2-weighted MRI of the brain: cyst in the left temporal lobe.",
    "Chest radiograph with a large left pleural effusion.",
    "Ultrasound of the thyroid shows a hypoechoic nodule.",
    "CT angiography: aneurysm of the left middle cerebral artery.",
    "Contrast-enhanced CT of the abdomen shows a mass in the liver.",
    "Coronal MRI of the knee with a tear of the medial meniscus.",
    "Lateral radiograph of the cervical spine without fracture.",
    "Sagittal T1 image showing a herniated disc at the lumbar level.",
    "Axial FLAIR image with hyperintense lesions in the white matter.",
    "CT of the pelvis demonstrating a fracture of the right acetabulum.",
    "Doppler ultrasound of the kidney with normal flow.",
]
LONG = " ".join(CORPUS * 12)  # far over 512 tokens: the evaluator's truncation is exercised
#: (reference, candidate): a match, near misses, an empty candidate (the ImageCLEF preprocessing can
#: leave one), characters the vocabularies do not know, and a pair that must be truncated
PAIRS = [
    ("axial ct of the chest shows a small nodule", "axial ct of the chest shows a small nodule"),
    ("chest radiograph with a large left pleural effusion", "x-ray of the chest"),
    ("T2-weighted MRI of the brain: cyst in the left temporal lobe.", "Brain MRI showing a cyst"),
    ("ultrasound of the thyroid shows a hypoechoic nodule", ""),
    ("Röntgen of the Knee — 5 mm ✓", "knee radiograph"),
    (LONG, "CT of the pelvis " + LONG[: len(LONG) // 3]),
]
SEED = 20261127


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that the scores differ between pairs (the default init gives ~0 everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "LayerNorm.weight" in name else 0.3 * noise)
        # scores of order 0.5: float32 rounding inside the network then stays near 1e-7 in the score
        model.classifier.weight.mul_(0.25)


def sentencepiece_model(folder: Path, vocab_size: int) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "corpus.txt"
        text.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(text), model_prefix=str(Path(tmp) / "spm"), vocab_size=vocab_size, model_type="unigram",
            pad_id=0, pad_piece="[PAD]", unk_id=1, unk_piece="[UNK]", bos_id=-1, eos_id=-1,
            control_symbols=["[CLS]", "[SEP]", "[MASK]"], hard_vocab_limit=False, num_threads=1,
            character_coverage=1.0, normalization_rule_name="identity")  # no 200 KB NFKC table
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(tmp) / "spm.model", folder / "spm.model")
    return folder / "spm.model"


def wordpiece_vocab(folder: Path) -> Path:
    words = sorted({w.strip(".,:").lower() for line in CORPUS for w in line.split()} - {""})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789-.,:")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *[f"##{c}" for c in letters], *words,
             "##s", "##ing", "##ed"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    return folder / "vocab.txt"


def build(name: str, tokenizer, seed: int, safe: bool, **config) -> dict:
    folder = HERE / name
    cfg = BleurtConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, num_labels=1, **config)
    torch.manual_seed(seed)
    model = BleurtForSequenceClassification(cfg).eval()
    randomize(model, seed)
    model.save_pretrained(folder, safe_serialization=safe)
    tokenizer.save_pretrained(folder)
    # what users of the port do: load both back from the folder, then score as the evaluator does
    model = BleurtForSequenceClassification.from_pretrained(folder).eval()
    tok = BleurtTokenizer.from_pretrained(folder)
    max_length = min(512, cfg.max_position_embeddings)
    refs, cands = [r for r, _ in PAIRS], [c for _, c in PAIRS]
    enc = tok(refs, cands, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        scores = model(**enc).logits.flatten().tolist()
        scores64 = model.double()(**enc).logits.flatten().tolist()
    mask = enc["attention_mask"].bool()
    return {"references": refs, "candidates": cands, "max_length": max_length, "tokenizer": type(tok).__name__,
            "scores": scores, "scores_float64": scores64,
            "input_ids": [ids[m].tolist() for ids, m in zip(enc["input_ids"], mask, strict=True)],
            "token_type_ids": [t[m].tolist() for t, m in zip(enc["token_type_ids"], mask, strict=True)]}


def main() -> None:
    sp = BleurtSPTokenizer(str(sentencepiece_model(HERE / "tiny-bleurt-sp", vocab_size=160)))
    wp = BleurtTokenizerFast(str(wordpiece_vocab(HERE / "tiny-bleurt-wordpiece")), do_lower_case=True)
    expected = {
        # BLEURT-20's layout: SentencePiece, input embeddings narrower than the encoder, projected up
        "tiny-bleurt-sp": build("tiny-bleurt-sp", sp, SEED, safe=False, embedding_size=16,
                                max_position_embeddings=512),
        # the WordPiece BERT layout of the older BLEURT checkpoints, 128 positions
        "tiny-bleurt-wordpiece": build("tiny-bleurt-wordpiece", wp, SEED + 1, safe=True,
                                       max_position_embeddings=128),
    }
    expected["made_with"] = {p: metadata.version(p) for p in ("bleurt-pytorch", "transformers", "torch",
                                                              "sentencepiece")}
    assert transformers.__version__.startswith("4.")
    (HERE / "expected_scores.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n",
                                               encoding="utf-8")


if __name__ == "__main__":
    main()
