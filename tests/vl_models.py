"""Tiny vision-language (and audio-language) models for test_vl_hosts.py: a 3-layer text decoder (d=64) beside a
1-block vision tower (or audio encoder), random weights, and a left-padded two-row prompt with one image each."""

import contextlib
import inspect
from unittest import mock

import torch
import transformers
from conftest import VOCAB, class_prefix
from host_configs import FAMILY_CONFIG
from torch import nn
from train_helpers import DOTS3_TEXT, GATED_DELTANET, GEMMA3N_TEXT, LLAMA4_TEXT, MLA, ROUTED_EXPERTS

IMAGE, VISION_START, VISION_END = 5, 3, 4  # token ids inside the tiny vocabulary
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# One vision block on 16x16 pixels in 4x4 patches; the number of image tokens per image the model makes of them.
VISION_BLOCK = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
SMALL_VISION = dict(VISION_BLOCK, image_size=16, patch_size=4)
# Qwen-VL: patches of 2 frames merged 2x2 into the text width, 4 tokens.
QWEN_VISION = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
                   spatial_merge_size=2, temporal_patch_size=2)
QWEN3_VISION = dict(QWEN_VISION, num_position_embeddings=16, deepstack_visual_indexes=[0])  # adds to layer 0's output
QWEN_VL = ("Qwen2VL", "Qwen2_5_VL", "Qwen3VL", "Qwen3VLMoe", "Qwen3_5", "Qwen3_5Moe")
# GLM-4.1V, GLM-4.5V (experts), GLM-OCR and GLM-4.6V (a wrapper over GLM-4.1V's text decoder): Qwen-VL's patches and
# multimodal RoPE, on half of each head
GLM_VL = ("Glm4v", "Glm4vMoe", "GlmOcr", "Glm46V")
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
    "Gemma4": dict(VISION_BLOCK, num_key_value_heads=2, head_dim=16, patch_size=4, pooling_kernel_size=3,
                   position_embedding_size=64),
    # Gemma 4 Unified: no tower, each 4x4-pixel patch of a 2x2 grid embedded by a linear layer: 4 tokens
    "Gemma4Unified": dict(patch_size=4, pooling_kernel_size=1, mm_embed_dim=64, mm_posemb_size=16,
                          output_proj_dims=64),
    "Llava": dict(SMALL_VISION, model_type="clip_vision_model"),  # every patch a token (CLS dropped): 16 tokens
    "Mistral3": dict(SMALL_VISION, model_type="pixtral", head_dim=16),  # patches merged 2x2: 4 tokens
    # any resolution, on a 1x1 grid of 16x16 tiles: the whole image's 16 patches, the tile's 16 and a newline token
    # after each of its 4 rows, 36 tokens
    "LlavaNext": dict(SMALL_VISION, model_type="clip_vision_model"),
    "LlavaOnevision": dict(SMALL_VISION, model_type="siglip_vision_model"),
    "LlavaNextVideo": dict(SMALL_VISION, model_type="clip_vision_model"),
}
IMAGE_TOKENS = {"Llava": 16, "LlavaNext": 36, "LlavaOnevision": 36, "LlavaNextVideo": 36, "PaliGemma": 16,
                "VipLlava": 16, "DeepseekVL": 16, "VideoLlava": 16, "HunYuanVL": 8, "Granite4Vision": 10,
                "Mllama": 1, "Janus": 16, "DeepseekVLHybrid": 16, "MiniCPMOcr": 16, "Apertus1p5": 16, "Chameleon": 16,
                "PerceptionLM": 16, "FastVlm": 16, "GraniteSpeech": 6, "GraniteSpeechPlus": 6, "Qwen3ASR": 13,
                "FunAsrNano": 8, "HYV4VL": 6, "Idefics": 1,
                "DeepseekOcr2": 145, "UnlimitedOcr": 7}
