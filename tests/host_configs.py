"""The tiny configs of tests/test_hosts.py's text hosts: each family's config beyond conftest.HOST (3 layers, d=64),
in the config's own names, with the layer types, experts and scales that exercise its decoder layer."""

from conftest import NOT_SET, TRANSFORMERS_4, VOCAB
from train_helpers import (
    CHECKPOINT_LAYERS,
    DEEPSEEK_V4,
    DOTS3_TEXT,
    GATED_DELTANET,
    GEMMA3N_TEXT,
    LLAMA4_TEXT,
    MAMBA_2,
    MLA,
    ROUTED_EXPERTS,
)

# Special tokens inside the tiny vocabulary, for the families whose defaults lie outside it.
IN_VOCAB = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
# Each family's config beyond conftest.HOST. The mixture-of-experts families: every layer sparse, 4 experts, 2 per
# token, so the hooks sit around a mixture-of-experts MLP.
FAMILY_CONFIG = {
    "Qwen3Moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1),
    "Mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "Phi3": IN_VOCAB, "SmolLM3": IN_VOCAB, "Glm4": IN_VOCAB,
    # Granite 3's scale on what joins the residual (its default, 1.0, would hide a missing scale)
    "Granite": dict(residual_multiplier=0.22),
    "GraniteMoe": dict(residual_multiplier=0.22, num_local_experts=4, num_experts_per_tok=2),
    "GraniteMoeShared": dict(residual_multiplier=0.22, num_local_experts=4, num_experts_per_tok=2,
                             shared_intermediate_size=32),
    "GptOss": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=4),  # sliding and full layers
    "DeepseekV3": dict(MLA, **ROUTED_EXPERTS, first_k_dense_replace=1),  # the first layer dense
    "Glm4Moe": dict(n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
                    moe_intermediate_size=32),
}
# The hybrids: layers 0 and 2 a gated DeltaNet (linear attention, its state in the cache), layer 1 full attention.
HYBRID = dict(IN_VOCAB, **GATED_DELTANET, layer_types=["linear_attention", "full_attention", "linear_attention"])
HYBRID_MOE = dict(HYBRID, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                  shared_expert_intermediate_size=32)
# Gemma 4 as in its small models (per-layer input embeddings, the last layer reusing an earlier one's keys and
# values: layer 2 layer 1's) with the mixture-of-experts block of its 26B-A4B beside the MLP; layer 0 slides
FAMILY_CONFIG["Gemma4Text"] = dict(vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=8,
                                   num_kv_shared_layers=1, enable_moe_block=True, num_experts=4, top_k_experts=2,
                                   moe_intermediate_size=32,
                                   layer_types=["sliding_attention", "full_attention", "full_attention"])
# Gemma 4 Unified: sliding and full layers, the last reusing layer 1's keys and values
FAMILY_CONFIG["Gemma4UnifiedText"] = dict(IN_VOCAB, sliding_window=4, num_kv_shared_layers=1,
                                          layer_types=["sliding_attention", "full_attention", "full_attention"])
# Gemma 3n, the MLP of layer 0 keeping 5 % of its activations (as E2B's first ten); AltUp's active stream the second
# of four (E2B's is the first), so that reading or writing the first one instead shows
FAMILY_CONFIG["Gemma3nText"] = dict(IN_VOCAB, **GEMMA3N_TEXT, activation_sparsity_pattern=[0.95, 0.0, 0.0],
                                    altup_active_idx=1)
FAMILY_CONFIG.update(Qwen3Next=dict(HYBRID_MOE, decoder_sparse_step=1), Qwen3_5=HYBRID, Qwen3_5Moe=HYBRID_MOE,
                     OlmoHybrid=HYBRID)
# The other hybrids, with the same layer types: Granite 4 (Mamba 2, every sum scaled; here with a mixture of experts
# beside its shared MLP) and LFM2 (short convolutions; the MoE variant sparse from layer 1 on)
FAMILY_CONFIG["GraniteMoeHybrid"] = {**IN_VOCAB, **CHECKPOINT_LAYERS["GraniteMoeHybrid"], "mamba_n_heads": 4,
                                     "layer_types": ["mamba", "attention", "mamba"], "num_local_experts": 4,
                                     "num_experts_per_tok": 2, "shared_intermediate_size": 32}
FAMILY_CONFIG["Lfm2"] = {**IN_VOCAB, **CHECKPOINT_LAYERS["Lfm2"], "layer_types": ["conv", "full_attention", "conv"],
                         "block_ff_dim": 128}
