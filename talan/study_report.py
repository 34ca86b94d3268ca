"""Statistics, the markdown table and the plots of `talan study` (no scipy: the t quantile is a table)."""

from __future__ import annotations

import math
from pathlib import Path

# Two-sided 95 % quantiles t_{0.975, df} of Student's t distribution, df = 1..30.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959964
# Paired differences closer to 0 than this are ties: accuracies are fractions of at most a few thousand examples, so
# a true difference is far larger, and the mean over tasks of equal accuracies can differ by a rounding (0.6 + 0.2
# against 0.5 + 0.3), which must count neither as a win nor as a loss.
_TIE = 1e-9


def t_quantile_975(df: int) -> float:
    """``t_{0.975}`` with ``df`` degrees of freedom: the table up to 30, then the Cornish-Fisher
    expansion around the normal quantile (error below 1e-4 for df > 30)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 values (df >= 1); got df={df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def mean_ci(values: list[float]) -> dict:
    """Mean, sample standard deviation and the 95 % t interval of the mean (the interval collapses to
    the mean for a single value, and is reported as such with ``n = 1``)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "sd": 0.0, "ci_low": mean, "ci_high": mean, "n": 1, "t": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = t_quantile_975(n - 1)
    half = t * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "n": n, "t": t}


def _variant(run: dict) -> str:
    return run["adapter"] + ("+talan" if run["talan"] else "")


