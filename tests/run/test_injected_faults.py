"""Faults injected at chosen moments of `hf-distill train` and `cache-teacher`.

`kill -9` at moments drawn at random with a fixed seed (during training steps, checkpoint writes, the final
evaluation and save, and a teacher cache build), each followed by a rerun of the same command: the rerun ends at the
weights of an uninterrupted run, and the cache build at the cache of an uninterrupted build.

The moments are those an uninterrupted run reaches (`tests/scripts/fault_runner.py` records them: each write of a
checkpoint or final file, each rename, each training step and evaluation batch, each teacher forward pass of the cache
build), so a kill lands inside a chosen write rather than after a wall-clock delay that a loaded machine shifts.

A full disk during a checkpoint or the final save (the write raises what a full disk raises): one line naming the
folder and the space needed, exit 2, nothing partial marked complete or presented as a finished model, and the rerun
resumes from the previous complete checkpoint.
"""

import csv
import errno
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from conftest import make_workspace
from fault_runner import FULL
from safetensors import SafetensorError
from safetensors.torch import load_file
from test_dropin import lora_student, trained_weights
from test_trainer import assert_same_weights
from testing_utils import SCRIPTS, TESTS, error_line, interrupted, tiny_llama

from hf_distill.run import disk_space, final_model
from hf_distill.run.checkpoints import damage, is_complete, last_complete_checkpoint
from hf_distill.run.final_model import MODEL_CARD, staging_path
from hf_distill.run.lock import LOCK_NAME
from hf_distill.teachers.cache_builder import load_teacher_cache

RUNNER = os.path.join(SCRIPTS, "fault_runner.py")
SEED = 17
# (what the moment is in, how many moments): 10 in all.
LAYOUT = [("step", 3), ("checkpoint", 3), ("final evaluation", 1), ("final save", 1), ("cache build", 2)]
PLACES = [place for place, count in LAYOUT for _ in range(count)]