FAMILY_CONFIG["Lfm2Moe"] = dict(FAMILY_CONFIG["Lfm2"], num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                num_dense_layers=1)
FAMILY_CONFIG["Lfm3"] = dict(IN_VOCAB, layer_types=["conv", "sliding_attention", "full_attention"], sliding_window=4)
# Bamba: Mamba 2 in layers 0 and 2, attention in layer 1
FAMILY_CONFIG["Bamba"] = dict(IN_VOCAB, **MAMBA_2, mamba_n_heads=4, attn_layer_indices=[1])
# Jamba: Mamba (1) in layers 0 and 2, each with a mixture of 4 experts; attention and a dense MLP in layer 1
FAMILY_CONFIG["Jamba"] = {**IN_VOCAB, **CHECKPOINT_LAYERS["Jamba"], "attn_layer_period": 3, "mamba_expand": 1}
# more pre-norm (and post-norm, scaled) decoders; mixtures of 4 experts, 2 per token
FAMILY_CONFIG.update(
    Ernie4_5=IN_VOCAB, SeedOss=IN_VOCAB, HunYuanDenseV1=IN_VOCAB, Arcee=IN_VOCAB, Apertus=IN_VOCAB,
    Ernie4_5_Moe=dict(IN_VOCAB, moe_num_experts=4, moe_k=2, moe_intermediate_size=32, moe_num_shared_experts=1,
                      moe_layer_start_index=0),
    HunYuanMoEV1=dict(IN_VOCAB, num_experts=4, moe_topk=2), Olmoe=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=2),
    MiniMaxM2=dict(IN_VOCAB, num_local_experts=4, num_experts_per_tok=2),
    ExaoneMoe=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1,
                   sliding_window=4, sliding_window_pattern=2),  # sliding and full layers alternate
    Exaone4=dict(IN_VOCAB, sliding_window=4, sliding_window_pattern=2),
    FlexOlmo=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=2),
    Glm=IN_VOCAB, Helium=IN_VOCAB, Nemotron=IN_VOCAB, Olmo=IN_VOCAB,
    Qwen2Moe=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                  shared_expert_intermediate_size=32),
    Phimoe=dict(IN_VOCAB, num_local_experts=4, num_experts_per_tok=2),
    Llama4Text=dict(IN_VOCAB, **LLAMA4_TEXT),
    GraniteSWA=dict(IN_VOCAB, residual_multiplier=0.22, sliding_window=4),
    # multi-head latent attention, dense or with the first layer dense and then 4 routed experts
    DeepseekV2=dict(IN_VOCAB, **MLA, **ROUTED_EXPERTS, first_k_dense_replace=1),
    DeepseekV32=dict(IN_VOCAB, **MLA, **ROUTED_EXPERTS, first_k_dense_replace=1, index_topk=4, index_head_dim=16,
                     index_n_heads=2),
    # GLM-5: as DeepSeek-V3.2, layer 1 reusing layer 0's top-k
    GlmMoeDsa=dict(IN_VOCAB, **MLA, **ROUTED_EXPERTS, first_k_dense_replace=1, index_topk=4, index_head_dim=16,
                   index_n_heads=2, indexer_types=["full", "shared", "full"]),
    KimiLinear=dict(IN_VOCAB, **MLA, **ROUTED_EXPERTS, num_local_experts=4, linear_head_dim=16, linear_num_heads=4,
                    layer_types=["linear_attention", "full_attention", "linear_attention"]),
    BailingHybrid=dict(IN_VOCAB, **MLA, **ROUTED_EXPERTS, num_local_experts=4, first_k_dense_replace=1,
                       layer_types=["linear_attention", "full_attention", "linear_attention"]),
    LaraMini=dict(IN_VOCAB, **GATED_DELTANET, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                  shared_expert_intermediate_size=32, sliding_window=4,
                  layer_types=["linear_attention", "sliding_attention", "full_attention"]),
    Flint=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
               shared_expert_intermediate_size=32, sliding_window=4, mlp_only_layers=[0]),
    AXK1=dict(IN_VOCAB, **MLA, **ROUTED_EXPERTS, mlp_layer_types=["dense", "sparse", "sparse"]),
    AXK2=dict(IN_VOCAB, **MLA, **ROUTED_EXPERTS, index_topk=4, index_head_dim=16, index_n_heads=2,
              mlp_layer_types=["dense", "sparse", "sparse"], gated_norm_rank=4),
    Dots3Note=dict(IN_VOCAB, **DOTS3_TEXT),
    Glm4MoeLite=dict(IN_VOCAB, **MLA, **ROUTED_EXPERTS, mlp_layer_types=["dense", "sparse", "sparse"]),
    Mistral4=dict(IN_VOCAB, **MLA, **ROUTED_EXPERTS, first_k_dense_replace=1, head_dim=32),  # its rope's width
    Youtu=dict(IN_VOCAB, **MLA), MiniCPM3=dict(IN_VOCAB, **MLA, scale_depth=1.4),  # 1.4 / sqrt(3 layers)
    MiMoV2Flash=dict(IN_VOCAB, **ROUTED_EXPERTS, sliding_window=4, v_head_dim=16,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    SolarOpen=dict(IN_VOCAB, **ROUTED_EXPERTS),
    Dots1=dict(IN_VOCAB, **ROUTED_EXPERTS, first_k_dense_replace=1, n_shared_experts=1),
    BitNet=IN_VOCAB, Jais2=IN_VOCAB, Ministral3=IN_VOCAB,
    HyperCLOVAX=dict(IN_VOCAB, use_post_norm=True, residual_multiplier=0.22),
    NanoChat=IN_VOCAB, Cwm=IN_VOCAB, Persimmon=IN_VOCAB, DiffLlama=IN_VOCAB, Apertus1p5Text=IN_VOCAB,
    JetMoe=dict(IN_VOCAB, num_local_experts=4, num_experts_per_tok=2, kv_channels=16),  # 4 heads of 16 channels
    # the GPT-2 lineage names its sizes otherwise: width 64, 3 layers, 4 heads (GPT-Neo: global and local attention)
    **dict.fromkeys(("GPT2", "GPTBigCode"), dict(IN_VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=64)),
    GPTJ=dict(IN_VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=64, rotary_dim=8),
    Bloom=dict(IN_VOCAB, n_layer=3, n_head=4),  # ALiBi
    Mpt=dict(IN_VOCAB, d_model=64, n_layers=3, n_heads=4, max_seq_len=64),  # ALiBi
    CTRL=dict(IN_VOCAB, n_embd=64, n_layer=3, n_head=4, dff=128, n_positions=64),  # sinusoidal positions
    OpenAIGPT=dict(IN_VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=64),
    Moshi=dict(IN_VOCAB, ffn_dim=256, max_position_embeddings=64),
    # RecurrentGemma: layers 0 and 1 recurrent (RG-LRU), layer 2 attention sliding over 8 tokens (last: a recurrent
    # layer after attention carries on the outputs of left padding's fully masked rows, which change as the sequence
    # grows, so the model's own cached generation differs from recomputing, by 0.013, TALAN off too)
    RecurrentGemma=dict(attention_window_size=8, block_types=("recurrent", "recurrent", "attention")),
    GPTNeoXJapanese=IN_VOCAB,
    BioGpt=dict(IN_VOCAB, max_position_embeddings=64),
    # DBRX: 4 experts, 2 per token; rope_theta and clip_qkv set where its attention reads them (transformers 5.24
    # reads rope_theta off the attention config, and clamps by clip_qkv unconditionally); the experts' width is the
    # model's in 4.x, its own in 5.x
    Dbrx=dict(IN_VOCAB, d_model=64, n_heads=4, n_layers=3, max_seq_len=64,
              attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
              ffn_config=dict(ffn_hidden_size=32, moe_num_experts=4, moe_top_k=2,
                              **({} if TRANSFORMERS_4 else {"hidden_size": 64}))),
    Emu3=IN_VOCAB,
    Doge=IN_VOCAB,  # its dynamic-mask window (2048 keys) wider than the prompt: narrower, its own cache drifts
    Zaya=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=1, moe_intermediate_size=32, router_hidden_size=16),
    XGLM=dict(IN_VOCAB, d_model=64, num_layers=3, attention_heads=4, ffn_dim=128, max_position_embeddings=64),
    # Falcon 7B's layer (one norm, multi-query attention), and 40B's (two norms, grouped keys and values)
    Falcon=dict(IN_VOCAB, num_kv_heads=1, head_dim=NOT_SET),
    **{"Falcon-40B": dict(IN_VOCAB, new_decoder_architecture=True, num_kv_heads=2, head_dim=NOT_SET),
       "Falcon-RW": dict(IN_VOCAB, parallel_attn=False, head_dim=NOT_SET)},  # sequential
    GPTNeo=dict(IN_VOCAB, num_layers=3, num_heads=4, attention_types=[[["global", "local"], 1], [["global"], 1]],
                window_size=4, max_position_embeddings=64),
    CodeGen=dict(IN_VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=64, n_ctx=64, rotary_dim=8),
    VaultGemma=IN_VOCAB, AriaText=dict(IN_VOCAB, moe_num_experts=4, moe_topk=2, moe_num_shared_experts=1),
    Mellum=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    Laguna=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                shared_expert_intermediate_size=32),
    HYV3=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, num_shared_experts=1),
    Afmoe=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, num_dense_layers=1,
               num_shared_experts=1),
    Kolibri1=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                  shared_expert_intermediate_size=32),
    # parallel residuals (Cohere 2: sliding layers beside a full one; its MoE: 4 experts, 2 per token)
    Cohere=IN_VOCAB, Phi=IN_VOCAB, GPTNeoX=IN_VOCAB, Cohere2=dict(IN_VOCAB, sliding_window=4),
    **{"GPTNeoX-sequential": dict(IN_VOCAB, use_parallel_residual=False)},  # GPT-NeoX as sequential as StableLM 2
    StableLm=IN_VOCAB,  # sequential, as StableLM 2's config has it; parallel with use_parallel_residual
    Cohere2Moe=dict(IN_VOCAB, sliding_window=4, num_experts=4, num_experts_per_tok=2),
    # NemotronH: a Mamba 2 layer, an attention layer, a mixture-of-experts layer
    NemotronH=dict(IN_VOCAB, layers_block_type=["linear_attention", "full_attention", "moe"], mamba_num_heads=4,
                   mamba_head_dim=16, ssm_state_size=16, n_groups=1, expand=1, chunk_size=4, n_routed_experts=4,
                   num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=32, n_group=1,
                   topk_group=1),
    # Falcon-H1: attention beside Mamba 2 heads of 16 channels in every layer
    FalconH1=dict(IN_VOCAB, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=16,
                  mamba_expand=1, mamba_chunk_size=4),
    # OPT (pre-norm), and OPT-350m's post-norm layers between a projection of 32-wide embeddings in and out
    OPT=dict(IN_VOCAB, ffn_dim=128, word_embed_proj_dim=64, max_position_embeddings=64),
    **{"OPT-350m": dict(IN_VOCAB, ffn_dim=128, word_embed_proj_dim=32, max_position_embeddings=64,
                        do_layer_norm_before=False)},
    # state-space models: Mamba (16 states), Mamba 2 (4 heads of 16 channels), Falcon-Mamba
    Mamba=dict(IN_VOCAB, state_size=16), FalconMamba=dict(IN_VOCAB, state_size=16),
    Mamba2=dict(IN_VOCAB, num_heads=4, head_dim=16, state_size=16, n_groups=1, expand=1, chunk_size=4),
    # Zamba: layers 1 and 2 run the shared attention block first (transformers 4.x: layer 2, its fixed pattern)
    Zamba=dict(IN_VOCAB, mamba_d_state=16, mamba_expand=1, use_mamba_kernels=False, attention_hidden_size=128,
               attention_head_dim=32,
               **({} if TRANSFORMERS_4 else {"layers_block_type": ["linear_attention", "hybrid", "hybrid"]})),
    # Zamba 2: layer 1 runs it (heads of 16 channels)
    Zamba2=dict(IN_VOCAB, mamba_d_state=16, n_mamba_heads=4, chunk_size=4, mamba_expand=1, use_mamba_kernels=False,
                layers_block_type=["mamba", "hybrid", "mamba"]),
    # Inkling: sliding (over 4 tokens) and full attention, relative position logits, the layers from 1 on sparse
    Inkling=dict(IN_VOCAB, swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=16, sliding_window_size=4,
                 layer_types=["hybrid_sliding", "hybrid", "hybrid_sliding"], rel_extent=8,
                 mlp_layer_types=["dense", "sparse", "sparse"], moe_intermediate_size=32, n_routed_experts=4,
                 num_experts_per_tok=2, n_shared_experts=1),
    # LongCat-Flash: 3 layers of two blocks (its num_hidden_layers counts blocks), multi-head latent attention, 4 routed
    # experts and a zero (identity) one, 2 per token (each real one routed some token of the training test's batch:
    # transformers 4.57 leaves an idle expert's LoRA without a gradient)
    LongcatFlash=dict(IN_VOCAB, **MLA, num_hidden_layers=NOT_SET, num_layers=3, head_dim=16, ffn_hidden_size=128,
                      moe_topk=2, n_routed_experts=4, zero_expert_num=1, expert_ffn_hidden_size=32),
    # MiniMax: lightning attention (linear, in blocks of 4 tokens) in layers 0 and 2, full attention in layer 1, each
    # sum alpha * normed input + beta * attention (factors other than 1, as in its checkpoints), 4 experts, 2 per token
    MiniMax=dict(IN_VOCAB, num_local_experts=4, num_experts_per_tok=2, block_size=4,
                 layer_types=["linear_attention", "full_attention", "linear_attention"], full_attn_alpha_factor=1.5,
                 full_attn_beta_factor=0.7, linear_attn_alpha_factor=1.3, linear_attn_beta_factor=0.8),
    # Beam: sliding and full attention, the layers from 1 on with 4 experts, 2 per token
    Beam=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_group=1, topk_group=1,
              mlp_layer_types=["dense", "sparse", "sparse"], sliding_window=4,
              layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    # Phi-4-multimodal: Phi-3's decoder beside a 1-layer SigLIP (16x16 images in 4x4 patches) and a 1-block conformer
    Phi4Multimodal=dict(IN_VOCAB, vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                     num_attention_heads=2, image_size=16, patch_size=4, crop_size=16),
                        audio_config=dict(hidden_size=32, intermediate_size=64, num_blocks=1, num_attention_heads=2,
                                          ext_pw_out_channel=32, depthwise_separable_out_channel=32,
                                          nemo_conv_channels=32, input_size=16)),
    GraniteMoeSWA=dict(IN_VOCAB, residual_multiplier=0.22, sliding_window=4, num_local_experts=4,
                       num_experts_per_tok=2),
    # ModernBERT's decoder: sliding (a window of 4) and global attention alternating, as in its checkpoints
    ModernBertDecoder=dict(IN_VOCAB, sep_token_id=3, cls_token_id=4, local_attention=4, global_attn_every_n_layers=2),
    # Ergo: a dense first layer, then 4 routed experts (2 per token) beside a shared one; layer 1 global (no positions),
    # layers 0 and 2 sliding over 4 tokens
    Ergo=dict(first_dense_intermediate_size=128, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
              shared_intermediate_size=32, sliding_window=4, global_attention_every_n_layers=2),
    # Kolibri 1.1: a sliding layer (dense MLP), then two indexed layers, the first the indexer (keeping every key), the
    # second reading its keys and values; 4 experts, 2 per token
    Kolibri1_1=dict(IN_VOCAB, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                    shared_expert_intermediate_size=32, sliding_window=4, mlp_only_layers=[0],
                    mlp_only_intermediate_size=128,
                    layer_types=["sliding_attention", "indexed_attention", "indexed_attention"], index_layers=[1],
                    kv_source_layers=[0, 1, 1], index_topk=64, index_pool_size=64, index_compression=4,
                    index_num_heads=2, index_num_local_tokens=4, index_num_sink_tokens=1),
    # MiniCPM 5 MoE: GLM-4.7-Flash's layer over grouped-query attention, dense layer 0, 4 experts (2 per token)
    MiniCPM5Moe=dict(IN_VOCAB, **ROUTED_EXPERTS, n_shared_experts=1, mlp_layer_types=["dense", "sparse", "sparse"]),
    DeepseekV4=dict(IN_VOCAB, **DEEPSEEK_V4),  # hyper-connections (train_helpers.DEEPSEEK_V4)
    # HY-V4: 4 streams, multi-head latent attention with a sparse indexer (every key kept), experts from layer 1 on
    HYV4=dict(IN_VOCAB, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
              n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, index_n_heads=2, index_head_dim=16,
              index_topk=64),
    # Qwen4-Exp: 4 streams flattened into one tensor, gated DeltaNet in layers 0 and 2 (full attention, its sparse
    # indexer keeping every key, in layer 1), 4 experts, 2 per token
    Qwen4Exp=dict(IN_VOCAB, **GATED_DELTANET, layer_types=["linear_attention", "full_attention", "linear_attention"],
                  num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                  hc_lowrank=8, ngram_vocab_size_base=1000, split_ngram_parts=4, indexer_n_heads=2, indexer_kv_heads=1,
                  indexer_head_dim=16, indexer_budget=64, indexer_compress_ratio=4),
)
