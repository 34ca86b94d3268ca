"""Tiny vision-language (and audio-language) models for test_vl_hosts.py: a 3-layer text decoder (d=64) beside a
1-block vision tower (or audio encoder), random weights, and a left-padded two-row prompt with one image each."""

import contextlib
import inspect
from unittest import mock

import torch
import transformers
from conftest import VOCAB, class_prefix
from torch import nn
from train_helpers import GATED_DELTANET, GEMMA3N_TEXT
from vl_configs import (
    ANY_RESOLUTION,
    CONFIGS,
    GLM_VL,
    HYPER_VL,
    IMAGE,
    IMAGE_TOKENS,
    MINICPM,
    TEXT,
    VISION,
    VISION_BLOCK,
    VISION_END,
    VISION_START,
)

_ONE_IMAGE_EACH = ("Gemma3", "Llava", "Mistral3", "InternVL", "PaliGemma", "Llama4", "VipLlava",
                   "AyaVision", "Cohere2Vision", "DeepseekVL", "LightOnOcr", "Ovis2", "QianfanOCR", "Aria", "GotOcr2",
                   "Janus", "MistralLarge4", "Apertus1p5", "DeepseekOcr2", "UnlimitedOcr", "Chameleon", "FastVlm",
                   "Blip2", "InstructBlip")


# Gemma 3n over its text decoder (train_helpers' GEMMA3N_TEXT, all MLPs dense): its audio encoder (one conformer block)
# turns 64 frames of 16 mel bins into 4 audio tokens, the "image" tokens of the prompt; its vision tower needs timm,
# which is not installed here, so it is a stand-in that the tests never feed (`TIMM_TOWERS`)
def _gemma3n_config(config_cls):
    audio = dict(input_feat_size=16, hidden_size=32, conf_num_attention_heads=2, conf_num_hidden_layers=1,
                 sscp_conv_channel_size=[8, 8], vocab_offset=120, vocab_size=8)  # its 8 hard tokens: ids 120 to 127
    return config_cls(text_config=dict(TEXT, **GEMMA3N_TEXT), audio_config=audio, audio_soft_tokens_per_image=4,
                      vision_config=dict(hidden_size=32, vocab_offset=112, vocab_size=8),
                      vision_soft_tokens_per_image=4,
                      audio_token_id=IMAGE, boa_token_id=VISION_START, eoa_token_id=VISION_END, image_token_id=6,
                      boi_token_id=14, eoi_token_id=15)


# the models whose vision tower needs timm, which is not installed here: the layout of a `_TowerStandIn`'s output
TIMM_TOWERS = {"Gemma3n": None, "PerceptionLM": "tokens", "FastVlm": "grid"}


class _TowerStandIn(nn.Module):
    """In place of a vision tower that needs timm: 4x4-pixel patches embedded by a convolution, as its model reads
    them: ``"tokens"`` (a class token, then the patches: PerceptionLM's), ``"grid"`` ([batch, channels, rows,
    columns]: FastVLM's), or None (Gemma 3n's, never fed: the tests feed it audio). The tests concern the text
    decoder, which reads what the tower makes as image tokens."""

    def __init__(self, config, layout: str | None):
        super().__init__()
        self.config, self.layout = config, layout
        width = (getattr(config, "model_args", None) or {}).get("embed_dim") or config.hidden_size
        self.patches = nn.Conv2d(3, width, kernel_size=4, stride=4)
        self.class_token = nn.Parameter(torch.randn(width))

    def forward(self, pixel_values, **kwargs):
        if self.layout is None:
            raise NotImplementedError("a stand-in for Gemma 3n's timm vision tower: feed no images")
        grid = self.patches(pixel_values)
        if self.layout == "grid":
            return transformers.modeling_outputs.BaseModelOutput(last_hidden_state=grid)
        tokens = grid.flatten(2).transpose(1, 2)
        return transformers.modeling_outputs.BaseModelOutput(
            last_hidden_state=torch.cat([self.class_token.expand(len(tokens), 1, -1), tokens], 1))


