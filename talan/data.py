"""Data for the demo: a synthetic recall task, a character tokenizer and prompt/completion batching.

Nothing here downloads anything: the embedded default (`CharTokenizer` + `recall_examples`) lets
`talan demo` run on a machine with no network and no model weights. A user's own data comes as a
JSONL file of ``{"prompt": ..., "completion": ...}`` lines (`load_jsonl`).

Batches are left padded (so that `model.generate` continues every row from its last prompt token)
and the loss covers the completion and its end-of-sequence token only: labels are -100 on the
prompt and on padding.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from pathlib import Path

import torch

IGNORE_INDEX = -100  # the ignore_index of torch's cross entropy, which HF causal-LM losses use


class CharTokenizer:
    """One token per character: printable ASCII plus three specials (``<pad>``, ``<eos>``, ``<unk>``).

    The subset of the HF tokenizer interface the demo uses: ``encode(text, add_special_tokens=False)``,
    ``decode(ids, skip_special_tokens=True)``, ``pad_token_id``, ``eos_token_id``, ``len()``. A character
    outside the vocabulary maps to ``<unk>`` (so a user's JSONL never fails to tokenize) and decodes
    as U+FFFD.
    """

    specials = ("<pad>", "<eos>", "<unk>")

    def __init__(self, alphabet: str = string.printable):
        # dict.fromkeys dedups while keeping order, so ids are stable for a given alphabet
        chars = list(dict.fromkeys(alphabet))
        self.pad_token_id, self.eos_token_id, self.unk_token_id = 0, 1, 2
        self._id_of = {ch: i + len(self.specials) for i, ch in enumerate(chars)}
        self._char_of = dict(enumerate(self.specials)) | {i: ch for ch, i in self._id_of.items()}

    def __len__(self) -> int:
        return len(self._char_of)

    @property
    def vocab_size(self) -> int:
        return len(self)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [self._id_of.get(ch, self.unk_token_id) for ch in text]
        return ids + [self.eos_token_id] if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if i in (self.pad_token_id, self.eos_token_id):
                if not skip_special_tokens:
                    out.append(self._char_of[i])
            elif i == self.unk_token_id:
                out.append("\ufffd")
            else:
                out.append(self._char_of[i])
        return "".join(out)


def recall_examples(n: int, seed: int = 0, num_pairs: int = 6, value_len: int = 2) -> list[dict]:
    """Key-value recall: ``"k=42,q=07,...;q?"`` -> ``"07"``.

    The answer appears once, earlier in the prompt, next to its key; only a model that keeps the
    sequence in memory can produce it, which is what TALAN's slot memory is for. Keys are distinct
    lowercase letters, values random digit strings; deterministic for a given seed.
    """
    if not 1 <= num_pairs <= 26:
        raise ValueError(f"num_pairs must be in [1, 26]; got {num_pairs}")
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        keys = rng.sample(string.ascii_lowercase, num_pairs)
        values = ["".join(rng.choice(string.digits) for _ in range(value_len)) for _ in keys]
        query = rng.randrange(num_pairs)
        pairs = ",".join(f"{k}={v}" for k, v in zip(keys, values))
        examples.append({"prompt": f"{pairs};{keys[query]}?", "completion": values[query]})
    return examples


def iter_jsonl(path: str | Path):
    """Yield ``(where, record)`` for every non-blank line of a JSONL file, ``where`` being
    ``"FILE, line N"`` for error messages.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line that is not valid JSON, naming the file and the 1-based line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                # without its line ending: an error at the end of the line would be "line 2, column 1" of the text
                yield where, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None


def prompt_completion(record, where: str, also_accepted: str | None = None) -> dict:
    """Validate one ``{"prompt": str, "completion": str}`` record (non-empty completion).
    ``also_accepted`` names another accepted form for the error messages (e.g. ``"'messages'"``)."""
    alternative = f" or {also_accepted}" if also_accepted else ""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'prompt' and 'completion'{alternative}, "
                         f"got {type(record).__name__}")
    for key in ("prompt", "completion"):
        if key not in record:
            hint = f" (or give {also_accepted})" if also_accepted else ""
            raise ValueError(f"{where}: missing key {key!r}{hint}")
        if not isinstance(record[key], str):
            raise ValueError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
    if not record["completion"]:
        raise ValueError(f"{where}: 'completion' is empty, so the example would carry no loss")
    return {"prompt": record["prompt"], "completion": record["completion"]}


