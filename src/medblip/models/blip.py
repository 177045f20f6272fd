"""BLIP (``BlipForConditionalGeneration`` + ``BlipProcessor``).

Checkpoints: ``Salesforce/blip-image-captioning-base`` / ``-large`` or any folder they were saved to.

Token layout, as in the original BLIP and in ``BlipForConditionalGeneration.generate``: the text
decoder's first token is ``[DEC]`` (``text_config.bos_token_id``) in place of the tokenizer's
``[CLS]``, and a caption ends at ``[SEP]`` (``generate`` stops at ``sep_token_id``). The model's
``forward`` does *not* swap ``[CLS]`` for ``[DEC]``, so :meth:`BlipCaptioner.tokenize` does it; its
loss shifts the labels by one itself, so labels are the input ids with padding (and any prompt) set
to -100, and ``[SEP]`` stays a target so the model learns to stop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medblip.models.base import (
    ENCODER_DECODER_GROUPS,
    CaptionModel,
    CrossAttentionOutput,
    GenerationSettings,
    Member,
    patch_grid,
)
from medblip.models.loading import load_pretrained
from medblip.models.registry import register_family

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

#: BLIP's conditional captioning prompt (the one its captioning checkpoints were fine-tuned with)
ZERO_SHOT_PROMPT = "a picture of"

_OPTIONS = {"prompt", "max_length", "attn_implementation"}


@register_family("blip", model_types=("blip",), hub_prefixes=("Salesforce/blip-image-captioning",))
class BlipCaptioner(CaptionModel):
    """BLIP captioner.

    Options: ``prompt`` (``None`` = unconditional, the default; ``True`` = ``"a picture of"``; or any
    text): the conditional prompt used for generation *and* training (prompt tokens are masked out of
    the loss and stripped from the generated captions). ``max_length``: caption token limit in
    :meth:`collate` (default 128, capped at the decoder's position embeddings).
    """

    strategies = ("none", "full", "decoder_only", "encoder_only", "lora")
    group_order = ("vision_encoder", "text_decoder")
    strategy_groups = ENCODER_DECODER_GROUPS
    # query/value of the decoder's self- and cross-attention; add "qkv" + group vision_encoder for
    # the ViT's fused attention projection.
    lora_targets = ("query", "value")
    lora_groups = ("text_decoder",)
    model_class_name = "BlipForConditionalGeneration"
    processor_class_name = "BlipProcessor"
    # BLIP's own training code (salesforce/BLIP models/med.py, BertLMHeadModel: CrossEntropyLoss(...,
    # label_smoothing=0.1)); transformers reads it from text_config.label_smoothing (default 0.0).
    default_label_smoothing = 0.1
    native_label_smoothing = True

    @classmethod
    def load(cls, source: str, *, dtype: Any = None, device: Any = None,
             local_files_only: bool | None = None, **options: Any) -> BlipCaptioner:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        processor, model = load_pretrained("blip", source, BlipProcessor, BlipForConditionalGeneration, options,
                                           _OPTIONS, dtype=dtype, device=device, local_files_only=local_files_only)
        if options.get("prompt") is True:
            options["prompt"] = ZERO_SHOT_PROMPT
        return cls(model, processor, source, **options)

    def set_label_smoothing(self, value: float) -> None:
        super().set_label_smoothing(value)
        # BlipTextLMHeadModel copies config.label_smoothing at construction; set both so the loss and a
        # saved checkpoint's config agree
        self.base_model.config.text_config.label_smoothing = self.label_smoothing
        self.base_model.text_decoder.label_smoothing = self.label_smoothing

    # -- groups ----------------------------------------------------------------------------------
    def _group_members(self) -> dict[str, list[Member]]:
        m = self.base_model
        return {"vision_encoder": [m.vision_model], "text_decoder": [m.text_decoder]}

    def _vision_module(self) -> nn.Module:
        return self.base_model.vision_model

    # -- prompt / tokens -------------------------------------------------------------------------
    def _prompt(self, settings: GenerationSettings | None = None) -> str | None:
        prompt = settings.prompt if settings is not None and settings.prompt is not None else self.options.get("prompt")
        if prompt is True:
            prompt = ZERO_SHOT_PROMPT
        return (str(prompt).strip() or None) if prompt else None

    def _max_length(self) -> int:
        limit = int(self.base_model.config.text_config.max_position_embeddings)
        return min(int(self.options.get("max_length") or 128), limit)

    # -- inference -------------------------------------------------------------------------------
    def _generate(self, images: list[Image.Image], settings: GenerationSettings,
                  kwargs: dict[str, Any]) -> tuple[torch.Tensor, int]:
        pixel_values = self.pixel_values(images)
        prompt = self._prompt(settings)
        if not prompt:
            return self.base_model.generate(pixel_values=pixel_values, **kwargs), 0
        enc = self.tokenizer([prompt] * len(images), return_tensors="pt")
        input_ids = enc["input_ids"].to(self.device)
        # generate feeds [DEC] + prompt (it drops the trailing [SEP]); the caption starts after that
        skip = input_ids.shape[1] - 1
        out = self.base_model.generate(pixel_values=pixel_values, input_ids=input_ids,
                                       attention_mask=enc["attention_mask"].to(self.device), **kwargs)
        return out, skip

    # -- training --------------------------------------------------------------------------------
    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Teacher-forcing ids for captions: [DEC] (prompt) caption [SEP], labels -100 on pad/prompt."""
        prompt = self._prompt()
        texts = [f"{prompt} {c.strip()}" if prompt else c.strip() for c in captions]
        enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=self._max_length(),
                             return_tensors="pt")
        input_ids = enc["input_ids"].clone()
        input_ids[:, 0] = self.base_model.config.text_config.bos_token_id
        attention_mask = enc["attention_mask"]
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        if prompt:
            n_prompt = len(self.tokenizer(prompt)["input_ids"]) - 1  # [DEC] + prompt tokens
            labels[:, :n_prompt] = -100
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    # -- explanation -----------------------------------------------------------------------------
    def cross_attentions(self, images: list[Image.Image], token_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> CrossAttentionOutput:
        """Teacher-forced text decoder forward with ``output_attentions=True``.

        ``token_ids``: decoder ids starting with ``[DEC]`` (as :meth:`generate_ids` returns them or
        :meth:`tokenize` builds them; a leading ``[CLS]`` is replaced by ``[DEC]``). Attentions are
        (batch, heads, text_len, patches) per layer, the image CLS position removed. ``extra``:
        ``cls_attention`` (per layer, batch x heads x text_len: the weight on the image CLS token,
        which the patch maps leave out) and ``self_attentions``.
        """
        base = self.base_model
        token_ids = token_ids.to(self.device).clone()
        token_ids[:, 0] = base.config.text_config.bos_token_id
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        pixel_values = self.pixel_values(images)
        with self.inference():
            image_embeds = base.vision_model(pixel_values=pixel_values).last_hidden_state
            out = base.text_decoder(input_ids=token_ids, attention_mask=attention_mask,
                                    encoder_hidden_states=image_embeds, output_attentions=True,
                                    return_dict=True)
        return CrossAttentionOutput(
            attentions=[a[..., 1:].float().cpu() for a in out.cross_attentions],
            grid=patch_grid(pixel_values, int(base.config.vision_config.patch_size)),
            token_ids=token_ids.cpu(),
            tokens=self._tokens(token_ids),
            extra={
                "cls_attention": [a[..., 0].float().cpu() for a in out.cross_attentions],
                "self_attentions": [a.float().cpu() for a in (out.attentions or ())],
            },
        )