class Runner:
    """`fault_runner.py`, started once: each job is a forked child, so the imports are paid once."""

    def __init__(self, folder):
        self.folder = folder
        self.jobs = 0
        path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), TESTS) if p)
        env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
        self.process = subprocess.Popen(
            [sys.executable, RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def run(self, argv, fault=None, events=None):
        """`(exit status, log)` of `hf-distill ARGV` with `fault` injected."""
        self.start(argv, fault, events)
        return self.finish()

    def start(self, argv, fault=None, events=None) -> str:
        """Start the job; returns the path of its log."""
        self.jobs += 1
        self.log = os.path.join(self.folder, f"job-{self.jobs}.log")
        job = {"argv": argv, "fault": fault, "log": self.log, "events": str(events) if events else None}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        return self.log

    def finish(self):
        """`(exit status, log)` of the job started last, once it ends."""
        code = int(self.process.stdout.readline())
        with open(self.log) as f:
            return code, f.read()

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def train_argv(recipe, output_dir):
    # Checkpoints at steps 2, 4 and 6, and a final evaluation: every kind of write a run makes.
    return ["train", recipe, "--output_dir", str(output_dir), "--max_steps", "6", "--save_strategy", "steps"] + [
        "--save_steps", "2", "--logging_steps", "1"
    ]  # fmt: skip


def cache_argv(recipe, cache_dir):
    return ["cache-teacher", recipe, "--output_dir", str(cache_dir), "--top_k", "4", "--shard_size", "8"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The runner, the recipe, and what an uninterrupted training run and cache build reach and end with."""
    base = tmp_path_factory.mktemp("kill_moments")
    _, recipe = make_workspace(base)
    runner = Runner(base)
    code, log = runner.run(train_argv(recipe, base / "train"), events=base / "train_events.json")
    assert code == 0, log[-3000:]
    code, log = runner.run(cache_argv(recipe, base / "cache"), events=base / "cache_events.json")
    assert code == 0, log[-3000:]
    events = [event for name in ("train", "cache") for event in json.loads((base / f"{name}_events.json").read_text())]
    yield {
        "runner": runner,
        "base": base,
        "recipe": recipe,
        "events": events,
        "weights": load_file(base / "train" / "model.safetensors"),
        "cache": load_teacher_cache(str(base / "cache")),
    }
    runner.close()


def candidates(events, place):
    """The moments of one kind of place, as `(point, n)` of `fault_runner.py`."""
    phases = {
        "step": ("train", ("step",)),
        "checkpoint": ("checkpoint", ("torch.save", "safetensors", "rename")),
        "final evaluation": ("evaluate", ("evaluate",)),
        "final save": ("final save", ("torch.save", "safetensors", "rename")),
        "cache build": ("cache", ("teacher", "rename")),
    }
    phase, points = phases[place]
    return [(point, n) for point, n, at in events if at == phase and point in points]


def draw(events, layout):
    rng = random.Random(SEED)
    return [(place, moment) for place, count in layout for moment in rng.sample(candidates(events, place), count)]


def kill_and_rerun(uninterrupted, index, place, fault):
    runner, base, recipe = uninterrupted["runner"], uninterrupted["base"], uninterrupted["recipe"]
    out = base / f"{'cache' if place == 'cache build' else 'train'}-{index}"
    argv = cache_argv(recipe, out) if place == "cache build" else train_argv(recipe, out)
    code, log = runner.run(argv, fault=fault)
    assert code == -9, f"{place} {fault}: the kill did not happen (exit {code}): {log[-2000:]}"
    if place != "cache build":
        assert_nothing_looks_finished(out)
    code, log = runner.run(argv)
    assert code == 0, f"{place} {fault}: the rerun failed: {log[-3000:]}"
    if place == "cache build":
        manifest, rows = load_teacher_cache(str(out))
        expected_manifest, expected_rows = uninterrupted["cache"]
        assert manifest == expected_manifest
        assert rows.to_dict() == expected_rows.to_dict(), f"{place} {fault}: the cache differs"
        return
    assert_same_weights(load_file(out / "model.safetensors"), uninterrupted["weights"], atol=1e-6)
    assert (out / MODEL_CARD).is_file() and not os.path.exists(staging_path(str(out)))
    assert not (out / LOCK_NAME).exists()
    # Every checkpoint the rerun left would resume as it is: a later rerun must not skip one as damaged.
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for checkpoint in checkpoints:
        assert is_complete(str(checkpoint)) and damage(str(checkpoint)) is None, (fault, damage(str(checkpoint)))


def assert_nothing_looks_finished(out):
    """What a kill leaves in output_dir: no model card, and a weights file there (if any) whole."""
    assert not (out / MODEL_CARD).exists()
    if (out / "model.safetensors").exists():
        load_file(out / "model.safetensors")


@pytest.mark.parametrize(("index", "place"), list(enumerate(PLACES)))
def test_kill_at_a_random_moment_then_rerun(uninterrupted, index, place):
    drawn_place, (point, n) = draw(uninterrupted["events"], LAYOUT)[index]
    assert drawn_place == place
    kill_and_rerun(uninterrupted, index, place, f"kill:{point}:{n}")


def test_kill_while_the_final_weights_are_written_leaves_no_partial_model(uninterrupted):
    """The final save's weights file cut in half: output_dir holds no partial model file and no card, and the rerun
    saves it whole."""
    [n] = [n for point, n, phase in uninterrupted["events"] if (point, phase) == ("safetensors", "final save")]
    kill_and_rerun(uninterrupted, len(PLACES), "final save", f"kill:safetensors:{n}")


def test_the_moments_cover_every_kind_of_write(uninterrupted):
    """The drawing has something to draw from: each place has moments, of each kind of write it makes."""
    events = uninterrupted["events"]
    assert {point for point, _ in candidates(events, "checkpoint")} == {"torch.save", "safetensors", "rename"}
    assert {point for point, _ in candidates(events, "final save")} == {"torch.save", "safetensors", "rename"}
    assert {point for point, _ in candidates(events, "cache build")} == {"teacher", "rename"}
    assert len(candidates(events, "step")) == 6 and candidates(events, "final evaluation")


def disk_full_line(what, path, then):
    sizes = r"it needs about [0-9.]+ (bytes|KB|MB|GB), [0-9.]+ (bytes|KB|MB|GB) were free"
    return re.compile(
        rf"hf-distill: error: cannot save {re.escape(what)} \({re.escape(str(path))}\): the disk is full \({sizes}\); "
        rf"free some space, then {re.escape(then)}"
    )


def last_error_line(log):
    lines = [line for line in log.splitlines() if line.startswith("hf-distill: error:")]
    assert len(lines) == 1 and "Traceback" not in log, log[-3000:]
    return lines[0]


@pytest.mark.parametrize("point", ["torch.save", "safetensors"])
def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_rerun_resumes(uninterrupted, point):
    """The disk fills while checkpoint-4 is written (its optimizer state, or its weights): exit 2 with one line naming
    the folder and the space it needs; checkpoint-4 is gone, never marked complete; the rerun resumes from
    checkpoint-2 and ends at the uninterrupted weights."""
    runner, base, recipe, events = (uninterrupted[k] for k in ("runner", "base", "recipe", "events"))
    writes = [n for p, n, phase in events if (p, phase) == (point, "checkpoint")]
    n = writes[len(writes) // 3 + (1 if point == "torch.save" else 0)]  # checkpoint-4's optimizer.pt / weights
    out = base / f"full-{point}"
    code, log = runner.run(train_argv(recipe, out), fault=f"enospc:{point}:{n}")
    assert code == 2, log[-3000:]
    then = f"rerun the same command to resume from {out / 'checkpoint-2'}"
    assert disk_full_line("checkpoint-4", out / "checkpoint-4", then).fullmatch(last_error_line(log))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert_nothing_looks_finished(out)
    assert not (out / LOCK_NAME).exists()
    code, log = runner.run(train_argv(recipe, out))
    assert code == 0, log[-3000:]
    assert "resuming from the last checkpoint in output_dir: " + str(out / "checkpoint-2") in log
    assert_same_weights(load_file(out / "model.safetensors"), uninterrupted["weights"], atol=1e-6)


def test_a_full_disk_during_the_final_save_leaves_no_model_and_no_card(uninterrupted):
    """The final weights cannot be written: one line naming output_dir; no weights file, no card, no staging folder
    left; the rerun resumes from checkpoint-6 and saves the model."""
    runner, base, recipe, events = (uninterrupted[k] for k in ("runner", "base", "recipe", "events"))
    [n] = [n for p, n, phase in events if (p, phase) == ("safetensors", "final save")]
    out = base / "full-final"
    code, log = runner.run(train_argv(recipe, out), fault=f"enospc:safetensors:{n}")
    assert code == 2, log[-3000:]
    then = f"rerun the same command to resume from {out / 'checkpoint-6'} and save it again"
    assert disk_full_line("the trained model", out, then).fullmatch(last_error_line(log))
    assert not (out / "model.safetensors").exists() and not (out / MODEL_CARD).exists()
    assert not os.path.exists(staging_path(str(out))) and not (out / LOCK_NAME).exists()
    code, log = runner.run(train_argv(recipe, out))
    assert code == 0, log[-3000:]
    assert_same_weights(load_file(out / "model.safetensors"), uninterrupted["weights"], atol=1e-6)
    assert (out / MODEL_CARD).is_file()


def test_a_failed_final_save_over_a_finished_model_removes_its_card(uninterrupted):
    """A run killed after its card, before it was marked finished, whose rerun's final save fails: the card of the
    model already there is gone (a card would present the folder as the newly saved model), and those weights stay
    whole."""
    runner, base, recipe = (uninterrupted[k] for k in ("runner", "base", "recipe"))
    out = base / "full-over-finished"
    code, log = runner.run(train_argv(recipe, out))
    assert code == 0 and (out / MODEL_CARD).is_file(), log[-3000:]
    interrupted(out)
    # Resumed from checkpoint-6 at max_steps, the rerun trains no step: its first weights written are the final ones.
    code, log = runner.run(train_argv(recipe, out), fault="enospc:safetensors:1")
    assert code == 2, log[-3000:]
    assert "cannot save the trained model" in last_error_line(log)
    assert not (out / MODEL_CARD).exists()
    assert_same_weights(load_file(out / "model.safetensors"), uninterrupted["weights"], atol=0)


def test_a_second_run_during_the_first_runs_final_save_is_refused(uninterrupted, capsys):
    """The lock of output_dir is held until the run ends, not only while it trains: a second run started while the
    first writes its final weights stops at once, and the first finishes undisturbed."""
    runner, base, recipe, events = (uninterrupted[k] for k in ("runner", "base", "recipe", "events"))
    [n] = [n for p, n, phase in events if (p, phase) == ("safetensors", "final save")]
    out = base / "locked"
    log = runner.start(train_argv(recipe, out), fault=f"pause:safetensors:{n}")
    deadline = time.monotonic() + 240
    while not os.path.exists(f"{log}.paused"):
        assert time.monotonic() < deadline, "the first run never reached its final save"
        time.sleep(0.1)
    try:
        line = error_line(capsys, train_argv(recipe, out))
    finally:
        open(f"{log}.resume", "w").close()
    assert line.startswith(
        f"hf-distill: error: output_dir in use (output_dir={str(out)!r}): another run holds it (pid "
    )
    code, log = runner.finish()
    assert code == 0, log[-3000:]
    assert_same_weights(load_file(out / "model.safetensors"), uninterrupted["weights"], atol=1e-6)
    assert not (out / LOCK_NAME).exists()


@pytest.mark.parametrize(
    ("error", "free", "full"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 10**12, True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), 10**12, True),
        (SafetensorError(f"Error while serializing: {FULL}"), 10**12, True),
        # torch.save's zip writer names no cause: less free space than the save needs decides.
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), 1000, True),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), 10**12, False),
        (OSError(errno.EACCES, "Permission denied"), 10**12, False),
    ],
)
def test_which_save_errors_are_a_full_disk(tmp_path, monkeypatch, error, free, full):
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: free)
    cleaned = []
    with pytest.raises(Exception) as info:
        disk_space.raise_if_save_failed(
            SimpleNamespace(num_processes=1, is_main_process=True),
            error,
            what="checkpoint-4",
            path=str(tmp_path / "checkpoint-4"),
            needed=lambda: 2_500_000,
            then=lambda: "rerun",
            cleanup=lambda: cleaned.append(True),
        )
    assert cleaned == [True]
    if full:
        assert type(info.value) is disk_space.DiskFullError
        assert str(info.value) == (
            f"cannot save checkpoint-4 ({tmp_path / 'checkpoint-4'}): the disk is full (it needs about 2.5 MB, "
            f"{'1.0 KB' if free == 1000 else '1000.0 GB'} were free); free some space, then rerun"
        )
    else:
        assert info.value is error


def test_a_save_that_did_not_fail_raises_nothing(tmp_path):
    disk_space.raise_if_save_failed(
        SimpleNamespace(num_processes=1, is_main_process=True),
        None,
        what="checkpoint-4",
        path=str(tmp_path),
        needed=lambda: 1,
        then=lambda: "rerun",
        cleanup=lambda: pytest.fail("nothing to clean"),
    )


def finished_copy(uninterrupted, name):
    """A copy of the uninterrupted run's output_dir, to damage, as a kill between its card and the mark of a finished
    run leaves it (a finished one would not be trained again)."""
    out = uninterrupted["base"] / name
    shutil.copytree(uninterrupted["base"] / "train", out)
    return interrupted(out)


@pytest.mark.parametrize(
    ("name", "harm", "problem"),
    [
        ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:1000]), "model.safetensors has 1000 bytes, "),
        (
            "trainer_state.json",
            lambda p: p.write_text("x" * p.stat().st_size),
            "trainer_state.json has changed since it was written (checksum)",
        ),
    ],
)
def test_a_damaged_last_checkpoint_is_skipped_and_rerun_ends_at_the_same_weights(uninterrupted, name, harm, problem):
    """A truncated weights file, or a trainer state overwritten, in checkpoint-6: the rerun warns naming the file and
    resumes from checkpoint-4."""
    out = finished_copy(uninterrupted, f"damaged-{name}")
    harm(out / "checkpoint-6" / name)
    code, log = uninterrupted["runner"].run(train_argv(uninterrupted["recipe"], out))
    assert code == 0, log[-3000:]
    [warning] = [line for line in log.splitlines() if "skipping damaged checkpoint" in line]
    assert f"skipping damaged checkpoint {out / 'checkpoint-6'}: {problem}" in warning
    assert warning.endswith("; resuming from an earlier one")
    assert f"resuming from the last checkpoint in output_dir: {out / 'checkpoint-4'}" in log
    assert_same_weights(load_file(out / "model.safetensors"), uninterrupted["weights"], atol=1e-6)
    assert damage(str(out / "checkpoint-6")) is None  # written again, whole


def test_no_undamaged_checkpoint_left_is_one_line(uninterrupted):
    out = finished_copy(uninterrupted, "all-damaged")
    for step in (2, 4, 6):
        (out / f"checkpoint-{step}" / "optimizer.pt").unlink()
    code, log = uninterrupted["runner"].run(train_argv(uninterrupted["recipe"], out))
    assert code == 2, log[-3000:]
    assert last_error_line(log) == (
        f"hf-distill: error: every checkpoint is damaged (output_dir={str(out)!r}): checkpoint-6: optimizer.pt is "
        "missing; checkpoint-4: optimizer.pt is missing; checkpoint-2: optimizer.pt is missing; restore the files, "
        "or delete the checkpoints to train from the start"
    )


def test_unreadable_rows_of_metrics_csv_are_dropped_on_resume_with_a_warning(uninterrupted):
    """A damaged row (a step that is no number) and a line of NUL bytes, as a crash can leave: the resumed run warns
    naming the file and lines, drops them, and ends at the same weights with every kept row readable."""
    out = finished_copy(uninterrupted, "bad-metrics")
    shutil.rmtree(out / "checkpoint-6")
    metrics = out / "metrics.csv"
    lines = metrics.read_text().splitlines()
    lines[2] = "abc" + lines[2][lines[2].index(",") :]
    lines.insert(4, "\0" * 20)
    metrics.write_text("\n".join(lines) + "\n")
    code, log = uninterrupted["runner"].run(train_argv(uninterrupted["recipe"], out))
    assert code == 0, log[-3000:]
    assert f"{metrics}: skipping 2 rows that cannot be read (lines 3, 5)" in log
    assert_same_weights(load_file(out / "model.safetensors"), uninterrupted["weights"], atol=1e-6)
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows if r["split"] == "train"]
    assert steps == [1, 3, 4, 5, 6]  # step 2's row was the damaged one; 5 and 6 were trained again, once


def test_the_final_save_moves_the_weights_in_before_any_card(tmp_path, monkeypatch):
    """A PEFT student's save_pretrained writes a card of its own, whose name sorts before the weights': it is not
    moved in with them, so a kill while the files move never leaves a card beside a partial set; the run's card is
    written after (`test_dropin.py::test_peft_model_card_keeps_peft_metadata_and_the_distillation_section`)."""
    trainer, _ = trained_weights(tmp_path, lora_student("decoder"), tiny_llama(seed=2), max_steps=1)
    assert trainer.args.output_dir == str(tmp_path)
    moved, move = [], final_model.move_entries

    def record(source, destination):
        moved.extend(sorted(os.listdir(source)))
        move(source, destination)

    monkeypatch.setattr(final_model, "move_entries", record)
    final_model.save_final_model(trainer, str(tmp_path))
    assert "adapter_model.safetensors" in moved and MODEL_CARD not in moved
    assert not (tmp_path / MODEL_CARD).exists() and (tmp_path / "adapter_model.safetensors").is_file()
