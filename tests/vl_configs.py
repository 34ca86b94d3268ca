"""The configs of test_vl_hosts.py's tiny vision-language (and audio-language) models: a 3-layer text decoder
(d=64) and a 1-block vision tower (or audio encoder) each, in the configs' own names; vl_models builds them."""

from conftest import VOCAB
from host_configs import FAMILY_CONFIG
from train_helpers import DOTS3_TEXT, GATED_DELTANET, LLAMA4_TEXT, MLA, ROUTED_EXPERTS

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
_OPT = dict(model_type="opt", ffn_dim=128, word_embed_proj_dim=64, enable_bias=True)
_BLIP = dict(vision_config=SMALL_VISION, num_query_tokens=4, qformer_config=dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, encoder_hidden_size=32))
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
    # BLIP-2 and InstructBLIP over OPT: a 1-layer Q-Former reads the tower's patches with 4 queries, 4 tokens (and
    # InstructBLIP-Video's, of a 1-frame video)
    **dict.fromkeys(("Blip2", "InstructBlip"), (_OPT, dict(_BLIP, image_token_index=IMAGE))),
    "InstructBlipVideo": (_OPT, dict(_BLIP, video_token_index=IMAGE)),
    # Nemotron 3.5 Transcribe over NemotronH (Mamba 2, attention and experts, one a layer): its speech encoder and
    # speaker diarization model (1 block each) turn 32 frames of 16 mel bins into 4 audio tokens
    "Nemotron3_5Transcribe": (dict(model_type="nemotron_h", **FAMILY_CONFIG["NemotronH"]), dict(
        audio_token_id=IMAGE, audio_config=dict(asr_config=_ENCODER_BLOCK, diarization_config=dict(
            audio_config=_ENCODER_BLOCK, head_config=dict(hidden_size=16, audio_hidden_size=32, num_speakers=4),
            streaming_config=dict(num_speakers=4))),
        word_timestamp_config=dict(_ENCODER_BLOCK, intermediate_size=16, vocab_size=16, blank_token_id=15))),
    # Nemotron 3 Nano Omni over NemotronH: a 1-block RADIO tower makes a 4x4 grid of 4x4-pixel patches (its one class
    # token dropped), pixel-shuffled 2x2 into 4 tokens
    "NemotronH_Omni_Reasoning_V3_": (dict(model_type="nemotron_h", **FAMILY_CONFIG["NemotronH"]), dict(
        vision_config=dict(VISION_BLOCK, patch_size=4, image_size=16, max_img_size=64, num_cls_tokens=1,
                           num_registers=0, video_temporal_patch_size=2),
        vision_hidden_size=32, projector_hidden_size=64, image_token_id=IMAGE, video_token_id=6)),
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
    # LLaVA-OneVision 1.5 over Qwen3 (RICE-ViT: 4x4 single-frame patches merged 2x2, 4 tokens)
    "LlavaOnevision15": (dict(model_type="qwen3"), dict(
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4,
                           spatial_merge_size=2, out_hidden_size=64),
        image_token_id=IMAGE, video_token_id=6, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)),
    # Ovis2.5 over Qwen3: a visual vocabulary of 32 embeddings over 4x4 single-frame patches merged 2x2: 4 tokens, the
    # image's start and end tokens replaced by learned visual embeddings
    "Ovis2_5": (dict(model_type="qwen3"), dict(
        vision_config=dict(VISION_BLOCK, patch_size=4, image_size=16, vocab_size=32, max_position_embeddings=16),
        image_token_id=IMAGE, video_token_id=6, image_start_token_id=VISION_START, image_end_token_id=VISION_END,
        video_start_token_id=14, video_end_token_id=15)),
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