@contextlib.contextmanager
def _timm_tower_stand_in(prefix: str):
    """While building a model of `TIMM_TOWERS`, its timm vision tower is a `_TowerStandIn`; its text decoder (and
    Gemma 3n's audio encoder) are transformers' own."""
    if prefix not in TIMM_TOWERS:
        yield
        return
    real = transformers.AutoModel.from_config

    def from_config(config, **kwargs):
        if config.model_type in ("gemma3n_vision", "timm_wrapper"):
            return _TowerStandIn(config, TIMM_TOWERS[prefix])
        return real(config, **kwargs)

    with mock.patch.object(transformers.AutoModel, "from_config", from_config):
        yield


def _molmo2_config(config_cls, norm_after: bool):
    """Molmo 2 over its own text decoder (pre-norm, or with ``norm_after`` post-norm): one 16x16 crop per image, 16
    patches of 4x4 pixels pooled 2x2 into 4 tokens by the adapter's cross-attention."""
    return config_cls(text_config=dict(TEXT, additional_vocab_size=0, norm_after=norm_after, rope_scaling_layers=[]),
                      vision_config=dict(VISION_BLOCK, num_key_value_heads=2, head_dim=16, image_size=[16, 16],
                                         patch_size=4),
                      adapter_config=dict(vision_feature_layer=[-1], hidden_size=32, num_attention_heads=2,
                                          num_key_value_heads=2, head_dim=16, intermediate_size=64,
                                          text_hidden_size=64),
                      image_start_token_id=VISION_START, image_end_token_id=VISION_END, image_patch_id=IMAGE,
                      low_res_image_start_token_id=14, frame_start_token_id=15, frame_end_token_id=16)


def _chameleon_config(config_cls, swin_norm: bool):
    """Chameleon (one config for its text decoder, pre-norm or with ``swin_norm`` post-norm): a VQ-VAE turns each
    16x16 image into 4x4 codes, visual tokens 100 to 115 of the vocabulary (named IMGIMG<code in letters>Z)."""
    def name(code):
        return "IMGIMG" + "".join(chr(ord("A") + int(digit)) for digit in str(code)) + "Z"

    vq = dict(embed_dim=8, num_embeddings=16, latent_channels=32, resolution=16, base_channels=32,
              channel_multiplier=[1, 2, 2], num_res_blocks=1)
    return config_cls(**{k: v for k, v in TEXT.items() if k != "head_dim"}, swin_norm=swin_norm, vq_config=vq,
                      vocabulary_map={"<image>": IMAGE, **{name(code): 100 + code for code in range(16)}})


