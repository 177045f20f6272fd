"""BLIP-2 (``Blip2ForConditionalGeneration`` + ``Blip2Processor``), OPT or Flan-T5 language model.

Checkpoints: ``Salesforce/blip2-opt-2.7b`` (and other OPT sizes), ``Salesforce/blip2-flan-t5-xl`` /
``-xxl``, or a folder saved from them.

Sequence layout (transformers 5 and its processors): the language model input starts with
``num_query_tokens`` ``<image>`` placeholders whose embeddings the model replaces with the projected
Q-Former outputs, followed by the tokenizer's encoding of the text prompt.

* Decoder-only LM (OPT, and LLaMA/Vicuna in InstructBLIP): one sequence
  ``<image>*Q  [bos] prompt caption eos``; labels are -100 on the image placeholders, bos, the prompt
  and padding, so only the caption and its eos are learned. The model's causal-LM loss shifts the
  labels itself. ``generate`` returns the whole sequence, so the prompt positions are skipped.
* Encoder-decoder LM (Flan-T5): encoder input ``<image>*Q prompt </s>``, labels ``caption </s>``
  (T5 shifts them right behind ``decoder_start_token_id`` itself), -100 on padding.

Parameter groups: ``vision_encoder`` (ViT), ``qformer`` (Q-Former, its learned query tokens and the
``language_projection`` into the LM: together the trainable bridge of BLIP-2's second stage, hence
trained together under ``qformer_only``) and ``language_model``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from medblip.errors import MedblipError
from medblip.models.base import (
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


class QFormerCaptioner(CaptionModel):
    """Shared code of BLIP-2 and InstructBLIP (vision encoder -> Q-Former -> language model)."""

    strategies = ("none", "full", "decoder_only", "qformer_only", "lora")
    group_order = ("vision_encoder", "qformer", "language_model")
    strategy_groups = {
        "none": (),
        "full": ("vision_encoder", "qformer", "language_model"),
        "decoder_only": ("qformer", "language_model"),
        "qformer_only": ("qformer",),
    }
    lora_groups = ("language_model",)
    model_cls: ClassVar[str] = ""
    processor_cls: ClassVar[str] = ""
    known_options: ClassVar[frozenset[str]] = frozenset({"prompt", "max_length", "attn_implementation"})

    @classmethod
    def load(cls, source: str, *, dtype: Any = None, device: Any = None,
             local_files_only: bool | None = None, **options: Any) -> QFormerCaptioner:
        import transformers

        processor, model = load_pretrained(cls.family, source, getattr(transformers, cls.processor_cls),
                                           getattr(transformers, cls.model_cls), options, cls.known_options,
                                           dtype=dtype, device=device, local_files_only=local_files_only)
        if getattr(model.config, "image_token_index", None) is None:
            # Snapshots from before the hub's 2024 update have no <image> placeholder token: transformers 5
            # cannot tell where the query embeddings go.
            raise MedblipError(f"{source}: config.json has no image_token_index (an old snapshot of the "
                               "checkpoint); update the snapshot, e.g. `huggingface-cli download "
                               f"{source if '/' in source and not source.startswith(('/', '.')) else 'ORG/NAME'}`")
        return cls(model, processor, source, **options)

    # -- structure -------------------------------------------------------------------------------
    @property
    def decoder_only(self) -> bool:
        return bool(self.base_model.config.use_decoder_only_language_model)

    # Label smoothing: none by default. LAVIS fine-tunes BLIP-2 (blip2_opt.py, blip2_t5.py) and InstructBLIP
    # (blip2_vicuna_instruct.py, blip2_t5_instruct.py) with the language model's plain cross-entropy
    # (``labels=targets``); only the Q-Former's stage-1 text generation loss used 0.1.

    @property
    def shifted_labels(self) -> bool:  # type: ignore[override]
        return self.decoder_only  # OPT / LLaMA: causal LM over the unshifted sequence; T5: labels as is

    @property
    def lora_targets(self) -> tuple[str, ...]:  # type: ignore[override]
        # attention query/value projections of the language model: OPT/LLaMA vs T5 naming
        return ("q_proj", "v_proj") if self.decoder_only else ("q", "v")

    def _group_members(self) -> dict[str, list[Member]]:
        m = self.base_model
        return {
            "vision_encoder": [m.vision_model],
            "qformer": [m.query_tokens, m.qformer, m.language_projection],
            "language_model": [m.language_model],
        }

    def _vision_module(self) -> nn.Module:
        return self.base_model.vision_model

    def _num_query(self) -> int:
        return int(self.base_model.config.num_query_tokens)

    def _image_token_id(self) -> int:
        return int(self.base_model.config.image_token_id)

    def _max_length(self) -> int:
        return int(self.options.get("max_length") or 128)

    def _prompt(self, settings: GenerationSettings | None = None) -> str:
        if settings is not None and settings.prompt is not None:
            return settings.prompt.strip()
        return str(self.options.get("prompt") or "").strip()

    def _eos(self) -> int:
        """The id a caption ends with in training: the one ``generate`` stops at.

        That is the generation config's eos, not necessarily the tokenizer's: BLIP-2 OPT publishes
        ``eos_token_id`` 50118 ("\\n", what its LAVIS training appends to every caption) while its
        tokenizer's eos is ``</s>`` (2). Training on the tokenizer's eos would teach a terminator that
        generation never stops at, and a fine-tuned model would run on to ``max_new_tokens``.
        """
        for cfg in (self.base_model.generation_config, self.base_model.config.text_config):
            eos = getattr(cfg, "eos_token_id", None)
            if isinstance(eos, list | tuple):
                eos = eos[0] if eos else None
            if eos is not None:
                return int(eos)
        return int(self.tokenizer.eos_token_id)

    def _qformer_inputs(self, n: int, prompt: str) -> dict[str, torch.Tensor]:
        return {}  # BLIP-2's Q-Former sees only the image; InstructBLIP overrides

    # -- inference -------------------------------------------------------------------------------
    def _prompt_ids(self, prompt: str) -> list[int]:
        """LM prompt ids after the image placeholders (OPT: [bos] prompt; T5: prompt </s>)."""
        return [self._image_token_id()] * self._num_query() + self.tokenizer(prompt)["input_ids"]

    def _generate(self, images: list[Image.Image], settings: GenerationSettings,
                  kwargs: dict[str, Any]) -> tuple[torch.Tensor, int]:
        import torch

        prompt = self._prompt(settings)
        ids = torch.tensor([self._prompt_ids(prompt)] * len(images), device=self.device)
        out = self.base_model.generate(pixel_values=self.pixel_values(images), input_ids=ids,
                                       attention_mask=torch.ones_like(ids),
                                       **self._to_device(self._qformer_inputs(len(images), prompt)), **kwargs)
        skip = ids.shape[1] if self.decoder_only and out.shape[1] >= ids.shape[1] \
            and bool((out[:, : ids.shape[1]] == ids).all()) else 0
        return out, skip

    # -- training --------------------------------------------------------------------------------
    def _ensure_eos(self, ids: list[int]) -> list[int]:
        return ids if ids and ids[-1] == self._eos() else [*ids, self._eos()]

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """LM inputs and labels for ``captions`` (see the module docstring for the layout)."""
        import torch

        tok = self.tokenizer
        prompt = self._prompt()
        q_ids = [self._image_token_id()] * self._num_query()
        limit = self._max_length()
        pad = tok.pad_token_id if tok.pad_token_id is not None else self._eos()
        if self.decoder_only:
            n_prompt = len(tok(prompt)["input_ids"])  # [bos] + prompt tokens
            rows, label_rows = [], []
            for c in captions:
                text = f"{prompt} {c.strip()}" if prompt else c.strip()
                ids = tok(text)["input_ids"]
                if ids and ids[-1] == self._eos() and len(ids) > 1 and ids[0] != ids[-1]:
                    ids = ids[:-1]  # a tokenizer that appends eos itself: it is re-added after truncation
                ids = self._ensure_eos(ids[: n_prompt + limit - 1])
                rows.append(q_ids + ids)
                label_rows.append([-100] * (len(q_ids) + n_prompt) + ids[n_prompt:])
            return _pad_rows(rows, label_rows, pad)
        enc_ids = q_ids + tok(prompt)["input_ids"]
        targets = [self._ensure_eos(tok(c.strip())["input_ids"][: limit - 1]) for c in captions]
        width = max(len(t) for t in targets)
        labels = torch.full((len(captions), width), -100, dtype=torch.long)
        decoder_mask = torch.zeros((len(captions), width), dtype=torch.long)
        for i, t in enumerate(targets):
            labels[i, : len(t)] = torch.tensor(t)
            decoder_mask[i, : len(t)] = 1
        input_ids = torch.tensor([enc_ids] * len(captions), dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
                "decoder_attention_mask": decoder_mask}

    def collate(self, images: list[Image.Image], captions: list[str]) -> dict[str, torch.Tensor]:
        return {**super().collate(images, captions), **self._qformer_inputs(len(captions), self._prompt())}

    def _forward_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        keys = ("pixel_values", "input_ids", "attention_mask", "labels", "decoder_attention_mask",
                "qformer_input_ids", "qformer_attention_mask")
        return {k: batch[k] for k in keys if k in batch}

    # -- explanation -----------------------------------------------------------------------------
    def cross_attentions(self, images: list[Image.Image], token_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> CrossAttentionOutput:
        """Q-Former cross-attention to the image patches, and the LM's attention to the query tokens.

        ``token_ids``: what :meth:`generate_ids` returned (decoder-only LM: the whole sequence with
        the ``<image>`` placeholders and prompt; T5: the decoder sequence).

        * ``attentions``: per Q-Former layer with cross-attention, (batch, heads, num_query, patches),
          image CLS removed; ``grid`` the patch grid.
        * ``tokens`` / ``token_ids``: the text positions (decoder-only LM: ``<image>`` placeholders
          removed, bos and prompt kept; ``extra["caption_start"]`` is where the caption begins).
        * ``extra["lm_query_attentions"]``: per LM layer (batch, heads, text_len, num_query): how
          much each text position attends to each query token (OPT/LLaMA: causal self-attention
          rows of the text positions; T5: decoder cross-attention to the encoder's query positions).
        * ``extra["token_attentions"]``: a one-element list (batch, 1, text_len, patches): the
          composition (LM -> queries -> patches, heads and layers averaged, rows renormalised) that
          gives BLIP-style per-token maps; an approximation, like attention rollout.
        """
        import torch

        base = self.base_model
        q = self._num_query()
        pixel_values = self.pixel_values(images)
        token_ids = token_ids.to(self.device)
        if self.decoder_only and not bool((token_ids[:, :q] == self._image_token_id()).all()):
            prefix = torch.full((token_ids.shape[0], q), self._image_token_id(), device=self.device)
            token_ids = torch.cat([prefix, token_ids], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([torch.ones_like(prefix), attention_mask.to(self.device)], dim=1)
        prompt = self._prompt()
        with self.inference(), eager_attention(base):
            image_embeds = base.vision_model(pixel_values=pixel_values).last_hidden_state
            query = base.query_tokens.expand(image_embeds.shape[0], -1, -1)
            qf_kwargs = self._qformer_call_inputs(len(images), prompt, query)
            qf = base.qformer(query_embeds=query, encoder_hidden_states=image_embeds,
                              encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long,
                                                                device=self.device),
                              output_attentions=True, return_dict=True, **qf_kwargs)
            query_out = qf.last_hidden_state[:, :q].to(image_embeds.dtype)
            lm_inputs = base.language_projection(query_out)
            lm_attn, text_ids = self._lm_query_attention(token_ids, attention_mask, lm_inputs, prompt)
        grid = patch_grid(pixel_values, int(base.config.vision_config.patch_size))
        qf_cross = [a[:, :, :q, 1:].float().cpu() for a in (qf.cross_attentions or ()) if a is not None]
        token_maps: list[torch.Tensor] = []
        if qf_cross and lm_attn:
            qp = torch.stack(qf_cross).mean(dim=(0, 2))  # (B, Q, P)
            qp = qp / qp.sum(-1, keepdim=True).clamp_min(1e-12)
            tq = torch.stack(lm_attn).mean(dim=(0, 2))  # (B, T, Q)
            tq = tq / tq.sum(-1, keepdim=True).clamp_min(1e-12)
            token_maps = [(tq @ qp).unsqueeze(1)]
        return CrossAttentionOutput(
            attentions=qf_cross,
            grid=grid,
            token_ids=text_ids.cpu(),
            tokens=self._tokens(text_ids),
            extra={"lm_query_attentions": lm_attn, "token_attentions": token_maps, "num_query_tokens": q,
                   "caption_start": len(self.tokenizer(prompt)["input_ids"]) if self.decoder_only else 1},
        )

    def _qformer_call_inputs(self, n: int, prompt: str, query: torch.Tensor) -> dict[str, Any]:
        return {}

    def _lm_query_attention(self, token_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                            lm_inputs: torch.Tensor, prompt: str) -> tuple[list[torch.Tensor], torch.Tensor]:
        import torch

        base = self.base_model
        q = self._num_query()
        embed = base.get_input_embeddings()
        if self.decoder_only:
            embeds = embed(token_ids)
            mask = (token_ids == self._image_token_id()).unsqueeze(-1)
            embeds = embeds.masked_scatter(mask, lm_inputs.to(embeds.dtype))
            out = base.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                      output_attentions=True, return_dict=True, use_cache=False)
            attn = [a[:, :, q:, :q].float().cpu() for a in out.attentions]
            return attn, token_ids[:, q:]
        enc_ids = torch.tensor([self._prompt_ids(prompt)] * token_ids.shape[0], device=self.device)
        embeds = embed(enc_ids)
        mask = (enc_ids == self._image_token_id()).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, lm_inputs.to(embeds.dtype))
        out = base.language_model(inputs_embeds=embeds, attention_mask=torch.ones_like(enc_ids),
                                  decoder_input_ids=token_ids, decoder_attention_mask=attention_mask,
                                  output_attentions=True, return_dict=True, use_cache=False)
        return [a[..., :q].float().cpu() for a in out.cross_attentions], token_ids


def _pad_rows(rows: list[list[int]], label_rows: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, label_rows, strict=True)):
        input_ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@register_family("blip2", model_types=("blip-2",), hub_prefixes=("Salesforce/blip2-",), aliases=("blip-2",))
class Blip2Captioner(QFormerCaptioner):
    """BLIP-2. Options: ``prompt`` (text prompt the LM continues; default none, plain captioning),
    ``max_length`` (caption token limit, default 128), ``attn_implementation``."""

    model_cls = "Blip2ForConditionalGeneration"
    processor_cls = "Blip2Processor"
    model_class_name = model_cls
    processor_class_name = processor_cls
