"""TALAN's decode state (talan/decode_state.py) follows the cache it is tied to: beam search's reorders, a cache
batch repeated or selected, prompt reuse from a deep copy, a chat's second turn, and assisted decoding's crops back
into the last forward (recomputed from its kept input); what it cannot follow (a cache it never saw, a crop further
back or into a long forward, a crop after a reorder, another batch size, a copied model) is refused by name."""

import copy
import inspect

import pytest
import torch
import transformers
from conftest import assert_same_generation, open_gates, tiny_batch, tiny_config, tiny_qwen3

import talan
from talan import decode_state

SITES = ("pre", "mid", "post")
# transformers 5 calls the KV cache `cache` (forward argument and output field); 4.x `past_key_values`
CACHE = "cache" if "cache" in inspect.signature(transformers.Qwen3Model.forward).parameters else "past_key_values"


def _cached_forward(model, ids, cache=None):
    """A forward that fills (or continues) a KV cache: its output and the cache."""
    out = model(ids, use_cache=True, **({} if cache is None else {CACHE: cache}))
    return out, getattr(out, CACHE)


def _prefilled(batch: int = 2, length: int = 6, site: str = "mid"):
    """A patched tiny Qwen3 (gates open), its prompt and the cache of that prompt."""
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(layer=(0, 1), site=site)))
    ids = tiny_batch(batch=batch, length=length)["input_ids"]
    with torch.no_grad():
        _, cache = _cached_forward(model, ids)
    return model, ids, cache


def test_beam_search_carries_the_state_with_the_beams():
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(layer=1)))
    ids = tiny_batch(batch=2, length=6)["input_ids"]
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=6, num_beams=3, do_sample=False,
                  pad_token_id=0)
    assert torch.equal(model.generate(ids, use_cache=True, **kwargs), model.generate(ids, use_cache=False, **kwargs))


def test_continuing_a_cache_talan_never_saw_or_that_was_cropped_raises():
    model = tiny_qwen3()
    ids = tiny_batch(batch=1, length=6)["input_ids"]
    _, cache = _cached_forward(model, ids)
    talan.patch(model, tiny_config(layer=0))
    with pytest.raises(ValueError, match="never saw"):
        _cached_forward(model, ids[:, :1], cache)
    _, cache = _cached_forward(model, ids)
    _cached_forward(model, ids[:, :1], cache)
    cache.crop(-2)  # what assisted decoding does with rejected draft tokens
    with pytest.raises(ValueError, match="crop"):
        _cached_forward(model, ids[:, :1], cache)


@pytest.mark.parametrize("site", SITES)
def test_a_deep_copied_prefix_cache_continues_like_recomputation(site):
    """transformers' prompt reuse: prefill a shared prefix once, then generate each prompt from a deep copy of
    that cache. The copy carries TALAN's state; generating from it leaves the original's state as it was."""
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(site=site, layer=(0, 1))))
    prefix = tiny_batch(batch=1, length=6)["input_ids"]
    with torch.no_grad():  # a cache of tensors that need no gradient, as deepcopy requires
        _, prefix_cache = _cached_forward(model, prefix)
    kwargs = dict(max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True,
                  pad_token_id=0)
    for seed in (2, 3):  # the second prompt copies the prefix cache after the first one's generate
        ids = torch.cat([prefix, tiny_batch(batch=1, length=3, seed=seed)["input_ids"]], dim=1)
        mask = torch.ones_like(ids)
        reused = model.generate(ids, attention_mask=mask, **{CACHE: copy.deepcopy(prefix_cache)}, **kwargs)
        recomputed = model.generate(ids, attention_mask=mask, use_cache=False, **kwargs)
        assert_same_generation(reused, recomputed)


def test_a_second_turn_continues_the_cache_the_first_generate_returned():
    """A chat's next turn: generate again on the conversation so far with the cache the last generate returned
    (it holds all but the last generated token); TALAN continues its memory as if recomputed."""
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(layer=(0, 1))))
    ids = tiny_batch(batch=1, length=6)["input_ids"]
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    first = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    turn = torch.cat([first.sequences, tiny_batch(batch=1, length=3, seed=5)["input_ids"]], dim=1)
    mask = torch.ones_like(turn)
    second = model.generate(turn, attention_mask=mask, **{CACHE: getattr(first, CACHE)}, **kwargs)
    recomputed = model.generate(turn, attention_mask=mask, use_cache=False, **kwargs)
    assert_same_generation(second, recomputed)


