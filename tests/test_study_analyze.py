"""`talan study --quick` and `talan analyze` end to end on the CPU, plus their statistics and errors."""

import argparse
import json
import math
import time

import pytest

from talan import analyze, study, study_report, study_tasks

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
    with pytest.raises(ValueError, match="--lr"):
        study._settings(_parse(study.add_study_arguments, ["--lr", "-1"]))


def test_analyze_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        analyze.run_analyze(_parse(analyze.add_analyze_arguments, [str(tmp_path / "nope")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        analyze.run_analyze(_parse(analyze.add_analyze_arguments, [str(tmp_path / "empty")]))


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
