"""`talan study --quick` and `talan analyze` end to end on the CPU, plus their statistics and errors."""

import argparse
import json
import math
import statistics
import time

import pytest
import torch
from conftest import open_gates, tiny_config, tiny_qwen3
from peft import LoraConfig, get_peft_model

import talan
from talan import analyze, study, study_report, study_tasks
from talan.data import CharTokenizer, collate
from talan.patching import is_patched

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUICK_BUDGET_S = 180  # the brief's --quick budget on 2 CPU cores


def _parse(add_arguments, argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def _check_png(path):
    data = path.read_bytes()
    assert len(data) > len(PNG_SIGNATURE) and data.startswith(PNG_SIGNATURE), path


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    start = time.perf_counter()
    result = study.run_study(_parse(study.add_study_arguments, ["--quick", "--out", str(out), "--no-progress"]))
    return out, result, time.perf_counter() - start


# ---- fast checks -------------------------------------------------------------------------------
def test_t_quantile_matches_table_and_expansion():
    assert study_report.t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert study_report.t_quantile_975(4) == pytest.approx(2.7764, abs=1e-4)
    assert study_report.t_quantile_975(40) == pytest.approx(2.0211, abs=2e-4)  # beyond the table
    assert study_report.t_quantile_975(10_000) == pytest.approx(1.9602, abs=2e-4)
    with pytest.raises(ValueError, match="df"):
        study_report.t_quantile_975(0)


def test_mean_ci_is_the_t_interval():
    ci = study_report.mean_ci([0.1, 0.3, 0.2, 0.4, 0.0])
    half = 2.7764 * math.sqrt(0.025) / math.sqrt(5)  # sd^2 = 0.1 / 4
    assert ci["mean"] == pytest.approx(0.2)
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((0.2 - half, 0.2 + half), abs=1e-4)
    # one value (a one-seed study): no interval to compute, the mean stands alone
    assert study_report.mean_ci([0.3]) == {"mean": 0.3, "sd": 0.0, "ci_low": 0.3, "ci_high": 0.3, "n": 1, "t": None}
    with pytest.raises(ValueError, match="at least one value"):
        study_report.mean_ci([])


# accuracies per (adapter, TALAN) and seed on two tasks, and the skill scores, to summarize by hand
ACCURACY = {("lora", False): {"add": [0.5, 0.6, 0.4], "trace": [0.3, 0.3, 0.5]},
            ("lora", True): {"add": [0.6, 0.6, 0.7], "trace": [0.2, 0.5, 0.5]},
            ("dora", False): {"add": [0.2, 0.4, 0.3], "trace": [0.6, 0.6, 0.6]},
            ("dora", True): {"add": [0.1, 0.4, 0.2], "trace": [0.7, 0.8, 0.6]}}
SKILLS = {("lora", False): (0.4, 0.6), ("lora", True): (0.5, 0.6), ("dora", False): (0.3, 0.3),
          ("dora", True): (0.7, 0.9)}
BASELINE = {"accuracy": {"add": 0.1, "trace": 0.2}, "skill_accuracy": {"copy": 0.5, "reverse": 0.7}}


def _study_runs():
    runs = []
    for (kind, talan_on), accuracy in ACCURACY.items():
        seeds = [2, 0, 1] if talan_on else [0, 1, 2]  # pairs are found by seed, not by order
        runs += [{"adapter": kind, "talan": talan_on, "seed": seed,
                  "accuracy": {task: values[seed] for task, values in accuracy.items()},
                  "skill_accuracy": dict(zip(("copy", "reverse"), SKILLS[kind, talan_on])),
                  "final_train_loss": 1.0 + seed + talan_on,
                  "parameters": {"talan_percent": 0.75 if talan_on else 0.0, "trainable": 120 if talan_on else 100}}
                 for seed in seeds]
    return runs


def test_summarize_pairs_each_seed_and_reports_means_intervals_and_non_regression():
    """`study_report.summarize` and its table on hand-made runs: per-variant means and standard deviations, the
    paired TALAN-minus-plain differences per seed (their t interval over 3 seeds, wins and losses), the mean
    column over tasks, and each variant's skills against the backbone's."""
    settings = {"tasks": ["add", "trace"], "adapters": ["lora", "dora"]}
    summary = study_report.summarize(_study_runs(), settings, BASELINE)
    assert summary["columns"] == ["add", "trace", "mean"]
    assert summary["variants"] == ["lora", "lora+talan", "dora", "dora+talan"]

    def per_seed(kind, talan_on, column):
        acc = ACCURACY[kind, talan_on]
        return [(acc["add"][s] + acc["trace"][s]) / 2 if column == "mean" else acc[column][s] for s in range(3)]

    for (kind, talan_on), skills in SKILLS.items():
        row = summary["per_variant"][kind + ("+talan" if talan_on else "")]
        for column in summary["columns"]:
            values = per_seed(kind, talan_on, column)
            cell = row["accuracy"][column]
            assert (cell["mean"], cell["sd"]) == pytest.approx((statistics.mean(values), statistics.stdev(values)))
        assert row["skill_accuracy"] == pytest.approx({"copy": skills[0], "reverse": skills[1]})
        assert row["final_train_loss"] == pytest.approx(2.0 + talan_on)
        assert (row["talan_percent"], row["trainable"]) == ((0.75, 120) if talan_on else (0.0, 100))
        assert summary["non_regression"][kind + ("+talan" if talan_on else "")] == pytest.approx(sum(skills) / 2 - 0.6)

    for kind in settings["adapters"]:
        for column in summary["columns"]:
            diffs = [t - p for t, p in zip(per_seed(kind, True, column), per_seed(kind, False, column))]
            cell = summary["paired"][kind][column]
            half = 4.3027 * statistics.stdev(diffs) / math.sqrt(3)  # t_{0.975} with 2 degrees of freedom
            mean = statistics.mean(diffs)
            assert cell["diffs"] == pytest.approx(diffs)
            assert (cell["mean"], cell["ci_low"], cell["ci_high"]) == pytest.approx((mean, mean - half, mean + half))
            assert (cell["wins"], cell["losses"]) == (sum(d > 1e-9 for d in diffs), sum(d < -1e-9 for d in diffs))
        assert summary["mean_gain_points"][kind] == pytest.approx(100 * summary["paired"][kind]["mean"]["mean"])
    assert (summary["paired"]["lora"]["add"]["wins"], summary["paired"]["lora"]["add"]["losses"]) == (2, 0)
    assert (summary["paired"]["dora"]["add"]["wins"], summary["paired"]["dora"]["add"]["losses"]) == (0, 2)
    # lora's seed 0 ties on the mean over tasks ((0.6 + 0.2) / 2 against (0.5 + 0.3) / 2, unequal in floats)
    assert (summary["paired"]["lora"]["mean"]["wins"], summary["paired"]["lora"]["mean"]["losses"]) == (2, 0)

    # the table prints those numbers in percent (points for the differences)
    result = {"summary": summary, "baseline": BASELINE, "command": "talan study",
              "settings": {**settings, "seeds": 3, "lora_rank": 8, "steps": 30, "batch_size": 4, "n_eval": 16,
                           "talan": {"layer": 2, "site": "mid", "num_slots": 8, "latent_dim": 16}},
              "backbone": {"parameters": 1.5e6, "settings": {"architecture": {"hidden_size": 128,
                                                                               "num_hidden_layers": 4}}}}
    table = study_report.markdown(result).splitlines()
    assert "| backbone (no fine-tuning) | 10.0 | 20.0 | 15.0 | 60.0 | - |" in table
    assert "| lora+talan | 63.3 ± 5.8 | 40.0 ± 17.3 | 51.7 ± 10.4 | 55.0 (-5.00) | 0.75 |" in table
    lora_add = summary["paired"]["lora"]["add"]
    paired_row = [line for line in table if line.startswith("| lora | ")][-1]  # the paired table follows the first
    assert paired_row.startswith(f"| lora | +13.33 [{100 * lora_add['ci_low']:+.2f}, {100 * lora_add['ci_high']:+.2f}] "
                                 "2/0 | ")


def test_task_sets_are_deterministic_and_held_out_is_disjoint():
    train, held_out = study_tasks.splits(list(study_tasks.TARGET_TASKS), 200, 50, seed=3)
    again, _ = study_tasks.splits(list(study_tasks.TARGET_TASKS), 200, 50, seed=3)
    assert train == again
    prompts = {ex["prompt"] for ex in train}
    for task, examples in held_out.items():
        assert len(examples) == 50 and not prompts & {ex["prompt"] for ex in examples}, task
    ex = study_tasks.generate("add", 1, 0)[0]
    a, b = ex["prompt"].removeprefix("add ").removesuffix("=").split("+")
    assert int(a[::-1]) + int(b[::-1]) == int(ex["completion"][::-1])


def test_unknown_flag_values_are_rejected():
    with pytest.raises(SystemExit):
        _parse(study.add_study_arguments, ["--adapters", "ia3"])
    with pytest.raises(SystemExit):
        _parse(study.add_study_arguments, ["--tasks", "chess"])
    for flag, value in (("--lr", "-1"), ("--lr", "inf"), ("--talan-lr", "nan"), ("--talan-lr", "0")):
        with pytest.raises(ValueError, match=f"{flag} must be a positive number"):
            study._settings(_parse(study.add_study_arguments, [flag, value]))


def test_study_settings_take_each_flag_over_the_defaults_and_quick():
    def settings(*argv):
        return study._settings(_parse(study.add_study_arguments, list(argv)))

    assert {k: settings()[k] for k in study.DEFAULTS} == study.DEFAULTS
    assert {k: settings("--quick")[k] for k in study.DEFAULTS} == {**study.DEFAULTS, **study.QUICK}
    flags = {"seeds": 3, "steps": 7, "batch_size": 5, "lr": 0.5, "talan_lr": 0.25, "lora_rank": 2, "pretrain_steps": 9}
    given = settings("--quick", *(f"--{k.replace('_', '-')}={v}" for k, v in flags.items()))
    assert {k: given[k] for k in flags} == flags  # over --quick's values too
    # a kind or task named twice runs once; the TALAN block as the flags say, on the reference path
    given = settings("--adapters", "dora", "lora", "dora", "--tasks", "trace", "trace", "--layer", "0.25", "--site",
                     "post", "--num-slots", "4", "--latent-dim", "8")
    assert (given["adapters"], given["tasks"]) == (["dora", "lora"], ["trace"])
    assert {k: given["talan"][k] for k in ("layer", "site", "num_slots", "latent_dim", "backend")} == {
        "layer": 0.25, "site": "post", "num_slots": 4, "latent_dim": 8, "backend": "torch"}


def test_study_learning_rate_warms_up_from_its_first_step_then_follows_a_cosine():
    # step 0 trains already (1 / warmup of the rate); the cosine reaches half the rate at mid-run
    assert study._lr_scale(0, 100, warmup=4) == pytest.approx(0.25)
    assert study._lr_scale(3, 100, warmup=4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 100)))
    assert study._lr_scale(50, 100, warmup=4) == pytest.approx(0.5)


