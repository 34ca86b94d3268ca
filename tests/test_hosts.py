"""The text hosts beyond the paper's Qwen3 and Llama (talan.hosts.FAMILIES): Qwen3-MoE, Qwen2 (Qwen2.5), Mistral,
Ministral, Mixtral, Gemma, SmolLM3, StarCoder2, ERNIE 4.5, Seed-OSS, Hunyuan, Arcee, OLMo, GLM, Helium, Nemotron,
Apertus (its norms named otherwise) and the mixtures of experts gpt-oss, DeepSeek-V3, GLM-4.5 (Glm4Moe), OLMoE,
MiniMax-M2, EXAONE MoE, Qwen2-MoE, PhiMoE and Llama 4 share their decoder layer; Gemma 2/3/4 and GLM-4 norm the
attention output before it joins the residual (Gemma 3n too, in the active one of its four AltUp streams, beside its
LAuReL branch; Kolibri 1.1 too; Ergo then mixes it with the residual in a gate module, whose sum the mid site
replaces), OLMo 2/3, FlexOlmo and EXAONE 4 too with no norm before attention,
Phi-3 drops it out and Granite (3, SWA) scales it; in the hybrids most layers mix tokens otherwise than by self_attn:
by linear attention in Qwen3-Next, Qwen3.5 (dense and MoE) and OLMo-hybrid (whose attention layers are OLMo 2's), by
Mamba in Granite 4 (all scaled) and Bamba, by short convolutions in LFM2 (and its MoE, whose norms are named
otherwise) and LFM3 (which norms the mixer's output), by Mamba beside experts in Jamba; and more of each kind
(FAMILY_NAMES); BLOOM and ZAYA return residual + attention from one module, which the mid site replaces. Every
site patches exactly, generates (dynamic and static cache) as it recomputes, unpatches exactly, writes exactly the
block's output into the stream, and trains with peft. Where a layer has no point between attention and MLP (a
parallel residual: Cohere, Phi, GPT-NeoX, Falcon-H1; one mixer per layer: NemotronH, Mamba, Zamba; the attention
output dropped out inside the layer's forward: OPT, BioGPT, XGLM, Doge, DBRX, GPT-NeoX Japanese; several residual
streams, which the attention output joins each by a weight of its own: the hyper-connections of DeepSeek-V4, HY-V4 and
Qwen4-Exp, whose streams' mean TALAN reads and whose every stream it updates) that holds for the pre and post sites,
and the mid site is refused by name."""

import inspect
import math

import pytest
import torch
import transformers
from conftest import (
    GEMMA3N_RECOMPUTED_4,
    LLAMA4_STATIC_5_17,
    QWEN4EXP_PADDING_5_17,
    TRANSFORMERS_4,
    TRANSFORMERS_5_17,
    TRANSFORMERS_BEFORE_5_25,
    _build,
    assert_same_generation,
    assert_same_loss_and_grads,
    assert_site_writes_the_block_output,
    assert_talan_and_lora_gradients,
    class_prefix,
    greedy_kwargs,
    left_padded_prompt,
    needs_transformers,
    open_gates,
    record_calls,
    tiny_batch,
    tiny_config,
    two_forwards_loss_and_grads,
)
from host_configs import FAMILY_CONFIG
from peft import LoraConfig, get_peft_model

import talan
from talan.hosts import all_linear_excludes, decoder_layers, decoder_stack, layer_layout
from talan.patching import is_patched, talan_blocks

# the families whose decoder stack hands its layers none of its kwargs on transformers 4.57 (so nor the forward's
# inputs): a layer that gradient checkpointing recomputes learns which forward it belongs to otherwise there
NO_KWARGS_ON_4 = ("GraniteMoe", "GraniteMoeShared", "Olmoe", "Qwen2Moe", "Phimoe", "Nemotron")
GRANITE_MOE = ("GraniteMoe", "GraniteMoeShared", "GraniteMoeHybrid", "GraniteMoeSWA")
MOE_FAMILIES = ("Qwen3Moe", "Mixtral", "GptOss", *GRANITE_MOE, "Ernie4_5_Moe", "Olmoe", "MiniMaxM2",
                "FlexOlmo", "Qwen2Moe", "Phimoe", "Jamba")  # with a router loss
HYBRID_FAMILIES = ["Qwen3Next", "Qwen3_5", "Qwen3_5Moe", "GraniteMoeHybrid", "Lfm2", "Lfm2Moe", "OlmoHybrid", "Lfm3",
                   "Bamba", "Jamba", "LaraMini"]
# hybrids whose linear attention (Kimi delta attention, its state in the cache) is the layer's self_attn: layer 0
LINEAR_SELF_ATTN = ["KimiLinear", "BailingHybrid"]
# attention and MLP join the residual together: TALAN acts at a layer's input or output (no mid site); NemotronH's
# layers add one token mixer or one MLP each (no mid site either)
PARALLEL = ("Cohere", "Cohere2", "Cohere2Moe", "Phi", "GPTNeoX", "FalconH1", "GPTJ", "CodeGen", "Falcon", "Falcon-40B",
            "Falcon-RW")
