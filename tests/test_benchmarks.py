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
