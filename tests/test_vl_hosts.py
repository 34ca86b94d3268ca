"""Vision-language hosts: Qwen2-VL, Qwen2.5-VL, Qwen3-VL (and its MoE), Qwen3.5 (and its MoE; a hybrid text decoder
whose linear-attention layers hold a recurrent state), Gemma 3 (4B on), Gemma 4, Molmo 2 and Chameleon (pre-norm,
and post-norm with norm_after or swin_norm), GLM-4.1V, GLM-4.5V, GLM-OCR, dots.llm3 and GLM-4.6V (over GLM-4.1V's
text decoder), and LLaVA, LLaVA-NeXT, LLaVA-OneVision, LLaVA-NeXT-Video, VipLLaVA, LFM2-VL, Mistral 3, InternVL,
SmolVLM, Idefics 2 and 3, PaliGemma, Llama 4 and the later wrappers of vl_configs.CONFIGS (Aya Vision, Ovis2,
Ovis2.5, ...) over a supported text decoder, and the audio-language Qwen2-Audio and Voxtral (their audio tokens
stand where the image is; Gemma 3n's too, whose vision tower needs timm), and Mllama (Llama 3.2 Vision: its text
decoder reads the image features in gated cross-attention layers, never as tokens; Idefics 1 alike, between its
layers), Qwen4-Exp, GLM-5-Next and HY-V4-VL (over hyper-connection decoders: the pre and post sites, as over OPT in
BLIP-2 and InstructBLIP, whose Q-Former's query tokens stand where the image is, and Kosmos-2.5's XGLM-like layers).
Their text decoder sits beside the vision tower (``model.language_model``, or ``text_model``; a whole causal LM
there in Llama 4 and transformers 4.x's audio models); its attention spans text and image tokens alike (Gemma 3's
and 4's image tokens attend to each other both ways), so TALAN's memory takes in the image tokens as it takes in any
other. With an image in a left-padded prompt: every site is exact at init and after unpatch, generates (dynamic and
static cache) as it recomputes, writes exactly the block's output into the stream, trains with peft LoRA on the
language model, and saves and reloads."""

import pytest
import torch
import transformers
from conftest import (
    GEMMA3N_RECOMPUTED_4,
    LLAMA4_STATIC_5_17,
    QWEN4EXP_PADDING_5_17,
    TORCH_BEFORE_2_6,
    TRANSFORMERS_4,
    TRANSFORMERS_5_17,
    TRANSFORMERS_BEFORE_5_25,
    assert_same_generation,
    assert_same_loss_and_grads,
    assert_site_writes_the_block_output,
    assert_talan_and_lora_gradients,
    greedy_kwargs,
    needs_transformers,
    open_gates,
    tiny_config,
    two_forwards_loss_and_grads,
)
from peft import LoraConfig, get_peft_model
from vl_models import IMAGE, MINICPM, TEXT, VISION, class_name, image_prompt, tiny_vl

import talan
from talan.hosts import decoder_stack
from talan.patching import is_patched

# The vision-language models with their own text decoder.
NATIVE = ["Qwen2VL", "Qwen2_5_VL", "Qwen3VL", "Qwen3VLMoe", "Qwen3_5", "Qwen3_5Moe", "Gemma3", "Gemma4", "Glm4v",
          "Glm4vMoe", "GlmOcr", "Dots3Note", "Ernie4_5_VLMoe", "HunYuanVL", "PaddleOCRVL",
          "Granite4Vision", "Step3p7", "Qwen2_5OmniThinker", "Qwen3OmniMoeThinker", "Mllama", "Cosmos3Edge",
          "MiniMaxM3VL", "CohereCompass", "MuseGlimmer", "MistralLarge4", "GraniteDocling", "MuseSpark", "Apertus1p5",
          "DeepseekOcr2", "UnlimitedOcr", "Gemma3n", "Gemma4Unified", "Molmo2", "Molmo2-norm_after", "Chameleon",
          "Chameleon-swin", "Qwen4Exp", "HYV4VL", "Glm5Next", "Idefics", "Kosmos2_5"]
# transformers 4.57 on torch < 2.6 cannot run Gemma 3 with images (the make test-old-torch venv)
GEMMA3_IMAGES = pytest.mark.skipif(TORCH_BEFORE_2_6, reason="transformers builds Gemma 3's two-way image masks with "
                                   "or_mask_function, which needs torch >= 2.6")