# each layer one token mixer or one MLP (Zamba's shared attention block only feeds a layer's Mamba)
ONE_MIXER = ("NemotronH", "Mamba", "Mamba2", "FalconMamba", "Zamba", "Zamba2")
# the attention output dropped out functionally before it joins the residual
DROPPED_INSIDE = ("OPT", "OPT-350m", "BioGpt", "XGLM", "Doge", "Dbrx", "GPTNeoXJapanese")
# hyper-connections: several residual streams, which attention's output joins each by its own weight
HYPER = ("DeepseekV4", "HYV4", "Qwen4Exp")
NO_MID_SITE = (*PARALLEL, *ONE_MIXER, *DROPPED_INSIDE, *HYPER)
FAMILY_NAMES = ["Qwen3Moe", "Qwen2", "Mistral", "Ministral", "Mixtral", "Gemma", "Gemma2", "Gemma3Text", "Gemma4Text",
                "Gemma3nText", "Gemma4UnifiedText",
                "Phi3", "SmolLM3", "Glm4", "Starcoder2", "Olmo2", "Olmo3", "Granite", "GraniteMoe", "GraniteMoeShared",
                "GptOss", "DeepseekV3", "Glm4Moe", "Ernie4_5", "Ernie4_5_Moe", "SeedOss", "HunYuanDenseV1",
                "HunYuanMoEV1", "Arcee", "Olmoe", "MiniMaxM2", "ExaoneMoe", "Apertus", "Exaone4", "FlexOlmo",
                "GraniteSWA", "GraniteMoeSWA", "Qwen2Moe", "Phimoe", "Olmo", "Glm", "Helium", "Nemotron",
                "Llama4Text", "DeepseekV2", "DeepseekV32", "GlmMoeDsa", "Flint", "AXK1", "AXK2", "Dots3Note",
                "Glm4MoeLite", "Mistral4", "Youtu", "MiniCPM3",
                "MiMoV2Flash", "SolarOpen", "Dots1", "BitNet", "Jais2", "Ministral3", "HyperCLOVAX", "NanoChat", "Cwm",
                "DiffLlama", "Mellum", "Laguna", "HYV3", "AriaText", "Apertus1p5Text", "VaultGemma",
                "Afmoe", "Kolibri1", "StableLm", "GPTNeoX-sequential", "Persimmon", "JetMoe", "GPT2",
                "GPTBigCode", "GPTNeo", "Bloom", "Mpt", "Zaya", "Emu3", "Inkling", "LongcatFlash", "MiniMax", "Beam",
                "Phi4Multimodal", "ModernBertDecoder", "Ergo", "Kolibri1_1", "MiniCPM5Moe", "CTRL",
                "OpenAIGPT", "Moshi", "RecurrentGemma",
                *HYBRID_FAMILIES,
                *LINEAR_SELF_ATTN, *NO_MID_SITE]


# the causal LM of the families named after their text config
CAUSAL_LM = {"Gemma3Text": "Gemma3ForCausalLM", "Gemma4Text": "Gemma4ForCausalLM", "Llama4Text": "Llama4ForCausalLM",
             "GPT2": "GPT2LMHeadModel", "CTRL": "CTRLLMHeadModel", "OpenAIGPT": "OpenAIGPTLMHeadModel",
             "Gemma3nText": "Gemma3nForCausalLM",
             "Gemma4UnifiedText": "Gemma4UnifiedForCausalLM"}


VERSION_MARKS = {"Qwen4Exp": (QWEN4EXP_PADDING_5_17,),
                 "RecurrentGemma": (pytest.mark.skipif(TRANSFORMERS_4, reason="refused on transformers 4.x (test_"
                                                       "recurrent_gemma_is_refused_where_it_takes_no_cache)"),)}


def installed(family: str, *marks):
    """``family`` as a test parameter (with ``marks``), skipped where this transformers lacks it (or runs it wrongly,
    TALAN off too)."""
    name = CAUSAL_LM.get(family, f"{class_prefix(family)}ForCausalLM")
    return pytest.param(family, marks=[needs_transformers(name), *VERSION_MARKS.get(family, ()), *marks])



FAMILIES = [installed(family) for family in FAMILY_NAMES]


def sites(family: str) -> tuple[str, ...]:
    return ("pre", "post") if family in NO_MID_SITE else ("pre", "mid", "post")


def default_site(family: str) -> str:
    """TalanConfig's default site (mid), or post where a layer has no mid site."""
    return "post" if family in NO_MID_SITE else "mid"


def site_cases(families, marks=None) -> list:
    """(family, site) test parameters: every site of each of ``families`` (with its ``marks``, by family)."""
    marks = marks or {}
    return [pytest.param(f, site, id=f"{f}-{site}", marks=installed(f, *marks.get(f, ())).marks)
            for f in families for site in sites(f)]


