"""Which of transformers' language models TALAN patches: every family and wrapper that talan.hosts names is one that
test_hosts.py or test_vl_hosts.py runs, and every causal or image-text-to-text language model of the transformers
it runs on (each make test pass pins one) is either a host or named below with the reason it is not,
so a new transformers release's new families show up here until each is adapted or named."""

import test_hosts
import test_vl_hosts
import transformers
from conftest import class_prefix

from talan import hosts

# the decoder of an encoder-decoder model (speech, image or text encoder): its layers cross-attend to the encoder's
# output between attention and MLP, and generation reads that output
_ENCODER_DECODER = ("BartForCausalLM", "BigBirdPegasusForCausalLM", "BlenderbotForCausalLM",
                    "BlenderbotSmallForCausalLM", "MBartForCausalLM", "MarianForCausalLM", "MvpForCausalLM",
                    "PLBartForCausalLM", "PegasusForCausalLM", "ProphetNetForCausalLM", "XLMProphetNetForCausalLM",
                    "TrOCRForCausalLM", "Speech2Text2ForCausalLM", "WhisperForCausalLM", "VisionEncoderDecoderModel",
                    "Florence2ForConditionalGeneration", "Pix2StructForConditionalGeneration",
                    "UdopForConditionalGeneration", "T5Gemma2ForConditionalGeneration",
                    "PPFormulaNetForConditionalGeneration", "MusicgenForCausalLM", "MusicgenMelodyForCausalLM",
                    "BlipForConditionalGeneration")
# a BERT-style encoder given a causal LM head: the residual add of each attention sits inside its output module
# (BertSelfOutput's and its copies'), normed there with the residual, not in the layer
_BERT_STYLE = ("BertLMHeadModel", "BertGenerationDecoder", "BigBirdForCausalLM", "CamembertForCausalLM",
               "Data2VecTextForCausalLM", "ElectraForCausalLM", "ErnieForCausalLM", "MegatronBertForCausalLM",
               "QDQBertLMHeadModel", "RemBertForCausalLM", "RoCBertForCausalLM", "RoFormerForCausalLM",
               "RobertaForCausalLM", "RobertaPreLayerNormForCausalLM", "XLMRobertaForCausalLM",
               "XLMRobertaXLForCausalLM", "XmodForCausalLM", "GitForCausalLM", "ReformerModelWithLMHead")
