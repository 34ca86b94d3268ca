"""`talan.save_pretrained` / `talan.load_pretrained` (SPEC §3): the two files, round trips in this
and in a fresh process, and bad checkpoints that raise a clear error and leave the model unchanged."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_batch, tiny_config, tiny_llama, tiny_qwen3
from safetensors.torch import load_file, save_file

import talan
from talan.patching import is_patched, talan_blocks, talan_config

CONFIG_FILE, WEIGHTS_FILE = "talan_config.json", "talan_model.safetensors"
TESTS_DIR = Path(__file__).resolve().parent


def _randomize_talan(model, seed=123):
    """Move every TALAN parameter away from its initialisation (gates included), so loading matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in talan.talan_parameters(model):
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


def _logits(model, batch=None):
    batch = tiny_batch() if batch is None else batch
    with torch.no_grad():
        return model(**batch).logits


def _saved(tmp_path, config=None, host=tiny_qwen3, **host_kw):
    """A patched, randomised model saved under tmp_path/ckpt: (model, folder)."""
    model = talan.patch(host(**host_kw), tiny_config() if config is None else config)
    _randomize_talan(model)
    folder = tmp_path / "ckpt"
    talan.save_pretrained(model, folder)
    return model, folder


CONFIGS = {
    "default": {},
    "post_linear_token_gate": dict(site="post", mixer="linear", writeback="token_gate", layer=(0, -1)),
    "pre_mlp_norm_cap": dict(site="pre", mixer="mlp", writeback="norm_cap", layer=0.0, grad_scale=0.5),
    "glu_zero_add": dict(mixer="glu", writeback="zero_add", zero_add_scale=0.5, layer=[1, 2],
                                     trainable="freeze_compressor"),
    "scalar_tanh_gate": dict(gate_per_channel=False, trainable="writeback_only", score_cap=5.0),
}


# ---- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("host", [tiny_qwen3, tiny_llama], ids=["qwen3", "llama"])
@pytest.mark.parametrize("overrides", list(CONFIGS.values()), ids=list(CONFIGS))
def test_round_trip_into_patched_model_restores_weights_config_and_logits(tmp_path, host, overrides):
    config = tiny_config(**overrides)
    model, folder = _saved(tmp_path, config, host=host)
    fresh = talan.patch(host(), tiny_config(**overrides))  # same config, different (init) TALAN weights
    assert not torch.equal(_logits(fresh), _logits(model))

    assert talan.load_pretrained(fresh, folder) is fresh
    assert talan_config(fresh) == config
    saved = dict(talan_blocks(model))
    for i, block in talan_blocks(fresh).items():
        for name, p in block.named_parameters():
            assert torch.equal(p, dict(saved[i].named_parameters())[name]), f"layers.{i}.{name}"
    assert torch.equal(_logits(fresh), _logits(model))


@pytest.mark.parametrize("overrides", list(CONFIGS.values()), ids=list(CONFIGS))
def test_load_into_unpatched_model_patches_it_with_the_saved_config(tmp_path, overrides):
    config = tiny_config(**overrides)
    model, folder = _saved(tmp_path, config)
    fresh = tiny_qwen3()
    talan.load_pretrained(fresh, folder)
    assert is_patched(fresh)
    assert talan_config(fresh) == config
    assert sorted(talan_blocks(fresh)) == sorted(talan_blocks(model))
    assert torch.equal(_logits(fresh), _logits(model))
    # the trainability scope of the saved config is applied, as patch does
    want = {name: p.requires_grad for _, b in talan_blocks(model).items() for name, p in b.named_parameters()}
    got = {name: p.requires_grad for _, b in talan_blocks(fresh).items() for name, p in b.named_parameters()}
    assert got == want


def test_load_with_backend_override_keeps_the_rest_of_the_config(tmp_path):
    model, folder = _saved(tmp_path, tiny_config(backend="auto"))
    fresh = talan.load_pretrained(tiny_qwen3(), folder, backend="torch")
    assert talan_config(fresh) == dataclasses.replace(talan_config(model), backend="torch")
    assert torch.equal(_logits(fresh), _logits(model))