def tiny_host(family: str, head: str = "ForCausalLM", seed: int = 0, train: bool = False, **overrides):
    """A seeded 3-layer model of ``family`` (d=64, eager attention) with random weights."""
    prefix = class_prefix(family)
    model_cls = getattr(transformers, CAUSAL_LM.get(family, prefix + head) if head == "ForCausalLM" else prefix + head)
    config_cls = getattr(transformers, f"{prefix}TextConfig", None) or getattr(transformers, f"{prefix}Config")
    return _build(config_cls, model_cls, seed, train, {**FAMILY_CONFIG.get(family, {}), **overrides})


# transformers 4.57's OLMoE cannot build a static cache's mask (a missing 'device' argument), TALAN off too
OLMOE_STATIC_4 = pytest.mark.xfail(TRANSFORMERS_4, raises=TypeError, strict=True, reason="transformers 4.57: OLMoE's "
                                   "_prepare_4d_causal_attention_mask_with_cache_position lacks 'device'")


# transformers 4.57's JetMoe generates otherwise with a static cache than recomputed, TALAN off too
JETMOE_STATIC_4 = pytest.mark.xfail(TRANSFORMERS_4, raises=AssertionError, strict=True, reason="transformers 4.57: "
                                    "JetMoe's static-cache generation differs from recomputing, TALAN off too")
# GPT-Neo generates otherwise with a static cache than recomputed (4.57 to 5.24, every seed tried), TALAN off too
GPTNEO_STATIC = pytest.mark.xfail(raises=AssertionError, strict=True, reason="GPT-Neo's static-cache generation "
                                  "differs from recomputing, TALAN off too")
# transformers 4.57's XGLM fails to generate with a static cache (its attention rejects the mask's shape), TALAN off too
XGLM_STATIC_4 = pytest.mark.xfail(TRANSFORMERS_4, raises=ValueError, strict=True, reason="transformers 4.57: XGLM's "
                                  "static cache fails: Incorrect 4D attention_mask shape")
# transformers 4.57's CTRL fails to generate with a static cache (its causal mask is the prompt's, the keys the
# cache's), TALAN off too
CTRL_STATIC_4 = pytest.mark.xfail(TRANSFORMERS_4, raises=RuntimeError, strict=True, reason="transformers 4.57: CTRL's "
                                  "static cache fails: size 12 against 7")
# Inkling fails to generate with a static cache (a tensor of the window's size beside one of the cache's) before
# transformers 5.25, TALAN off too
INKLING_STATIC = pytest.mark.xfail(TRANSFORMERS_BEFORE_5_25, raises=RuntimeError, strict=True, reason="Inkling's "
                                   "static-cache generation fails before 5.25 (size 7 against 12), TALAN off too")
# DeepSeek-V4's static cache has no layers of its compressed attention types, TALAN off too
DEEPSEEK_V4_STATIC = pytest.mark.xfail(raises=KeyError, strict=True, reason="DeepSeek-V4's static cache lacks its "
                                       "compressed attention layer types (KeyError), TALAN off too")
# MiniMax's cached generation drifts from recomputing in its scores (by ~1e-3: its lightning attention), TALAN off too
MINIMAX_SCORES = pytest.mark.xfail(raises=AssertionError, strict=True, reason="MiniMax's cached scores drift ~1e-3 "
                                   "from recomputed ones, TALAN off too")
GENERATE_MARKS = {"Olmoe": (OLMOE_STATIC_4,), "Llama4Text": (LLAMA4_STATIC_5_17,), "JetMoe": (JETMOE_STATIC_4,),
                  "GPTNeo": (GPTNEO_STATIC,), "XGLM": (XGLM_STATIC_4,), "CTRL": (CTRL_STATIC_4,),
                  "Gemma3nText": (GEMMA3N_RECOMPUTED_4,), "Inkling": (INKLING_STATIC,), "MiniMax": (MINIMAX_SCORES,),
                  "DeepseekV4": (DEEPSEEK_V4_STATIC,)}
# DeepSeek-V3.2's sparse attention (GLM-5's, A.X K2's, dots.llm3's) generates otherwise from a cache than recomputed,
# TALAN off too, once its indexer drops keys (4 of them kept here; at some seeds only): generation keeps every key
KEEP_EVERY_KEY = dict.fromkeys(("DeepseekV32", "GlmMoeDsa", "AXK2", "Dots3Note"), {"index_topk": 64})


# the layers TALAN takes where layers 0 and 1 mix tokens alike: a recurrent and an attention layer
TWO_MIXERS = {"RecurrentGemma": (1, 2)}


@pytest.mark.parametrize("family,site", site_cases(FAMILY_NAMES, GENERATE_MARKS))
def test_host_patches_exactly_and_generates_as_it_recomputes(family, site):
    model = tiny_host(family, **KEEP_EVERY_KEY.get(family, {}))
    ids, mask = left_padded_prompt()
    unpatched = model(ids, attention_mask=mask).logits
    talan.patch(model, tiny_config(site=site, layer=TWO_MIXERS.get(family, (0, 1))))
    assert torch.equal(model(ids, attention_mask=mask).logits, unpatched)  # identity at initialisation
    open_gates(model)
    assert not torch.allclose(model(ids, attention_mask=mask).logits, unpatched, atol=1e-4)
    kwargs = greedy_kwargs(mask)
    recomputed = model.generate(ids, use_cache=False, **kwargs)
    for cache in ("dynamic", "static"):  # a static cache hands the model 4-D masks built from the 2-D one
        cached = model.generate(ids, cache_implementation=cache, **kwargs)
        assert_same_generation(cached, recomputed)
    talan.unpatch(model)
    assert torch.equal(model(ids, attention_mask=mask).logits, unpatched)