def _installed(family: str):
    """Skips ``family`` where this transformers lacks it."""
    return needs_transformers(class_name(family, "ForConditionalGeneration"))


# Fuyu's image patches are pixel_values after transformers 5.17; before, image_patches in another layout
FUYU_PATCHES = pytest.mark.skipif(TRANSFORMERS_4 or TRANSFORMERS_5_17, reason="Fuyu's image patches are in another "
                                  "layout before transformers 5.2x")


# transformers 5.17's Gemma 4 (and Gemma 4 Unified) with an image generates otherwise with a static cache than
# recomputed, TALAN off too
GEMMA4_STATIC_5_17 = pytest.mark.xfail(TRANSFORMERS_5_17, raises=AssertionError, strict=True, reason="transformers "
                                       "5.17: Gemma 4's static-cache generation differs from recomputing, TALAN off")


# transformers before 5.2x: PaliGemma's cached generation differs from recomputing, TALAN off too (4.57, 5.17)
PALIGEMMA_GENERATE = pytest.mark.xfail(TRANSFORMERS_4 or TRANSFORMERS_5_17, raises=AssertionError, strict=True,
                                       reason="PaliGemma's cached generation differs from recomputing, TALAN off too")
# transformers after 5.17, before 5.25 (5.24): Llama4ForConditionalGeneration fails in every forward, TALAN off too
# (it reads image_outputs off its language model's output, which has none)
LLAMA4_VL_FORWARD = pytest.mark.xfail(not (TRANSFORMERS_4 or TRANSFORMERS_5_17) and TRANSFORMERS_BEFORE_5_25,
                                      raises=AttributeError, strict=True,
                                      reason="Llama4ForConditionalGeneration's forward reads a missing image_outputs")
# transformers 4.57's Qwen2.5-Omni and Qwen3-Omni thinkers fail to build a static cache's mask, TALAN off too
OMNI_STATIC_4 = pytest.mark.xfail(TRANSFORMERS_4, raises=TypeError, strict=True, reason="transformers 4.57: Omni "
                                  "thinkers' _prepare_4d_causal_attention_mask_with_cache_position takes no config")
# transformers before 5.2x: Mllama's static cache fails to take the image's cross-attention keys, TALAN off too
MLLAMA_STATIC = pytest.mark.xfail(TRANSFORMERS_4 or TRANSFORMERS_5_17, raises=IndexError, strict=True,
                                  reason="Mllama's static cache fails on the cross-attention keys, TALAN off too")
# transformers 5.17's VibeVoice-ASR generates otherwise from a cache than recomputed, TALAN off too
VIBEVOICE_GENERATE_5_17 = pytest.mark.xfail(TRANSFORMERS_5_17, raises=AssertionError, strict=True,
                                            reason="transformers 5.17: VibeVoice-ASR's cached generation differs "
                                            "from recomputing")
GENERATE_MARKS = {"VibeVoiceAsr": (VIBEVOICE_GENERATE_5_17,), "Gemma4": (GEMMA4_STATIC_5_17,),
                  "Gemma4Unified": (GEMMA4_STATIC_5_17,),
                  "PaliGemma": (PALIGEMMA_GENERATE,), "Llama4": (LLAMA4_STATIC_5_17,),
                  "Qwen2_5OmniThinker": (OMNI_STATIC_4,), "Qwen3OmniMoeThinker": (OMNI_STATIC_4,),
                  "Mllama": (MLLAMA_STATIC,), "Gemma3n": (GEMMA3N_RECOMPUTED_4,)}


def _with_images(family: str, *marks):
    """``family`` as a test parameter (with ``marks``) of the tests with an image in the prompt."""
    image_marks = {"Gemma3": [GEMMA3_IMAGES], "Llama4": [LLAMA4_VL_FORWARD], "Fuyu": [FUYU_PATCHES],
                   "Qwen4Exp": [QWEN4EXP_PADDING_5_17]}.get(family, [])
    return pytest.param(family, marks=[_installed(family), *image_marks, *marks])


# the audio-language models: a 1-layer audio encoder turns 16 frames of 16 mel bins into 4 audio tokens (the "image"
# tokens of the prompt), which their text decoder reads as it reads image tokens
AUDIO = ("Qwen2Audio", "Voxtral", "AudioFlamingo3", "MossTranscribeDiarize", "GraniteSpeech", "GraniteSpeechPlus",
         "Qwen3ASR", "FunAsrNano", "MusicFlamingo", "GlmAsr", "OmniASR", "Nemotron3_5Transcribe",
         "VibeVoiceAsr")
