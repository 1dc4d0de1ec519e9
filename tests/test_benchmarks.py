"""The benchmark scripts still run end to end (tiny settings) and print the comparisons the README quotes."""

import importlib.util
import os
import re
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args):
    result = subprocess.run(
        [sys.executable, os.path.join("benchmarks", script), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_loss_memory_quick():
    out = run("loss_memory.py", "--quick", "--no-trl")
    for case in ("(1024, 8000)", "(1024, 32000)", "(4096, 8000)"):
        dense, chunked = re.search(rf"{re.escape(case)}, \d+ valid tokens: dense (\S+), chunked (\S+)", out).groups()
        assert float(dense) == float(chunked)


def test_offline_speed_tiny():
    out = run(
        "offline_speed.py", "--max_steps", "6", "--skip_steps", "2", "--repeats", "1", "--max_train_samples", "64"
    )
    for name in ("online teacher", "cached teacher (top-64)", "plain fine-tuning (alpha=1)"):
        assert re.search(rf"^\| {re.escape(name)} \| [\d.]+ \|", out, re.M), name
    assert re.search(r"bytes for \d+ target tokens \((\d+) bytes/token\)", out)
    assert re.search(r"^cached distillation / plain fine-tuning: [\d.]+x", out, re.M)


def test_distill_vs_finetune_tiny():
    out = run("distill_vs_finetune.py", "--max_steps", "3")
    assert re.search(r"^\| distilled \| 0.2 \| [\d.]+ \| [\d.]+ \|", out, re.M)
    assert re.search(r"^\| fine-tuned \(no teacher\) \| 1.0 \| [\d.]+ \|", out, re.M)
    assert re.search(r"^distilled / fine-tuned eval CE: [\d.]+", out, re.M)


def test_evaluate_demo_tiny():
    out = run("evaluate_demo.py", "--max_steps", "2", "--max_eval_samples", "12", "--max_new_tokens", "4")
    # The demo's shipped teacher and student configuration, whatever the training.
    assert "| parameters | 1,933,824 | 302,976 | 302,976 |" in out
    rows = {}
    for label in ("exact match", "token F1", "top-1 agreement with the teacher"):
        cells = re.search(rf"^\| {re.escape(label)} \| (\S+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M).groups()
        rows[label] = [None if c == "-" else float(c) for c in cells]
        assert all(c is None or 0 <= c <= 1 for c in rows[label]), (label, cells)
    # An exact match has a token F1 of 1, so no model's F1 is below its exact match.
    assert all(em <= f1 for em, f1 in zip(rows["exact match"], rows["token F1"]))
    categories = re.findall(r"^\| (\w+) \| (\d+) \|(?: [\d.]+ \|){6}$", out, re.M)
    assert categories and sum(int(n) for _, n in categories) == 12
    assert "eval split: 12 examples" in out and "distilled trained here (2 steps)" in out


def test_on_policy_speed_tiny():
    # A student head size of 32 (hidden 128, 4 heads): the smallest vLLM's CPU attention takes.
    out = run(
        "on_policy_speed.py",
        *("--max_steps", "3", "--skip_steps", "1", "--repeats", "1", "--batch_size", "2", "--max_new_tokens", "4"),
        *("--student_hidden", "128", "--teacher_hidden", "64"),
    )
    hf, vllm, trl = "hf_distill DistillTrainer", "hf_distill DistillTrainer, use_vllm", "TRL DistillationTrainer"
    has_vllm = importlib.util.find_spec("vllm") is not None
    # name -> (mean completion length, generation tokens/s, sync ms, ratio to TRL, step time / HF generate)
    rows = {}
    for name in (hf, trl, vllm) if has_vllm else (hf, trl):
        row = re.search(
            rf"^\| {re.escape(name)} \| [\d.]+ \| [\d., ]+ \| [\d.]+ \| ([\d.]+) \| (\S+) \| (\S+) \| ([\d.]+) \| "
            r"[\d.]+ \| ([\d.]+) \| (\S+) \|$",
            out,
            re.M,
        )
        assert row, (name, out)
        rows[name] = row.groups()
    # Greedy decoding from the same weights: every trainer generates completions of the same mean length.
    assert len({row[0] for row in rows.values()}) == 1, rows
    assert float(rows[trl][3]) == 1.0 and float(rows[hf][4]) == 1.0
    assert rows[trl][1:3] == ("-", "-") and rows[hf][2] == "-" and float(rows[hf][1]) > 0
    assert re.search(r"^hf_distill / TRL median on-policy step time: [\d.]+x \((meets|misses)", out, re.M)
    assert re.search(r"^TRL DistillationTrainer use_vllm \(colocate\): not run: ", out, re.M)
    if has_vllm:
        assert float(rows[vllm][1]) > 0 and float(rows[vllm][2]) > 0  # every step syncs: the student trains
        assert re.search(r"^use_vllm / HF generate: median step time [\d.]+x, generation tokens/s [\d.]+x", out, re.M)
    else:
        assert f"vLLM is not installed: the {vllm} row is skipped" in out and vllm not in rows


@pytest.mark.slow
def test_cpu_threads_runs_every_setting():
    """Six demo runs in their own processes (start-up dominates: a minute or more on 2 shared cores)."""
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "threads.md")
        out = run("cpu_threads.py", "--max_steps", "2", "--repeats", "1", "--settle_s", "0", "--output", output)
        with open(output) as f:
            assert f.read() in out
    for condition in ("quiet", "loaded"):
        for threads in ("1", "2", r"auto: \d"):
            assert re.search(rf"^\| {condition} \| {threads} \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|$", out, re.M)


def test_step_overhead_tiny():
    out = run(
        "step_overhead.py",
        *("--max_steps", "3", "--skip_steps", "1", "--repeats", "1", "--vocab", "1000", "--seq_len", "16"),
        *("--student_hidden", "32", "--teacher_hidden", "64", "--student_layers", "1", "--teacher_layers", "1"),
    )
    losses = []
    for name in ("bare loop", "hf_distill DistillTrainer", "TRL GKDTrainer (lmbda=0)"):
        row = re.search(
            rf"^\| {re.escape(name)} \| [\d.]+ \| [\d., ]+ \| \d+ \| ([\d.]+) \| [\d.]+ \| [\d.]+ \| [\d.]+ \|$",
            out,
            re.M,
        )
        assert row, name
        losses.append(float(row[1]))
    # The same start, data and loss maths: the three do the same work, to float32 rounding.
    assert max(losses) - min(losses) <= 1e-4 * max(losses), losses
    assert re.search(r"^DistillTrainer / bare loop: [\d.]+x \((meets|misses) the target of 1.05x\)", out, re.M)
    assert re.search(r"^DistillTrainer / TRL GKDTrainer \(lmbda=0\): [\d.]+x", out, re.M)


def test_gpu_benchmark_smoke_on_cpu():
    """Every row kind of the GPU run, at tiny sizes on CPU: each computes, and the ones doing the same maths agree."""
    out = run(os.path.join("gpu", "run.py"), "--smoke")
    measured = r"\| ([\d.e-]+) \| [\d.]+ \| [\d,]+ \| - \| - \| [\d.]+ \|  \|$"
    values = {}
    loss_methods = ["dense", "hf_distill fused (chunk 256)", "hf_distill fused (chunk 256) + torch.compile(_chunk)"]
    loss_methods += ["TRL _chunked_divergence_loss"]
    if importlib.util.find_spec("liger_kernel"):
        loss_methods.append("Liger LigerFusedLinearJSDLoss")
    else:  # not in CI's install; `[bench]` brings it
        assert re.search(r"^\| loss \| .* \| Liger LigerFusedLinearJSDLoss \| .* skipped: No module named", out, re.M)
    for part, methods in (
        ("loss", loss_methods),
        ("chunk", ["hf_distill fused, chunk 16", "hf_distill fused, chunk 256"]),
    ):
        for name in methods:
            found = re.search(rf"^\| {part} \| 64 tokens x V 512 \| {re.escape(name)} {measured}", out, re.M)
            assert found, (part, name, out)
            values[part, name] = float(found[1])
    # All compute the same generalised JSD (beta 0.5) of the same inputs.
    dense = values["loss", "dense"]
    assert all(abs(value - dense) <= 1e-5 * dense for value in values.values()), values
    steps = {}
    for name in ("bare loop", "hf_distill fused", "hf_distill dense", "hf_distill fused, teacher cache"):
        found = re.search(rf"^\| step \| batch 2 x 16 \| {re.escape(name)} {measured}", out, re.M)
        assert found, (name, out)
        steps[name] = float(found[1])
    for name in ("plain fine-tuning (alpha 1.0)", "TRL GKDTrainer (lmbda=0)"):
        found = re.search(rf"^\| step \| batch 2 x 16 \| {re.escape(name)} {measured}", out, re.M)
        assert found, (name, out)
        steps[name] = float(found[1])
    # The same student, teacher, batches and divergence: the bare loop, both hf_distill paths and TRL do the same work.
    same_work = [
        steps[name] for name in ("bare loop", "hf_distill fused", "hf_distill dense", "TRL GKDTrainer (lmbda=0)")
    ]
    assert max(same_work) - min(same_work) <= 1e-4 * max(same_work), steps
    assert not re.search(r"\| skipped: time budget", out)


def test_gpu_benchmark_stops_at_once_without_cuda():
    result = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "gpu", "run.py")], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "needs a CUDA GPU" in result.stderr
    assert not result.stdout


