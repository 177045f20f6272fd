"""BLEURT with transformers' own BERT and RemBERT classes, reading the PyTorch BLEURT checkpoints.

Google's BLEURT checkpoints are TensorFlow SavedModels; the hub has PyTorch conversions made by the
``bleurt-pytorch`` project (``lucadiliello/BLEURT-20``, ``-D12``, ``-D6``, ``-D3`` and the older
``bleurt-{tiny,base,large}-{128,512}``). That package does not import with transformers 5, but its
model is BERT, with optional input embeddings narrower than the encoder (``embedding_size``, projected
up by ``encoder.embedding_projection``: RemBERT's layout, which BLEURT-20 has), a tanh pooler on the
first token and a ``Linear(hidden, 1)`` regression head -- exactly ``BertForSequenceClassification``
and ``RemBertForSequenceClassification`` (post-LN layers, the config's activation and layer-norm eps).
So this module only translates: the config (``model_type: "bleurt"`` becomes a ``BertConfig`` or
``RemBertConfig``), the weight names (``bleurt.`` -> ``bert.``/``rembert.``, ``embedding_projection``
-> ``embedding_hidden_mapping_in``, through ``from_pretrained``'s ``key_mapping``) and the tokenizer.

The input is built as Google's ``bleurt/encoding.py`` builds it: ``[CLS] reference [SEP] candidate
[SEP]``, token types 0 up to the first ``[SEP]`` and 1 after it, the longer side cut one token at a time
until the pair fits the checkpoint's length (512 for BLEURT-20; the ImageCLEF evaluator's
``tokenizer(..., truncation=True, max_length=512)`` removes the same tokens), padding masked.
SentencePiece checkpoints (``spm.model``: BLEURT-20 and its distillations) are tokenized with
``sentencepiece`` as Google's ``lib/tokenizers.py`` does (pieces, then their ids); WordPiece ones
(``vocab.txt``) with transformers' ``BertTokenizer``.

Equal to the port to float rounding (``tests/test_eval_bleurt.py``), and so to what the ImageCLEFmedical
2025 Caption evaluator computes, which runs the port. The port itself is not bit-equal to Google's
TensorFlow BLEURT (a user measured up to 0.14% per score, 0.06% on average: lucadiliello/bleurt-pytorch
issue #1; a likely cause: Google's TF BERT code, bleurt/lib/modeling.py, computes "gelu" with the tanh
approximation, transformers with the exact erf form).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: BLEURT-20's input length (its bleurt_config.json ``max_seq_length``), the most any checkpoint takes
MAX_LENGTH = 512
SPM_FILE = "spm.model"
#: checkpoint weight names -> transformers' (regexes, as from_pretrained's key_mapping takes them)
KEY_MAPPING_BERT = {r"^bleurt\.": "bert."}
KEY_MAPPING_REMBERT = {r"^bleurt\.": "rembert.",
                       r"encoder\.embedding_projection\.": "encoder.embedding_hidden_mapping_in."}
_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "initializer_range",
                "pad_token_id")
_BATCH = 32


class BleurtCheckpointError(ValueError):
    """A folder or hub id that is not a BLEURT checkpoint in the PyTorch port's format."""


@dataclass(frozen=True)
class Bleurt:
    """A loaded BLEURT checkpoint: the regression model and how to turn a text into token ids."""

    model: Any
    tokenize: Callable[[str], list[int]]
    cls_id: int
    sep_id: int
    max_length: int
    tokenizer: str


def model_config(raw: dict[str, Any]) -> Any:
    """The checkpoint's ``config.json`` (``model_type: "bleurt"``) as a transformers config."""
    from transformers import BertConfig, RemBertConfig

    if raw.get("model_type") != "bleurt":
        raise BleurtCheckpointError(f"config.json has model_type {raw.get('model_type')!r}, not 'bleurt' (a "
                                    f"PyTorch BLEURT checkpoint such as lucadiliello/BLEURT-20-D12 is needed)")
    fields = {k: raw[k] for k in _CONFIG_KEYS if k in raw}
    fields.update(num_labels=1, tie_word_embeddings=False)
    width = raw.get("embedding_size")
    if width:
        return RemBertConfig(**fields, input_embedding_size=width, output_embedding_size=width,
                             bos_token_id=None, eos_token_id=None)
    return BertConfig(**fields)


def _file(model: str, name: str) -> str | None:
    """``name`` of a checkpoint folder or hub repo (downloaded once), or None when it has no such file
    (offline and not cached counts as absent: the tokenizer file decides which tokenizer is used, and a
    checkpoint whose weights loaded offline had its whole repo downloaded)."""
    folder = Path(model)
    if folder.is_dir():
        return str(folder / name) if (folder / name).is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(model, name)
    except EntryNotFoundError:  # LocalEntryNotFoundError (offline) is one too
        return None


