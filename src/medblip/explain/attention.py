"""Per-token cross-attention and Grad-CAM maps for every family, through the adapter.

One teacher-forced forward pass of the *model's own* ``forward`` (inputs built by the adapter's
``collate``, i.e. exactly the token layout the model was trained and generates with) while forward
hooks on the cross-attention modules record the attention probabilities. Hooks are used instead of
``output_attentions`` because BLIP-2's forward does not pass it to the Q-Former, and because the
recorded tensors stay in the autograd graph, which Grad-CAM needs (the adapter's own
``cross_attentions`` runs under ``no_grad``).

Which attention row belongs to which token: the map of caption token ``w_t`` is the attention of the
decoder position whose output *predicts* ``w_t`` (for BLIP the position holding ``w_{t-1}``), i.e.
where the model looked when it chose the word. Special tokens ([DEC], [SEP], </s>, ...) get no map.

Families:

* ``blip`` (text decoder) and ``vit-gpt2`` (GPT-2 decoder): cross-attention rows straight from the
  decoder, image prefix (CLS) columns removed.
* ``blip2`` / ``instructblip``: the language model never sees patches; its queries do. A token's map
  is the Q-Former cross-attention (queries x patches) weighted by the language model's attention
  from the predicting position to the query-token positions (mean over LM layers and heads,
  renormalised to sum 1 over the queries; T5 language models: the decoder's cross-attention to the
  encoder's query positions). When the language model returns no attention weights the queries are
  weighted uniformly (``extra["query_weighting"]`` says which was used).

Grad-CAM (as for ALBEF / BLIP): on the chosen cross-attention layer(s), ``A * clamp(dlog p(w_t)/dA,
min=0)``, taken at the predicting row (decoders) or summed over queries (Q-Former; the gradient
already carries the token), then reduced over heads and layers like plain attention (default mean).

Saliency (Simonyan et al. 2014): ``max over colour channels of |dlog p(w_t)/dx|`` on the model's input
``x`` (the processor's pixels). It asks which *pixels* the word depends on through the whole model,
encoder included, not where one attention module looked; its maps live at the input's resolution
(``Trace.grid`` is then (height, width) in pixels, not the patch grid) and have no layers or heads to
select. The gradient alone, not gradient x input: on the synthetic benchmark gradient x input of a
*randomly initialised* BLIP points at the lesion up to 5-11x more often than a uniform map, because it
scales with how far a pixel is from the mean colour and lesions are extreme pixels (the model
randomisation test of Adebayo et al. 2018, which the plain gradient passes: benchmarks/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medblip.errors import MedblipError
from medblip.explain.maps import aggregate, to_grid
from medblip.models.base import eager_attention

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from medblip.models.base import CaptionModel

METHODS = ("attention", "gradcam", "saliency")
#: methods that select cross-attention layers and heads (saliency has neither)
ATTENTION_METHODS = ("attention", "gradcam")


@dataclass(frozen=True)
class FamilySpec:
    """How to find a family's cross-attention and align its logits with its labels."""

    #: regex on ``named_modules`` names of the modules returning (output, attention_probs)
    cross_modules: str
    #: logits row i predicts labels[i + shift] (1: BLIP / causal LMs shift inside; 0: seq2seq,
    #: including BLIP-2 with a T5 language model, detected from its config)
    shift: int
    #: "decoder": cross rows are text positions; "qformer": rows are query tokens
    kind: str


_SPECS: dict[str, FamilySpec] = {
    "blip": FamilySpec(r"(^|\.)text_decoder\..*\.crossattention\.self$", 1, "decoder"),
    "vit-gpt2": FamilySpec(r"(^|\.)decoder\..*\.crossattention$", 0, "decoder"),
    "blip2": FamilySpec(r"(^|\.)qformer\..*\.crossattention\.attention$", 1, "qformer"),
    "instructblip": FamilySpec(r"(^|\.)qformer\..*\.crossattention\.attention$", 1, "qformer"),
}


def family_spec(adapter: CaptionModel) -> FamilySpec:
    spec = _SPECS.get(adapter.family) or _SPECS.get(adapter.family.replace("_", "-"))
    if spec is None:
        raise MedblipError(f"explanations are not implemented for family {adapter.family!r}; "
                           f"supported: {', '.join(sorted(_SPECS))}")
    return spec


