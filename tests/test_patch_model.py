"""talan.patch on tiny Qwen3/Llama hosts: identity at init, causality, conditioning, padding, packing,
cached generation (test_decode_state.py: caches continued, copied, reordered and cropped), hidden states,
disabled/unpatch, every axis option, and bad inputs."""

import copy
import inspect
import logging

import pytest
import torch
from conftest import (
    NEEDS_TORCH_2_6,
    TRANSFORMERS_4,
    VOCAB,
    assert_same_generation,
    greedy_kwargs,
    left_padded_prompt,
    open_gates,
    record_calls,
    tiny_batch,
    tiny_config,
    tiny_llama,
    tiny_qwen3,
)

import talan
from talan_kernels.side_path import MIXERS, WRITEBACKS

SITES = ("pre", "mid", "post")
def _hook_counts(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


@pytest.mark.parametrize("factory", [tiny_qwen3, tiny_llama])
@pytest.mark.parametrize("site", SITES)
def test_patched_model_equals_unpatched_at_init_and_after_unpatch(factory, site):
    model = factory()
    batch = tiny_batch()
    ref = model(**batch).logits
    hooks = _hook_counts(model)
    talan.patch(model, tiny_config(site=site, layer=(0, -1)))
    assert torch.equal(model(**batch).logits, ref)
    open_gates(model)
    assert not torch.allclose(model(**batch).logits, ref)
    with talan.disabled(model):
        assert torch.equal(model(**batch).logits, ref)
    talan.unpatch(model)
    assert torch.equal(model(**batch).logits, ref)
    assert _hook_counts(model) == hooks
    assert not any("talan" in name for name, _ in model.named_parameters())


def test_bare_decoder_model_is_supported():
    model = tiny_qwen3().model
    batch = tiny_batch()
    ref = model(**batch).last_hidden_state
    open_gates(talan.patch(model, tiny_config()))
    assert not torch.allclose(model(**batch).last_hidden_state, ref)


@pytest.mark.parametrize("site", SITES)
def test_changing_future_tokens_never_changes_earlier_logits(site):
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(site=site, layer=0)))
    ids = tiny_batch()["input_ids"]
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 7) % VOCAB
    a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_memory_carries_earlier_tokens_when_attention_is_silenced():
    model = tiny_qwen3()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()  # no token mixing through attention at all
    ids = tiny_batch()["input_ids"]
    changed = ids.clone()
    changed[:, 0] = (changed[:, 0] + 1) % VOCAB
    assert torch.equal(model(ids).logits[:, 5:], model(changed).logits[:, 5:])
    open_gates(talan.patch(model, tiny_config(layer=0)))
    assert not torch.allclose(model(ids).logits[:, 5:], model(changed).logits[:, 5:])


@pytest.mark.parametrize("site", SITES)
def test_left_padded_rows_get_the_result_they_get_alone(site):
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(site=site, layer=(0, 2))))
    lengths = [10, 6, 3]
    gen = torch.Generator().manual_seed(4)
    rows = [torch.randint(0, VOCAB, (n,), generator=gen) for n in lengths]
    ids = torch.zeros(3, 10, dtype=torch.long)
    mask = torch.zeros(3, 10, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, 10 - len(row):] = row
        mask[i, 10 - len(row):] = 1
    batched = model(input_ids=ids, attention_mask=mask).logits
    for i, row in enumerate(rows):
        alone = model(input_ids=row[None]).logits[0]
        torch.testing.assert_close(batched[i, 10 - len(row):], alone, rtol=1e-5, atol=1e-5)


@NEEDS_TORCH_2_6  # older: transformers' attention ignores the boundaries
@pytest.mark.parametrize("site", SITES)
def test_packed_sequences_restart_the_memory_at_each_boundary(site):
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(site=site, layer=0)))
    gen = torch.Generator().manual_seed(6)
    seqs = [torch.randint(0, VOCAB, (n,), generator=gen) for n in (5, 7, 4)]
    packed = torch.cat(seqs)[None]
    position_ids = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    out = model(input_ids=packed, position_ids=position_ids, use_cache=False).logits[0]
    start = 0
    for s in seqs:
        alone = model(input_ids=s[None], use_cache=False).logits[0]
        torch.testing.assert_close(out[start:start + len(s)], alone, rtol=1e-5, atol=1e-5)
        start += len(s)