def _config(family: str):
    prefix = class_prefix(family)
    vision = VISION.get(prefix)
    config_cls = getattr(transformers, f"{prefix}Config")
    if prefix == "Gemma3n":
        return _gemma3n_config(config_cls)
    if prefix == "Molmo2":
        return _molmo2_config(config_cls, norm_after=family.endswith("-norm_after"))
    if prefix == "Chameleon":
        return _chameleon_config(config_cls, swin_norm=family.endswith("-swin"))
    if prefix == "Idefics":  # Llama's layers, a gated cross-attention block before layer 0 (its gates open, as
        # trained) reads the image through a perceiver's 4 latents; the image token itself is text
        text = {k: v for k, v in TEXT.items() if k not in ("num_key_value_heads", "head_dim")}
        return config_cls(**text, cross_layer_interval=3, alpha_initializer="normal", alpha_type="vector",
                          alphas_initializer_range=0.5, vision_config=dict(
                              embed_dim=32, image_size=16, patch_size=4, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64), perceiver_config=dict(
                              use_resampler=True, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                              resampler_head_dim=16))
    if prefix == "Kosmos2_5":  # XGLM-like text layers; a 1-block vision tower on 16 flattened 4x4 patches
        text = dict(vocab_size=VOCAB, embed_dim=64, layers=3, ffn_dim=128, attention_heads=4,
                    max_position_embeddings=64)
        vision = dict(hidden_size=32, patch_embed_hidden_size=16, intermediate_size=64, head_dim=8, num_hidden_layers=1,
                      num_attention_heads=4, max_num_patches=16)
        return config_cls(text_config=text, vision_config=vision, latent_query_num=IMAGE_TOKENS.get(prefix, 4))
    if prefix in HYPER_VL:
        text, vision, tokens = HYPER_VL[prefix]
        return config_cls(text_config=dict(TEXT, **text), vision_config=vision, image_token_id=IMAGE, video_token_id=6,
                          **tokens)
    if prefix in CONFIGS:
        text, kwargs = CONFIGS[prefix]
        return config_cls(text_config=dict(TEXT, **text), **kwargs)
    if prefix in ("Gemma4", "Gemma4Unified"):  # the image tokens attend to each other both ways (Gemma 4's with
        # per-layer inputs)
        per_layer = dict(vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=8) if prefix == "Gemma4" else {}
        text = dict(TEXT, **per_layer, sliding_window=4, use_bidirectional_attention="vision",
                    layer_types=["sliding_attention", "sliding_attention", "full_attention"])
        return config_cls(text_config=text, vision_config=vision, image_token_id=IMAGE, boi_token_id=VISION_START,
                          eoi_token_id=VISION_END, video_token_id=6, audio_token_id=13, boa_token_id=14,
                          eoa_token_index=15)
    if prefix == "Gemma3":
        return config_cls(text_config=TEXT, vision_config=vision, mm_tokens_per_image=4, image_token_index=IMAGE,
                          boi_token_index=VISION_START, eoi_token_index=VISION_END)
    if prefix in ("Llava", "Mistral3", *ANY_RESOLUTION):  # the text decoder: its default, or the type after the dash
        decoder = family.split("-")[1] if "-" in family else {"Mistral3": "mistral", "LlavaOnevision": "qwen2"}.get(
            prefix, "llama")
        extra = {"spatial_merge_size": 2} if prefix == "Mistral3" else {}
        if prefix in ANY_RESOLUTION:
            extra["image_grid_pinpoints"] = [[16, 16]]
        return config_cls(text_config=dict(TEXT, model_type=decoder), vision_config=vision, image_token_index=IMAGE,
                          vision_feature_layer=-1, **extra)
    if prefix in GLM_VL:  # layer 0 dense, then 4 routed experts in GLM-4.5V
        text = dict(TEXT, rope_theta=10000.0, partial_rotary_factor=0.5,
                    rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2]})
        if prefix == "Glm4vMoe":
            text.update(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_group=1, topk_group=1,
                        first_k_dense_replace=1)
        return config_cls(text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=6,
                          image_start_token_id=VISION_START, image_end_token_id=VISION_END, video_start_token_id=14,
                          video_end_token_id=15)
    text = dict(TEXT, rope_theta=10000.0,  # multimodal RoPE; rope_scaling is 4.57's key, 5.x converts it
                rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3]})
    if prefix in ("Qwen3VLMoe", "Qwen3_5Moe"):  # every layer a mixture of 4 experts
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    if prefix in ("Qwen3_5", "Qwen3_5Moe"):  # layers 0 and 2 linear attention (a gated DeltaNet), layer 1 full
        text.update(GATED_DELTANET, layer_types=["linear_attention", "full_attention", "linear_attention"])
    return config_cls(text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=6,
                      vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)


_NAMED_OTHERWISE = {"PaddleOCRVLTextModel": "PaddleOCRTextModel", "FuyuForConditionalGeneration": "FuyuForCausalLM",
                    "MiniMaxM3VLForConditionalGeneration": "MiniMaxM3SparseForConditionalGeneration",
                    "IdeficsForConditionalGeneration": "IdeficsForVisionText2Text",
                    "NemotronH_Omni_Reasoning_V3_ForConditionalGeneration": "NemotronH_Omni_Reasoning_V3"}


