"""`talan demo` end to end on the embedded default (train, report, generate, save, reload) and the
`talan` command line: `demo`, `report`, and the errors a user can cause with an argument."""

import contextlib
import io
import json

import pytest
import torch
from safetensors.torch import load_file

from talan.cli import main
from talan.demo import run_demo

SHORT_STEPS = 30


def _run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    """One short demo through the CLI, shared by the tests below (about 10 s on 2 cores)."""
    out_dir = tmp_path_factory.mktemp("demo")
    code, stdout, stderr = _run_cli(["demo", "--steps", str(SHORT_STEPS), "--out", str(out_dir), "--no-progress"])
    return code, stdout, stderr, out_dir


def test_demo_writes_adapter_and_talan_files_in_one_folder(short_demo):
    code, _, stderr, out_dir = short_demo
    assert code == 0, stderr
    names = {p.name for p in out_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "talan_config.json",
            "talan_model.safetensors"} <= names
    adapter_config = json.loads((out_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8
    talan_config = json.loads((out_dir / "talan_config.json").read_text())
    assert talan_config["mixer"] == "attn" and talan_config["num_slots"] == 16
    tensors = load_file(out_dir / "talan_model.safetensors")
    assert tensors and all(key.startswith("layers.") for key in tensors)
    # the gate starts at exactly 0; after co-training it has moved, so training reached TALAN
    gates = [t for key, t in tensors.items() if key.endswith(".gate")]
    assert gates and any(g.abs().max() > 0 for g in gates)
    adapter = load_file(out_dir / "adapter_model.safetensors")
    assert any("lora_B" in key and t.abs().max() > 0 for key, t in adapter.items())


def _loss(stdout, label):
    line = next(line for line in stdout.splitlines() if line.startswith(label))
    return float(line.split(":", 1)[1].split()[0])


def test_demo_prints_report_losses_sample_and_round_trip(short_demo):
    code, stdout, _, out_dir = short_demo
    assert code == 0
    for label in ("backbone", "adapter", "TALAN", "trainable", "% of backbone"):
        assert label in stdout
    before, after = _loss(stdout, "held-out loss before"), _loss(stdout, "held-out loss after")
    assert after < before - 1.0, stdout
    assert "greedy samples" in stdout and "(expected '" in stdout
    assert f"saved to {out_dir}" in stdout
    reload_line = next(line for line in stdout.splitlines() if line.startswith("reloaded"))
    assert f"held-out loss {after:.4f}" in reload_line, reload_line


def test_run_demo_reload_reproduces_the_trained_model(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = run_demo(steps=5, out_dir=tmp_path / "ckpt", progress=False, batch_size=4)
        assert torch.get_num_threads() == 2  # the demo restores the thread count it lowered
    finally:
        torch.set_num_threads(threads)
    assert result["loss_reloaded"] == pytest.approx(result["loss_after"], abs=1e-6)
    assert result["max_logit_diff"] < 1e-5
    report = result["report"]
    assert report["talan"] > 0 and report["adapter"] > 0
    assert report["trainable"] == report["adapter"] + report["talan"]
    assert len(result["samples"]) == 3


def test_demo_on_user_jsonl(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"echo {i}:", "completion": str(i)}) for i in range(40)))
    code, stdout, stderr = _run_cli(["demo", "--data", str(data), "--steps", "3", "--batch-size", "4",
                                     "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, stderr
    assert "pairs.jsonl (36 train / 4 held out)" in stdout
    assert (tmp_path / "out" / "talan_model.safetensors").is_file()


def test_demo_malformed_jsonl_is_one_clear_line(tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    code, _, stderr = _run_cli(["demo", "--data", str(data), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "broken.jsonl, line 2" in stderr and "missing key 'completion'" in stderr
    assert "Traceback" not in stderr


def test_run_demo_refuses_no_steps_and_data_too_small_to_hold_one_out(tmp_path):
    with pytest.raises(ValueError, match="steps must be positive; got 0"):
        run_demo(steps=0, out_dir=tmp_path / "out")
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"holds 1 example\(s\); the demo needs at least 2"):
        run_demo(data_path=data, steps=1, out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_demo_command_passes_its_flags_and_runs_300_steps_by_default(tmp_path, monkeypatch):
    import talan.demo

    calls = []
    monkeypatch.setattr(talan.demo, "run_demo", lambda **kwargs: calls.append(kwargs))
    assert _run_cli(["demo", "--out", str(tmp_path)])[0] == 0
    assert _run_cli(["demo", "--model", "m", "--data", "d.jsonl", "--steps", "7", "--batch-size", "3", "--seed", "5",
                     "--out", str(tmp_path), "--no-progress"])[0] == 0
    assert calls == [dict(model_path=None, data_path=None, steps=300, out_dir=str(tmp_path), seed=0, batch_size=16,
                          progress=True),
                     dict(model_path="m", data_path="d.jsonl", steps=7, out_dir=str(tmp_path), seed=5, batch_size=3,
                          progress=False)]


def test_demo_missing_model_path(tmp_path):
    missing = tmp_path / "no_such_model"
    code, _, stderr = _run_cli(["demo", "--model", str(missing), "--out", str(tmp_path / "out")])
    assert code == 2
    assert str(missing) in stderr and "no such directory" in stderr
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        run_demo(model_path=missing, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the error


def test_demo_model_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        run_demo(model_path=tmp_path, out_dir=tmp_path / "out")


def test_a_local_checkpoint_whose_tokenizer_has_no_eos_token_is_refused(tmp_path):
    from train_helpers import word_level_tokenizer
    from transformers import Qwen3Config

    from talan.checkpoint import load_local_checkpoint

    word_level_tokenizer(["<unk>", "a"]).save_pretrained(tmp_path)
    Qwen3Config(vocab_size=2, hidden_size=32, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="--model .*the tokenizer has no eos token"):
        load_local_checkpoint(tmp_path)  # before any weight is read (there are none)


def test_a_local_checkpoint_saved_in_bf16_loads_in_fp32_unless_asked(tmp_path):
    """Training needs fp32 adapter and TALAN weights beside the backbone's: the default dtype is fp32 whatever the
    checkpoint was saved in (transformers 5 would keep the saved one)."""
    from train_helpers import make_local_checkpoint
    from transformers import AutoModelForCausalLM

    from talan.checkpoint import load_local_checkpoint

    folder = make_local_checkpoint(tmp_path / "model")
    AutoModelForCausalLM.from_pretrained(folder).to(torch.bfloat16).save_pretrained(folder)
    for dtype, expected in ((None, torch.float32), (torch.bfloat16, torch.bfloat16)):
        model, _ = load_local_checkpoint(folder, dtype=dtype)
        assert {p.dtype for p in model.parameters()} == {expected}, dtype


def test_demo_on_a_local_hf_checkpoint(tmp_path):
    """--model PATH: a Qwen3 checkpoint and a fast tokenizer saved locally (nothing downloaded)."""
    from train_helpers import word_level_tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    vocab = ["<pad>", "<eos>", "<unk>", *sorted(set("0123456789abcdefghijklmnopqrstuvwxyz=,;?:"))]
    tokenizer = word_level_tokenizer(vocab, split_chars=True, pad_token="<pad>", eos_token="<eos>")
    assert tokenizer.decode(tokenizer.encode("a=12", add_special_tokens=False)).replace(" ", "") == "a=12"
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         head_dim=16, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1))
    path = tmp_path / "tiny-qwen3"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    code, stdout, stderr = _run_cli(["demo", "--model", str(path), "--steps", "3", "--batch-size", "4",
                                     "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, stderr
    assert "Qwen3ForCausalLM" in stdout
    reload_line = next(line for line in stdout.splitlines() if line.startswith("reloaded"))
    assert f"held-out loss {_loss(stdout, 'held-out loss after'):.4f}" in reload_line


@pytest.mark.slow
def test_full_demo_loss_drops_within_two_minutes(tmp_path):
    result = run_demo(out_dir=tmp_path / "full", progress=False)
    assert result["seconds"] < 120, result["seconds"]
    assert result["loss_after"] < result["loss_before"] - 3.0, result
    assert result["loss_reloaded"] == pytest.approx(result["loss_after"], abs=1e-6)


def test_report_command_prints_the_budget_table():
    code, stdout, stderr = _run_cli(["report", "--models", "Qwen3-0.6B", "Llama-3.2-1B"])
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert any(line.startswith("| model |") for line in lines)
    row = next(line for line in lines if line.startswith("| Qwen3-0.6B |"))
    assert "596,049,920" in row  # the published 0.6B backbone, tied embedding counted once
    assert "146,432" in row  # one default block at d=1024: 2d + 2dr + 3r^2 + Mr
    assert any(line.startswith("| Llama-3.2-1B |") for line in lines)


def test_report_command_follows_latent_dim_num_slots_and_lora_rank():
    code, stdout, _ = _run_cli(["report", "--models", "Qwen3-0.6B", "--latent-dim", "32", "--num-slots", "8",
                                "--lora-rank", "4"])
    assert code == 0
    d, r, m = 1024, 32, 8
    assert f"{2 * d + 2 * d * r + 3 * r * r + m * r:,d}" in stdout
    assert "latent_dim=32" in stdout and "num_slots=8" in stdout and "LoRA r=4" in stdout
    # rank 4 on the 7 linear layers of each of the 28 layers: (in + out) * 4 weights each
    per_layer = (1024 + 2048) + 2 * (1024 + 1024) + (2048 + 1024) + 3 * (1024 + 3072)
    assert f"| {28 * per_layer * 4:,d} |" in stdout


def test_report_unknown_model_and_bad_values():
    code, _, stderr = _run_cli(["report", "--models", "Qwen9-1T"])
    assert code == 2 and "Qwen9-1T" in stderr
    with pytest.raises(SystemExit) as info:
        _run_cli(["report", "--latent-dim", "0"])
    assert info.value.code == 2


def test_cli_needs_a_subcommand():
    with pytest.raises(SystemExit) as info:
        _run_cli([])
    assert info.value.code == 2