@pytest.mark.parametrize("with_", ["attention_mask", "cache"])
def test_position_ids_split_the_memory_only_without_a_mask_or_a_cache(with_, monkeypatch):
    """transformers' packed-sequence rule (masking_utils.find_packed_sequence_indices): position ids that do not step
    by exactly 1 (a restart, or a jump) start a sequence only in a forward with neither an attention mask nor a cache;
    with either, attention spans them, and so does TALAN's memory."""
    from talan.block import TalanBlock

    resets = record_calls(monkeypatch, TalanBlock, "forward", lambda self, h, active=None, resets=None, state=None:
                          None if resets is None else resets[0].nonzero().flatten().tolist())
    model = talan.patch(tiny_qwen3(), tiny_config(layer=0))
    ids = tiny_batch(batch=1, length=9)["input_ids"]
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 7, 8, 9]])  # a restart at 4, a jump at 6
    model(input_ids=ids, position_ids=position_ids, use_cache=False)
    other = {"attention_mask": torch.ones_like(ids), "use_cache": False} if with_ == "attention_mask" else {
        "use_cache": True}
    model(input_ids=ids, position_ids=position_ids, **other)
    assert resets == [[4, 6], None]


@pytest.mark.parametrize("site", SITES)
def test_a_block_diagonal_4d_mask_restarts_the_memory_like_packed_sequences(site):
    """A [batch, 1, query, key] additive mask that packs sequences (block-diagonal, causal, padding masked): TALAN
    reads the padding and where each sequence starts off it, so every sequence comes out as it does alone. Row 0
    packs 5, 7 and 4 tokens; row 1 is left-padded by 3, then packs 6 and 7."""
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(site=site, layer=0)))
    gen = torch.Generator().manual_seed(6)
    rows = [[torch.randint(0, VOCAB, (n,), generator=gen) for n in lengths] for lengths in ((5, 7, 4), (6, 7))]
    ids = torch.zeros(2, 16, dtype=torch.long)
    segment = torch.full((2, 16), -1)  # -1: padding
    position_ids = torch.zeros(2, 16, dtype=torch.long)
    for r, seqs in enumerate(rows):
        start = 16 - sum(len(s) for s in seqs)
        for k, s in enumerate(seqs):
            ids[r, start:start + len(s)], segment[r, start:start + len(s)] = s, k
            position_ids[r, start:start + len(s)] = torch.arange(len(s))
            start += len(s)
    causal = torch.ones(16, 16, dtype=torch.bool).tril()
    allowed = causal & (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0)
    mask = torch.zeros(2, 1, 16, 16).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
    for r, seqs in enumerate(rows):
        start = 16 - sum(len(s) for s in seqs)
        for s in seqs:
            alone = model(input_ids=s[None], use_cache=False).logits[0]
            torch.testing.assert_close(out[r, start:start + len(s)], alone, rtol=1e-5, atol=1e-5)
            start += len(s)


@pytest.mark.parametrize("factory", [tiny_qwen3, tiny_llama])
@pytest.mark.parametrize("site", SITES)
def test_cached_generation_equals_recomputation(factory, site):
    model = open_gates(talan.patch(factory(), tiny_config(site=site, layer=(0, 1))))
    ids, mask = left_padded_prompt()
    kwargs = greedy_kwargs(mask, max_new_tokens=8)
    cached = model.generate(ids, use_cache=True, **kwargs)
    recomputed = model.generate(ids, use_cache=False, **kwargs)
    assert_same_generation(cached, recomputed)
    # a second prompt on the same model starts a fresh memory: same result as the first time
    again = model.generate(ids, use_cache=True, **kwargs)
    assert torch.equal(again.sequences, cached.sequences)