def class_name(family: str, head: str) -> str:
    """The transformers class of ``family``'s model under ``head`` ("ForConditionalGeneration", "Model", ...)."""
    return _NAMED_OTHERWISE.get(class_prefix(family) + head, class_prefix(family) + head)


def tiny_vl(family: str, head: str = "ForConditionalGeneration", train: bool = False):
    """A seeded tiny vision-language model: a 3-layer text decoder (d=64) and a 1-block vision tower, eager
    attention, random weights (``head="TextModel"``: the bare text decoder alone)."""
    config = _config(family)
    config._attn_implementation = config.get_text_config()._attn_implementation = "eager"  # Chameleon's: itself
    torch.manual_seed(0)
    with _timm_tower_stand_in(class_prefix(family)):
        model = getattr(transformers, class_name(family, head))(config.text_config if head == "TextModel" else config)
    with torch.no_grad():  # Mllama's cross-attention gates, closed (zero) before training: open, as trained
        for name, gate in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                gate.fill_(0.5)
    return model.train() if train else model.eval()


def _media(prefix: str, generator: torch.Generator) -> dict:
    """The image (or audio) inputs of ``prefix``'s two rows, one image (recording) each."""
    def noise(*shape):
        return torch.randn(*shape, generator=generator)

    if prefix in _ONE_IMAGE_EACH:
        return {"pixel_values": noise(2, 3, 16, 16)}
    if prefix == "Kosmos2_5":  # each image's 16 flattened 4x4 patches (one channel), led by their row and column
        rows, columns = torch.arange(16).div(4, rounding_mode="floor") + 1, torch.arange(16) % 4 + 1
        place = torch.stack([rows, columns], -1).float().expand(2, -1, -1)
        return {"flattened_patches": torch.cat([place, noise(2, 16, 16)], -1)}
    if prefix == "Step3p7":
        return {"pixel_values": noise(2, 3, 32, 32)}
    if prefix == "Fuyu":  # each row's 4 patches, flattened (transformers after 5.17 names them pixel_values)
        return {"pixel_values": noise(2, 4, 3 * 4 * 4)}
    if prefix == "DeepseekVLHybrid":  # and a 32x32 copy for its high-resolution tower
        return {"pixel_values": noise(2, 3, 16, 16), "high_res_pixel_values": noise(2, 3, 32, 32)}
    if prefix in MINICPM:  # the two images' 8x8 patches of 4x4 pixels, side by side in one row
        return {"pixel_values": noise(1, 3, 4, 2 * 64 * 4), "target_sizes": torch.tensor([[8, 8]] * 2)}
    if prefix == "MossTranscribeDiarize":  # and each recording's raw length (one chunk)
        return {"input_features": noise(2, 16, 16), "input_features_mask": torch.ones(2, 16, dtype=torch.long),
                "padding_mask": torch.ones(2, 160, dtype=torch.long)}
    if prefix == "Mllama":  # one image of one tile per row
        return {"pixel_values": noise(2, 1, 1, 3, 16, 16), "aspect_ratio_ids": torch.tensor([[1], [1]]),
                "aspect_ratio_mask": torch.ones(2, 1, 1, dtype=torch.long)}
    if prefix == "VideoLlava":
        return {"pixel_values_images": noise(2, 3, 16, 16)}
    if prefix in ("Qwen2Audio", "Voxtral", "AudioFlamingo3", "MusicFlamingo"):  # 16 frames of 16 mel bins
        return {"input_features": noise(2, 16, 16)}
    if prefix == "Nemotron3_5Transcribe":  # 32 frames of 16 mel bins, all real
        return {"input_features": noise(2, 32, 16), "input_features_mask": torch.ones(2, 32, dtype=torch.long)}
    if prefix == "GlmAsr":  # 32 frames of 16 mel bins, all real
        return {"input_features": noise(2, 16, 32), "input_features_mask": torch.ones(2, 32, dtype=torch.long)}
    if prefix == "OmniASR":  # 64 raw samples
        return {"input_values": noise(2, 1, 64)}
    if prefix == "VibeVoiceAsr":  # 16 raw samples
        return {"input_values": noise(2, 1, 16)}
    if prefix == "Molmo2":  # each image one crop of 16 flattened patches, pooled 2x2: 4 tokens of 4 patches each
        pooled = torch.tensor([[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]])
        crops = {"pixel_values": noise(2, 16, 3 * 4 * 4), "image_grids": torch.tensor([[2, 2, 0, 0]] * 2)}
        if "image_num_crops" in inspect.signature(transformers.Molmo2Model.get_image_features).parameters:
            # transformers 5.25 on: each image's pooling indexes its own patches, placed by its number of crops
            return {**crops, "image_token_pooling": torch.cat([pooled, pooled]),
                    "image_num_crops": torch.tensor([1, 1])}
        return {**crops, "image_token_pooling": torch.cat([pooled, pooled + 16])}  # before: all images' patches
    if prefix == "Gemma4Unified":  # each image's 4 flattened patches and their (x, y) positions on a 2x2 grid
        xy = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(2), indexing="xy"), -1).reshape(4, 2)
        return {"pixel_values": noise(2, 4, 3 * 4 * 4), "image_position_ids": xy.expand(2, -1, -1).clone()}
    if prefix == "FunAsrNano":  # 8 frames of 8 mel bins, stacked in pairs, all real
        return {"input_features": noise(2, 8, 16), "input_features_mask": torch.ones(2, 8, dtype=torch.long)}
    if prefix == "Qwen3ASR":  # 100 frames of 16 mel bins, all real
        return {"input_features": noise(2, 16, 100), "input_features_mask": torch.ones(2, 100, dtype=torch.long)}
    if prefix in ("GraniteSpeech", "GraniteSpeechPlus"):  # 30 frames of 16 features
        return {"input_features": noise(2, 30, 16)}
    if prefix == "PerceptionLM":  # one tile per image
        return {"pixel_values": noise(2, 1, 3, 16, 16)}
    if prefix == "Gemma3n":  # 64 frames of 16 mel bins, all real
        return {"input_features": noise(2, 64, 16), "input_features_mask": torch.ones(2, 64, dtype=torch.bool)}
    if prefix in ("SmolVLM", "Idefics3", "Idefics2", "Idefics", "InstructBlipVideo"):  # a list of images (frames) a row
        return {"pixel_values": noise(2, 1, 3, 16, 16)}
    if prefix == "GraniteDocling":  # a list of tiles per row, and which are real
        return {"pixel_values": noise(2, 1, 3, 16, 16), "pixel_attention_mask": torch.ones(2, 1, dtype=torch.bool)}
    if prefix == "Gemma4":  # each image's flattened patches and their (x, y) positions
        xy = torch.stack(torch.meshgrid(torch.arange(6), torch.arange(6), indexing="xy"), -1).reshape(36, 2)
        return {"pixel_values": noise(2, 36, 3 * 4 * 4), "image_position_ids": xy.expand(2, -1, -1).clone()}
    if prefix in (*ANY_RESOLUTION, "Granite4Vision"):  # the whole image, then its one tile
        return {"pixel_values": noise(2, 2, 3, 16, 16), "image_sizes": torch.tensor([[16, 16]] * 2)}
    if prefix == "Lfm2Vl":  # each image's flattened patches on a 4x4 grid
        return {"pixel_values": noise(2, 16, 3 * 4 * 4), "spatial_shapes": torch.tensor([[4, 4]] * 2),
                "pixel_attention_mask": torch.ones(2, 16, dtype=torch.bool)}
    grid = torch.tensor([[1, 4, 4]] * 2)  # each image a 4x4 grid of patches, merged 2x2
    if prefix == "NemotronH_Omni_Reasoning_V3_":  # each image's 16 flattened patches, on a 4x4 grid
        return {"pixel_values": noise(2 * 16, 3 * 4 * 4), "image_grid_hw": torch.tensor([[4, 4]] * 2)}
    if prefix in ("Kimi_K25", "PaddleOCRVL"):  # single-frame patches as 3x4x4 pixel tiles
        return {"pixel_values": noise(2 * 16, 3, 4, 4), "image_grid_thw": grid}
    # single-frame patches, flattened
    if prefix in ("VideoLlama3", "Dots3Note", "Ernie4_5_VLMoe", "HunYuanVL", "Cosmos3Edge", "HYV4VL",
                  "LlavaOnevision15", "Ovis2_5"):
        return {"pixel_values": noise(2 * 16, 3 * 4 * 4), "image_grid_thw": grid}
    # Qwen-VL's: 4x4 patches of 2 frames each
    return {"pixel_values": noise(2 * 16, 3 * 2 * 4 * 4), "image_grid_thw": grid}