@pytest.mark.parametrize("site", ["pre", "mid", "post"])
def test_minimax_generates_the_recomputed_tokens_from_a_cache_whose_layer_0_counts_none(site):
    """The MiniMaxCache keeps its lightning-attention layers' states beside its layers, so its layer 0 (lightning
    attention here, as in MiniMax-Text-01) counts no tokens: TALAN counts those of a layer that holds keys, and its
    memory continues in a cached generation, which picks the recomputed tokens (its scores drift by ~1e-3, TALAN off
    too)."""
    model = open_gates(talan.patch(tiny_host("MiniMax"), tiny_config(site=site, layer=(0, 1))))
    ids, mask = left_padded_prompt()
    kwargs = greedy_kwargs(mask)
    cached, recomputed = model.generate(ids, **kwargs), model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, recomputed.sequences)


@pytest.mark.parametrize("family,site", site_cases(["Qwen3", "Llama", *FAMILY_NAMES]))
def test_each_site_writes_the_block_output_where_analyze_reads_the_stream(family, site):
    """At every site the residual stream right after TALAN's write (where `talan analyze` probes it) is exactly
    what the block makes of the stream it probes with TALAN disabled. For the mid site that is the layer's
    ``residual + attention`` as it joins the residual: after the attention output's own norm, or Phi-3's (and
    GPT-NeoX's) dropout (here at p = 0.5, in train mode); hooking the attention itself would pass the block's write
    through that norm or dropout. In a hybrid, layer 0 mixes tokens otherwise than by self_attn, as layer 1 does (in
    RecurrentGemma, layer 1 by its recurrent block, layer 2 by attention)."""
    for layer in TWO_MIXERS.get(family, (0, 1) if family in (*HYBRID_FAMILIES, *LINEAR_SELF_ATTN) else (0,)):
        _assert_block_output_where_analyze_reads(family, site, layer)


# the families whose attention output is dropped out before it joins the residual (the mid site hooks the dropout)
ATTENTION_DROPOUT = {"Phi3": {"resid_pdrop": 0.5}, "Phi4Multimodal": {"resid_pdrop": 0.5},
                     "GPTNeoX-sequential": {"hidden_dropout": 0.5},
                     "Bloom": {"hidden_dropout": 0.5},  # Bloom's attention drops out, then adds the residual
                     "Emu3": {"attention_dropout": 0.5},  # Emu3's one dropout module, after attention and MLP
                     "CTRL": {"resid_pdrop": 0.5},
                     "OpenAIGPT": {"resid_pdrop": 0.5}}  # GPT-1's attention drops its output out itself


def _assert_block_output_where_analyze_reads(family: str, site: str, layer: int):
    ids, mask = left_padded_prompt()
    assert_site_writes_the_block_output(tiny_host(family, train=True, **ATTENTION_DROPOUT.get(family, {})),
                                        {"input_ids": ids, "attention_mask": mask}, site, layer)


SLIDING = {
    "Mistral": {"sliding_window": 4},  # every layer slides: generate hands the model one 4-D mask tensor
    # layers 1 and 2 slide, layer 0 attends fully: a dict of masks per layer type
    "Qwen2": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
    "Gemma2": {"sliding_window": 4},  # sliding and full layers alternate, starting with a sliding one
    "Gemma3Text": {"sliding_window": 4},  # five sliding layers to a full one: all three layers slide
    "Gemma4Text": {"sliding_window": 4},  # layer 0 slides, layers 1 and 2 (sharing 1's keys) attend fully
    "Gemma4UnifiedText": {"sliding_window": 4},  # as Gemma 4's
}


@pytest.mark.parametrize("family", map(installed, SLIDING))
def test_sliding_window_caches_generate_as_recomputed_past_the_window(family):
    """Past the window a static sliding layer's mask covers only the window (Mistral: every layer, so generate
    hands the model that tensor): TALAN reads the padding at the query's own column of it."""
    model = open_gates(talan.patch(tiny_host(family, **SLIDING[family]), tiny_config(layer=(0, 1))))
    ids, mask = left_padded_prompt()
    kwargs = greedy_kwargs(mask)
    recomputed = model.generate(ids, use_cache=False, **kwargs)
    for cache in ("dynamic", "static"):
        assert_same_generation(model.generate(ids, cache_implementation=cache, **kwargs), recomputed)


# transformers 5.17's GraniteMoe (and -Shared, -Hybrid) collects no router logits, and then fails in its own aux-loss
# line, with TALAN off too
GRANITE_MOE_5_17 = pytest.mark.xfail(TRANSFORMERS_5_17, raises=AttributeError, strict=True, reason="transformers "
                                     "5.17's GraniteMoe returns no router logits: 'int' object has no attribute 'to'")


