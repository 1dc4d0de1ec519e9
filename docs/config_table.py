"""The `DistillConfig` table of README.md, generated from the class docstring, where each field is documented once.

python docs/config_table.py           # print the table
python docs/config_table.py --write   # rewrite it in README.md, between its two markers
"""

import itertools
import os
import sys

from hf_distill.arguments.field_docs import all_field_docs
from hf_distill.config import DistillConfig

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BEGIN = "<!-- DistillConfig table: generated from the docstring by `python docs/config_table.py --write` -->\n"
END = "<!-- end of the generated DistillConfig table -->\n"


def config_table() -> str:
    """The Markdown tables of `DistillConfig`'s own fields and those of the dataclasses it inherits them from
    (`GenerationEngineArguments`, `TeacherServerArguments`), one under each heading of their docstrings (`>
    Parameters that control ...`), in their order (`all_field_docs`): name, default, description (a required field,
    which has no default, shows `required`)."""
    docs = all_field_docs(DistillConfig).items()
    tables = []
    for heading, group in itertools.groupby(docs, key=lambda item: item[1].heading):
        rows = [f"**{heading}**", ""] if heading else []
        rows += ["| Field | Default | Meaning |", "|---|---|---|"]
        for name, doc in group:
            default = "required" if doc.default is None else f"`{doc.default}`"
            meaning = doc.text.replace("|", "\\|")  # a bare | would end the cell
            rows.append(f"| `{name}` | {default} | {meaning} |")
        tables.append("\n".join(rows) + "\n")
    return "\n".join(tables)


def readme_table(readme: str) -> str:
    """The table between the markers of `readme`."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise ValueError(f"README.md must hold each marker once: {BEGIN.strip()} ... {END.strip()}")
    return readme.split(BEGIN, 1)[1].split(END, 1)[0]


def with_table(readme: str, table: str) -> str:
    """`readme` with `table` between its markers."""
    old = readme_table(readme)
    return readme.replace(BEGIN + old + END, BEGIN + table + END)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        with open(README) as f:
            readme = f.read()
        with open(README, "w") as f:
            f.write(with_table(readme, config_table()))
    elif not sys.argv[1:]:
        print(config_table(), end="")
    else:
        sys.exit(f"usage: python {sys.argv[0]} [--write]")
