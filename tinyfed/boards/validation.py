"""Reading TOML data files and turning every validation error into a :class:`FieldIssue`.

Pydantic already collects all errors of a document; this module rewrites each one for a
person editing a TOML file: a dotted key (``link.baud``, ``boards[2].board``), what is wrong
in TOML terms, and what to do (including "did you mean" for misspelt keys and values).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError

from tinyfed.boards.schema import CHECK_ERROR
from tinyfed.errors import BoardError, DataFileError, FieldIssue

M = TypeVar("M", bound=BaseModel)

_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error becomes a DataFileError naming line and column."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BoardError("file not found", fix="check the path", source=str(path)) from None
    except OSError as exc:
        raise BoardError(f"cannot read the file ({exc.strerror})", fix="check the path and its permissions",
                         source=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        issue = FieldIssue("file", f"not UTF-8 text (byte {exc.start})", "save the file as UTF-8")
        raise DataFileError(str(path), [issue]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        pos = _TOML_POS.search(message)
        if pos:
            key = f"line {pos.group(1)}, column {pos.group(2)}"
            message = message[: pos.start()]
        else:
            key = "file"
        issue = FieldIssue(key, f"TOML syntax error: {message}", "fix the TOML syntax; see https://toml.io")
        raise DataFileError(str(path), [issue]) from None


def validate(model: type[M], data: dict[str, Any]) -> tuple[M | None, list[FieldIssue]]:
    """Validate ``data`` against ``model``; return the object or every issue found."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, [_issue(model, err) for err in exc.errors(include_url=False)]


def suggest(word: str, choices: typing.Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``word``, if any is close enough."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def dotted(loc: typing.Sequence[str | int]) -> str:
    """``("boards", 2, "board")`` -> ``boards[2].board``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


# -- one pydantic error -> one FieldIssue -------------------------------------------------------


def _issue(model: type[BaseModel], err: Any) -> FieldIssue:
    loc: tuple[str | int, ...] = tuple(err["loc"])
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    name = str(loc[-1]) if loc else "(top level)"

    if kind == CHECK_ERROR:
        return FieldIssue(dotted(loc + tuple(ctx.get("key", ()))), str(ctx["problem"]), ctx.get("fix"))

    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        close = suggest(name, allowed)
        if close:
            return FieldIssue(dotted(loc), f"unknown key '{name}'; did you mean '{close}'?",
                              f"rename '{name}' to '{close}'")
        listing = ", ".join(allowed) if allowed else "none"
        return FieldIssue(dotted(loc), f"unknown key '{name}'", f"remove it; allowed keys here: {listing}")

    if kind == "missing":
        field_ann = _annotation_at(model, loc)
        sub = _model_of(field_ann)
        if sub is not None:
            keys = ", ".join(_allowed_keys(sub, ()))
            table = f"[[{dotted(loc)}]]" if _is_list(field_ann) else f"[{dotted(loc)}]"
            return FieldIssue(dotted(loc), f"missing required table '{name}'", f"add a {table} table with {keys}")
        desc = _description_at(model, loc)
        about = f": {desc}" if desc else ""
        return FieldIssue(dotted(loc), f"missing required key '{name}'", f"add `{name} = ...`{about}")

    if kind == "literal_error":
        allowed_values = _literal_values(_annotation_at(model, loc))
        listing = ", ".join(repr(v) for v in allowed_values)
        close = suggest(str(value), [str(v) for v in allowed_values]) if isinstance(value, str) else None
        fix = f"did you mean '{close}'?" if close else f"use one of: {listing}"
        return FieldIssue(dotted(loc), f"{_show(value)} is not allowed; allowed values: {listing}", fix)

    if kind in _TYPE_WORDS:
        want = _TYPE_WORDS[kind]
        return FieldIssue(dotted(loc), f"expected {want}, got {_toml_type(value)} {_show(value)}",
                          _type_fix(want, name))

    if kind in ("model_type", "model_attributes_type", "dict_type"):
        keys = ", ".join(_allowed_keys(model, loc))
        return FieldIssue(dotted(loc), f"expected a table, got {_toml_type(value)} {_show(value)}",
                          f"write it as a [{dotted(loc)}] table with {keys}")

    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        limit = next(iter(ctx.values()), "?")
        return FieldIssue(dotted(loc), f"must be {op} {limit}, got {_show(value)}",
                          f"use a value {op} {limit}")

    if kind in ("string_too_short", "too_short"):
        what = "an empty string" if kind == "string_too_short" else "an empty list"
        return FieldIssue(dotted(loc), f"{what} is not allowed", "give at least one value")

    if kind == "string_pattern_mismatch":
        return FieldIssue(dotted(loc), f"{_show(value)} is not a valid {name}",
                          "use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit")

    return FieldIssue(dotted(loc), str(err["msg"]), None)


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "string_type": "a string",
    "float_type": "a number",
    "list_type": "an array",
}


def _type_fix(want: str, name: str) -> str:
    if want == "an integer":
        return f"write {name} as a whole number without quotes; underscores may group digits: 32_000_000"
    if want == "a boolean":
        return f"write `{name} = true` or `{name} = false` without quotes"
    if want == "a string":
        return f'put the value in double quotes: `{name} = "..."`'
    if want == "an array":
        return f"write it as a list: `[[{name}]]` tables or `{name} = [...]`"
    return f"give {name} as {want}"


#: TOML's name for each kind of value tomllib returns; bool comes before int, since a bool is an int.
_TOML_TYPES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (dict, "table"), (list, "array"),
    ((_dt.date, _dt.time, _dt.datetime), "date/time"),
)


def _toml_type(value: Any) -> str:
    return next((name for kind, name in _TOML_TYPES if isinstance(value, kind)), type(value).__name__)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{...}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- walking a model along an error location ----------------------------------------------------


def _strip_optional(ann: Any) -> Any:
    if get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def _is_list(ann: Any) -> bool:
    return get_origin(_strip_optional(ann)) is list


def _model_of(ann: Any) -> type[BaseModel] | None:
    ann = _strip_optional(ann)
    if get_origin(ann) is list:
        ann = _strip_optional(get_args(ann)[0])
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return None


def _annotation_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> Any:
    """The annotation at ``loc`` (None if the path leaves the model)."""
    ann: Any = model
    for part in loc:
        ann = _strip_optional(ann)
        if isinstance(part, int):
            if get_origin(ann) is not list:
                return None
            ann = get_args(ann)[0]
            continue
        sub = _model_of(ann) if get_origin(ann) is not list else None
        if sub is None or part not in sub.model_fields:
            return None
        ann = sub.model_fields[part].annotation
    return ann


def _allowed_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    sub = _model_of(_annotation_at(model, loc)) if loc else model
    return list(sub.model_fields) if sub is not None else []


def _description_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> str | None:
    if not loc or isinstance(loc[-1], int):
        return None
    parent = _model_of(_annotation_at(model, loc[:-1])) if loc[:-1] else model
    if parent is None or loc[-1] not in parent.model_fields:
        return None
    return parent.model_fields[str(loc[-1])].description


def _literal_values(ann: Any) -> list[Any]:
    ann = _strip_optional(ann)
    if get_origin(ann) is Literal:
        return list(get_args(ann))
    return []