def test_a_deep_copied_cache_reorders_its_own_state_not_the_original():
    model, ids, cache = _prefilled()
    copied = copy.deepcopy(cache)
    copied.reorder_cache(torch.tensor([1, 0]))  # what beam search does; the original keeps its order
    step = tiny_batch(batch=2, length=1, seed=4)["input_ids"]
    expected = model(torch.cat([ids, step], dim=1), use_cache=False).logits[:, -1:]
    torch.testing.assert_close(_cached_forward(model, step, cache)[0].logits, expected, rtol=1e-5, atol=1e-5)
    copied_logits = _cached_forward(model, step.flip(0), copied)[0].logits
    torch.testing.assert_close(copied_logits, expected.flip(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("site", SITES)
def test_assisted_decoding_equals_greedy_decoding(site):
    """A draft model's rejected tokens are cropped from the cache; TALAN recomputes its state at the
    cropped length from the last forward's kept input, so the result is greedy decoding's."""
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(site=site, layer=1)))
    assistant = tiny_qwen3(seed=3)  # a different draft model: some draft tokens get rejected (cache crop)
    ids = tiny_batch(batch=1, length=6)["input_ids"]
    crops = []
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, pad_token_id=0)
    expected = model.generate(ids, use_cache=False, **kwargs)
    from transformers import DynamicCache

    real_crop = DynamicCache.crop
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DynamicCache, "crop", lambda self, n: crops.append(n) or real_crop(self, n))
        assisted = model.generate(ids, assistant_model=assistant, **kwargs)
    assert crops, "no draft token was rejected: the test would not exercise a crop"
    assert torch.equal(assisted, expected)


def test_a_crop_into_the_last_forward_continues_exactly_and_further_back_is_refused():
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(layer=(0, 1))))
    ids = tiny_batch(batch=1, length=12)["input_ids"]
    _, cache = _cached_forward(model, ids[:, :6])
    _cached_forward(model, ids[:, 6:10], cache)  # a 4-token forward, then 3 of its tokens are dropped
    cache.crop(-3)  # 10 -> 7 tokens
    logits = _cached_forward(model, ids[:, 7:9], cache)[0].logits
    expected = model(ids[:, :9], use_cache=False).logits[:, 7:]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    cache.crop(-4)  # 9 -> 5 tokens: back past the start of the last forward (at 7 tokens)
    with pytest.raises(ValueError, match="crop"):
        _cached_forward(model, ids[:, 5:6], cache)


@pytest.mark.parametrize("method,argument,rows", [
    ("batch_repeat_interleave", 2, [0, 0, 1, 1]),  # several samples a prompt, from one prefill
    ("batch_select_indices", torch.tensor([1]), [1]),  # the rows kept
])
def test_a_cache_batch_repeated_or_selected_carries_the_state_of_each_row(method, argument, rows):
    model, ids, cache = _prefilled()
    getattr(cache, method)(argument)
    step = tiny_batch(batch=len(rows), length=1, seed=4)["input_ids"]
    expected = model(torch.cat([ids[rows], step], dim=1), use_cache=False).logits[:, -1:]
    torch.testing.assert_close(_cached_forward(model, step, cache)[0].logits, expected, rtol=1e-5, atol=1e-5)


def test_a_crop_back_to_the_start_of_the_last_forward_continues_exactly():
    model, ids, cache = _prefilled(batch=1)
    more = tiny_batch(batch=1, length=4, seed=5)["input_ids"]
    _cached_forward(model, more, cache)  # 6 -> 10 tokens, then all four dropped
    cache.crop(-4)
    step = tiny_batch(batch=1, length=2, seed=6)["input_ids"]
    expected = model(torch.cat([ids, step], dim=1), use_cache=False).logits[:, 6:]
    torch.testing.assert_close(_cached_forward(model, step, cache)[0].logits, expected, rtol=1e-5, atol=1e-5)


def test_a_crop_into_a_forward_longer_than_the_replay_limit_is_refused(monkeypatch):
    monkeypatch.setattr(decode_state, "REPLAY_TOKENS", 3)  # forwards of up to 3 tokens keep their input
    model, ids, cache = _prefilled(batch=1)
    _cached_forward(model, tiny_batch(batch=1, length=3, seed=5)["input_ids"], cache)  # 6 -> 9: kept
    cache.crop(-1)
    _cached_forward(model, tiny_batch(batch=1, length=4, seed=6)["input_ids"], cache)  # 8 -> 12: too long
    cache.crop(-1)
    with pytest.raises(ValueError, match="crop"):
        _cached_forward(model, ids[:, :1], cache)


def test_a_crop_after_a_reorder_is_refused():
    # the kept input of the last forward is in the old row order: replaying it would mix the rows' states
    model, ids, cache = _prefilled()
    _cached_forward(model, tiny_batch(batch=2, length=2, seed=5)["input_ids"], cache)
    cache.reorder_cache(torch.tensor([1, 0]))
    cache.crop(-1)
    with pytest.raises(ValueError, match="crop"):
        _cached_forward(model, ids[:, :1], cache)


def test_continuing_a_cache_with_another_batch_size_is_refused():
    model, ids, cache = _prefilled(site="pre")  # its check runs before the attention's own
    with pytest.raises(ValueError, match="batch size changed from 2 to 1"):
        _cached_forward(model, ids[:1, :1], cache)


def test_a_deep_copy_of_the_model_does_not_continue_the_originals_cache():
    # the copy's blocks may differ (an EMA or reference model): the original's memory is not theirs
    model, ids, cache = _prefilled()
    twin = copy.deepcopy(model)
    with pytest.raises(ValueError, match="never saw"):
        _cached_forward(twin, ids[:, :1], cache)