TRAINING_MARKS = dict.fromkeys(GRANITE_MOE, (GRANITE_MOE_5_17,))


# the modules a short text batch never runs (Phi-4-multimodal's image and audio towers; DeepSeek-V4's heavily
# compressed attention's compressor in layer 1, which pools 128 tokens into a key): no LoRA there in a text test
IDLE_ON_TEXT = {"Phi4Multimodal": r".*\.embed_tokens_extend\..*",
                "DeepseekV4": r".*\.layers\.1\.self_attn\.compressor\..*"}


@pytest.mark.parametrize("family", [installed(f, *TRAINING_MARKS.get(f, ())) for f in FAMILY_NAMES])
def test_host_trains_talan_and_lora_together(family):
    base = tiny_host(family, train=True)  # LoRA off the modules it cannot train there (Llama 4's router, ...)
    excludes = [*all_linear_excludes(base).values(), *([IDLE_ON_TEXT[family]] if family in IDLE_ON_TEXT else [])]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                      exclude_modules="|".join(f"(?:{pattern})" for pattern in excludes) or None)
    model = get_peft_model(base, lora)
    talan.patch(model, tiny_config(layer=1, site=default_site(family)))
    batch = tiny_batch(batch=2, length=9)
    extra = {"output_router_logits": True} if family in MOE_FAMILIES else {}  # adds the MoE balancing loss
    loss = model(**batch, labels=batch["input_ids"], **extra).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert_talan_and_lora_gradients(model)


def _two_batches_loss_and_grads(family: str, checkpointing: bool, site: str = "mid"):
    """Loss and gradients of two forwards (each with its own padding) then one backward."""
    batches = []
    for seed in range(2):
        batch = tiny_batch(seed=seed + 1)
        batch["attention_mask"][seed % 2, : 2 + 3 * seed] = 0
        batches.append({**batch, "labels": batch["input_ids"]})
    return two_forwards_loss_and_grads(tiny_host(family, train=True), batches, site, checkpointing)


@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")
@pytest.mark.parametrize("family", ["Gemma2", "Gemma3Text", "Phi3", "Glm4", "Olmo2", "Granite",
                                    *map(installed, ["Gemma4Text", "Gemma3nText", "Inkling", "MiniMax", "Beam",
                                                     *HYBRID_FAMILIES, *LINEAR_SELF_ATTN, *NO_KWARGS_ON_4, "Bloom",
                                                     "Mpt", "RecurrentGemma"])])
def test_gradient_checkpointing_recomputes_a_mid_site_with_its_own_forwards_kwargs(family):
    """Where the mid site hooks a norm (or dropout) after self_attn, the recompute in the backward reads the
    kwargs its own self_attn got, and in a hybrid's linear-attention layer (layer 0) those its linear attention
    got (transformers 5.x) or else its layer call (4.x hands the linear attention none, and re-runs the layer's
    hooks in the recompute): so each forward's padding, and the same loss and gradients as without
    checkpointing."""
    assert_same_loss_and_grads(_two_batches_loss_and_grads(family, False), _two_batches_loss_and_grads(family, True))


@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")
@pytest.mark.parametrize("site", ["pre", "post"])
@pytest.mark.parametrize("family", map(installed, [*NO_KWARGS_ON_4, "Jamba", "Bloom", "Mpt", "HYV4", "Qwen4Exp"]))
def test_gradient_checkpointing_recomputes_each_site_with_its_own_forwards_inputs(family, site):
    """Where the decoder stack hands its layers none of its kwargs (these families on transformers 4.57), a layer
    recomputed in the backward still reads its own forward's padding at the other sites too; and a layer of several
    residual streams (hyper-connections) recomputes the same mean and the same update of every stream."""
    assert_same_loss_and_grads(_two_batches_loss_and_grads(family, False, site),
                               _two_batches_loss_and_grads(family, True, site))


@pytest.mark.parametrize("site", ["pre", "mid", "post"])
@pytest.mark.parametrize("family", map(installed, [*HYBRID_FAMILIES, *TWO_MIXERS]))
def test_a_layer_without_self_attn_restarts_the_memory_where_packed_sequences_do(family, site, monkeypatch):
    """A hybrid's other token mixer (linear attention, Mamba, convolution) gets no position ids (layer 0), its
    self_attn does (layer 1): at the mid site the block of each reads the same packed-sequence starts, those of the
    position ids the model was given. RecurrentGemma's recurrent block (layer 1) and its attention (layer 2) are
    both its layers' temporal_block."""
    from talan.block import TalanBlock

    resets = record_calls(monkeypatch, TalanBlock, "forward", lambda block, hidden, active, starts, state: starts)
    two = TWO_MIXERS.get(family, (0, 1))
    model = open_gates(talan.patch(tiny_host(family), tiny_config(site=site, layer=two)))
    layout = layer_layout(model)
    layers = [decoder_layers(decoder_stack(model))[i] for i in two]
    if family in TWO_MIXERS:
        mixers = [type(getattr(layer, layout.of(layer).token_mixer)).__name__ for layer in layers]
        assert ["Attention" in name for name in mixers] == [False, True], mixers
    else:
        assert [layout.of(layer).token_mixer == "self_attn" for layer in layers] == [False, True]
    position_ids = torch.cat([torch.arange(n) for n in (5, 7, 4)])[None]
    model(input_ids=tiny_batch(batch=1, length=16)["input_ids"], position_ids=position_ids, use_cache=False)
    expected = torch.zeros(1, 16, dtype=torch.bool)
    expected[0, [5, 12]] = True
    assert len(resets) == 2 and all(torch.equal(starts, expected) for starts in resets)