def test_study_adapters_are_the_kinds_asked_for_and_talan_leaves_their_initialisation_unchanged():
    """build_model makes the peft adapter of each kind on every linear layer; with TALAN added after it (same seed)
    the adapter starts from the same weights, which the adapter-init checksum (over the adapter alone) shows."""
    def adapted(kind, seed, talan_config=None):
        backbone = tiny_qwen3()  # seeded itself
        torch.manual_seed(seed)
        return study.build_model(backbone, kind, 4, talan_config)

    for kind, (dora, rslora) in {"lora": (False, False), "dora": (True, False), "rslora": (False, True)}.items():
        plain = adapted(kind, 0)
        config = plain.peft_config["default"]
        assert (config.r, config.lora_alpha, config.use_dora, config.use_rslora) == (4, 8, dora, rslora), kind
        with_talan = adapted(kind, 0, tiny_config())
        assert is_patched(with_talan) and not is_patched(plain)
        assert study._adapter_checksum(with_talan) == study._adapter_checksum(plain), kind
        assert study._adapter_checksum(adapted(kind, 1)) != study._adapter_checksum(plain), kind
    with pytest.raises(ValueError, match="unknown adapter kind 'ia3'"):
        study.build_model(tiny_qwen3(), "ia3", 4, None)


def test_a_cached_backbone_made_with_other_settings_is_pretrained_again(tmp_path, capsys):
    tiny = {**study.DEFAULTS, "pretrain_steps": 1, "pretrain_batch_size": 2, "n_eval_pretrain": 1,
            "pretrain_n_train": 2 * len(study_tasks.PRETRAIN_SKILLS)}
    tokenizer = CharTokenizer()
    first = study.prepare_backbone(tmp_path, tiny, tokenizer, progress=False)
    assert first["cached"] is False and study.prepare_backbone(tmp_path, tiny, tokenizer, progress=False)["cached"]
    other = {**tiny, "pretrain_lr": 1e-3}
    again = study.prepare_backbone(tmp_path, other, tokenizer, progress=False)
    assert again["cached"] is False and "made with other settings; pretraining a new one" in capsys.readouterr().out
    assert json.loads((tmp_path / study.BACKBONE_META).read_text())["settings"]["pretrain_lr"] == 1e-3


