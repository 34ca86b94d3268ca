"""`talan.data`: the character tokenizer, the recall task, left-padded batches with completion-only
labels, and JSONL loading whose errors name the file and the line."""

import json
import string

import pytest
import torch

from talan.data import (
    IGNORE_INDEX,
    CharTokenizer,
    batches,
    collate,
    collate_packed,
    collate_prompts,
    load_jsonl,
    recall_examples,
)


@pytest.fixture
def tok():
    return CharTokenizer()


def test_tokenizer_round_trip_on_printable_text(tok):
    text = string.printable + "k=42,q=07;q?"
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert len(tok) == len(set(string.printable)) + 3 == tok.vocab_size
    assert max(ids) < len(tok)


def test_tokenizer_specials(tok):
    assert len({tok.pad_token_id, tok.eos_token_id, tok.unk_token_id}) == 3
    ids = tok.encode("ab", add_special_tokens=True)
    assert ids[-1] == tok.eos_token_id and len(ids) == 3
    assert tok.decode([tok.pad_token_id, *ids]) == "ab"
    assert tok.decode([tok.pad_token_id, *ids], skip_special_tokens=False) == "<pad>ab<eos>"
    assert tok.decode(torch.tensor(ids)) == "ab"


def test_tokenizer_of_an_alphabet_with_repeats_gives_each_character_one_id():
    tok = CharTokenizer("abca")
    assert len(tok) == 3 + 3 and tok.encode("abc") == [3, 4, 5]
    assert tok.decode(tok.encode("cab")) == "cab" and tok.encode("d") == [tok.unk_token_id]


def test_tokenizer_maps_unknown_characters_to_unk(tok):
    ids = tok.encode("a\u00e9b")
    assert ids[1] == tok.unk_token_id
    assert tok.decode(ids) == "a\ufffdb"


def test_recall_examples_are_deterministic_and_answerable():
    first, again, other = recall_examples(50, seed=3), recall_examples(50, seed=3), recall_examples(50, seed=4)
    assert first == again and first != other
    for ex in first:
        pairs, query = ex["prompt"].rsplit(";", 1)
        key = query.rstrip("?")
        table = dict(item.split("=") for item in pairs.split(","))
        assert len(table) == 6
        assert table[key] == ex["completion"]
        assert len(ex["completion"]) == 2 and ex["completion"].isdigit()


def test_recall_examples_follow_their_sizes_and_refuse_an_impossible_number_of_pairs():
    for ex in recall_examples(20, seed=1, num_pairs=26, value_len=3):
        pairs = ex["prompt"].rsplit(";", 1)[0].split(",")
        assert len({item.split("=")[0] for item in pairs}) == 26
        assert len(ex["completion"]) == 3 and all(len(item.split("=")[1]) == 3 for item in pairs)
    for num_pairs in (0, 27):
        with pytest.raises(ValueError, match=rf"num_pairs must be in \[1, 26\]; got {num_pairs}"):
            recall_examples(1, num_pairs=num_pairs)


def test_collate_left_pads_and_masks_prompt_and_padding(tok):
    examples = [{"prompt": "ab", "completion": "xyz"}, {"prompt": "abcdef", "completion": "q"}]
    batch = collate(examples, tok)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape == (2, 8)  # "abcdef" + "q" + eos
    assert ids.dtype == mask.dtype == labels.dtype == torch.long
    # row 0: 2 + 3 + eos = 6 tokens, so two pads on the LEFT
    assert ids[0, :2].tolist() == [tok.pad_token_id] * 2
    assert mask[0].tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    assert mask[1].tolist() == [1] * 8
    assert ids[0, 2:].tolist() == tok.encode("abxyz") + [tok.eos_token_id]
    # labels: -100 on padding and prompt, the completion and eos otherwise
    assert labels[0].tolist() == [IGNORE_INDEX] * 4 + tok.encode("xyz") + [tok.eos_token_id]
    assert labels[1].tolist() == [IGNORE_INDEX] * 6 + tok.encode("q") + [tok.eos_token_id]
    # every row ends with its eos, so generation continues from the real last token
    assert (ids[:, -1] == tok.eos_token_id).all()


def test_collate_max_length_drops_prompt_start_keeps_completion(tok):
    batch = collate([{"prompt": "0123456789", "completion": "ab"}], tok, max_length=6)
    assert batch["input_ids"][0].tolist() == tok.encode("789ab") + [tok.eos_token_id]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX] * 3 + tok.encode("ab") + [tok.eos_token_id]
    with pytest.raises(ValueError, match="max_length"):
        collate([{"prompt": "p", "completion": "abcdef"}], tok, max_length=4)
    # a completion (with eos) of exactly max_length tokens fits: the whole prompt goes
    batch = collate([{"prompt": "p", "completion": "abc"}], tok, max_length=4)
    assert batch["input_ids"][0].tolist() == tok.encode("abc") + [tok.eos_token_id]


def test_collate_refuses_no_examples_and_a_tokenizer_without_eos(tok):
    with pytest.raises(ValueError, match="at least one example"):
        collate([], tok)
    tok.eos_token_id = None
    with pytest.raises(ValueError, match="the tokenizer has no eos token"):
        collate([{"prompt": "a", "completion": "b"}], tok)