PARALLEL_CASES = [pytest.param(f, {}, id=f, marks=installed(f).marks) for f in NO_MID_SITE] + [
    pytest.param("StableLm", {"use_parallel_residual": True}, id="StableLm-parallel")]


@pytest.mark.parametrize("family,overrides", PARALLEL_CASES)
def test_a_layer_without_a_mid_point_refuses_the_mid_site_by_name_and_stays_unpatched(family, overrides):
    model = tiny_host(family, **overrides)
    ids, mask = left_padded_prompt()
    unpatched = model(ids, attention_mask=mask).logits
    why = ("one token mixer or one MLP" if family in ONE_MIXER else "inside their forward" if family in DROPPED_INSIDE
           else "hyper-connections" if family in HYPER else "parallel residual")
    with pytest.raises(ValueError, match=rf"^site: .*{why}.*site='pre' or site='post'"):
        talan.patch(model, tiny_config(site="mid", layer=(0, 1)))
    assert not is_patched(model) and not any(hasattr(layer, "talan") for layer in decoder_layers(decoder_stack(model)))
    assert torch.equal(model(ids, attention_mask=mask).logits, unpatched)


@pytest.mark.parametrize("site", ["pre", "post"])
@pytest.mark.parametrize("family", map(installed, HYPER))
def test_hyper_connections_read_the_streams_mean_and_add_the_update_to_every_stream(family, site):
    """Where a layer keeps several residual streams (hyper-connections; Qwen4-Exp's flattened into one tensor), the
    block reads their mean, and the same update (the block's output minus that mean) joins every stream: so it stays
    in the streams' mean through every later mixing. Padding gets none."""
    from talan.analyze import _forward, _site_module

    model = open_gates(talan.patch(tiny_host(family), tiny_config(site=site, layer=1)))
    probe = {1: _site_module(decoder_layers(decoder_stack(model))[1], site, layer_layout(model))}
    ids, mask = left_padded_prompt()
    batch = {"input_ids": ids, "attention_mask": mask}
    with talan.disabled(model):
        off = _forward(model, batch, probe)[1]  # the layer's input or output, every stream of it
    on = _forward(model, batch, probe)[1]
    off, on = (t.unflatten(-1, (4, 64)) if t.dim() == 3 else t for t in (off, on))  # [B, T, 4 streams, d]
    mean = off.mean(dim=2)
    with torch.no_grad():
        written, _ = talan_blocks(model)[1](mean, mask.bool(), None, None)
    update = on - off
    for k in range(4):
        torch.testing.assert_close(update[:, :, k], written - mean, rtol=0, atol=1e-5)
    assert update[mask.bool()].abs().amax(dim=-1).min() > 1e-3  # every active token's streams changed
    assert torch.equal(on[~mask.bool()], off[~mask.bool()])


# transformers 4.57's LFM2 cannot beam-search (an IndexError in its own cache), TALAN off too
LFM2_BEAMS_4 = pytest.mark.xfail(TRANSFORMERS_4, raises=IndexError, strict=True, reason="transformers 4.57: LFM2's "
                                 "beam search fails with TALAN off too")


# transformers 4.57's Mamba 2 beam-searches otherwise from its cache than recomputed, TALAN off too
MAMBA2_BEAMS_4 = pytest.mark.xfail(TRANSFORMERS_4, raises=AssertionError, strict=True, reason="transformers 4.57: "
                                   "Mamba 2's cached beams differ from recomputed ones, TALAN off too")
BEAM_MARKS = {"Lfm2": (LFM2_BEAMS_4,), "Mamba2": (MAMBA2_BEAMS_4,)}


@pytest.mark.parametrize("family", [installed(f, *BEAM_MARKS.get(f, ()))
                                    for f in (*HYBRID_FAMILIES, *LINEAR_SELF_ATTN, "FalconH1", *ONE_MIXER,
                                              "Qwen4Exp")])
def test_beam_search_on_a_hybrid_carries_the_state_with_the_beams(family):
    """A hybrid's cache holds recurrent or convolution states beside keys and values (in a cache class of its own
    on transformers 4.x): beam search reorders it, and TALAN's state moves with it, so the cached beams are the
    recomputed ones (at the post site in Falcon-H1, NemotronH and the state-space models, which have no mid site)."""
    model = open_gates(talan.patch(tiny_host(family), tiny_config(site=default_site(family), layer=(0, 1))))
    ids, mask = left_padded_prompt()
    kwargs = dict(attention_mask=mask, max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kwargs), model.generate(ids, use_cache=False, **kwargs))