ANY_RESOLUTION = ("LlavaNext", "LlavaOnevision", "LlavaNextVideo")
# Qwen-VL's patch windows: a 4x4 grid of 2-frame 4x4-pixel patches, merged 2x2 into 4 tokens
QWEN_PATCH_WRAPPERS = ("Exaone4_5_", "Lfm3Vl", "HyperCLOVAXVisionV2")
SIGLIP = dict(SMALL_VISION, model_type="siglip_vision_model")
_QWEN_2_5_VISION = dict(QWEN_VISION, window_size=8, fullatt_block_indexes=[0])
_M_ROPE = dict(rope_theta=10000.0)  # with rope_scaling's mrope_section: 4.57's keys, which 5.x converts
_INTERN_VIT = dict(SMALL_VISION, image_size=[16, 16], patch_size=[4, 4])
_SAM_VISION = dict(hidden_size=32, output_channels=16, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                   patch_size=2, window_size=4, global_attn_indexes=[0], mlp_dim=64)
MINICPM = ("MiniCPMV4_6", "MiniCPMV4_7", "MiniCPMOcr")
# Muse Glimmer's and Muse Spark's tower: Qwen-VL's 2-frame 4x4 patches, merged 2x2
_MUSE_VISION = dict(patch_size=4, pos_emb_height=4, pos_emb_width=4, num_attention_heads=2, num_hidden_layers=1,
                           hidden_size=32, intermediate_size=64, merge_size=2, max_position_embeddings=16)
_AUDIO_ENCODER = dict(num_mel_bins=16, max_source_positions=8)
_ENCODER_BLOCK = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, num_mel_bins=16)
_CONV_TOKENIZER = dict(hidden_size=16, num_filters=8, downsampling_ratios=[2, 2], depths=[1, 1, 1], ffn_expansion=2)
_OMNI_AUDIO = dict(_AUDIO_ENCODER, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
                   output_dim=64, n_window=4)