# the wrappers that build their text decoder from its config: LLaVA over Llama and over Gemma 2, LLaVA-NeXT (over
# Llama), LLaVA-OneVision (over Qwen2), LFM2-VL (over LFM2, a hybrid), Mistral 3 (over Mistral), InternVL (over
# Qwen2), SmolVLM and Idefics 3 (over Llama, kept as text_model), PaliGemma (over Gemma; its prefix attends both ways,
# a 4-D mask that it hands the decoder without a cache too), Llama 4 (over its own text decoder: chunked attention,
# NoPE layers, experts), VipLLaVA (over Llama), LLaVA-NeXT-Video (over Llama; an image), Idefics 2 (over Mistral),
# GLM-4.6V, and those of vl_configs.CONFIGS that came later (Aya Vision and Command A Vision over Cohere 2, a
# parallel residual: no mid site)
WRAPPERS = ("Llava", "Llava-gemma2", "LlavaNext", "LlavaOnevision", "Lfm2Vl", "Mistral3", "InternVL", "SmolVLM",
            "Idefics3", "PaliGemma", "Llama4", "VipLlava", "LlavaNextVideo", "Idefics2", "Glm46V", "AyaVision",
            "Cohere2Vision", "DeepseekVL", "LightOnOcr", "VideoLlava", "Ovis2", "QianfanOCR", "Aria", "Exaone4_5_",
            "HyperCLOVAXVisionV2", "Lfm3Vl", "VideoLlama3", "Kimi_K25", "GotOcr2", "DeepseekVLHybrid", "Janus",
            "Cosmos3Omni", "Fuyu", "PerceptionLM", "FastVlm", "Blip2", "InstructBlip", "InstructBlipVideo", *MINICPM,
            "LlavaOnevision15", "Ovis2_5",
            *AUDIO, "NemotronH_Omni_Reasoning_V3_")
PARALLEL = ("AyaVision", "Cohere2Vision", "CohereCompass")
# text decoders with hyper-connections (several residual streams: no mid site either), and OPT under BLIP-2 and
# InstructBLIP and Idefics' own (the attention output dropped out inside the layer's forward)
HYPER = ("Qwen4Exp", "HYV4VL", "Glm5Next")
OPT_WRAPPERS = ("Blip2", "InstructBlip", "InstructBlipVideo")
DROPPED_INSIDE = (*OPT_WRAPPERS, "Idefics", "Kosmos2_5")
# over NemotronH (one token mixer or one MLP a layer): Nemotron 3 Nano Omni (its audio branch left out: the image is
# the tested modality) and Nemotron 3.5 Transcribe
ONE_MIXER = ("NemotronH_Omni_Reasoning_V3_", "Nemotron3_5Transcribe")
NO_MID = (*PARALLEL, *HYPER, *DROPPED_INSIDE, *ONE_MIXER)
FAMILIES = [_with_images(f) for f in (*NATIVE, *WRAPPERS)]


def _default_site(family: str) -> str:
    """TalanConfig's default site (mid), or post where the text decoder has no mid site."""
    return "post" if family in NO_MID else "mid"


def site_cases(marks=None) -> list:
    """(family, site) test parameters: every site of every family (with its ``marks``, by family)."""
    return [pytest.param(f, site, id=f"{f}-{site}", marks=_with_images(f, *(marks or {}).get(f, ())).marks)
            for f in (*NATIVE, *WRAPPERS) for site in (("pre", "post") if f in NO_MID else ("pre", "mid", "post"))]


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("family,site", site_cases(GENERATE_MARKS))
def test_vl_host_patches_exactly_and_generates_as_it_recomputes(family, site):
    model, inputs = tiny_vl(family), image_prompt(family)
    unpatched = _logits(model, inputs)
    talan.patch(model, tiny_config(site=site, layer=(0, 1)))
    assert torch.equal(_logits(model, inputs), unpatched)  # identity at initialisation
    open_gates(model)
    assert not torch.allclose(_logits(model, inputs), unpatched, atol=1e-4)
    # never an image token: a recomputing forward would find more of them than the images it has features for
    kwargs = dict(greedy_kwargs(inputs["attention_mask"]), suppress_tokens=[IMAGE])
    prompt = {k: v for k, v in inputs.items() if k != "attention_mask"}
    recomputed = model.generate(**prompt, use_cache=False, **kwargs)
    for cache in ("dynamic", "static"):
        assert_same_generation(model.generate(**prompt, cache_implementation=cache, **kwargs), recomputed)
    talan.unpatch(model)
    assert torch.equal(_logits(model, inputs), unpatched)