# The task heads peft fine-tunes over the same decoder stack: (class suffix, peft task_type, labels).
TASK_HEADS = {
    "ForSequenceClassification": ("SEQ_CLS", lambda ids: {"labels": torch.tensor([0, 1])}),
    "ForTokenClassification": ("TOKEN_CLS", lambda ids: {"labels": ids % 2}),
    "ForQuestionAnswering": ("QUESTION_ANS", lambda ids: {"start_positions": torch.tensor([1, 4]),
                                                          "end_positions": torch.tensor([3, 6])}),
}
TASK_HEADS["TextForSequenceClassification"] = TASK_HEADS["ForSequenceClassification"]  # Qwen3.5's, over text alone
HEAD_CASES = ([(family, head) for family in ("Qwen3", "Llama") for head in TASK_HEADS if head.startswith("For")]
              + [(family, head) for family in FAMILY_NAMES  # where this transformers has them
                 for head in ("ForSequenceClassification", "TextForSequenceClassification")
                 if hasattr(transformers, f"{family}{head}")])


def _task_model(family: str, head: str, seed: int = 0, train: bool = False):
    return tiny_host(family, head, seed, train, num_labels=2, pad_token_id=0)


def _head_outputs(out) -> torch.Tensor:
    return torch.cat([out.start_logits, out.end_logits], -1) if hasattr(out, "start_logits") else out.logits


@pytest.mark.parametrize("family,head", HEAD_CASES, ids=[f + h.replace("For", "") for f, h in HEAD_CASES])
def test_task_heads_patch_train_with_peft_save_and_load(family, head, tmp_path):
    """Sequence/token classification and extractive QA: the same hooks on the stack under the head. Exact at
    initialisation and after unpatch; with the gates open TALAN changes the head's outputs; trains beside a
    peft adapter of that task type; its checkpoint, loaded into the unpatched model, reproduces the outputs."""
    batch = tiny_batch(batch=2, length=9)
    batch["input_ids"] = batch["input_ids"].clamp(min=1)  # the pad token (0) only where padding is
    batch["input_ids"][0, -2:] = 0  # right padding in the first row: the classifier reads its last real token
    batch["attention_mask"][0, -2:] = 0
    model = _task_model(family, head)
    with torch.no_grad():
        unpatched = _head_outputs(model(**batch))
        talan.patch(model, tiny_config(layer=(0, 1), site=default_site(family)))
        assert torch.equal(_head_outputs(model(**batch)), unpatched)
        open_gates(model)
        patched = _head_outputs(model(**batch))
    assert not torch.allclose(patched, unpatched, atol=1e-4)
    talan.save_pretrained(model, tmp_path)
    with torch.no_grad():
        talan.unpatch(model)
        assert torch.equal(_head_outputs(model(**batch)), unpatched)
        torch.testing.assert_close(_head_outputs(talan.load_pretrained(model, tmp_path)(**batch)), patched,
                                   rtol=0, atol=0)

    task_type, labels = TASK_HEADS[head]
    trained = get_peft_model(_task_model(family, head, train=True),
                             LoraConfig(task_type=task_type, r=4, lora_alpha=8,  # "all-linear" takes the heads too
                                        # Phi-3: qkv_proj, o_proj; GPT-NeoX, Persimmon, Falcon: query_key_value; JetMoe:
                                        # kv_proj (its queries and outputs are experts); GPT-2, GPTBigCode: c_attn;
                                        # GPT-Neo: attn.attention.q_proj, ...; CTRL: multi_head_attention.Wq, ...
                                        target_modules=r".*\.((self_attn|self_attention|attn|attn\.attention)\.\w+_proj|"
                                                       r"(self_attn|self_attention|attention)\.query_key_value|attn\.c_attn|"
                                                       r"multi_head_attention\.W[qkv])"))
    open_gates(talan.patch(trained, tiny_config(layer=1, site=default_site(family))))
    loss = trained(**batch, **labels(batch["input_ids"])).loss
    loss.backward()
    assert torch.isfinite(loss)
    talan_grads = [p.grad for p in talan.talan_parameters(trained)]
    assert all(g is not None and torch.isfinite(g).all() for g in talan_grads)
    assert any(g.abs().sum() > 0 for g in talan_grads)


@needs_transformers("MoshiForConditionalGeneration")
def test_moshis_speech_model_is_refused_by_name_and_its_text_model_is_the_host():
    """Moshi's speech model sums text and audio-codebook embeddings into its temporal transformer, one step per audio
    frame, and generates each frame's codes with a depth decoder: no host (TypeError naming it); its text model,
    MoshiForCausalLM (the speech model's ``decoder``), is (test_host_patches_exactly_and_generates_...)."""
    with torch.device("meta"):  # its default audio encoder (Mimi) and depth decoder hold 0.8B weights
        speech = tiny_host("Moshi", head="ForConditionalGeneration", audio_vocab_size=32)
    with pytest.raises(TypeError, match=r"got MoshiForConditionalGeneration: a speech model .* patch its text model, "
                                        r"\.decoder \(MoshiForCausalLM\)"):
        talan.patch(speech)
    assert decoder_stack(speech.decoder) is speech.decoder.model and not is_patched(speech.decoder)


