"""Vision-language hosts: Qwen2-VL, Qwen2.5-VL, Qwen3-VL (and its MoE), Qwen3.5 (and its MoE; a hybrid text decoder
whose linear-attention layers hold a recurrent state), Gemma 3 (4B on), Gemma 4, GLM-4.1V, GLM-4.5V, GLM-OCR and
GLM-4.6V (over GLM-4.1V's text decoder), and LLaVA, LLaVA-NeXT, LLaVA-OneVision, LLaVA-NeXT-Video, VipLLaVA,
LFM2-VL, Mistral 3, InternVL, SmolVLM, Idefics 2 and 3, PaliGemma and Llama 4 over a supported text decoder, and the
audio-language Qwen2-Audio and Voxtral (their audio tokens stand where the image is). Their text decoder sits beside
the vision tower (``model.language_model``, or ``text_model``; a whole causal LM there in Llama 4 and transformers
4.x's audio models); its attention spans text and image tokens alike (Gemma 3's and 4's image tokens attend to each
other both ways), so TALAN's memory takes in the image tokens as it takes in any other. With an image in a
left-padded prompt: every site is exact at init and after unpatch, generates (dynamic and static cache) as it
recomputes, writes exactly the block's output into the stream, trains with peft LoRA on the language model, and
saves and reloads."""

import inspect

import pytest
import torch
import transformers
from conftest import (
    LLAMA4_STATIC_5_17,
    TORCH_BEFORE_2_6,
    TRANSFORMERS_4,
    TRANSFORMERS_5_17,
    VOCAB,
    assert_same_generation,
    assert_talan_and_lora_gradients,
    greedy_kwargs,
    needs_transformers,
    open_gates,
    tiny_config,
)
from peft import LoraConfig, get_peft_model
from train_helpers import GATED_DELTANET, LLAMA4_TEXT

import talan
from talan.analyze import _forward, _site_module
from talan.hosts import decoder_stack, layer_layout
from talan.patching import is_patched, talan_blocks

# The vision-language models with their own text decoder, then LLaVA (over Llama, and over Gemma 2: the decoder's
# family sets the layout) and Mistral 3 (over Mistral), which build any text decoder from their text config.
NATIVE = ["Qwen2VL", "Qwen2_5_VL", "Qwen3VL", "Qwen3VLMoe", "Qwen3_5", "Qwen3_5Moe", "Gemma3", "Gemma4", "Glm4v",
          "Glm4vMoe", "GlmOcr"]
QWEN_VL = ("Qwen2VL", "Qwen2_5_VL", "Qwen3VL", "Qwen3VLMoe", "Qwen3_5", "Qwen3_5Moe")
# GLM-4.1V, GLM-4.5V (experts), GLM-OCR and GLM-4.6V (a wrapper over GLM-4.1V's text decoder): Qwen-VL's patches and
# multimodal RoPE, on half of each head
GLM_VL = ("Glm4v", "Glm4vMoe", "GlmOcr", "Glm46V")
# transformers 4.57 on torch < 2.6 cannot run Gemma 3 with images (the make test-old-torch venv)
GEMMA3_IMAGES = pytest.mark.skipif(TORCH_BEFORE_2_6, reason="transformers builds Gemma 3's two-way image masks with "
                                   "or_mask_function, which needs torch >= 2.6")


def _class_prefix(family: str) -> str:
    return family.split("-")[0]


def _installed(family: str):
    """Skips ``family`` where this transformers lacks it."""
    return needs_transformers(f"{_class_prefix(family)}ForConditionalGeneration")


# transformers 5.17's Gemma 4 with an image generates otherwise with a static cache than recomputed, TALAN off too
GEMMA4_STATIC_5_17 = pytest.mark.xfail(TRANSFORMERS_5_17, raises=AssertionError, strict=True, reason="transformers "
                                       "5.17: Gemma 4's static-cache generation differs from recomputing, TALAN off")


# transformers before 5.2x: PaliGemma's cached generation differs from recomputing, TALAN off too (4.57, 5.17)
PALIGEMMA_GENERATE = pytest.mark.xfail(TRANSFORMERS_4 or TRANSFORMERS_5_17, raises=AssertionError, strict=True,
                                       reason="PaliGemma's cached generation differs from recomputing, TALAN off too")
# transformers after 5.17 (5.24): Llama4ForConditionalGeneration fails in every forward, TALAN off too (it reads
# image_outputs off its language model's output, which has none)
LLAMA4_VL_FORWARD = pytest.mark.xfail(not (TRANSFORMERS_4 or TRANSFORMERS_5_17), raises=AttributeError, strict=True,
                                      reason="Llama4ForConditionalGeneration's forward reads a missing image_outputs")