def _tokenizer(model: str) -> tuple[Callable[[str], list[int]], int, int, str, dict[str, Any]]:
    spm_path = _file(model, SPM_FILE)
    if spm_path:
        try:
            import sentencepiece
        except ImportError:
            raise ImportError("it needs the sentencepiece package: pip install 'medblip[imageclef]'") from None
        sp = sentencepiece.SentencePieceProcessor(model_file=spm_path)
        cls_id, sep_id = sp.piece_to_id("[CLS]"), sp.piece_to_id("[SEP]")
        if sp.unk_id() in (cls_id, sep_id):
            raise BleurtCheckpointError(f"{SPM_FILE} has no [CLS] or [SEP] piece")

        def tokenize(text: str) -> list[int]:
            return [sp.piece_to_id(p) for p in sp.encode(text, out_type=str)]

        config_path = _file(model, "tokenizer_config.json")
        settings = json.loads(Path(config_path).read_text(encoding="utf-8")) if config_path else {}
        return tokenize, cls_id, sep_id, "sentencepiece", settings
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(model)

    def tokenize(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    return tokenize, tok.cls_token_id, tok.sep_token_id, "wordpiece", {"model_max_length": tok.model_max_length}


@functools.lru_cache(maxsize=2)
def load_bleurt(model: str, device: str) -> Bleurt:
    """Load a PyTorch BLEURT checkpoint (hub id or folder) onto ``device``, in eval mode."""
    from transformers import BertForSequenceClassification, PretrainedConfig, RemBertForSequenceClassification

    raw, _ = PretrainedConfig.get_config_dict(model)
    config = model_config(raw)
    rembert = config.model_type == "rembert"
    cls = RemBertForSequenceClassification if rembert else BertForSequenceClassification
    net, loading = cls.from_pretrained(model, config=config, output_loading_info=True,
                                       key_mapping=KEY_MAPPING_REMBERT if rembert else KEY_MAPPING_BERT)
    if loading["missing_keys"]:  # left random, the scores would mean nothing
        missing = sorted(loading["missing_keys"])
        raise BleurtCheckpointError(f"the weights lack {len(missing)} tensor(s) of {cls.__name__} "
                                    f"(e.g. {missing[0]}); is it a PyTorch BLEURT checkpoint?")
    tokenize, cls_id, sep_id, kind, settings = _tokenizer(model)
    limit = settings.get("model_max_length")
    max_length = min(MAX_LENGTH, config.max_position_embeddings,
                     int(limit) if isinstance(limit, int | float) and limit > 0 else MAX_LENGTH)
    return Bleurt(net.to(device).eval(), tokenize, cls_id, sep_id, max_length, kind)


def truncate_pair(reference: list[int], candidate: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Cut the longer side (the candidate on a tie) one token at a time until both fit ``budget``, as
    Google's ``_truncate_seq_pair``; the result equals transformers' ``longest_first`` truncation."""
    ref, cand = list(reference), list(candidate)
    while len(ref) + len(cand) > budget:
        if len(ref) > len(cand):
            ref.pop()
        else:
            cand.pop()
    return ref, cand


def encode_pair(bleurt: Bleurt, reference: str, candidate: str) -> tuple[list[int], list[int]]:
    """Token ids and token types of one (reference, candidate) pair, special tokens included."""
    ref, cand = truncate_pair(bleurt.tokenize(reference), bleurt.tokenize(candidate), bleurt.max_length - 3)
    ids = [bleurt.cls_id, *ref, bleurt.sep_id, *cand, bleurt.sep_id]
    return ids, [0] * (len(ref) + 2) + [1] * (len(cand) + 1)


def score_pairs(bleurt: Bleurt, references: Sequence[str], candidates: Sequence[str],
                batch_size: int = _BATCH, progress: Callable[[int], Any] | None = None) -> np.ndarray:
    """BLEURT of each (reference, candidate) pair, batched by length (pairs of similar length share a
    batch, so little padding is computed); the scores come back in the input order. ``progress(n)``:
    called with each batch's size when it is scored."""
    import torch

    encoded = [encode_pair(bleurt, r, c) for r, c in zip(references, candidates, strict=True)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out = np.zeros(len(encoded), dtype=np.float64)
    device = next(bleurt.model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(encoded[i][0]) for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        types = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            n = len(encoded[i][0])
            ids[row, :n] = torch.tensor(encoded[i][0])
            types[row, :n] = torch.tensor(encoded[i][1])
            mask[row, :n] = 1
        with torch.inference_mode():
            logits = bleurt.model(input_ids=ids.to(device), token_type_ids=types.to(device),
                                  attention_mask=mask.to(device)).logits
        out[batch] = logits[:, 0].double().cpu().numpy()
        if progress is not None:
            progress(len(batch))
    return out


__all__ = ["KEY_MAPPING_BERT", "KEY_MAPPING_REMBERT", "MAX_LENGTH", "Bleurt", "BleurtCheckpointError",
           "encode_pair", "load_bleurt", "model_config", "score_pairs", "truncate_pair"]
