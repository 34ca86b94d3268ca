"""`talan.report`: distinct-parameter counts by owner (backbone / adapter / TALAN), percentages, and the
budget table of the published Qwen3 and Llama-3.2 configurations (SPEC §3, §5: TALAN < 0.1 %)."""

import pytest
import torch
from conftest import HOST, tiny_config, tiny_qwen3
from peft import LoraConfig, get_peft_model
from torch import nn

import talan
from talan.report import (
    MODEL_PRESETS,
    budget_table,
    format_budget_table,
    format_report,
    parameter_report,
    preset_config,
)

R_LORA = 4
TIED = {**HOST, "tie_word_embeddings": True}


def _tied():
    return tiny_qwen3(tie_word_embeddings=True)


def _lora(model, **kwargs):
    return get_peft_model(model, LoraConfig(r=R_LORA, target_modules="all-linear", **kwargs))


def _expected_backbone(cfg: dict) -> int:
    """Closed-form parameter count of a Qwen3 decoder (independent of the module tree)."""
    d, v, i_dim, hd = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    attn = d * q + 2 * d * kv + q * d + 2 * hd  # q, k, v, o projections + q_norm, k_norm
    layer = attn + 3 * d * i_dim + 2 * d  # gate, up, down + two RMSNorms
    embeddings = v * d * (1 if cfg["tie_word_embeddings"] else 2)
    return embeddings + cfg["num_hidden_layers"] * layer + d


def _expected_lora(cfg: dict, r: int) -> int:
    """LoRA on every linear of the decoder (peft's "all-linear" leaves out the output layer): r*(in+out) each."""
    d, i_dim, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    per_layer = (d + q) + 2 * (d + kv) + (q + d) + 2 * (d + i_dim) + (i_dim + d)
    return cfg["num_hidden_layers"] * r * per_layer


def _expected_talan_block(d: int, r: int, m: int) -> int:
    """Default attn mixer + per-channel tanh gate: norm, W_in, W_k, W_v, slots, W_q, W_out, gate."""
    return d + d * r + 3 * r * r + m * r + r * d + d


def test_plain_model_counts_tied_embedding_once():
    model = _tied()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    report = parameter_report(model)
    with_duplicates = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    expected = _expected_backbone(TIED)
    assert report["backbone"] == expected
    assert with_duplicates == expected + HOST["vocab_size"] * HOST["hidden_size"]
    assert report["adapter"] == report["talan"] == 0
    assert report["trainable"] == expected
    assert report["trainable_percent"] == pytest.approx(100.0)
    assert report["talan_percent"] == 0.0


def test_untied_model_counts_both_matrices():
    report = parameter_report(tiny_qwen3(tie_word_embeddings=False))
    assert report["backbone"] == _expected_backbone({**HOST, "tie_word_embeddings": False})


def test_lora_params_are_adapter_and_backbone_is_unchanged():
    cfg = TIED
    plain = parameter_report(_tied())
    report = parameter_report(_lora(_tied()))
    assert report["backbone"] == plain["backbone"]
    assert report["adapter"] == _expected_lora(cfg, R_LORA)
    assert report["talan"] == 0
    assert report["trainable"] == report["adapter"]  # peft froze the backbone
    assert report["trainable_percent"] == pytest.approx(100.0 * report["adapter"] / report["backbone"])


def test_dora_magnitude_vector_is_adapter():
    cfg = TIED
    lora = parameter_report(_lora(_tied()))
    dora_model = _lora(_tied(), use_dora=True)
    dora = parameter_report(dora_model)
    magnitudes = sum(p.numel() for n, p in dora_model.named_parameters() if "lora_magnitude_vector" in n)
    assert magnitudes > 0
    assert dora["adapter"] == lora["adapter"] + magnitudes
    assert dora["backbone"] == lora["backbone"] == _expected_backbone(cfg)


def test_modules_to_save_copy_is_adapter_not_backbone():
    plain = parameter_report(_tied())
    model = _lora(_tied(), modules_to_save=["model.norm"])
    report = parameter_report(model)
    assert report["backbone"] == plain["backbone"]
    assert report["adapter"] == _expected_lora(TIED, R_LORA) + HOST["hidden_size"]


def test_lora_plus_talan():
    cfg = tiny_config()
    model = talan.patch(_lora(_tied()), cfg)
    report = parameter_report(model)
    block = _expected_talan_block(HOST["hidden_size"], cfg.latent_dim, cfg.num_slots)
    assert report["talan"] == block == sum(p.numel() for p in talan.talan_parameters(model))
    assert report["backbone"] == _expected_backbone(TIED)
    assert report["adapter"] == _expected_lora(TIED, R_LORA)
    assert report["trainable"] == report["adapter"] + report["talan"]
    assert report["talan_percent"] == pytest.approx(100.0 * block / report["backbone"])
    assert report["trainable_percent"] == pytest.approx(100.0 * report["trainable"] / report["backbone"])


