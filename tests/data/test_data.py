"""Dataset formats and their loss masks, local file layouts, and the errors bad data gets."""

import json
import shutil

import pytest
from datasets import Dataset
from testing_utils import word_tokenizer

from hf_distill.arguments.script_arguments import DataArguments
from hf_distill.commands.recipe import parse_recipe
from hf_distill.data.datasets import detect_format, load_raw_dataset, prepare_datasets, tokenize_dataset

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
        match=r"^dataset in no known format \(split 'train'\): its columns are \['content', 'title'\]; expected "
        r"\['text'\] or \['prompt', 'completion'\] or \['messages'\] or \['prompt'\]; rename its columns, or set "
        r"dataset_format$",
    ):
        tokenize([{"title": "a", "content": "b"}], tokenizer)
    with pytest.raises(
        ValueError,
        match=r"^dataset lacks the columns of its format \(dataset_format='prompt_completion', split 'train'\): it "
        r"needs columns \['prompt', 'completion'\], the split has \['text'\]; rename its columns, or set "
        r"dataset_format to the format the data is in \(or auto\)$",
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
    with pytest.raises(ValueError, match=r"^no such split \(dataset_eval_split='test'\): '.*' has the splits \["):
        prepare_datasets(DataArguments(dataset_name=str(tmp_path), dataset_eval_split="test"), tokenizer)


def test_single_file_and_missing_path(tmp_path, tokenizer):
    path = tmp_path / "data.csv"
    path.write_text("text\nw1 w2\nw3 w4\n")
    train, evaluation = prepare_datasets(DataArguments(dataset_name=str(path)), tokenizer)
    assert len(train) == 2 and evaluation is None
    with pytest.raises(ValueError, match="no such file or folder"):
        load_raw_dataset(DataArguments(dataset_name=str(tmp_path / "nope.jsonl")))


def recipe_datasets(recipe, tokenizer, *overrides):
    """Train and eval datasets as `hf-distill train RECIPE --key value ...` prepares them."""
    _, data_args, _ = parse_recipe(recipe, list(overrides))
    return prepare_datasets(data_args, tokenizer)


def rows(dataset):
    return dataset.to_list() if dataset is not None else None


def test_parquet_split_files_through_a_recipe(workspace, tokenizer):
    tmp_path, recipe = workspace
    folder = tmp_path / "parquet"
    folder.mkdir()
    for split in ("train", "eval"):
        Dataset.from_json(str(tmp_path / "data" / f"{split}.jsonl")).to_parquet(str(folder / f"{split}.parquet"))
    from_jsonl = recipe_datasets(recipe, tokenizer)
    from_parquet = recipe_datasets(recipe, tokenizer, "--dataset_name", str(folder))
    assert (len(from_parquet[0]), len(from_parquet[1])) == (32, 8)
    assert rows(from_parquet[0]) == rows(from_jsonl[0]) and rows(from_parquet[1]) == rows(from_jsonl[1])


TEXT_LINES = ["w1 w2 w3", "", "w4 w5", "w6"]


@pytest.mark.parametrize("layout", ["file", "folder"])
def test_txt_files_are_the_text_format_one_example_per_line(workspace, tokenizer, layout):
    tmp_path, recipe = workspace
    folder = tmp_path / "txt"
    folder.mkdir()
    for split in ("train", "eval"):
        (folder / f"{split}.txt").write_text("\n".join(TEXT_LINES) + "\n")
    if layout == "file":
        train, evaluation = recipe_datasets(
            recipe, tokenizer, "--dataset_name", str(folder / "train.txt"), "--dataset_eval_split", "train"
        )
    else:
        train, evaluation = recipe_datasets(recipe, tokenizer, "--dataset_name", str(folder))
    # The empty line is an example without a target (only EOS, which is never predicted): dropped, ids kept.
    expected = [
        {"id": "0", "input_ids": [IDS["w1"], IDS["w2"], IDS["w3"], 2], "labels": [IDS["w1"], IDS["w2"], IDS["w3"], 2]},
        {"id": "2", "input_ids": [IDS["w4"], IDS["w5"], 2], "labels": [IDS["w4"], IDS["w5"], 2]},
        {"id": "3", "input_ids": [IDS["w6"], 2], "labels": [IDS["w6"], 2]},
    ]
    assert rows(train) == expected and rows(evaluation) == expected


@pytest.mark.parametrize("fmt", ["messages", "text"])
def test_two_tokenizing_processes_give_the_same_rows_as_one(workspace, tokenizer, fmt):
    tmp_path, recipe = workspace
    if fmt == "text":  # no `id` column: ids come from the example's index, which each process must offset
        source = tmp_path / "text"
        source.mkdir()
        for split in ("train", "eval"):
            lines = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(i % 5)) for i in range(31)]
            (source / f"{split}.txt").write_text("\n".join(lines) + "\n")
    else:
        source = tmp_path / "data"
    # One copy per run: a second run over the same files would load the first one's results from the datasets cache.
    results = {}
    for num_proc in (1, 2):
        copy = shutil.copytree(source, tmp_path / f"copy-{num_proc}")
        overrides = ["--dataset_name", str(copy), "--dataset_num_proc", str(num_proc)]
        results[num_proc] = recipe_datasets(recipe, tokenizer, *overrides)
    train, evaluation = results[2]
    # The rows really come from two processes: each wrote its own shard of the result.
    assert any(f["filename"].endswith("_00001_of_00002.arrow") for f in train.cache_files)
    assert rows(train) == rows(results[1][0]) and rows(evaluation) == rows(results[1][1])
    if fmt == "text":  # every fifth line is empty, so dropped
        assert train["id"] == [str(i) for i in range(31) if i % 5]
    else:
        assert train["id"] == [f"train-{i}" for i in range(32)]