@dataclass
class Trace:
    """Everything one teacher-forced pass yields for one image and caption."""

    tokens: list[str]
    token_ids: list[int]
    grid: tuple[int, int]
    logprobs: list[float]
    extra: dict[str, Any] = field(default_factory=dict)


# -- model plumbing --------------------------------------------------------------------------------

@contextlib.contextmanager
def _recording(model: Any, pattern: str) -> Iterator[list[Any]]:
    """Record output[1] (the attention probabilities) of every module whose name matches."""
    regex = re.compile(pattern)
    store: list[Any] = []
    handles = []

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, tuple) and len(output) > 1 and output[1] is not None:
            store.append(output[1])

    for name, module in model.named_modules():
        if regex.search(name):
            handles.append(module.register_forward_hook(hook))
    if not handles:
        raise MedblipError(f"{type(model).__name__}: no cross-attention modules found to explain")
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _patch_size(model: Any) -> int | None:
    cfg = model.config
    for sub in ("vision_config", "encoder"):
        p = getattr(getattr(cfg, sub, None), "patch_size", None)
        if p:
            return int(p[0] if isinstance(p, list | tuple) else p)
    return None


def _grid_and_prefix(model: Any, pixel_values: torch.Tensor, keys: int) -> tuple[tuple[int, int], int]:
    """Patch grid of the input and the number of non-patch key positions before it (CLS, ...)."""
    patch = _patch_size(model)
    if patch:
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        prefix = keys - grid[0] * grid[1]
        if prefix >= 0:
            return grid, prefix
    for prefix in (1, 0, 2):  # CLS; no prefix; CLS + distillation token
        side = math.isqrt(max(keys - prefix, 0))
        if side * side == keys - prefix and side > 0:
            return (side, side), prefix
    raise MedblipError(f"cannot map {keys} image positions onto a square patch grid")


def _batch(adapter: CaptionModel, image: Image.Image, caption: str) -> dict[str, Any]:
    import torch

    batch = adapter.collate([image], [caption])
    dtype = adapter.dtype
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(adapter.device, dtype=dtype) if v.is_floating_point() else v.to(adapter.device)
        out[k] = v
    return out


def _forward_kwargs(adapter: CaptionModel, batch: dict[str, Any]) -> dict[str, Any]:
    # The adapter knows which collate keys its model's forward takes.
    fwd = getattr(adapter, "_forward_inputs", None)
    return dict(fwd(batch)) if fwd is not None else dict(batch)


def _query_weights(model: Any, out: Any, batch: dict[str, Any], rows: list[int], n_queries: int,
                   shift_offset: int) -> tuple[torch.Tensor | None, str]:
    """(T, Q) weights of each explained token over the query tokens from the LM's own attention."""
    import torch

    image_token = getattr(model.config, "image_token_id", None)
    if image_token is None:
        image_token = getattr(model.config, "image_token_index", None)
    lm = getattr(out, "language_model_outputs", None)
    ids = batch.get("input_ids")
    if lm is None or ids is None or image_token is None:
        return None, "uniform"
    query_cols = (ids[0] == image_token).nonzero().flatten()
    if query_cols.numel() != n_queries:
        return None, "uniform"
    if getattr(lm, "cross_attentions", None):  # seq2seq LM: decoder -> encoder (queries + prompt)
        atts, offset = lm.cross_attentions, 0
    elif getattr(lm, "attentions", None):
        atts, offset = lm.attentions, shift_offset
    else:
        return None, "uniform"
    atts = [a for a in atts if a is not None]
    if not atts:
        return None, "uniform"
    mean = torch.stack([a[0].detach().float() for a in atts]).mean(dim=(0, 1))  # (L_q, L_k)
    rows_t = torch.tensor([r + offset for r in rows], device=mean.device)
    w = mean[rows_t][:, query_cols]
    w = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return w, "language_model_attention"


# -- the teacher-forced pass ----------------------------------------------------------------------

