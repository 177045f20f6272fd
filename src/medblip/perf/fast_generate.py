"""A lean decoding loop for BLIP's text decoder: greedy and beam search, identical to ``generate``.

What transformers' ``BlipForConditionalGeneration.generate`` does per batch, and what this does instead:

* Cross-attention keys/values. transformers repeats the image embeddings ``num_beams`` times and
  projects them for every beam (``B * beams`` rows of 577 tokens through 2 x 12 Linear layers);
  here they are projected **once per image** and every beam's queries attend to the same K/V:
  the beams are folded into the query length (cross-attention treats queries independently), so
  no copy per beam exists at all.
* Self-attention KV cache: preallocated for the whole caption (``static``), written in place;
  transformers grows a ``DynamicCache`` by concatenation every step.
* Bookkeeping: the beam-search arithmetic is transformers' vectorised ``_beam_search`` translated
  line by line (same top-2k candidates, same length penalty, same early-stopping heuristic), so
  the captions are the same; without its per-step logits-processor / stopping-criteria machinery.
* ``static=True`` makes every decode step shape-static (attention over the full cache with a mask
  updated in place), which lets :class:`~medblip.perf.captioner.FastCaptioner` replay the step as a
  CUDA graph; the static path is exercised on CPU by the tests as well.

Supported settings: greedy or beam search, ``max_new_tokens``, ``min_new_tokens``,
``length_penalty``/``early_stopping`` from the generation config, an optional prompt. Anything else
(sampling, repetition penalty, n-gram blocking) is left to transformers by the captioner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812

NEG = -1.0e9


@dataclass
class DecodeConfig:
    num_beams: int = 3
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    eos_token_id: int = 102
    pad_token_id: int = 0
    length_penalty: float = 1.0
    early_stopping: bool | str = False


class BlipFastDecoder:
    """Runs a ``BlipTextLMHeadModel`` token by token with precomputed cross-attention K/V.

    Calls the model's own submodules (so LoRA-wrapped Linear layers, dtypes and autocast work
    unchanged); holds no parameters of its own.
    """

    def __init__(self, text_decoder: Any, *, static: bool = False) -> None:
        self.lm = text_decoder
        self.bert = text_decoder.bert
        self.layers = list(self.bert.encoder.layer)
        cfg = text_decoder.config
        self.heads = int(cfg.num_attention_heads)
        self.hidden = int(cfg.hidden_size)
        self.head_dim = self.hidden // self.heads
        self.max_positions = int(cfg.max_position_embeddings)
        self.static = static
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.rows = 0
        self.capacity = 0
        self.beams = 1
        self.mask: torch.Tensor | None = None  # static mode: (1, 1, 1, capacity) additive

    # -- state -----------------------------------------------------------------------------------
    def set_image(self, image_embeds: torch.Tensor) -> None:
        """Project the image embeddings into every layer's cross-attention K/V, once per image.

        Static mode writes into the existing buffers when the shapes match (stable addresses for a
        captured CUDA graph).
        """
        b, n, _ = image_embeds.shape
        cross = []
        for layer in self.layers:
            ca = layer.crossattention.self
            k = ca.key(image_embeds).view(b, n, self.heads, self.head_dim).transpose(1, 2)
            v = ca.value(image_embeds).view(b, n, self.heads, self.head_dim).transpose(1, 2)
            cross.append((k.contiguous(), v.contiguous()))
        if (self.static and len(self.cross) == len(cross)
                and all(o[0].shape == c[0].shape and o[0].dtype == c[0].dtype for o, c in zip(self.cross, cross, strict=True))):
            for (ok, ov), (k, v) in zip(self.cross, cross, strict=True):
                ok.copy_(k)
                ov.copy_(v)
        else:
            self.cross = cross

    def allocate(self, rows: int, capacity: int, dtype: torch.dtype, device: torch.device, beams: int = 1) -> None:
        """Self-attention cache for ``rows`` sequences of up to ``capacity`` tokens (``beams`` per image)."""
        shape = (rows, self.heads, capacity, self.head_dim)
        reuse = bool(self.static and self.k and self.k[0].shape == shape and self.k[0].dtype == dtype
                     and self.k[0].device == torch.device(device))
        if reuse:
            for t in (*self.k, *self.v):
                t.zero_()
        else:
            self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
            self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self.rows, self.capacity, self.beams = rows, capacity, beams
        if self.static:
            if reuse and self.mask is not None:
                self.mask.fill_(float("-inf"))
            else:
                self.mask = torch.full((1, 1, 1, capacity), float("-inf"), dtype=dtype, device=device)

    def expand(self, beams: int) -> None:
        """Repeat each cached sequence ``beams`` times (after a prefill computed once per image)."""
        self.k = [k.repeat_interleave(beams, dim=0) for k in self.k]
        self.v = [v.repeat_interleave(beams, dim=0) for v in self.v]
        self.rows *= beams
        self.beams = beams

    def reorder(self, index: torch.Tensor, length: int) -> None:
        """Keep cache rows ``index`` (beam search), for the first ``length`` positions."""
        for cache in (self.k, self.v):
            for t in cache:
                if self.static:
                    t.copy_(t.index_select(0, index))
                else:
                    t[:, :, :length] = t[:, :, :length].index_select(0, index)

    # -- compute ---------------------------------------------------------------------------------
    def _cross_attention(self, q: torch.Tensor, layer: int) -> torch.Tensor:
        k, v = self.cross[layer]
        beams = self.beams
        if beams == 1:
            return F.scaled_dot_product_attention(q, k, v)
        r, h, t, d = q.shape
        b = r // beams
        # (B*beams, H, T, d) -> (B, H, beams*T, d): every beam's queries against the image's K/V
        qf = q.view(b, beams, h, t, d).permute(0, 2, 1, 3, 4).reshape(b, h, beams * t, d)
        out = F.scaled_dot_product_attention(qf, k, v)
        return out.view(b, h, beams, t, d).permute(0, 2, 1, 3, 4).reshape(r, h, t, d)

    def forward(self, input_ids: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """Logits (rows, vocab) of the last position after feeding ``input_ids`` at ``start``.

        Dynamic mode: ``start`` is an int, any number of tokens (a prefill starts at 0). Static mode:
        one token per row, ``start`` a 1-element long tensor (so a CUDA graph can replay it).
        """
        r, t = input_ids.shape
        emb = self.bert.embeddings
        if self.static:
            assert t == 1 and isinstance(start, torch.Tensor)
            pos = start.view(1, 1)
        else:
            pos = torch.arange(int(start), int(start) + t, device=input_ids.device).view(1, t)
        # BlipTextEmbeddings.forward spelled out: its cache-offset argument is private and was renamed
        # between transformers releases (past_key_values_length -> cache_length).
        x = emb.dropout(emb.LayerNorm(emb.word_embeddings(input_ids) + emb.position_embeddings(pos)))
        for i, layer in enumerate(self.layers):
            sa = layer.attention.self
            q = sa.query(x).view(r, t, self.heads, self.head_dim).transpose(1, 2)
            k = sa.key(x).view(r, t, self.heads, self.head_dim).transpose(1, 2)
            v = sa.value(x).view(r, t, self.heads, self.head_dim).transpose(1, 2)
            if self.static:
                assert self.mask is not None
                self.k[i].index_copy_(2, start, k.to(self.k[i].dtype))
                self.v[i].index_copy_(2, start, v.to(self.v[i].dtype))
                a = F.scaled_dot_product_attention(q, self.k[i].to(q.dtype), self.v[i].to(q.dtype),
                                                   attn_mask=self.mask.to(q.dtype))
            else:
                s = int(start)
                self.k[i][:, :, s:s + t] = k
                self.v[i][:, :, s:s + t] = v
                a = F.scaled_dot_product_attention(q, self.k[i][:, :, :s + t], self.v[i][:, :, :s + t],
                                                   is_causal=t > 1 and s == 0)
                if t > 1 and s != 0:  # pragma: no cover - prefills always start at 0
                    raise ValueError("a multi-token feed must start at position 0")
            x = layer.attention.output(a.transpose(1, 2).reshape(r, t, self.hidden), x)
            ca = layer.crossattention.self
            q = ca.query(x).view(r, t, self.heads, self.head_dim).transpose(1, 2)
            a = self._cross_attention(q, i)
            x = layer.crossattention.output(a.transpose(1, 2).reshape(r, t, self.hidden), x)
            x = layer.output(layer.intermediate(x), x)
        return self.lm.cls(x[:, -1, :])

    def check(self) -> str | None:
        """Why this loop would not reproduce the text decoder (None: it does), checked on a random probe.

        The loop reads transformers' BLIP text modules from inside (their submodule names and what
        each computes), which no release promises to keep. So before it captions anything, the last
        position's logits for a 3-token prompt against 3 random image tokens are compared with the
        model's own forward; a layout or computation this loop does not know gives a reason, never a
        wrong caption or a TypeError in the middle of a run.
        """
        lm = self.lm
        cfg = lm.config
        try:
            param = next(lm.parameters())
            width = int(getattr(cfg, "encoder_hidden_size", None) or cfg.hidden_size)
            g = torch.Generator().manual_seed(0)
            image = torch.randn(1, 3, width, generator=g).to(param.device, param.dtype)
            ids = torch.randint(0, int(cfg.vocab_size), (1, 3), generator=g).to(param.device)
            was_training = lm.training
            lm.eval()
            try:
                with torch.no_grad():
                    want = lm(input_ids=ids, encoder_hidden_states=image, return_dict=True).logits[:, -1].float()
                    probe = BlipFastDecoder(lm, static=False)
                    probe.set_image(image)
                    probe.allocate(1, ids.shape[1], image.dtype, image.device)
                    got = probe.forward(ids, 0).float()
            finally:
                lm.train(was_training)
        except Exception as exc:  # any mismatch of the internal layout this loop relies on
            return f"unsupported BLIP text-decoder layout ({type(exc).__name__}: {exc})"
        error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
        tolerance = 1e-4 if param.dtype == torch.float32 else 5e-2
        if not error <= tolerance:
            return f"its logits differ from {type(lm).__name__}'s by {error:.1e} (relative; tolerance {tolerance:g})"
        return None

    def open_position(self, position: int) -> None:
        """Static mode: let attention see cache position ``position`` from now on."""
        assert self.mask is not None
        self.mask[..., position] = 0.0


# -- search loops ----------------------------------------------------------------------------------

def _min_tokens(log_probs: torch.Tensor, generated: int, cfg: DecodeConfig) -> torch.Tensor:
    if cfg.min_new_tokens and generated < cfg.min_new_tokens:
        log_probs[:, cfg.eos_token_id] = float("-inf")
    return log_probs


class _Runner:
    """Feeds tokens to the decoder in dynamic or static (graph-replayable) mode."""

    def __init__(self, dec: BlipFastDecoder, step_fn: Any = None) -> None:
        self.dec = dec
        self.step_fn = step_fn  # static: callable(tokens (R,1), pos tensor) -> logits; e.g. a CUDA graph

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        dec = self.dec
        if not dec.static:
            return dec.forward(prompt, 0)
        logits = None
        pos = torch.zeros(1, dtype=torch.long, device=prompt.device)
        for j in range(prompt.shape[1]):
            pos.fill_(j)
            dec.open_position(j)
            logits = dec.forward(prompt[:, j:j + 1], pos)
        assert logits is not None
        return logits

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        dec = self.dec
        if not dec.static:
            return dec.forward(tokens, position)
        dec.open_position(position)
        if self.step_fn is not None:
            return self.step_fn(tokens, position)
        pos = torch.full((1,), position, dtype=torch.long, device=tokens.device)
        return dec.forward(tokens, pos)


def greedy_search(runner: _Runner, prompt: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    """transformers' greedy ``_sample`` (no sampling): finished rows are padded; stops when all finish."""
    b, p = prompt.shape
    max_length = p + cfg.max_new_tokens
    seqs = torch.full((b, max_length), cfg.pad_token_id, dtype=torch.long, device=prompt.device)
    seqs[:, :p] = prompt
    unfinished = torch.ones(b, dtype=torch.bool, device=prompt.device)
    logits = runner.prefill(prompt)
    cur = p
    while True:
        scores = _min_tokens(logits.float(), cur - p, cfg)
        nxt = scores.argmax(dim=-1)
        nxt = torch.where(unfinished, nxt, torch.full_like(nxt, cfg.pad_token_id))
        seqs[:, cur] = nxt
        cur += 1
        unfinished &= nxt != cfg.eos_token_id
        if cur >= max_length or not bool(unfinished.any()):
            break
        logits = runner.step(nxt[:, None], cur - 1)
    return seqs[:, :cur]


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def beam_search(runner: _Runner, prompt: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    """transformers' vectorised ``_beam_search`` (one eos id, no sampling), line for line.

    ``prompt``: (B, P) -- one row per image; the prefill runs once per image and is then expanded.
    """
    dec = runner.dec
    device = prompt.device
    b, p = prompt.shape
    nb = cfg.num_beams
    max_length = p + cfg.max_new_tokens
    keep = 2 * nb  # max(2, 1 + n_eos) * num_beams with one eos token
    top_mask = torch.cat([torch.ones(nb, dtype=torch.bool), torch.zeros(keep - nb, dtype=torch.bool)]).to(device)
    # transformers fills with `pad_token_id or eos_token_id`: a pad id of 0 means eos
    fill = cfg.pad_token_id or cfg.eos_token_id
    running = torch.full((b, nb, max_length), fill, dtype=torch.long, device=device)
    running[:, :, :p] = prompt[:, None, :]
    sequences = running.clone()
    running_scores = torch.zeros((b, nb), dtype=torch.float, device=device)
    running_scores[:, 1:] = NEG
    beam_scores = torch.full((b, nb), NEG, dtype=torch.float, device=device)
    finished = torch.zeros((b, nb), dtype=torch.bool, device=device)
    improvable = torch.ones((b, 1), dtype=torch.bool, device=device)
    running_idx = torch.full((b, nb, max_length - p), -1, dtype=torch.int32, device=device)
    beam_idx = running_idx.clone()
    offsets = torch.arange(b, device=device).view(-1, 1) * nb

    if dec.static:  # fixed shapes: the cache holds B * beams rows from the start
        logits = runner.prefill(prompt.repeat_interleave(nb, dim=0))
    else:  # the prefill runs once per image, then the cache is repeated for the beams
        logits = runner.prefill(prompt)
        dec.expand(nb)
        logits = logits.repeat_interleave(nb, dim=0)
    cur = p
    while True:
        log_probs = F.log_softmax(logits.float(), dim=-1)
        log_probs = _min_tokens(log_probs, cur - p, cfg)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.view(b, nb, vocab) + running_scores[:, :, None]
        log_probs = log_probs.reshape(b, nb * vocab)
        # c. top-K continuations
        topk_scores, topk_indices = torch.topk(log_probs, k=keep)
        topk_beam = topk_indices // vocab
        topk_running_idx = _gather(running_idx, topk_beam)
        topk_running = _gather(running, topk_beam)
        topk_ids = topk_indices % vocab
        topk_running[:, :, cur] = topk_ids
        topk_running_idx[:, :, cur - p] = (topk_beam + offsets).to(torch.int32)
        # d. which continuations stop (max length or eos)
        if cur + 1 >= max_length:
            hits = torch.ones((b, keep), dtype=torch.bool, device=device)
        else:
            hits = topk_ids == cfg.eos_token_id
        # e. running beams for the next step
        topk_running_scores = topk_scores + hits.to(torch.float32) * NEG
        nxt = torch.topk(topk_running_scores, k=nb)[1]
        running = _gather(topk_running, nxt)
        running_scores = _gather(topk_running_scores, nxt)
        running_idx = _gather(topk_running_idx, nxt)
        # f. finished beams
        just_done = hits & top_mask[None, :]
        fin_scores = topk_scores / ((cur + 1 - p) ** cfg.length_penalty)
        full = torch.all(finished, dim=-1, keepdim=True) & (cfg.early_stopping is True)
        fin_scores = fin_scores + full.to(torch.float32) * NEG
        fin_scores = fin_scores + (~improvable).to(torch.float32) * NEG
        fin_scores = fin_scores + (~just_done) * NEG
        merged_seq = torch.cat((sequences, topk_running), dim=1)
        merged_scores = torch.cat((beam_scores, fin_scores), dim=1)
        merged_idx = torch.cat((beam_idx, topk_running_idx), dim=1)
        merged_fin = torch.cat((finished, just_done), dim=1)
        top = torch.topk(merged_scores, k=nb)[1]
        sequences = _gather(merged_seq, top)
        beam_scores = _gather(merged_scores, top)
        beam_idx = _gather(merged_idx, top)
        finished = _gather(merged_fin, top)
        # g. next iteration
        reorder = running_idx[..., cur - p].reshape(-1).long()
        cur += 1
        never = cfg.early_stopping == "never" and cfg.length_penalty > 0.0
        best_len = max_length - p if never else cur - p
        best_running = running_scores[:, :1] / (best_len ** cfg.length_penalty)
        worst_done = torch.where(finished, torch.min(beam_scores, dim=1, keepdim=True)[0], NEG)
        improvable = improvable & torch.any(best_running > worst_done, dim=-1, keepdim=True)
        go_on = (bool(improvable.any()) and not (bool(finished.all()) and cfg.early_stopping is True)
                 and not bool(hits.all()))
        if not go_on:
            break
        dec.reorder(reorder, cur - 1)
        tokens = running[:, :, cur - 1].reshape(-1, 1)
        logits = runner.step(tokens, cur - 1)

    seqs = sequences[:, 0, :]
    idx = beam_idx[:, 0, :]
    generated = int(((idx + 1).bool()).sum(dim=1).max())
    return seqs[:, :p + generated]


def decode(dec: BlipFastDecoder, image_embeds: torch.Tensor, prompt: torch.Tensor, cfg: DecodeConfig,
           step_fn: Any = None) -> torch.Tensor:
    """Caption ids for a batch of image embeddings: (B, prompt + generated), like ``generate``."""
    b, p = prompt.shape
    dec.set_image(image_embeds)
    capacity = p + cfg.max_new_tokens
    if capacity > dec.max_positions:
        raise ValueError(f"prompt + max_new_tokens = {capacity} exceeds the decoder's {dec.max_positions} positions")
    kv_dtype = image_embeds.dtype if not torch.is_autocast_enabled(image_embeds.device.type) \
        else torch.get_autocast_dtype(image_embeds.device.type)
    nb = max(1, cfg.num_beams)
    if dec.static:
        dec.allocate(b * nb, capacity, kv_dtype, image_embeds.device, beams=nb)
    else:  # one row per image; beam search expands it after the prefill
        dec.allocate(b, capacity, kv_dtype, image_embeds.device, beams=1)
    runner = _Runner(dec, step_fn)
    if cfg.num_beams <= 1:
        return greedy_search(runner, prompt, cfg)
    return beam_search(runner, prompt, cfg)
