"""`talan analyze`: the paper's three internal-state measurements on a trained adapter + TALAN checkpoint.

At each TALAN insertion site, over the active tokens of the evaluation prompts (prompt + completion,
teacher forced), with ``s(adapter, talan)`` the residual stream right after the insertion point:

- adapter update ``dA = s(on, off) - s(off, off)`` (peft's ``disable_adapter()``), TALAN perturbation
  ``dT = s(on, on) - s(on, off)`` (``talan.disabled``); so ``dA + dT = s(on, on) - s(off, off)``;
- ``norm_ratio``: mean ``||dA||`` over mean ``||dT||`` (and the median of the per-token ratios);
- ``cosine``: mean per-token cosine of ``dA`` and ``dT`` and mean ``|cosine|``, beside ``1/sqrt(d)``,
  the RMS cosine of two random directions in ``R^d``;
- per later layer (adapter on): mean ``||h_on - h_off||`` with TALAN on vs off, relative to ``||h||``
  and to the site's ``||dT||`` (``amplification``); the same for the adapter (on vs off, TALAN off)
  beside it. Each layer's output comes from a hook that runs after TALAN's (transformers 4.x's
  ``output_hidden_states`` records a layer's output before the post site's block writes it), and one
  more entry (``layer = L``) is the state after the final norm, the decoder stack's output (its norms
  are on another scale: compare ``relative`` there). Where layers hold several residual streams
  (Gemma 3n's AltUp; hyper-connections, whose mean is TALAN's), TALAN's is measured. A layer that
  does not run (Mllama's cross-attention layers without an image) passes its input on, so its row
  repeats the one before; a TALAN layer that does not run is refused.

Writes ``analysis.json`` and ``analysis.png`` (per-layer plot).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import torch

from . import data as talan_data
from .cli_types import positive_int

ADAPTER_CONFIG = "adapter_config.json"


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="folder with a peft adapter and the TALAN files (e.g. runs/study/checkpoints/lora_talan)")
    parser.add_argument("--model", metavar="PATH", default=None,
                        help="local HF backbone folder (default: the study backbone named in the checkpoint)")
    parser.add_argument("--data", metavar="FILE.jsonl", default=None,
                        help='evaluation examples, {"prompt", "completion"} per line (default: the checkpoint\'s '
                        "eval_prompts.jsonl)")
    parser.add_argument("--num-prompts", type=positive_int, default=96, help="at most this many examples (default 96)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--out", metavar="DIR", default=None, help="output folder (default: CHECKPOINT/analysis)")


# ---- loading ---------------------------------------------------------------------------------
def _checkpoint_meta(folder: Path) -> dict:
    from .config import CONFIG_NAME
    from .study import CHECKPOINT_META

    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {folder} (expected a peft adapter plus talan_config.json "
                                "and talan_model.safetensors, as `talan study` or `talan demo` write)")
    for name, what in ((ADAPTER_CONFIG, "peft adapter"), (CONFIG_NAME, "TALAN config")):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: not a {what} checkpoint")
    meta_path = folder / CHECKPOINT_META
    return json.loads(meta_path.read_text()) if meta_path.is_file() else {}


def load(checkpoint: str | Path, model_path: str | Path | None = None):
    """(model, tokenizer, backbone folder): the backbone with the checkpoint's peft adapter and TALAN."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    import talan

    from .study import BACKBONE_META, load_backbone

    folder = Path(checkpoint)
    meta = _checkpoint_meta(folder)
    if model_path is None:
        if "backbone" not in meta:
            raise FileNotFoundError(f"{folder} does not name its backbone (no study_checkpoint.json); "
                                    "pass --model PATH")
        model_path = meta["backbone"]
    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"backbone {model_path}: no config.json there, so it is not a Hugging Face "
                                "model folder")
    if (model_path / BACKBONE_META).is_file() or meta.get("tokenizer") == "char":
        tokenizer = talan_data.CharTokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    backbone = load_backbone(model_path)
    model = PeftModel.from_pretrained(backbone, folder)
    talan.load_pretrained(model, folder)
    return model.eval(), tokenizer, model_path


