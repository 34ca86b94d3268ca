"""A mutation sweep: each mutant is one small wrong change to a kernel (a mask, a sign, a dropped term, a state carried
across a reset), to the reference op's stages 2 and 3 or TalanBlock's initialisation (against the SPEC), or to the
glue around them (the masks TALAN reads, the decode state that follows a cache, the fused-LoRA fall-backs,
checkpoints, the trainer's groups and gather, talan train's settings, data and Trainer arguments, the demo, the
command line's value types and talan export, the hosts' residual streams and prefix caches, talan analyze's
measurements, talan study's settings, summary and tasks, the benchmarks' correctness gates and the results file a
GPU run writes), and the tests named beside it must fail on every one. A mutant they pass is a gap in the tests (the
sweep found zero_add's scale tested only at its default of 1, a reference whose mixers and writebacks only the kernels
checked, config options the block could drop, cache operations, fall-backs and refusals that no test reached, Gemma 3n
tested only with AltUp's first stream active, analyze's and study's numbers checked for being finite only, Trainer
arguments no test read, a score cap tested only at its default on the kernels, benchmark gates no test gave a broken
model, and a results file whose rows could have shown the best batch instead of the worst).

Opt-in, never part of ``make test``: ``make mutants`` (two mutants at a time), or ``python tests/mutants.py [--jobs N]
[NAME ...]`` with TRL on ``PYTHONPATH`` as make mutants puts it (the trainer's SFTTrainer tests skip without it, so
their mutants would survive). Each mutant runs in a copy of the checkout, so the working tree is never changed; the
kernels' tests run under ``TRITON_INTERPRET=1``. ``tests/test_mutants.py`` (in ``make test``) checks that every
mutant still applies to the source, once, so the list cannot rot as the code changes. The list is in
``tests/mutant_catalog.py`` (the kernel path and the core glue) and ``tests/mutant_catalog_tools.py`` (the tools).

Left out as equivalent, or as not testable deterministically: TalanBlock's early return from its initialisation on
the meta device (initialising a meta tensor does nothing); a split decode program's write mask to D instead of its
share's end (every share is whole BD blocks); fan_in_fan_out on an nn.Linear base (peft turns it off there); the
DoRA norm cache kept for autocast's cast copies (a stale hit needs the allocator to reuse their storage); the DoRA
reference norm's clamp at 0 (only rounding makes its square negative); ``talan report``'s up-front check of the
model names (building the first unknown preset names it too); TalanCheckpointCallback's should_save test without the
mixin (only a process that is not the main one, in a multi-process run, tells it apart); the fused-LoRA wrapper's
checks of an autocast dtype other than fp16/bf16 (CPU autocast takes no other), of a call with tensors on two
devices (peft's forward refuses it too) and the bias's cast under autocast (on the reference path it changes a
rounding at most); in the hosts, a closed gate tested by all() or any() (Mllama's gate is one number), the order in
which _find_stack tries the outer and inner modules (no supported model has layers in both), variant_if's default
(every layer of those families holds the attribute) and the family count in the refusal message (its text only); the
parameter budget's count of an adapter attribute that is a bare Parameter (no peft tuner we test holds one: theirs
are dicts); the demo's evaluation putting the model back in training mode (the demo's model has no dropout), its
warm-up and gradient clipping (they steady a run; no deterministic test tells them apart), its synthetic held-out
set drawn with another seed than the training set (only the loss it reports would tell); the talan version left out
of the checkpoint's block comparison (to_dict writes this talan's version on both sides); the checkpoint's copy of
the weights to the CPU before saving (safetensors copies a GPU tensor to the CPU itself; no GPU here); the trainer's
refusal of an optimizer that already holds state (Trainer's create_optimizer makes a new one) and its default group
name (Trainer's groups carry none); the dot before a gathered key's parameter name (no wrapper name ends in a
parameter name's start); in the parameter budget, TALAN's weights taken out of the adapter's (no peft tuner holds a
TALAN block), the shares of a model with TALAN weights but no backbone (no such model) and the LoRA alpha (counts do
not depend on it). In the patching: BLOOM's and MPT's ``deprecated_arguments`` taken for a stack that passes its
kwargs on (transformers 4.x only, where the floor run's host tests kill it), and which of four rows of position ids
is the text's and whether a layer's own position ids come first (no decoder we test gets four rows, and where a
layer gets its own the stack's are None).
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mutant_catalog import CORE_GLUE, KERNEL, Mutant
from mutant_catalog_tools import TOOLS

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = KERNEL + [mutant._replace(interpreter=False) for mutant in CORE_GLUE + TOOLS]


def mutated_source(root: Path, mutant: Mutant) -> str:
    """The mutant's file with its one change; a ValueError where ``old`` is not in the file exactly once."""
    source = (root / mutant.path).read_text(encoding="utf-8")
    found = source.count(mutant.old)
    if found != 1:
        raise ValueError(f"mutant {mutant.name}: its text is in {mutant.path} {found} times, not once")
    return source.replace(mutant.old, mutant.new)


