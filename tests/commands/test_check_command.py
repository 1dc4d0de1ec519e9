"""Inputs refused before any compute, each with its exact one-line message (docs/errors.md lists the same rows):
step intervals, `report_to`, `output_dir`, data files, teacher cache folders, `top_k`; and `hf-distill check`, which
runs the checks `hf-distill train` runs before it loads weights. The `no_weights` fixture fails a test that loads any
model weights before the error."""

import importlib.util
import json
import os
import shutil

import pytest
from datasets import load_from_disk
from testing_utils import build, error_line, refuse_weights, tiny_llama

import hf_distill.commands.check
import hf_distill.data.raw_dataset
from hf_distill.cli import main

REBUILD = "delete the folder and rebuild it with hf-distill cache-teacher"


def test_a_fraction_of_the_run_is_a_valid_interval(workspace, capsys):
    _, recipe = workspace
    main(["check", recipe, "--save_strategy", "steps", "--save_steps", "0.5", "--eval_strategy", "steps"])
    assert capsys.readouterr().out.strip() == f"{recipe}: ok"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_report_to_an_integration_that_is_not_installed(workspace, capsys, no_weights):  # noqa: F811
    _, recipe = workspace
    text = open(recipe).read().replace("report_to: []", "report_to: [tensorboard, wandb]")
    with open(recipe, "w") as f:
        f.write(text)
    assert error_line(capsys, ["train", recipe]) == (
        "hf-distill: error: invalid report_to (report_to=['tensorboard', 'wandb']): 'wandb' is not installed (the run "
        "would stop when the trainer is built); pip install wandb, or remove 'wandb' from report_to"
    )


def test_evaluation_without_an_eval_split(workspace, capsys, no_weights):  # noqa: F811
    _, recipe = workspace
    text = open(recipe).read().replace("dataset_eval_split: eval\n", "")
    with open(recipe, "w") as f:
        f.write(text)
    for command in ("train", "check"):
        assert error_line(capsys, [command, recipe, "--eval_strategy", "steps", "--eval_steps", "2"]) == (
            "hf-distill: error: evaluation without an eval split (eval_strategy='steps'): dataset_eval_split is not "
            "set, so there is nothing to evaluate on (Trainer would stop when built); set dataset_eval_split, or "
            "eval_strategy: 'no'"
        )


def test_output_dir_that_is_a_file_or_not_writable(workspace, capsys, monkeypatch, no_weights):  # noqa: F811
    tmp_path, recipe = workspace
    (tmp_path / "a_file").write_text("x")
    assert error_line(capsys, ["train", recipe, "--output_dir", str(tmp_path / "a_file")]) == (
        f"hf-distill: error: output_dir is a file (output_dir='{tmp_path / 'a_file'}'): the run writes a folder "
        "there; set another output_dir"
    )
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:
        # Root writes anywhere; stand in for the user the permissions are for.
        access = os.access
        monkeypatch.setattr(
            hf_distill.commands.check.os, "access", lambda path, mode: path != str(read_only) and access(path, mode)
        )
    out = read_only / "out"
    for command in ("train", "check"):
        assert error_line(capsys, [command, recipe, "--output_dir", str(out)]) == (
            f"hf-distill: error: output_dir is not writable (output_dir='{out}'): this user cannot write in it (its "
            f"nearest existing parent '{read_only}'); set an output_dir you can write in, or fix its permissions"
        )


def _data_folder(tmp_path, train_bytes: bytes, name: str = "train.jsonl"):
    """A copy of the workspace data whose train split is the file `name` holding `train_bytes`."""
    folder = tmp_path / "bad_data"
    shutil.copytree(tmp_path / "data", folder)
    os.remove(folder / "train.jsonl")
    (folder / name).write_bytes(train_bytes)
    return folder


