"""Bar chart of a results file's ratios against SPEC §5's targets and the paper's 1.01-1.02x.

    python benchmarks/plot.py benchmarks/results/<date>-<gpu>.json [-o chart.png]

One bar per row with a ratio (variant / baseline, lower is better); a black tick marks the row's
target; the shaded band is the paper's 1.01-1.02x inference overhead versus matched LoRA. Rows that
were skipped or failed are listed under the chart with the reason, never drawn as a bar.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PAPER_RANGE = (1.01, 1.02)


def plot(results: dict, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results.get("rows", [])
    drawn = [r for r in rows if isinstance(r.get("ratio"), (int, float))]
    missing = [r for r in rows if not isinstance(r.get("ratio"), (int, float))]
    env = results.get("env", {})
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.45 * max(len(drawn), 1) + 0.18 * len(missing)))
    names = [r["name"] for r in drawn]
    ratios = [r["ratio"] for r in drawn]
    colours = ["tab:green" if r.get("target") and r["ratio"] <= r["target"] else
               "tab:red" if r.get("target") else "tab:gray" for r in drawn]
    ys = list(range(len(drawn)))
    ax.barh(ys, ratios, color=colours, height=0.6)
    lo, hi = results.get("paper_range", PAPER_RANGE)
    ax.axvspan(lo, hi, color="tab:blue", alpha=0.25, label=f"paper {lo}-{hi}x vs matched LoRA")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, r in zip(ys, drawn):
        if r.get("target"):
            ax.plot([r["target"]] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2.5)
        ax.text(r["ratio"], y, f" {r['ratio']:.3f}", va="center", fontsize=8)
    ax.plot([], [], color="black", linewidth=2.5, label="target (SPEC §5)")
    ax.set_yticks(ys, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio: variant / baseline (lower is better)")
    title = f"{env.get('device', '?')}, {env.get('date', '?')}"
    if results.get("dry_run"):
        title += " (DRY RUN: not a measurement)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    if missing:
        notes = [f"{r['name']}: {'skipped' if r.get('skipped') else 'error'}: "
                 f"{(r.get('skipped') or r.get('error') or 'no value')[:90]}" for r in missing]
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=6, va="bottom", family="monospace")
    # leave room under the axes for the notes (about 0.12 inch a line)
    fig.tight_layout(rect=(0, min(0.6, 0.12 * len(missing) / fig.get_figheight()), 1, 1))
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="a results JSON written by benchmarks/collect.py")
    parser.add_argument("-o", "--out", default=None, help="PNG path (default: the JSON's path with .png)")
    args = parser.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    out = plot(results, args.out or Path(args.results).with_suffix(".png"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