def trace(adapter: CaptionModel, image: Image.Image, caption: str, *, method: str = "attention",
          layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
          aggregate_how: str = "mean") -> tuple[Trace, np.ndarray]:
    """Teacher-force ``caption`` and return the trace plus ``(T, rows, cols)`` token maps.

    The token maps are aggregated but not normalised (see :mod:`medblip.explain.maps`).
    """

    if method not in METHODS:
        raise MedblipError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not caption or not caption.strip():
        raise MedblipError("cannot explain an empty caption")
    check_selection(method, layers, heads, aggregate_how)
    spec = family_spec(adapter)
    model = adapter.base_model
    batch = _batch(adapter, image, caption)
    labels = batch.get("labels")
    if labels is None:
        raise MedblipError(f"{adapter.family}: collate returned no labels to align tokens with")
    kwargs = _forward_kwargs(adapter, batch)
    need_grad = method in ("gradcam", "saliency")
    if need_grad:
        # A leaf that requires grad guarantees a graph up to the attention probabilities even when
        # every parameter is frozen; gradients w.r.t. parameters are never computed.
        kwargs["pixel_values"] = kwargs["pixel_values"].detach().clone().requires_grad_(True)
    if spec.kind == "qformer":
        kwargs["output_attentions"] = True

    with adapter.inference(grad=need_grad), eager_attention(model), _recording(model, spec.cross_modules) as store:
        out = model(**kwargs)
        logits = out.logits
        if not store:
            raise MedblipError(f"{adapter.family}: the model returned no cross-attention weights")
        return _maps_from(adapter, spec, model, out, logits, labels, batch, store, method, layers, heads,
                          aggregate_how, pixels=kwargs["pixel_values"])


def check_selection(method: str, layers: Sequence[int] | None, heads: Sequence[int] | None,
                    aggregate_how: str) -> None:
    """Saliency has no layers, heads or aggregate: asking for them is an error, not a silent no-op."""
    if method in ATTENTION_METHODS:
        return
    chosen = [name for name, given in (("layers", layers), ("heads", heads)) if given]
    if aggregate_how != "mean":
        chosen.append("aggregate")
    if chosen:
        raise MedblipError(f"{', '.join(chosen)} select cross-attention; the {method} method maps input pixels "
                           f"and has none (use --method attention or gradcam)")


def _maps_from(adapter: CaptionModel, spec: FamilySpec, model: Any, out: Any, logits: torch.Tensor,
               labels: torch.Tensor, batch: dict[str, Any], store: list[Any], method: str,
               layers: Sequence[int] | None, heads: Sequence[int] | None,
               how: str, pixels: torch.Tensor | None = None) -> tuple[Trace, np.ndarray]:
    import torch

    shift = spec.shift
    if spec.kind == "qformer" and not getattr(model.config, "use_decoder_only_language_model", True):
        shift = 0  # a T5 language model: decoder logits i predict labels i
    # logits of a decoder-only LM cover query/prompt positions too; labels cover the last L of them
    offset = max(0, logits.shape[1] - labels.shape[1]) if spec.kind == "qformer" else 0
    special = set(getattr(adapter.tokenizer, "all_special_ids", []) or [])
    lab = labels[0].tolist()
    targets = [j for j in range(shift, len(lab)) if lab[j] != -100 and lab[j] not in special]
    if not targets:
        raise MedblipError("the caption has no tokens to explain")
    rows = [j - shift for j in targets]
    target_ids = [lab[j] for j in targets]
    logp = torch.log_softmax(logits[0].float(), dim=-1)
    token_logp = torch.stack([logp[offset + r, t] for r, t in zip(rows, target_ids, strict=True)])
    tokens = adapter.tokenizer.convert_ids_to_tokens(target_ids)

    if method == "saliency":  # no attention, no patch grid: the pixels' gradients
        if pixels is None or not pixels.requires_grad:
            raise MedblipError("saliency needs gradients with respect to the input pixels, but the model ran without them")
        maps = _saliency(pixels, token_logp)
        extra = {"saliency": "max over colour channels of |gradient of log p(token)|, input resolution"}
        return Trace(tokens=list(tokens), token_ids=target_ids, grid=(int(maps.shape[-2]), int(maps.shape[-1])),
                     logprobs=[float(x) for x in token_logp.detach().cpu()], extra=extra), maps

    first = store[0]
    grid, prefix = _grid_and_prefix(model, batch["pixel_values"], first.shape[-1])
    extra: dict[str, Any] = {"prefix_positions": prefix, "cross_attention_layers": len(store)}

    weights = None
    if spec.kind == "qformer":
        weights, how_w = _query_weights(model, out, batch, rows, first.shape[-2], offset)
        extra["query_weighting"] = how_w
        if weights is None:
            weights = torch.full((len(rows), first.shape[-2]), 1.0 / first.shape[-2], device=first.device)

    def per_token(att: torch.Tensor) -> torch.Tensor:  # (heads, R, K) -> (heads, T, patches)
        att = att[..., prefix:].float()
        if spec.kind == "decoder":
            return att[:, rows, :]
        return torch.einsum("tq,hqp->htp", weights.to(att.dtype), att)

    if method == "attention":
        per_layer = [per_token(a[0].detach()).cpu().numpy() for a in store]
        maps = aggregate(per_layer, layers, heads, how)
    else:
        per_layer = _gradcam(store, token_logp, rows, prefix, spec.kind, layers)
        maps = aggregate(per_layer, None, heads, how)  # layers were selected before the gradients
        extra["gradcam_layers"] = _gradcam_layer_ids(len(store), layers)
    result = Trace(tokens=list(tokens), token_ids=target_ids, grid=grid,
                   logprobs=[float(x) for x in token_logp.detach().cpu()], extra=extra)
    return result, to_grid(maps, grid)