def _avg(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def summarize(runs: list[dict], settings: dict, baseline: dict) -> dict:
    """Per-variant means, paired TALAN-minus-plain differences with t intervals, and non-regression."""
    tasks = settings["tasks"]
    columns = tasks + ["mean"]
    variants = [k + s for k in settings["adapters"] for s in ("", "+talan")]

    def acc(run, column):
        return _avg(run["accuracy"].values()) if column == "mean" else run["accuracy"][column]

    per_variant = {}
    for v in variants:
        chosen = sorted((r for r in runs if _variant(r) == v), key=lambda r: r["seed"])
        per_variant[v] = {
            "accuracy": {c: mean_ci([acc(r, c) for r in chosen]) for c in columns},
            "skill_accuracy": {s: _avg(r["skill_accuracy"][s] for r in chosen) for s in baseline["skill_accuracy"]},
            "final_train_loss": _avg(r["final_train_loss"] for r in chosen),
            "talan_percent": chosen[0]["parameters"]["talan_percent"],
            "trainable": chosen[0]["parameters"]["trainable"],
        }
    paired = {}
    for kind in settings["adapters"]:
        plain = {r["seed"]: r for r in runs if r["adapter"] == kind and not r["talan"]}
        with_talan = {r["seed"]: r for r in runs if r["adapter"] == kind and r["talan"]}
        seeds = sorted(set(plain) & set(with_talan))
        paired[kind] = {}
        for c in columns:
            diffs = [acc(with_talan[s], c) - acc(plain[s], c) for s in seeds]
            paired[kind][c] = {**mean_ci(diffs), "diffs": diffs, "wins": sum(d > _TIE for d in diffs),
                               "losses": sum(d < -_TIE for d in diffs)}
    skills = list(baseline["skill_accuracy"])
    base_skill = _avg(baseline["skill_accuracy"].values())
    non_regression = {v: _avg(per_variant[v]["skill_accuracy"].values()) - base_skill for v in variants}
    return {"columns": columns, "variants": variants, "skills": skills, "per_variant": per_variant,
            "paired": paired, "non_regression": non_regression,
            "mean_gain_points": {k: 100 * paired[k]["mean"]["mean"] for k in settings["adapters"]}}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _signed(x: float) -> str:
    return f"{100 * x:+.2f}"


def markdown(result: dict) -> str:
    """The study's tables (accuracies and paired differences in percentage points)."""
    s, settings, base = result["summary"], result["settings"], result["baseline"]
    cols, skills = s["columns"], s["skills"]
    n_seeds = settings["seeds"]
    lines = [
        "Small-scale synthetic study (not the paper's benchmarks): a "
        f"{result['backbone']['parameters'] / 1e6:.2f} M-parameter Qwen3 (d={_arch(result)['hidden_size']}, "
        f"{_arch(result)['num_hidden_layers']} layers, character vocabulary) pretrained on "
        f"{', '.join(skills)}, then fine-tuned on {', '.join(settings['tasks'])} with rank-{settings['lora_rank']} "
        f"adapters on every linear layer, {settings['steps']} steps of batch {settings['batch_size']}, "
        f"{n_seeds} paired seeds. TALAN: layer {settings['talan']['layer']} ({settings['talan']['site']}), "
        f"M={settings['talan']['num_slots']}, r={settings['talan']['latent_dim']}. Exact match of greedy "
        f"generation on {settings['n_eval']} held-out prompts per task. Command: `{result['command']}`.",
        "",
        "**Exact match (%), mean over seeds** (skills: mean exact match on the pretraining skills, "
        "the backbone's own score in the first row)",
        "",
        "| variant | " + " | ".join(cols) + " | skills | TALAN params (% of backbone) |",
        "|---" * (len(cols) + 3) + "|",
        "| backbone (no fine-tuning) | " + " | ".join(
            _pct(_avg(base["accuracy"].values()) if c == "mean" else base["accuracy"][c]) for c in cols)
        + f" | {_pct(_avg(base['skill_accuracy'].values()))} | - |",
    ]
    for v in s["variants"]:
        row = s["per_variant"][v]
        cells = [f"{_pct(row['accuracy'][c]['mean'])} ± {_pct(row['accuracy'][c]['sd'])}" for c in cols]
        skill = _pct(_avg(row["skill_accuracy"].values()))
        share = f"{row['talan_percent']:.2f}" if v.endswith("+talan") else "-"
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {skill} ({_signed(s['non_regression'][v])}) | {share} |")
    lines += [
        "",
        f"**Paired difference, +TALAN minus plain (percentage points): mean [95 % t interval over {n_seeds} "
        "seeds], seeds won/lost**",
        "",
        "| adapter | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for kind, row in s["paired"].items():
        cells = [f"{_signed(row[c]['mean'])} [{_signed(row[c]['ci_low'])}, {_signed(row[c]['ci_high'])}] "
                 f"{row[c]['wins']}/{row[c]['losses']}" for c in cols]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    gains = ", ".join(f"{k} {g:+.2f}" for k, g in s["mean_gain_points"].items())
    lines += ["", f"Mean gain over tasks (points): {gains}. The paper reports +1.41 over LoRA and +1.85 over "
              "DoRA on its STEM/code benchmarks.", ""]
    return "\n".join(lines)


def _arch(result: dict) -> dict:
    return result["backbone"]["settings"]["architecture"]


def plot(result: dict, out: Path) -> list[Path]:
    """``study_accuracy.png`` (per-task accuracy, seeds as dots) and ``study_paired.png`` (paired
    differences with their 95 % intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    cols, variants = s["columns"], s["variants"]
    colors = {"lora": "tab:blue", "dora": "tab:orange", "rslora": "tab:green"}
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(cols), 3.6), dpi=120)
    width = 0.8 / len(variants)
    for j, v in enumerate(variants):
        kind, talan = v.removesuffix("+talan"), v.endswith("+talan")
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(cols))]
        means = [100 * s["per_variant"][v]["accuracy"][c]["mean"] for c in cols]
        ax.bar(xs, means, width, color=colors.get(kind, "grey"), alpha=1.0 if talan else 0.45,
               hatch="//" if talan else None, edgecolor="black", linewidth=0.4, label=v)
        for x, c in zip(xs, cols):
            runs = [r for r in result["runs"] if r["adapter"] == kind and r["talan"] == talan]
            ys = [100 * (sum(r["accuracy"].values()) / len(r["accuracy"]) if c == "mean" else r["accuracy"][c])
                  for r in runs]
            ax.scatter([x] * len(ys), ys, s=6, color="black", zorder=3)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_ylabel("exact match (%)")
    ax.set_title(f"held-out exact match, {result['settings']['seeds']} seeds (dots)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    paths = [out / "study_accuracy.png"]
    fig.savefig(paths[0])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(cols), 3.2), dpi=120)
    kinds = list(s["paired"])
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        xs = [i + (j - (len(kinds) - 1) / 2) * width for i in range(len(cols))]
        rows = [s["paired"][kind][c] for c in cols]
        means = [100 * r["mean"] for r in rows]
        err = [[100 * (r["mean"] - r["ci_low"]) for r in rows], [100 * (r["ci_high"] - r["mean"]) for r in rows]]
        ax.errorbar(xs, means, yerr=err, fmt="o", capsize=3, color=colors.get(kind, "grey"),
                    label=f"{kind}+talan − {kind}")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_ylabel("paired difference (points)")
    ax.set_title("TALAN effect: mean and 95 % t interval over seeds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "study_paired.png")
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def write_outputs(result: dict, out: Path) -> list[Path]:
    """``study.md`` and the PNG plots in ``out`` (``study.json`` is written by the caller)."""
    md = out / "study.md"
    md.write_text(markdown(result))
    return [out / "study.json", md, *plot(result, out)]