# M-RoPE: the text decoder gets 3 rows of positions (time, height, width), which are no text positions; Qwen3.5's
# linear-attention layers get none of their own and read the decoder's
MROPE = ["Qwen2VL", "Qwen3VL", "Glm4v", "Qwen3_5"]


@pytest.mark.skipif(TRANSFORMERS_4, reason="transformers 4.x itself splits a prompt without a mask where the image's "
                    "M-RoPE time row does not step by 1 (its attention too, which TALAN's rule follows) or fails")
@pytest.mark.parametrize("family", [pytest.param(f, marks=_installed(f)) for f in MROPE])
def test_an_image_prompt_without_an_attention_mask_is_one_sequence(family):
    """With no attention mask and no cache, position ids that do not step by 1 start a packed sequence; an image's
    M-RoPE positions (one temporal position for all its tokens) must not: the forward equals the all-ones mask's."""
    model = open_gates(talan.patch(tiny_vl(family), tiny_config(site="mid", layer=(0, 1))))
    inputs = image_prompt(family)
    inputs["input_ids"][0, :2] = inputs["input_ids"][1, :2]  # no padding, so no mask is the same prompt
    inputs.update(attention_mask=torch.ones_like(inputs["attention_mask"]), use_cache=False)  # no cache: the rule
    unmasked = _logits(model, {k: v for k, v in inputs.items() if k != "attention_mask"})
    torch.testing.assert_close(unmasked, _logits(model, inputs), rtol=0, atol=0)


@pytest.mark.parametrize("family,site", site_cases())
def test_vl_sites_write_the_block_output_where_analyze_reads_the_stream(family, site):
    assert_site_writes_the_block_output(tiny_vl(family), image_prompt(family), site, layer=0)


MLLAMA = _installed("Mllama")


@MLLAMA
@pytest.mark.parametrize("site", ["pre", "mid", "post"])
def test_mllama_cross_attention_layers_write_the_block_output_at_every_site(site):
    # layer 1 cross-attends to the image, its output gated by tanh(cross_attn_attn_gate) (0.5 here) before it joins
    # the residual: the mid site perturbs residual + tanh(gate) * attention
    model = tiny_vl("Mllama")
    assert type(decoder_stack(model).layers[1]).__name__ == "MllamaCrossAttentionDecoderLayer"
    assert_site_writes_the_block_output(model, image_prompt("Mllama"), site, layer=1)


@MLLAMA
def test_mllama_mid_site_leaves_the_cross_attention_gate_its_true_gradient():
    # the mid site divides its write by tanh(gate), which the layer multiplies back: the gate's gradient is that of
    # the function the patched model computes. Central differences of step 0.03 in fp32 (error ~ step**2, and fp32's
    # rounding of the loss over the step), on the unpadded row: through the padded one Mllama's own gate gradient
    # differs from its differences by 3 %, TALAN off too.
    model = open_gates(talan.patch(tiny_vl("Mllama"), tiny_config(site="mid", layer=1)))
    inputs = {k: v[1:] for k, v in image_prompt("Mllama").items()}
    weights = torch.randn(1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size,
                          generator=torch.Generator().manual_seed(0))
    gate = decoder_stack(model).layers[1].cross_attn_attn_gate

    def loss():
        return (model(**inputs).logits * weights).sum()

    loss().backward()
    step = 0.03
    with torch.no_grad():
        up = (gate.add_(step), loss())[1]
        down = (gate.sub_(2 * step), loss())[1]
    torch.testing.assert_close(gate.grad, ((up - down) / (2 * step)).reshape(1), rtol=1e-3, atol=1e-4)


@MLLAMA
def test_mllama_blocks_on_cross_attention_layers_follow_them_in_text_only_forwards():
    # without an image the stack skips its cross-attention layers, and their blocks with them
    model, inputs = tiny_vl("Mllama"), image_prompt("Mllama")
    text_only = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    unpatched = _logits(model, text_only)
    open_gates(talan.patch(model, tiny_config(layer=1)))
    assert torch.equal(_logits(model, text_only), unpatched)
    assert not torch.allclose(_logits(model, inputs), _logits(talan.unpatch(model), inputs), atol=1e-4)


