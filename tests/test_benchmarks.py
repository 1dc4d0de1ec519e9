"""The benchmark scripts still run end to end (tiny settings) and print the comparisons the README quotes."""

import os
import re
import subprocess
import sys

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
    out = run(
        "on_policy_speed.py",
        *("--max_steps", "3", "--skip_steps", "1", "--repeats", "1", "--batch_size", "2", "--max_new_tokens", "4"),
        *("--student_hidden", "32", "--teacher_hidden", "64"),
    )
    rows = {
        name: re.search(
            rf"^\| {re.escape(name)} \| [\d.]+ \| [\d., ]+ \| [\d.]+ \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \|$", out, re.M
        )
        for name in ("hf_distill DistillTrainer", "TRL DistillationTrainer")
    }
    assert all(rows.values()), out
    # Greedy decoding from the same weights: both trainers generate completions of the same mean length.
    assert rows["hf_distill DistillTrainer"][1] == rows["TRL DistillationTrainer"][1]
    assert float(rows["TRL DistillationTrainer"][2]) == 1.0
    assert re.search(r"^hf_distill / TRL median on-policy step time: [\d.]+x \((meets|misses)", out, re.M)


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
    out = run(os.path.join("gpu", "run.py"), "--smoke", "--no_compile")
    values = {}
    for name in ("dense", "hf_distill fused", "TRL _chunked_divergence_loss"):
        row = re.search(rf"^\| 64 \| 512 \| {re.escape(name)} \| ([\d.e-]+) \| [\d.]+ \|", out, re.M)
        assert row, name
        values[name] = float(row[1])
    # The three compute the same generalised JSD (beta 0.5) of the same inputs.
    for name, value in values.items():
        assert abs(value - values["dense"]) <= 1e-5 * values["dense"], (name, values)
    for name in ("hf_distill fused", "hf_distill dense", "plain fine-tuning", "TRL GKDTrainer"):
        assert re.search(rf"^\| {re.escape(name)}[^|]* \| [\d.]+ \| [\d,]+ \| - \| [\d.]+ \|$", out, re.M), name


def test_gpu_benchmark_stops_at_once_without_cuda():
    result = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "gpu", "run.py")], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "needs a CUDA GPU" in result.stderr
    assert not result.stdout


def test_gpu_benchmark_models_are_the_published_sizes():
    # The GPU run builds these only on a GPU; on the meta device they cost nothing here.
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    spec = importlib.util.spec_from_file_location("gpu_run", os.path.join(ROOT, "benchmarks", "gpu", "run.py"))
    gpu_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_run)
    for config, billions in ((gpu_run.QWEN_0_5B, 0.494), (gpu_run.QWEN_7B, 7.615)):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(Qwen2Config(**config))
        assert round(sum(p.numel() for p in model.parameters()) / 1e9, 3) == billions


def test_cross_tokenizer_tiny():
    out = run("cross_tokenizer.py", "--max_steps", "3")
    assert re.search(r"^\| fine-tuned \(no teacher\) \| [\d.]+ \| - \| - \|", out, re.M)
    for mode in ("uld", "aligned"):
        assert re.search(rf"^\| teacher_b, cross_tokenizer: {mode} \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", out, re.M)
        assert re.search(rf"^teacher_b, cross_tokenizer: {mode} / fine-tuned eval CE: [\d.]+$", out, re.M)
