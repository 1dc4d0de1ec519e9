"""Each field of an argument dataclass is documented once, in the class docstring (HF format). `document_fields`
hands that text to `--help` and refuses a class whose docstring and fields disagree; the README table of
`DistillConfig` is generated from the same text (`docs/config_table.py`)."""

import ast
import dataclasses
import inspect
import re
import types
from typing import NamedTuple

_PARAMETERS = "Parameters:"
_HEADING = "> "
_ENTRY = re.compile(r"(?P<name>\w+) \((?P<spec>.*)\):")
# The class attribute where `document_fields` keeps a class's own entries, read by `all_field_docs`.
_DOCS = "__field_docs__"
_SPEC = re.compile(r"(?P<type>.*?)(?:, \*optional\*)?(?:, defaults to `(?P<default>.*)`)?")


class FieldDoc(NamedTuple):
    """One entry of a `Parameters:` block: the type and default as written (`default` is None for an entry without
    `defaults to`, a required field), the description as one paragraph, and the heading it is under (None before the
    first heading)."""

    type: str
    default: str | None
    text: str
    heading: str | None = None


def parse_field_docs(docstring: str) -> dict[str, FieldDoc]:
    """The entries of the `Parameters:` block of an HF-format docstring, in their order: each is a line
    ``name (`type`, *optional*, defaults to `X`):`` followed by its description, indented deeper. A line
    ``> Parameters that control the loss`` at the entries' indentation heads the entries below it (TRL's configs)."""
    lines = inspect.cleandoc(docstring).splitlines()
    if _PARAMETERS not in lines:
        return {}
    entries, indent, heading = [], None, None  # entries: (name, spec, description lines, heading)
    for line in lines[lines.index(_PARAMETERS) + 1 :]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            break  # the block ends at the first line that is not indented
        indent = depth if indent is None else indent
        entry = _ENTRY.fullmatch(line.strip())
        if depth > indent and entries:
            entries[-1][2].append(line.strip())
        elif depth == indent and line.strip().startswith(_HEADING):
            heading = line.strip().removeprefix(_HEADING)
        elif depth == indent and entry is not None:
            entries.append((entry["name"], entry["spec"], [], heading))
        else:
            raise ValueError(f"docstring line {line.strip()!r} is no `name (`type`, ...):` entry")
    docs = {}
    for name, spec, text, heading in entries:
        if name in docs:
            raise ValueError(f"field {name} is documented twice in the docstring")
        found = _SPEC.fullmatch(spec)
        docs[name] = FieldDoc(found["type"], found["default"], " ".join(text), heading)
    return docs


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _check_default(cls: type, field: dataclasses.Field, doc: FieldDoc) -> None:
    actual = _default(field)
    where = f"{cls.__name__}.{field.name}"
    if doc.default is None and actual is not dataclasses.MISSING:
        raise TypeError(f"{where}: the docstring gives no default but the field's default is {actual!r}")
    if actual is dataclasses.MISSING:
        if doc.default is not None:
            raise TypeError(f"{where}: docstring default `{doc.default}` but the field is required")
        return
    try:
        documented = ast.literal_eval(doc.default)
    except (ValueError, SyntaxError):
        raise TypeError(f"{where}: docstring default `{doc.default}` is not a Python literal") from None
    if documented != actual:
        raise TypeError(f"{where}: docstring default `{doc.default}` but the field's default is {actual!r}")


def document_fields(cls: type) -> type:
    """Class decorator, above `@dataclass`: sets the `help` metadata of each field the class itself declares (not
    inherited ones) to its description in the class docstring, which `HfArgumentParser` shows in `--help`. Raises
    `TypeError` when such a field has no docstring entry, an entry names no such field, or an entry's default is
    not the field's."""
    docs = parse_field_docs(cls.__doc__ or "")
    own = inspect.get_annotations(cls)
    fields = [field for field in dataclasses.fields(cls) if field.name in own]
    undocumented = [field.name for field in fields if field.name not in docs]
    if undocumented:
        raise TypeError(f"{cls.__name__}: field {', '.join(undocumented)} has no entry in the docstring")
    unknown = [name for name in docs if name not in {field.name for field in fields}]
    if unknown:
        raise TypeError(f"{cls.__name__}: docstring entry {', '.join(unknown)} names no field of the class")
    for field in fields:
        _check_default(cls, field, docs[field.name])
        # argparse formats help strings with %-interpolation; `metadata` is a read-only mapping, hence a new one.
        help_text = docs[field.name].text.replace("%", "%%")
        field.metadata = types.MappingProxyType({**field.metadata, "help": help_text})
    setattr(cls, _DOCS, docs)
    return cls


def all_field_docs(cls: type) -> dict[str, FieldDoc]:
    """The docstring entries of `cls` and of the documented dataclasses it inherits (a mixin of fields such as
    `TeacherServerArguments`), the class's own first, then each base's in the order of its MRO."""
    docs = {}
    for klass in cls.__mro__:
        docs.update({name: doc for name, doc in vars(klass).get(_DOCS, {}).items() if name not in docs})
    return docs
