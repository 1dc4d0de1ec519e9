"""Recipes: one YAML file whose keys are exactly the fields of the argument dataclasses, overridable on the command
line. Every problem with a recipe is a `RecipeError` with a one-line message."""

import dataclasses
import difflib
import json
import os
import re
import typing
from collections.abc import Hashable

import yaml
from transformers import HfArgumentParser

from ..arguments.script_arguments import DataArguments, ModelArguments
from ..config import DistillConfig
from ..user_errors import UserError, UserInputError

ARGUMENT_CLASSES = (ModelArguments, DataArguments, DistillConfig)
# The one key of a recipe that is not a dataclass field: the stages of a multi-round recipe (`commands.rounds`).
ROUNDS_KEY = "rounds"


class RecipeError(UserInputError):
    """A recipe or command line that cannot be run, with a message fit to show the user as is."""


# argparse's messages: `argument --name/--alias: problem`, `invalid <type> value: 'x'` or `invalid choice: 'x' (choose
# from ...)`, and `the following arguments are required: --a/--a-alias, ...`.
_ARGUMENT = re.compile(r"argument --(\w+)(?:/--[\w-]+)?: (.*)")
_INVALID = re.compile(r"invalid (?:(\w+) value|choice): '(.*)'(?: \(choose from (.*)\))?$")
_REQUIRED = re.compile(r"the following arguments are required: (.*)")


def _argparse_error(message: str) -> "RecipeError":
    """argparse's one-line message, in parts."""
    argument, required = _ARGUMENT.match(message), _REQUIRED.match(message)
    if argument:
        name, problem = argument.groups()
        invalid = _INVALID.match(problem)
        if invalid is None:
            return RecipeError(f"invalid {name}", name, problem, f"fix {name} in the recipe or on the command line")
        kind, value, choices = invalid.groups()
        what, where = f"invalid {name}", f"{name}={value!r}"
        if choices is not None:
            return RecipeError(what, where, "not one of its choices", f"use one of {choices}")
        return RecipeError(what, where, f"not a valid {kind}", f"give a value of type {kind}")
    if required:
        names = [flag.split("/")[0].removeprefix("--") for flag in required.group(1).split(", ")]
        return RecipeError(
            "missing key", ", ".join(names), "a run needs it", f"set {names[0]} in the recipe (or --{names[0]})"
        )
    return RecipeError("invalid command line", "the command line", message, "fix it")


class _RecipeParser(HfArgumentParser):
    def error(self, message):
        # argparse would print the whole usage (hundreds of TrainingArguments options) and exit.
        raise _argparse_error(message)


def field_names() -> list[str]:
    return [f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init]


def unknown_key_error(key: str, where: str) -> RecipeError:
    """The error for a key that is no field, suggesting the closest field name."""
    close = difflib.get_close_matches(key, field_names(), n=1, cutoff=0.6)
    fix = f"did you mean {close[0]!r}?" if close else "see the fields of ModelArguments, DataArguments, DistillConfig"
    return RecipeError("unknown key", f"{key!r} in {where}", "no argument of a run has this name", fix)


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key, first: int, second: int):
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML would keep the last
    value without a word, and the first one, which the author may be reading, would silently not apply."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, Hashable):
                continue  # SafeLoader's own error names it
            if key in seen:
                raise _DuplicateKeyError(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str) -> dict:
    """The recipe's mapping; YAML syntax errors keep their line number, and a key given twice is an error."""
    if not os.path.isfile(path):
        raise RecipeError("recipe file not found", path, "no such file", "fix the path")
    with open(path) as f:
        try:
            content = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
        except _DuplicateKeyError as err:
            raise RecipeError(
                "duplicate key",
                f"{path}:{err.second}",
                f"{err.key!r} is set at lines {err.first} and {err.second} (YAML would keep the last without a word)",
                "keep one",
            ) from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}, column {mark.column + 1}" if mark is not None else path
            problem = getattr(err, "problem", None) or str(err)
            raise RecipeError("YAML syntax error", where, problem, "fix the recipe there") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise RecipeError(
            "recipe is not a mapping", path, f"it holds a {type(content).__name__}", "write one key: value a line"
        )
    return content


def _accepts_containers(key: str) -> bool:
    # From the annotations, not dataclasses.fields(): HfArgumentParser rewrites a field's type in place (to str).
    for cls in ARGUMENT_CLASSES:
        hint = typing.get_type_hints(cls).get(key)
        if hint is not None:
            return "dict" in str(hint) or "list" in str(hint)
    return False


def _split_recipe(recipe: dict, parser: HfArgumentParser, where: str | None) -> tuple[list[str], dict]:
    """Recipe values as command-line strings, so that argparse checks their types exactly as it checks flags; lists
    and mappings for fields that take them are passed through as they are."""
    nargs = {action.dest: action.nargs for action in parser._actions}
    argv, direct = [], {}
    for key, value in recipe.items():
        if key not in nargs:
            raise unknown_key_error(key, where)
        if value is None:
            continue
        if isinstance(value, list) and nargs[key] in ("+", "*"):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict | list) and _accepts_containers(key):
            direct[key] = value
        elif isinstance(value, dict | list):
            argv += [f"--{key}", json.dumps(value)]
        elif isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        else:
            argv += [f"--{key}", str(value)]
    return argv, direct


def parse_recipe(path: str | None, overrides: list[str] | None = None):
    """(ModelArguments, DataArguments, DistillConfig) from a YAML recipe and `--key value` overrides.

    A multi-round recipe is refused: `hf_distill.commands.rounds.parse_rounds` parses each of its rounds.
    """
    recipe = load_yaml(path) if path is not None else {}
    if ROUNDS_KEY in recipe:
        raise RecipeError(
            "multi-round recipe",
            path,
            f"it has {ROUNDS_KEY!r}",
            "parse it with hf_distill.commands.rounds.parse_rounds",
        )
    return parse_mapping(recipe, overrides, path)


def parse_mapping(recipe: dict, overrides: list[str] | None, where: str | None):
    """`parse_recipe` for a mapping already loaded; `where` names it in error messages."""
    parser = _RecipeParser(ARGUMENT_CLASSES)
    overrides = list(overrides or [])
    argv, direct = _split_recipe(recipe, parser, where)
    namespace, remaining = parser.parse_known_args(argv + overrides)
    overridden = {token[2:].split("=")[0] for token in overrides if token.startswith("--")}
    for key, value in direct.items():
        if key not in overridden:
            setattr(namespace, key, value)
    for token in remaining:
        if token.startswith("--"):
            raise unknown_key_error(token[2:].split("=")[0], "the command line")
    if remaining:
        raise RecipeError(
            "unexpected command-line arguments", " ".join(remaining), "overrides are --key value pairs", "fix them"
        )
    outputs = []
    for cls in ARGUMENT_CLASSES:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        values = {k: v for k, v in vars(namespace).items() if k in names}
        try:
            outputs.append(cls(**values))
        except UserError as err:
            raise RecipeError(err.what, err.where, err.why, err.fix) from None
        except (ValueError, TypeError) as err:
            # TrainingArguments' own checks: their message, joined onto one line.
            raise RecipeError(
                "invalid value", cls.__name__, str(err), "fix it in the recipe or on the command line"
            ) from None
    return tuple(outputs)