GENERATE_MARKS = {"Gemma4": (GEMMA4_STATIC_5_17,), "PaliGemma": (PALIGEMMA_GENERATE,),
                  "Llama4": (LLAMA4_STATIC_5_17,)}


def _with_images(family: str, *marks):
    """``family`` as a test parameter (with ``marks``) of the tests with an image in the prompt."""
    image_marks = {"Gemma3": [GEMMA3_IMAGES], "Llama4": [LLAMA4_VL_FORWARD]}.get(family, [])
    return pytest.param(family, marks=[_installed(family), *image_marks, *marks])


# the audio-language models: a 1-layer audio encoder turns 16 frames of 16 mel bins into 4 audio tokens (the "image"
# tokens of the prompt), which their text decoder reads as it reads image tokens
AUDIO = ("Qwen2Audio", "Voxtral")
# the wrappers that build their text decoder from its config: LLaVA over Llama and over Gemma 2, LLaVA-NeXT (over
# Llama), LLaVA-OneVision (over Qwen2), LFM2-VL (over LFM2, a hybrid), Mistral 3 (over Mistral), InternVL (over
# Qwen2), SmolVLM and Idefics 3 (over Llama, kept as text_model), PaliGemma (over Gemma; its prefix attends both ways,
# a 4-D mask that it hands the decoder without a cache too), Llama 4 (over its own text decoder: chunked attention,
# NoPE layers, experts), VipLLaVA (over Llama), LLaVA-NeXT-Video (over Llama; an image), Idefics 2 (over Mistral)
WRAPPERS = ("Llava", "Llava-gemma2", "LlavaNext", "LlavaOnevision", "Lfm2Vl", "Mistral3", "InternVL", "SmolVLM",
            "Idefics3", "PaliGemma", "Llama4", "VipLlava", "LlavaNextVideo", "Idefics2", "Glm46V", *AUDIO)
FAMILIES = [_with_images(f) for f in (*NATIVE, *WRAPPERS)]
IMAGE, VISION_START, VISION_END = 5, 3, 4  # token ids inside the tiny vocabulary
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# One vision block on 16x16 pixels in 4x4 patches; the number of image tokens per image the model makes of them.
SMALL_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                    patch_size=4)
# Qwen-VL: patches of 2 frames merged 2x2 into the text width, 4 tokens.
QWEN_VISION = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
                   spatial_merge_size=2, temporal_patch_size=2)
QWEN3_VISION = dict(QWEN_VISION, num_position_embeddings=16, deepstack_visual_indexes=[0])  # adds to layer 0's output
VISION = {
    "Qwen2VL": dict(depth=1, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=4, spatial_merge_size=2,
                    temporal_patch_size=2),
    "Qwen2_5_VL": dict(QWEN_VISION, window_size=8, fullatt_block_indexes=[0]),
    "Qwen3VL": QWEN3_VISION, "Qwen3VLMoe": QWEN3_VISION,
    **dict.fromkeys(GLM_VL, dict(QWEN_VISION, image_size=16)),
    "Qwen3_5": dict(QWEN_VISION, num_position_embeddings=16),
    "Qwen3_5Moe": dict(QWEN_VISION, num_position_embeddings=16),
    "Gemma3": dict(SMALL_VISION),  # SigLIP, pooled to 4 tokens
    # 6x6 patches of 4x4 pixels (its image processor's flattened patches), pooled 3x3: 4 tokens
    "Gemma4": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=2, head_dim=16, patch_size=4, pooling_kernel_size=3, position_embedding_size=64),
    "Llava": dict(SMALL_VISION, model_type="clip_vision_model"),  # every patch a token (CLS dropped): 16 tokens
    "Mistral3": dict(SMALL_VISION, model_type="pixtral", head_dim=16),  # patches merged 2x2: 4 tokens
    # any resolution, on a 1x1 grid of 16x16 tiles: the whole image's 16 patches, the tile's 16 and a newline token
    # after each of its 4 rows, 36 tokens
    "LlavaNext": dict(SMALL_VISION, model_type="clip_vision_model"),
    "LlavaOnevision": dict(SMALL_VISION, model_type="siglip_vision_model"),
    # SigLIP 2 (NaFlex) on 4x4 patches of 4x4 pixels, pixel-unshuffled 2x2: 4 tokens
    "Lfm2Vl": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=4,
                   num_patches=16),
    # InternViT, SmolVLM's and Idefics 3's SigLIP: 16 patches, pixel-shuffled 2x2 into 4 tokens
    "InternVL": dict(SMALL_VISION, image_size=[16, 16], patch_size=[4, 4]),
    "SmolVLM": SMALL_VISION, "Idefics3": SMALL_VISION,
    "VipLlava": dict(SMALL_VISION, model_type="clip_vision_model"),  # every patch a token: 16
    "LlavaNextVideo": dict(SMALL_VISION, model_type="clip_vision_model"),
    "Idefics2": SMALL_VISION,  # resampled into 4 latents
    "PaliGemma": dict(SMALL_VISION, model_type="siglip_vision_model", projection_dim=64),  # every patch a token: 16
    # 16 patches pixel-shuffled 2x2 into 4 tokens (its MLP widths follow: 32 channels x 4 = 128)
    "Llama4": dict(SMALL_VISION, intermediate_size=128, vision_output_dim=64, projector_input_dim=64,
                   projector_output_dim=64),
}
IMAGE_TOKENS = {"Llava": 16, "LlavaNext": 36, "LlavaOnevision": 36, "LlavaNextVideo": 36, "PaliGemma": 16,
                "VipLlava": 16}
