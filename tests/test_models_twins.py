"""Twins of the real checkpoints (``init-tiny --like``): the published ids, sizes and processor settings
are kept, only widths / depths / heads shrink, and the code paths that depend on those ids behave as on
the real checkpoint (BLIP-2 OPT ends captions where its generate stops: 50118, "\\n")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from medblip.errors import MedblipError
from medblip.models import create_model, init_tiny

pytestmark = pytest.mark.usefixtures("single_thread")

# The published values the tests check, copied from the hub's files (../shared/real-checkpoints).
OPT = "Salesforce/blip2-opt-2.7b"
T5 = "Salesforce/blip2-flan-t5-xl"
BLIP = "Salesforce/blip-image-captioning-base"
VICUNA = "Salesforce/instructblip-vicuna-7b"
PUBLISHED: dict[str, dict[str, Any]] = {
    OPT: {"image_token_index": 50265, "num_query_tokens": 32, "text_config.eos_token_id": 50118,
          "text_config.vocab_size": 50304, "text_config.prefix": "</s>", "generation.eos_token_id": 50118,
          "generation.bos_token_id": 2, "generation.pad_token_id": 1, "image_size": 224},
    T5: {"image_token_index": 32100, "num_query_tokens": 32, "text_config.eos_token_id": 1,
         "text_config.pad_token_id": 0, "text_config.decoder_start_token_id": 0, "text_config.vocab_size": 32128,
         "generation.decoder_start_token_id": 0, "image_size": 224},
    BLIP: {"text_config.bos_token_id": 30522, "text_config.eos_token_id": 2, "text_config.pad_token_id": 0,
           "text_config.sep_token_id": 102, "text_config.vocab_size": 30524, "vision_config.image_size": 384,
           "vision_config.patch_size": 16, "image_size": 384},
    VICUNA: {"image_token_index": 32001, "num_query_tokens": 32, "text_config.bos_token_id": 0,
             "text_config.eos_token_id": 1, "text_config.pad_token_id": 32000, "text_config.vocab_size": 32064,
             "qformer_config.vocab_size": 30523, "generation.eos_token_id": 1},
}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]


def image_processing(folder: Path) -> dict[str, Any]:
    """The saved image processor settings (transformers 5 nests them in processor_config.json)."""
    if (folder / "preprocessor_config.json").is_file():
        return json.loads((folder / "preprocessor_config.json").read_text())
    return json.loads((folder / "processor_config.json").read_text())["image_processor"]


def value(folder: Path, key: str) -> Any:
    cfg = json.loads((folder / "config.json").read_text())
    if key.startswith("generation."):
        return json.loads((folder / "generation_config.json").read_text()).get(key.split(".", 1)[1])
    if key == "image_size":
        return image_processing(folder)["size"]["height"]
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def image(seed: int = 0) -> Image.Image:
    return Image.new("RGB", (48, 48), (40 + 50 * seed, 30, 200 - 40 * seed))


@pytest.mark.parametrize("like", list(PUBLISHED))
def test_twin_keeps_every_published_value_and_shrinks_only_dimensions(twin: Any, like: str) -> None:
    folder = twin(like)
    for key, expected in PUBLISHED[like].items():
        assert value(folder, key) == expected, key
    cfg = json.loads((folder / "config.json").read_text())
    widths = [sub.get("hidden_size", sub.get("d_model")) for sub in
              (cfg.get("text_config", {}), cfg.get("vision_config", {}), cfg.get("qformer_config") or {}) if sub]
    assert widths and all(w == 32 for w in widths if w is not None)
    assert image_processing(folder)["image_mean"] == CLIP_MEAN
    m = create_model(folder)
    assert sum(p.numel() for p in m.model.parameters()) < 10_000_000
    tc = m.model.config.text_config
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # every id the config names is in range
        if getattr(tc, key, None) is not None:
            assert 0 <= getattr(tc, key) < tc.vocab_size


def test_opt_twin_tokenizer_has_opts_ids(twin: Any) -> None:
    tok = create_model(twin(OPT)).tokenizer
    assert (tok.convert_tokens_to_ids("<s>"), tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2, 2)
    assert tok("\n", add_special_tokens=False)["input_ids"] == [50118]
    assert tok.convert_tokens_to_ids("<image>") == 50265 and len(tok) == 50266
    assert tok("ct of the chest")["input_ids"][0] == 2  # OPT starts every sequence with </s>


def test_t5_and_llama_twin_tokenizers_have_the_real_ids(twin: Any) -> None:
    t5 = create_model(twin(T5)).tokenizer
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert t5.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>", "<image>"]) == [32099, 32000, 32100]
    vicuna = create_model(twin(VICUNA))
    tok = vicuna.tokenizer
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 32000)
    assert tok.convert_tokens_to_ids(["<0x0A>", "<image>"]) == [13, 32001]
    qtok = vicuna.processor.qformer_tokenizer
    assert qtok.bos_token == "[DEC]" and qtok.bos_token_id == 30522 and qtok.truncation_side == "left"


def test_blip_twin_uses_the_real_bert_uncased_vocabulary(twin: Any) -> None:
    m = create_model(twin(BLIP))
    tok = m.tokenizer
    assert len(tok) == 30522 and tok.bos_token is None  # the published tokenizer has no [DEC]/[ENC]
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == \
        [0, 100, 101, 102, 103]
    assert tok("the chest")["input_ids"] == [101, 1996, 3108, 102]  # bert-base-uncased's ids
    batch = m.collate([image()], ["CT of the chest"])
    assert batch["input_ids"][0, 0] == 30522, "the decoder starts from the config's bos ([DEC])"
    captions = m.generate([image()], num_beams=1, max_new_tokens=4, min_new_tokens=4)
    assert len(captions[0].split()) >= 1, "decoding skips the bos id the tokenizer does not know"


@pytest.mark.slow
def test_blip2_opt_twin_learns_a_caption_and_stops_where_generate_stops(twin: Any) -> None:
    """The terminator trained is the one generation stops at (50118), so the caption comes back exactly."""
    m = create_model(twin(OPT))
    caption = "ct of the chest"
    batch = m.collate([image()], [caption])
    targets = [t for t in batch["labels"][0].tolist() if t != -100]
    assert targets[-1] == 50118 and 2 not in targets, "captions end with the generation eos, not </s>"
    torch.manual_seed(0)
    opt = torch.optim.AdamW(m.model.parameters(), lr=3e-3)
    m.train_mode()
    for _ in range(70):
        opt.zero_grad()
        m.loss(batch).backward()
        opt.step()
    ids, skip = m.generate_ids([image()], num_beams=1, max_new_tokens=20)
    new = ids[0, skip:].tolist()
    assert new == targets, "the caption and its terminator, nothing after it"
    assert m.decode(ids, skip) == [caption]
    assert m.generate([image()], num_beams=3, max_new_tokens=20) == [caption]


def test_old_snapshot_without_image_token_index_is_one_line_error(twin: Any, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(twin(T5), old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["image_token_index"]  # as in the checkpoint's 2023 config (config.pre-update-7683B.json)
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MedblipError, match="no image_token_index.*update the snapshot"):
        create_model(old)


def test_like_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(MedblipError, match="ships no published config"):
        init_tiny(None, tmp_path / "x", like="someone/unknown-model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedblipError, match="none of config.json"):
        init_tiny(None, tmp_path / "y", like=empty)
    with pytest.raises(MedblipError, match="is a blip2 checkpoint, not blip"):
        init_tiny("blip", tmp_path / "z", like=OPT)


def test_cli_init_tiny_like(medblip_cli: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vit"
    assert medblip_cli("model", "init-tiny", "--like", "nlpconnect/vit-gpt2-image-captioning", "--out", str(out)) == 0
    assert "vit-gpt2" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["decoder_start_token_id"] == cfg["pad_token_id"] == cfg["decoder"]["eos_token_id"] == 50256
    assert cfg["decoder"]["vocab_size"] == 50257 and cfg["encoder"]["image_size"] == 224


# -- the shared folder's real files give the same twin as the values medblip ships ---------------------

KEYS = ["image_token_index", "num_query_tokens", "text_config.eos_token_id", "text_config.bos_token_id",
        "text_config.pad_token_id", "text_config.sep_token_id", "text_config.decoder_start_token_id",
        "text_config.vocab_size", "qformer_config.vocab_size", "vision_config.image_size",
        "vision_config.patch_size"]


def _facts(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in KEYS:
        try:
            out[key] = value(folder, key)
        except (KeyError, TypeError):
            out[key] = None
    out["generation"] = json.loads((folder / "generation_config.json").read_text())
    out["generation"].pop("transformers_version", None)
    out["image_processing"] = image_processing(folder)
    tok = create_model(folder).tokenizer
    out["tokenizer"] = (len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Salesforce__blip-image-captioning-base", "Salesforce__blip2-opt-2.7b",
                                  "Salesforce__blip2-flan-t5-xl", "Salesforce__instructblip-vicuna-7b"])
def test_twin_of_the_real_files_equals_the_packaged_twin(shared_dir: Path, twin: Any, name: str) -> None:
    folder = shared_dir / "real-checkpoints" / name
    assert _facts(twin(folder)) == _facts(twin(name.replace("__", "/")))
