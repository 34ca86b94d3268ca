"""Synthetic tasks of `talan study`: the backbone's pretraining skills and the targeted fine-tuning tasks.

Every example is a ``{"prompt": str, "completion": str}`` dict over printable ASCII, so the
character tokenizer and `talan.data.collate` (left padding, loss on the completion only) serve them.
Generators are deterministic for a given seed.

Pretraining skills (the backbone learns them from scratch; checked again after fine-tuning for
non-regression): ``copy``, ``reverse``, ``recall`` (`talan.data.recall_examples`), ``add2``
(addition of 1-2 digit numbers) and easy forms of two targeted tasks, ``close2`` (close a 6-bracket
prefix) and ``trace1`` (a program with one operation): the backbone starts with the formats and
a partial skill, and fine-tuning targets the harder forms, as targeted post-training does.

Targeted tasks (the adapters learn them; each needs a memory of the prompt, which is what TALAN's
slot memory could add):

- ``add``: 2- and 3-digit addition with at least one carry, written least-significant digit first
  (the order a left-to-right model can compute; the common trick of arithmetic studies on small
  models): ``"add 743+985="`` means 347 + 589 and expects ``"6390"`` (936 reversed, padded to 4
  digits). The backbone saw 1-2 digit sums (``add2``) in pretraining, carries or not.
- ``brackets``: close an unbalanced bracket prefix with 3-5 brackets still open (1 in about 1.5 % of
  them, whose prefix reached its cap of 15 brackets):
  ``"close ([]{(<"`` -> ``">)})"``. The model must keep the stack of still-open brackets.
- ``trace``: a straight-line program over three variables with arithmetic modulo 10, then a query:
  ``"a=3;b=a+4;a=b*a;?a"`` -> ``"1"`` (7 * 3 = 21, mod 10). The model must track the variables.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

from .data import recall_examples

Example = dict  # {"prompt": str, "completion": str}
_ALNUM = string.ascii_lowercase + string.digits
_PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def _copy(rng: random.Random) -> Example:
    text = "".join(rng.choice(_ALNUM) for _ in range(rng.randint(3, 8)))
    return {"prompt": f"copy {text}=", "completion": text}


def _reverse(rng: random.Random) -> Example:
    text = "".join(rng.choice(_ALNUM) for _ in range(rng.randint(3, 8)))
    return {"prompt": f"rev {text}=", "completion": text[::-1]}


def _recall(rng: random.Random) -> Example:
    return recall_examples(1, seed=rng.randrange(2**31), num_pairs=rng.randint(2, 5))[0]


def _rev_digits(value: int, width: int) -> str:
    return str(value).zfill(width)[::-1]


def _add2(rng: random.Random) -> Example:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return {"prompt": f"add {_rev_digits(a, 2)}+{_rev_digits(b, 2)}=", "completion": _rev_digits(a + b, 3)}


def _add_carry(rng: random.Random) -> Example:
    width = rng.choice((2, 3))
    while True:
        a, b = rng.randint(10 ** (width - 1), 10**width - 1), rng.randint(10 ** (width - 1), 10**width - 1)
        if any(int(x) + int(y) >= 10 for x, y in zip(str(a), str(b))):  # at least one carry
            break
    return {"prompt": f"add {_rev_digits(a, width)}+{_rev_digits(b, width)}=",
            "completion": _rev_digits(a + b, width + 1)}


def _brackets(rng: random.Random, depths=(3, 5), p_close=0.25, min_len=0) -> Example:
    stack, prefix = [], []
    depth = rng.randint(*depths)
    while len(stack) < depth or len(prefix) < min_len:
        if stack and rng.random() < p_close:
            prefix.append(_PAIRS[stack.pop()])
        else:
            opener = rng.choice(list(_PAIRS))
            stack.append(opener)
            prefix.append(opener)
        if len(prefix) > 14:
            break
    if not stack:
        opener = rng.choice(list(_PAIRS))
        stack.append(opener)
        prefix.append(opener)
    return {"prompt": "close " + "".join(prefix), "completion": "".join(_PAIRS[c] for c in reversed(stack))}


def _brackets_easy(rng: random.Random) -> Example:
    return _brackets(rng, depths=(1, 2), p_close=0.4, min_len=6)


def _trace(rng: random.Random, ops=(2, 3)) -> Example:
    names = "abc"
    values = {}
    lines = []
    for name in rng.sample(names, 2):
        values[name] = rng.randint(0, 9)
        lines.append(f"{name}={values[name]}")
    for _ in range(rng.randint(*ops)):
        target = rng.choice(names)
        x, y = rng.sample(sorted(values), 2)
        op = rng.choice("+-*")
        result = {"+": values[x] + values[y], "-": values[x] - values[y], "*": values[x] * values[y]}[op] % 10
        values[target] = result
        lines.append(f"{target}={x}{op}{y}")
    query = rng.choice(sorted(values))
    return {"prompt": ";".join(lines) + f";?{query}", "completion": str(values[query])}


def _trace_easy(rng: random.Random) -> Example:
    return _trace(rng, ops=(1, 1))


PRETRAIN_SKILLS: dict[str, Callable[[random.Random], Example]] = {
    "copy": _copy, "reverse": _reverse, "recall": _recall, "add2": _add2, "close2": _brackets_easy,
    "trace1": _trace_easy}
TARGET_TASKS: dict[str, Callable[[random.Random], Example]] = {
    "add": _add_carry, "brackets": _brackets, "trace": _trace}


def generate(task: str, n: int, seed: int, exclude: set[str] | None = None) -> list[Example]:
    """``n`` distinct examples of ``task`` whose prompts are not in ``exclude`` (held-out sets)."""
    makers = PRETRAIN_SKILLS | TARGET_TASKS
    if task not in makers:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(makers)}")
    rng = random.Random(f"{task}:{seed}")
    seen = set(exclude or ())
    out = []
    for _ in range(50 * n + 1000):
        if len(out) == n:
            break
        ex = makers[task](rng)
        if ex["prompt"] not in seen:
            seen.add(ex["prompt"])
            out.append(ex)
    if len(out) < n:
        raise ValueError(f"task {task!r} has fewer than {n} distinct prompts outside the excluded set")
    return out


def splits(tasks: list[str], n_train: int, n_eval: int, seed: int) -> tuple[list[Example], dict[str, list[Example]]]:
    """A shuffled training mixture (``n_train`` per task) and a disjoint held-out set per task."""
    train: list[Example] = []
    held_out: dict[str, list[Example]] = {}
    for task in tasks:
        part = generate(task, n_train, seed)
        held_out[task] = generate(task, n_eval, seed + 1_000_003, exclude={ex["prompt"] for ex in part})
        train.extend(part)
    random.Random(seed).shuffle(train)
    return train, held_out
