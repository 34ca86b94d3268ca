"""The benchmarks' correctness gates (benchmarks/models.py, cases.py, common.py) fail on what they are there to catch:
a GPU run times nothing that its gate did not pass, so a gate that cannot fail would let a wrong model's (or kernel's)
time into a results file. Each gate is run on a matched pair (tiny host, CPU, fp32) or a right op that passes, then on
one broken the way it guards against."""

import pytest
import torch

from benchmarks import models
from benchmarks.common import check_close

HOST = models.HOSTS["tiny"]


@pytest.fixture
def pair():
    return models.build_pair(host=HOST)


def _ids(batch: int = 2, length: int = 12, seed: int = 7):
    return models.random_ids(batch, length, HOST["vocab_size"], "cpu", seed)


def _nudge_lora(model, scale: float = 1e-3):
    """Moves the first LoRA B matrix a little: a model no longer matched with its pair."""
    weight = next(p for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        weight.add_(scale)


def test_check_close_passes_within_the_tolerance_and_names_what_failed():
    ref = torch.ones(8)
    assert check_close(ref + 1e-7, ref, "x") < 1e-5
    for out, message in ((ref + 1e-3, r"y: relative RMS error 1\.000e-03 > 1\.0e-05"), (ref[:4], "y: shape"),
                         (ref * float("nan"), "y: non-finite")):
        with pytest.raises(AssertionError, match=message):
            check_close(out, ref, "y")


def test_check_pair_needs_exact_logits_when_disabled_and_a_change_when_enabled(pair):
    lora, with_talan = pair
    assert models.check_pair(lora, with_talan, _ids()) > 0
    models.open_gates(with_talan, 0.0)  # the side path adds nothing
    with pytest.raises(AssertionError, match="the side path did not run"):
        models.check_pair(lora, with_talan, _ids())
    _nudge_lora(with_talan)
    with pytest.raises(AssertionError, match="TALAN disabled does not reproduce"):
        models.check_pair(lora, with_talan, _ids())


def test_check_decode_needs_the_matched_tokens_when_disabled(pair):
    lora, with_talan = pair
    prompt = _ids(2, 6)
    models.check_decode(lora, with_talan, prompt, 4)
    _nudge_lora(with_talan, 1.0)  # enough to change a greedy token
    with pytest.raises(AssertionError, match="does not generate the matched LoRA model's tokens"):
        models.check_decode(lora, with_talan, prompt, 4)


def test_check_train_needs_peft_eager_loss_and_lora_gradients():
    train = models.train_models(HOST, 8, torch.device("cpu"), torch.float32, "torch", "torch")
    models.check_train(train, _ids(), torch.float32)
    _nudge_lora(train["fused"])
    with pytest.raises(AssertionError, match="fused LoRA (loss|gradients) vs peft"):
        models.check_train(train, _ids(), torch.float32)


def test_check_block_backend_compares_the_block_with_the_reference(pair, monkeypatch):
    import talan_kernels.side_path

    _, with_talan = pair
    assert models.check_block_backend(with_talan, torch.float32, "cpu", tokens=16) < 1e-5
    reference = talan_kernels.side_path.side_path_ref

    def off_by_a_percent(h, params):
        out, state = reference(h, params)
        return out * 1.01, state

    monkeypatch.setattr(talan_kernels.side_path, "side_path_ref", off_by_a_percent)
    with pytest.raises(AssertionError, match="TALAN block on backend 'torch'"):
        models.check_block_backend(with_talan, torch.float32, "cpu", tokens=16)


# ---- the kernel benchmarks' gates (benchmarks/cases.py): a provider's output, state and every gradient ------------
def _with_grad_scaled(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t`` itself, whose gradient comes back ``factor`` times too large."""
    return t * factor - (t * (factor - 1)).detach()


def test_lora_case_gates_refuse_a_wrong_output_or_gradient(monkeypatch):
    import talan_kernels.lora as lora_ops
    from benchmarks.cases import lora_case

    reference = lora_ops.lora_linear_ref
    args = dict(tokens=16, hidden=32, rank=8, device="cpu", dtype=torch.float32)
    fakes = {  # each with the real op's signature, the backend ignored
        "output": lambda x, w, a, b, s, backend: reference(x, w, a, b, s * 1.05),
        "dB": lambda x, w, a, b, s, backend: reference(x, w, a, _with_grad_scaled(b, 1.1), s),
    }
    for wrong, fake in fakes.items():
        monkeypatch.setattr(lora_ops, "lora_linear", lambda x, w, a, b, s, backend="auto": reference(x, w, a, b, s))
        lora_case("triton", mode="fwdbwd", **args).check()  # the same op, right: passes
        monkeypatch.setattr(lora_ops, "lora_linear", fake)
        with pytest.raises(AssertionError, match=f"lora triton fwdbwd {wrong}"):
            lora_case("triton", mode="fwdbwd", **args).check()


def test_side_path_case_gates_refuse_a_wrong_output_state_or_gradient(monkeypatch):
    import talan_kernels.side_path as side_path_ops
    from benchmarks.cases import side_path_case

    reference = side_path_ops.side_path_ref

    def wrong_state(h, params, state=None, backend="auto"):
        out, (s, n) = reference(h, params, state=state)
        return out, (s * 1.01, n)

    def wrong_h_gradient(h, params, state=None, backend="auto"):
        return reference(_with_grad_scaled(h, 1.1), params, state=state)

    args = dict(batch=2, tokens=8, hidden=32, latent=16, slots=4, device="cpu", dtype=torch.float32)
    for mode, fake, message in (("decode", wrong_state, "side path triton decode state S"),
                                ("fwdbwd", wrong_h_gradient, r"side path triton grad 0")):
        monkeypatch.setattr(side_path_ops, "side_path", lambda h, params, state=None, backend="auto": reference(
            h, params, state=state))
        side_path_case("triton", mode=mode, **args).check()
        monkeypatch.setattr(side_path_ops, "side_path", fake)
        with pytest.raises(AssertionError, match=message):
            side_path_case("triton", mode=mode, **args).check()