@pytest.mark.vllm
def test_gpu_on_policy_vllm_smoke_on_cpu():
    """Both backends of the GPU on-policy run, at tiny sizes on CPU: the same completion lengths, a sync per step."""
    pytest.importorskip("vllm", reason="benchmarks/gpu/on_policy_vllm.py needs vLLM (bash scripts/install_vllm.sh)")
    out = run(os.path.join("gpu", "on_policy_vllm.py"), "--smoke")
    rows = {}
    for name in ("HF generate", "vLLM (use_vllm)"):
        row = re.search(
            rf"^\| {re.escape(name)} \| [\d.]+ \| ([\d.]+) \| ([\d.]+) \| (\S+) \| [\d.]+ \| 1 \| "
            r"[\d.]+ \| [\d.]+ \|  \|$",
            out,
            re.M,
        )
        assert row, (name, out)
        rows[name] = row.groups()
    # min_new_tokens = max_new_tokens: both write all 8 tokens of every completion.
    assert rows["HF generate"][1] == rows["vLLM (use_vllm)"][1] == "8.0"
    assert rows["HF generate"][2] == "-" and float(rows["vLLM (use_vllm)"][2]) > 0
    for what in ("generation", "step"):
        assert re.search(rf"^vLLM / HF generate {what} speed: [\d.]+x \((meets|misses) the target", out, re.M)