@pytest.mark.parametrize("ran_before_patch", [False, True], ids=["fresh", "ran-before-patch"])
@pytest.mark.parametrize("site", SITES)
def test_output_hidden_states_show_the_perturbed_state(site, ran_before_patch, request):
    """transformers 5 records hidden states by forward hooks that a model's first forward installs: on a model that
    ran before it was patched they are there first, so the post site's hook must go before them (prepend)."""
    if site == "post" and TRANSFORMERS_4:  # runs, and must fail there: a known limit, not a skipped check
        request.applymarker(pytest.mark.xfail(strict=True, reason="transformers 4.x records a layer's hidden "
                                              "state inside its forward, before the post-site block's hook"))
    model = tiny_qwen3()
    if ran_before_patch:
        model(**tiny_batch(), output_hidden_states=True)
    model = open_gates(talan.patch(model, tiny_config(site=site, layer=1)))
    received = []
    handle = model.model.layers[2].register_forward_pre_hook(lambda mod, args: received.append(args[0]))
    batch = tiny_batch()
    live = model(**batch, output_hidden_states=True).hidden_states
    handle.remove()
    with talan.disabled(model):
        off = model(**batch, output_hidden_states=True).hidden_states
    assert torch.equal(live[1], off[1])  # the input of layer 1 is untouched
    assert not torch.allclose(live[2], off[2])  # the output of layer 1 carries TALAN's perturbation
    assert torch.equal(live[2], received[0])  # and it is exactly what layer 2 received


@pytest.mark.parametrize("option", [("mixer", m) for m in MIXERS] + [("writeback", w) for w in WRITEBACKS]
                         + [("site", s) for s in SITES]
                         + [("trainable", t) for t in ("joint", "freeze_compressor", "writeback_only")])
def test_every_axis_option_trains_with_finite_gradients(option):
    model = tiny_qwen3(train=True)
    for p in model.parameters():
        p.requires_grad_(False)
    talan.patch(model, tiny_config(**dict([option]), layer=(0, 2)))
    params = [p for p in talan.talan_parameters(model) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    batch = tiny_batch()
    losses = []
    for _ in range(3):
        loss = model(**batch, labels=batch["input_ids"]).loss
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] != losses[0]


def test_patch_applies_the_trainability_scope_disabled_nests_and_unpatch_lets_it_patch_again():
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(trainable="writeback_only", layer=(0, 1))))
    trainable = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if ".talan." in n and p.requires_grad}
    assert trainable == {"w_out", "gate"}
    batch = tiny_batch()
    unpatched, patched = tiny_qwen3()(**batch).logits, model(**batch).logits
    with talan.disabled(model):
        with talan.disabled(model):
            pass
        assert torch.equal(model(**batch).logits, unpatched)  # leaving the inner one keeps the outer's state
    assert torch.equal(model(**batch).logits, patched)
    talan.unpatch(model)
    talan.patch(model, tiny_config())  # an unpatched model can be patched again


@pytest.mark.parametrize("site", SITES)
def test_a_deep_copy_of_a_patched_model_runs_its_own_blocks(site):
    """copy.deepcopy(model) (trl's reference model, an EMA copy): the copy's hooks are bound to the copy, so it
    runs its own TALAN blocks; training or unpatching one never changes the other."""
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(site=site, layer=(0, 1))))
    batch = tiny_batch()
    batch["attention_mask"][1, :3] = 0
    unpatched, patched = tiny_qwen3()(**batch).logits, model(**batch).logits
    twin = copy.deepcopy(model)
    assert torch.equal(twin(**batch).logits, patched)
    with torch.no_grad():
        for p in talan.talan_parameters(twin):
            p.mul_(-1.5)
    changed = twin(**batch).logits
    assert not torch.allclose(changed, patched, atol=1e-4)
    assert torch.equal(model(**batch).logits, patched)
    kwargs = dict(attention_mask=batch["attention_mask"], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(twin.generate(batch["input_ids"], **kwargs),
                       twin.generate(batch["input_ids"], use_cache=False, **kwargs))
    talan.unpatch(twin)
    assert torch.equal(twin(**batch).logits, unpatched)
    assert torch.equal(model(**batch).logits, patched)
    assert _hook_counts(twin) == _hook_counts(tiny_qwen3())


def test_a_whole_patched_model_saved_with_torch_save_loads_with_its_blocks(tmp_path):
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(site="mid", layer=(0, 1))))
    batch = tiny_batch()
    torch.save(model, tmp_path / "model.pt")  # pickles the modules, their hooks and the patch state
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    talan.unpatch(loaded)
    assert torch.equal(loaded(**batch).logits, tiny_qwen3()(**batch).logits)


