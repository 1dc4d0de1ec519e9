"""A field's own rules, declared next to it in `field(metadata=...)` and checked by one walker,
`check_declared_fields`, instead of an `if` per field. The keys:

- `choices`: the values it may take (also argparse's: the command line refuses others first).
- `range`: an interval, `"[0, 1]"`, `"(0, 1]"`, `"[0, inf)"`; `None` passes when it is the field's default.
- `range_fix`: the error's fix for a value outside `range`, where the generic one (`set it to 0 or more`) says less.
- `subset_of`: for a list field, the items it may hold.
- `read_when`: a `ReadWhen`, when the field is read; set away from its default where nothing reads it, it is refused.

Errors are one line naming the field and its value (`hf_distill.user_errors`). HfArgumentParser passes every metadata
key to argparse, which knows only its own: `collect_rules`, a class decorator, moves the keys above but `choices` out
of the metadata into the class's table, which `declared_rules` reads.
"""

import dataclasses
import inspect
import math
import re
import types
from collections.abc import Callable
from typing import Any, NamedTuple

from ..user_errors import UserInputError, bad_value

RULE_KEYS = ("range", "range_fix", "subset_of", "read_when")
_TABLE = "__field_rules__"
_INTERVAL = re.compile(r"(?P<left>[\[(])(?P<low>[^,]+), (?P<high>[^,]+)(?P<right>[\])])")
_NUMBER = re.compile(r"-?(inf|\d+(\.\d+)?(e-?\d+)?)")


class Range(NamedTuple):
    """An interval as written in a declaration (`"[0, 1]"`, `"(0, inf)"`); `low`/`high` are its ends as written."""

    text: str
    low: str
    high: str
    low_open: bool
    high_open: bool

    @classmethod
    def parse(cls, text: str) -> "Range":
        found = _INTERVAL.fullmatch(text)
        if found is None or not all(_NUMBER.fullmatch(end) for end in (found["low"], found["high"])):
            raise ValueError(f"range {text!r} is no interval like '[0, 1]', '(0, 1]' or '[0, inf)'")
        return cls(text, found["low"], found["high"], found["left"] == "(", found["right"] == ")")

    def __contains__(self, value) -> bool:
        """Whether `value` is inside; an infinite end bounds nothing (`inf` is in `(0, inf)`: whether a value must be
        finite is the field's own concern, e.g. `temperature`'s in `training_checks`). NaN is never inside."""
        low, high = float(self.low), float(self.high)
        above = math.isinf(low) or (value > low if self.low_open else value >= low)
        below = math.isinf(high) or (value < high if self.high_open else value <= high)
        return bool(above and below and value == value)

    @property
    def bounded(self) -> bool:
        return float(self.high) != float("inf")

    @property
    def why(self) -> str:
        """`must be in [0, 1]`, or `must be >= 0` / `must be > 0` for an interval without an upper end."""
        if self.bounded:
            return f"must be in {self.text}"
        return f"must be {'>' if self.low_open else '>='} {self.low}"

    def fix(self, optional: bool) -> str:
        """What to do, generically; `optional`: the field may also be unset (its default is None)."""
        if self.bounded:
            fix = f"set it in {self.text}"
        else:
            fix = f"set it above {self.low}" if self.low_open else f"set it to {self.low} or more"
        return fix + (", or unset it" if optional else "")


class ReadWhen(NamedTuple):
    """When a field is read. `test`: the name of a boolean property of the config, or a function of the config, true
    when the field is read. `setting`: the setting that makes it read, as the error's fix names it (`cross_tokenizer:
    aligned`). `example`: field values under which it is read; the error shows their current values beside the
    field's, and the tests build a config from them. `why`: the error's reason, a `str.format` template of the config's
    fields (`loss_type={loss_type!r} would ignore it`); by default `it is read with <setting> only`."""

    test: str | Callable[[Any], bool]
    setting: str
    example: dict[str, Any]
    why: str | None = None

    def reads(self, config) -> bool:
        return bool(getattr(config, self.test) if isinstance(self.test, str) else self.test(config))


