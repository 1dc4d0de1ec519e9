"""Dataset formats and their loss masks, local file layouts, and the errors bad data gets."""

import json

import pytest
from conftest import word_tokenizer
from datasets import Dataset

from hf_distill.arguments import DataArguments
from hf_distill.data import detect_format, load_raw_dataset, prepare_datasets, tokenize_dataset

IDS = {f"w{i}": i + 6 for i in range(58)}


def tokenize(rows, tokenizer, fmt="auto", **kwargs):
    args = DataArguments(dataset_name="unused", **kwargs)
    dataset = Dataset.from_list(rows)
    return tokenize_dataset(dataset, tokenizer, detect_format(dataset, fmt, "train"), args, "train")


def test_text_format_trains_on_every_token(tokenizer):
    out = tokenize([{"text": "w1 w2 w3"}], tokenizer)[0]
    assert out["input_ids"] == [IDS["w1"], IDS["w2"], IDS["w3"], 2]
    assert out["labels"] == out["input_ids"]


def test_prompt_completion_masks_the_prompt(tokenizer):
    out = tokenize([{"prompt": "w1 w2", "completion": "w3 w4"}], tokenizer)[0]
    assert out["input_ids"] == [IDS["w1"], IDS["w2"], IDS["w3"], IDS["w4"], 2]
    assert out["labels"] == [-100, -100, IDS["w3"], IDS["w4"], 2]


MESSAGES = [
    {"role": "user", "content": "w1 w2"},
    {"role": "assistant", "content": "w3"},
    {"role": "user", "content": "w4"},
    {"role": "assistant", "content": "w5 w6"},
]


def test_messages_train_on_assistant_turns_only(tokenizer):
    out = tokenize([{"messages": MESSAGES}], tokenizer)[0]
    user, asst = 4, 5
    assert out["input_ids"] == [
        user,
        IDS["w1"],
        IDS["w2"],
        asst,
        IDS["w3"],
        2,
        user,
        IDS["w4"],
        asst,
        IDS["w5"],
        IDS["w6"],
        2,
    ]
    m = -100
    assert out["labels"] == [m, m, m, m, IDS["w3"], 2, m, m, m, IDS["w5"], IDS["w6"], 2]


def test_template_without_generation_markers_gives_the_same_mask():
    plain = word_tokenizer(
        chat_template=word_tokenizer().chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    )
    assert tokenize([{"messages": MESSAGES}], plain)[0] == tokenize([{"messages": MESSAGES}], word_tokenizer())[0]


def test_truncation_is_counted_not_an_error(tokenizer, caplog):
    caplog.set_level("WARNING", logger="hf_distill")
    rows = [{"text": " ".join(f"w{i}" for i in range(20))}, {"text": "w1 w2"}]
    out = tokenize(rows, tokenizer, max_length=8)
    assert [len(r["input_ids"]) for r in out] == [8, 3]
    assert "1 of 2 examples truncated to max_length=8" in caplog.text


def test_examples_without_targets_are_dropped_and_all_masked_is_an_error(tokenizer, caplog):
    caplog.set_level("WARNING", logger="hf_distill")
    rows = [{"prompt": "w1 w2 w3 w4", "completion": "w5"}, {"prompt": "w1", "completion": "w2 w3"}]
    out = tokenize(rows, tokenizer, max_length=4)
    assert len(out) == 1
    assert "dropped 1 examples with no target token" in caplog.text
    with pytest.raises(ValueError, match="no example with a target token"):
        tokenize(rows[:1], tokenizer, max_length=4)


def test_missing_columns_name_found_and_expected(tokenizer):
    with pytest.raises(
        ValueError,
        match=r"has columns \['content', 'title'\]; expected \['text'\] or \['prompt', 'completion'\] or "
        r"\['messages'\]",
    ):
        tokenize([{"title": "a", "content": "b"}], tokenizer)
    with pytest.raises(
        ValueError, match=r"dataset_format='prompt_completion' needs columns \['prompt', 'completion'\]"
    ):
        tokenize([{"text": "w1"}], tokenizer, fmt="prompt_completion")


def test_non_text_values_are_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="cannot be read as 'text'"):
        tokenize([{"text": 3}], tokenizer)


def test_local_folder_with_split_files(tmp_path, tokenizer):
    for split, n in (("train", 5), ("eval", 2)):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"prompt": f"w{i}", "completion": f"w{i + 1} w{i + 2}"}) + "\n")
    args = DataArguments(dataset_name=str(tmp_path), dataset_eval_split="eval")
    assert set(load_raw_dataset(args)) == {"train", "eval"}
    train, evaluation = prepare_datasets(args, tokenizer)
    assert (len(train), len(evaluation)) == (5, 2)
    with pytest.raises(ValueError, match="dataset_eval_split='test' is not a split"):
        prepare_datasets(DataArguments(dataset_name=str(tmp_path), dataset_eval_split="test"), tokenizer)


def test_single_file_and_missing_path(tmp_path, tokenizer):
    path = tmp_path / "data.csv"
    path.write_text("text\nw1 w2\nw3 w4\n")
    train, evaluation = prepare_datasets(DataArguments(dataset_name=str(path)), tokenizer)
    assert len(train) == 2 and evaluation is None
    with pytest.raises(ValueError, match="no such file or folder"):
        load_raw_dataset(DataArguments(dataset_name=str(tmp_path / "nope.jsonl")))