def test_models_wrapped_by_torch_compile_or_ddp_are_patched_saved_and_loaded_through(tmp_path):
    """talan.* takes the model inside torch.compile's OptimizedModule and DistributedDataParallel, as it does
    the one inside a PeftModel."""
    import torch.distributed as dist

    batch = tiny_batch()
    compiled = torch.compile(tiny_qwen3(), backend="eager")
    talan.patch(compiled, tiny_config(layer=(0, 1)))
    assert talan.patching.is_patched(compiled._orig_mod)
    with torch.no_grad():
        for p in talan.talan_parameters(compiled):
            p.add_(0.3)
    try:
        expected = compiled._orig_mod(**batch).logits
        torch.testing.assert_close(compiled(**batch).logits, expected, rtol=1e-6, atol=1e-6)
    finally:
        torch._dynamo.reset()
    talan.save_pretrained(compiled, tmp_path / "talan")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(tiny_qwen3())
        talan.load_pretrained(wrapped, tmp_path / "talan")
        assert torch.equal(wrapped(**batch).logits, expected)
    finally:
        dist.destroy_process_group()


def test_patch_never_changes_requires_grad_of_the_backbone():
    model = tiny_qwen3()
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    talan.patch(model, tiny_config())
    after = {n: p.requires_grad for n, p in model.named_parameters() if "talan" not in n}
    assert after == before
    assert all(p.requires_grad for p in talan.talan_parameters(model))


def _unchanged(model, ref_logits, hooks):
    batch = tiny_batch()
    assert torch.equal(model(**batch).logits, ref_logits)
    assert _hook_counts(model) == hooks
    assert not talan.patching.is_patched(model)


def test_blocks_are_made_on_their_layers_device():
    """A model already on its GPU gets its blocks there, with no .to() after patch; the meta device stands in for the
    GPU here (the model is built there, and patched outside that context)."""
    with torch.device("meta"):
        model = tiny_qwen3()
    talan.patch(model, tiny_config(layer=(0, 2)))
    assert {p.device.type for p in talan.talan_parameters(model)} == {"meta"}


def test_the_pre_site_rewrites_hidden_states_passed_by_keyword():
    """A stack (or a wrapper) may call its layers with ``hidden_states=``: the pre-site block rewrites it there as it
    does the first positional argument."""
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(site="pre", layer=1)))
    layer, h = model.model.layers[1], torch.randn(2, 5, model.config.hidden_size)
    rope = model.model.rotary_emb(h, torch.arange(5).expand(2, -1))

    def run(*args, **kwargs):
        out = layer(*args, **kwargs, position_embeddings=rope)
        return out[0] if isinstance(out, tuple) else out  # a tuple on transformers 4.x

    with talan.disabled(model):
        plain = run(hidden_states=h)
    by_keyword = run(hidden_states=h)
    assert not torch.allclose(by_keyword, plain)
    assert torch.equal(by_keyword, run(h))


def test_bad_inputs_raise_clear_errors_and_leave_the_model_unchanged():
    from transformers import RwkvConfig, RwkvForCausalLM

    from talan.hosts import all_linear_excludes

    recurrent = RwkvForCausalLM(RwkvConfig(num_hidden_layers=2, hidden_size=32, attention_hidden_size=32,
                                           intermediate_size=64, vocab_size=64))
    with pytest.raises(TypeError, match="got RwkvForCausalLM: "):  # recurrent, no attention
        talan.patch(recurrent)
    assert all_linear_excludes(recurrent) == {}  # a LoraConfig for it is built first: patch names the problem then
    with pytest.raises(TypeError, match="Linear"):
        talan.patch(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match="got OptimizedModule wrapping Linear: "):  # the wrapper and what it wraps
        talan.patch(torch.compile(torch.nn.Linear(3, 3), backend="eager"))
    stripped = tiny_qwen3()
    del stripped.model.layers
    with pytest.raises(TypeError, match="Qwen3ForCausalLM has no decoder layer list to patch"):
        talan.patch(stripped)
    model = tiny_qwen3()
    ref, hooks = model(**tiny_batch()).logits, _hook_counts(model)
    for bad in (dict(layer=3), dict(layer=-4), dict(layer=(0, 0.0))):
        with pytest.raises(ValueError, match="layer"):
            talan.patch(model, tiny_config(**bad))
        _unchanged(model, ref, hooks)
    with pytest.raises(TypeError, match="TalanConfig"):
        talan.patch(model, {"layer": 0})
    _unchanged(model, ref, hooks)
    with pytest.raises(ValueError, match="not patched"):
        talan.unpatch(model)
    talan.patch(model, tiny_config())
    hooks_patched = _hook_counts(model)
    with pytest.raises(ValueError, match="already patched"):
        talan.patch(model, tiny_config())
    assert _hook_counts(model) == hooks_patched


