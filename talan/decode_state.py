"""The per-sequence slot state ``(S, N)`` of every block, tied to the HF cache object (SPEC §2).

A forward whose cache is empty is a prefill and starts a fresh state; a later forward with the same
cache continues it. The state follows the cache's batch reorders (beam search) and refuses to
continue from a cache it never saw or one whose length changed behind its back (``crop``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch


@dataclass
class CacheState:
    seq_len: int  # cache length the stored states correspond to
    states: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class DecodeStates:
    """Maps live cache objects (weakly) to the TALAN states computed alongside them."""

    def __init__(self):
        self._by_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def lookup(self, cache, layer_idx: int, past_len: int, batch: int):
        """The state to continue from for ``layer_idx``, or None for a prefill (``past_len == 0``)."""
        if past_len == 0:
            return None
        entry = self._by_cache.get(cache)
        if entry is None or layer_idx not in entry.states:
            raise ValueError("this cache holds tokens that TALAN never saw: start generation from an empty cache "
                             "(a new prompt) on the patched model, so TALAN can build its slot memory")
        if entry.seq_len != past_len:
            raise ValueError(f"the cache length changed outside TALAN ({entry.seq_len} -> {past_len} tokens, e.g. "
                             "by crop() in assisted decoding); TALAN's cumulative slot memory cannot be cropped")
        state = entry.states[layer_idx]
        if state[0].shape[0] != batch:
            raise ValueError(f"the batch size changed from {state[0].shape[0]} to {batch} while continuing a cache")
        return state

    def store(self, cache, layer_idx: int, new_len: int, state) -> None:
        entry = self._by_cache.get(cache)
        if entry is None:
            entry = CacheState(seq_len=new_len)
            self._by_cache[cache] = entry
            _follow_batch_changes(cache, weakref.ref(entry))
        entry.seq_len = new_len
        entry.states[layer_idx] = (state[0].detach(), state[1].detach())


def _follow_batch_changes(cache, entry_ref) -> None:
    """Wrap this cache instance's batch-reordering methods so the TALAN state moves with it."""

    def wrap(method_name, transform):
        original = getattr(cache, method_name, None)
        if original is None:
            return

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            entry = entry_ref()
            if entry is not None:
                entry.states = {i: (transform(s, *args, **kwargs), transform(n, *args, **kwargs))
                                for i, (s, n) in entry.states.items()}
            return result

        setattr(cache, method_name, wrapped)

    wrap("reorder_cache", lambda t, beam_idx: t.index_select(0, beam_idx.to(t.device)))
    wrap("batch_repeat_interleave", lambda t, repeats: t.repeat_interleave(repeats, dim=0))
    wrap("batch_select_indices", lambda t, indices: t[indices.to(t.device)])