def test_talan_scope_changes_trainable_not_talan_count():
    joint = parameter_report(talan.patch(_lora(tiny_qwen3()), tiny_config()))
    frozen = parameter_report(talan.patch(_lora(tiny_qwen3()), tiny_config(trainable="writeback_only")))
    assert frozen["talan"] == joint["talan"]
    assert frozen["trainable"] < joint["trainable"]
    # writeback_only: W_out [r, d] and the per-channel gate [d] train
    r, d = tiny_config().latent_dim, HOST["hidden_size"]
    assert frozen["trainable"] == frozen["adapter"] + r * d + d


def test_meta_device_model_matches_cpu():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cpu = parameter_report(talan.patch(_lora(_tied()), tiny_config()))
    with torch.device("meta"):
        meta_model = Qwen3ForCausalLM(Qwen3Config(**TIED))
        meta_model = talan.patch(_lora(meta_model), tiny_config())
    assert next(meta_model.parameters()).is_meta
    assert parameter_report(meta_model) == cpu


def test_empty_model_has_zero_percentages():
    report = parameter_report(nn.Module())
    assert report == {"backbone": 0, "adapter": 0, "talan": 0, "trainable": 0,
                      "talan_percent": 0.0, "trainable_percent": 0.0}


def test_format_report_names_every_count():
    report = parameter_report(talan.patch(_lora(tiny_qwen3()), tiny_config()))
    text = format_report(report)
    for label, key in (("backbone", "backbone"), ("adapter", "adapter"), ("TALAN", "talan"),
                       ("trainable", "trainable")):
        assert label in text and f"{report[key]:,d}" in text
    # the backbone in a short unit too, from a whole thousand, million or billion on
    for backbone, short in ((999, "999"), (1000, "1.00K"), (10**6, "1.00M"), (1_500_000_000, "1.50B")):
        line = format_report({**report, "backbone": backbone}).splitlines()[0]
        assert line.split() == ["backbone", f"{backbone:,d}", f"({short})"], line


def test_an_unknown_preset_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown model preset 'Qwen9-1T'; known: Qwen3-0.6B, "):
        preset_config("Qwen9-1T")
    with pytest.raises(ValueError, match="'Qwen9-1T'"):
        budget_table(presets=["Qwen9-1T"])


@pytest.fixture(scope="module")
def budget_rows():
    return budget_table(talan.TalanConfig(), lora_rank=16)


def test_budget_table_covers_every_preset_with_official_sizes(budget_rows):
    assert [row["model"] for row in budget_rows] == list(MODEL_PRESETS)
    rows = {row["model"]: row for row in budget_rows}
    for name, preset in MODEL_PRESETS.items():
        if preset["model_type"] == "qwen3":
            assert rows[name]["backbone"] == _expected_backbone(preset), name
            assert rows[name]["adapter"] == _expected_lora(preset, 16), name
    # the sizes the model cards publish (rounded)
    published = {"Qwen3-0.6B": 0.596e9, "Qwen3-1.7B": 1.72e9, "Qwen3-4B": 4.02e9, "Qwen3-8B": 8.19e9,
                 "Llama-3.2-1B": 1.24e9}
    for name, size in published.items():
        assert rows[name]["backbone"] == pytest.approx(size, rel=5e-3), name


def test_budget_table_talan_under_a_tenth_of_a_percent(budget_rows):
    for row in budget_rows:
        assert row["talan"] == _expected_talan_block(row["hidden_size"], 64, 16), row["model"]
        assert 0.0 < row["talan_percent"] < 0.1, row
        assert row["trainable"] == row["adapter"] + row["talan"]


def test_budget_table_follows_the_talan_config():
    wide = budget_table(talan.TalanConfig(latent_dim=128, num_slots=32, layer=(0.25, 0.75)), lora_rank=8,
                        presets=["Qwen3-0.6B"])
    (row,) = wide
    assert row["talan"] == 2 * _expected_talan_block(1024, 128, 32)
    assert row["adapter"] == _expected_lora(MODEL_PRESETS["Qwen3-0.6B"], 8)


def test_format_budget_table(budget_rows):
    text = format_budget_table(budget_rows, talan.TalanConfig(), 16)
    lines = text.splitlines()
    assert sum(line.startswith("| Qwen3-") for line in lines) == 4
    assert any(line.startswith("| Llama-3.2-1B |") for line in lines)
    assert "latent_dim=64" in text and "LoRA r=16" in text
    row = budget_rows[0]
    cells = [c.strip() for c in next(line for line in lines if line.startswith(f"| {row['model']} |")).split("|")[1:-1]]
    assert cells == [row["model"], str(row["hidden_size"]), str(row["num_layers"]), f"{row['backbone']:,d}",
                     f"{row['adapter']:,d}", f"{row['talan']:,d}", f"{row['talan_percent']:.4f}",
                     f"{row['trainable_percent']:.3f}"]
    # every TALAN layer in the heading; no adapter part without a rank
    heading = format_budget_table(budget_rows, talan.TalanConfig(layer=(0.25, 0.75))).splitlines()[0]
    assert heading.startswith("TALAN: layer=0.25, 0.75, site=") and "LoRA" not in heading


def test_format_report_of_a_model_without_backbone_weights():
    assert "(n/a)" in format_report(parameter_report(nn.Module())).splitlines()[1]