def test_masks_of_other_ranks_and_unknown_mask_dicts_are_rejected():
    model = talan.patch(tiny_qwen3(), tiny_config())
    ids = tiny_batch()["input_ids"]
    with pytest.raises(ValueError, match=r"attention_mask of shape \(2, 7\) does not cover 2 x 10 tokens"):
        model(ids, attention_mask=torch.ones(2, 7, dtype=torch.long))  # transformers itself takes it
    with pytest.raises(ValueError, match=r"\[batch, length\] attention_mask .* got a 3-D tensor"):
        model(ids, attention_mask=torch.ones(2, 10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="BlockMask is not supported"):
        model(ids, attention_mask={"full_attention": object()})
    with pytest.raises(ValueError, match="has 8 key positions"):
        model(ids, attention_mask={"full_attention": torch.ones(2, 1, 10, 8, dtype=torch.bool)})


def test_a_mask_dict_gives_its_4d_mask_else_its_recurrent_layers_2d_padding_mask():
    """Qwen4-Exp's generate builds a 4-D mask for its attention beside a 2-D padding mask of this forward's tokens for
    its linear attention: TALAN reads the 4-D one. GLM-5-Next's holds only 2-D ones: TALAN reads that padding."""
    padding = torch.tensor([[0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    four_d = padding[:, None, None, :] & torch.ones(3, 3, dtype=torch.bool).tril()[None, None]
    assert talan.masks.mask_from_dict({"linear_attention": padding, "indexed_attention": four_d}) is four_d
    sliding = four_d & torch.ones(3, 3, dtype=torch.bool).triu(-1)  # a window of 2: the full-attention one is read
    assert talan.masks.mask_from_dict({"sliding_attention": sliding, "full_attention": four_d}) is four_d
    assert talan.masks.mask_from_dict({"indexed_attention": padding, "linear_attention": None}) is padding
    assert talan.masks.mask_from_dict({"linear_attention": None}) is None
    with pytest.raises(ValueError, match="got a 3-D tensor"):
        talan.masks.mask_from_dict({"linear_attention": padding[:, None]})


def test_a_legacy_tuple_cache_is_refused_by_name():
    """transformers reads no tuple of per-layer (key, value) pairs any more (it fails on get_seq_length); TALAN's
    error says what to pass instead, not that continuous batching is unsupported."""
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config()))
    ids, mask = left_padded_prompt()
    cache = model(ids, attention_mask=mask, use_cache=True).past_key_values
    legacy = tuple((layer.keys, layer.values) for layer in cache.layers) if hasattr(cache, "layers") else \
        cache.to_legacy_cache()
    step_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    with pytest.raises(ValueError, match="legacy tuple of per-layer key/value tensors"):
        model(ids[:, :1], attention_mask=step_mask, past_key_values=legacy)


# (past_len, q, kv, window) x the two-way span: none, an image block, a prompt that is all prefix (a prefill)
MASK_SHAPES = [(0, 6, 9, None), (6, 1, 9, None), (0, 6, 6, None), (7, 1, 4, 4), (3, 4, 6, 3)]
MASK_CASES = [pytest.param(*shape, image, id=f"{name}-{'-'.join(map(str, shape))}") for shape in MASK_SHAPES
              for image, name in ((None, "causal"), ((4, 7), "two-way-block"), ((0, 16), "two-way-prefix"))
              if name != "two-way-prefix" or shape[0] == 0]


@pytest.mark.parametrize("opened_rows", [True, False], ids=["torch<2.5", "torch>=2.5"])
@pytest.mark.parametrize("past_len,q,kv,window,image", MASK_CASES)
def test_padding_read_off_4d_masks_also_when_padding_rows_were_opened(past_len, q, kv, window, image, opened_rows):
    """On torch < 2.5 transformers opens a padding query's fully masked sdpa row to every key; such a
    row attends to itself too, yet is padding (it attends to every key, later ones among them). A sliding-window
    static layer's mask has only ``window - 1 + q`` key columns once the window is full, the last one the last
    query's. Gemma 3's image tokens (absolute positions [4, 7) here, after the padding) attend to each other both
    ways: real; so do all of PaliGemma's prefix tokens (every position here), in the unpadded row too."""
    if opened_rows and image == (4, 7) and past_len + q == kv:
        pytest.skip("torch < 2.5 only: in a row without padding whose two-way image block ends at the last key, an "
                    "image token attends to every key, as an opened padding row does (a limitation the README names)")
    pad = torch.tensor([0, 2, 4])[:, None]  # left padding per row
    key = max(past_len + q - kv, 0) + torch.arange(kv)[None, None, :]  # absolute positions of the key columns
    query = past_len + torch.arange(q)[None, :, None]
    causal = key <= query
    if image is not None:
        causal |= (key >= image[0]) & (key < image[1]) & (query >= image[0]) & (query < image[1])
    allowed = causal & (key >= pad[:, :, None])  # [B, Q, KV]
    if window is not None:
        allowed &= key > query - window
    want = query[..., 0] >= pad
    opened = allowed | ~allowed.any(-1, keepdim=True)
    if (past_len == 0 or window == 3) and image != (0, 16):  # a two-way prefix's padding queries see its keys
        assert not torch.equal(opened, allowed)  # padding queries are present and opened
    # additive in the model's dtype (an fp16 model's eager attention: masked is -65504, not -inf)
    additive = [torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
                for dtype in (torch.float32, torch.float16, torch.bfloat16)]
    for mask in (allowed, opened, *additive) if opened_rows else (allowed, *additive):
        got = talan.masks.active_from_4d_mask(mask[:, None], past_len, opened_rows)
        assert torch.equal(got, want)
        if past_len == 0:  # no packed sequences in these masks: every real token sees the real one before it
            assert talan.masks.starts_from_4d_mask(mask[:, None], want) is None
    from_dict = talan.masks.mask_from_dict({"full_attention": allowed[:, None], "sliding_attention": None})
    assert from_dict is not None and torch.equal(from_dict[:, 0], allowed)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])  # boolean and additive 4-D masks
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("factory", [tiny_qwen3, tiny_llama])
def test_static_cache_generation_equals_recomputation(factory, site, attn):
    """With a static cache, generate hands the model the 4-D masks it built from the 2-D one (a dict per
    layer type for Qwen3; Llama has one layer type and gets the tensor); TALAN reads the padding off their
    diagonal."""
    model = open_gates(talan.patch(factory(), tiny_config(site=site, layer=(0, 1))))
    model.set_attn_implementation(attn)
    ids, mask = left_padded_prompt()
    kwargs = greedy_kwargs(mask)
    seen = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kw: seen.append(type(kw.get("attention_mask"))), with_kwargs=True, prepend=True)
    static = model.generate(ids, cache_implementation="static", **kwargs)
    handle.remove()
    mask_kind = dict if factory is tiny_qwen3 else torch.Tensor  # the 4-D path really ran
    assert seen and all(kind is mask_kind for kind in seen)
    recomputed = model.generate(ids, use_cache=False, **kwargs)
    assert_same_generation(static, recomputed)