@pytest.mark.skipif(not TRANSFORMERS_4, reason="transformers 5 hands RecurrentGemma's stack a cache object")
def test_recurrent_gemma_is_refused_where_it_takes_no_cache():
    """transformers 4.x's RecurrentGemma keeps its decode state in its own modules and takes no cache object, so TALAN
    could not carry its slot memory from one step to the next (tried: each decode step's logits 0.7 off recomputing
    the sequence): a TypeError that says so, the model left unpatched."""
    model = tiny_host("RecurrentGemma")
    modules = dict(model.named_modules())
    with pytest.raises(TypeError, match="RecurrentGemmaForCausalLM keeps its decode state in its own modules"):
        talan.patch(model, tiny_config())
    assert dict(model.named_modules()) == modules


@pytest.mark.skipif(TRANSFORMERS_4, reason="transformers 4.57's MambaCache says nothing of the tokens it took in")
@pytest.mark.parametrize("family", map(installed, ["Mamba", "Mamba2"]))
def test_a_state_space_cache_continues_where_talan_left_it_and_is_refused_from_elsewhere(family):
    """A state-space model's cache counts no tokens: a decode step without a mask (as generate sends them)
    continues TALAN's memory from the length it stored, exactly as the whole sequence recomputed; a cache filled
    with TALAN disabled is refused by name, not taken for a fresh start."""
    model = open_gates(talan.patch(tiny_host(family), tiny_config(site="post", layer=(0, 1))))
    ids = tiny_batch(batch=2, length=9)["input_ids"]
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "cache_params"  # 5.2x: cache
    with torch.no_grad():
        whole = model(ids).logits[:, -1]
        out = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], use_cache=True, **{name: getattr(out, name)}).logits[:, -1]
        torch.testing.assert_close(step, whole, rtol=1e-5, atol=1e-5)
        with talan.disabled(model):
            foreign = getattr(model(ids[:, :-1], use_cache=True), name)
        with pytest.raises(ValueError, match="tokens that TALAN never saw"):
            model(ids[:, -1:], use_cache=True, **{name: foreign})


def test_all_linear_excludes_names_a_family_module_only_where_the_model_has_it():
    # peft warns of an exclude_modules pattern that matches no module: a Jamba whose layers all attend has no Mamba,
    # so no dt_proj to exclude
    assert all_linear_excludes(tiny_host("Jamba")) == {"exclude_modules": r".*\.dt_proj"}
    assert all_linear_excludes(tiny_host("Jamba", attn_layer_period=1, attn_layer_offset=0)) == {}


@pytest.mark.parametrize("family", ["Qwen3", *map(installed, ["Gemma3nText", "DeepseekV4", "Qwen4Exp"])])
def test_analyze_measures_talans_stream_in_every_layer_and_the_stacks_output_last(family):
    """`talan analyze`'s per-layer rows (adapter on, TALAN off) are the norms of each later layer's output and, last,
    of the decoder stack's output after its final norm; where layers hold several residual streams (Gemma 3n's four
    AltUp streams, whose hidden_states hold all four and no normed state; hyper-connections), of TALAN's stream: the
    active one, or their mean."""
    from talan import analyze
    from talan.data import CharTokenizer, collate

    base = tiny_host(family)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                            **all_linear_excludes(base)))
    open_gates(talan.patch(model, tiny_config(site=default_site(family), layer=1)))
    examples = [{"prompt": "abc" * (i + 1), "completion": "xyz"} for i in range(3)]
    tokenizer = CharTokenizer()
    result = analyze.measure(model, tokenizer, examples)
    batch = collate(examples, tokenizer)
    active = batch["attention_mask"].bool()
    stack, layers = decoder_stack(model), decoder_layers(decoder_stack(model))
    outputs = {}

    def keep(name):
        def hook(module, args, output):
            outputs[name] = analyze._tensor(output)  # a tuple's, or the stack's ModelOutput's, first tensor
        return hook

    handles = [layers[2].register_forward_hook(keep("layer 2")), stack.register_forward_hook(keep("stack"))]
    with torch.no_grad(), talan.disabled(model):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for handle in handles:
        handle.remove()
    streams = {"Gemma3nText": lambda t: t[1],  # altup_active_idx
               "DeepseekV4": lambda t: t.mean(dim=2), "Qwen4Exp": lambda t: t.unflatten(-1, (4, 64)).mean(dim=2)}
    layer_2 = streams.get(family, lambda t: t)(outputs["layer 2"])
    rows = result["per_layer"]
    assert [row["name"] for row in rows] == ["layer 1 output", "layer 2 output", "after the final norm"]
    for row, state in zip(rows[1:], (layer_2, outputs["stack"])):
        assert row["hidden_norm"] == pytest.approx(float(state[active].norm(dim=-1).mean()), rel=1e-5)
        assert math.isfinite(row["talan_diff_norm"]) and row["talan_diff_norm"] > 0