def load_jsonl(path: str | Path) -> list[dict]:
    """Read ``{"prompt": str, "completion": str}`` lines; blank lines are skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a malformed line, naming the file and the 1-based line number; or no examples.
    """
    examples = [prompt_completion(record, where) for where, record in iter_jsonl(path)]
    if not examples:
        raise ValueError(f"{path}: no examples (the file is empty or holds only blank lines)")
    return examples


def _pad_id(tokenizer) -> int:
    # Qwen3/Llama tokenizers may have no pad token; padding is masked everywhere, so eos serves
    pad = getattr(tokenizer, "pad_token_id", None)
    return tokenizer.eos_token_id if pad is None else pad


def _left_pad(rows: Sequence[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)


def _tokenize(examples: Sequence[dict], tokenizer, max_length: int | None) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids (prompt + completion + eos) and labels (the prompt masked) of each example."""
    if not examples:
        raise ValueError("collate needs at least one example")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; the completion needs one to end")
    ids, labels = [], []
    for ex in examples:
        prompt = tokenizer.encode(ex["prompt"], add_special_tokens=False)
        completion = tokenizer.encode(ex["completion"], add_special_tokens=False) + [tokenizer.eos_token_id]
        if max_length is not None:
            if len(completion) > max_length:
                raise ValueError(f"a completion of {len(completion)} tokens (with eos) exceeds "
                                 f"max_length={max_length}")
            prompt = prompt[max(0, len(prompt) + len(completion) - max_length):]
        ids.append(prompt + completion)
        labels.append([IGNORE_INDEX] * len(prompt) + completion)
    return ids, labels


def collate(examples: Sequence[dict], tokenizer, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Tokenise prompt + completion + eos, left pad, mask labels on prompt and padding.

    Returns ``input_ids``, ``attention_mask`` and ``labels``, each ``[B, T]`` long, T the longest row.
    With ``max_length``, a longer row loses tokens from the start of its prompt (the completion is
    what carries the loss); a completion that alone exceeds ``max_length`` raises ``ValueError``.
    """
    ids, labels = _tokenize(examples, tokenizer, max_length)
    input_ids = _left_pad(ids, _pad_id(tokenizer))
    attention_mask = _left_pad([[1] * len(r) for r in ids], 0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": _left_pad(labels, IGNORE_INDEX)}


def collate_packed(examples: Sequence[dict], tokenizer, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The examples of `collate` end to end in one row, with no padding (what transformers'
    ``DataCollatorWithFlattening`` does): ``input_ids``, ``labels`` and ``position_ids``, each ``[1, total]``.
    Position ids restart at 0 for every example and there is no attention mask, so attention and the
    TALAN memory both restart there (SPEC §2); each example's first label is masked so that no loss
    crosses from one example into the next.
    """
    ids, labels = _tokenize(examples, tokenizer, max_length)
    positions = [list(range(len(r))) for r in ids]
    labels = [[IGNORE_INDEX] + r[1:] for r in labels]
    return {name: torch.tensor([sum(rows, [])], dtype=torch.long)
            for name, rows in (("input_ids", ids), ("labels", labels), ("position_ids", positions))}


def collate_prompts(prompts: Sequence[str], tokenizer) -> dict[str, torch.Tensor]:
    """Left-padded prompts alone, for ``model.generate``: ``input_ids`` and ``attention_mask``."""
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    if any(not r for r in ids):
        raise ValueError("every prompt needs at least one token for generation")
    return {"input_ids": _left_pad(ids, _pad_id(tokenizer)),
            "attention_mask": _left_pad([[1] * len(r) for r in ids], 0)}


def batches(examples: Sequence[dict], batch_size: int, seed: int = 0):
    """An endless stream of random mini-batches of examples (reshuffled every epoch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            if len(chunk) == batch_size or len(order) < batch_size:
                yield [examples[i] for i in chunk]
