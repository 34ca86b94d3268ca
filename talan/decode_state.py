"""The per-sequence slot state ``(S, N)`` of every block, tied to the HF cache object (SPEC §2).

A forward whose cache is empty is a prefill and starts a fresh state; a later forward with the same
cache continues it. The state follows the cache's batch reorders (beam search) and refuses to
continue from a cache it never saw.

A cache cropped back into its last forward (assisted decoding drops the draft tokens the model
rejected) is followed too: for a forward of at most ``REPLAY_TOKENS`` tokens the block's input and the
state before it are kept, and the state at the cropped length is recomputed from them. A crop further
back, or into a longer forward (a prefill), is refused with a clear error.

The states live in the cache object's own ``__dict__`` and the batch-reordering wrappers are methods bound
to it, so ``copy.deepcopy(cache)`` (transformers' prompt-reuse recipe: prefill a shared prefix once, then
generate from a copy for each prompt) copies the TALAN state with the keys and values, and the copy's
wrappers reorder the copy, not the original.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch

# Longest forward whose input is kept for a later crop (an assisted-decoding verification step holds the
# last token plus the draft; a prefill is never cropped back into).
REPLAY_TOKENS = 64


@dataclass
class Replay:
    """What a crop back into the last forward needs: the cache length and state before it, and its input."""

    start_len: int
    state: tuple | None  # (S, N) before the forward; None after a prefill's start
    hidden: torch.Tensor  # the block's input [B, t, D]
    active: torch.Tensor | None  # [B, t] or None


@dataclass
class LayerState:
    seq_len: int  # the cache length this state corresponds to
    slot_sums: torch.Tensor  # S [B, M] fp32
    value_sums: torch.Tensor  # N [B, M, R] fp32
    replay: Replay | None = None


_STATES_ATTR = "_talan_decode_states"  # on the cache: {DecodeStates key: {layer index: LayerState}}
_KEYS = itertools.count()  # an int key copies as itself, so a deep-copied cache's states keep their owner


class DecodeStates:
    """The TALAN state of each block computed alongside a cache object, kept on that cache."""

    def __init__(self):
        self._key = next(_KEYS)

    def __deepcopy__(self, memo):
        return DecodeStates()  # a copied model starts its own states: it never continues the original's caches

    def lookup(self, cache, layer_idx: int, past_len: int, batch: int, block: Callable | None = None,
               prefix_lengths: Callable[[], Collection[int]] = tuple):
        """The ``(S, N)`` to continue from for ``layer_idx``, or None for a prefill (``past_len == 0``, or a
        cache this long that TALAN has not seen: peft prefix tuning's virtual tokens, never in the residual
        stream; ``prefix_lengths()`` says which lengths, asked only then, never on a decode step).
        ``block`` (the TALAN block, called as in the forward) recomputes the state after a crop."""
        if past_len == 0:
            return None
        entry = getattr(cache, _STATES_ATTR, {}).get(self._key, {}).get(layer_idx)
        if entry is None and past_len in prefix_lengths():
            return None
        if entry is None:
            raise ValueError("this cache holds tokens that TALAN never saw: start generation from an empty cache "
                             "(a new prompt) on the patched model, so TALAN can build its slot memory (with peft "
                             "prefix tuning, patch the PeftModel, talan.patch(peft_model), so TALAN knows the "
                             "length of its virtual-token prefix)")
        if entry.slot_sums.shape[0] != batch:
            raise ValueError(f"the batch size changed from {entry.slot_sums.shape[0]} to {batch} while continuing "
                             "a cache")
        if entry.seq_len == past_len:
            return entry.slot_sums, entry.value_sums
        replay = entry.replay
        if replay is None or block is None or not replay.start_len <= past_len < entry.seq_len:
            raise ValueError(f"the cache length changed outside TALAN ({entry.seq_len} -> {past_len} tokens); TALAN "
                             f"can follow a crop() back into its last forward of at most {REPLAY_TOKENS} tokens "
                             "(as assisted decoding does), not this one")
        keep = past_len - replay.start_len
        if keep == 0:
            return replay.state
        active = None if replay.active is None else replay.active[:, :keep]
        with torch.no_grad():
            _, state = block(replay.hidden[:, :keep], active, None, replay.state)
        return state

    def counted_length(self, cache) -> int | None:
        """The cache length that TALAN's states for ``cache`` correspond to, or None where it holds none (for a
        cache that counts no tokens itself: a state-space model's)."""
        layers = getattr(cache, _STATES_ATTR, {}).get(self._key, {})
        return next((entry.seq_len for entry in layers.values()), None)

    def store(self, cache, layer_idx: int, new_len: int, state, replay: Replay | None = None) -> None:
        """The state at cache length ``new_len``; ``replay`` (kept for forwards of <= REPLAY_TOKENS tokens)
        lets a later crop back into this forward recompute its state."""
        owners = getattr(cache, _STATES_ATTR, None)
        if owners is None:
            owners = {}
            setattr(cache, _STATES_ATTR, owners)
            _follow_batch_changes(cache)
        if replay is not None and replay.hidden.shape[1] > REPLAY_TOKENS:
            replay = None
        owners.setdefault(self._key, {})[layer_idx] = LayerState(new_len, state[0].detach(), state[1].detach(),
                                                                  replay)


def _follow_batch_changes(cache) -> None:
    """Bind wrappers of the cache's batch-reordering methods to this instance so the TALAN states move with
    it. Bound methods (not closures over this cache) so that a deep copy's wrappers act on the copy."""

    def wrap(method_name, transform):
        original = getattr(type(cache), method_name, None)
        if original is None:
            return

        def wrapped(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            for layers in getattr(self, _STATES_ATTR, {}).values():
                for entry in layers.values():
                    entry.slot_sums = transform(entry.slot_sums, *args, **kwargs)
                    entry.value_sums = transform(entry.value_sums, *args, **kwargs)
                    entry.replay = None  # a crop after a reorder is refused rather than replayed on stale rows
            return result

        setattr(cache, method_name, types.MethodType(wrapped, cache))

    wrap("reorder_cache", lambda t, beam_idx: t.index_select(0, beam_idx.to(t.device)))
    wrap("batch_repeat_interleave", lambda t, repeats: t.repeat_interleave(repeats, dim=0))
    wrap("batch_select_indices", lambda t, indices: t[indices.to(t.device)])