# The models whose config is their text decoder's (TEXT with these changes) and these arguments: a vision tower (or
# audio encoder) and its image (audio) token, in the config's own names.
CONFIGS = {
    # LFM2-VL over LFM2 (layers 0 and 2 short convolutions): SigLIP 2 (NaFlex) on 4x4 patches of 4x4 pixels,
    # pixel-unshuffled 2x2: 4 tokens
    "Lfm2Vl": (dict(layer_types=["conv", "full_attention", "conv"], block_ff_dim=128),
               dict(vision_config=dict(VISION_BLOCK, patch_size=4, num_patches=16), image_token_id=IMAGE,
                    downsample_factor=2, projector_hidden_size=32)),
    # Llama 4: chunked attention (chunks of 4) in layers 0 and 1, experts in layer 1; 16 patches pixel-shuffled 2x2
    # into 4 tokens (its MLP widths follow: 32 channels x 4 = 128)
    "Llama4": (LLAMA4_TEXT,
               dict(vision_config=dict(SMALL_VISION, intermediate_size=128, vision_output_dim=64,
                                       projector_input_dim=64, projector_output_dim=64),
                    image_token_index=IMAGE, boi_token_index=VISION_START, eoi_token_index=VISION_END)),
    # PaliGemma over Gemma: every patch a token, 16
    "PaliGemma": (dict(model_type="gemma"), dict(vision_config=dict(SIGLIP, projection_dim=64),
                                                 image_token_index=IMAGE, projection_dim=64)),
    # InternVL (InternViT), SmolVLM's and Idefics 3's SigLIP: 16 patches, pixel-shuffled 2x2 into 4 tokens
    "InternVL": (dict(model_type="qwen2"), dict(vision_config=_INTERN_VIT, image_token_id=IMAGE, downsample_ratio=0.5)),
    "SmolVLM": (dict(model_type="llama"), dict(vision_config=SMALL_VISION, image_token_id=IMAGE, scale_factor=2)),
    "Idefics3": (dict(model_type="llama"), dict(vision_config=SMALL_VISION, image_token_id=IMAGE, scale_factor=2)),
    # Idefics 2 over Mistral: a perceiver resamples each image into 4 latents
    "Idefics2": (dict(model_type="mistral"), dict(
        vision_config=SMALL_VISION, image_token_id=IMAGE, perceiver_config=dict(
            resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=16,
            num_key_value_heads=1))),
    # VipLLaVA: its projector reads both hidden states of the 1-block tower; every patch a token, 16
    "VipLlava": (dict(model_type="llama"), dict(vision_config=dict(SMALL_VISION, model_type="clip_vision_model"),
                                                image_token_index=IMAGE, vision_feature_layers=[-2, -1])),
    # the audio-language ones: a 1-layer encoder turns 16 frames of 16 mel bins into 4 audio tokens
    "Qwen2Audio": (dict(model_type="qwen2"), dict(audio_token_index=IMAGE, audio_config=dict(
        _AUDIO_ENCODER, encoder_layers=1, d_model=32, encoder_attention_heads=2, encoder_ffn_dim=64))),
    "Voxtral": (dict(model_type="llama"), dict(audio_token_id=IMAGE, audio_config=dict(
        _AUDIO_ENCODER, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))),
    "AudioFlamingo3": (dict(model_type="qwen2"), dict(audio_token_id=IMAGE, audio_config=dict(
        _AUDIO_ENCODER, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))),
    # BLIP-2 and InstructBLIP over OPT: a 1-layer Q-Former reads the tower's patches with 4 queries, 4 tokens
    **dict.fromkeys(("Blip2", "InstructBlip"), (
        dict(model_type="opt", ffn_dim=128, word_embed_proj_dim=64, enable_bias=True),
        dict(vision_config=SMALL_VISION, num_query_tokens=4, image_token_index=IMAGE, qformer_config=dict(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            encoder_hidden_size=32)))),
    # Nemotron 3.5 Transcribe over NemotronH (Mamba 2, attention and experts, one a layer): its speech encoder and
    # speaker diarization model (1 block each) turn 32 frames of 16 mel bins into 4 audio tokens
    "Nemotron3_5Transcribe": (dict(model_type="nemotron_h", **FAMILY_CONFIG["NemotronH"]), dict(
        audio_token_id=IMAGE, audio_config=dict(asr_config=_ENCODER_BLOCK, diarization_config=dict(
            audio_config=_ENCODER_BLOCK, head_config=dict(hidden_size=16, audio_hidden_size=32, num_speakers=4),
            streaming_config=dict(num_speakers=4))),
        word_timestamp_config=dict(_ENCODER_BLOCK, intermediate_size=16, vocab_size=16, blank_token_id=15))),
    # VibeVoice-ASR over Qwen2: acoustic and semantic convolutional tokenizers (downsampling 2x2) turn 16 samples into
    # 4 audio tokens; its sigma-VAE's noise off (vae_std 0; transformers 5.17 has no sample=False), so every forward
    # reads the same audio tokens
    "VibeVoiceAsr": (dict(model_type="qwen2"), dict(
        audio_token_id=IMAGE, audio_bos_token_id=VISION_START, audio_eos_token_id=VISION_END,
        acoustic_tokenizer_encoder_config=dict(_CONV_TOKENIZER, vae_std=0.0),
        semantic_tokenizer_encoder_config=dict(_CONV_TOKENIZER, hidden_size=32))),
    # Music Flamingo: Audio Flamingo 3's encoder (and rotary time embeddings of the audio tokens) over Qwen2
    "MusicFlamingo": (dict(model_type="qwen2"), dict(
        audio_token_id=IMAGE, audio_bos_token_id=VISION_START, audio_eos_token_id=VISION_END,
        audio_config=dict(_AUDIO_ENCODER, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, model_type="audioflamingo3_encoder"))),
    # GLM-ASR over Llama: 32 frames of 16 mel bins into 4 audio tokens
    "GlmAsr": (dict(model_type="llama"), dict(audio_token_id=IMAGE,
                                              audio_config=dict(_ENCODER_BLOCK, max_position_embeddings=64))),
    # Omni-ASR over Llama: a 2-layer convolution (strides 4, 4) turns 64 raw samples into 4 audio tokens
    "OmniASR": (dict(model_type="llama"), dict(audio_token_id=IMAGE, audio_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2, conv_dim=[16, 16], conv_stride=[4, 4], conv_kernel=[4, 4], layerdrop=0.0,
        hidden_dropout=0.0, activation_dropout=0.0))),
    # Aya Vision and Command A Vision over Cohere 2 (a parallel residual): SigLIP, pixel-shuffled 2x2: 4 tokens
    "AyaVision": (dict(model_type="cohere2"), dict(vision_config=SIGLIP, image_token_index=IMAGE, downsample_factor=2,
                                                   vision_feature_layer=-1)),
    "Cohere2Vision": (dict(model_type="cohere2"), dict(vision_config=SIGLIP, image_token_id=IMAGE,
                                                       downsample_factor=2)),
    # DeepSeek-VL over Llama (every patch a token, 16); LightOnOCR over Qwen3 (Pixtral, merged 2x2: 4 tokens)
    "DeepseekVL": (dict(model_type="llama"), dict(vision_config=SIGLIP, image_token_id=IMAGE)),
    "LightOnOcr": (dict(model_type="qwen3"), dict(vision_config=VISION["Mistral3"], image_token_id=IMAGE,
                                                  spatial_merge_size=2)),
    # Video-LLaVA over Llama, with an image: every patch a token, 16
    "VideoLlava": (dict(model_type="llama"), dict(vision_config=VISION["Llava"], image_token_index=IMAGE,
                                                  video_token_index=6, vision_feature_layer=-1)),
    # Ovis2 over Qwen2: a visual vocabulary of 32 embeddings, 16 patches strided 2x2: 4 tokens
    "Ovis2": (dict(model_type="qwen2"), dict(vision_config=dict(SMALL_VISION, vocab_size=32, hidden_stride=2),
                                             image_token_id=IMAGE, visual_indicator_token_ids=[13, 14, 15, 16, 17],
                                             vocab_size=VOCAB, hidden_size=64)),
    # Qianfan-OCR over Qwen3: InternViT-like, pixel-shuffled 2x2: 4 tokens
    "QianfanOCR": (dict(model_type="qwen3"), dict(vision_config=_INTERN_VIT, image_token_id=IMAGE, image_seq_length=4)),
    # Aria over its text decoder (4 experts, 2 per token, one shared): 16 patches queried into 4 tokens
    "Aria": (dict(model_type="aria_text", moe_num_experts=4, moe_topk=2, moe_num_shared_experts=1),
             dict(vision_config=dict(SMALL_VISION, model_type="idefics3_vision"), image_token_index=IMAGE,
                  projector_patch_to_query_dict={16: 4})),
    # EXAONE 4.5 over EXAONE 4 (sliding and full layers alternate), HyperCLOVA X Vision V2 over HyperCLOVA X (normed,
    # then scaled), LFM3-VL over LFM3 (a short convolution, a sliding and a full attention layer): Qwen-VL patches
    "Exaone4_5_": (dict(model_type="exaone4", sliding_window=4, sliding_window_pattern=2),
                   dict(vision_config=dict(_QWEN_2_5_VISION, num_key_value_heads=2), image_token_id=IMAGE,
                        video_token_id=6)),
    "HyperCLOVAXVisionV2": (dict(model_type="hyperclovax", use_post_norm=True, residual_multiplier=0.22),
                            dict(vision_config=dict(_QWEN_2_5_VISION, model_type="qwen2_5_vl_vision"),
                                 image_token_id=IMAGE, video_token_id=6)),
    "Lfm3Vl": (dict(model_type="lfm3", layer_types=["conv", "sliding_attention", "full_attention"], sliding_window=4),
               dict(vision_config=dict(VISION_BLOCK, patch_size=4, num_key_value_heads=2),
                    image_token_id=IMAGE, video_token_id=6, vision_start_token_id=VISION_START,
                    vision_end_token_id=VISION_END, projector_hidden_size=32)),
    # VideoLLaMA 3 over Qwen2: 4x4 single-frame patches merged 2x2, 4 tokens
    "VideoLlama3": (dict(model_type="qwen2"), dict(vision_config=dict(VISION_BLOCK, patch_size=4),
                                                   image_token_id=IMAGE, video_token_id=6)),
    # dots.llm3 (its own text decoder; its indexer keeps every key, see test_hosts.KEEP_EVERY_KEY): 4x4 single-frame
    # patches merged 2x2, and an audio encoder beside
    "Dots3Note": (dict(DOTS3_TEXT, index_topk=64), dict(
        vision_config=dict(VISION_BLOCK, patch_size=4, spatial_merge_size=2, adapter_in_dim=32, adapter_out_dim=64,
                           mlp_layer_types=["dense"]),
        audio_config=dict(VISION_BLOCK, adapter_input_size=32, adapter_out_dim=64, downsample_hidden_size=32,
                          feature_size=16),
        image_token_id=IMAGE, video_token_id=6, audio_token_id=13)),
    # ERNIE 4.5-VL (4 experts from layer 1 on, each a text and a vision one, and a shared one), HunYuan-VL (a row
    # separator after each row of 2 tokens and the image's begin and end: 8 tokens) and PaddleOCR-VL: their own text
    # decoders, over 4x4 single-frame patches merged 2x2 and multimodal RoPE (4 axes in HunYuan-VL's)
    "Ernie4_5_VLMoe": (dict(moe_num_experts=4, moe_k=2, moe_intermediate_size=[32, 32], moe_num_shared_experts=1,
                            moe_layer_start_index=1, **_M_ROPE, rope_scaling={"rope_type": "default",
                                                                               "mrope_section": [3, 3, 2]}),
                       dict(vision_config=dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64,
                                               patch_size=4),
                            image_token_id=IMAGE, image_start_token_id=VISION_START, image_end_token_id=VISION_END,
                            video_token_id=6, video_start_token_id=14, video_end_token_id=15)),
    "HunYuanVL": (dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2, 2]}),
                  dict(vision_config=dict(VISION_BLOCK, patch_size=4, out_hidden_size=64, text_hidden_size=64,
                                          max_image_size=64),  # position embeddings for 16x16 patches
                       image_token_id=IMAGE)),
    "PaddleOCRVL": (dict(**_M_ROPE, rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3]}),
                    dict(vision_config=dict(VISION_BLOCK, patch_size=4, image_size=16), image_token_id=IMAGE,
                         video_token_id=6, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)),
    # Granite 4 Vision (Granite's decoder, scaled): SigLIP (2 blocks of 64 channels, as its Q-Former projector needs)
    # over the whole image and its one tile, windows of 2x2 queried from 4x4 patches, a newline token after each; the
    # features of vision block 0 added to layer 1's output, and spatial samples to layers 0 to 2: 10 tokens
    "Granite4Vision": (dict(residual_multiplier=0.22), dict(
        vision_config=dict(VISION_BLOCK, hidden_size=64, num_hidden_layers=2, image_size=16, patch_size=4,
                           model_type="siglip_vision_model"),
        qformer_config=dict(intermediate_size=64, hidden_size=64, num_attention_heads=1, encoder_hidden_size=64),
        image_token_index=IMAGE, image_grid_pinpoints=[[16, 16]],
        downsample_rate="1/2", deepstack_layer_map=[[0, 1]], spatial_target_layers=[0, 1, 2, 2],
        vision_feature_layer=-1, vision_feature_select_strategy="full", projector_dropout=0.0)),
    # Step 3.7 (layers 0 and 2 sliding, 4 experts from layer 1 on): 8x8 patches of a 32x32 image, convolved into 4
    # tokens
    "Step3p7": (dict(sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                     mlp_layer_types=["dense", "sparse", "sparse"], num_local_experts=4, n_routed_experts=4,
                     num_experts_per_tok=2, moe_intermediate_size=32, share_expert_dim=32),
                dict(vision_config=dict(VISION_BLOCK, image_size=32, patch_size=4, max_position_embeddings=64),
                     image_token_id=IMAGE)),
    # Qwen2.5-Omni's and Qwen3-Omni's thinkers (Qwen3-Omni's with 4 experts in every layer), with their audio encoders:
    # Qwen-VL's patches and multimodal RoPE
    "Qwen2_5OmniThinker": (dict(_M_ROPE, rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3]}), dict(
        vision_config=dict(_QWEN_2_5_VISION), audio_config=dict(_OMNI_AUDIO), image_token_index=IMAGE,
        video_token_index=6, audio_token_index=13, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
        audio_start_token_id=14, audio_end_token_id=15)),
    "Qwen3OmniMoeThinker": (dict(_M_ROPE, rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3]},
                                 num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32), dict(
        vision_config=QWEN3_VISION, audio_config=dict(_OMNI_AUDIO, downsample_hidden_size=32), image_token_id=IMAGE,
        video_token_id=6, audio_token_id=13, vision_start_token_id=VISION_START, audio_start_token_id=14)),
    # Kimi K2.5 over DeepSeek-V3 (multi-head latent attention, experts from layer 1): 4x4 patches merged 2x2
    "Kimi_K25": (dict(MLA, **ROUTED_EXPERTS, model_type="deepseek_v3", first_k_dense_replace=1),
                 dict(vision_config=dict(VISION_BLOCK, patch_size=4, pos_emb_height=8, pos_emb_width=8),
                      projection_hidden_size=32, image_token_id=IMAGE, video_token_id=6,
                      vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)),
    # GOT-OCR 2.0 over Qwen2: a SAM-like tower on 8x8 patches of 2x2 pixels, its neck and projector striding 4x: 4
    # tokens; DeepSeek-VL hybrid over Llama: SigLIP on 16x16 pixels (every patch a token, 16) beside a SAM-like tower on
    # a 32x32 copy; Janus over Llama (its image-generation head beside): every patch a token, 16
    "GotOcr2": (dict(model_type="qwen2"), dict(vision_config=_SAM_VISION, image_token_index=IMAGE)),
    "DeepseekVLHybrid": (dict(model_type="llama"), dict(
        vision_config=SIGLIP, high_res_vision_config=dict(_SAM_VISION, image_size=32, patch_size=4,
                                                          model_type="sam_vision_model"),
        image_token_id=IMAGE)),
    "Janus": (dict(model_type="llama"), dict(
        vision_config=dict(VISION_BLOCK, image_size=16, patch_size=4, projection_dim=64, num_image_tokens=16, depth=1),
        vq_config=dict(embed_dim=8, num_embeddings=32, latent_channels=32, base_channels=32, channel_multiplier=[1, 2],
                       num_res_blocks=1, num_patches=4, projection_dim=64, image_token_embed_dim=64),
        image_token_id=IMAGE)),
    # Cosmos 3 Omni over Qwen3-VL's text decoder: Qwen-VL's patches and multimodal RoPE
    "Cosmos3Omni": (dict(_M_ROPE, rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3]}), dict(
        vision_config=QWEN3_VISION, image_token_id=IMAGE, video_token_id=6, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END)),
    # MiniCPM-V 4.6 and 4.7 and MiniCPM-OCR over Qwen3.5's text decoder (layers 0 and 2 a gated DeltaNet): 8x8 patches
    # of a 32x32 image, merged in the tower 2x2 and after it 2x2 into 4 tokens (MiniCPM-OCR: once, 16 tokens)
    **dict.fromkeys(MINICPM, (dict(GATED_DELTANET, model_type="qwen3_5_text",
                                   layer_types=["linear_attention", "full_attention", "linear_attention"]),
                              dict(vision_config=dict(VISION_BLOCK, num_hidden_layers=2, image_size=32, patch_size=4,
                                                      insert_layer_id=0),
                                   insert_layer_id=0, image_size=32, image_token_id=IMAGE, video_token_id=6))),
    # MOSS Transcribe-Diarize over Qwen3: a Whisper-like encoder turns 16 frames of 16 mel bins into 8, merged 2 by 2
    # into 4 audio tokens
    "MossTranscribeDiarize": (dict(model_type="qwen3"), dict(
        audio_config=dict(num_mel_bins=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          hidden_size=32, max_source_positions=8),
        audio_token_id=IMAGE, audio_merge_size=2)),
    # their own text decoders: Cosmos 3 Edge (Llama's; 4x4 single-frame patches merged 2x2), MiniMax-M3-VL (4 experts),
    # Cohere Compass (Cohere 2's parallel residual, layers 0 and 2 sliding) and Muse Glimmer (Gemma 2's sandwich of
    # norms; sliding windows of 4) over Qwen-VL's 2-frame patches, and Mistral Large 4 (GLM-5's sparse attention, whose
    # indexer keeps every key: see test_hosts.KEEP_EVERY_KEY) over Pixtral's 16 patches merged 2x2: 4 tokens each
    "Cosmos3Edge": (dict(_M_ROPE, rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3]}), dict(
        vision_config=dict(VISION_BLOCK, patch_size=4, num_patches=16, spatial_merge_size=2), projector_hidden_size=64,
        image_token_id=IMAGE, video_token_id=6, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)),
    "MiniMaxM3VL": (dict(num_local_experts=4, num_experts_per_tok=2, dense_intermediate_size=128,
                         shared_intermediate_size=32, rotary_dim=8), dict(
        vision_config=dict(VISION_BLOCK, image_size=16, patch_size=4, temporal_patch_size=2, spatial_merge_size=2),
        image_token_index=IMAGE, video_token_index=6, projector_hidden_size=64)),
    "CohereCompass": (dict(sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           rope_parameters=dict.fromkeys(("sliding_attention", "full_attention"),
                                                         {"rope_type": "default", "rope_theta": 10000.0,
                                                          "mrope_section": [3, 3, 2]})), dict(
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=16),
        image_token_id=IMAGE, video_token_id=6, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)),
    "MuseGlimmer": (dict(sliding_window=4), dict(vision_config=_MUSE_VISION, image_token_id=IMAGE,
                                                  video_token_id=6, out_hidden_size=128, projector_hidden_size=32)),
    # Muse Spark: Muse Glimmer's, with a residual gate module and 4 experts in layer 1, and an audio encoder beside
    "MuseSpark": (dict(sliding_window=4, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       moe_hidden_size=32, mlp_layer_types=["dense", "sparse", "dense"]), dict(
        vision_config=_MUSE_VISION, image_token_id=IMAGE, video_token_id=6, audio_token_id=13,
        audio_config=dict(patch_sizes=[2, 2, 2, 2], hidden_sizes=[16, 16, 32, 32], depths=[1, 1, 1, 1],
                          num_hidden_layers=4, out_hidden_size=64),
        out_hidden_size=128, projector_hidden_size=32)),
    # Granite Docling (Granite's decoder, scaled): 16 patches of one tile, pixel-shuffled 2x2 into 4 tokens (its
    # deepstack features added to the text decoder's layers)
    "GraniteDocling": (dict(residual_multiplier=0.22), dict(
        vision_config=dict(VISION_BLOCK, image_size=16, patch_size=4, out_hidden_size=64, scale_factor=2),
        image_token_id=IMAGE)),
    "MistralLarge4": (dict(MLA, **ROUTED_EXPERTS, first_k_dense_replace=1, index_topk=64, index_head_dim=16,
                           index_n_heads=2, indexer_types=["full", "shared", "full"]),
                      dict(vision_config=VISION["Mistral3"], image_token_index=IMAGE, spatial_merge_size=2)),
    # DeepSeek-OCR 2 and Unlimited-OCR (DeepSeek-V2's decoder, experts from layer 1): a SAM-like tower on 8x8 patches
    # strided 4x, then a Qwen2-like encoder (DeepSeek-OCR 2: reading out through its 144 learned queries, then a view
    # separator: 145 tokens; Unlimited-OCR: the 2x2 patches, a newline after each row and a view separator: 7)
    **{name: (dict(MLA, **ROUTED_EXPERTS, mlp_layer_types=["dense", "sparse", "sparse"]), dict(
        vision_config=dict(sam_config=dict(_SAM_VISION, downsample_channels=[16, 32]),
                           encoder_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=2)),
        image_token_id=IMAGE)) for name in ("DeepseekOcr2", "UnlimitedOcr")},
    # Apertus 1.5 over its text decoder: a VQ tokenizer turns the image into 16 of 16 visual tokens of the vocabulary
    # (ids 100 to 115, then 8 audio tokens from a WavTokenizer encoder beside)
    "Apertus1p5": (dict(), dict(
        vision_config=dict(codebook_size=16, embed_dim=8, latent_channels=32, base_channels=32,
                           channel_multiplier=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], resolution=16),
        audio_config=dict(model_type="wavtokenizer_encoder", num_filters=8, hidden_size=16, codebook_size=8,
                          codebook_dim=16, num_lstm_layers=1, upsampling_ratios=[2, 2]),
        image_token_id=IMAGE, audio_token_id=13, image_token_offset=100, audio_token_offset=116)),
    # PerceptionLM over Llama and FastVLM over Qwen2, their timm towers stand-ins (`_TowerStandIn`): 16 tokens
    "PerceptionLM": (dict(model_type="llama"), dict(
        vision_config=dict(model_type="timm_wrapper", architecture="vit_pe_core", model_args={"embed_dim": 32}),
        image_token_id=IMAGE, video_token_id=6)),
    "FastVlm": (dict(model_type="qwen2"), dict(
        vision_config=dict(model_type="timm_wrapper", architecture="fastvit_mci3", hidden_size=32),
        image_token_index=IMAGE, image_seq_length=16)),
    # Granite Speech (and Plus) over Granite (scaled): a 1-block conformer, then a 1-layer Q-Former turns each window
    # of 15 frames into 3 audio tokens: 6 of 30 frames
    **dict.fromkeys(("GraniteSpeech", "GraniteSpeechPlus"), (dict(model_type="granite", residual_multiplier=0.22), dict(
        encoder_config=dict(input_dim=16, num_layers=1, hidden_dim=32, num_heads=2, output_dim=8, context_size=8,
                            dropout=0.0),
        projector_config=dict(model_type="blip_2_qformer", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64, encoder_hidden_size=32),
        audio_token_index=IMAGE, has_lora_adapter=False))),
    # Fun-ASR-Nano over Qwen3: a 2-layer SAN-M encoder (stacked frames) and a 1-layer adaptor, a token per frame: 8
    "FunAsrNano": (dict(model_type="qwen3"), dict(
        audio_config=dict(num_mel_bins=8, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                          num_hidden_layers=2, num_stacked_frames=2, num_timestamp_prediction_layers=1,
                          fsmn_kernel_size=3, hidden_dropout=0.0, attention_dropout=0.0),
        adaptor_config=dict(hidden_size=64, num_attention_heads=4, intermediate_size=16, num_hidden_layers=1,
                            projector_hidden_size=64),
        audio_token_id=IMAGE)),
    # Qwen3-ASR over Qwen3: a 1-layer encoder turns 100 frames of 16 mel bins (one chunk) into 13 audio tokens
    "Qwen3ASR": (dict(model_type="qwen3"), dict(
        audio_config=dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                          d_model=32, output_dim=64, downsample_hidden_size=32),
        audio_token_id=IMAGE, pad_token_id=0, eos_token_id=2)),
    # Fuyu over Persimmon: the image's 4x4-pixel patches embedded by a linear layer, 4 tokens (no tower)
    "Fuyu": (dict(model_type="persimmon"), dict(image_size=16, patch_size=4, image_token_id=IMAGE)),
    # Mllama (Llama 3.2 Vision): its own text decoder, whose layer 1 cross-attends to the image features (the text
    # holds one image token; rope_scaling: as 4.57 needs it); a 2-block vision tower (one of them global) over one
    # 16x16 tile of 4x4 patches
    "Mllama": (dict(cross_attention_layers=[1], rope_theta=10000.0, rope_scaling={"rope_type": "default"}), dict(
        vision_config=dict(VISION_BLOCK, attention_heads=2, num_global_layers=1, vision_output_dim=64, image_size=16,
                           patch_size=4, max_num_tiles=1, intermediate_layers_indices=[0],
                           supported_aspect_ratios=[[1, 1]]),
        image_token_index=IMAGE)),
}
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