def test_a_model_patched_for_another_backend_loads_the_checkpoint(tmp_path):
    # the backend is where the blocks run, not what they are: a checkpoint trained on the kernels loads on a CPU
    model, folder = _saved(tmp_path, tiny_config(backend="auto"))
    fresh = talan.load_pretrained(talan.patch(tiny_qwen3(), tiny_config(backend="torch")), folder)
    assert talan_config(fresh).backend == "torch"
    assert torch.equal(_logits(fresh), _logits(model))


_FRESH_PROCESS_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    sys.path.insert(0, sys.argv[1])
    import talan
    from conftest import tiny_batch, tiny_qwen3

    model = talan.load_pretrained(tiny_qwen3(), sys.argv[2])
    with torch.no_grad():
        torch.save(model(**tiny_batch()).logits, sys.argv[3])
""")


def test_load_in_a_fresh_process_gives_identical_logits(tmp_path):
    model, folder = _saved(tmp_path, tiny_config(layer=(0, 2), site="post"))
    script, out = tmp_path / "load.py", tmp_path / "logits.pt"
    script.write_text(_FRESH_PROCESS_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    result = subprocess.run([sys.executable, str(script), str(TESTS_DIR), str(folder), str(out)],
                            capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(out), _logits(model))


# ---- the files ---------------------------------------------------------------------------------

def test_config_json_holds_every_field_the_version_and_the_host_shape(tmp_path):
    config = tiny_config(**CONFIGS["post_linear_token_gate"])
    _, folder = _saved(tmp_path, config)
    data = json.loads((folder / CONFIG_FILE).read_text())
    fields = {f.name for f in dataclasses.fields(talan.TalanConfig)}
    assert set(data) == fields | {"talan_version", "hidden_size", "num_layers"}
    assert data["talan_version"] == talan.__version__
    assert (data["hidden_size"], data["num_layers"]) == (64, 3)
    for name in fields - {"layer"}:
        assert data[name] == getattr(config, name), name
    assert data["layer"] == [0, -1]


def test_safetensors_keys_are_exactly_layers_index_param(tmp_path):
    model, folder = _saved(tmp_path, tiny_config(layer=(0, 2)))
    tensors = load_file(str(folder / WEIGHTS_FILE))
    names = [name for name, _ in talan_blocks(model)[0].named_parameters()]
    assert set(tensors) == {f"layers.{i}.{name}" for i in (0, 2) for name in names}
    assert all(re.fullmatch(r"layers\.\d+\.[a-z0-9_]+", key) for key in tensors)
    for i, block in talan_blocks(model).items():
        for name, p in block.named_parameters():
            assert torch.equal(tensors[f"layers.{i}.{name}"], p.detach())


def test_save_writes_only_the_two_talan_files(tmp_path):
    _, folder = _saved(tmp_path)
    assert sorted(os.listdir(folder)) == sorted([CONFIG_FILE, WEIGHTS_FILE])


def test_save_keeps_other_files_in_the_folder(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    model = talan.patch(tiny_qwen3(), tiny_config())
    talan.save_pretrained(model, folder)
    assert sorted(os.listdir(folder)) == sorted(["adapter_config.json", CONFIG_FILE, WEIGHTS_FILE])
    assert (folder / "adapter_config.json").read_text() == "{}"


def test_save_of_an_unpatched_model_raises_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="not patched"):
        talan.save_pretrained(tiny_qwen3(), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


# ---- bad inputs: a clear error, and the model is left unchanged -------------------------------

def _target(kind):
    """The model a bad checkpoint is loaded into: unpatched, or patched with the checkpoint's config."""
    model = tiny_qwen3(seed=5)
    if kind == "patched":
        talan.patch(model, tiny_config())
    return model


def _snapshot(model):
    return (is_patched(model), talan_config(model) if is_patched(model) else None,
            {name: p.detach().clone() for name, p in model.named_parameters()},
            {name: p.requires_grad for name, p in model.named_parameters()}, _logits(model))


def _assert_unchanged(model, before):
    patched, config, params, grads, logits = _snapshot(model)
    assert patched == before[0]
    assert config == before[1]
    assert params.keys() == before[2].keys()
    assert all(torch.equal(params[name], before[2][name]) for name in params)
    assert grads == before[3]
    assert torch.equal(logits, before[4])


def _expect_load_error(model, folder, error, match=None):
    before = _snapshot(model)
    with pytest.raises(error, match=match):
        talan.load_pretrained(model, folder)
    _assert_unchanged(model, before)


KINDS = pytest.mark.parametrize("kind", ["unpatched", "patched"])