def test_static_cache_whose_first_row_starts_with_zero_keys_continues_at_its_true_length():
    """transformers 4.x's StaticCache counts its length as the non-zero key rows of batch row 0: left padding
    whose keys are exactly zero there (the pad token's embedding row, zero at init, and no k_proj bias) makes it
    undercount, while generate itself steps by cache_position. TALAN follows cache_position then."""
    model = open_gates(talan.patch(tiny_llama(pad_token_id=0), tiny_config(site="pre", layer=(0, 1))))
    ids, mask = left_padded_prompt()
    ids, mask = ids.flip(0), mask.flip(0)  # the padded row first
    ids[0, :3] = 0  # pad tokens under the padding: their keys are zero in every layer
    kwargs = greedy_kwargs(mask)
    assert_same_generation(model.generate(ids, cache_implementation="static", **kwargs),
                           model.generate(ids, use_cache=False, **kwargs))


@pytest.mark.skipif(TRANSFORMERS_4, reason="transformers 4.x's continuous batching sizes its paged cache from CUDA "
                    "memory, also when given the sizes: it does not run on a CPU")
def test_continuous_batching_is_refused_by_name_and_runs_with_talan_disabled(caplog):
    """generate_batch packs the requests into one row of a PagedAttentionCache, so TALAN cannot tell them apart:
    the forward raises a ValueError naming it (the batching manager logs it and fails the requests); under
    talan.disabled the model generates what the unpatched model does."""
    from transformers import GenerationConfig

    model = tiny_qwen3()
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    config = GenerationConfig(max_new_tokens=4, do_sample=False, eos_token_id=VOCAB + 1, pad_token_id=0)
    # a small paged cache: sized from the free memory it takes seconds to fill on a CPU (the sizes have their own
    # config class only in later 5.x releases)
    from transformers.generation import configuration_utils

    sizes_config = getattr(configuration_utils, "ContinuousBatchingConfig", None)
    sizes = {}
    if sizes_config is not None:  # its page size is block_size up to 5.17, page_size later
        page = "page_size" if "page_size" in inspect.signature(sizes_config).parameters else "block_size"
        sizes = {"continuous_batching_config": sizes_config(**{page: 16}, num_blocks=8, max_batch_tokens=32)}

    def tokens(results):
        return {rid: list(out.generated_tokens) for rid, out in results.items()}

    def generate_batch():
        return tokens(model.generate_batch(inputs=prompts, generation_config=config, **sizes))

    expected = generate_batch()
    assert len(expected) == 2 and all(len(t) == 4 for t in expected.values())
    open_gates(talan.patch(model, tiny_config(layer=1)))
    with caplog.at_level(logging.ERROR):
        failed = generate_batch()
    assert "cannot follow a PagedAttentionCache (continuous batching" in caplog.text
    assert failed == {rid: [] for rid in expected}
    with talan.disabled(model):
        assert generate_batch() == expected


