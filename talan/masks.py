"""The attention masks TALAN reads padding and packed-sequence starts off: the per-layer-type dict that generate and
vision-language models build, and 4-D masks (boolean or additive) of full, sliding-window and static caches."""

from __future__ import annotations

import torch

# transformers opens a padding query's fully masked sdpa row to every key on torch < 2.5 (sdpa returned NaN for such
# rows there), so that a padding query attends to itself too
OPENED_PADDING_ROWS = tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 5)


def mask_from_dict(masks: dict) -> torch.Tensor | None:
    """The mask to read padding (and packing) off, from the per-layer-type masks that ``generate`` builds from the 2-D
    mask before the model runs (with a static cache), or that a vision-language model builds for its text decoder
    (Gemma 3: image tokens attend to each other both ways): the full-attention layers' ``[B, 1, Q, KV]`` one, else the
    first 4-D one (Qwen4-Exp's linear-attention layers get a 2-D padding mask beside its indexed attention's), else a
    recurrent layers' 2-D padding mask of this forward's tokens (GLM-5-Next's dict holds only those; transformers
    leaves it out, None, when no token is padding). ``None``: no masking."""
    tensors = [m for m in masks.values() if m is not None]
    four_d = [m for m in tensors if isinstance(m, torch.Tensor) and m.dim() == 4]
    two_d = [m for m in tensors if isinstance(m, torch.Tensor) and m.dim() == 2]
    full = masks.get("full_attention")
    mask = full if full is not None else (four_d or two_d or tensors or [None])[0]
    if mask is not None and not (isinstance(mask, torch.Tensor) and mask.dim() in (2, 4)):
        kind = f"a {mask.dim()}-D tensor" if isinstance(mask, torch.Tensor) else f"a {type(mask).__name__}"
        raise ValueError(f"TALAN reads padding off a dict of [batch, 1, query, key] attention masks (or [batch, "
                         f"length] padding masks); got {kind} in it (flex attention's BlockMask is not supported). "
                         "Pass the tokenizer's 2-D attention_mask")
    return mask


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """``[B, Q, KV]`` True where a ``[B, 1, Q, KV]`` mask (boolean, or additive with 0 = attend) lets a query attend."""
    return mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0


def active_from_4d_mask(mask: torch.Tensor, past_len: int, opened_rows: bool = OPENED_PADDING_ROWS) -> torch.Tensor:
    """``[B, Q]`` True for the real (not padding) tokens of this forward, read off a ``[B, 1, Q, KV]`` mask (boolean, or
    additive with 0 = attend). Query ``i`` sits at key position ``past_len + i``; it is a real token iff it may
    attend to itself (padding keys are masked for every query). Its key columns start at absolute position 0 (a full
    static layer, which may have empty slots after the queries) or, when fewer than ``past_len + Q``, end at the
    last query: a sliding-window static layer's mask covers only its window (``get_mask_sizes``: offset ``past_len -
    window + 1``, length ``window - 1 + Q``). With ``opened_rows`` (torch < 2.5) a query that attends to every key
    and has a later one is padding: a real token attends to no later key, except inside a two-way image block, which
    then must not reach the last key; but in a row where every query attends to every key (PaliGemma's two-way
    prefix, unpadded) all are real."""
    q, kv = mask.shape[2], mask.shape[3]
    if q > kv:
        raise ValueError(f"attention mask of shape {tuple(mask.shape)} has {kv} key positions for {q} new tokens")
    offset = max(past_len + q - kv, 0)  # the absolute position of key column 0
    allowed = _allowed(mask)
    own = past_len - offset + torch.arange(q, device=mask.device)  # each query's own key column
    real = allowed[:, torch.arange(q, device=mask.device), own]
    if opened_rows:
        opened = allowed.all(-1)
        real &= ~(opened & (own < kv - 1)) | opened.all(-1, keepdim=True)
    return real


def starts_from_4d_mask(mask: torch.Tensor, real: torch.Tensor) -> torch.Tensor | None:
    """``[B, Q]`` True where a real token may not attend to the last real token before it, so starts a new
    sequence: the block-diagonal mask of packed sequences. For a forward without a cache, whose query ``i`` sits
    at key column ``i``. ``None`` where no token does (a causal, sliding or two-way image mask: each real token
    sees the one before it)."""
    q = mask.shape[2]
    index = torch.arange(q, device=mask.device).expand_as(real)
    last_real = torch.where(real, index, -1).cummax(-1).values  # at or before each query
    before = torch.cat([torch.full_like(last_real[:, :1], -1), last_real[:, :-1]], -1)
    sees_before = _allowed(mask)[:, :, :q].gather(-1, before.clamp(min=0)[..., None])[..., 0]
    starts = real & (before >= 0) & ~sees_before
    return starts if bool(starts.any()) else None
