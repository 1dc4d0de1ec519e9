"""Each field's own rules are declared next to it and checked by one walker: the walker on a tiny dataclass, then every
declaration of `DistillConfig`, read from the declarations themselves (a new one is tested without a new test)."""

import dataclasses
import inspect
import math
import re
import types
import typing

import pytest
from transformers import HfArgumentParser

from hf_distill import DistillConfig
from hf_distill.arguments.field_docs import all_field_docs
from hf_distill.arguments.field_rules import (
    RULE_KEYS,
    Range,
    ReadWhen,
    check_declared_fields,
    collect_rules,
    declared_rules,
)
from hf_distill.generation import engine_config


@collect_rules
@dataclasses.dataclass
class Tiny:
    mode: str = dataclasses.field(default="a", metadata={"choices": ["a", "b"]})
    share: float = dataclasses.field(default=0.5, metadata={"range": "[0, 1]"})
    steps: int | None = dataclasses.field(default=None, metadata={"range": "[1, inf)"})
    rate: float = dataclasses.field(default=1.0, metadata={"range": "(0, inf)", "range_fix": "set a rate above 0"})
    kinds: list[str] = dataclasses.field(default_factory=lambda: ["x"], metadata={"subset_of": ["x", "y"]})
    weight: float = dataclasses.field(
        default=1.0,
        metadata={"read_when": ReadWhen(lambda tiny: tiny.mode == "b", "mode: b", {"mode": "b"})},
    )
    depth: int = dataclasses.field(
        default=0,
        metadata={
            "read_when": ReadWhen(
                "deep", "share > 0.5", {"share": 0.9}, why="read above share 0.5 only, and share is {share}"
            )
        },
    )

    @property
    def deep(self) -> bool:
        return self.share > 0.5


def message(**values) -> str:
    with pytest.raises(ValueError) as err:
        check_declared_fields(Tiny(**values))
    return str(err.value)


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"mode": "c"}, "invalid mode (mode='c'): not one of its choices; use one of a, b"),
        ({"share": 1.5}, "invalid share (share=1.5): must be in [0, 1]; set it in [0, 1]"),
        ({"share": math.nan}, "invalid share (share=nan): must be in [0, 1]; set it in [0, 1]"),
        ({"steps": 0}, "invalid steps (steps=0): must be >= 1; set it to 1 or more, or unset it"),
        ({"rate": 0.0}, "invalid rate (rate=0.0): must be > 0; set a rate above 0"),
        ({"kinds": ["x", "z"]}, "invalid kinds (kinds=['x', 'z']): may only hold 'x' and 'y'; keep some of 'x', 'y'"),
        (
            {"weight": 2.0},
            "weight that would be ignored (weight=2.0, mode='a'): it is read with mode: b only; remove weight, or use "
            "mode: b",
        ),
        (
            {"depth": 3},
            "depth that would be ignored (depth=3, share=0.5): read above share 0.5 only, and share is 0.5; remove "
            "depth, or use share > 0.5",
        ),
        # A bad value is reported before a setting that would be ignored: reading rules read valid values.
        ({"weight": 2.0, "mode": "c"}, "invalid mode (mode='c')"),
    ],
)
def test_the_walker_refuses_a_planted_violation_in_one_line(values, expected):
    assert message(**values).startswith(expected)


def test_the_walker_accepts_what_is_valid_and_read():
    for values in ({}, {"steps": None}, {"steps": 1}, {"share": 0.0}, {"kinds": []}, {"mode": "b", "weight": 2.0}):
        check_declared_fields(Tiny(**values))
    check_declared_fields(Tiny(share=0.9, depth=3))
    check_declared_fields(Tiny(weight=1))  # equal to the default: nothing to ignore


def test_rule_keys_leave_the_metadata_for_argparse():
    """HfArgumentParser hands every metadata key to argparse, which refuses keys it does not know."""
    for field in dataclasses.fields(Tiny):
        assert not set(field.metadata) & set(RULE_KEYS), field.name
    assert dataclasses.fields(Tiny)[0].metadata["choices"] == ["a", "b"]  # argparse's own key stays
    HfArgumentParser(Tiny).parse_args_into_dataclasses(["--share", "0.2"])
    assert declared_rules(Tiny)["share"].range == Range.parse("[0, 1]")
    assert list(declared_rules(Tiny)) == [f.name for f in dataclasses.fields(Tiny)]


def test_a_subclass_keeps_its_bases_rules():
    @collect_rules
    @dataclasses.dataclass
    class Child(Tiny):
        extra: int = dataclasses.field(default=1, metadata={"range": "[0, inf)"})

    assert list(declared_rules(Child)) == [*declared_rules(Tiny), "extra"]
    with pytest.raises(ValueError, match=r"^invalid share \(share=2\)"):
        check_declared_fields(Child(share=2))


@pytest.mark.parametrize("text", ["0, 1", "[0 1]", "[0, one]", "{0, 1}"])
def test_a_malformed_range_fails_when_the_class_is_defined(text):
    with pytest.raises(TypeError, match=re.escape(f"Bad.x: range {text!r} is no interval")):
        collect_rules(dataclasses.make_dataclass("Bad", [("x", float, dataclasses.field(metadata={"range": text}))]))


# --- Every declaration of DistillConfig -------------------------------------------------------------------------

