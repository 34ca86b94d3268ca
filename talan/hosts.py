"""Which Hugging Face models TALAN can patch, and where their decoder stack lives."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class Streams:
    """Where a decoder layer's input and output keep the residual stream that TALAN reads and writes at the pre and
    post sites (and `talan analyze` measures): the tensor itself, unless they hold several streams.

    - ``active``: they stack streams on dim 0 (``[S, B, T, D]``, Gemma 3n's AltUp); TALAN's is the ``active``-th.
    - ``count``: hyper-connections, ``count`` streams (``[B, T, N, D]``, or ``[B, T, N * D]`` flattened, Qwen4-Exp's).
      TALAN reads their mean and adds its update to each stream. Each stack with these carries its streams from one
      sublayer to the next through the identity (HY-V4's, Qwen4-Exp's) or a doubly stochastic matrix (DeepSeek-V4's
      and GLM-5-Next's, by Sinkhorn's iterations, which end on its columns), so an update added to every stream stays
      in every stream, and their mean moves as a plain residual stream does (by the mean of the weights the
      sublayer's output joins each stream with; up to Sinkhorn's tolerance in the rows): TALAN's block reads and
      writes a residual stream as in a plain stack. (GLM-5-Next's final collapse is that mean too.)"""

    active: int | None = None
    count: int | None = None
    hidden_size: int | None = None

    def read(self, t: torch.Tensor) -> torch.Tensor:
        """TALAN's stream of ``t`` (a tensor holding none of the streams, as the stack's normed output, as it is)."""
        if self.active is not None and t.dim() == 4:
            return t[self.active]
        if self.count is not None and t.dim() == 4:
            return t.mean(dim=2)
        if self.count is not None and self.count > 1 and t.shape[-1] == self.count * self.hidden_size:
            return t.unflatten(-1, (self.count, self.hidden_size)).mean(dim=2)
        return t

    def write(self, t: torch.Tensor, read: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``t`` with its stream ``read`` (what `read` gave) become ``new``."""
        if read is t:  # a single stream
            return new
        if self.active is not None:
            return torch.cat([t[:self.active], new[None], t[self.active + 1:]])
        update = (new - read).unsqueeze(2)  # the same update to every hyper-connection stream
        return t + update if t.dim() == 4 else (t.unflatten(-1, (self.count, self.hidden_size)) + update).flatten(-2)


@dataclass(frozen=True)
class LayerLayout:
    """Where a family's decoder layer keeps the state between attention and MLP (``residual + attention``, the mid
    site): ``residual_input``'s input is the layer input (the residual; its output, the normed input, with
    ``residual_normed``), the layer adds the output of ``attention_output`` to it (each scaled as `scales_of` says;
    or, with ``adds_residual``, it returns that sum itself), and ``mlp_norm`` reads that sum. ``token_mixer`` gets
    the layer's kwargs: self_attn all of them (position ids, cache); a hybrid layer's linear attention, Mamba or
    convolution no position ids, and in transformers 4.x maybe nothing but the cache. A hybrid family's layers
    without a self_attn (none, or None) follow ``other_layers``. A layer with no point between attention and MLP (a
    parallel residual; one mixer per layer) has no ``attention_output`` or ``mlp_norm``, and ``no_mid`` says why:
    TALAN acts at its input or output only. Modules are named by their path below the layer (LongCat-Flash's
    ``self_attn.0``)."""

    residual_input: str = "input_layernorm"
    attention_output: str | None = "self_attn"
    mlp_norm: str | None = "post_attention_layernorm"
    attention_scale: str | None = None  # a layer float attribute that scales the attention output (Granite's)
    residual_scale: str | None = None  # one that scales the residual (MiniMax's attn_alpha_factor)
    attention_gate: str | None = None  # a layer parameter whose tanh scales the attention output (Mllama's)
    # a layer int attribute k: the layer joins sqrt((k - 1) / k) * residual + attention / sqrt(k) (Beam's)
    depth_scaled: str | None = None
    residual_normed: bool = False  # the residual is residual_input's output, the normed layer input (MiniMax's)
    adds_residual: bool = False  # attention_output returns residual + attention itself (BLOOM's, ZAYA's)
    token_mixer: str = "self_attn"
    other_layers: LayerLayout | None = None
    # a layer attribute that, when true, makes the layer follow ``variant``: StableLM's and GPT-NeoX's
    # use_parallel_residual (a parallel residual), Molmo 2's norm_after (each sublayer's output normed, not its input);
    # or the class of the layers that follow it (Chameleon's swin-norm layers, which hold no such attribute)
    variant_if: str | None = None
    variant_class: str | None = None
    variant: LayerLayout | None = None
    # a module whose output joins residual + attention, the sum then divided by sqrt(2) (Gemma 3n's LAuReL)
    residual_branch: str | None = None
    # a config attribute: the layers' input and output stack residual streams on dim 0 ([S, B, T, D], Gemma 3n's
    # AltUp), and the one it names (the stream attention and MLP update) is TALAN's at the pre and post sites
    active_stream: str | None = None
    # a config attribute: the layers' input and output hold that many hyper-connection streams (see `Streams`)
    hyper_streams: str | None = None
    no_mid: str | None = None  # why a layer without attention_output has no mid site, for the error

    def of(self, layer: nn.Module) -> LayerLayout:
        """The layout of ``layer``: ``other_layers`` in a hybrid's layers with no self_attn, ``variant`` where
        ``variant_if`` or ``variant_class`` says so, else this one."""
        if self.other_layers is not None and getattr(layer, "self_attn", None) is None:
            return self.other_layers
        if (self.variant_if is not None and getattr(layer, self.variant_if, False)) \
                or type(layer).__name__ == self.variant_class:
            return self.variant
        return self

    def streams(self, config) -> Streams:
        """Where the layers' inputs and outputs of a stack with this ``config`` keep TALAN's residual stream."""
        if self.hyper_streams is not None:
            return Streams(count=int(getattr(config, self.hyper_streams)), hidden_size=config.hidden_size)
        return Streams(active=None if self.active_stream is None else int(getattr(config, self.active_stream)))

    def scales_of(self, layer: nn.Module) -> tuple:
        """``(r, a)``: ``layer`` joins ``r * residual + a * attention`` (None: 1). Granite's ``residual_multiplier``
        as ``a``; MiniMax's alpha and beta as ``r`` and ``a`` (floats); Beam's depth scales; 1/sqrt(2) for both
        beside a ``residual_branch``, whose output is added to the residual first; or the tanh of Mllama's
        cross-attention gate as ``a`` (a tensor, kept in the graph: the mid site divides its write by it, and the
        gate's share of the gradient through that cancels)."""
        if self.depth_scaled is not None:
            k = getattr(layer, self.depth_scaled)
            return ((k - 1) / k) ** 0.5, k ** -0.5
        if self.residual_branch is not None:  # (residual + branch + attention) / sqrt(2)
            return 0.5 ** 0.5, 0.5 ** 0.5
        if self.attention_gate is not None:
            return None, getattr(layer, self.attention_gate).tanh()

        def factor(name):  # a float attribute of the layer; None for none, or for 1
            value = None if name is None else float(getattr(layer, name))
            return None if value == 1.0 else value

        return factor(self.residual_scale), factor(self.attention_scale)


# The model families TALAN patches, by class-name prefix. Qwen3 and Llama are the paper's hosts; the others have
# the same decoder layer up to where the attention output joins the residual, which is all the hooks rely on:
# the layer input is the residual, the attention output (normed first in the sandwich-norm and post-norm families,
# dropped out first in Phi-3, scaled in Granite) is added to it, a (normed) MLP or mixture of experts is added to
# that, and the stack passes its kwargs on to each layer and each layer to ``self_attn`` (tests/test_hosts.py runs
# every site on each).
_PRE_NORM = LayerLayout()
_SANDWICH = LayerLayout(attention_output="post_attention_layernorm", mlp_norm="pre_feedforward_layernorm")
# GLM-4's: the attention output normed first (post_self_attn_layernorm), the MLP normed by post_attention_layernorm
_GLM4 = LayerLayout(attention_output="post_self_attn_layernorm")
# no norm before attention or MLP: self_attn reads the residual itself, the MLP reads residual + attention
_POST_NORM = LayerLayout(residual_input="self_attn", attention_output="post_attention_layernorm", mlp_norm="mlp")
# Granite adds residual + attention * residual_multiplier (a config float)
_GRANITE = LayerLayout(attention_scale="residual_multiplier")
# The hybrids mix tokens by self_attn in some layers and otherwise by a recurrent or convolutional token mixer (its
# state in the cache), which the layer treats as its self_attn: Qwen3-Next and Qwen3.5 (a gated DeltaNet in three
# layers of four), Granite 4 (Mamba 2 in most layers, all scaled), LFM2 (short convolutions, its norms named
# otherwise) and OLMo-hybrid (pre-norm gated DeltaNet layers beside post-norm attention layers, as OLMo 2's)
_LINEAR_ATTENTION_LAYERS = LayerLayout(attention_output="linear_attn", token_mixer="linear_attn")  # pre-norm
_HYBRID = LayerLayout(other_layers=_LINEAR_ATTENTION_LAYERS)
_OLMO_HYBRID = replace(_POST_NORM, other_layers=_LINEAR_ATTENTION_LAYERS)
_GRANITE_HYBRID = replace(_GRANITE, other_layers=replace(_GRANITE, attention_output="mamba", token_mixer="mamba"))
_LFM2_ATTENTION_LAYERS = LayerLayout(residual_input="operator_norm", mlp_norm="ffn_norm")
_LFM2 = replace(_LFM2_ATTENTION_LAYERS, other_layers=replace(_LFM2_ATTENTION_LAYERS, attention_output="conv",
                                                             token_mixer="conv"))
# LFM3 norms the token mixer's output first (post_operator_norm: an identity without its sandwich norm)
_LFM3_ATTENTION_LAYERS = replace(_LFM2_ATTENTION_LAYERS, attention_output="post_operator_norm")
_LFM3 = replace(_LFM3_ATTENTION_LAYERS, other_layers=replace(_LFM3_ATTENTION_LAYERS, token_mixer="conv"))
# A parallel residual: attention and MLP read the same normed layer input and join the residual stream together
# (Cohere's Command R and Command A, Phi-1/2, GPT-NeoX's Pythia), so there is no point between them: TALAN acts at
# the layer's input or output only
_PARALLEL = LayerLayout(attention_output=None, mlp_norm=None, no_mid="add attention and MLP to the residual stream "
                        "together (a parallel residual)")
# NemotronH: each layer adds one normed token mixer (Mamba 2 or attention) or one MLP (or MoE) to the residual stream,
# so a layer has no point between attention and MLP either
_ONE_MIXER = LayerLayout(residual_input="norm", attention_output=None, mlp_norm=None,
                         no_mid="each add one token mixer or one MLP to the residual stream")
# Apertus (1 and 1.5): pre-norm, its norms named otherwise
_APERTUS = LayerLayout(residual_input="attention_layernorm", mlp_norm="feedforward_layernorm")
# Bamba (Mamba 2) and Jamba (Mamba 1; a mixture of experts in some layers): Mamba layers beside attention ones, the
# MLP normed by pre_ff_layernorm
_MAMBA_HYBRID = LayerLayout(mlp_norm="pre_ff_layernorm", other_layers=LayerLayout(
    attention_output="mamba", token_mixer="mamba", mlp_norm="pre_ff_layernorm"))
# OPT, BioGPT, XGLM, Doge, DBRX, Falcon-RW and GPT-NeoX Japanese drop the attention output out functionally before it
# joins the residual: in training no hook could add to that sum, so TALAN acts at a layer's input or output only
_DROPPED_INSIDE = LayerLayout(attention_output=None, mlp_norm=None,
                              no_mid="drop the attention output out inside their forward")
_GPT2 = LayerLayout(residual_input="ln_1", attention_output="attn", mlp_norm="ln_2", token_mixer="attn")
# BLOOM (layers in h): pre-norm, its attention adding the residual (after dropout) itself and returning the sum
_BLOOM = LayerLayout(attention_output="self_attention", token_mixer="self_attention", adds_residual=True)
# Mllama (Llama 3.2 Vision): Llama's layers, and every few a layer that cross-attends to the image features in place of
# self_attn, its output gated by the tanh of a learned scalar (zero in an untrained model). The stack skips those
# layers in a forward without an image (none, and none cached).
_MLLAMA = LayerLayout(other_layers=LayerLayout(attention_output="cross_attn", token_mixer="cross_attn",
                                               attention_gate="cross_attn_attn_gate"))
# each sublayer's output normed instead of its input, the norms named as a pre-norm layer's (Molmo 2's norm_after,
# Chameleon's swin norm): self_attn reads the residual, input_layernorm norms its output, the MLP reads the sum
_NORM_AFTER = LayerLayout(residual_input="self_attn", attention_output="input_layernorm", mlp_norm="mlp")
# Hyper-connections (`Streams`): the layer keeps several residual streams; each sublayer reads a weighted sum of them
# and its output joins each stream by a weight of its own, so no one tensor is "residual + attention" for the mid site
_HYPER = LayerLayout(attention_output=None, mlp_norm=None, hyper_streams="hc_mult",
                     no_mid="keep several residual streams (hyper-connections), which the attention output joins each "
                     "by a weight of its own")
FAMILIES = {
    "Qwen3": _PRE_NORM, "Llama": _PRE_NORM, "Qwen3Moe": _PRE_NORM, "Qwen2": _PRE_NORM, "Mistral": _PRE_NORM,
    "Ministral": _PRE_NORM, "Mixtral": _PRE_NORM, "Gemma": _PRE_NORM, "SmolLM3": _PRE_NORM, "Starcoder2": _PRE_NORM,
    "Gemma2": _SANDWICH, "Gemma3Text": _SANDWICH, "Gemma4Text": _SANDWICH,
    "Gemma4UnifiedText": _SANDWICH,  # Gemma 4 Unified: each layer's output then scaled by a learned scalar
    "Glm4": _GLM4,
    "Phi3": LayerLayout(attention_output="resid_attn_dropout"), "Olmo2": _POST_NORM, "Olmo3": _POST_NORM,
    "Phi4Multimodal": LayerLayout(attention_output="resid_attn_dropout"),  # Phi-3's decoder, beside image and audio
    "Granite": _GRANITE, "GraniteMoe": _GRANITE, "GraniteMoeShared": _GRANITE,
    "GptOss": _PRE_NORM, "DeepseekV3": _PRE_NORM, "Glm4Moe": _PRE_NORM,  # mixtures of experts; MLA in DeepSeek-V3
    "Qwen3Next": _HYBRID, "Qwen3_5": _HYBRID, "Qwen3_5Moe": _HYBRID,  # Qwen3.5 is vision-language too
    "GraniteMoeHybrid": _GRANITE_HYBRID, "Lfm2": _LFM2, "Lfm2Moe": _LFM2, "OlmoHybrid": _OLMO_HYBRID,
    "Lfm3": _LFM3, "Bamba": _MAMBA_HYBRID, "Jamba": _MAMBA_HYBRID,
    # more decoders, dense and mixtures of experts: pre-norm (Apertus's norms named otherwise), post-norm (EXAONE 4,
    # FlexOlmo), scaled (Granite SWA)
    "Ernie4_5": _PRE_NORM, "Ernie4_5_Moe": _PRE_NORM, "SeedOss": _PRE_NORM, "HunYuanDenseV1": _PRE_NORM,
    "HunYuanMoEV1": _PRE_NORM, "Arcee": _PRE_NORM, "Olmoe": _PRE_NORM, "MiniMaxM2": _PRE_NORM, "ExaoneMoe": _PRE_NORM,
    "Apertus": _APERTUS,
    "Exaone4": _POST_NORM, "FlexOlmo": _POST_NORM, "GraniteSWA": _GRANITE, "GraniteMoeSWA": _GRANITE,
    "Qwen2Moe": _PRE_NORM, "Phimoe": _PRE_NORM, "Olmo": _PRE_NORM, "Glm": _PRE_NORM, "Helium": _PRE_NORM,
    "Nemotron": _PRE_NORM, "Llama4Text": _PRE_NORM,  # Llama 4's text decoder: chunked attention, NoPE layers, MoE
    # multi-head latent attention (DeepSeek-V2's, V3.2's with its sparse indexer, GLM-4.7-Flash's, Mistral 4's,
    # Youtu's, MiniCPM3's: scaled), mixtures of experts (MiMo-V2-Flash, Solar Open, dots.llm1), dense (BitNet,
    # Jais 2, Ministral 3), and HyperCLOVA X (each sum normed first, then scaled)
    "DeepseekV2": _PRE_NORM, "DeepseekV32": _PRE_NORM, "Glm4MoeLite": _PRE_NORM, "Mistral4": _PRE_NORM,
    "Youtu": _PRE_NORM, "MiniCPM3": LayerLayout(attention_scale="residual_scale"), "MiMoV2Flash": _PRE_NORM,
    "MiniCPM5Moe": _PRE_NORM,  # GLM-4.7-Flash's layer
    "SolarOpen": _PRE_NORM, "Dots1": _PRE_NORM, "BitNet": _PRE_NORM, "Jais2": _PRE_NORM, "Ministral3": _PRE_NORM,
    "HyperCLOVAX": LayerLayout(attention_output="post_norm1", attention_scale="residual_multiplier"),
    # more pre-norm decoders (Apertus 1.5's norms named as Apertus's; VaultGemma's MLP norm named otherwise), and
    # Arcee's AFM MoE and Kolibri (attention output normed first)
    "NanoChat": _PRE_NORM, "Cwm": _PRE_NORM, "DiffLlama": _PRE_NORM, "Mellum": _PRE_NORM, "Laguna": _PRE_NORM,
    "HYV3": _PRE_NORM, "AriaText": _PRE_NORM, "Persimmon": _PRE_NORM,
    "JetMoe": LayerLayout(attention_output="self_attention", token_mixer="self_attention"),  # its attention named so
    "Apertus1p5Text": _APERTUS,
    "VaultGemma": LayerLayout(mlp_norm="pre_feedforward_layernorm"),
    "Afmoe": LayerLayout(attention_output="post_attention_layernorm", mlp_norm="pre_mlp_layernorm"),
    "Kolibri1": _GLM4,
    # Kolibri 1.1: Kolibri's, its indexed layers attending to the keys an indexer picked (some reading an earlier
    # layer's keys and values); each layer returns the indexer's pool beside the hidden states
    "Kolibri1_1": _GLM4,
    "Cohere": _PARALLEL, "Cohere2": _PARALLEL, "Cohere2Moe": _PARALLEL, "Phi": _PARALLEL,
    "FalconH1": _PARALLEL,  # attention beside Mamba 2 (then a normed MLP)
    # StableLM 2: sequential; its config may say not
    "StableLm": LayerLayout(variant_if="use_parallel_residual", variant=_PARALLEL),
    # GPT-NeoX: parallel in Pythia, else sequential with the attention output dropped out first
    "GPTNeoX": LayerLayout(attention_output="post_attention_dropout", token_mixer="attention",
                           variant_if="use_parallel_residual", variant=_PARALLEL),
    "NemotronH": _ONE_MIXER,
    "Mamba": _ONE_MIXER, "Mamba2": _ONE_MIXER, "FalconMamba": _ONE_MIXER,  # state-space models: a Mamba per layer
    # Zamba and Zamba 2: a Mamba per layer too, some layers first running a shared attention block (and MLP) whose
    # output only joins the Mamba's input
    "Zamba": _ONE_MIXER, "Zamba2": _ONE_MIXER,
    # the GPT-2 lineage (layers in ``h``): GPT-2, StarCoder's GPTBigCode and GPT-Neo pre-norm by ln_1 and ln_2, their
    # attention output dropped out inside attn; GPT-J and CodeGen parallel (attention and MLP read ln_1)
    "GPT2": _GPT2, "GPTBigCode": _GPT2, "GPTNeo": _GPT2, "GPTJ": _PARALLEL, "CodeGen": _PARALLEL,
    # Falcon (layers in h): parallel (7B, and 40B's two norms), or sequential (Falcon-RW)
    "Falcon": replace(_PARALLEL, no_mid=f"{_PARALLEL.no_mid}, or {_DROPPED_INSIDE.no_mid} (Falcon-RW)"),
    "OPT": _DROPPED_INSIDE,  # layers in decoder.layers; pre-norm, or post-norm in OPT-350m
    "BioGpt": _DROPPED_INSIDE, "XGLM": _DROPPED_INSIDE,  # pre-norm
    "Doge": _DROPPED_INSIDE,  # pre-norm, the residual scaled by a learned vector
    "Dbrx": _DROPPED_INSIDE,  # DBRX (layers in blocks): pre-norm, its attention and norms in one module
    # Idefics (1): Llama's layers with a functional dropout, gated cross-attention blocks between some of them
    "Idefics": _DROPPED_INSIDE,
    # Emu3: pre-norm, one dropout module for the attention output and then the MLP's (the mid site acts on its first
    # call in a layer call, which takes the residual the input norm saw)
    "Emu3": LayerLayout(attention_output="dropout"),
    "Bloom": _BLOOM,
    # ZAYA: pre-norm; a module scales and shifts the attention output and the residual and returns their sum
    "Zaya": LayerLayout(attention_output="post_attention_residual_scale", adds_residual=True),
    # GPT-1 (layers in h): post-norm, ln_1 norming residual + attention (attn reads the residual); it keeps no cache
    "OpenAIGPT": LayerLayout(residual_input="attn", attention_output="attn", mlp_norm="ln_1", token_mixer="attn"),
    # CTRL (layers in h): pre-norm by layernorm1 and layernorm2, its attention output dropped out first
    "CTRL": LayerLayout(residual_input="layernorm1", attention_output="dropout1", mlp_norm="layernorm2",
                        token_mixer="multi_head_attention"),
    # GPT-NeoX Japanese: pre-norm, its attention's bias and output dropped out functionally
    "GPTNeoXJapanese": _DROPPED_INSIDE,
    # MPT (layers in blocks): pre-norm by norm_1 and norm_2, its attention output dropped out first (ALiBi)
    "Mpt": LayerLayout(residual_input="norm_1", attention_output="resid_attn_dropout", mlp_norm="norm_2",
                       token_mixer="attn"),
    "GlmMoeDsa": _PRE_NORM,  # GLM-5: DeepSeek-V3.2's sparse attention (some layers reuse the last indexer's top-k)
    # Kimi Linear and Ling 2.5 (BailingHybrid): a self_attn that is multi-head latent attention in some layers and
    # Kimi delta attention (linear, its state in the cache) in the others; LaraMini: a gated DeltaNet (linear_attn)
    # beside sliding and full attention; Flint, A.X K1 and K2 (DeepSeek-V3.2-style sparse attention), dots.llm3 (and
    # its vision-language model)
    "KimiLinear": _PRE_NORM, "BailingHybrid": _PRE_NORM, "LaraMini": _HYBRID, "Flint": _PRE_NORM, "AXK1": _PRE_NORM,
    "AXK2": _PRE_NORM, "Dots3Note": _PRE_NORM,
    # vision-language: the text decoder is a Qwen2/Qwen3 stack, whose causal attention spans text and image tokens
    "Qwen2VL": _PRE_NORM, "Qwen2_5_VL": _PRE_NORM, "Qwen3VL": _PRE_NORM, "Qwen3VLMoe": _PRE_NORM,
    # and GLM-4.1V's (GLM-4's sandwich of norms), GLM-4.5V's (pre-norm, experts), GLM-OCR's (as GLM-4.1V's)
    "Glm4v": _GLM4, "Glm4vMoe": _PRE_NORM,
    "GlmOcr": _GLM4,
    # and ERNIE 4.5-VL's (experts for text and for image tokens), HunYuan-VL's, PaddleOCR-VL's (pre-norm), Granite 4
    # Vision's (Granite's, scaled; image features added to some layers' outputs, as in Qwen3-VL)
    "Ernie4_5_VLMoe": _PRE_NORM, "HunYuanVL": _PRE_NORM, "PaddleOCRVL": _PRE_NORM, "Granite4Vision": _GRANITE,
    "Step3p7": _PRE_NORM,  # Step 3.7's (pre-norm; sliding and full attention, experts)
    # Qwen2.5-Omni's and Qwen3-Omni's thinker (the model that reads text, images and audio and writes text)
    "Qwen2_5OmniThinker": _PRE_NORM, "Qwen3OmniMoeThinker": _PRE_NORM,
    "Mllama": _MLLAMA,  # Llama 3.2 Vision: image features read by cross-attention layers, not as tokens
    # and Mistral Large 4's (GLM-5's sparse attention), Cosmos 3 Edge's (Llama's), MiniMax-M3-VL's (experts), Muse
    # Glimmer's (Gemma 2's, normed first), Cohere Compass's (Cohere 2's parallel residual), Granite Docling's (scaled)
    "MistralLarge4": _PRE_NORM, "Cosmos3Edge": _PRE_NORM, "MiniMaxM3VL": _PRE_NORM, "MuseGlimmer": _SANDWICH,
    "CohereCompass": _PARALLEL, "GraniteDocling": _GRANITE,
    "DeepseekOcr2": _PRE_NORM, "UnlimitedOcr": _PRE_NORM,  # DeepSeek-OCR 2's and Unlimited-OCR's (DeepSeek-V2's)
    # Muse Spark's: Muse Glimmer's, but a gate module mixes the residual and the normed attention output and returns
    # their sum
    "MuseSpark": replace(_SANDWICH, attention_output="post_attention_residual_gate", adds_residual=True),
    # Ergo alike (its stream in fp32; sliding layers beside global ones without positions, experts from layer 1 on)
    "Ergo": replace(_SANDWICH, attention_output="attention_residual_gate", adds_residual=True),
    # Gemma 3n: Gemma 3's sandwich of norms on the active one of four AltUp streams, a low-rank LAuReL branch joining
    # residual + attention (their sum over sqrt(2)); per-layer input embeddings, the last layers reusing keys and values
    "Gemma3nText": replace(_SANDWICH, residual_branch="laurel", active_stream="altup_active_idx"),
    # Molmo 2's: pre-norm, or with norm_after each sublayer's output normed instead of its input (as OLMo 2, but its
    # norms named as the pre-norm ones: input_layernorm after attention)
    "Molmo2": LayerLayout(variant_if="norm_after", variant=_NORM_AFTER),
    # Chameleon (its images VQ tokens of the vocabulary): pre-norm, or Molmo 2's norm_after in swin-norm layers (30B)
    "Chameleon": LayerLayout(variant_class="ChameleonSwinDecoderLayer", variant=_NORM_AFTER),
    # Inkling: pre-norm, the attention output (and the MLP's) passed through a short causal convolution (its state in
    # the cache) before it joins the residual
    "Inkling": LayerLayout(attention_output="attn_sconv"),
    # LongCat-Flash: two pre-norm attention-then-MLP blocks per layer (each module a ModuleList of two), a mixture of
    # experts reading the first MLP's norm joining the layer output: the mid site is the first block's
    "LongcatFlash": LayerLayout(residual_input="input_layernorm.0", attention_output="self_attn.0",
                                mlp_norm="post_attention_layernorm.0", token_mixer="self_attn.0"),
    # MiniMax (Text-01, M1): its residual is the normed layer input, which joins as alpha * residual + beta * attention
    # (full or lightning attention, their own factors), and the MLP reads that sum normed again
    "MiniMax": LayerLayout(residual_normed=True, residual_scale="attn_alpha_factor",
                           attention_scale="attn_beta_factor"),
    # Beam: Gemma 2's sandwich of norms, each sum depth-scaled to keep the stream's norm
    "Beam": replace(_SANDWICH, depth_scaled="attn_residual_add_idx"),
    # ModernBERT's decoder: pre-norm by LayerNorms (layer 0's attention norm an identity), its attention named attn
    "ModernBertDecoder": LayerLayout(residual_input="attn_norm", attention_output="attn", mlp_norm="mlp_norm",
                                     token_mixer="attn"),
    # hyper-connections: DeepSeek-V4 (compressed sparse attention, hash-routed experts), HY-V4 (its streams carried
    # unmixed) and Qwen4-Exp (its streams flattened into one [B, T, N * D] tensor; gated DeltaNet beside attention)
    "DeepseekV4": _HYPER, "HYV4": _HYPER, "Qwen4Exp": replace(_HYPER, hyper_streams="hc_count"),
    # and those of vision-language models: HY-V4-VL's (HY-V4's) and GLM-5-Next's (latent attention beside linear
    # attention, its streams mixed as DeepSeek-V4's); Qwen4-Exp's is the text decoder's
    "HYV4VL": _HYPER, "Glm5Next": _HYPER,
    # Moshi's text model (MoshiForCausalLM): pre-norm
    "Moshi": _PRE_NORM,
    # RecurrentGemma (Griffin): pre-norm, its temporal block a recurrent one (RG-LRU after a short convolution) or
    # sliding-window attention
    "RecurrentGemma": LayerLayout(residual_input="temporal_pre_norm", attention_output="temporal_block",
                                  mlp_norm="channel_pre_norm", token_mixer="temporal_block"),
    # Kosmos-2.5 (OCR and markdown from a document image): pre-norm, dropping the attention output out inside its
    # layers (Kosmos2_5TextBlock), the image's features where image_embeds_position_mask says
    "Kosmos2_5": _DROPPED_INSIDE,
}
# Families whose stack takes no cache object on transformers 4.x but keeps its decode state in its own modules
# (RecurrentGemma's recurrent and attention states): TALAN ties its slot state to a cache object (SPEC §2)
_CACHE_IN_MODULES_ON_4 = frozenset({"RecurrentGemma"})
# The bare decoder stack and the models around it: the language-model head, and the task heads that peft
# fine-tunes too (task_type SEQ_CLS, TOKEN_CLS, QUESTION_ANS) over the same stack, where transformers has them.
HEADS = ("ForCausalLM", "Model", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
         "ForConditionalGeneration", "TextModel")  # a vision-language model and its bare text decoder
# Heads of a family's stack that are no hosts, and what to patch instead: Moshi's speech model, whose temporal
# transformer reads the text and audio codebooks' embeddings summed, one step per audio frame, beside a depth decoder
_NOT_HOST_HEADS = {"MoshiForConditionalGeneration": "a speech model (text and audio-codebook embeddings summed per "
                   "audio frame, a depth decoder for the codes), no host; patch its text model, .decoder "
                   "(MoshiForCausalLM)"}
# transformers class name -> family, for every family and head (a head transformers lacks never matches), and the
# Gemma 3, 3n and 4 classes named otherwise: the text-only language model, and the vision-language model (Gemma 3
# from 4B on; Gemma 3n and 4, with audio too), whose text decoder is the same stack, its image tokens attending to
# each other both ways (Gemma 3's, 4's); Qwen3.5's classifier over its text decoder alone; Llama 4's text-only
# language model; PaddleOCR-VL's text decoder; GPT-2's, CTRL's and GPT-1's language models (*LMHeadModel); OPT's
# decoder (the stack BLIP-2 finds); Idefics' vision-text model; MiniMax-M3-VL's vision-language model; Apertus 1.5's
# (a VQ tokenizer turns images into visual tokens of the vocabulary), over the Apertus 1.5 text decoder; Kosmos-2.5's
# text decoder alone
_CLASS_FAMILIES = {family + head: family for family in FAMILIES for head in HEADS
                   if family + head not in _NOT_HOST_HEADS} | {
    f"Gemma{v}{head}": f"Gemma{v}Text" for v in ("3", "4", "3n", "4Unified")
    for head in ("ForCausalLM", "ForConditionalGeneration", "Model", "ForSequenceClassification")} | {
    "Qwen3_5TextForSequenceClassification": "Qwen3_5", "Llama4ForCausalLM": "Llama4Text",
    "PaddleOCRTextModel": "PaddleOCRVL", "GPT2LMHeadModel": "GPT2", "CTRLLMHeadModel": "CTRL",
    "OpenAIGPTLMHeadModel": "OpenAIGPT", "OPTDecoder": "OPT",
    "IdeficsForVisionText2Text": "Idefics",
    "MiniMaxM3SparseForConditionalGeneration": "MiniMaxM3VL",
    **dict.fromkeys(("Apertus1p5ForConditionalGeneration", "Apertus1p5Model"), "Apertus1p5Text"),
    **dict.fromkeys(("Kosmos2_5TextForCausalLM", "Kosmos2_5TextModel"), "Kosmos2_5")}


def family_names() -> str:
    """The supported families by their transformers class prefix."""
    return ", ".join(family.removesuffix("Text") for family in FAMILIES)  # Gemma3Text: Gemma3ForCausalLM


def family_summary() -> str:
    """The supported families in a few words, for messages and help texts (they are too many to list there)."""
    return (f"Qwen3, Llama, {len(FAMILIES) - 2} more transformers families and vision-language models over them "
            "(README 'Supported hosts'; talan.hosts.family_names())")


# Vision-language wrappers around a text decoder that transformers builds from their text config (AutoModel), with
# causal attention over image tokens (PaliGemma's prefix attends both ways): that decoder's own family says how to
# patch it (LLaVA over Llama or Gemma 2, LLaVA-NeXT over Llama or Mistral, LLaVA-OneVision over Qwen2, LFM2-VL over
# LFM2, Mistral 3 over Mistral, InternVL over Qwen2/Qwen3 or Llama, SmolVLM and Idefics 3 over Llama, PaliGemma over
# Gemma or Gemma 2, Llama 4 over its text decoder, VipLLaVA and LLaVA-NeXT-Video over Llama, Idefics 2 over Mistral,
# GLM-4.6V over GLM-4.1V's, Aya Vision and Command A Vision over Cohere 2, DeepSeek-VL over Llama, LightOnOCR over
# Qwen3, Video-LLaVA over Llama, Ovis2 over Qwen2 or Qwen3, Qianfan-OCR over Qwen3, Aria over its text decoder, EXAONE
# 4.5 over EXAONE 4, HyperCLOVA X Vision over HyperCLOVA X, LFM3-VL over LFM3, VideoLLaMA 3 over Qwen2, Kimi K2.5 over
# DeepSeek-V3, GOT-OCR 2.0 over Qwen2, DeepSeek-VL hybrid and Janus over Llama, Cosmos 3 Omni over Qwen3-VL's, MiniCPM-V
# 4.6 and 4.7 and MiniCPM-OCR over Qwen3.5's, Nemotron 3 Nano Omni over NemotronH, PerceptionLM over Llama, FastVLM
# over Qwen2, BLIP-2, InstructBLIP and InstructBLIP-Video over OPT (their decoder-only language models)), and the
# audio-language models whose audio tokens enter the text decoder alike (Qwen2-Audio over Qwen2, Voxtral over Llama or
# Mistral, Audio Flamingo 3 and Music Flamingo over Qwen2, MOSS Transcribe-Diarize over Qwen3, Granite Speech over
# Granite, Qwen3-ASR over Qwen3, Fun-ASR-Nano over Qwen3, GLM-ASR and Omni-ASR over Llama, Nemotron 3.5 Transcribe over
# NemotronH, VibeVoice-ASR over Qwen2), and LLaVA-OneVision 1.5 and Ovis2.5 over Qwen3.
_VL_WRAPPER_PREFIXES = ("Llava", "LlavaNext", "LlavaOnevision", "Lfm2Vl", "Mistral3", "InternVL", "SmolVLM", "Idefics3",
                        "PaliGemma", "Llama4", "VipLlava", "LlavaNextVideo", "Idefics2", "Qwen2Audio", "Voxtral",
                        "Glm46V", "AyaVision", "Cohere2Vision", "DeepseekVL", "LightOnOcr", "VideoLlava", "Ovis2",
                        "QianfanOCR", "Aria", "Exaone4_5_", "HyperCLOVAXVisionV2", "Lfm3Vl", "VideoLlama3", "Kimi_K25",
                        "AudioFlamingo3", "GotOcr2", "Janus", "DeepseekVLHybrid", "Cosmos3Omni", "MiniCPMV4_6",
                        "MiniCPMV4_7", "MiniCPMOcr", "MossTranscribeDiarize", "PerceptionLM", "FastVlm",
                        "GraniteSpeech", "GraniteSpeechPlus", "Qwen3ASR", "FunAsrNano", "MusicFlamingo", "GlmAsr",
                        "OmniASR", "Blip2", "InstructBlip", "InstructBlipVideo", "Nemotron3_5Transcribe",
                        "VibeVoiceAsr", "LlavaOnevision15", "Ovis2_5")
_VL_WRAPPERS = frozenset(f"{prefix}{head}" for prefix in _VL_WRAPPER_PREFIXES for head in ("ForConditionalGeneration",
                                                                                       "Model")) | {
    "FuyuForCausalLM", "FuyuModel",  # Fuyu over Persimmon: image patches embedded by a linear layer, no tower
    "NemotronH_Omni_Reasoning_V3"}  # Nemotron 3 Nano Omni over NemotronH: one class, named without a head


def _transformers_class(module: nn.Module, names) -> str | None:
    """The name, among ``names``, of the transformers class of ``module`` (or of a class it derives from), matched
    by name without importing every family's modeling module; None for anything else (remote code included)."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("transformers.") and cls.__name__ in names:
            return cls.__name__
    return None


def _layer_list(module: nn.Module) -> nn.ModuleList | None:
    """``module``'s decoder layers, if it is a decoder stack: its ``layers``, or ``h`` in the GPT-2 lineage (GPT-2,
    GPTBigCode, GPT-Neo, GPT-J, CodeGen), Falcon and BLOOM, or ``blocks`` in MPT and DBRX."""
    return next((layers for name in ("layers", "h", "blocks")
                 if isinstance(layers := getattr(module, name, None), nn.ModuleList)), None)


def closed_gates(layers: nn.ModuleList, layer_indices, layout: LayerLayout) -> list[int]:
    """The layers among ``layer_indices`` whose attention gate is closed (tanh = 0; untrained Mllama cross-attention
    layers): the attention adds nothing to the residual there, and the mid site's division by the gate is undefined."""
    closed = []
    for i in layer_indices:
        name = layout.of(layers[i]).attention_gate
        gate = None if name is None else getattr(layers[i], name)
        if gate is not None and not gate.is_meta and not bool(gate.detach().ne(0).all()):  # tanh(g) = 0 iff g = 0
            closed.append(i)
    return closed


def decoder_layers(stack: nn.Module) -> nn.ModuleList:
    """The decoder layers of a supported host's stack (``layers``, ``h`` or ``blocks``: see `_layer_list`)."""
    return _layer_list(stack)


def _find_stack(host: nn.Module) -> nn.Module | None:
    """The module that owns the decoder layers (``layers``, or ``h``) under any head (the host itself for a bare
    *Model).
    transformers 4.x's Gemma3ForCausalLM keeps its stack in ``model`` but names its base model "language_model", so
    base_model is the head itself; a vision-language model keeps its text decoder in ``language_model`` (SmolVLM and
    Idefics 3 in ``text_model``; Llama 4 a whole ``Llama4ForCausalLM`` there); OPT's in ``decoder``."""
    outer = (host.base_model, getattr(host, "model", None))
    inner = [getattr(m, name, None) for m in outer for name in ("language_model", "text_model", "decoder")]
    # Llama 4's (and 4.x Qwen2-Audio's, Voxtral's) language_model is a whole *ForCausalLM, its stack one level down;
    # BLIP-2's an OPTForCausalLM (its bare model's an OPTModel), the stack in its decoder
    deeper = [getattr(m, "model", None) for m in inner]
    for stack in (*outer, *inner, *deeper, *(getattr(m, "decoder", None) for m in (*inner, *deeper))):
        if stack is not None and _layer_list(stack) is not None:
            return stack
    return None


def _wrapper_chain(model: nn.Module) -> list[nn.Module]:
    """``model`` and every module inside the wrappers that keep its modules as they are (peft's ``PeftModel``,
    ``torch.compile``'s ``OptimizedModule``, ``DistributedDataParallel``, in any nesting), outermost first."""
    from torch.nn.parallel import DistributedDataParallel

    try:
        from peft import PeftModel
    except ImportError:  # peft is optional for plain transformers models
        PeftModel = ()
    chain = [model]
    while True:
        if isinstance(model, PeftModel):
            model = model.get_base_model()
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile(model)
            model = model._orig_mod
        else:
            return chain
        chain.append(model)


def unwrap_host(model: nn.Module) -> nn.Module:
    """The transformers model inside the wrappers that keep its modules as they are: peft's ``PeftModel``,
    ``torch.compile``'s ``OptimizedModule`` and ``DistributedDataParallel``, in any nesting (or the model
    itself)."""
    return _wrapper_chain(model)[-1]


# peft methods that hand the model a cache prefilled with their virtual tokens' keys and values: those tokens
# never pass through the residual stream.
_PREFIX_CACHE_PEFT_TYPES = ("PREFIX_TUNING", "CARTRIDGE")


def peft_adapter_configs(model: nn.Module) -> list[dict]:
    """The ``peft_config`` dicts (adapter name -> config) of every PeftModel around the host. The dict objects
    themselves: peft adds adapters to them in place, and a deep copy or pickle of the model carries them."""
    return [m.peft_config for m in _wrapper_chain(model)[:-1] if isinstance(getattr(m, "peft_config", None), dict)]


def prefix_cache_lengths(peft_configs: list[dict]) -> frozenset[int]:
    """Cache lengths that peft's prefix tuning (or a cartridge) starts a forward with: their adapters'
    ``num_virtual_tokens``."""
    return frozenset(int(cfg.num_virtual_tokens) for configs in peft_configs for cfg in configs.values()
                     if str(getattr(cfg.peft_type, "value", cfg.peft_type)) in _PREFIX_CACHE_PEFT_TYPES)


def stack_and_layout(model: nn.Module) -> tuple[nn.Module, LayerLayout]:
    """The decoder stack of the transformers model inside ``model``'s wrappers (the module that owns ``layers``)
    and the `LayerLayout` of its family; ``TypeError`` naming the class for an unsupported model."""
    family, stack = _family_and_stack(model)
    return stack, FAMILIES[family]


# Modules that peft's "all-linear" LoRA wraps but cannot train there, by family: a router that returns a tuple (Llama
# 4's; PhiMoE's on transformers 5), on which peft's LoRA layer fails, TALAN off too; the dt_proj of Jamba's (Mamba's,
# Falcon-Mamba's) Mamba, Gemma 3n's AltUp correction_coefs (in training) and LongCat-Flash's router classifier, whose
# weight it reads without calling the layer, and the sparse-attention indexer of DeepSeek-V3.2 (GLM-5's, A.X K2's,
# dots.llm3's, Mistral Large 4's, HY-V4's, Qwen4-Exp's), which only picks the keys (top-k, no gradient through it): a
# LoRA there never gets a gradient; the Mamba out_proj of Falcon-H1, NemotronH and the state-space models, which peft
# refuses to adapt; DeepSeek-V4's o_a_proj, a grouped linear layer (each group of heads its own slice of the weight)
# whose input LoRA's full-width product does not fit, TALAN off too, and its compressed attention's indexer (which
# picks keys, as above).
_INDEXER = r".*\.indexer\..*"
_ALL_LINEAR_EXCLUDES = {"Llama4Text": r".*\.router", "Phimoe": r".*\.router", "Jamba": r".*\.dt_proj",
                        "LongcatFlash": r".*\.router\.classifier",
                        "FalconH1": r".*\.mamba\.out_proj", "NemotronH": r".*\.mixer\.out_proj",
                        "Mamba2": r".*\.mixer\.out_proj", "Gemma3nText": r".*\.altup\.correction_coefs",
                        "DeepseekV4": r".*\.(o_a_proj|indexer\..*)",
                        **dict.fromkeys(("Mamba", "FalconMamba"), r".*\.mixer\.(out_proj|dt_proj)"),
                        **dict.fromkeys(("DeepseekV32", "GlmMoeDsa", "AXK2", "Dots3Note", "MistralLarge4", "HYV4",
                                         "Qwen4Exp"), _INDEXER)}


def all_linear_excludes(model: nn.Module) -> dict:
    """The ``exclude_modules`` that an "all-linear" peft ``LoraConfig`` needs on ``model``'s family, as keyword
    arguments ({} for most families, and for a model TALAN does not patch: `patch` names the problem then)."""
    try:
        family = _family_and_stack(model)[0]
    except TypeError:
        return {}
    pattern = _ALL_LINEAR_EXCLUDES.get(family)
    # only where such a module is there (PhiMoE's router is named so on transformers 5 only): peft warns otherwise
    if pattern is None or not any(re.fullmatch(pattern, name) for name, _ in model.named_modules()):
        return {}
    return {"exclude_modules": pattern}


def _family_and_stack(model: nn.Module) -> tuple[str, nn.Module]:
    host = unwrap_host(model)
    family = _CLASS_FAMILIES.get(_transformers_class(host, _CLASS_FAMILIES))
    wrapper = family is None and _transformers_class(host, _VL_WRAPPERS) is not None
    stack = _find_stack(host) if family is not None or wrapper else None
    if wrapper and stack is not None:
        family = _CLASS_FAMILIES.get(_transformers_class(stack, _CLASS_FAMILIES))
    if family is None:
        inside = f" over a {type(stack).__name__}" if wrapper and stack is not None else ""
        wrapped = f" wrapping {type(host).__name__}" if host is not model else ""
        not_host = _NOT_HOST_HEADS.get(_transformers_class(host, _NOT_HOST_HEADS))
        raise TypeError(f"got {type(model).__name__}{wrapped}{inside}: " + (not_host or (
            f"talan patches the {', '.join('*' + h for h in HEADS)} of {family_summary()}, plain or wrapped by "
            "peft, torch.compile or DDP")))
    if stack is None:
        raise TypeError(f"{type(host).__name__} has no decoder layer list to patch")
    if family in _CACHE_IN_MODULES_ON_4 and not {"cache", "past_key_values"} & set(
            inspect.signature(stack.forward).parameters):
        raise TypeError(f"{type(host).__name__} keeps its decode state in its own modules on this transformers, and "
                        "TALAN ties its slot memory to the cache object that transformers >= 5 passes: upgrade")
    return family, stack


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module that owns ``layers`` (``Qwen3Model``, ``LlamaModel``, ...) for any supported host.

    Raises ``TypeError`` for an unsupported model, naming its class.
    """
    return stack_and_layout(model)[0]


def layer_layout(model: nn.Module) -> LayerLayout:
    """The `LayerLayout` of a supported host's decoder layers (``TypeError`` for an unsupported model)."""
    return stack_and_layout(model)[1]