def test_analyze_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        analyze.run_analyze(_parse(analyze.add_analyze_arguments, [str(tmp_path / "nope")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        analyze.run_analyze(_parse(analyze.add_analyze_arguments, [str(tmp_path / "empty")]))


def _active_states(model, batch):
    """The outputs of layers 1 and 2 (what layer 2 and the final norm receive) and the stack's output after that
    norm (the last hidden state), at the active tokens: ``[tokens, d]`` each."""
    stack = model.get_base_model().model
    received = []
    handles = [module.register_forward_pre_hook(lambda m, args: received.append(args[0]))
               for module in (stack.layers[2], stack.norm)]
    with torch.no_grad():
        final = model(**batch, output_hidden_states=True).hidden_states[-1]
    for handle in handles:
        handle.remove()
    active = batch["attention_mask"].bool()
    return [h[active].double() for h in (*received, final)]


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_analyze_measures_the_adapter_update_and_talan_perturbation_as_defined():
    """`analyze.measure`'s numbers against the definitions of the module docstring, computed here from what the
    layers after the site receive in the three forwards (adapter and TALAN on; TALAN off; both off) at the active
    tokens of left-padded rows in two batches: TALAN at the output of layer 1 (of 3), so the site's stream is what
    layer 2 receives."""
    model = get_peft_model(tiny_qwen3(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                    init_lora_weights=False))
    open_gates(talan.patch(model, tiny_config(site="post", layer=1)), 0.5)
    tokenizer = CharTokenizer()
    examples = [{"prompt": "ab" * (i + 2), "completion": "xyz"[:i % 3 + 1]} for i in range(5)]
    result = analyze.measure(model, tokenizer, examples, batch_size=2)

    on, off, base = [], [], []  # per batch: the states with adapter and TALAN on, TALAN off, both off
    for start in range(0, len(examples), 2):
        batch = collate(examples[start:start + 2], tokenizer)
        batch.pop("labels")
        on.append(_active_states(model, batch))
        with talan.disabled(model):
            off.append(_active_states(model, batch))
            with model.disable_adapter():
                base.append(_active_states(model, batch))
    on, off, base = ([torch.cat(layer) for layer in zip(*runs)] for runs in (on, off, base))
    tokens = sum(len(tokenizer.encode(ex["prompt"] + ex["completion"])) + 1 for ex in examples)  # + eos
    assert result["tokens"] == tokens == len(on[0]) and result["num_examples"] == 5

    d_adapter, d_talan = off[0] - base[0], on[0] - off[0]
    na, nt = d_adapter.norm(dim=-1), d_talan.norm(dim=-1)
    assert bool((na > 0).all() and (nt > 0).all())  # every token's ratio and cosine count
    cos = torch.nn.functional.cosine_similarity(d_adapter, d_talan, dim=-1)
    site = result["sites"][0]
    assert (site["layer"], site["site"], site["tokens_with_both_nonzero"]) == (1, "post", tokens)
    expected = {"adapter_update_norm": na.mean(), "talan_perturbation_norm": nt.mean(),
                "residual_norm": on[0].norm(dim=-1).mean(), "norm_ratio": na.mean() / nt.mean(),
                "norm_ratio_median_per_token": sorted((na / nt).tolist())[(tokens - 1) // 2],  # torch's lower median
                "cosine_mean": cos.mean(), "abs_cosine_mean": cos.abs().mean(),
                "random_baseline_abs_cosine": 1 / math.sqrt(64)}
    for key, value in expected.items():
        assert site[key] == pytest.approx(float(value), rel=1e-6), key

    # per later layer: layer 1's and layer 2's outputs, then the stack's output after the final norm
    rows = result["per_layer"]
    assert [(r["layer"], r["name"]) for r in rows] == [(1, "layer 1 output"), (2, "layer 2 output"),
                                                       (3, "after the final norm")]
    for row, k in zip(rows, range(3)):
        talan_diff = (on[k] - off[k]).norm(dim=-1).mean()
        hidden = off[k].norm(dim=-1).mean()
        expected = {"talan_diff_norm": talan_diff, "adapter_diff_norm": (off[k] - base[k]).norm(dim=-1).mean(),
                    "hidden_norm": hidden, "relative": talan_diff / hidden, "amplification": talan_diff / nt.mean()}
        for key, value in expected.items():
            assert row[key] == pytest.approx(float(value), rel=1e-6), (row["name"], key)


def test_analyze_spreads_its_examples_over_the_file(tmp_path):
    """--num-prompts takes examples at an even step through the file (it lists task after task), not its first
    lines; every line when there are fewer."""
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "c"}) + "\n" for i in range(10)))

    def prompts(num):
        args = _parse(analyze.add_analyze_arguments, ["ckpt", "--data", str(data), "--num-prompts", str(num)])
        return [ex["prompt"] for ex in analyze._examples(args, tmp_path)]

    assert prompts(3) == ["p0", "p3", "p6"]
    assert prompts(4) == ["p0", "p2", "p4", "p6"]
    assert prompts(20) == [f"p{i}" for i in range(10)]


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_study_quick_writes_the_table_plots_and_checkpoints(quick_study):
    out, result, seconds = quick_study
    saved = json.loads((out / "study.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    settings = saved["settings"]
    assert settings["seeds"] == 2 and settings["adapters"] == list(study.ADAPTERS)
    assert len(saved["runs"]) == len(study.ADAPTERS) * 2 * 2
    for run in saved["runs"]:
        for value in [*run["accuracy"].values(), *run["skill_accuracy"].values()]:
            assert 0.0 <= value <= 1.0
        assert set(run["accuracy"]) == set(settings["tasks"])
        assert math.isfinite(run["final_train_loss"])
    for kind in settings["adapters"]:  # paired seeds: the same adapter init with and without TALAN
        for seed in range(settings["seeds"]):
            pair = {r["talan"]: r for r in saved["runs"] if r["adapter"] == kind and r["seed"] == seed}
            assert pair[True]["adapter_init_checksum"] == pair[False]["adapter_init_checksum"]
            assert pair[True]["parameters"]["talan"] > 0 == pair[False]["parameters"]["talan"]
    summary = saved["summary"]
    for row in summary["paired"].values():
        for column in summary["columns"]:
            cell = row[column]
            assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
            assert -1.0 <= cell["mean"] <= 1.0 and len(cell["diffs"]) == 2
    for variant in summary["variants"]:
        for cell in summary["per_variant"][variant]["accuracy"].values():
            assert 0.0 <= cell["mean"] <= 1.0
    table = (out / "study.md").read_text()
    assert "| variant |" in table and "95 % t interval" in table and "lora+talan" in table
    for name in ("study_accuracy.png", "study_paired.png"):
        _check_png(out / name)
    for kind in settings["adapters"]:
        folder = out / "checkpoints" / f"{kind}_talan"
        for name in ("adapter_config.json", "talan_config.json", "talan_model.safetensors",
                     study.CHECKPOINT_META, study.EVAL_PROMPTS):
            assert (folder / name).is_file(), folder / name
    # a second run with the same settings reuses the cached backbone instead of pretraining again
    again = study.prepare_backbone(out / "backbone", study._settings(
        _parse(study.add_study_arguments, ["--quick"])), study.talan_data.CharTokenizer(), progress=False)
    assert again["cached"] is True
    assert seconds < QUICK_BUDGET_S  # last, so a slow machine still gets every check above


@pytest.mark.slow
def test_analyze_on_a_study_checkpoint(quick_study, tmp_path):
    out, _, _ = quick_study
    start = time.perf_counter()
    result = analyze.run_analyze(_parse(analyze.add_analyze_arguments, [
        str(out / "checkpoints" / "lora_talan"), "--num-prompts", "24", "--out", str(tmp_path)]))
    assert time.perf_counter() - start < 60
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["sites"] == json.loads(json.dumps(result["sites"]))
    site = saved["sites"][0]
    for key in ("adapter_update_norm", "talan_perturbation_norm", "norm_ratio", "residual_norm",
                "random_baseline_abs_cosine", "abs_cosine_mean", "norm_ratio_median_per_token"):
        assert math.isfinite(site[key]) and site[key] > 0, key
    assert -1.0 <= site["cosine_mean"] <= 1.0
    assert site["random_baseline_abs_cosine"] == pytest.approx(1 / math.sqrt(saved["hidden_size"]))
    layers = saved["per_layer"]
    assert [r["layer"] for r in layers] == list(range(site["layer"], saved["num_layers"] + 1))
    for row in layers:
        for key in ("talan_diff_norm", "adapter_diff_norm", "hidden_norm", "amplification", "relative"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["name"], key)
    _check_png(tmp_path / "analysis.png")


@pytest.mark.slow
def test_analyze_without_backbone_needs_model_flag(quick_study, tmp_path):
    out, _, _ = quick_study
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for path in (out / "checkpoints" / "lora_talan").iterdir():
        if path.is_file() and path.name != study.CHECKPOINT_META:
            (folder / path.name).write_bytes(path.read_bytes())
    with pytest.raises(FileNotFoundError, match="--model"):
        analyze.run_analyze(_parse(analyze.add_analyze_arguments, [str(folder)]))
    with pytest.raises(FileNotFoundError, match="config.json"):
        analyze.run_analyze(_parse(analyze.add_analyze_arguments, [str(folder), "--model", str(tmp_path)]))
