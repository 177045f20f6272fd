"""ViT-GPT2 (``VisionEncoderDecoderModel`` + ``ViTImageProcessor`` + GPT-2 tokenizer).

Checkpoint: ``nlpconnect/vit-gpt2-image-captioning`` or a folder saved from it.

GPT-2 has no pad token: as in nlpconnect's training, pad = eos = ``<|endoftext|>`` and the decoder
starts from ``decoder_start_token_id`` (GPT-2's bos, the same token). Captions get an explicit eos
appended so the model learns to stop; because pad is that same token, padding is recognised from
the attention mask, never from the id. ``VisionEncoderDecoderModel`` does not shift logits in its
loss: it shifts the *labels* right to build the decoder inputs, so labels are ``caption + eos`` and
the decoder inputs ``start + caption`` (what :meth:`ViTGPT2Captioner.collate` returns as input_ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medblip.errors import MedblipError
from medblip.models.base import (
    ENCODER_DECODER_GROUPS,
    CaptionModel,
    CrossAttentionOutput,
    GenerationSettings,
    Member,
    eager_attention,
    patch_grid,
)
from medblip.models.loading import load_pretrained
from medblip.models.registry import register_family

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

_OPTIONS = {"max_length", "attn_implementation"}


class VitGpt2Processor:
    """Image processor + GPT-2 tokenizer pair with the processor interface the other families have.

    ``save_pretrained`` writes ``preprocessor_config.json`` and the tokenizer files into one folder,
    the layout of ``nlpconnect/vit-gpt2-image-captioning``: plain ``ViTImageProcessor`` /
    ``AutoTokenizer.from_pretrained(folder)`` read it back.
    """

    def __init__(self, image_processor: Any, tokenizer: Any) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs: Any) -> VitGpt2Processor:
        from transformers import AutoTokenizer, ViTImageProcessor

        return cls(ViTImageProcessor.from_pretrained(name_or_path, **kwargs),
                   AutoTokenizer.from_pretrained(name_or_path, **kwargs))

    def save_pretrained(self, directory: str | Path, **kwargs: Any) -> list[str]:
        return [*self.image_processor.save_pretrained(directory, **kwargs),
                *self.tokenizer.save_pretrained(directory, **kwargs)]

    def __call__(self, images: Any = None, text: Any = None, return_tensors: str | None = "pt",
                 **kwargs: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if images is not None:
            out.update(self.image_processor(images=images, return_tensors=return_tensors))
        if text is not None:
            out.update(self.tokenizer(text, return_tensors=return_tensors, **kwargs))
        return out

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def __repr__(self) -> str:
        return f"VitGpt2Processor({type(self.image_processor).__name__}, {type(self.tokenizer).__name__})"


@register_family("vit-gpt2", model_types=("vision-encoder-decoder",),
                 hub_prefixes=("nlpconnect/vit-gpt2",), aliases=("vit_gpt2", "vitgpt2", "vision-encoder-decoder"))
class ViTGPT2Captioner(CaptionModel):
    """ViT encoder + GPT-2 decoder with cross-attention. Options: ``max_length`` (default 128)."""

    strategies = ("none", "full", "decoder_only", "encoder_only")
    group_order = ("vision_encoder", "text_decoder")
    strategy_groups = ENCODER_DECODER_GROUPS
    model_class_name = "VisionEncoderDecoderModel"
    processor_class_name = "VitGpt2Processor"
    # Label smoothing: none by default (nlpconnect trained with the Hugging Face Seq2SeqTrainer, whose
    # label_smoothing_factor defaults to 0.0; its card names no other). VisionEncoderDecoderModel's loss
    # compares logits[t] with labels[t] (the decoder inputs are the labels shifted right).

    @classmethod
    def load(cls, source: str, *, dtype: Any = None, device: Any = None,
             local_files_only: bool | None = None, **options: Any) -> ViTGPT2Captioner:
        from transformers import VisionEncoderDecoderModel

        processor, model = load_pretrained("vit-gpt2", source, VitGpt2Processor, VisionEncoderDecoderModel, options,
                                           _OPTIONS, dtype=dtype, device=device, local_files_only=local_files_only)
        if getattr(model.config.decoder, "model_type", None) != "gpt2":
            raise MedblipError(f"{source}: vit-gpt2 expects a GPT-2 decoder, found "
                               f"{getattr(model.config.decoder, 'model_type', None)!r}")
        tok = processor.tokenizer
        # Older exports leave these unset on the top-level config; generate and the loss need them.
        for cfg in (model.config, model.generation_config):
            if getattr(cfg, "decoder_start_token_id", None) is None:
                cfg.decoder_start_token_id = tok.bos_token_id
            if getattr(cfg, "pad_token_id", None) is None:
                cfg.pad_token_id = tok.pad_token_id
            if getattr(cfg, "eos_token_id", None) is None:
                cfg.eos_token_id = tok.eos_token_id
        return cls(model, processor, source, **options)

    # -- groups ----------------------------------------------------------------------------------
    def _group_members(self) -> dict[str, list[Member]]:
        m = self.base_model
        # enc_to_dec_proj (only when hidden sizes differ) feeds the decoder's cross-attention: it is
        # trained with the decoder, so it belongs to text_decoder.
        decoder: list[Member] = [m.decoder]
        if getattr(m, "enc_to_dec_proj", None) is not None:
            decoder.append(m.enc_to_dec_proj)
        return {"vision_encoder": [m.encoder], "text_decoder": decoder}

    def _vision_module(self) -> nn.Module:
        return self.base_model.encoder

    def _max_length(self) -> int:
        limit = int(self.base_model.config.decoder.n_positions)
        return min(int(self.options.get("max_length") or 128), limit)

    # -- inference -------------------------------------------------------------------------------
    def _generate(self, images: list[Image.Image], settings: GenerationSettings,
                  kwargs: dict[str, Any]) -> tuple[torch.Tensor, int]:
        return self.base_model.generate(pixel_values=self.pixel_values(images), **kwargs), 0

    # -- training --------------------------------------------------------------------------------
    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """input_ids = start + caption (decoder inputs), labels = caption + eos, -100 on padding."""
        import torch

        tok = self.tokenizer
        cfg = self.base_model.config
        eos = tok.eos_token_id
        start = cfg.decoder_start_token_id
        rows = [tok(c.strip(), add_special_tokens=False)["input_ids"][: self._max_length() - 1] + [eos]
                for c in captions]
        width = max(len(r) for r in rows)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        input_ids = torch.full((len(rows), width), cfg.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            labels[i, : len(r)] = torch.tensor(r)
            input_ids[i, 0] = start
            input_ids[i, 1: len(r)] = torch.tensor(r[:-1], dtype=torch.long)
            attention_mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _forward_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"pixel_values": batch["pixel_values"], "decoder_input_ids": batch["input_ids"],
                "decoder_attention_mask": batch["attention_mask"], "labels": batch["labels"]}

    # -- explanation -----------------------------------------------------------------------------
    def cross_attentions(self, images: list[Image.Image], token_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> CrossAttentionOutput:
        """GPT-2 cross-attention over ViT patches for teacher-forced ``token_ids``.

        ``token_ids``: decoder inputs starting with the start token (from :meth:`generate_ids` or
        :meth:`tokenize`). Per layer (batch, heads, text_len, patches), the ViT CLS removed;
        ``extra["cls_attention"]`` holds the CLS weight. Attention runs eagerly for this call.
        """
        base = self.base_model
        token_ids = token_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        pixel_values = self.pixel_values(images)
        with self.inference(), eager_attention(base):
            hidden = base.encoder(pixel_values=pixel_values).last_hidden_state
            # the same projection condition as VisionEncoderDecoderModel.forward
            if (base.config.encoder.hidden_size != base.config.decoder.hidden_size
                    and getattr(base.config.decoder, "cross_attention_hidden_size", None) is None):
                hidden = base.enc_to_dec_proj(hidden)
            out = base.decoder(input_ids=token_ids, attention_mask=attention_mask,
                               encoder_hidden_states=hidden, output_attentions=True, use_cache=False,
                               return_dict=True)
        return CrossAttentionOutput(
            attentions=[a[..., 1:].float().cpu() for a in out.cross_attentions],
            grid=patch_grid(pixel_values, int(base.config.encoder.patch_size)),
            token_ids=token_ids.cpu(),
            tokens=self._tokens(token_ids),
            extra={"cls_attention": [a[..., 0].float().cpu() for a in out.cross_attentions]},
        )