ANY_RESOLUTION = ("LlavaNext", "LlavaOnevision", "LlavaNextVideo")


def _config(family: str):
    prefix = _class_prefix(family)
    vision = VISION.get(prefix)
    if prefix == "Gemma4":  # with per-layer inputs; the image tokens attend to each other both ways
        text = dict(TEXT, vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=8, sliding_window=4,
                    layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                    use_bidirectional_attention="vision")
        return transformers.Gemma4Config(text_config=text, vision_config=vision, image_token_id=IMAGE,
                                         boi_token_id=VISION_START, eoi_token_id=VISION_END, video_token_id=6,
                                         audio_token_id=13, boa_token_id=14, eoa_token_index=15)
    if prefix == "Gemma3":
        return transformers.Gemma3Config(text_config=TEXT, vision_config=vision, mm_tokens_per_image=4,
                                         image_token_index=IMAGE, boi_token_index=VISION_START,
                                         eoi_token_index=VISION_END)
    if prefix == "Lfm2Vl":  # layers 0 and 2 short convolutions, layer 1 attention
        text = dict(TEXT, layer_types=["conv", "full_attention", "conv"], block_ff_dim=128)
        return transformers.Lfm2VlConfig(text_config=text, vision_config=vision, image_token_id=IMAGE,
                                         downsample_factor=2, projector_hidden_size=32)
    if prefix == "Llama4":  # chunked attention (chunks of 4) in layers 0 and 1, experts in layer 1
        return transformers.Llama4Config(text_config=dict(TEXT, **LLAMA4_TEXT), vision_config=vision,
                                         image_token_index=IMAGE, boi_token_index=VISION_START,
                                         eoi_token_index=VISION_END)
    if prefix == "PaliGemma":
        return transformers.PaliGemmaConfig(text_config=dict(TEXT, model_type="gemma"), vision_config=vision,
                                            image_token_index=IMAGE, projection_dim=64)
    if prefix == "InternVL":
        return transformers.InternVLConfig(text_config=dict(TEXT, model_type="qwen2"), vision_config=vision,
                                           image_token_id=IMAGE, downsample_ratio=0.5)
    if prefix == "Qwen2Audio":
        return transformers.Qwen2AudioConfig(text_config=dict(TEXT, model_type="qwen2"), audio_token_index=IMAGE,
                                             audio_config=dict(num_mel_bins=16, encoder_layers=1, d_model=32,
                                                               encoder_attention_heads=2, encoder_ffn_dim=64,
                                                               max_source_positions=8))
    if prefix == "Voxtral":
        return transformers.VoxtralConfig(text_config=dict(TEXT, model_type="llama"), audio_token_id=IMAGE,
                                          audio_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                            num_attention_heads=2, num_mel_bins=16,
                                                            max_source_positions=8))
    if prefix == "Idefics2":  # over Mistral; a perceiver resamples each image into 4 latents
        return transformers.Idefics2Config(text_config=dict(TEXT, model_type="mistral"), vision_config=vision,
                                           image_token_id=IMAGE, perceiver_config=dict(
                                               resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                                               resampler_head_dim=16, num_key_value_heads=1))
    if prefix == "VipLlava":  # its projector reads both hidden states of the 1-block tower
        return transformers.VipLlavaConfig(text_config=dict(TEXT, model_type="llama"), vision_config=vision,
                                           image_token_index=IMAGE, vision_feature_layers=[-2, -1])
    if prefix in ("SmolVLM", "Idefics3"):
        return getattr(transformers, f"{prefix}Config")(text_config=dict(TEXT, model_type="llama"),
                                                        vision_config=vision, image_token_id=IMAGE, scale_factor=2)
    if prefix in ("Llava", "Mistral3", *ANY_RESOLUTION):  # the text decoder: its default, or the type after the dash
        decoder = family.split("-")[1] if "-" in family else {"Mistral3": "mistral", "LlavaOnevision": "qwen2"}.get(
            prefix, "llama")
        text = dict(TEXT, model_type=decoder)
        extra = {"spatial_merge_size": 2} if prefix == "Mistral3" else {}
        if prefix in ANY_RESOLUTION:
            extra["image_grid_pinpoints"] = [[16, 16]]
        return getattr(transformers, f"{prefix}Config")(text_config=text, vision_config=vision, image_token_index=IMAGE,
                                                        vision_feature_layer=-1, **extra)
    if prefix in GLM_VL:  # layer 0 dense, then 4 routed experts in GLM-4.5V
        text = dict(TEXT, rope_theta=10000.0, partial_rotary_factor=0.5,
                    rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2]})
        if prefix == "Glm4vMoe":
            text.update(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_group=1, topk_group=1,
                        first_k_dense_replace=1)
        return getattr(transformers, f"{prefix}Config")(text_config=text, vision_config=vision, image_token_id=IMAGE,
                                                        video_token_id=6, image_start_token_id=VISION_START,
                                                        image_end_token_id=VISION_END, video_start_token_id=14,
                                                        video_end_token_id=15)
    text = dict(TEXT, rope_theta=10000.0,  # multimodal RoPE; rope_scaling is 4.57's key, 5.x converts it
                rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3]})
    if prefix in ("Qwen3VLMoe", "Qwen3_5Moe"):  # every layer a mixture of 4 experts
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    if prefix in ("Qwen3_5", "Qwen3_5Moe"):  # layers 0 and 2 linear attention (a gated DeltaNet), layer 1 full
        text.update(GATED_DELTANET, layer_types=["linear_attention", "full_attention", "linear_attention"])
    return getattr(transformers, f"{prefix}Config")(text_config=text, vision_config=vision, image_token_id=IMAGE,
                                                    video_token_id=6, vision_start_token_id=VISION_START,
                                                    vision_end_token_id=VISION_END)


