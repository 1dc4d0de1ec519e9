"""Each argument field is documented once, in its class docstring: `--help` shows that text, and a class whose
docstring and fields disagree is refused when it is defined."""

import dataclasses
import re

import pytest
from transformers import HfArgumentParser

from hf_distill.arguments.field_docs import FieldDoc, document_fields, parse_field_docs
from hf_distill.commands.recipe import ARGUMENT_CLASSES


def own_fields(cls):
    return [f for f in dataclasses.fields(cls) if f.name in cls.__annotations__]


def test_docstring_entries_are_parsed():
    config_docs = parse_field_docs(ARGUMENT_CLASSES[2].__doc__)
    samples = config_docs["track_samples"]
    assert samples.type == "`list[str]`" and samples.default == '["eval"]'
    assert samples.text.startswith(
        "When to write per-example CE, KD and teacher agreement to `output_dir/samples.csv`"
    )
    assert "\n" not in samples.text and "  " not in samples.text
    assert parse_field_docs(ARGUMENT_CLASSES[0].__doc__)["model_name_or_path"].default is None  # required
    assert config_docs["teacher_model_name_or_path"].type == "`str` or `list[str]`"


@pytest.mark.parametrize("cls", ARGUMENT_CLASSES, ids=lambda cls: cls.__name__)
def test_every_field_help_is_its_docstring_text(cls):
    docs = parse_field_docs(cls.__doc__)
    fields = own_fields(cls)
    assert [f.name for f in fields] == list(docs)
    for field in fields:
        assert field.metadata["help"] == docs[field.name].text, field.name


def test_help_shows_the_docstring_text():
    # The parser the recipes and the command line go through (hf_distill.commands.recipe).
    # Whitespace aside: argparse wraps lines, also after hyphens.
    shown = "".join(HfArgumentParser(ARGUMENT_CLASSES).format_help().split())
    text = parse_field_docs(ARGUMENT_CLASSES[2].__doc__)["track_samples"].text
    assert "".join(text.split()) in shown
    assert "--loss_type{forward_kl," in shown  # choices are kept beside the help


def documented(doc, **fields):
    namespace = {"__doc__": doc, "__annotations__": {name: type(value) for name, value in fields.items()}, **fields}
    return document_fields(dataclasses.dataclass(type("Args", (), namespace)))


DOC = """
    Parameters:
        steps (`int`, *optional*, defaults to `3`):
            How many steps, 100% of them counted.
    """


def test_a_documented_class_is_accepted():
    (field,) = dataclasses.fields(documented(DOC, steps=3))
    assert field.metadata["help"] == "How many steps, 100%% of them counted."  # argparse %-formats help
    assert parse_field_docs(DOC) == {"steps": FieldDoc("`int`", "3", "How many steps, 100% of them counted.")}


def test_inherited_fields_need_no_entry():
    base = documented(DOC, steps=3)
    child = document_fields(
        dataclasses.dataclass(
            type(
                "Child",
                (base,),
                {"__doc__": DOC.replace("steps", "rate"), "__annotations__": {"rate": int}, "rate": 3},
            )
        )
    )
    assert [f.name for f in own_fields(child)] == ["rate"]


@pytest.mark.parametrize(
    "doc, fields, message",
    [
        (DOC, {"steps": 3, "rate": 0.5}, "Args: field rate has no entry in the docstring"),
        (DOC + "    rate (`float`, *optional*, defaults to `0.5`):\n", {"steps": 3}, "entry rate names no field"),
        (DOC, {"steps": 4}, "Args.steps: docstring default `3` but the field's default is 4"),
        (DOC.replace(", *optional*, defaults to `3`", ""), {"steps": 3}, "Args.steps: the docstring gives no default"),
    ],
)
def test_docstring_and_fields_must_agree(doc, fields, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        documented(doc, **fields)


def test_a_malformed_entry_is_an_error():
    with pytest.raises(ValueError, match="is no `name"):
        parse_field_docs(DOC.replace("steps (`int`", "steps `int`"))


HEADED = """
    Parameters:
        > Parameters that control the steps

        steps (`int`, *optional*, defaults to `3`):
            How many steps.
            > 1 counts whole steps (a description line may start with `>`).

        > Parameters that control the rate

        rate (`float`, *optional*, defaults to `0.5`):
            The rate.
    """


def test_headings_group_the_entries():
    docs = parse_field_docs(HEADED)
    steps = "How many steps. > 1 counts whole steps (a description line may start with `>`)."
    assert docs == {
        "steps": FieldDoc("`int`", "3", steps, "Parameters that control the steps"),
        "rate": FieldDoc("`float`", "0.5", "The rate.", "Parameters that control the rate"),
    }
    assert parse_field_docs(DOC)["steps"].heading is None  # no heading: none
    documented(HEADED, steps=3, rate=0.5)  # headings are no fields


def test_every_config_field_is_under_a_heading():
    docs = parse_field_docs(ARGUMENT_CLASSES[2].__doc__)
    headings = list(dict.fromkeys(doc.heading for doc in docs.values()))
    assert None not in headings and len(headings) >= 5
    assert all(heading.startswith("Parameters that control ") for heading in headings)
    # Each heading's fields are together, so the reference tables keep the fields' order.
    assert [doc.heading for doc in docs.values()] == sorted((doc.heading for doc in docs.values()), key=headings.index)
    assert docs["beta"].heading == "Parameters that control the loss"
