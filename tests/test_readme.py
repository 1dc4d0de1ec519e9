"""The README stays true: its config table lists every DistillConfig field, and its commands name files that exist."""

import dataclasses
import os
import re

from transformers import TrainingArguments

from hf_distill import DistillConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def test_config_table_lists_every_distill_field():
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    fields = [f.name for f in dataclasses.fields(DistillConfig) if f.name not in base]
    table = set(re.findall(r"^\| `(\w+)` \|", README, re.M))
    assert set(fields) <= table, set(fields) - table
    for name in fields:
        assert f"        {name} (`" in DistillConfig.__doc__, f"{name} is not documented in the docstring"


def test_paths_named_in_the_readme_exist():
    paths = set(
        re.findall(r"\b((?:recipes|accelerate_configs|benchmarks|docs|tests)/[\w./-]+\.(?:yaml|py|md))", README)
    )
    assert paths
    missing = [p for p in paths if not os.path.exists(os.path.join(ROOT, p))]
    assert not missing, missing


def test_readme_test_command_is_what_ci_runs():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    command = 'python -m pytest -m "not slow" -q'
    assert command in README and command in ci
    assert 'pip install torch==2.13.0 && pip install -e ".[test]"' in README
    assert "pip install torch==2.13.0" in ci and 'pip install -e ".[test]"' in ci