# no attention to add beside: recurrent token mixing in every layer
_RECURRENT = ("RwkvForCausalLM", "xLSTMForCausalLM")
# layers that run several times in one forward (recurrent loops over the stack): a block per layer would see each
# token several times
_LOOPED = ("DoryForCausalLM", "HrmTextForCausalLM", "Inkling2LoopForCausalLM", "Inkling2LoopForConditionalGeneration")
NOT_HOSTS = {
    **dict.fromkeys(_ENCODER_DECODER, "the decoder of an encoder-decoder model"),
    **dict.fromkeys(_BERT_STYLE, "a BERT-style encoder with a causal LM head"),
    **dict.fromkeys(_RECURRENT, "recurrent, no attention"),
    **dict.fromkeys(_LOOPED, "its layers loop within a forward"),
    **dict.fromkeys(("Inkling2ForCausalLM", "Inkling2ForConditionalGeneration"),
                    "each block reads a learned mix of the earlier blocks' outputs (block attention residuals)"),
    **dict.fromkeys(("Gemma4AssistantForCausalLM", "Gemma4UnifiedAssistantForCausalLM"),
                    "a speculative-decoding drafter reading its target model's hidden states"),
    "DiffusionGemmaForBlockDiffusion": "block diffusion: it denoises blocks of tokens, not a causal LM",
    **dict.fromkeys(("PI0ForConditionalGeneration", "PI05ForConditionalGeneration"),
                    "a vision-language-action policy, whose action expert shares the language model's attention"),
    "Kosmos2ForConditionalGeneration": "its own cached generation differs from recomputing, TALAN off too",
    # its protein cross-attention masks by the whole sequence's mask, so a decode step returns a row per token
    "EvollaForProteinText2Text": "its own cached generation with a protein fails past the first protein "
                                 "cross-attention layer, TALAN off too",
    "CpmAntForCausalLM": "it prepends learned prompt tokens to every input and takes no attention mask (its padding "
                         "comes from the token ids)",
    "XLMWithLMHeadModel": "an encoder whose layers are split across parallel module lists (attentions, layer_norm1, "
                          "ffns, layer_norm2), no layer modules",
    "XLNetLMHeadModel": "a permutation language model: two attention streams and a memory of earlier segments",
    "BltForCausalLM": "byte-level: an entropy patcher, byte encoder and decoder around a transformer over patches, "
                      "four layer stacks",
    # in transformers 4.x's models/deprecated, gone in 5
    **dict.fromkeys(("TransfoXLLMHeadModel", "OpenLlamaForCausalLM", "MegaForCausalLM"),
                    "deprecated in transformers 4.x, removed in 5"),
}
# the tested names that differ from talan.hosts' family or wrapper prefix: Qwen3's and Llama's own tests
# (test_patch_model.py and the rest), the vision-language model of a text family, a variant of a family's config
VL_OF_TEXT_FAMILY = {"Gemma3": "Gemma3Text", "Gemma3n": "Gemma3nText", "Gemma4": "Gemma4Text",
                     "Gemma4Unified": "Gemma4UnifiedText", "Apertus1p5": "Apertus1p5Text"}
TESTED_ELSEWHERE = {"Qwen3", "Llama"}
# tested wrappers that _VL_WRAPPERS names by their full class name
NOT_WRAPPER_PREFIXES = {"Fuyu": "FuyuForCausalLM", "NemotronH_Omni_Reasoning_V3_": "NemotronH_Omni_Reasoning_V3"}


def _tested_prefixes() -> set[str]:
    names = [*test_hosts.FAMILY_NAMES, *test_vl_hosts.NATIVE, *test_vl_hosts.WRAPPERS]
    return {VL_OF_TEXT_FAMILY.get(prefix, prefix) for prefix in map(class_prefix, names)}


def test_every_family_and_wrapper_that_talan_names_is_tested():
    tested = _tested_prefixes() | TESTED_ELSEWHERE
    named = set(hosts.FAMILIES) | set(hosts._VL_WRAPPER_PREFIXES)
    assert not named - tested, f"talan.hosts names these, which no host test runs: {sorted(named - tested)}"
    unnamed = tested - named - set(NOT_WRAPPER_PREFIXES)
    assert not unnamed, f"host tests run these, which talan.hosts does not name: {sorted(unnamed)}"
    for prefix, wrapper in NOT_WRAPPER_PREFIXES.items():
        assert wrapper in hosts._VL_WRAPPERS, (prefix, wrapper)


def _language_models() -> set[str]:
    """The classes of this transformers' causal-LM and image-text-to-text auto mappings."""
    from transformers.models.auto import modeling_auto

    names = set()
    for mapping in ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"):
        for value in getattr(modeling_auto, mapping, {}).values():
            names.update(value if isinstance(value, (list, tuple)) else [value])
    return names


def test_every_language_model_of_a_pinned_transformers_is_a_host_or_named_as_not_one():
    known = set(hosts._CLASS_FAMILIES) | hosts._VL_WRAPPERS
    unclassified = sorted(name for name in _language_models() - known - set(NOT_HOSTS))
    assert not unclassified, (f"transformers {transformers.__version__} has language models that are neither hosts "
                              f"(talan.hosts) nor in NOT_HOSTS: {unclassified}")
    adapted = sorted(set(NOT_HOSTS) & known)
    assert not adapted, f"talan.hosts patches these now: take them out of NOT_HOSTS: {adapted}"