def image_prompt(family: str, seed: int = 3) -> dict:
    """Two rows, each with one image between text tokens; the first row left-padded by 2 tokens."""
    prefix = class_prefix(family)
    image = [VISION_START, *[IMAGE] * IMAGE_TOKENS.get(prefix, 4), VISION_END]
    ids = torch.tensor([[0, 0, 7, *image, 9, 10], [8, 9, 7, *image, 11, 12]])
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    inputs = dict(input_ids=ids, attention_mask=mask, **_media(prefix, torch.Generator().manual_seed(seed)))
    if prefix == "Qwen2Audio":
        inputs["feature_attention_mask"] = torch.ones(2, 16, dtype=torch.long)
    if prefix.startswith("InstructBlip"):  # the instruction its Q-Former reads: the prompt's last 3 tokens
        inputs.update(qformer_input_ids=ids[:, -3:], qformer_attention_mask=torch.ones(2, 3, dtype=torch.long))
    if prefix in ("AudioFlamingo3", "MusicFlamingo"):
        inputs["input_features_mask"] = torch.ones(2, 16, dtype=torch.long)
    if prefix == "VideoLlama3":  # each image's patches merged 2x2
        inputs["image_merge_sizes"] = torch.tensor([2, 2])
    if prefix == "Idefics":  # each token from the image token on cross-attends to the image
        inputs["image_attention_mask"] = (ids == IMAGE).long().cummax(1).values[:, :, None]
    if prefix == "Kosmos2_5":  # where the image's features replace the token embeddings
        inputs["image_embeds_position_mask"] = (ids == IMAGE).long()
    if prefix == "Mllama":  # each token from the image token on cross-attends to the image's one tile
        inputs["cross_attention_mask"] = (ids == IMAGE).long().cummax(1).values[:, :, None, None]
    if prefix == "Aria":
        inputs["pixel_mask"] = torch.ones(2, 16, 16, dtype=torch.bool)
    if prefix in ("Mistral3", "LightOnOcr", "MistralLarge4", "Apertus1p5"):
        inputs["image_sizes"] = torch.tensor([[16, 16]] * 2)
    if prefix == "Gemma3":  # token_type_ids mark the image tokens, which attend to each other both ways
        inputs["token_type_ids"] = (ids == IMAGE).long()
    if prefix == "PaliGemma":  # 0: the prefix (image and prompt), which attends both ways
        inputs["token_type_ids"] = torch.zeros_like(ids)
    bare = getattr(transformers, f"{prefix}Model", None)  # Llama 4 has none
    if bare is not None and "mm_token_type_ids" in inspect.signature(bare.forward).parameters:
        inputs["mm_token_type_ids"] = (ids == IMAGE).int()  # transformers 5.x's Qwen3-VL computes M-RoPE from it
    return inputs
