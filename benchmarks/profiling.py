"""Where a timed call's time goes: its kernels, from ``torch.profiler``.

A ratio row says whether a target is met; when it is not, the next step is to know which kernel to
work on, and whether the call is bound by its kernels at all or by launching them (many short
kernels, the decode and small-T regime). One GPU run has to answer both, so the rows that decide
the side path's work carry this breakdown in their ``detail``:

- on CUDA: every device activity the profiler saw (kernels, Triton's and cuBLAS's alike, memcpy and
  memset), summed by name, in microseconds per call; ``busy_fraction`` = device time / the row's
  measured time per call (well below 1: the launches, not the kernels, set the time);
- on a CPU: the operators with the most self time, per call (a plumbing check; the dry run).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .common import sync


def kernel_breakdown(fn: Callable[[], object], device: torch.device, iters: int = 5, top: int = 12,
                     measured_s: float | None = None) -> dict:
    """Profile ``iters`` calls of ``fn`` (after one warm-up call) and return ``{"source", "us_per_call",
    "kernels": [{"name", "calls", "us"}, ...], "other_us", "busy_fraction"}``: the ``top`` names by
    time per call (``calls`` launches per call), the rest summed in ``other_us``; ``busy_fraction``
    only with ``measured_s`` (the call's measured seconds, timed without the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    fn()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(iters):
            fn()
        sync(device)
    if cuda:
        totals = device_totals(prof.events())
    else:
        totals = {avg.key: [float(avg.self_cpu_time_total), avg.count] for avg in prof.key_averages()
                  if avg.self_cpu_time_total > 0}
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])
    per_call = sum(us for us, _ in totals.values()) / iters
    kernels = [{"name": name, "calls": round(count / iters, 2), "us": round(us / iters, 2)}
               for name, (us, count) in ranked[:top]]
    out = {"source": "CUDA kernels (device time)" if cuda else "CPU operators (self time)",
           "us_per_call": round(per_call, 2), "kernels": kernels,
           "other_us": round(sum(us for _, (us, _) in ranked[top:]) / iters, 2)}
    if measured_s and cuda:  # on a CPU the profiler's own overhead is inside the operators' self time
        out["busy_fraction"] = round(per_call / (measured_s * 1e6), 4)
    return out


def device_totals(events) -> dict[str, list[float]]:
    """``{name: [microseconds, count]}`` over the profiler's device events (kernels, memcpy, memset);
    host-side events (operators, ``cudaLaunchKernel``) are left out."""
    from torch.autograd import DeviceType

    totals: dict[str, list[float]] = {}
    for event in events:
        if event.device_type == DeviceType.CUDA:
            entry = totals.setdefault(event.name, [0.0, 0])
            entry[0] += event.time_range.elapsed_us()
            entry[1] += 1
    return totals


def guarded_breakdown(fn: Callable[[], object], device: torch.device, **kwargs) -> dict:
    """``kernel_breakdown``, or ``{"error": ...}``: a profiler that fails never costs the row its numbers."""
    try:
        return kernel_breakdown(fn, device, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the breakdown is extra information
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def breakdown_markdown(title: str, breakdown: dict) -> list[str]:
    """A Markdown section for one breakdown (empty for none)."""
    if not breakdown:
        return []
    if "error" in breakdown:
        return ["", f"### {title}", "", f"profiler failed: {breakdown['error']}"]
    busy = breakdown.get("busy_fraction")
    head = (f"{breakdown['source']}: {breakdown['us_per_call']:.1f} µs per call"
            + (f", {busy:.0%} of the measured time" if busy is not None else ""))
    lines = ["", f"### {title}", "", head, "", "| kernel | per call | µs per call |", "|---|---:|---:|"]
    for k in breakdown["kernels"]:
        name = k["name"] if len(k["name"]) <= 80 else k["name"][:77] + "..."
        lines.append(f"| `{name.replace('|', '/')}` | {k['calls']:g} | {k['us']:.2f} |")
    if breakdown["other_us"]:
        lines.append(f"| (the rest) | | {breakdown['other_us']:.2f} |")
    return lines