#: tokens whose gradients one batched backward pass computes: fewer passes, T x the gradient memory
SALIENCY_CHUNK = 16


def _saliency(pixels: torch.Tensor, token_logp: torch.Tensor) -> np.ndarray:
    """(T, height, width): per token, the largest |gradient| of its log-probability over colour channels."""
    import torch

    # autograd.grad, not backward(): only the input's gradient is computed, no parameter's .grad is touched
    n = token_logp.shape[0]
    grads: list[torch.Tensor] = []
    for start in range(0, n, SALIENCY_CHUNK):
        stop = min(n, start + SALIENCY_CHUNK)
        try:  # one vmapped backward pass for the chunk's tokens
            eye = torch.eye(n, device=token_logp.device, dtype=token_logp.dtype)[start:stop]
            (g,) = torch.autograd.grad(token_logp, pixels, grad_outputs=eye, is_grads_batched=True,
                                       retain_graph=True)
            grads.extend(g[:, 0])
        except RuntimeError:  # an operator without a batching rule, or out of memory: a pass per token
            grads.extend(torch.autograd.grad(token_logp[t], pixels, retain_graph=True)[0][0]
                         for t in range(start, stop))
    return torch.stack([g.float().abs().amax(dim=0) for g in grads]).cpu().numpy()


def _gradcam_layer_ids(n: int, layers: Sequence[int] | None) -> list[int]:
    from medblip.explain.maps import select_indices

    # Default: the last cross-attention layer, the one closest to the output, as in ALBEF's demos
    # (which pick one layer) - a single layer keeps Grad-CAM sharp.
    return select_indices(n, layers if layers else [-1], "layer")


def _gradcam(store: list[Any], token_logp: torch.Tensor, rows: list[int], prefix: int, kind: str,
             layers: Sequence[int] | None) -> list[np.ndarray]:
    """Per selected layer, (heads, T, patches) of attention x relu(gradient of log p(token))."""
    import torch

    ids = _gradcam_layer_ids(len(store), layers)
    atts = [store[i] for i in ids]
    if not all(a.requires_grad for a in atts):
        raise MedblipError("Grad-CAM needs gradients through the cross-attention, but the model ran without them")
    cams: list[list[torch.Tensor]] = [[] for _ in ids]
    for t, row in enumerate(rows):
        grads = torch.autograd.grad(token_logp[t], atts, retain_graph=True, allow_unused=True)
        for k, (a, g) in enumerate(zip(atts, grads, strict=True)):
            a0 = a[0, ..., prefix:].detach().float()
            g0 = torch.zeros_like(a0) if g is None else g[0, ..., prefix:].float()
            cam = a0 * g0.clamp(min=0)
            cams[k].append(cam[:, row, :] if kind == "decoder" else cam.sum(dim=1))
    return [torch.stack(c, dim=1).cpu().numpy() for c in cams]  # (heads, T, patches)