def test_hf_loss_sees_only_completion_tokens(tok):
    """With these labels a causal LM's loss is the mean over completion + eos targets only."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         head_dim=16)).eval()
    batch = collate([{"prompt": "abc", "completion": "12"}, {"prompt": "a", "completion": "9"}], tok)
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    assert keep.sum() == 3 + 2  # "12"+eos and "9"+eos
    manual = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, manual)


def test_collate_packed_puts_the_batch_in_one_row_with_restarting_positions(tok):
    examples = [{"prompt": "ab", "completion": "xyz"}, {"prompt": "", "completion": "q"},
                {"prompt": "abcdef", "completion": "12"}]
    packed = collate_packed(examples, tok)
    assert set(packed) == {"input_ids", "labels", "position_ids"}  # no attention mask: positions split sequences
    padded = collate(examples, tok)
    rows = [r[m.bool()].tolist() for r, m in zip(padded["input_ids"], padded["attention_mask"])]
    assert packed["input_ids"].tolist() == [sum(rows, [])]
    assert packed["position_ids"].tolist() == [sum((list(range(len(r))) for r in rows), [])]
    # each example's labels as collate's, with its first one masked: no loss across an example boundary
    # (the prompt-less second example would otherwise be scored on predicting "q" from the first's eos)
    row_labels = [r[m.bool()].tolist() for r, m in zip(padded["labels"], padded["attention_mask"])]
    assert packed["labels"].tolist() == [sum(([IGNORE_INDEX] + r[1:] for r in row_labels), [])]
    assert packed["labels"][0, 6].item() == IGNORE_INDEX and row_labels[1][0] == tok.encode("q")[0]


def test_collate_prompts_left_pads(tok):
    batch = collate_prompts(["abc", "a"], tok)
    assert batch["input_ids"][1].tolist() == [tok.pad_token_id] * 2 + tok.encode("a")
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_collate_prompts_refuses_an_empty_prompt(tok):
    with pytest.raises(ValueError, match="every prompt needs at least one token"):
        collate_prompts(["abc", ""], tok)


def test_a_tokenizer_without_a_pad_token_pads_with_eos(tok):
    tok.pad_token_id = None  # as Qwen3's and Llama's tokenizers may come
    assert collate_prompts(["abc", "a"], tok)["input_ids"][1].tolist() == [tok.eos_token_id] * 2 + tok.encode("a")
    batch = collate([{"prompt": "ab", "completion": "c"}, {"prompt": "a", "completion": "c"}], tok)
    assert batch["input_ids"][1, 0].item() == tok.eos_token_id and batch["labels"][1, 0].item() == IGNORE_INDEX


def test_batches_cover_every_example_each_epoch():
    examples = [{"prompt": str(i), "completion": "x"} for i in range(12)]
    stream = batches(examples, 4, seed=0)
    epoch = [next(stream) for _ in range(3)]
    assert all(len(b) == 4 for b in epoch)
    assert sorted(ex["prompt"] for b in epoch for ex in b) == sorted(ex["prompt"] for ex in examples)
    next_epoch = [next(stream) for _ in range(3)]  # reshuffled: the same examples in another order
    assert sorted(ex["prompt"] for b in next_epoch for ex in b) == sorted(ex["prompt"] for ex in examples)
    assert [ex["prompt"] for b in next_epoch for ex in b] != [ex["prompt"] for b in epoch for ex in b]


def test_batches_are_always_full_and_a_small_set_is_one_batch():
    examples = [{"prompt": str(i), "completion": "x"} for i in range(10)]
    stream = batches(examples, 4, seed=0)  # 10 = 4 + 4 + 2: the short remainder of each epoch is dropped
    assert [len(next(stream)) for _ in range(7)] == [4] * 7
    small = batches(examples[:3], 4, seed=0)
    assert [sorted(ex["prompt"] for ex in next(small)) for _ in range(2)] == [["0", "1", "2"]] * 2
    with pytest.raises(ValueError, match="batch_size must be positive"):
        next(batches(examples, 0))


def _write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_reads_pairs_and_skips_blank_lines(tmp_path):
    rows = [{"prompt": "2+2=", "completion": "4"}, {"prompt": "é?", "completion": "ü", "extra": 1}]
    path = _write(tmp_path, [json.dumps(rows[0]), "", "   ", json.dumps(rows[1])])
    assert load_jsonl(path) == [rows[0], {"prompt": "é?", "completion": "ü"}]


@pytest.mark.parametrize("bad_line, problem", [
    ('{"prompt": "a", "completion": ', "not valid JSON (Expecting value at column 31)"),
    ('["a", "b"]', "JSON object"),
    ('{"prompt": "a"}', "missing key 'completion'"),
    ('{"completion": "a"}', "missing key 'prompt'"),
    ('{"prompt": 3, "completion": "a"}', "'prompt' must be a string"),
    ('{"prompt": "a", "completion": ""}', "'completion' is empty"),
])
def test_load_jsonl_error_names_file_and_line(tmp_path, bad_line, problem):
    good = json.dumps({"prompt": "a", "completion": "b"})
    path = _write(tmp_path, [good, "", bad_line, good], name="my_data.jsonl")
    with pytest.raises(ValueError) as info:
        load_jsonl(path)
    message = str(info.value)
    assert "my_data.jsonl" in message
    assert "line 3" in message  # 1-based, blank line 2 counted
    assert problem in message


def test_load_jsonl_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="no examples"):
        load_jsonl(_write(tmp_path, ["", ""]))