@MLLAMA
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_analyze_on_text_only_mllama_carries_a_skipped_layers_row_and_refuses_a_block_there():
    # without an image layer 1 (cross-attention) does not run: its output row is its input, layer 0's output; a block
    # on it changed nothing, and measuring it is refused by name
    from talan import analyze
    from talan.data import CharTokenizer

    examples = [{"prompt": "abc" * (i + 1), "completion": "xyz"} for i in range(3)]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q|v)_proj", init_lora_weights=False)
    model = open_gates(talan.patch(get_peft_model(tiny_vl("Mllama"), lora), tiny_config(site="post", layer=0)))
    rows = analyze.measure(model, CharTokenizer(), examples)["per_layer"]
    assert [row["name"] for row in rows] == ["layer 0 output", "layer 1 output", "layer 2 output",
                                             "after the final norm"]
    assert rows[1]["hidden_norm"] == rows[0]["hidden_norm"] and rows[1]["talan_diff_norm"] > 0
    assert rows[2]["hidden_norm"] != rows[1]["hidden_norm"]
    model = open_gates(talan.patch(get_peft_model(tiny_vl("Mllama"), lora), tiny_config(site="post", layer=(0, 1))))
    with pytest.raises(ValueError, match=r"decoder layer\(s\) \[1\] did not run on these examples"):
        analyze.measure(model, CharTokenizer(), examples)


def _two_prompts_loss_and_grads(family: str, site: str, checkpointing: bool):
    """Two forwards (each with its own image and padding), one backward: blocks on layers 0 and 1, LoRA on every
    linear layer (the vision tower's too)."""
    batches = []
    for seed in range(2):
        inputs = image_prompt(family, seed=3 + seed)
        if seed:  # the other row padded
            inputs["attention_mask"] = inputs["attention_mask"].flip(0)
        batches.append({**inputs, "labels": inputs["input_ids"].masked_fill(inputs["input_ids"] == IMAGE, -100)})
    return two_forwards_loss_and_grads(tiny_vl(family, train=True), batches, site, checkpointing)


@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")
@pytest.mark.parametrize("family,site", [pytest.param("Mllama", site, marks=MLLAMA) for site in ("pre", "mid", "post")]
                         + [pytest.param(f, "mid", marks=_installed(f))
                            for f in ("Molmo2-norm_after", "Chameleon-swin")])
def test_gradient_checkpointing_recomputes_each_site_with_its_own_forwards_inputs(family, site):
    """Mllama at every site (a self-attention and a cross-attention layer), and Molmo 2's and Chameleon's post-norm
    layers at the mid site, which hooks the norm after self_attn: the recompute reads the kwargs its own self_attn
    got."""
    assert_same_loss_and_grads(_two_prompts_loss_and_grads(family, site, False),
                               _two_prompts_loss_and_grads(family, site, True))


@MLLAMA
def test_mllama_refuses_the_mid_site_on_a_closed_cross_attention_gate():
    # an untrained Mllama's cross-attention gates are zero: its attention adds nothing to the residual there
    model = tiny_vl("Mllama")
    with torch.no_grad():
        decoder_stack(model).layers[1].cross_attn_attn_gate.zero_()
    with pytest.raises(ValueError, match=r"site: decoder layer\(s\) \[1\] .* tanh\(cross_attn_attn_gate\) = 0"):
        talan.patch(model, tiny_config(site="mid", layer=(0, 1)))
    assert not is_patched(model) and not any("talan" in name for name, _ in model.named_modules())
    talan.patch(model, tiny_config(site="post", layer=(0, 1)))  # the other sites do not read the gate


@MLLAMA
def test_mllama_on_the_meta_device_patches_the_mid_site_before_its_gates_are_loaded():
    # a model built on the meta device (to count its parameters, or to load its weights into later) has no gate
    # values to check yet: patching it is not refused, and its blocks are on the meta device too
    with torch.device("meta"):
        model = talan.patch(tiny_vl("Mllama"), tiny_config(site="mid", layer=(0, 1)))
    assert is_patched(model) and all(p.is_meta for p in talan.talan_parameters(model))


