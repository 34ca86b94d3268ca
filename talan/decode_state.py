"""The per-sequence slot state ``(S, N)`` of every block, tied to the HF cache object (SPEC §2).

A forward whose cache is empty is a prefill and starts a fresh state; a later forward with the same
cache continues it. The state follows the cache's batch reorders (beam search) and refuses to
continue from a cache it never saw or one whose length changed behind its back (``crop``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch


@dataclass
class LayerState:
    seq_len: int  # the cache length this state corresponds to
    slot_sums: torch.Tensor  # S [B, M] fp32
    value_sums: torch.Tensor  # N [B, M, R] fp32


class DecodeStates:
    """Maps live cache objects (weakly) to the TALAN state of each block computed alongside them."""

    def __init__(self):
        self._by_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def lookup(self, cache, layer_idx: int, past_len: int, batch: int):
        """The ``(S, N)`` to continue from for ``layer_idx``, or None for a prefill (``past_len == 0``)."""
        if past_len == 0:
            return None
        entry = self._by_cache.get(cache, {}).get(layer_idx)
        if entry is None:
            raise ValueError("this cache holds tokens that TALAN never saw: start generation from an empty cache "
                             "(a new prompt) on the patched model, so TALAN can build its slot memory")
        if entry.seq_len != past_len:
            raise ValueError(f"the cache length changed outside TALAN ({entry.seq_len} -> {past_len} tokens, e.g. "
                             "by crop() in assisted decoding); TALAN's cumulative slot memory cannot be cropped")
        if entry.slot_sums.shape[0] != batch:
            raise ValueError(f"the batch size changed from {entry.slot_sums.shape[0]} to {batch} while continuing "
                             "a cache")
        return entry.slot_sums, entry.value_sums

    def store(self, cache, layer_idx: int, new_len: int, state) -> None:
        layers = self._by_cache.get(cache)
        if layers is None:
            layers = {}
            self._by_cache[cache] = layers
            _follow_batch_changes(cache, weakref.ref(self), layers)
        layers[layer_idx] = LayerState(new_len, state[0].detach(), state[1].detach())


def _follow_batch_changes(cache, owner_ref, layers: dict) -> None:
    """Wrap this cache instance's batch-reordering methods so the TALAN states move with it."""

    def wrap(method_name, transform):
        original = getattr(cache, method_name, None)
        if original is None:
            return

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            if owner_ref() is not None:
                for entry in layers.values():
                    entry.slot_sums = transform(entry.slot_sums, *args, **kwargs)
                    entry.value_sums = transform(entry.value_sums, *args, **kwargs)
            return result

        setattr(cache, method_name, wrapped)

    wrap("reorder_cache", lambda t, beam_idx: t.index_select(0, beam_idx.to(t.device)))
    wrap("batch_repeat_interleave", lambda t, repeats: t.repeat_interleave(repeats, dim=0))
    wrap("batch_select_indices", lambda t, indices: t[indices.to(t.device)])
