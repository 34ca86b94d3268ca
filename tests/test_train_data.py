"""`talan train`'s data (talan.train.load_examples): the checks on chat ``messages`` records, each naming the file,
the line and the problem; the completion cut from the chat template's rendering, or the final message's text where
it cannot be cut; a chat file that starts with a blank line; a Parquet file with no rows. (Training on each format is
in test_train.py.)"""

import pytest
from train_helpers import word_level_tokenizer, write_jsonl

from talan.data import CharTokenizer
from talan.train import load_examples

GOOD_CHAT = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}


@pytest.mark.parametrize("messages, problem", [
    ("hi", "'messages' must be a list of at least 2 messages"),
    ([{"role": "assistant", "content": "b"}], "'messages' must be a list of at least 2 messages"),
    ([{"role": "user", "content": "a"}, "b"], "message 1 must be an object with string 'role' and 'content'"),
    ([{"role": "user"}, {"role": "assistant", "content": "b"}], "message 0 must be an object"),
    ([{"role": "user", "content": "a"}, {"role": 2, "content": "b"}], "message 1 must be an object"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     "the last message is the completion and must have role 'assistant', got 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}], "the final assistant message is empty"),
], ids=["not-a-list", "one-message", "not-an-object", "no-content", "role-not-a-string", "last-not-assistant",
        "empty-reply"])
def test_a_malformed_chat_record_is_named_with_its_line(tmp_path, messages, problem):
    data = write_jsonl(tmp_path / "chat.jsonl", [GOOD_CHAT, {"messages": messages}])
    with pytest.raises(ValueError, match=rf"chat\.jsonl, line 2: {problem}"):
        load_examples(data, CharTokenizer())


def _templated_tokenizer(template: str):
    """A HF tokenizer (built in memory) whose chat template is ``template``."""
    tokenizer = word_level_tokenizer(["<unk>", "</s>"], eos_token="</s>")
    tokenizer.chat_template = template
    return tokenizer


USER_TURNS = "{% for m in messages %}{% if m.role == 'user' %}U:{{ m.content }}\n{% endif %}{% endfor %}"


@pytest.mark.parametrize("template, prompt", [
    # the generation prompt is not how the template renders the reply's start: no prefix to cut
    (USER_TURNS + "{% if add_generation_prompt %}A:{% endif %}", "U:hi\nA:"),
    # the template drops assistant turns, so the rendering past the prompt is empty
    (USER_TURNS, "U:hi\n"),
    # the reply rendered between the prompt and the eos, which collate adds itself
    (USER_TURNS + "{% for m in messages %}{% if m.role == 'assistant' %}A:{{ m.content }}</s>\n{% endif %}"
     "{% endfor %}{% if add_generation_prompt %}A:{% endif %}", "U:hi\nA:"),
], ids=["prompt-not-a-prefix", "reply-not-rendered", "reply-rendered"])
def test_the_completion_is_the_rendered_reply_or_else_the_reply_text(tmp_path, template, prompt):
    data = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    assert load_examples(data, _templated_tokenizer(template)) == [{"prompt": prompt, "completion": "yo"}]


def test_a_chat_file_that_starts_with_a_blank_line_is_read_as_chat(tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", ["", "  ", GOOD_CHAT])
    assert load_examples(data, CharTokenizer()) == [{"prompt": "user: a\nassistant: ", "completion": "b"}]


def test_a_parquet_file_with_no_rows_is_refused(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "completion": pa.array([], pa.string())}), path)
    with pytest.raises(ValueError, match=r"empty\.parquet: no examples"):
        load_examples(path, CharTokenizer())