@pytest.mark.parametrize("family", FAMILIES)
def test_vl_host_trains_with_lora_on_the_language_model_and_reloads(family, tmp_path):
    # LoRA on the text decoder's attention (an Omni thinker's is its model before transformers 5.2x, beside its
    # audio_tower; Persimmon's under Fuyu: query_key_value and dense); the vision tower stays frozen
    text_attention = r"(.*(language|text)_model\..*|model\.layers\..*)\.((q|k|v|o)_proj|query_key_value|dense)"
    base = tiny_vl(family, train=True)
    for module in base.modules():  # a frozen encoder's BatchNorm (Granite Speech's conformer) would update its running
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):  # statistics in the training step, which no
            module.eval()  # adapter or TALAN checkpoint saves: the reloaded model would differ by them
    # peft 0.21 targets Qwen3-Omni's audio attention under that pattern too (and warns of an exclusion that is idle)
    audio = r".*audio_tower.*" if any("audio_tower" in name for name, _ in base.named_modules()) else None
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=text_attention, exclude_modules=audio,
                                            init_lora_weights=False))
    open_gates(talan.patch(model, tiny_config(layer=(0, 1), site=_default_site(family))), 0.5)
    inputs = image_prompt(family)
    loss = model(**inputs, labels=inputs["input_ids"].masked_fill(inputs["input_ids"] == IMAGE, -100)).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert_talan_and_lora_gradients(model)

    model.eval()
    talan.save_pretrained(model, tmp_path)
    expected = _logits(model, inputs)
    with model.disable_adapter():  # the adapter off: the same backbone, with TALAN's trained blocks
        without_adapter = _logits(model, inputs)
    # the backbone frozen as peft froze it: torch's matmul of a permuted input (Command A Vision's pixel shuffle) and a
    # weight folds the input into one matrix or not by whether the weight requires a gradient, rounding otherwise
    reloaded = talan.load_pretrained(tiny_vl(family).requires_grad_(False), tmp_path)
    torch.testing.assert_close(_logits(reloaded, inputs), without_adapter, rtol=0, atol=0)
    assert not torch.allclose(without_adapter, expected, atol=1e-5)  # the adapter mattered too


BARE = [pytest.param(f, head, marks=needs_transformers(class_name(f, head)), id=f + head) for f in NATIVE
        for head in ("Model", "TextModel")] + [
    pytest.param(f, "Model", id=f + "Model", marks=needs_transformers(f + "Model"))  # the audio ones: 5.x
    for f in WRAPPERS if "-" not in f and f != "Llama4"]


@pytest.mark.parametrize("family,head", BARE)
def test_bare_vl_models_and_their_text_decoders_are_hosts(family, head):
    model = tiny_vl(family, head)
    stack = decoder_stack(model)
    # Chameleon's bare model is its text decoder itself (its VQ-VAE beside the layers)
    own = head == "TextModel" or hasattr(model, "layers")
    decoder = model if own else getattr(model, "text_model", None) or model.language_model
    if family in OPT_WRAPPERS:  # an OPTForCausalLM (an OPTModel in the bare model), the stack in its decoder
        decoder = getattr(decoder, "model", decoder).decoder
    if family == "Kosmos2_5":  # its text model keeps the stack in model
        decoder = decoder.model
    assert stack is decoder
    talan.patch(model, tiny_config(layer=1, site=_default_site(family)))
    assert hasattr(stack.layers[1], "talan") and is_patched(model)


def test_a_llava_over_an_unsupported_text_decoder_is_refused_by_name():
    config = transformers.LlavaConfig(text_config=dict(TEXT, model_type="rwkv"),
                                      vision_config=VISION["Llava"], image_token_index=IMAGE)
    model = transformers.LlavaForConditionalGeneration(config)
    with pytest.raises(TypeError, match="LlavaForConditionalGeneration over a RwkvModel"):
        talan.patch(model, tiny_config())
    assert not any("talan" in name for name, _ in model.named_modules())  # left unchanged


@pytest.mark.parametrize("family", [pytest.param(f, marks=_installed(f)) for f in NO_MID])
def test_a_decoder_without_a_mid_point_refuses_the_mid_site_by_name(family):
    model = tiny_vl(family)
    why = ("hyper-connections" if family in HYPER else "inside their forward" if family in DROPPED_INSIDE
           else "one token mixer or one MLP" if family in ONE_MIXER else "parallel residual")
    with pytest.raises(ValueError, match=f"site: .*{why}.* use site='pre' or site='post'"):
        talan.patch(model, tiny_config(site="mid"))
    assert not is_patched(model) and not any("talan" in name for name, _ in model.named_modules())
