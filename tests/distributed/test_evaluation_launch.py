"""`hf-distill evaluate` under `accelerate launch` with the shipped 2-process CPU config: the examples split between
the processes and gathered give the results of one process."""

import json
import math

import pytest
from test_launch import launch
from testing_utils import run_with_a_card

from hf_distill.cli import main

pytestmark = pytest.mark.distributed

# Timings differ between any two runs; `processes` is what the comparison is about.
UNEQUAL = {"generation_seconds", "tokens_per_second", "speedup", "processes"}


def assert_same_numbers(two, one, where="results"):
    """Equal keys and strings, numbers within 1e-6, except the fields of `UNEQUAL`."""
    assert set(two) == set(one), where
    for key, value in one.items():
        if key in UNEQUAL:
            continue
        if isinstance(value, dict):
            assert_same_numbers(two[key], value, f"{where}.{key}")
        elif isinstance(value, float):
            assert math.isclose(two[key], value, rel_tol=1e-6, abs_tol=1e-6), (f"{where}.{key}", two[key], value)
        else:
            assert two[key] == value, (f"{where}.{key}", two[key], value)


def test_evaluate_with_two_processes_writes_the_json_of_one(workspace):
    tmp_path = workspace[0]
    out, recipe = run_with_a_card(workspace)
    # 7 examples: shares of 4 and 3, each batched by 3 otherwise than one process batches the 7.
    flags = ["--max_new_tokens", "4", "--per_device_eval_batch_size", "3", "--max_eval_samples", "7"]
    main(["evaluate", recipe, "--output", str(tmp_path / "one.json"), *flags])
    one = json.loads((tmp_path / "one.json").read_text())
    result = launch("-m", "hf_distill.cli", "evaluate", recipe, "--output", str(tmp_path / "two.json"), *flags)
    two = json.loads((tmp_path / "two.json").read_text())

    assert one["processes"] == 1 and two["processes"] == 2
    assert one["examples"] == 7 and set(one["categories"]) == {"a", "b"}
    assert_same_numbers(two, one)
    # Greedy answers are the same, so the same number of tokens was generated.
    assert two["student"]["generated_tokens"] == one["student"]["generated_tokens"] > 0
    # Only the main process prints the table; the run's own files are the launch's results.
    assert result.stdout.count("student to teacher") == 1, result.stdout
    assert json.loads((out / "evaluation.json").read_text()) == two
    assert (out / "README.md").read_text().count("## Evaluation") == 1
