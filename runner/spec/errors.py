"""SpecError, and the few words every problem message is built from.

A problem is one line, `field.path: what is wrong; what to do`; these helpers keep the
wording the same wherever a line is made (the loader, the schema checks, the overrides,
explain, the importers)."""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Sequence


# The levels of a problem: an error refuses the spec, a warning is printed beside the result.
ERROR, WARNING = "error", "warning"
Finding = tuple[str, str]  # (level, "field.path: message"), as the semantic rules yield them


class SpecError(Exception):
    """A spec that cannot be used. `problems` holds one line per problem; `warnings` holds
    the warnings found along the way (still worth printing when the spec is rejected)."""

    def __init__(self, problems: Sequence[str], warnings: Sequence[str] = ()):
        self.problems = list(problems)
        self.warnings = list(warnings)
        super().__init__("\n".join(self.problems))


def did_you_mean(word: str, choices: Iterable[Any]) -> str:
    """`; did you mean 'x'?` for the closest choice (a case slip counts), else `; allowed: ...`."""
    choices = [str(c) for c in choices]
    folded = {c.lower(): c for c in choices}
    hint = [folded[word.lower()]] if word.lower() in folded else difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {', '.join(choices)}"


def an(word: str) -> str:
    """`an integer`, `a string`."""
    return ("an " if word[:1] and word[0] in "aeiou" else "a ") + word


def clip(text: Any, limit: int) -> str:
    """`text` cut to `limit` characters, `...` marking the cut."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def kind_of(value: Any) -> str:
    """What a parsed value is, in plain words (`a list`), never what it holds: a misplaced
    config may be full of secrets."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return kinds.get(type(value), "a scalar")


def json_type(value: Any) -> str:
    """A value's type in JSON Schema's words (`integer`, `array`), as the schema's `type` says it."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number" if isinstance(value, float) else "integer"
    return {str: "string", list: "array", dict: "object", type(None): "null"}.get(type(value), type(value).__name__)
