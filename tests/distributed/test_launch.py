"""The shipped CPU config through `accelerate launch`: real 2-process runs (training, teacher cache)."""

import json
import os
import subprocess
import sys

import pytest
from datasets import load_from_disk
from testing_utils import VOCAB
from transformers import AutoModelForCausalLM

from hf_distill.cli import main

pytestmark = pytest.mark.distributed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launch(*args: str, config: str = "cpu_2proc.yaml", options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`accelerate launch` with a shipped config (by default the 2-process CPU one) and launch `options`; fails the
    test unless every process exited 0."""
    config = os.path.join(ROOT, "accelerate_configs", config)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, *options, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_accelerate_launch_cpu_config_trains_with_two_processes(workspace):
    tmp_path, recipe = workspace
    launch(os.path.join(ROOT, "train.py"), recipe, "--max_steps", "2", "--per_device_train_batch_size", "4")
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    # 32 training examples, 2 steps of 4 per process: 16 examples (epoch 0.5) with 2 processes, 8 with one.
    assert state["global_step"] == 2
    assert state["epoch"] == pytest.approx(0.5)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_deepspeed_zero3_config_trains_on_cpu_with_two_processes(workspace):
    """The shipped ZeRO-3 config as a user runs it on CPU, with the two settings that differ from its 8 GPUs: the
    number of processes, and `bf16` in the recipe to match the config's mixed precision (else Transformers stops on the
    mismatch). DeepSpeed finds no GPU and runs on its CPU accelerator, over a group Accelerate forms for it."""
    tmp_path, recipe = workspace
    result = launch(
        os.path.join(ROOT, "train.py"), recipe, "--max_steps", "2", "--bf16", "true",
        config="deepspeed_zero3.yaml", options=("--num_processes", "2"),
    )  # fmt: skip
    # Said when the trainer is built under DistributedType.DEEPSPEED, by rank 0 only.
    assert result.stderr.count("is not enforced under DeepSpeed") == 1, result.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    # 32 training examples, 2 steps of 4 per process: epoch 0.5 with 2 processes, 0.25 with one.
    assert state["global_step"] == 2 and state["epoch"] == pytest.approx(0.5)
    # zero3_save_16bit_model: the final save gathers the partitions into one loadable model.
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert student.lm_head.weight.shape == (VOCAB, 32)


def test_accelerate_launch_cpu_config_synchronises_the_two_replicas(workspace):
    """The recipe's trainer under the same launch, asserting inside the run (launch_train.py, on both ranks) a
    2-process group and identical student weights on both ranks after training."""
    tmp_path, recipe = workspace
    result = launch(os.path.join(ROOT, "tests", "scripts", "launch_train.py"), recipe, "--max_steps", "2")
    # Printed by each rank only after its checks passed.
    for rank in (0, 1):
        assert f"rank {rank} of 2: 2 steps, replicas identical" in result.stdout, result.stdout[-3000:]


def test_train_command_leaves_the_process_group(workspace):
    """The command ends a launched run as Accelerate's end_training does: without it, gloo's threads were torn down at
    interpreter exit and a finished run sometimes exited -6 ("terminate called without an active exception")."""
    _, recipe = workspace
    result = launch(os.path.join(ROOT, "tests", "scripts", "launch_cli.py"), recipe, "--max_steps", "1")
    for rank in (0, 1):
        assert f"rank {rank}: left a 2-process group, no DDP wrapper alive" in result.stdout, result.stdout[-3000:]


def test_cache_teacher_with_two_processes_equals_one(workspace):
    """Each process writes its own shards (0, 2 and 1, 3); together they are the cache one process builds."""
    tmp_path, recipe = workspace
    cache = ["--top_k", "8", "--shard_size", "10"]
    main(["cache-teacher", recipe, "--output_dir", str(tmp_path / "one"), *cache])
    result = launch("-m", "hf_distill.cli", "cache-teacher", recipe, "--output_dir", str(tmp_path / "two"), *cache)
    assert "process 0 of 2: shards [0, 2], 2 written" in result.stdout
    assert "process 1 of 2: shards [1, 3], 2 written" in result.stdout
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))
    assert (tmp_path / "two" / "manifest.json").read_text() == (tmp_path / "one" / "manifest.json").read_text()
    for name in sorted(os.listdir(tmp_path / "one")):
        if name.startswith("shard-"):
            two = load_from_disk(str(tmp_path / "two" / name)).to_dict()
            assert two == load_from_disk(str(tmp_path / "one" / name)).to_dict(), name


@pytest.mark.parametrize("fault", ["output_dir", "data", "evaluate split"])
def test_a_user_error_is_printed_once_and_every_rank_exits_2(workspace, fault):
    """Both ranks hit the bad `output_dir` once their process group exists; a broken data line or a missing split is
    found by the main process alone, while it reads the data first and the other waits (`hf_distill.
    main_process_first`; Accelerate's own would leave the other waiting until the launcher kills it). Either way the
    main process prints the line, the other exits with the same code without a word. The launcher then reports the
    failed ranks with its own traceback."""
    tmp_path, recipe = workspace
    command = "evaluate" if fault == "evaluate split" else "train"
    if fault == "evaluate split":
        overrides = ["--split", "nope"]
        expected = "hf-distill: error: no such split (--split='nope'): "
    elif fault == "output_dir":
        (tmp_path / "a_file").write_text("x")
        overrides = ["--output_dir", str(tmp_path / "a_file")]
        expected = (
            f"hf-distill: error: output_dir is a file (output_dir='{tmp_path / 'a_file'}'): the run writes a folder "
            "there; set another output_dir"
        )
    else:
        train = tmp_path / "data" / "train.jsonl"
        train.write_text(train.read_text() + "{not json\n")
        overrides = []
        expected = f"hf-distill: error: broken JSON line ({train}:33)"
    config = os.path.join(ROOT, "accelerate_configs", "cpu_2proc.yaml")
    script = os.path.join(ROOT, "tests", "scripts", "launch_error.py")
    # The launcher stops the other ranks once it sees one fail: it looks every 5 s here, time for rank 1 to exit.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--monitor_interval", "5"]
    result = subprocess.run(
        [*cmd, script, command, recipe, *overrides],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: exit 2 in a process group of 2" in result.stdout, result.stdout + result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("hf-distill")]
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr[-3000:]
    if fault == "output_dir":
        assert lines == [expected]
    # The one traceback is the launcher's (torch elastic's ChildFailedError), not a rank's.
    assert result.stderr.count("Traceback (most recent call last)") == 1, result.stderr[-3000:]
    assert "ChildFailedError" in result.stderr and "hf_distill" not in result.stderr.split("Traceback")[1]
