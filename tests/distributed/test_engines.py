"""FSDP2 and DeepSpeed ZeRO-3 through Trainer and Accelerate's own path on 2 CPU processes, each run equal to one
process with the same global batch (tests/scripts/engine_run.py; one launch per engine runs every case)."""

import glob
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp
from engine_run import CASES, MICRO_BATCHES, RESUME_STEP, STEPS, UNSUPPORTED, FusedCalls, build_trainer
from safetensors.torch import load_file
from test_trainer import assert_same_weights
from testing_utils import tiny_llama
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.distributed

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "engine_run.py")
TRAINING = ["dense", "fused", "ce_only", "kd_only", "ensemble", "on_policy"]


@pytest.fixture(scope="module", params=["zero3", "fsdp2"])
def engine(request, tmp_path_factory):
    """(engine name, output folder, {case: what rank 0 saved}) of one 2-process launch running every case."""
    name, out_dir = request.param, tmp_path_factory.mktemp(request.param)
    env = dict(os.environ)
    if name == "zero3":
        # DeepSpeed picks its accelerator at import; without this it looks for a GPU.
        env["DS_ACCELERATOR"] = "cpu"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cases = [case for case in CASES if case not in UNSUPPORTED[name]]
    result = subprocess.run(
        [*launch, SCRIPT, str(out_dir), name, *cases], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-4000:]
    runs = {case: torch.load(out_dir / f"{case}.pt", weights_only=False) for case in cases}
    assert all(run["world_size"] == 2 for run in runs.values())
    return name, out_dir, runs


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same case trained in this process without an engine, once per case."""
    done = {}

    def run(case):
        if case not in done:
            trainer = build_trainer(None, str(tmp_path_factory.mktemp(case)), case, processes=1)
            assert trainer.accelerator.num_processes == 1
            calls = FusedCalls()
            try:
                if CASES[case][2] != "evaluate_first":
                    trainer.train()
                metrics = trainer.evaluate() if trainer.eval_dataset is not None else None
            finally:
                calls.restore()
            weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            done[case] = {"weights": weights, "losses": losses, "fused_calls": calls.count, "metrics": metrics}
        return done[case]

    return run


@pytest.mark.parametrize("case", TRAINING)
def test_training_equals_one_process(engine, one_process, case):
    """Dense and fused loss, alpha 0.5, 0 and 1, one teacher and an ensemble of two. Inside the run (engine_run.py):
    world size 2, the engine type, every teacher sharded and frozen, and the optimizer holding the student only."""
    name, _, runs = engine
    run, single = runs[case], one_process(case)
    assert_same_weights(run["weights"], single["weights"])
    torch.testing.assert_close(torch.tensor(run["losses"]), torch.tensor(single["losses"]), rtol=1e-5, atol=1e-6)
    fused = CASES[case][0]["loss_chunk_size"] > 0
    assert single["fused_calls"] == (STEPS * MICRO_BATCHES if fused else 0)
    if name == "fsdp2":
        assert run["uses_fused_loss"] is fused and run["fused_calls"] == single["fused_calls"]
    else:
        # ZeRO-3 takes the dense path: outside its module's forward the LM head is an empty partition.
        assert run["uses_fused_loss"] is False and run["fused_calls"] == 0


def checkpoint_tensors(name: str, checkpoint: str) -> tuple[set[str], set[str], int]:
    """(names of the model weights, names of the parameters with optimizer state, elements of optimizer state per
    state kind) in an engine's checkpoint."""
    if name == "fsdp2":
        model = dcp.FileSystemReader(os.path.join(checkpoint, "pytorch_model_fsdp_0")).read_metadata()
        optimizer = dcp.FileSystemReader(os.path.join(checkpoint, "optimizer_0")).read_metadata()
        prefix = "optimizer.state."
        states = {k[len(prefix) :] for k in optimizer.state_dict_metadata if k.startswith(prefix)}
        exp_avg = [k.removesuffix(".exp_avg") for k in states if k.endswith(".exp_avg")]
        numel = sum(optimizer.state_dict_metadata[prefix + k + ".exp_avg"].size.numel() for k in exp_avg)
        return {k.removeprefix("model.") for k in model.state_dict_metadata}, set(exp_avg), numel
    # ZeRO-3: each rank's file names the parameters it partitions and holds its fp32 partition of them.
    ranks = sorted(glob.glob(os.path.join(checkpoint, f"global_step{RESUME_STEP}", "*_model_states.pt")))
    assert len(ranks) == 2, ranks
    names = set()
    for path in ranks:
        for group in torch.load(path, weights_only=False)["param_shapes"]:
            names |= set(group)
    numel = 0
    for path in glob.glob(os.path.join(checkpoint, f"global_step{RESUME_STEP}", "*_optim_states.pt")):
        partitions = torch.load(path, weights_only=False)["optimizer_state_dict"]["fp32_flat_groups"]
        numel += sum(t.numel() for t in partitions)
    return set(load_file(os.path.join(checkpoint, "model.safetensors"))), names, numel


def test_checkpoint_resumes_to_the_uninterrupted_run_and_saves_a_full_model(engine, one_process):
    """4 steps with a checkpoint at step 2; a new trainer resumes from it under the same engine. The checkpoint
    holds the student's weights and optimizer state, no teacher's; the final save loads with from_pretrained."""
    name, out_dir, runs = engine
    run = runs["resume"]
    assert run["global_step"] == 4
    assert_same_weights(run["weights"], run["uninterrupted_weights"])
    assert_same_weights(run["weights"], one_process("resume")["weights"])
    student = tiny_llama(seed=1, hidden=32, layers=1).state_dict()
    weights, optimized, numel = checkpoint_tensors(name, str(out_dir / "resume" / f"checkpoint-{RESUME_STEP}"))
    assert weights == optimized == set(student)
    assert numel == sum(v.numel() for v in student.values())
    saved = AutoModelForCausalLM.from_pretrained(out_dir / "resume" / "final").state_dict()
    assert_same_weights(saved, run["weights"], atol=0)


@pytest.mark.parametrize("case", ["eval", "eval_first"])
def test_evaluation_equals_one_process(engine, one_process, case):
    """After training, and (ZeRO-3 only) of a model never trained, which DeepSpeed wraps in an engine that stays in
    training mode (`DeepSpeedEngine.eval` sets only its module's mode)."""
    name, _, runs = engine
    if case in UNSUPPORTED[name]:
        pytest.skip(f"{name} cannot run {case}")
    metrics, single = runs[case]["metrics"], one_process(case)["metrics"]
    for key in ("eval_loss", "eval_ce_loss", "eval_kd_loss", "eval_teacher_agreement"):
        assert metrics[key] == pytest.approx(single[key], rel=0, abs=1e-6), key


def test_nan_step_on_one_process_is_skipped_on_both(engine, one_process):
    """Step 2 is NaN on rank 1 only. FSDP2: hf_distill's guard reduces the verdict over processes and both skip.
    ZeRO-3: the guard is not enforced, and DeepSpeed skips the step itself on both processes (the gradient norm it
    reduces over processes is not finite); the run does not count such steps, nor stop on them. Either way the weights
    end finite and equal to one process whose step 2 was skipped."""
    _, _, runs = engine
    run = runs["nan"]
    assert run["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in run["weights"].values())
    assert_same_weights(run["weights"], one_process("nan")["weights"])