def tiny_vl(family: str, head: str = "ForConditionalGeneration", train: bool = False):
    """A seeded tiny vision-language model: a 3-layer text decoder (d=64) and a 1-block vision tower, eager
    attention, random weights (``head="TextModel"``: the bare text decoder alone)."""
    config = _config(family)
    config._attn_implementation = config.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, _class_prefix(family) + head)(config.text_config if head == "TextModel" else config)
    return model.train() if train else model.eval()


def image_prompt(family: str, seed: int = 3) -> dict:
    """Two rows, each with one image between text tokens; the first row left-padded by 2 tokens."""
    prefix = _class_prefix(family)
    image = [VISION_START, *[IMAGE] * IMAGE_TOKENS.get(prefix, 4), VISION_END]
    ids = torch.tensor([[0, 0, 7, *image, 9, 10], [8, 9, 7, *image, 11, 12]])
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    generator = torch.Generator().manual_seed(seed)
    inputs = dict(input_ids=ids, attention_mask=mask)
    if prefix in ("Gemma3", "Llava", "Mistral3", "InternVL", "PaliGemma", "Llama4", "VipLlava"):
        inputs["pixel_values"] = torch.randn(2, 3, 16, 16, generator=generator)
    if prefix in AUDIO:  # 16 frames of 16 mel bins
        inputs["input_features"] = torch.randn(2, 16, 16, generator=generator)
        if prefix == "Qwen2Audio":
            inputs["feature_attention_mask"] = torch.ones(2, 16, dtype=torch.long)
    if prefix in ("SmolVLM", "Idefics3", "Idefics2"):  # one image per row
        inputs["pixel_values"] = torch.randn(2, 1, 3, 16, 16, generator=generator)
    if prefix == "Gemma4":  # each image's flattened patches and their (x, y) positions
        inputs["pixel_values"] = torch.randn(2, 36, 3 * 4 * 4, generator=generator)
        xy = torch.stack(torch.meshgrid(torch.arange(6), torch.arange(6), indexing="xy"), -1).reshape(36, 2)
        inputs["image_position_ids"] = xy.expand(2, -1, -1).clone()
    if prefix == "Gemma3":  # token_type_ids mark the image tokens, which attend to each other both ways
        inputs["token_type_ids"] = (ids == IMAGE).long()
    if prefix == "PaliGemma":  # 0: the prefix (image and prompt), which attends both ways
        inputs["token_type_ids"] = torch.zeros_like(ids)
    if prefix in ANY_RESOLUTION:  # the whole image, then its one tile
        inputs["pixel_values"] = torch.randn(2, 2, 3, 16, 16, generator=generator)
    if prefix == "Lfm2Vl":  # each image's flattened patches on a 4x4 grid
        inputs["pixel_values"] = torch.randn(2, 16, 3 * 4 * 4, generator=generator)
        inputs.update(spatial_shapes=torch.tensor([[4, 4]] * 2),
                      pixel_attention_mask=torch.ones(2, 16, dtype=torch.bool))
    if prefix in ("Mistral3", *ANY_RESOLUTION):
        inputs["image_sizes"] = torch.tensor([[16, 16]] * 2)
    if prefix in (*QWEN_VL, *GLM_VL):  # 4x4 patches (2 frames each), merged 2x2
        inputs["pixel_values"] = torch.randn(2 * 16, 3 * 2 * 4 * 4, generator=generator)
        inputs["image_grid_thw"] = torch.tensor([[1, 4, 4]] * 2)
    bare = getattr(transformers, f"{prefix}Model", None)  # Llama 4 has none
    if bare is not None and "mm_token_type_ids" in inspect.signature(bare.forward).parameters:
        inputs["mm_token_type_ids"] = (ids == IMAGE).int()  # transformers 5.x's Qwen3-VL computes M-RoPE from it
    return inputs


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("site", ["pre", "mid", "post"])
@pytest.mark.parametrize("family", [_with_images(f, *GENERATE_MARKS.get(f, ())) for f in (*NATIVE, *WRAPPERS)])
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