RULES = declared_rules(DistillConfig)
RANGES = {name: rules for name, rules in RULES.items() if rules.range is not None}
READ_WHEN = {name: rules for name, rules in RULES.items() if rules.read_when is not None}
# Settings under which any field may be set: early stopping needs evaluation, a rule between fields.
BASE = {"eval_strategy": "steps", "eval_steps": 1}
# Each field's entry, from the docstring of the class that declares it.
DOCS = all_field_docs(DistillConfig)


@pytest.fixture(autouse=True)
def vllm_found(monkeypatch):
    """The engine fields' rules are tested here whether vLLM is installed or not (use_vllm needs it: tested in
    tests/generation/test_engine_config.py)."""
    monkeypatch.setattr(engine_config, "vllm_installed", lambda: True)


def _is_int(name: str) -> bool:
    # From the annotations: HfArgumentParser rewrites a field's `type` in place.
    annotation = next(a[name] for a in map(inspect.get_annotations, DistillConfig.__mro__) if name in a)
    return annotation is int or int in typing.get_args(annotation)


def _config(tmp_path, name, value):
    read_when = RULES[name].read_when
    example = read_when.example if read_when is not None else {}
    return DistillConfig(output_dir=str(tmp_path), **{**BASE, **example, name: value})


def _edges(name: str, value_range: Range):
    """(value, inside) pairs just outside and just inside each finite end."""
    step = 1 if _is_int(name) else 1e-6
    cast = int if _is_int(name) else float
    pairs = []
    for end, sign, is_open in (
        (value_range.low, -1, value_range.low_open),
        (value_range.high, 1, value_range.high_open),
    ):
        if math.isinf(float(end)):
            continue
        bound = cast(float(end))
        pairs += [(bound, not is_open), (bound + sign * step, False), (bound - sign * step, True)]
    return pairs


EDGES = [(name, value, inside) for name, rules in RANGES.items() for value, inside in _edges(name, rules.range)]


def test_the_declarations_cover_the_bounds_config_checked_by_hand():
    assert set(RANGES) >= {
        "alpha", "temperature", "beta", "skew_lambda", "cross_tokenizer_uld_weight", "lmbda", "max_new_tokens",
        "generation_temperature", "generation_top_p", "generation_top_k", "loss_chunk_size", "max_nonfinite_steps",
        "early_stop_patience", "early_stop_min_delta", "eval_max_new_tokens",
    }  # fmt: skip
    assert set(READ_WHEN) >= {"beta", "cross_tokenizer_uld_weight", "teacher_tokenizer_name_or_path", "loss_type"}
    assert len(EDGES) >= 3 * len(RANGES)


@pytest.mark.parametrize("name, value, inside", EDGES, ids=[f"{n}={v}" for n, v, _ in EDGES])
def test_every_declared_bound_is_enforced_at_its_edge(tmp_path, name, value, inside):
    if inside:
        assert getattr(_config(tmp_path, name, value), name) == value
        return
    # The walker's message, or for the loss fields the loss functions' own (checked first), which says the same.
    with pytest.raises(ValueError, match=re.escape(RANGES[name].range.why)) as err:
        _config(tmp_path, name, value)
    assert f"{name}={value!r}" in str(err.value)


@pytest.mark.parametrize("name", RANGES)
def test_every_declared_bound_is_in_the_docstring(name):
    value_range = RANGES[name].range
    written = value_range.text if value_range.bounded else value_range.why.removeprefix("must be ")
    assert written in all_field_docs(DistillConfig)[name].text


# Valid values of fields whose declarations bound no value (any other string is a valid value of the rest).
FREE_FORM_VALUES = {"teacher_model_server_url": "http://127.0.0.1:9000"}


def _another_value(name: str):
    """A valid value of the field other than its default."""
    rules = RULES[name]
    if rules.choices is not None:
        return next(choice for choice in rules.choices if choice != rules.default)
    if rules.range is not None:
        low = float(rules.range.low)
        return next(v for v in (low, low + 0.25, low + 1) if v in rules.range and v != rules.default)
    return FREE_FORM_VALUES.get(name, "x")


@pytest.mark.parametrize("name", READ_WHEN)
def test_every_read_when_declaration(tmp_path, name):
    """Its example makes the field read, and set there it is accepted; where the defaults do not read it, it is
    refused in one line naming the field, its value and the setting that would make it read."""
    read_when, value = READ_WHEN[name].read_when, _another_value(name)
    config = _config(tmp_path, name, value)
    assert read_when.reads(config) and getattr(config, name) == value
    if read_when.reads(DistillConfig(output_dir=str(tmp_path))):
        return  # read by default: the tests of the field's own file refuse it where it is not (e.g. loss_type)
    with pytest.raises(ValueError) as err:
        DistillConfig(output_dir=str(tmp_path), **{name: value})
    line = str(err.value)
    assert line.startswith(f"{name} that would be ignored ({name}={value!r}")
    assert line.endswith(f"; remove {name}, or use {read_when.setting}") and "\n" not in line


def test_distill_config_metadata_holds_no_rule_key():
    for field in dataclasses.fields(DistillConfig):
        assert not set(field.metadata) & set(RULE_KEYS), field.name
        assert isinstance(field.metadata, types.MappingProxyType)


def test_an_infinite_end_bounds_nothing_and_nan_is_never_inside():
    assert math.inf in Range.parse("(0, inf)") and -math.inf in Range.parse("(-inf, 0]")
    assert math.nan not in Range.parse("(-inf, inf)") and math.nan not in Range.parse("[0, 1]")
