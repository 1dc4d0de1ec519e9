"""`hf-distill cache-teacher` and training from the cache: contents, equivalence with the online teacher, resume
after a kill, and caches that do not fit the recipe."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import load_from_disk
from safetensors.torch import load_file
from test_trainer import make_args
from testing_utils import (
    TESTS,
    build,
    ensemble_recipe,
    pad_collator,
    tiny_llama,
    variable_length_dataset,
    word_tokenizer,
)
from transformers import AutoModelForCausalLM

import hf_distill.models.loading
from hf_distill import DistillTrainer
from hf_distill.arguments.script_arguments import DataArguments
from hf_distill.cli import main
from hf_distill.data.datasets import layout_cached_teacher, prepare_datasets
from hf_distill.teachers.cache_builder import load_teacher_cache
from hf_distill.teachers.cache_store import MANIFEST

TESTS = TESTS


def train_logs(out_dir):
    state = json.loads((out_dir / "trainer_state.json").read_text())
    return [{k: v for k, v in log.items() if k in ("loss", "ce_loss", "kd_loss")} for log in state["log_history"]]


def test_cache_holds_the_teachers_topk(workspace):
    tmp_path, recipe = workspace
    build(recipe, tmp_path / "cache")
    manifest, rows = load_teacher_cache(str(tmp_path / "cache"))
    assert manifest["top_k"] == 8 and manifest["num_examples"] == 32 and manifest["max_length"] == 1024
    assert manifest["teacher_model_name_or_path"] == [str(tmp_path / "teacher")]
    assert sorted(os.listdir(tmp_path / "cache")) == [MANIFEST, *(f"shard-0000{i}" for i in range(4))]
    assert rows.features["teacher_topk_ids"].feature.dtype == "int32"

    train, _ = prepare_datasets(DataArguments(dataset_name=str(tmp_path / "data")), word_tokenizer())
    teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")
    example, cached = train[5], rows[5]
    assert cached["id"] == example["id"]
    with torch.no_grad():
        log_p = F.log_softmax(teacher(input_ids=torch.tensor([example["input_ids"]])).logits[0, :-1], dim=-1)
    valid = torch.tensor(example["labels"][1:]) != -100
    logprobs, ids = log_p[valid].topk(8, dim=-1)
    assert torch.equal(torch.tensor(cached["teacher_topk_ids"]).view(-1, 8), ids)
    cached_logprobs = torch.tensor(cached["teacher_topk_logprobs"]).view(-1, 8)
    torch.testing.assert_close(cached_logprobs, logprobs, rtol=1e-5, atol=1e-5)
    tail = torch.tensor(cached["teacher_tail_logprob"])
    torch.testing.assert_close(tail.exp() + logprobs.exp().sum(-1), torch.ones(len(ids)), rtol=0, atol=1e-5)


def test_full_vocabulary_cache_trains_like_the_online_teacher(workspace, monkeypatch):
    """top_k = the whole vocabulary (64) makes the renormalised sparse loss the dense one: same logged losses."""
    tmp_path, recipe = workspace
    build(recipe, tmp_path / "cache", 64)
    main(["train", recipe, "--output_dir", str(tmp_path / "online"), "--max_steps", "3", "--logging_steps", "1"])

    def refuse(*args, **kwargs):
        raise AssertionError("a teacher was loaded")

    monkeypatch.setattr(hf_distill.models.loading, "load_causal_lm", refuse)
    cached = ["--output_dir", str(tmp_path / "cached"), "--teacher_cache_dir", str(tmp_path / "cache")]
    main(["train", recipe, *cached, "--max_steps", "3", "--logging_steps", "1"])
    online, offline = train_logs(tmp_path / "online"), train_logs(tmp_path / "cached")
    assert [log for log in online if log] and len(online) == len(offline)
    for a, b in zip(online, offline):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5), key


@pytest.mark.parametrize("mode", ["renormalized", "tail_bucket"])
def test_train_from_a_topk_cache(workspace, mode):
    tmp_path, recipe = workspace
    build(recipe, tmp_path / "cache", 4)
    main(["train", recipe, "--teacher_cache_dir", str(tmp_path / "cache"), "--teacher_cache_mode", mode])
    logs = train_logs(tmp_path / "out")
    assert any("kd_loss" in log and log["kd_loss"] > 0 for log in logs)
    assert str(tmp_path / "teacher") in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("mode", ["renormalized", "tail_bucket"])
def test_cached_training_is_the_same_chunked_and_dense(workspace, mode):
    """The cached top-k through the fused chunked loss (chunks of 5 target tokens) and through full logits."""
    tmp_path, recipe = workspace
    build(recipe, tmp_path / "cache", 4)
    common = ["--teacher_cache_dir", str(tmp_path / "cache"), "--teacher_cache_mode", mode, "--max_steps", "3"]
    for name, chunk in (("chunked", "5"), ("dense", "0")):
        main(["train", recipe, *common, "--loss_chunk_size", chunk, "--output_dir", str(tmp_path / name)])
    chunked = load_file(tmp_path / "chunked" / "model.safetensors")
    dense = load_file(tmp_path / "dense" / "model.safetensors")
    assert chunked.keys() == dense.keys()
    assert any("kd_loss" in log and log["kd_loss"] > 0 for log in train_logs(tmp_path / "chunked"))
    for key in chunked:
        torch.testing.assert_close(chunked[key], dense[key], rtol=1e-5, atol=1e-5)


def test_killed_build_resumes_to_the_same_cache(workspace):
    tmp_path, recipe = workspace
    build(recipe, tmp_path / "whole")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    script = os.path.join(TESTS, "scripts", "cache_fault_run.py")
    run = subprocess.run([sys.executable, script, recipe, str(tmp_path / "resumed"), "8", "10"], env=env)
    assert run.returncode == -signal.SIGKILL
    assert sorted(os.listdir(tmp_path / "resumed")) == [MANIFEST, "shard-00000", "shard-00001.tmp"]
    first = load_from_disk(str(tmp_path / "resumed" / "shard-00000")).to_dict()
    build(recipe, tmp_path / "resumed")
    assert sorted(os.listdir(tmp_path / "resumed")) == sorted(os.listdir(tmp_path / "whole"))
    assert load_from_disk(str(tmp_path / "resumed" / "shard-00000")).to_dict() == first
    for name in sorted(os.listdir(tmp_path / "whole")):
        if name == MANIFEST:
            assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "whole" / name).read_text()
        else:
            assert load_from_disk(str(tmp_path / "resumed" / name)).to_dict() == (
                load_from_disk(str(tmp_path / "whole" / name)).to_dict()
            ), name


def error_line(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("mode", ["mean_probs", "mean_logprobs"])
def test_ensemble_cache_holds_the_combined_distribution(workspace, mode, capsys):
    tmp_path, recipe = workspace
    recipe, second = ensemble_recipe(tmp_path, recipe, mode)
    build(recipe, tmp_path / "cache")
    manifest, rows = load_teacher_cache(str(tmp_path / "cache"))
    assert manifest["teacher_model_name_or_path"] == [str(tmp_path / "teacher"), str(second)]
    assert manifest["teacher_ensemble"] == mode and manifest["teacher_weights"] == [0.75, 0.25]

    train, _ = prepare_datasets(DataArguments(dataset_name=str(tmp_path / "data")), word_tokenizer())
    members = [AutoModelForCausalLM.from_pretrained(path) for path in (tmp_path / "teacher", second)]
    example = train[3]
    with torch.no_grad():
        log_p = [F.log_softmax(m(input_ids=torch.tensor([example["input_ids"]])).logits[0, :-1], -1) for m in members]
    if mode == "mean_probs":
        combined = (0.75 * log_p[0].exp() + 0.25 * log_p[1].exp()).log()
    else:
        combined = F.log_softmax(0.75 * log_p[0] + 0.25 * log_p[1], dim=-1)
    valid = torch.tensor(example["labels"][1:]) != -100
    logprobs, ids = combined[valid].topk(8, dim=-1)
    assert torch.equal(torch.tensor(rows[3]["teacher_topk_ids"]).view(-1, 8), ids)
    cached_logprobs = torch.tensor(rows[3]["teacher_topk_logprobs"]).view(-1, 8)
    torch.testing.assert_close(cached_logprobs, logprobs, rtol=1e-5, atol=1e-5)

    main(["train", recipe, "--teacher_cache_dir", str(tmp_path / "cache"), "--max_steps", "2"])
    assert any("kd_loss" in log for log in train_logs(tmp_path / "out"))
    line = error_line(
        capsys,
        ["train", recipe, "--teacher_cache_dir", str(tmp_path / "cache"), "--teacher_weights", "1", "1"]
        + ["--output_dir", str(tmp_path / "other-weights")],  # a new run: the cache, not the folder, is refused
    )
    assert "its teacher_weights is [0.75, 0.25], the recipe's is [0.5, 0.5]" in line


def test_build_reports_its_size_on_disk(workspace, capsys):
    tmp_path, recipe = workspace
    build(recipe, tmp_path / "cache", 8)
    out = capsys.readouterr().out
    _, rows = load_teacher_cache(str(tmp_path / "cache"))
    tokens = sum(len(tail) for tail in rows["teacher_tail_logprob"])
    size = sum(f.stat().st_size for f in (tmp_path / "cache").rglob("*") if f.is_file())
    assert "process 0 of 1: shards [0, 1, 2, 3], 4 written" in out
    assert f"32 examples, {tokens} target tokens, top_k=8, {size} bytes on disk" in out
    per_token = float(out.split("(")[-1].split(" bytes per target token")[0])
    # 8 ids (int32) and 8 log-probabilities (float32) per token, plus its tail: at least 68 bytes.
    assert per_token == pytest.approx(size / tokens, abs=0.5) and per_token >= 68


def test_caches_that_do_not_fit_are_refused(workspace, capsys):
    tmp_path, recipe = workspace
    cache = str(tmp_path / "cache")
    build(recipe, cache, 4)
    train = ["train", recipe, "--teacher_cache_dir", cache]
    line = error_line(capsys, [*train, "--max_length", "8"])
    assert line == (
        f"hf-distill: error: teacher cache built for another recipe (teacher_cache_dir={cache!r}): its max_length is "
        "1024, the recipe's is 8; rebuild it with hf-distill cache-teacher (into another folder, or after deleting "
        "this one)"
    )
    line = error_line(capsys, [*train, "--max_train_samples", "16"])
    assert "teacher cache built for another recipe" in line and "its dataset_fingerprint is" in line
    shutil.copytree(tmp_path / "teacher", tmp_path / "other")
    line = error_line(capsys, [*train, "--teacher_model_name_or_path", str(tmp_path / "other")])
    assert "teacher cache built for another recipe" in line and "its teacher_model_name_or_path is" in line
    line = error_line(capsys, ["cache-teacher", recipe, "--output_dir", cache, "--top_k", "5"])
    assert line == (
        f"hf-distill: error: cache started with other settings (--output_dir {cache}): it was started with --top_k 4, "
        "not 5; rerun with --top_k 4, or build into another folder"
    )
    os.rename(os.path.join(cache, "shard-00001"), os.path.join(cache, "gone"))
    line = error_line(capsys, train)
    assert line == (
        f"hf-distill: error: teacher cache is incomplete (teacher_cache_dir={cache!r}): 1 of 4 shards missing (the "
        "first: shard-00001); rerun hf-distill cache-teacher to finish it"
    )
    line = error_line(capsys, [*train[:3], str(tmp_path / "nowhere")])
    assert line == (
        f"hf-distill: error: no teacher cache (teacher_cache_dir={str(tmp_path / 'nowhere')!r}): it has no "
        "manifest.json; build it with hf-distill cache-teacher (or fix teacher_cache_dir)"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--top_k", "0"], "invalid --top_k (--top_k=0): must be >= 1; pass --top_k 1 or more"),
        (
            ["--top_k", "4", "--shard_size", "0"],
            "invalid --shard_size (--shard_size=0): must be >= 1; pass --shard_size 1 or more",
        ),
        (["--top_k", "4", "--alpha", "1.0"], "cache-teacher needs a teacher (alpha=1.0, teacher_model_name_or_path="),
        # The test tokenizer has 64 tokens.
        (
            ["--top_k", "65"],
            "invalid --top_k (--top_k=65): the tokenizer has 64 tokens, so a token has at most 64 alternatives; pass "
            "--top_k 64 or less",
        ),
    ],
)
def test_cache_teacher_bad_arguments(workspace, capsys, monkeypatch, flags, message):
    tmp_path, recipe = workspace

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(hf_distill.models.loading, "load_causal_lm", refuse)
    line = error_line(capsys, ["cache-teacher", recipe, "--output_dir", str(tmp_path / "cache"), *flags])
    assert line.startswith(f"hf-distill: error: {message}")
    assert not (tmp_path / "cache").exists()


def test_cache_dir_without_cached_batches_is_an_error(tmp_path):
    trainer = DistillTrainer(
        model=tiny_llama(seed=1),
        args=make_args(tmp_path, teacher_cache_dir=str(tmp_path / "cache")),
        train_dataset=variable_length_dataset(),
        data_collator=pad_collator,
    )
    assert trainer.teacher_model is None
    with pytest.raises(ValueError, match="but the training batches carry no cached teacher"):
        trainer.train()


def test_collator_lays_the_cache_onto_the_targets():
    """Flat per-example rows (lists, or numpy arrays as the cache's format gives them) land on the target positions
    of the padded batch; an example whose cache holds another number of targets is refused."""
    labels = torch.tensor([[-100, 5, -100, 7, -100], [-100, -100, 9, -100, -100]])
    features = [
        {"teacher_topk_ids": [1, 2, 3, 4], "teacher_topk_logprobs": [-0.1, -0.2, -0.3, -0.4],
         "teacher_tail_logprob": [-5.0, -6.0]},
        {"teacher_topk_ids": np.array([8, 9]), "teacher_topk_logprobs": np.array([-0.5, -0.6]),
         "teacher_tail_logprob": np.array([-7.0])},
    ]  # fmt: skip
    out = layout_cached_teacher(labels, features, ["a", "b"])
    assert out["teacher_topk_ids"].shape == (2, 4, 2)
    assert out["teacher_topk_ids"][0, 0].tolist() == [1, 2] and out["teacher_topk_ids"][0, 2].tolist() == [3, 4]
    assert out["teacher_topk_ids"][1, 1].tolist() == [8, 9]
    torch.testing.assert_close(out["teacher_topk_logprobs"][0, 2], torch.tensor([-0.3, -0.4]))
    assert out["teacher_tail_logprob"].tolist() == [[-5.0, 0.0, -6.0, 0.0], [0.0, -7.0, 0.0, 0.0]]
    features[1]["teacher_tail_logprob"] = np.array([-7.0, -8.0])
    with pytest.raises(ValueError, match="example b: the teacher cache holds 2 target tokens but its labels have 1"):
        layout_cached_teacher(labels, features, ["a", "b"])