def _copy_checkout(to: Path) -> None:
    for name in ("talan", "talan_kernels", "benchmarks", "tests", "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, to / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
        else:
            shutil.copy(src, to / name)


def _run_one(copy: Path, mutant: Mutant) -> tuple[bool, str]:
    """Runs ``mutant``'s tests on the checkout ``copy`` with the mutant applied, then restores the file; returns
    whether every test passed, and the line to print."""
    # the copy first; then what the caller put on PYTHONPATH (make mutants: TRL, for the trainer's tests)
    path = os.pathsep.join(filter(None, (str(copy), os.environ.get("PYTHONPATH"))))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": path}
    if mutant.interpreter:
        env["TRITON_INTERPRET"] = "1"
    original = (copy / mutant.path).read_text(encoding="utf-8")
    (copy / mutant.path).write_text(mutated_source(copy, mutant), encoding="utf-8")
    start = time.time()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                 *mutant.tests], cwd=copy, env=env, capture_output=True, text=True)
    finally:
        (copy / mutant.path).write_text(original, encoding="utf-8")
    failed = next((line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))), "")
    verdict = "killed" if result.returncode else "SURVIVED"
    return result.returncode == 0, f"{mutant.name}: {verdict} in {time.time() - start:.0f} s {failed}"


def run(mutants: list[Mutant], jobs: int = 1) -> list[str]:
    """Runs each mutant's tests on a mutated copy of the checkout (stopping at the first failure), ``jobs`` mutants
    at a time, each on a copy of its own; returns the names of the mutants that every test passed."""
    jobs = max(1, min(jobs, len(mutants)))
    survivors = []
    with tempfile.TemporaryDirectory(prefix="talan-mutants-") as tmp:
        # a free copy for each running mutant: one mutant's change must never be in another's tests
        copies = queue.SimpleQueue()
        for i in range(jobs):
            copy = Path(tmp) / str(i)
            copy.mkdir()
            _copy_checkout(copy)
            copies.put(copy)

        def run_on_a_free_copy(mutant: Mutant) -> tuple[bool, str]:
            copy = copies.get()
            try:
                return _run_one(copy, mutant)
            finally:
                copies.put(copy)

        with ThreadPoolExecutor(jobs) as pool:
            for mutant, (survived, line) in zip(mutants, pool.map(run_on_a_free_copy, mutants)):
                print(line, flush=True)
                if survived:
                    survivors.append(mutant.name)
    return survivors


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Run the mutation sweep (every mutant, or those named).")
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at a time, each on its own copy")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1; got {args.jobs}")
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        print(f"unknown mutants: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    survivors = run([m for m in MUTANTS if not args.names or m.name in args.names], args.jobs)
    if survivors:
        print(f"{len(survivors)} mutant(s) passed every test: {', '.join(survivors)}")
        return 1
    print("every mutant was killed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