def test_data_files_that_cannot_be_read(workspace, capsys, no_weights):  # noqa: F811
    tmp_path, recipe = workspace
    good = (tmp_path / "data" / "train.jsonl").read_bytes().splitlines(keepends=True)
    cases = [
        (b"", "train.jsonl", "empty data file ({path}): it holds no example; fill it, or remove it"),
        (b"".join(good[:2]) + b'{"messages": [}\n' + b"".join(good[2:]), "train.jsonl",
         "broken JSON line ({path}:3): Expecting value; fix or delete that line (one JSON object a line)"),
        (b'[\n  {"text": "w1 w2"},\n  {"text": "w3" "w4"}\n]\n', "train.json",
         "broken JSON ({path}:3): Expecting ',' delimiter; fix the file at that line"),
        (b"not a parquet file", "train.parquet", "bad Parquet file ({path}): Parquet magic bytes not found in footer. "
         "Either the file is corrupted or this is not a parquet file.; write it again, or remove it"),
    ]  # fmt: skip
    for content, name, message in cases:
        folder = _data_folder(tmp_path, content, name)
        os.remove(folder / "eval.jsonl")  # a folder holds files of one type
        for command in ("train", "check"):
            argv = [command, recipe, "--dataset_name", str(folder), "--dataset_eval_split", "train"]
            expected = "hf-distill: error: " + message.format(path=folder / name)
            assert error_line(capsys, argv) == expected, name
        shutil.rmtree(folder)


def test_a_data_file_whose_link_leads_nowhere(workspace, capsys, no_weights):  # noqa: F811
    tmp_path, recipe = workspace
    folder = _data_folder(tmp_path, b"")
    os.remove(folder / "train.jsonl")
    os.symlink(tmp_path / "unmounted" / "train.jsonl", folder / "train.jsonl")
    assert error_line(capsys, ["train", recipe, "--dataset_name", str(folder)]) == (
        f"hf-distill: error: data file cannot be read ({folder / 'train.jsonl'}): No such file or directory; fix its "
        "path"
    )


def test_a_hub_dataset_while_offline(workspace, capsys, no_weights, monkeypatch):  # noqa: F811
    _, recipe = workspace
    monkeypatch.setattr(hf_distill.data.raw_dataset.datasets_config, "HF_HUB_OFFLINE", True)
    assert error_line(capsys, ["train", recipe, "--dataset_name", "some-org/some-dataset"]) == (
        "hf-distill: error: hub dataset unavailable offline (dataset_name='some-org/some-dataset'): HF_HUB_OFFLINE or "
        "HF_DATASETS_OFFLINE is set and the dataset is not in the local cache; unset them to download it once, or "
        "set dataset_name to a local file or folder"
    )


def test_data_without_the_columns_of_its_format(workspace, capsys, no_weights):  # noqa: F811
    _, recipe = workspace
    for command in ("train", "check"):
        assert error_line(capsys, [command, recipe, "--dataset_format", "prompt_completion"]) == (
            "hf-distill: error: dataset lacks the columns of its format (dataset_format='prompt_completion', split "
            "'train'): it needs columns ['prompt', 'completion'], the split has ['id', 'messages']; rename its "
            "columns, or set dataset_format to the format the data is in (or auto)"
        )


def _edit_manifest(cache, **changes):
    path = cache / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del manifest[key]
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