@KINDS
def test_missing_folder_raises_file_not_found(tmp_path, kind):
    _expect_load_error(_target(kind), tmp_path / "nowhere", FileNotFoundError, match="no TALAN checkpoint folder at")


@KINDS
@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE])
def test_missing_file_raises_file_not_found(tmp_path, kind, missing):
    _, folder = _saved(tmp_path)
    (folder / missing).unlink()
    _expect_load_error(_target(kind), folder, FileNotFoundError, match=re.escape(missing))


@KINDS
@pytest.mark.parametrize("corruption", ["garbage", "truncated", "empty"])
def test_corrupt_safetensors_raises_value_error(tmp_path, kind, corruption):
    _, folder = _saved(tmp_path)
    path = folder / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes({"garbage": os.urandom(64) + b"\x00" * 64, "truncated": data[: len(data) - 100],
                      "empty": b""}[corruption])
    _expect_load_error(_target(kind), folder, ValueError, match=WEIGHTS_FILE)


@KINDS
@pytest.mark.parametrize("text", ["{not json", "", '["a", "list"]'], ids=["broken", "empty", "not_an_object"])
def test_invalid_config_json_raises_value_error(tmp_path, kind, text):
    _, folder = _saved(tmp_path)
    (folder / CONFIG_FILE).write_text(text)
    _expect_load_error(_target(kind), folder, ValueError, match=CONFIG_FILE)


BAD_FIELDS = [("mixer", "bogus"), ("writeback", "nope"), ("site", 3), ("num_slots", 0), ("latent_dim", "16"),
              ("layer", 7), ("layer", [0, 0]), ("layer", None), ("grad_scale", -1.0), ("gate_per_channel", "yes")]


@KINDS
@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_invalid_config_field_raises_value_error_naming_it(tmp_path, kind, field, value):
    _, folder = _saved(tmp_path)
    data = json.loads((folder / CONFIG_FILE).read_text())
    data[field] = value
    (folder / CONFIG_FILE).write_text(json.dumps(data))
    _expect_load_error(_target(kind), folder, ValueError, match="layer" if field == "layer" else field)


@KINDS
def test_unknown_config_field_raises_value_error_naming_it(tmp_path, kind):
    _, folder = _saved(tmp_path)
    data = json.loads((folder / CONFIG_FILE).read_text())
    data["memory_slots"] = 8
    (folder / CONFIG_FILE).write_text(json.dumps(data))
    _expect_load_error(_target(kind), folder, ValueError, match="memory_slots")


@KINDS
@pytest.mark.parametrize("host_kw", [dict(hidden_size=32), dict(num_hidden_layers=2)], ids=["hidden", "layers"])
def test_checkpoint_for_another_host_shape_raises_value_error(tmp_path, kind, host_kw):
    _, folder = _saved(tmp_path, tiny_config(layer=0), **host_kw)
    _expect_load_error(_target(kind), folder, ValueError, match="hidden_size")


@pytest.mark.parametrize("other", [dict(num_slots=8), dict(mixer="linear"), dict(site="post"), dict(layer=0),
                                   dict(trainable="writeback_only")],
                         ids=["num_slots", "mixer", "site", "layer", "trainable"])
def test_model_patched_with_another_config_raises_value_error(tmp_path, other):
    _, folder = _saved(tmp_path)
    model = talan.patch(tiny_qwen3(seed=5), tiny_config(**other))
    _expect_load_error(model, folder, ValueError, match="different TALAN config")


@KINDS
@pytest.mark.parametrize("edit", ["wrong_shape", "missing_key", "extra_key", "renamed_layer"])
def test_tensors_that_do_not_match_the_config_raise_value_error(tmp_path, kind, edit):
    _, folder = _saved(tmp_path)
    path = folder / WEIGHTS_FILE
    tensors = load_file(str(path))
    key = "layers.1.w_in"
    assert key in tensors
    if edit == "wrong_shape":
        tensors[key] = torch.zeros(64, 8)
    elif edit == "missing_key":
        del tensors[key]
    elif edit == "extra_key":
        tensors["layers.1.extra"] = torch.zeros(3)
    else:
        tensors = {k.replace("layers.1.", "layers.0."): v for k, v in tensors.items()}
    save_file(tensors, str(path))
    _expect_load_error(_target(kind), folder, ValueError, match="checkpoint tensors")