@pytest.mark.slow
@pytest.mark.parametrize("factory", [tiny_qwen3, tiny_llama])  # its 4-D masks: a dict, a tensor
def test_compiled_static_cache_generation_equals_recomputation(factory):
    """What generate does on a GPU with a static cache (it compiles the forward): dynamo traces the hooks
    (one graph break, where the cache length becomes a Python int) and the tokens stay exact."""
    model = open_gates(talan.patch(factory(), tiny_config(layer=(0, 1))))
    ids, mask = left_padded_prompt()
    kwargs = greedy_kwargs(mask, max_new_tokens=5, scores=False)
    expected = model.generate(ids, use_cache=False, **kwargs)
    model.forward = torch.compile(model.forward, backend="eager", dynamic=False)
    try:
        assert torch.equal(model.generate(ids, cache_implementation="static", **kwargs), expected)
    finally:
        del model.forward  # the instance attribute: back to the class's forward
        torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="generate compiles the forward for a static cache on GPUs")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_static_cache_generation_on_a_gpu_compiled_by_generate_equals_dynamic(backend):
    """On a GPU, generate compiles the forward (inductor, CUDA graphs) for a static cache: TALAN's hooks and
    state bookkeeping run inside it and the tokens equal the uncompiled dynamic-cache run's."""
    model = open_gates(talan.patch(tiny_qwen3(), tiny_config(layer=(0, 1), backend=backend))).cuda()
    ids, mask = (t.cuda() for t in left_padded_prompt())
    kwargs = greedy_kwargs(mask, scores=False)
    dynamic = model.generate(ids, **kwargs)
    try:
        static = model.generate(ids, cache_implementation="static", **kwargs)
    finally:
        torch._dynamo.reset()
    assert torch.equal(static, dynamic)