def test_damaged_or_edited_teacher_caches(workspace, capsys, monkeypatch):
    tmp_path, recipe = workspace
    built = tmp_path / "built"
    build(recipe, built, 40)  # 32 examples, 4 shards of 10, 10, 10 and 2
    capsys.readouterr()
    refuse_weights(monkeypatch)  # the teacher was loaded to build the cache; from here on, nothing is
    first_targets = len(load_from_disk(str(built / "shard-00000"))[0]["teacher_tail_logprob"])

    def damaged(damage):
        cache = tmp_path / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        shutil.copytree(built, cache)
        damage(cache)
        return cache

    manifest = tmp_path / "cache" / "manifest.json"
    shard = tmp_path / "cache" / "shard-00002"

    def truncate_shard(cache):
        arrow = next(p for p in (cache / "shard-00002").iterdir() if p.suffix == ".arrow")
        with open(arrow, "r+b") as f:
            f.truncate(os.path.getsize(arrow) // 2)

    cases = [
        (lambda c: (c / "manifest.json").write_text('{"top_k": 40,'), f"teacher cache manifest is not JSON "
         f"({manifest}:1): Expecting property name enclosed in double quotes; {REBUILD}"),
        (lambda c: _edit_manifest(c, top_k=None), f"teacher cache manifest was edited ({manifest}): it lacks top_k; "
         f"{REBUILD}"),
        (lambda c: _edit_manifest(c, num_examples="32"), "teacher cache manifest was edited "
         f"({manifest}): num_examples is '32', a str; {REBUILD}"),
        (lambda c: _edit_manifest(c, num_examples=31), "teacher cache shard does not match its manifest "
         f"({tmp_path / 'cache' / 'shard-00003'}): 2 rows, the manifest says 1; {REBUILD}"),
        (lambda c: _edit_manifest(c, top_k=8), "teacher cache shard does not match its manifest "
         f"({tmp_path / 'cache' / 'shard-00000'}): its first row holds {40 * first_targets} top-k ids for "
         f"{first_targets} target tokens, not top_k=8 each; {REBUILD}"),
        (lambda c: shutil.rmtree(c / "shard-00002"), "teacher cache is incomplete "
         f"(teacher_cache_dir='{tmp_path / 'cache'}'): 1 of 4 shards missing (the first: shard-00002); rerun "
         "hf-distill cache-teacher to finish it"),
        (truncate_shard, f"teacher cache shard cannot be read ({shard}): Expected to be able to read "),
    ]  # fmt: skip
    for damage, message in cases:
        cache = damaged(damage)
        for command in ("train", "check"):
            line = error_line(capsys, [command, recipe, "--teacher_cache_dir", str(cache)])
            assert line.startswith(f"hf-distill: error: {message}"), line
    # An intact cache wider than the student's vocabulary (32 logits: the tokenizer check would come later).
    tiny_llama(seed=1, hidden=32, layers=1, vocab=32).config.save_pretrained(tmp_path / "narrow_student")
    cache = damaged(lambda c: None)
    narrow = ["--teacher_cache_dir", str(cache), "--model_name_or_path", str(tmp_path / "narrow_student")]
    for command in ("train", "check"):
        assert error_line(capsys, [command, recipe, *narrow]) == (
            f"hf-distill: error: teacher cache wider than the student's vocabulary (teacher_cache_dir='{cache}'): it "
            "holds top_k=40 tokens per target, the student has 32; rebuild it with hf-distill cache-teacher --top_k "
            "32 or less"
        )


def test_check_runs_the_checks_train_runs_before_loading_weights(workspace, capsys, no_weights):  # noqa: F811
    tmp_path, recipe = workspace
    # Both passed `hf-distill check` before and stopped `hf-distill train`.
    line = error_line(capsys, ["check", recipe, "--teacher_model_init_kwargs", "{dtype: bfloat16}"])
    assert line == (
        "hf-distill: error: invalid teacher_model_init_kwargs (teacher_model_init_kwargs='{dtype: bfloat16}'): not "
        "valid JSON: Expecting property name enclosed in double quotes at column 2; write it as a JSON object: "
        '{"name": value, ...}'
    )
    assert error_line(capsys, ["check", recipe, "--teacher_model_init_kwargs", '{"dtype": "bf16"}']) == (
        "hf-distill: error: unknown dtype (dtype='bf16'): not a torch dtype; use e.g. 'bfloat16', 'float32' or 'auto'"
    )
    wide = tmp_path / "wide_teacher"
    tiny_llama(seed=2, vocab=200).save_pretrained(wide)
    argv = ["--teacher_model_name_or_path", str(wide), "--tokenizer_name_or_path", str(tmp_path / "teacher")]
    lines = [error_line(capsys, [command, recipe, *argv]) for command in ("train", "check")]
    assert lines[0] == lines[1] and "student vocab size 64 and teacher vocab size 200" in lines[0]
    os.remove(tmp_path / "teacher" / "model.safetensors")
    lines = [error_line(capsys, [command, recipe]) for command in ("train", "check")]
    assert lines[0] == lines[1] and lines[0].startswith("hf-distill: error: no model weights (")
