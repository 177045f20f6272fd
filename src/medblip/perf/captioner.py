"""The optimised captioning path: :class:`FastCaptioner`, a drop-in for ``adapter.generate``.

For BLIP: the vision encoder runs with SDPA attention, the decoder with
:mod:`medblip.perf.fast_generate` (cross-attention K/V once per image, preallocated KV cache,
transformers' beam-search arithmetic), everything under ``torch.inference_mode`` and -- on CUDA with
``precision="auto"`` -- bf16 autocast; optionally each decode step replayed as a CUDA graph.
In fp32 the captions are identical to ``adapter.generate`` (tested greedy and with 3 beams).

Other families, and settings the lean loop does not implement (sampling, repetition penalty,
n-gram blocking, other logits processors configured on the model), go to the adapter's own
``generate`` -- still under bf16 autocast and SDPA when asked for -- so the captioner can always be used.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch

from medblip.perf.attention import sdpa_attention
from medblip.perf.fast_generate import BlipFastDecoder, DecodeConfig, decode

if TYPE_CHECKING:
    from PIL import Image

    from medblip.models.base import CaptionModel, GenerationSettings

# generation-config fields whose non-default values add logits processors the lean loop lacks
_PROCESSOR_FIELDS = {
    "repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "exponential_decay_length_penalty": (None,), "sequence_bias": (None,),
    "encoder_repetition_penalty": (None, 1.0), "encoder_no_repeat_ngram_size": (None, 0),
    "diversity_penalty": (None, 0.0), "num_beam_groups": (None, 1), "renormalize_logits": (None, False),
    "min_length": (None, 0), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0),
    "num_return_sequences": (None, 1), "constraints": (None,), "force_words_ids": (None,),
}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on a CUDA device that supports it, else ``fp32``."""
    precision = precision.lower()
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> Any:
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _GraphStep:
    """Replays a static decode step as a CUDA graph (one capture per batch shape and buffer set)."""

    def __init__(self, dec: BlipFastDecoder, max_graphs: int = 4) -> None:
        self.dec = dec
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self.max_graphs = max_graphs

    def __call__(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        dec = self.dec
        key = (tuple(tokens.shape), dec.capacity, dec.k[0].data_ptr(), dec.cross[0][0].data_ptr(),
               dec.mask.data_ptr() if dec.mask is not None else 0, torch.get_autocast_dtype("cuda"),
               torch.is_autocast_enabled("cuda"))
        entry = self.graphs.get(key)
        if entry is None:
            static_tokens = tokens.clone()
            static_pos = torch.full((1,), position, dtype=torch.long, device=tokens.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up (same writes as the real step: idempotent)
                for _ in range(2):
                    dec.forward(static_tokens, static_pos)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = dec.forward(static_tokens, static_pos)
            entry = (graph, static_tokens, static_pos, out)
            self.graphs[key] = entry
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        graph, static_tokens, static_pos, out = entry
        static_tokens.copy_(tokens)
        static_pos.fill_(position)
        graph.replay()
        return out.clone()


class FastCaptioner:
    """Optimised ``generate`` for an adapter; same signature, same captions in fp32.

    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32`` or ``bf16``.
    ``cuda_graphs``: replay decode steps as CUDA graphs (``auto``: on CUDA). ``static``: force the
    shape-static decode step without graphs (what graphs replay; for tests on CPU).
    ``sdpa``: run the vision encoder's attention through SDPA.
    """

    def __init__(self, adapter: CaptionModel, *, precision: str = "auto", cuda_graphs: bool | str = "auto",
                 static: bool | None = None, sdpa: bool = True) -> None:
        self.adapter = adapter
        self.precision = resolve_precision(precision, adapter.device)
        on_cuda = adapter.device.type == "cuda"
        self.cuda_graphs = on_cuda if cuda_graphs == "auto" else bool(cuda_graphs) and on_cuda
        self.static = self.cuda_graphs if static is None else static
        self.sdpa = sdpa
        self._decoder: BlipFastDecoder | None = None
        self._graph: _GraphStep | None = None
        self.fallbacks: dict[str, int] = {}
        #: why the lean loop cannot serve this model at all (checked here, once), else None
        self.layout_problem: str | None = None
        self._checked_lm: Any = None
        if adapter.family == "blip":
            self._decoder_for(adapter.base_model.text_decoder)

    def _decoder_for(self, text_decoder: Any) -> BlipFastDecoder | None:
        """The lean decoder for ``text_decoder``, checked against the model's own forward when built."""
        if self._checked_lm is not text_decoder:
            self._checked_lm = text_decoder
            decoder = BlipFastDecoder(text_decoder, static=self.static)
            self.layout_problem = decoder.check()
            if self.layout_problem is not None:
                warnings.warn(f"medblip: fast captioner off ({self.layout_problem}); captioning with "
                              "transformers' generate", RuntimeWarning, stacklevel=3)
                self._decoder = self._graph = None
            else:
                self._decoder = decoder
                self._graph = _GraphStep(decoder) if self.cuda_graphs else None
        return self._decoder

    # -- support ---------------------------------------------------------------------------------
    def unsupported(self, settings: GenerationSettings, extra: dict[str, Any]) -> str | None:
        """Why these settings need transformers' generate (None: the fast loop handles them)."""
        if self.adapter.family != "blip":
            return f"family {self.adapter.family}"
        if self._decoder_for(self.adapter.base_model.text_decoder) is None:
            return "fast decoder unavailable"
        if settings.do_sample:
            return "sampling"
        if settings.repetition_penalty != 1.0:
            return "repetition_penalty"
        if settings.no_repeat_ngram_size:
            return "no_repeat_ngram_size"
        known = {"length_penalty", "early_stopping"}
        if set(extra) - known:
            return f"generate option {sorted(set(extra) - known)[0]}"
        gc = self.adapter.base_model.text_decoder.generation_config
        for name, defaults in _PROCESSOR_FIELDS.items():
            value = getattr(gc, name, None)
            if value not in defaults:
                return f"generation_config.{name}={value!r}"
        return None

    def _decode_config(self, settings: GenerationSettings, extra: dict[str, Any]) -> DecodeConfig:
        base = self.adapter.base_model
        gc = base.text_decoder.generation_config
        tc = base.config.text_config
        lp = extra.get("length_penalty", getattr(gc, "length_penalty", None))
        es = extra.get("early_stopping", getattr(gc, "early_stopping", None))
        return DecodeConfig(num_beams=settings.num_beams, max_new_tokens=settings.max_new_tokens,
                            min_new_tokens=settings.min_new_tokens, eos_token_id=int(tc.sep_token_id),
                            pad_token_id=int(tc.pad_token_id), length_penalty=1.0 if lp is None else float(lp),
                            early_stopping=False if es is None else es)

    # -- generation ------------------------------------------------------------------------------
    def _context(self) -> Any:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode() if not self.cuda_graphs else torch.no_grad())
        stack.enter_context(autocast(self.adapter.device, self.precision))
        if self.sdpa:
            stack.enter_context(sdpa_attention(self.adapter.base_model))
        return stack

    def generate_ids(self, images: list[Image.Image] | None = None, settings: GenerationSettings | None = None, *,
                     pixel_values: torch.Tensor | None = None, **overrides: Any) -> tuple[torch.Tensor, int]:
        """(sequences, prompt positions to skip), like ``adapter.generate_ids``; ``pixel_values`` may replace images."""
        from medblip.models.base import GenerationSettings

        adapter = self.adapter
        settings, extra = (settings or GenerationSettings()).updated(**overrides)
        reason = self.unsupported(settings, extra)
        with adapter.inference(), self._context():
            if reason is not None:
                self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1
                if images is None:
                    raise ValueError(f"FastCaptioner: {reason} needs images, not pixel_values")
                return adapter._generate(list(images), settings, {**settings.generate_kwargs(), **extra})
            if pixel_values is None:
                pixel_values = adapter.pixel_values(list(images or []))
            return self._blip(pixel_values.to(adapter.device, dtype=adapter.dtype), settings, extra)

    def generate(self, images: list[Image.Image] | None = None, settings: GenerationSettings | None = None, *,
                 pixel_values: torch.Tensor | None = None, **overrides: Any) -> list[str]:
        ids, skip = self.generate_ids(images, settings, pixel_values=pixel_values, **overrides)
        return self.adapter.decode(ids, skip=skip)

    def _blip(self, pixel_values: torch.Tensor, settings: GenerationSettings,
              extra: dict[str, Any]) -> tuple[torch.Tensor, int]:
        adapter = self.adapter
        base = adapter.base_model
        cfg = self._decode_config(settings, extra)
        decoder = self._decoder_for(base.text_decoder)
        assert decoder is not None  # unsupported() sent the other case to generate
        image_embeds = base.vision_model(pixel_values=pixel_values).last_hidden_state
        b = pixel_values.shape[0]
        prompt_text = adapter._prompt(settings)
        bos = int(base.config.text_config.bos_token_id)
        if prompt_text:
            enc = adapter.tokenizer([prompt_text], return_tensors="pt")["input_ids"][:, :-1]
            enc[:, 0] = bos
            prompt = enc.to(adapter.device).repeat(b, 1)
            skip = prompt.shape[1]
        else:
            prompt = torch.full((b, 1), bos, dtype=torch.long, device=adapter.device)
            skip = 0
        ids = decode(decoder, image_embeds, prompt, cfg, step_fn=self._graph)
        return ids, skip


#: ``captioner=`` choices of :func:`select_captioner` (and ``--captioner`` of evaluate / caption)
CAPTIONER_CHOICES = ("auto", "generate")


def select_captioner(adapter: CaptionModel, settings: GenerationSettings, prefer: str = "auto", *,
                     fast: FastCaptioner | None = None) -> tuple[Any, dict[str, Any]]:
    """The fastest way to caption with ``adapter`` under ``settings`` that gives ``adapter.generate``'s captions.

    ``prefer="auto"``: a :class:`FastCaptioner` when it supports the family and settings, else the
    adapter itself (transformers' ``generate``); ``"generate"``: always the adapter. Returns the
    captioner (``.generate(images, settings)``) and a record of the choice for run.json:
    ``{"path": "fast" | "generate", "fallback_reason": why not fast (None when fast or not asked)}``.
    The fast captioner runs in the model's own dtype (no autocast), so its captions are ``generate``'s.
    ``fast``: a FastCaptioner of this adapter made earlier, reused (building one checks the model).
    """
    if prefer not in CAPTIONER_CHOICES:
        from medblip.errors import ConfigError

        raise ConfigError(f"captioner must be one of {', '.join(CAPTIONER_CHOICES)}, not {prefer!r}")
    if prefer == "generate":
        return adapter, {"path": "generate", "fallback_reason": None, "requested": "generate"}
    if fast is None or fast.adapter is not adapter:
        fast = FastCaptioner(adapter, precision="fp32")
    reason = fast.unsupported(settings, {})
    if reason is not None:
        return adapter, {"path": "generate", "fallback_reason": reason}
    return fast, {"path": "fast", "fallback_reason": None, "sdpa": fast.sdpa, "cuda_graphs": fast.cuda_graphs}