# The decoders with hyper-connections, over Qwen-VL's patches merged 2x2: Qwen4-Exp's and HY-V4's as in test_hosts
# (M-RoPE on HY-V4's 8 rope channels of its latent attention; its merged rows end in a newline token, 6 tokens an
# image), GLM-5-Next's latent attention (NoPE, as its config requires) beside linear attention
_M_ROPE_8 = dict(rope_theta=10000.0, rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2]})
HYPER_VL = {
    "Qwen4Exp": (dict(FAMILY_CONFIG["Qwen4Exp"], rope_theta=10000.0,
                      rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3]}),
                 dict(QWEN_VISION, num_position_embeddings=16),
                 dict(vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)),
    "HYV4VL": (dict(FAMILY_CONFIG["HYV4"], **_M_ROPE_8), dict(QWEN_VISION, num_position_embeddings=16),
               dict(vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)),
    "Glm5Next": (dict(FAMILY_CONFIG["HYV4"], num_key_value_heads=4, qk_rope_head_dim=0,
                      layer_types=["linear_attention", "full_attention", "linear_attention"], linear_head_dim=16,
                      linear_num_heads=4),
                 dict(QWEN_VISION, image_size=16),
                 dict(image_start_token_id=VISION_START, image_end_token_id=VISION_END, video_start_token_id=14,
                      video_end_token_id=15)),
}


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
                    "IdeficsForConditionalGeneration": "IdeficsForVisionText2Text"}


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
        return {"pixel_values": noise(2, 16, 3 * 4 * 4), "image_token_pooling": torch.cat([pooled, pooled + 16]),
                "image_grids": torch.tensor([[2, 2, 0, 0]] * 2)}
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
    if prefix in ("SmolVLM", "Idefics3", "Idefics2", "Idefics"):  # a list of images per row
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
    if prefix in ("Kimi_K25", "PaddleOCRVL"):  # single-frame patches as 3x4x4 pixel tiles
        return {"pixel_values": noise(2 * 16, 3, 4, 4), "image_grid_thw": grid}
    # single-frame patches, flattened
    if prefix in ("VideoLlama3", "Dots3Note", "Ernie4_5_VLMoe", "HunYuanVL", "Cosmos3Edge", "HYV4VL"):
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
    if prefix == "InstructBlip":  # the instruction its Q-Former reads: the prompt's last 3 tokens
        inputs.update(qformer_input_ids=ids[:, -3:], qformer_attention_mask=torch.ones(2, 3, dtype=torch.long))
    if prefix in ("AudioFlamingo3", "MusicFlamingo"):
        inputs["input_features_mask"] = torch.ones(2, 16, dtype=torch.long)
    if prefix == "VideoLlama3":  # each image's patches merged 2x2
        inputs["image_merge_sizes"] = torch.tensor([2, 2])
    if prefix == "Idefics":  # each token from the image token on cross-attends to the image
        inputs["image_attention_mask"] = (ids == IMAGE).long().cummax(1).values[:, :, None]
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