def test_gpu_on_policy_vllm_stops_at_once_without_cuda():
    result = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "gpu", "on_policy_vllm.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "needs a CUDA GPU" in result.stderr
    assert not result.stdout


def gpu_run_module():
    spec = importlib.util.spec_from_file_location("gpu_run", os.path.join(ROOT, "benchmarks", "gpu", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_models_are_the_published_sizes():
    # The GPU run builds these only on a GPU; on the meta device they cost nothing here.
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    gpu_run = gpu_run_module()
    for config, billions in ((gpu_run.QWEN_0_5B, 0.494), (gpu_run.QWEN_7B, 7.615)):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(Qwen2Config(**config))
        assert round(sum(p.numel() for p in model.parameters()) / 1e9, 3) == billions


def test_gpu_benchmark_skips_a_case_that_would_end_past_the_budget():
    budget = gpu_run_module().Budget(100.0)
    assert budget.skip_reason("loss:dense", 1, first_guess=5.0) is None
    assert budget.skip_reason("loss:dense", 1, first_guess=500.0).startswith("skipped: time budget (estimated 500 s")
    budget.record("loss:dense", 1, 30.0, scaled=10.0)  # e.g. 20 s of compilation
    assert budget.skip_reason("loss:dense", 4, first_guess=5.0) is None  # 20 + 4 x 10 s
    assert budget.skip_reason("loss:dense", 9, first_guess=5.0).startswith("skipped: time budget (estimated 110 s")
    assert budget.skip_reason("step:bare loop", 1, first_guess=5.0) is None  # another kind: its own guess
    budget.deadline = 0.0
    assert budget.skip_reason("step:bare loop", 1, first_guess=0.0).startswith("skipped: time budget")


def test_cross_tokenizer_tiny():
    out = run("cross_tokenizer.py", "--max_steps", "3")
    assert re.search(r"^\| fine-tuned \(no teacher\) \| [\d.]+ \| - \| - \|", out, re.M)
    for mode in ("uld", "aligned"):
        assert re.search(rf"^\| teacher_b, cross_tokenizer: {mode} \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", out, re.M)
        assert re.search(rf"^teacher_b, cross_tokenizer: {mode} / fine-tuned eval CE: [\d.]+$", out, re.M)