@pytest.mark.parametrize("site", ["pre", "mid", "post"])
@pytest.mark.parametrize("family", FAMILIES)
def test_vl_sites_write_the_block_output_where_analyze_reads_the_stream(family, site):
    model, inputs = tiny_vl(family), image_prompt(family)
    open_gates(talan.patch(model, tiny_config(site=site, layer=0)))
    probe = {0: _site_module(decoder_stack(model).layers[0], site, layer_layout(model))}
    with talan.disabled(model):
        stream = _forward(model, inputs, probe)[1][0]
    written = _forward(model, inputs, probe)[1][0]
    with torch.no_grad():
        expected, _ = talan_blocks(model)[0](stream, inputs["attention_mask"].bool(), None, None)
    assert not torch.allclose(expected, stream, atol=1e-2)
    torch.testing.assert_close(written, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_vl_host_trains_with_lora_on_the_language_model_and_reloads(family, tmp_path):
    model = get_peft_model(tiny_vl(family, train=True),  # the text decoder's attention; the vision tower stays frozen
                           LoraConfig(r=4, lora_alpha=8, target_modules=r".*(language|text)_model.*\.(q|k|v|o)_proj",
                                      init_lora_weights=False))
    open_gates(talan.patch(model, tiny_config(layer=(0, 1))), 0.5)
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
    reloaded = talan.load_pretrained(tiny_vl(family), tmp_path)
    torch.testing.assert_close(_logits(reloaded, inputs), without_adapter, rtol=0, atol=0)
    assert not torch.allclose(without_adapter, expected, atol=1e-5)  # the adapter mattered too


BARE = [pytest.param(f, head, marks=_installed(f), id=f + head) for f in NATIVE for head in ("Model", "TextModel")] + [
    pytest.param(f, "Model", id=f + "Model", marks=needs_transformers(f + "Model"))  # the audio ones: 5.x
    for f in WRAPPERS if "-" not in f and f != "Llama4"]


@pytest.mark.parametrize("family,head", BARE)
def test_bare_vl_models_and_their_text_decoders_are_hosts(family, head):
    model = tiny_vl(family, head)
    stack = decoder_stack(model)
    assert stack is (model if head == "TextModel" else getattr(model, "text_model", None) or model.language_model)
    talan.patch(model, tiny_config(layer=1))
    assert hasattr(stack.layers[1], "talan") and is_patched(model)


def test_a_llava_over_an_unsupported_text_decoder_is_refused_by_name():
    config = transformers.LlavaConfig(text_config=dict(TEXT, model_type="recurrent_gemma"),
                                      vision_config=VISION["Llava"], image_token_index=IMAGE)
    model = transformers.LlavaForConditionalGeneration(config)
    with pytest.raises(TypeError, match="LlavaForConditionalGeneration over a RecurrentGemmaModel"):
        talan.patch(model, tiny_config())
    assert not any("talan" in name for name, _ in model.named_modules())  # left unchanged
