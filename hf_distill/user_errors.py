"""Errors the user fixes (a bad recipe, data file, model folder, cache or command line), as opposed to bugs.

`hf-distill` prints a `UserError` as one line, `hf-distill: error: <what> (<where>): <why>; <what to do>`, and exits
with code 2; any other exception is a bug and keeps its traceback (`hf_distill.cli`). Raise one with its four parts:

    raise UserInputError(
        "bad JSON line", where=f"{path}:{line}", why=err.msg, fix="fix or delete that line"
    )

`UserInputError` is also a `ValueError`, so scripts that catch `ValueError` around `DistillConfig(...)` or
`DistillTrainer(...)` keep working. A `UserError` built from one message only (`UserInputError("...")`) is in the
format of earlier versions: still one line and exit 2, without the parts.
"""


class UserError(Exception):
    """A problem in the user's input: `what` went wrong, `where` (a field and its value, or a file[:line]), `why`,
    and `fix`, what to do about it."""

    def __init__(self, what: str, where: str | None = None, why: str | None = None, fix: str | None = None):
        self.what, self.where, self.why, self.fix = what, where, why, fix
        super().__init__(self.line())

    @property
    def structured(self) -> bool:
        """Whether the error has all four parts of the format (errors of earlier versions have a message only)."""
        return None not in (self.where, self.why, self.fix)

    def line(self) -> str:
        """The message on one line: a message over several lines (a library's, quoted in `why`) is joined, not cut."""
        what, where, why, fix = (_one_line(part) for part in (self.what, self.where, self.why, self.fix))
        text = what
        if where is not None:
            text += f" ({where})"
        if why is not None:
            text += f": {why}"
        if fix is not None:
            text += f"; {fix}"
        return text

    def __reduce__(self):
        # Rebuilt from its parts when pickled (a `datasets.map` worker raising it to the main process).
        return type(self), (self.what, self.where, self.why, self.fix)


def _one_line(text: str | None) -> str | None:
    return None if text is None else " ".join(line.strip() for line in str(text).splitlines() if line.strip())


class UserInputError(UserError, ValueError):
    """A `UserError` that is also a `ValueError`: a bad value, file or folder."""


def bad_value(field: str, value, why: str, fix: str) -> UserInputError:
    """The error for a field whose value cannot work: `invalid <field> (<field>=<value>): <why>; <fix>`."""
    return UserInputError(f"invalid {field}", f"{field}={value!r}", why, fix)


def in_context(err: UserError, context: str) -> UserError:
    """`err`, of the same class, with `context` (e.g. `round 2`) before what went wrong."""
    return type(err)(f"{context}: {err.what}", err.where, err.why, err.fix)
