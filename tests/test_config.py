"""TalanConfig: defaults, validation that names the field, layer resolution, JSON round trip."""

import json

import pytest

import talan
from talan import TalanConfig


def test_defaults_match_the_spec():
    c = TalanConfig()
    assert (c.layer, c.site, c.num_slots, c.latent_dim) == (0.5, "mid", 16, 64)
    assert (c.mixer, c.writeback, c.trainable, c.grad_scale, c.backend) == ("attn", "tanh_gate", "joint", 1.0, "auto")
    assert c.score_cap == 15.0


@pytest.mark.parametrize("field,value", [
    ("mixer", "bogus"), ("writeback", "add"), ("site", "middle"), ("trainable", "all"), ("backend", "cuda"),
    ("num_slots", 0), ("num_slots", 2.5), ("num_slots", True), ("latent_dim", -1), ("grad_scale", -0.5),
    ("grad_scale", float("nan")), ("score_cap", 0.0), ("norm_cap_ratio", 0.0), ("zero_add_scale", float("inf")),
    ("score_cap", float("-inf")), ("layer", True), ("layer", 1.5),
    ("layer", -0.1), ("layer", "3"), ("layer", ()), ("layer", (0, False)), ("gate_per_channel", 1),
    ("token_gate_bias", "-4"), ("token_gate_bias", float("nan")), ("token_gate_bias", True),
    ("zero_add_scale", -0.5), ("grad_scale", True), ("score_cap", True), ("zero_add_scale", False),
    ("norm_cap_ratio", True),
])
def test_invalid_field_raises_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=field):
        TalanConfig(**{field: value})


@pytest.mark.parametrize("layer,expected", [
    (0, (0,)), (-1, (27,)), (0.5, (14,)), (1.0, (27,)), (0.0, (0,)), ((0.25, -2, 3), (3, 7, 26)), ([1, 2], (1, 2)),
])
def test_layer_resolution(layer, expected):
    assert TalanConfig(layer=layer).resolve_layers(28) == expected


@pytest.mark.parametrize("layer", [28, -29, (3, 3), (0.0, 0)])
def test_layer_out_of_range_or_repeated(layer):
    with pytest.raises(ValueError, match="layer"):
        TalanConfig(layer=layer).resolve_layers(28)


def test_json_round_trip_with_version(tmp_path):
    c = TalanConfig(layer=(0, -1), site="post", num_slots=8, latent_dim=32, mixer="glu", writeback="norm_cap",
                    trainable="freeze_compressor", grad_scale=0.5, backend="torch")
    path = tmp_path / "cfg.json"
    path.write_text(c.to_json(hidden_size=64, num_layers=4))
    data = json.loads(path.read_text())
    assert data["talan_version"] == talan.__version__
    assert data["hidden_size"] == 64 and data["layer"] == [0, -1]
    assert TalanConfig.from_json_file(path) == c


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="bogus_field"):
        TalanConfig.from_dict({"bogus_field": 1})


def test_triton_backend_refuses_a_block_wider_than_the_kernels_take():
    with pytest.raises(ValueError, match=r"backend='triton': .*latent_dim <= 256; got latent_dim=257"):
        TalanConfig(backend="triton", latent_dim=257)
    assert TalanConfig(backend="auto", latent_dim=257).latent_dim == 257  # auto: the PyTorch path
    TalanConfig(backend="triton", latent_dim=256, num_slots=1024)  # the widest the kernels take; any M
