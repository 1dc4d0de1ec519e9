"""`kill -9` at moments drawn at random with a fixed seed (during training steps, checkpoint writes, the final
evaluation and save, and a teacher cache build), each followed by a rerun of the same command: the rerun ends at the
weights of an uninterrupted run, and the cache build at the cache of an uninterrupted build.

The moments are those an uninterrupted run reaches (`tests/scripts/fault_runner.py` records them: each write of a
checkpoint or final file, each rename, each training step and evaluation batch, each teacher forward pass of the cache
build), so a kill lands inside a chosen write rather than after a wall-clock delay that a loaded machine shifts.
"""

import json
import os
import random
import subprocess
import sys

import pytest
from conftest import make_workspace
from safetensors.torch import load_file
from test_trainer import assert_same_weights

from hf_distill.checkpoints import damage, is_complete
from hf_distill.final_model import MODEL_CARD, staging_path
from hf_distill.run_lock import LOCK_NAME
from hf_distill.teacher_cache import load_teacher_cache

RUNNER = os.path.join(os.path.dirname(__file__), "scripts", "fault_runner.py")
SEED = 17
# (what the moment is in, how many moments): 10 in all.
LAYOUT = [("step", 3), ("checkpoint", 3), ("final evaluation", 1), ("final save", 1), ("cache build", 2)]
PLACES = [place for place, count in LAYOUT for _ in range(count)]


class Runner:
    """`fault_runner.py`, started once: each job is a forked child, so the imports are paid once."""

    def __init__(self, folder):
        self.folder = folder
        self.jobs = 0
        path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), os.path.dirname(__file__)) if p)
        env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
        self.process = subprocess.Popen(
            [sys.executable, RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def run(self, argv, fault=None, events=None):
        """`(exit status, log)` of `hf-distill ARGV` with `fault` injected."""
        self.jobs += 1
        log = os.path.join(self.folder, f"job-{self.jobs}.log")
        job = {"argv": argv, "fault": fault, "log": log, "events": str(events) if events else None}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        code = int(self.process.stdout.readline())
        with open(log) as f:
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
