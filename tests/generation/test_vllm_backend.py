"""On-policy training with `use_vllm`: the same completions and weights as transformers' generate, the engine's
log-probabilities equal to the student's after each sync, and kill -9 / resume with sampled completions. vLLM on CPU
(`bash scripts/install_vllm.sh`, `python -m pytest -m vllm`); the module skips without it."""

import csv
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from testing_utils import SCRIPTS, TESTS
from transformers import TrainerCallback

from hf_distill.metrics.names import VLLM_SYNC_SECONDS

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

SCRIPT = os.path.join(SCRIPTS, "vllm_run.py")
_spec = importlib.util.spec_from_file_location("vllm_run", SCRIPT)
vllm_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vllm_run)


class Recorder:
    """Wraps a backend's `complete`: each step's prompts and completion tokens, and whether the global random states
    were the same after the engine call as before it."""

    def __init__(self, backend):
        self.steps, self.rng_kept, complete = {}, [], backend.complete

        def recorded(writer, prompts, step):
            before = torch.get_rng_state()
            completions = complete(writer, prompts, step)
            self.rng_kept.append(torch.equal(before, torch.get_rng_state()))
            rows = [r for batch in prompts for r in batch]
            self.steps[step] = (rows, [t for c in completions for t in c.tokens])
            return completions

        backend.complete = recorded


class EngineAgreement(TrainerCallback):
    """At the start of every optimizer step (after its generation, so after its sync), the largest difference between
    the engine's log-probability of each completion token and the student's own log_softmax."""

    def __init__(self, trainer, recorder):
        self.trainer, self.recorder, self.worst = trainer, recorder, []

    def on_step_begin(self, args, state, control, **kwargs):
        rows, tokens = self.recorder.steps[state.global_step]
        sequences = [prompt + completion for prompt, completion in zip(rows, tokens)]
        engine_logprobs = self.trainer._backend.student_engine.prompt_logprobs(sequences, 0)
        model, worst = self.trainer.model, 0.0
        with torch.no_grad():
            for prompt, sequence, ours in zip(rows, sequences, engine_logprobs):
                reference = torch.log_softmax(model(torch.tensor([sequence])).logits[0].float(), -1)
                for i in range(len(prompt) - 1, len(sequence) - 1):
                    worst = max(worst, abs(ours[i][sequence[i + 1]] - reference[i, sequence[i + 1]].item()))
        self.worst.append(worst)


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def greedy_runs(tmp_path_factory):
    """Four greedy on-policy steps with each backend, from the same student."""
    runs = {}
    for use_vllm in (False, True):
        trainer = vllm_run.make_trainer(tmp_path_factory.mktemp(f"vllm_{use_vllm}"), use_vllm=use_vllm)
        recorder = Recorder(trainer._backend)
        agreement = EngineAgreement(trainer, recorder) if use_vllm else None
        if agreement:
            trainer.add_callback(agreement)
        trainer.train()
        runs[trainer._backend.name] = (trainer, recorder, agreement)
    return runs


def test_greedy_on_policy_steps_equal_transformers(greedy_runs):
    (hf, hf_steps, _), (vllm, vllm_steps, _) = greedy_runs["hf"], greedy_runs["vllm"]
    assert sorted(vllm_steps.steps) == [0, 1, 2, 3]
    for step in range(4):
        assert vllm_steps.steps[step] == hf_steps.steps[step], f"step {step}"
    # Completions change as the student trains: an engine left with old weights would fail the equality above.
    tokens = [vllm_steps.steps[step][1] for step in range(4)]
    assert all(tokens[i] != tokens[i + 1] for i in range(3))
    for name, value in weights(hf).items():
        torch.testing.assert_close(weights(vllm)[name], value, rtol=1e-5, atol=1e-5, msg=name)
    with (
        open(os.path.join(vllm.args.output_dir, "completions.csv")) as f,
        open(os.path.join(hf.args.output_dir, "completions.csv")) as g,
    ):
        vllm_rows, hf_rows = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert len(vllm_rows) == 16
    assert [(r["prompt"], r["completion"]) for r in vllm_rows] == [(r["prompt"], r["completion"]) for r in hf_rows]


def test_every_step_syncs_and_the_engine_then_scores_as_the_student(greedy_runs):
    trainer, recorder, agreement = greedy_runs["vllm"]
    assert len(agreement.worst) == 4 and max(agreement.worst) < 1e-4, agreement.worst
    synced = [log[VLLM_SYNC_SECONDS] for log in trainer.state.log_history if VLLM_SYNC_SECONDS in log]
    assert len(synced) == 4 and all(seconds > 0 for seconds in synced)
    assert VLLM_SYNC_SECONDS not in str(greedy_runs["hf"][0].state.log_history)
    # The engine calls leave the training run's random state alone.
    assert recorder.rng_kept == [True] * 4


def test_a_step_with_unchanged_weights_is_not_synced_again(greedy_runs):
    trainer = greedy_runs["vllm"][0]
    backend = trainer._backend
    backend.sync(trainer.state.global_step)
    backend.window_logs()
    backend.sync(trainer.state.global_step)
    assert backend.window_logs() == {}
    backend.sync(trainer.state.global_step + 1)
    assert VLLM_SYNC_SECONDS in backend.window_logs()


def run(out_dir, mode, kill_step=-1):
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), TESTS) if p)
    env = dict(os.environ, PYTHONPATH=path)
    command = [sys.executable, SCRIPT, str(out_dir), mode, str(kill_step)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_kill_and_resume_draws_the_sampled_completions_of_an_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = run(whole, "none")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run(killed, "kill", kill_step=2)
    assert result.returncode == -9, result.stderr[-3000:]
    assert not (killed / "final.pt").exists()
    result = run(killed, "resume")
    assert result.returncode == 0, result.stderr[-3000:]

    def rows(folder):
        with open(folder / "completions.csv") as f:
            return list(csv.DictReader(f))

    assert len(rows(whole)) == 16 and rows(killed) == rows(whole)
    # Sampled: T = 1 gives other completions than greedy decoding would at some step.
    assert {r["step"] for r in rows(whole)} == {"1", "2", "3", "4"}
    final, expected = torch.load(killed / "final.pt"), torch.load(whole / "final.pt")
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=0, msg=name)
