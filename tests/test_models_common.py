"""Family-generic adapter tests, run for every family on tiny models of the real transformers classes.

Each family: init_tiny -> create_model from the folder -> collate/loss/backward -> a few optimizer
steps with the loss decreasing -> save -> reload with the *plain* transformers classes -> identical
greedy captions. Freezing: frozen parameters bit-identical after steps, trainable ones changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from medblip.errors import MedblipError
from medblip.models import CaptionModel, create_model, init_tiny
from medblip.models.instructblip import DEFAULT_INSTRUCTION as INSTRUCTION
from medblip.models.tiny import sincos_positions

pytestmark = pytest.mark.usefixtures("single_thread")

FAMILIES = ["blip", "vit-gpt2", "blip2", "instructblip"]
CAPTIONS = [
    "axial CT of the chest showing a left lung nodule",
    "MRI of the brain showing a right lesion",
    "radiograph of the knee with no fracture",
    "ultrasound of the liver showing a cyst",
    "CT of the abdomen showing a large right kidney mass",
    "MRI spine sagittal with no abnormality",
    "chest x-ray showing bilateral effusion",
    "coronal CT of the pelvis showing a left fracture",
]


def tiny_images(n: int = 8, size: int = 48) -> list[Image.Image]:
    """Distinct simple images: a grey background with a bright shape whose place/size varies."""
    out = []
    for i in range(n):
        im = Image.new("RGB", (size, size), (20 + 10 * i, 20, 20))
        d = ImageDraw.Draw(im)
        x = 4 + (i * 5) % (size - 16)
        d.ellipse((x, 8 + i, x + 10 + i, 20 + i), fill=(220, 220 - 20 * i, 200))
        out.append(im)
    return out


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {}


def tiny_dir(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, family: str) -> Path:
    if family not in tiny_dirs:
        tiny_dirs[family] = init_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}") / "model",
                                      captions=CAPTIONS, image_size=32)
    return tiny_dirs[family]


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def adapter(family: str, tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> CaptionModel:
    return create_model(tiny_dir(tiny_dirs, tmp_path_factory, family))


def train_steps(model: CaptionModel, steps: int = 5, lr: float = 3e-3) -> list[float]:
    torch.manual_seed(0)
    batch = model.collate(tiny_images(), CAPTIONS)
    params = [p for p in model.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0) if params else None
    model.train_mode()
    losses = []
    for _ in range(steps):
        loss = model.loss(batch)
        losses.append(float(loss.detach()))
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval_mode()
    return losses


def plain_reload_captions(family: str, folder: Path, images: list[Image.Image], max_new_tokens: int) -> list[str]:
    """Greedy captions from the saved folder through plain transformers classes (no medblip code)."""
    import transformers

    def greedy(model: Any, inputs: Any) -> Any:
        with torch.no_grad():
            return model.generate(**inputs, num_beams=1, do_sample=False, max_new_tokens=max_new_tokens,
                                  min_new_tokens=3)

    if family == "blip":
        proc = transformers.BlipProcessor.from_pretrained(folder)
        model = transformers.BlipForConditionalGeneration.from_pretrained(folder).eval()
        ids = greedy(model, proc(images=images, return_tensors="pt"))
        return [t.strip() for t in proc.batch_decode(ids, skip_special_tokens=True)]
    if family in ("blip2", "instructblip"):
        # the processor's own text handling: <image> placeholders + the prompt/instruction
        prefix = "Blip2" if family == "blip2" else "InstructBlip"
        proc = getattr(transformers, f"{prefix}Processor").from_pretrained(folder)
        model = getattr(transformers, f"{prefix}ForConditionalGeneration").from_pretrained(folder).eval()
        text = "" if family == "blip2" else INSTRUCTION
        inputs = proc(images=images, text=[text] * len(images), return_tensors="pt")
        ids = greedy(model, inputs)
        if not model.config.text_config.is_encoder_decoder:
            ids = ids[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in proc.batch_decode(ids, skip_special_tokens=True)]
    if family == "vit-gpt2":
        image_processor = transformers.ViTImageProcessor.from_pretrained(folder)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        model = transformers.VisionEncoderDecoderModel.from_pretrained(folder).eval()
        ids = greedy(model, image_processor(images=images, return_tensors="pt"))
        return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    raise AssertionError(family)


def test_collate_and_loss_backward(adapter: CaptionModel) -> None:
    batch = adapter.collate(tiny_images(4), CAPTIONS[:4])
    assert {"pixel_values", "input_ids", "attention_mask", "labels"} <= set(batch)
    # encoder-decoder LMs (T5) have labels on the decoder side, with their own mask
    label_mask = batch.get("decoder_attention_mask", batch["attention_mask"])
    assert batch["labels"].shape == label_mask.shape
    assert (batch["labels"][label_mask == 0] == -100).all()
    adapter.train_mode()
    loss = adapter.loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.model.parameters())


def test_train_save_reload_plain_identical(adapter: CaptionModel, family: str, tmp_path: Path) -> None:
    adapter.apply_strategy("full")
    losses = train_steps(adapter, steps=6)
    assert losses[-1] < losses[0]
    images = tiny_images(4)
    # min_new_tokens: a barely trained tiny model may stop at once; compare real token sequences
    ours = adapter.generate(images, num_beams=1, max_new_tokens=10, min_new_tokens=3)
    assert all(ours)
    adapter.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert plain_reload_captions(family, tmp_path / "ckpt", images, 10) == ours
    # and through the registry again
    assert create_model(tmp_path / "ckpt").generate(images, num_beams=1, max_new_tokens=10,
                                                    min_new_tokens=3) == ours


def test_parameter_groups_partition(adapter: CaptionModel) -> None:
    groups = adapter.parameter_groups()
    names = [n for ns in groups.values() for n in ns]
    assert len(names) == len(set(names)), "a parameter is in two groups"
    assert set(names) == {n for n, _ in adapter.model.named_parameters()}


def _strategy_cases(family: str) -> list[str]:
    from medblip.models import get_family

    return list(get_family(family).strategies)


@pytest.mark.parametrize("strategy", ["full", "decoder_only", "encoder_only", "qformer_only", "lora", "none"])
def test_strategy_freezes_exactly(adapter: CaptionModel, strategy: str) -> None:
    if strategy not in adapter.strategies:
        with pytest.raises(MedblipError, match="not supported"):
            adapter.apply_strategy(strategy)
        return
    report = adapter.apply_strategy(strategy)
    total = sum(p.numel() for p in adapter.model.parameters())
    assert report.trainable_params + report.frozen_params == total
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    trainable = {n for n, p in adapter.model.named_parameters() if p.requires_grad}
    train_steps(adapter, steps=2)
    for n, p in adapter.model.named_parameters():
        if n in trainable:
            continue
        assert torch.equal(p, before[n]), f"frozen {n} changed"
        assert p.grad is None, f"frozen {n} has a gradient"
    if strategy == "none":
        assert report.trainable_params == 0 and not trainable
        return
    changed = [n for n in trainable if not torch.equal(adapter.model.get_parameter(n), before[n])]
    # every trainable tensor that received a gradient moved (a few, e.g. unused position rows, may not)
    assert len(changed) >= 0.5 * len(trainable)
    # frozen groups stay in eval mode when the trainer switches to training
    adapter.model.train()
    for g in report.frozen_groups:
        for m in adapter.group_modules()[g]:
            if isinstance(m, torch.nn.Module):
                assert not m.training, f"frozen group {g} was put in train mode"


def test_no_graph_through_frozen_vision(adapter: CaptionModel) -> None:
    if "decoder_only" not in adapter.strategies:
        pytest.skip("family has no decoder_only")
    report = adapter.apply_strategy("decoder_only")
    assert "vision_encoder" in report.no_grad_groups
    seen: list[bool] = []
    vision = adapter.group_modules()["vision_encoder"][0]
    vision.register_forward_hook(lambda m, i, o: seen.append(o[0].requires_grad if isinstance(o, tuple)
                                                            else o.last_hidden_state.requires_grad))
    adapter.train_mode()
    loss = adapter.loss(adapter.collate(tiny_images(2), CAPTIONS[:2]))
    loss.backward()
    assert seen == [False]
    assert all(p.grad is None for p in vision.parameters())
    assert not adapter.encode_images(adapter.pixel_values(tiny_images(1))).requires_grad


def test_generate_restores_train_mode(adapter: CaptionModel) -> None:
    adapter.train_mode()
    out = adapter.generate(tiny_images(2), num_beams=2, max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)
    assert adapter.model.training


def test_wrong_strategy_is_one_line_error(adapter: CaptionModel) -> None:
    with pytest.raises(MedblipError) as info:
        adapter.apply_strategy("everything")
    msg = str(info.value)
    assert "everything" in msg and "supported" in msg and "\n" not in msg


def test_save_after_lora_is_plain_and_leaves_model(adapter: CaptionModel, family: str, tmp_path: Path) -> None:
    if "lora" not in adapter.strategies:
        pytest.skip("family has no lora")
    adapter.apply_strategy("lora", r=4)
    # make the adapters non-zero (LoRA B starts at zero)
    train_steps(adapter, steps=2, lr=1e-2)
    images = tiny_images(3)
    ours = adapter.generate(images, num_beams=1, max_new_tokens=8, min_new_tokens=3)
    adapter.save(tmp_path / "merged")
    assert adapter.is_peft, "save must not unwrap the live model"
    assert plain_reload_captions(family, tmp_path / "merged", images, 8) == ours
    assert adapter.generate(images, num_beams=1, max_new_tokens=8, min_new_tokens=3) == ours


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_vision_init_std(family: str, tmp_path: Path) -> None:
    """--vision-init-std sets the vision tower's random weights; the default is the transformers
    config's (1e-10 for the BLIP families, whose from-scratch ViT starts near zero)."""
    def vision_stds(path: Path) -> list[float]:
        model = create_model(path)
        return [float(p.detach().float().std()) for p in model._vision_module().parameters() if p.dim() >= 2]

    kw = {"captions": CAPTIONS, "image_size": 32}
    live = vision_stds(init_tiny(family, tmp_path / "live", vision_init_std=0.02, **kw))
    assert live and all(0.01 < s < 0.05 for s in live), live
    default = vision_stds(init_tiny(family, tmp_path / "default", **kw))
    if family == "vit-gpt2":
        assert all(0.01 < s < 0.05 for s in default), default
    else:
        assert max(default) < 1e-6, default
    with pytest.raises(MedblipError, match="vision init std"):
        init_tiny(family, tmp_path / "bad", vision_init_std=2.0, **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_position_init_std(family: str, tmp_path: Path) -> None:
    """--position-init-std redraws only the vision tower's position embeddings; every other weight
    (the text/Q-Former/LM position tables included) is the one the same seed gives without it."""
    kw = {"captions": CAPTIONS, "image_size": 32, "vision_init_std": 0.02}
    plain = dict(create_model(init_tiny(family, tmp_path / "plain", **kw)).base_model.named_parameters())
    loud = dict(create_model(init_tiny(family, tmp_path / "loud", position_init_std=1.0, **kw))
                .base_model.named_parameters())
    assert plain.keys() == loud.keys()
    changed = sorted(name for name in plain if not torch.equal(plain[name], loud[name]))
    assert len(changed) == 1 and "position_embedding" in changed[0] and not changed[0].endswith(".weight"), changed
    assert 0.8 < float(loud[changed[0]].detach().std()) < 1.2
    assert float(plain[changed[0]].detach().std()) < 0.05
    with pytest.raises(MedblipError, match="position init std"):
        init_tiny(family, tmp_path / "bad", position_init_std=0.0, **kw)


def test_sincos_positions_code_row_and_column() -> None:
    """MAE's table: the first half of the columns depends on the row only, the second on the column
    only, and its lowest-frequency cosine falls monotonically from left to right."""
    table = sincos_positions(16, 4).reshape(4, 4, 16)
    assert np.allclose(table[:, :1, :8], table[:, :, :8])  # first half: the same along a row
    assert np.allclose(table[:1, :, 8:], table[:, :, 8:])  # second half: the same down a column
    lowest_cos = table[0, :, 8 + 4]  # x code: sin(4 freqs), cos(4 freqs); index 4 = cos at frequency 1
    assert np.all(np.diff(lowest_cos) < 0)
    with pytest.raises(MedblipError, match="divisible by 4"):
        sincos_positions(18, 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_position_init_sincos(family: str, tmp_path: Path) -> None:
    """--position-init sincos writes MAE's table (times --position-init-std) into the vision tower's
    position embeddings, CLS at 0, and leaves every other weight as the same seed gives without it."""
    kw = {"captions": CAPTIONS, "image_size": 32, "patch_size": 8, "hidden_size": 32, "vision_init_std": 0.02}
    plain = dict(create_model(init_tiny(family, tmp_path / "plain", **kw)).base_model.named_parameters())
    folder = init_tiny(family, tmp_path / "sincos", position_init="sincos", position_init_std=2.0, **kw)
    grid = dict(create_model(folder).base_model.named_parameters())
    changed = sorted(name for name in plain if not torch.equal(plain[name], grid[name]))
    assert len(changed) == 1 and "position_embedding" in changed[0], changed
    table = grid[changed[0]].detach()[0]
    assert torch.equal(table[0], torch.zeros_like(table[0]))
    expected = torch.from_numpy(2.0 * sincos_positions(table.shape[-1], 4)).to(table.dtype)
    assert torch.allclose(table[1:], expected, atol=1e-6)
    with pytest.raises(MedblipError, match="unknown position init"):
        init_tiny(family, tmp_path / "bad", position_init="learned", **kw)


def test_sincos_positions_fit_a_twins_published_grid(tmp_path: Path) -> None:
    """A twin keeps the published image and patch sizes (BLIP base: 384 px, 16 px patches, a 24 x 24 grid),
    so the table is sized from the model's own position embeddings, not from init_tiny's image_size."""
    folder = init_tiny(None, tmp_path / "twin", like="Salesforce/blip-image-captioning-base", position_init="sincos",
                       hidden_size=32, num_layers=1, num_heads=2)
    table = create_model(folder).base_model.vision_model.embeddings.position_embedding.detach()[0]
    assert table.shape[0] == 24 * 24 + 1
    assert torch.allclose(table[1:], torch.from_numpy(sincos_positions(table.shape[-1], 24)).to(table.dtype), atol=1e-6)
