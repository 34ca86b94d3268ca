"""`talan study`'s synthetic tasks: every example's completion is the answer that an independent solver of its
prompt gives (the study's exact-match scores are only as good as these answers), and the examples take the forms the
module docstring promises."""

import pytest

from talan import study_tasks

N = 300  # examples per task: enough to reach every branch of each generator (carries, closings, operators)


def _digits_reversed(text: str) -> int:
    return int(text[::-1])


def _solve_add(prompt: str, width: int | None) -> str:
    """``add A+B=``, A and B written least-significant digit first: the sum written so, one digit wider."""
    a, b = prompt.removeprefix("add ").removesuffix("=").split("+")
    assert len(a) == len(b) and (width is None or len(a) == width), prompt
    return str(_digits_reversed(a) + _digits_reversed(b)).zfill(len(a) + 1)[::-1]


def _solve_close(prompt: str) -> str:
    """The closers, innermost first, of the brackets the prefix leaves open (the prefix itself never misnests)."""
    closer = {"(": ")", "[": "]", "{": "}", "<": ">"}
    open_ = []
    for c in prompt.removeprefix("close "):
        if c in closer:
            open_.append(c)
        else:
            assert open_ and closer[open_.pop()] == c, prompt
    return "".join(closer[c] for c in reversed(open_))


def _solve_trace(prompt: str) -> str:
    """``a=3;b=a+4;...;?a``: run the statements with arithmetic modulo 10, read the queried variable."""
    *statements, query = prompt.split(";")
    env = {}
    for statement in statements:
        target, expr = statement.split("=")
        if expr.isdigit():
            env[target] = int(expr)
        else:
            x, op, y = expr
            env[target] = {"+": env[x] + env[y], "-": env[x] - env[y], "*": env[x] * env[y]}[op] % 10
    return str(env[query.removeprefix("?")])


def _solve_recall(prompt: str) -> str:
    pairs, query = prompt.removesuffix("?").split(";")
    return dict(pair.split("=") for pair in pairs.split(","))[query]


SOLVERS = {"copy": lambda p: p.removeprefix("copy ").removesuffix("="),
           "reverse": lambda p: p.removeprefix("rev ").removesuffix("=")[::-1],
           "recall": _solve_recall, "add2": lambda p: _solve_add(p, 2), "close2": _solve_close,
           "trace1": _solve_trace, "add": lambda p: _solve_add(p, None), "brackets": _solve_close,
           "trace": _solve_trace}


def test_every_task_has_a_solver():
    assert set(SOLVERS) == set(study_tasks.PRETRAIN_SKILLS) | set(study_tasks.TARGET_TASKS)


@pytest.mark.parametrize("task", list(SOLVERS))
def test_every_completion_is_the_answer_an_independent_solver_gives(task):
    examples = study_tasks.generate(task, N, seed=5)
    assert len({ex["prompt"] for ex in examples}) == N  # distinct
    for ex in examples:
        assert ex["completion"] == SOLVERS[task](ex["prompt"]), ex


def test_targeted_tasks_take_their_harder_forms():
    """add: 2 and 3 digits, no leading zero, at least one carry; brackets: 3 to 5 left open (or 1); trace: 2 or 3
    operations (trace1 has one), each of +, - and * among them."""
    widths = set()
    for ex in study_tasks.generate("add", N, seed=6):
        a, b = ex["prompt"].removeprefix("add ").removesuffix("=").split("+")
        widths.add(len(a))
        assert a[-1] != "0" and b[-1] != "0", ex  # the most significant digit, written last
        assert any(int(x) + int(y) >= 10 for x, y in zip(a, b)), ex
    assert widths == {2, 3}
    assert {len(ex["completion"]) for ex in study_tasks.generate("brackets", N, seed=6)} <= {1, 3, 4, 5}
    operations = {task: [ex["prompt"].count(";") - 2 for ex in study_tasks.generate(task, N, seed=6)]
                  for task in ("trace", "trace1")}
    assert set(operations["trace"]) == {2, 3} and set(operations["trace1"]) == {1}
    ops = "".join(ex["prompt"] for ex in study_tasks.generate("trace", N, seed=6))
    assert all(op in ops for op in "+-*")
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        study_tasks.generate("chess", 1, seed=0)
    every_add2 = {f"add {a:02d}+{b:02d}=" for a in range(100) for b in range(100)}  # its every prompt
    with pytest.raises(ValueError, match="task 'add2' has fewer than 2 distinct prompts outside the excluded set"):
        study_tasks.generate("add2", 2, seed=0, exclude=every_add2)