class FieldRules(NamedTuple):
    """The rules one field declares (None where it declares none), and its default (`dataclasses.MISSING` if none)."""

    default: Any
    choices: tuple | None = None
    range: Range | None = None
    range_fix: str | None = None
    subset_of: tuple | None = None
    read_when: ReadWhen | None = None


def _default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def collect_rules(cls: type) -> type:
    """Class decorator, above `@dataclass`: moves the rule keys of each field the class itself declares out of the
    field's metadata into the class's table (see the module docstring). Raises `TypeError` for a malformed range."""
    own = inspect.get_annotations(cls)
    table = {}
    for field in dataclasses.fields(cls):
        if field.name not in own:
            continue
        rules = {key: field.metadata[key] for key in RULE_KEYS if key in field.metadata}
        choices = field.metadata.get("choices")
        if not rules and choices is None:
            continue
        try:
            value_range = Range.parse(rules["range"]) if "range" in rules else None
        except ValueError as err:
            raise TypeError(f"{cls.__name__}.{field.name}: {err}") from None
        subset_of = rules.get("subset_of")
        table[field.name] = FieldRules(
            _default(field),
            None if choices is None else tuple(choices),
            value_range,
            rules.get("range_fix"),
            None if subset_of is None else tuple(subset_of),
            rules.get("read_when"),
        )
        kept = {key: value for key, value in field.metadata.items() if key not in RULE_KEYS}
        field.metadata = types.MappingProxyType(kept)  # read-only, hence a new one
    setattr(cls, _TABLE, table)
    return cls


def declared_rules(cls: type) -> dict[str, FieldRules]:
    """Field name -> its rules, for every field of `cls` (its own and inherited ones) that declares some."""
    table = {}
    for klass in reversed(cls.__mro__):
        table.update(vars(klass).get(_TABLE, {}))
    return table


def _items(values) -> str:
    names = [repr(value) for value in values]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _check_value(name: str, value, rules: FieldRules) -> None:
    if value is None and rules.default is None:
        return  # unset
    if rules.choices is not None and value not in rules.choices:
        raise bad_value(name, value, "not one of its choices", f"use one of {', '.join(map(str, rules.choices))}")
    if rules.range is not None and value not in rules.range:
        raise bad_value(name, value, rules.range.why, rules.range_fix or rules.range.fix(rules.default is None))
    if rules.subset_of is not None and any(item not in rules.subset_of for item in value):
        raise bad_value(
            name,
            value,
            f"may only hold {_items(rules.subset_of)}",
            f"keep some of {', '.join(map(repr, rules.subset_of))}",
        )


def ignored_setting_error(config, name: str, read_when: ReadWhen) -> UserInputError:
    """`<field> that would be ignored (<field>=<value>, <example fields>=<their values>): <why>; remove <field>, or use
    <setting>`."""
    shown = [f"{name}={getattr(config, name)!r}"] + [f"{key}={getattr(config, key)!r}" for key in read_when.example]
    why = (read_when.why or f"it is read with {read_when.setting} only").format_map(vars(config))
    return UserInputError(
        f"{name} that would be ignored", ", ".join(shown), why, f"remove {name}, or use {read_when.setting}"
    )


def check_declared_fields(config) -> None:
    """Every declared rule of `config`'s fields, in field order: first each value against its choices, range and
    allowed items, then (the values being valid, as the tests of reading read them) each field set away from its
    default where its `read_when` is false. Raises the first violation as a one-line `UserInputError`."""
    table = declared_rules(type(config))
    for name, rules in table.items():
        _check_value(name, getattr(config, name), rules)
    for name, rules in table.items():
        read_when = rules.read_when
        if read_when is not None and getattr(config, name) != rules.default and not read_when.reads(config):
            raise ignored_setting_error(config, name, read_when)