def _examples(args, folder: Path) -> list[dict]:
    from .study import EVAL_PROMPTS

    path = Path(args.data) if args.data else folder / EVAL_PROMPTS
    if args.data is None and not path.is_file():
        raise FileNotFoundError(f"{folder} has no {EVAL_PROMPTS}; pass --data FILE.jsonl with evaluation examples")
    examples = talan_data.load_jsonl(path)
    # spread over the file (it lists task after task) rather than its first lines
    step = max(1, len(examples) // args.num_prompts)
    return examples[::step][:args.num_prompts]


# ---- measuring -------------------------------------------------------------------------------
def _site_module(layer, site: str, layout):
    """(module, kind) whose hook sees the residual stream right after TALAN's write at ``site``."""
    layout = layout.of(layer)  # a hybrid's layers differ
    if site == "pre":
        return layer, "input"  # a pre-hook registered after TALAN's sees the layer input it rewrote
    if site == "mid":
        return layer.get_submodule(layout.mlp_norm), "input"  # its input is residual + attention (+ TALAN)
    return layer, "output"  # a hook registered after TALAN's prepended one sees the perturbed output


def _tensor(output) -> torch.Tensor:
    """A module's output tensor: itself, or the first of its tuple or of its ModelOutput (a stack's
    last_hidden_state)."""
    return output if isinstance(output, torch.Tensor) else output[0]


@torch.no_grad()
def _forward(model, batch, layers: dict, streams=None) -> dict:
    """What the hooks of ``layers`` ({key: (module, "input" or "output")}) saw in a forward, in fp32; where a layer
    input or output holds several residual streams, TALAN's (``streams``, a `Streams`)."""
    captured, handles = {}, []

    def keep(i, t):  # a copy: the stack may write into the tensor later (Qwen3-VL adds image features in place)
        captured[i] = (t if streams is None else streams.read(t)).to(torch.float32, copy=True)

    for i, (module, kind) in layers.items():  # i: a TALAN layer index, ("output", k) or "final"
        if kind == "input":
            handles.append(module.register_forward_pre_hook(  # self_attn gets its input as a keyword
                lambda m, a, kw, i=i: keep(i, a[0] if a else kw["hidden_states"]), with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, i=i: keep(i, _tensor(o))))
    try:
        model(**batch)
    finally:
        for h in handles:
            h.remove()
    return captured


def measure(model, tokenizer, examples: list[dict], batch_size: int = 32) -> dict:
    """The measurements of this module's docstring; every norm is a mean over active tokens."""
    import talan

    from .hosts import decoder_layers, stack_and_layout
    from .patching import talan_blocks, talan_config

    stack, layout = stack_and_layout(model)
    config = talan_config(model)
    blocks = sorted(talan_blocks(model))
    decoder = decoder_layers(stack)
    num_layers = len(decoder)
    first = blocks[0]
    # each layer's output from the first TALAN layer on, then the stack's (after the final norm)
    layers = {**{i: _site_module(decoder[i], config.site, layout) for i in blocks},
              **{("output", k): (decoder[k], "output") for k in range(first, num_layers)}, "final": (stack, "output")}
    labels = [(k, f"layer {k} output") for k in range(first, num_layers)] + [(num_layers, "after the final norm")]
    streams = layout.streams(stack.config)

    def states(captured):
        # a layer that did not run (Mllama's cross-attention layers without an image) passed its input on; the first
        # one ran (a TALAN layer that did not is refused below)
        rows = [captured["output", first]]
        for k in range(first + 1, num_layers):
            rows.append(captured.get(("output", k), rows[-1]))
        return [*rows, captured["final"]]

    d = stack.config.hidden_size
    sums: dict[str, torch.Tensor] = {}

    def add(key, value):
        sums[key] = sums.get(key, 0.0) + value.double()

    tokens = 0
    cos_values: dict[int, list[torch.Tensor]] = {i: [] for i in blocks}
    ratio_values: dict[int, list[torch.Tensor]] = {i: [] for i in blocks}
    for start in range(0, len(examples), batch_size):
        batch = talan_data.collate(examples[start:start + batch_size], tokenizer)
        batch.pop("labels")
        active = batch["attention_mask"].bool()
        tokens += int(active.sum())
        seen_on = _forward(model, batch, layers, streams)
        with talan.disabled(model):
            seen_off = _forward(model, batch, layers, streams)
            with model.disable_adapter():
                seen_base = _forward(model, batch, layers, streams)
        skipped = [i for i in blocks if i not in seen_on]
        if skipped:
            raise ValueError(f"decoder layer(s) {skipped} did not run on these examples (as Mllama's cross-attention "
                             "layers do without an image), so TALAN there changed nothing to measure")
        for i in blocks:
            d_adapter = (seen_off[i] - seen_base[i])[active]
            d_talan = (seen_on[i] - seen_off[i])[active]
            na, nt = d_adapter.norm(dim=-1), d_talan.norm(dim=-1)
            add(f"site{i}.adapter", na.sum())
            add(f"site{i}.talan", nt.sum())
            add(f"site{i}.stream", seen_on[i][active].norm(dim=-1).sum())
            ok = (na > 0) & (nt > 0)
            cos_values[i].append(torch.nn.functional.cosine_similarity(d_adapter[ok], d_talan[ok], dim=-1))
            ratio_values[i].append(na[ok] / nt[ok])
        for k, (on, off, base) in enumerate(zip(states(seen_on), states(seen_off), states(seen_base))):
            add(f"layer{k}.talan", (on - off)[active].norm(dim=-1).sum())
            add(f"layer{k}.adapter", (off - base)[active].norm(dim=-1).sum())
            add(f"layer{k}.stream", off[active].norm(dim=-1).sum())
    mean = {k: float(v) / tokens for k, v in sums.items()}

    sites = []
    for i in blocks:
        cos = torch.cat(cos_values[i]).double()
        ratios = torch.cat(ratio_values[i]).double()
        talan_norm = mean[f"site{i}.talan"]
        sites.append({
            "layer": i, "site": config.site,
            "adapter_update_norm": mean[f"site{i}.adapter"], "talan_perturbation_norm": talan_norm,
            "residual_norm": mean[f"site{i}.stream"],
            "norm_ratio": mean[f"site{i}.adapter"] / talan_norm if talan_norm > 0 else math.inf,
            "norm_ratio_median_per_token": float(ratios.median()) if len(ratios) else math.nan,
            "cosine_mean": float(cos.mean()) if len(cos) else math.nan,
            "abs_cosine_mean": float(cos.abs().mean()) if len(cos) else math.nan,
            "random_baseline_abs_cosine": 1.0 / math.sqrt(d),
            "tokens_with_both_nonzero": len(cos),
        })
    site_talan = sites[0]["talan_perturbation_norm"]
    per_layer = []
    for k, (layer, name) in enumerate(labels):
        diff = mean[f"layer{k}.talan"]
        per_layer.append({
            "layer": layer, "name": name,
            "talan_diff_norm": diff, "adapter_diff_norm": mean[f"layer{k}.adapter"],
            "hidden_norm": mean[f"layer{k}.stream"],
            "relative": diff / mean[f"layer{k}.stream"] if mean[f"layer{k}.stream"] > 0 else math.nan,
            "amplification": diff / site_talan if site_talan > 0 else math.inf,
        })
    return {"hidden_size": d, "num_layers": num_layers, "talan_layers": blocks, "tokens": tokens,
            "num_examples": len(examples), "sites": sites, "per_layer": per_layer}


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, site = result["per_layer"], result["sites"][0]
    fig, (ax, rel) = plt.subplots(1, 2, figsize=(9.0, 3.4), dpi=120)
    xs = [r["layer"] for r in rows]
    ax.plot(xs, [r["talan_diff_norm"] for r in rows], "o-", label="TALAN on − off")
    ax.plot(xs, [r["adapter_diff_norm"] for r in rows], "s--", label="adapter on − off (TALAN off)")
    x0 = site["layer"] - 0.5
    ax.scatter([x0], [site["talan_perturbation_norm"]], marker="*", s=80, color="tab:blue", zorder=3,
               label=f"TALAN perturbation at the site ({site['site']})")
    ax.scatter([x0], [site["adapter_update_norm"]], marker="*", s=80, color="tab:orange", zorder=3,
               label="adapter update at the site")
    ax.set_yscale("log")
    ax.set_xlabel(f"decoder layer output ({result['num_layers']} = after the final norm)")
    ax.set_ylabel("mean per-token L2 norm")
    ax.set_title(f"norm ratio {site['norm_ratio']:.0f}x, mean cosine {site['cosine_mean']:+.3f} "
                 f"(1/sqrt(d) = {site['random_baseline_abs_cosine']:.3f})", fontsize=9)
    ax.legend(fontsize=7)
    rel.plot(xs, [100 * r["relative"] for r in rows], "o-", label="TALAN on − off")
    rel.scatter([x0], [100 * site["talan_perturbation_norm"] / site["residual_norm"]], marker="*", s=80,
                color="tab:blue", zorder=3, label="at the site")
    rel.set_xlabel(f"decoder layer output ({result['num_layers']} = after the final norm)")
    rel.set_ylabel("% of the hidden state's norm")
    rel.set_title("TALAN's change relative to the stream", fontsize=9)
    rel.legend(fontsize=7)
    for a in (ax, rel):
        a.set_xticks([x0, *xs], ["site", *map(str, xs)])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_analyze(args: argparse.Namespace) -> dict:
    """Load the checkpoint, measure, write ``analysis.json`` and ``analysis.png``; returns the numbers."""
    folder = Path(args.checkpoint)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model, tokenizer, model_path = load(folder, args.model)
            examples = _examples(args, folder)
            result = measure(model, tokenizer, examples, args.batch_size)
    finally:
        torch.set_num_threads(threads)
    out = Path(args.out) if args.out else folder / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    result.update(checkpoint=str(folder), model=str(model_path))
    files = [out / "analysis.json", plot(result, out / "analysis.png")]
    result["files"] = [str(f) for f in files]
    (out / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    for s in result["sites"]:
        print(f"talan analyze: layer {s['layer']} ({s['site']}): adapter update {s['adapter_update_norm']:.4g}, "
              f"TALAN perturbation {s['talan_perturbation_norm']:.4g} (ratio {s['norm_ratio']:.1f}x), cosine "
              f"{s['cosine_mean']:+.4f} (|cos| {s['abs_cosine_mean']:.4f}; random 1/sqrt(d) = "
              f"{s['random_baseline_abs_cosine']:.4f})")
    for r in result["per_layer"]:
        print(f"  {r['name']}: |TALAN on - off| {r['talan_diff_norm']:.4g} ({r['amplification']:.2f}x the site "
              f"perturbation, {100 * r['relative']:.3f} % of |h|)")
    print(f"talan analyze: wrote {', '.join(result['files'])}")
    return result
