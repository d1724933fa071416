"""A fuzz test of the CLI's boundary, generated from click's command tree and the pydantic models.

Every option with a range, a choice, a path or a name (model, board, URL) gets values its declared
type says are invalid (below and above the range, NaN, infinities, words, empty and huge strings);
every file option gets bad files (empty, random, truncated, forged bomb headers, a directory, a
70 MB sparse .tflite); the run config, fleet and board TOML files get each field out of its
pydantic bounds, of the wrong type, or unknown. Each case runs the command in-process on an
otherwise valid, cheap command line and must end with a usage error (exit 2; exit 1 where a device
is merely unreachable) that names the option or field, quickly, without an internal error, a
traceback or a Python exception. Values are derived from the declared ranges, so tightening a
range tightens the fuzz.

Commands whose valid run would serve, boot or build (``dashboard``, ``demo``, ``emulate``,
``flash``, ``profile``, ``runs``) are given a base that fails right after click has checked the
options; seeing that failure means the bad value went through (a "sentinel").
"""

from __future__ import annotations

import faulthandler
import io
import json
import math
import sys
import time
import tomllib
import types
import typing
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
import click
import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from tinyfed.cli import cli

sys.path.insert(0, str(Path(__file__).parent))
from _cli_tree import all_commands  # noqa: E402

#: A case slower than this hung past its bound (a bad value must be refused before any work).
SLOW_S = 20.0
#: A case still running after this is stopped by faulthandler, dumping every thread's stack.
HANG_S = 180.0

#: The outcomes counted (the closing note of issue 17 quotes them).
FAILURES = ("internal error", "traceback without -v", "exception escaped", "hang", "exit 0 on bad input",
            "option not named", "wrong exit code")
#: "option not named": not exactly one ``error:`` line (an unreachable device's exit 1 reports it in
#: the device table instead), or none of the option's spellings, the field's
#: key, the file's name or the value in the output.
COUNTS: Counter[str] = Counter()


@dataclass(frozen=True)
class Base:
    """An otherwise valid, cheap command line (``{out}``: a fresh directory; ``{missing}``: a path that is
    not there); ``sentinel``: it fails right after option parsing, and seeing its error means the bad
    value got through."""

    args: tuple[str, ...]
    sentinel: bool = False


BASES: dict[str, Base] = {
    "boards list": Base(()),
    "boards show": Base(("nrf52840",)),
    "check": Base(("digits_cnn", "--url", "sim://mps2-an386", "--samples", "2")),
    "dashboard": Base(("{missing}",), sentinel=True),
    "demo": Base(("--simulate", "2", "--max-windows", "2", "--out", "{out}", "--json", "--jsonl"), sentinel=True),
    "devices": Base(("--url", "sim://mps2-an386")),
    "doctor": Base(()),
    "emulate": Base(("--board", "mps2-an386", "--elf", "{missing}"), sentinel=True),
    "firmware build": Base(("--board", "mps2-an386", "--out", "{out}")),
    "flash": Base(("--board", "mps2-an386"), sentinel=True),
    "keys forget": Base(("00" * 16,)),
    "keys list": Base(()),
    "plan": Base(("digits_cnn", "--board", "nrf52840", "--no-measure", "--out", "{out}")),
    "profile": Base(("digits_cnn", "--board", "nrf52840"), sentinel=True),
    "run": Base(("--simulate", "2", "--model", "digits_cnn", "--max-versions", "1", "--max-windows", "2",
                 "--out", "{out}")),
    "runs compare": Base(("{missing}",), sentinel=True),
    "runs export": Base(("{missing}", "--format", "csv", "--out", "{out}"), sentinel=True),
    "runs list": Base(("{missing}",), sentinel=True),
    "runs show": Base(("{missing}",), sentinel=True),
    "simulate": Base(("--model", "digits_cnn", "--count", "4", "--max-versions", "1", "--strategies", "ftte",
                      "--eval-samples", "64")),
}

#: Options of a base that another option replaces (a fleet instead of one board, say).
EXCLUSIVE = {("plan", "--fleet"): ("--board",), ("check", "--fleet"): ("--url",), ("devices", "--fleet"): ("--url",),
             ("run", "--fleet"): ("--simulate",), ("run", "--emulate"): ("--simulate",),
             ("run", "--resume"): ("--simulate", "--model", "--max-versions", "--max-windows", "--out")}

#: Options a case adds to its base (a held-out split is checked beside a valid training split).
EXTRA = {("run", "--test-data"): ("--data", "@digits.npz")}

#: Options not fuzzed, and why: flags, output switches, free text, and a device a test cannot reach.
SKIPPED = {
    ("profile", "url"): "a real board's port: profiling it is the work",
    ("dashboard", "token"): "any text is a token",
    ("simulate", "address"): "a Ray cluster's address, used only with --backend ray",
    ("flash", "probe_id"): "any probe id; checked by pyOCD against attached probes",
    ("flash", "target_name"): "a pyOCD target name",
    ("emulate", "elf_path"): "the sentinel's own option (tests/test_bad_input.py covers bad ELFs)",
    ("flash", "elf_path"): "read by pyOCD, after the board checks",
    ("profile", "elf_path"): "read by QEMU, after the board checks",
    ("profile", "model"): "loaded after the board check (the sentinel); plan's MODEL is the same loader",
    ("runs compare", "png"): "an output file",
}


def _all_commands() -> list[tuple[str, click.Command]]:
    """Every leaf command (what a user runs), as (path, command)."""
    return all_commands(groups=False)


# -- bad values, from each option's declared type ---------------------------------------------


def _int_values(t: click.ParamType) -> list[tuple[str, str]]:
    out = [("word", "abc"), ("empty", ""), ("fraction", "1.5"), ("nan", "nan"), ("2**64", str(2**64))]
    lo = getattr(t, "min", None)
    hi = getattr(t, "max", None)
    if lo is not None:
        below = lo if getattr(t, "min_open", False) else lo - 1
        out.append(("below", str(below)))
        if -1 < below:
            out.append(("-1", "-1"))
    if hi is not None:
        out.append(("above", str(hi if getattr(t, "max_open", False) else hi + 1)))
    return out


def _float_values(t: click.ParamType) -> list[tuple[str, str]]:
    out = [("nan", "nan"), ("inf", "inf"), ("-inf", "-inf"), ("word", "abc"), ("empty", "")]
    lo = getattr(t, "min", None)
    hi = getattr(t, "max", None)
    if lo is not None:
        out += [("below", repr(float(lo) if getattr(t, "min_open", False) else lo - 1.0)), ("-1e308", "-1e308")]
        if -1 < lo:
            out.append(("-1", "-1"))
    if hi is not None:
        out += [("above", repr(float(hi) if getattr(t, "max_open", False) else hi * 2 + 1.0)), ("1e308", "1e308")]
    return out


MODEL_VALUES = [("empty", ""), ("unknown", "no_such_model"), ("huge", "m" * 5000),
                ("missing .tflite", "{missing}.tflite"),
                ("directory .tflite", "{dir}.tflite"), ("empty .tflite", "@empty.tflite"),
                ("random .tflite", "@random.tflite"), ("truncated .tflite", "@truncated.tflite"),
                ("70 MB sparse .tflite", "@sparse.tflite"), ("garbage .keras", "@garbage.keras"),
                ("an .npz as model", "@forged.npz")]
BOARD_VALUES = [("empty", ""), ("unknown", "no-such-board"), ("huge", "b" * 5000), ("path", "../nrf52840")]
URL_VALUES = [("empty", ""), ("word", "nope"), ("bare sim://", "sim://"), ("negative arena", "sim://nrf52840?arena_bytes=-5"),
              ("bad query value", "sim://nrf52840?arena_bytes=abc"), ("unknown query key", "sim://nrf52840?bogus=1"),
              ("huge arena", "sim://nrf52840?arena_bytes=" + str(2**64)), ("bare socket://", "socket://"),
              ("port 0", "socket://127.0.0.1:0"), ("port 70000", "socket://127.0.0.1:70000"),
              ("bad host", "socket://[::1:80"), ("huge", "u" * 5000)]
NPZ_VALUES = [("missing", "{missing}.npz"), ("directory", "{dir}"), ("empty", "@empty.npz"), ("random", "@random.npz"),
              ("truncated zip", "@truncated.npz"), ("bomb header", "@forged.npz"), ("scalar x", "@scalar.npz"),
              ("NaN inputs", "@nan.npz")]
NPY_VALUES = [("missing", "{missing}.npy"), ("directory", "{dir}"), ("empty", "@empty.npy"), ("random", "@random.npy"),
              ("bomb header", "@forged.npy"), ("an .npz for .npy", "@forged.npz")]
TOML_VALUES = [("missing", "{missing}.toml"), ("directory", "{dir}"), ("random", "@random.toml"),
               ("not TOML", "@syntax.toml")]
FILE_OPTIONS: dict[str, list[tuple[str, str]]] = {
    "data_path": NPZ_VALUES, "test_data_path": NPZ_VALUES, "data": NPZ_VALUES, "representative": NPY_VALUES,
    "config_path": TOML_VALUES,
    "fleet_path": [*TOML_VALUES, ("empty", "@empty.toml"), ("unknown preset", "no-such-fleet"),
                   ("huge name", "f" * 5000)],
}
TEXT_OPTIONS = {"model": MODEL_VALUES, "board_name": BOARD_VALUES, "name": BOARD_VALUES, "url": URL_VALUES,
                "host": [("public address without --token", "0.0.0.0")]}
#: Text options that take any string a command checks itself (what it needs is not a name).
FREE_TEXT = {"strategies", "strategy", "slowdown", "availability", "board_mix", "horizon", "seeds", "partitions"}
FREE_TEXT_VALUES = [("empty", ""), ("word", "nope"), ("huge", "z" * 5000), ("nan", "nan")]


def _values(path: str, param: click.Parameter) -> list[tuple[str, str]]:
    t = param.type
    name = param.name or ""
    if isinstance(t, click.Choice):
        return [("unknown", "no-such-choice"), ("empty", "")]
    if isinstance(t, click.IntRange | click.types.IntParamType) or type(t).__name__ == "_OptionalCount":
        return _int_values(t)
    if isinstance(t, click.FloatRange | click.types.FloatParamType):
        return _float_values(t)
    if isinstance(t, click.Path):
        if name in FILE_OPTIONS:
            return FILE_OPTIONS[name]
        if not t.file_okay:
            return [("a file, not a directory", "@empty.npz")]
        return []
    if name in TEXT_OPTIONS:
        return TEXT_OPTIONS[name]
    if name in FREE_TEXT:
        return FREE_TEXT_VALUES
    return []


@dataclass(frozen=True)
class Case:
    command: str
    target: str  # the option, argument or file field
    label: str
    value: str  # "@name": a bad file made by _files; "{missing}", "{dir}": placeholders
    names: tuple[str, ...]  # any of these in the output names the option
    config: dict[str, Any] | None = None  # a TOML file given to ``option``
    option: str = ""

    @property
    def id(self) -> str:
        return f"{self.command}|{self.target}|{self.label}"


def _option_cases() -> list[Case]:
    cases = []
    for path, cmd in _all_commands():
        for param in cmd.params:
            if getattr(param, "is_flag", False) or getattr(param, "hidden", False) or getattr(param, "count", False):
                continue
            if (path, param.name) in SKIPPED:
                continue
            flag = param.opts[0] if isinstance(param, click.Option) else ""
            names = (*param.opts, (param.name or "").replace("_", "-"), param.human_readable_name)
            for label, value in _values(path, param):
                cases.append(Case(path, flag or param.human_readable_name, label, value, names, option=flag))
    return cases


# -- bad TOML files, from the pydantic models ------------------------------------------------------


def _bounds(info: Any) -> dict[str, float]:
    found: dict[str, float] = {}
    for m in info.metadata:
        for key in ("ge", "gt", "le", "lt"):
            if isinstance(m, getattr(annotated_types, key.capitalize())):
                found[key] = getattr(m, key)
    return found


def _plain(annotation: Any) -> Any:
    """``X | None`` -> X."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _field_values(info: Any) -> list[tuple[str, Any]]:
    kind = _plain(info.annotation)
    b = _bounds(info)
    if kind is bool:
        return [("string for bool", "yes")]
    if kind is int:
        out: list[tuple[str, Any]] = [("word", "abc"), ("float for int", 1.5)]
        if "ge" in b:
            out.append(("below", b["ge"] - 1))
        if "gt" in b:
            out.append(("below", b["gt"]))
        if "le" in b:
            out.append(("above", b["le"] + 1))
        if "lt" in b and b["lt"] < 2**63:
            out.append(("above", b["lt"]))
        return out
    if kind is float:
        out = [("word", "abc"), ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)]
        if "ge" in b:
            out.append(("below", float(b["ge"]) - 1))
        if "gt" in b:
            out.append(("below", float(b["gt"])))
        if "le" in b:
            out.append(("above", float(b["le"]) * 2 + 1))
        if "lt" in b:
            out.append(("above", float(b["lt"])))
        return out
    if kind is str or typing.get_origin(kind) in (typing.Literal, typing.Annotated):
        empty = any(isinstance(m, annotated_types.MinLen) for m in info.metadata) or typing.get_origin(kind)
        return [("int for string", 5), *([("empty", "")] if empty else [])]
    return [("int for table or list", 5)]


def _submodel(annotation: Any) -> type[BaseModel] | None:
    kind = _plain(annotation)
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _model_mutations(model: type[BaseModel], at: tuple[Any, ...] = ()) -> list[tuple[str, tuple[Any, ...], Any]]:
    """(label, key path, bad value) for every field of ``model`` and its tables; ``...`` deletes."""
    out: list[tuple[str, tuple[Any, ...], Any]] = [("unknown key", (*at, "no_such_key"), 1)]
    for name, info in model.model_fields.items():
        sub = _submodel(info.annotation)
        if typing.get_origin(info.annotation) is list and _submodel(typing.get_args(info.annotation)[0]):
            out.append(("empty list", (*at, name), []))
            out += _model_mutations(typing.get_args(info.annotation)[0], (*at, name, 0))
        elif sub is not None:
            out.append(("not a table", (*at, name), 5))
            out += _model_mutations(sub, (*at, name))
        else:
            out += [(label, (*at, name), value) for label, value in _field_values(info)]
    return out


def _set(doc: dict[str, Any], keys: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    node: Any = doc
    for k in keys[:-1]:
        node = node.setdefault(k, {}) if isinstance(k, str) else node[k]
    node[keys[-1]] = value
    return doc


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list) and all(not isinstance(x, dict) for x in v):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(doc: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer: scalars and lists first, then tables and arrays of tables."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))]
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            lines += ["", f"[{key}]", to_toml(v, key + ".")]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines += ["", f"[[{key}]]", to_toml(item, key + ".")]
    return "\n".join(lines)


def _file_cases() -> list[Case]:
    from tinyfed.boards.registry import BUILTIN_DIR
    from tinyfed.boards.schema import Board, Fleet
    from tinyfed.host.config import RunConfig

    cases = []
    run_base = {"model": "digits_cnn", "limits": {"max_versions": 1}}
    for label, keys, value in _model_mutations(RunConfig):
        doc = _set(run_base, keys, value)
        key = ".".join(str(k) for k in keys)
        cases.append(Case("run", f"--config {key}", f"{label} {value!r}", "", (keys[-1], keys[-1].replace("_", "-")),
                          config=doc, option="--config"))
    fleet_base = {"name": "fuzz", "boards": [{"board": "nrf52840", "count": 2}]}
    for label, keys, value in _model_mutations(Fleet):
        doc = _set(fleet_base, keys, value)
        key = ".".join(str(k) for k in keys)
        names = tuple(str(k) for k in keys if isinstance(k, str))
        cases.append(Case("plan", f"--fleet {key}", f"{label} {value!r}", "", names[-1:], config=doc,
                          option="--fleet"))
    for count in (0, -1, 100_001, 10**8):
        doc = _set(fleet_base, ("boards", 0, "count"), count)
        cases.append(Case("plan", "--fleet boards.0.count", f"count {count}", "", ("count",), config=doc,
                          option="--fleet"))
    board_base = tomllib.loads((BUILTIN_DIR / "nrf52840.toml").read_text()) | {"name": "fuzzboard"}
    for label, keys, value in _model_mutations(Board):
        if keys == ("name",):
            continue  # a renamed board is another board: `boards show fuzzboard` says it is unknown
        doc = _set(board_base, keys, value)
        key = ".".join(str(k) for k in keys)
        cases.append(Case("boards show", f"--boards-dir {key}", f"{label} {value!r}", "",
                          (str(keys[-1]), "fuzzboard"), config=doc, option="--boards-dir"))
    return cases


CASES = _option_cases() + _file_cases()


# -- the bad files -----------------------------------------------------------------------------


def _forged_array(shape: tuple[int, ...]) -> bytes:
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return head.getvalue() + np.zeros(128, np.float32).tobytes()


def _make_files(d: Path) -> None:
    rng = np.random.default_rng(17)
    random = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for ext in ("tflite", "npz", "npy", "toml"):
        (d / f"empty.{ext}").write_bytes(b"")
        (d / f"random.{ext}").write_bytes(random)
    (d / "truncated.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + random[:200])
    with open(d / "sparse.tflite", "wb") as f:  # 70 MB that take no disk: over the 64 MiB model bound
        f.write(b"\x1c\x00\x00\x00TFL3")
        f.truncate(70 * 2**20)
    (d / "garbage.keras").write_bytes(random)
    (d / "truncated.npz").write_bytes(b"PK\x03\x04" + random[:100])
    with zipfile.ZipFile(d / "forged.npz", "w") as zf:  # a header claiming 238 GiB over 512 bytes
        zf.writestr("x.npy", _forged_array((10**9, 8, 8, 1)))
        zf.writestr("y.npy", _forged_array((10**9,)))
    (d / "forged.npy").write_bytes(_forged_array((10**9, 8, 8, 1)))
    np.savez(d / "scalar.npz", x=np.float32(1.0), y=np.int64(0))
    x = np.zeros((4, 8, 8, 1), np.float32)
    x[0, 0, 0, 0] = np.nan
    np.savez(d / "nan.npz", x=x, y=np.zeros(4, np.int64))
    np.savez(d / "digits.npz", x=rng.random((16, 8, 8, 1), np.float32), y=np.arange(16) % 10)
    (d / "syntax.toml").write_text("this is [not toml\n")
    (d / "dir").mkdir()
    (d / "dir.tflite").mkdir()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzz-files")
    _make_files(d)
    return d


#: Bases that are run once as they are and must succeed (exit 0; a run may stop short of its target,
#: exit 1): a broken base would let every case pass. ``firmware build`` is left out (it compiles).
VALID_BASES = ("boards list", "boards show", "check", "devices", "plan", "run", "simulate")


@pytest.fixture(scope="module")
def valid_bases(tmp_path_factory: pytest.TempPathFactory, files: Path) -> None:
    """Each VALID_BASES command line, run once untimed: it is valid, and the zoo model is loaded before the
    cases are timed."""
    for command in VALID_BASES:
        d = tmp_path_factory.mktemp("base")
        result = _invoke([*command.split(), *_fill(BASES[command].args, d, files)])
        assert result.exit_code in ((0, 1) if command == "run" else (0,)), (command, result.output[-2000:])
        assert "internal error" not in result.output and "Traceback" not in result.output, result.output


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The error each sentinel base ends with when nothing is wrong with the options (its directory
    written ``{work}``: each case has its own)."""
    found = {}
    for command, base in BASES.items():
        if base.sentinel:
            d = tmp_path_factory.mktemp("sentinel")
            result = _invoke([*command.split(), *_fill(base.args, d, d)])
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert result.exit_code not in (0, 3) and lines, (command, result.output)
            found[command] = lines[-1].replace(str(d), "{work}")
            again = tmp_path_factory.mktemp("sentinel")  # the sentinel is recognised in another case's directory
            result = _invoke([*command.split(), *_fill(base.args, again, again)])
            assert found[command].replace("{work}", str(again)) in result.output, (command, result.output)
    return found


def _fill(args: tuple[str, ...] | list[str], work: Path, files: Path) -> list[str]:
    out = []
    for a in args:
        if a.startswith("@"):
            a = str(files / a[1:])
        out.append(a.replace("{out}", str(work / "out")).replace("{missing}", str(work / "missing"))
                   .replace("{dir}", str(files / "dir")))
    return out


def _drop(base: list[str], options: tuple[str, ...]) -> list[str]:
    """``base`` without ``options`` and their values."""
    out, skip = [], False
    for a in base:
        if skip:
            skip = False
        elif a in options:
            skip = True
        else:
            out.append(a)
    return out


def _with(base: list[str], option: str, value: str, positional: bool) -> list[str]:
    """``base`` with ``option`` set to ``value`` (an argument replaces the base's first)."""
    if positional:
        return [value, *base[1:]] if base and not base[0].startswith("-") else [value, *base]
    return [*base, option, value]


def _invoke(argv: list[str]) -> Any:
    return CliRunner().invoke(cli, argv, catch_exceptions=True)


def classify(result: Any, elapsed: float, names: tuple[str, ...], sentinel: str | None,
             unreachable_ok: bool) -> str | None:
    """The failure class of one case's result, or None for a clean refusal."""
    out = result.output
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    if escaped:
        return "exception escaped"
    if result.exit_code == 3 or "internal error" in out:
        return "internal error"
    if "Traceback" in out:
        return "traceback without -v"
    if elapsed > SLOW_S:
        return "hang"
    if result.exit_code == 0 or (sentinel is not None and sentinel in out):
        return "exit 0 on bad input"
    if result.exit_code != 2 and not (unreachable_ok and result.exit_code == 1):
        return "exit 0 on bad input" if result.exit_code == 1 else "wrong exit code"
    said = [line for line in out.splitlines() if line.lower().startswith("error:")]
    if (result.exit_code == 2 and len(said) != 1) or not any(n and n in out for n in names):
        return "option not named"
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line(case: Case, files: Path, sentinels: dict[str, str], valid_bases: None,
                                          tmp_path: Path) -> None:
    base = _drop(_fill(BASES[case.command].args, tmp_path, files), EXCLUSIVE.get((case.command, case.option), ()))
    base += _fill(EXTRA.get((case.command, case.option), ()), tmp_path, files)
    names = case.names
    if case.config is not None:
        if case.option == "--boards-dir":
            boards = tmp_path / "boards"
            boards.mkdir()
            (boards / "fuzzboard.toml").write_text(to_toml(case.config))
            argv = [*case.command.split(), "fuzzboard", *base[1:], "--boards-dir", str(boards)]
        else:
            path = tmp_path / "fuzz.toml"
            path.write_text(to_toml(case.config))
            argv = [*case.command.split(), *base, case.option, str(path)]
            if case.command == "run":  # the config says the model and the limit; the command line must not
                argv = [a for a in argv if a not in ("--model", "digits_cnn", "--max-versions", "1")]
    else:
        value = _fill([case.value], tmp_path, files)[0]
        argv = [*case.command.split(), *_with(base, case.option, value, positional=not case.option)]
        if case.value.startswith("@") or "{" in case.value:
            names = (*names, Path(value).name)
        elif len(case.value) >= 8:  # long enough not to match by chance
            names = (*names, case.value[:40])
        else:
            names = (*names, f"'{case.value}'")
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    try:
        start = time.perf_counter()
        result = _invoke(argv)
        elapsed = time.perf_counter() - start
    finally:
        faulthandler.cancel_dump_traceback_later()
    sentinel = sentinels.get(case.command)
    failure = classify(result, elapsed, names, sentinel and sentinel.replace("{work}", str(tmp_path)),
                       unreachable_ok=case.target == "--url")
    COUNTS["cases"] += 1
    if failure is not None:
        COUNTS[failure] += 1
    assert failure is None, (f"{failure}: tinyfed {' '.join(a[:60] for a in argv)} -> exit {result.exit_code} "
                             f"in {elapsed:.1f} s\n{result.output[-2000:]}\n{result.exception!r}")


def test_classify_tells_each_failure_from_a_clean_refusal() -> None:
    """The fuzz's judge, on made-up results: each failure class is seen, a one-line refusal is not."""
    def result(code: int, output: str, exc: BaseException | None = None) -> Any:
        return types.SimpleNamespace(exit_code=code, output=output, exception=exc)

    names = ("--lr",)
    assert classify(result(2, "Error: Invalid value for '--lr': nan\n", SystemExit(2)), 0.1, names, None,
                    False) is None
    assert classify(result(0, "done\n"), 0.1, names, None, False) == "exit 0 on bad input"
    assert classify(result(1, "run stopped\n", SystemExit(1)), 0.1, names, None, False) == "exit 0 on bad input"
    assert classify(result(2, "error: x. Fix: y\n", SystemExit(2)), 0.1, names, "error: x. Fix: y",
                    False) == "exit 0 on bad input"
    assert classify(result(3, "error: internal error ValueError\n"), 0.1, names, None, False) == "internal error"
    assert classify(result(2, "Traceback (most recent call last):\n--lr"), 0.1, names, None,
                    False) == "traceback without -v"
    assert classify(result(1, "", ValueError("boom")), 0.1, names, None, False) == "exception escaped"
    assert classify(result(2, "error: --lr\n", SystemExit(2)), SLOW_S + 1, names, None, False) == "hang"
    assert classify(result(2, "error: something\n", SystemExit(2)), 0.1, names, None, False) == "option not named"
    assert classify(result(1, "device unreachable --lr", SystemExit(1)), 0.1, names, None, True) is None


def test_every_numeric_option_declares_its_range() -> None:
    """The fuzz derives its values from the declared ranges: a plain int or float option has none."""
    plain = [f"{path} {p.opts[0]}" for path, cmd in _all_commands() for p in cmd.params
             if isinstance(p.type, click.types.IntParamType | click.types.FloatParamType)
             and not isinstance(p.type, click.types._NumberRangeBase)]
    assert not plain, plain
    from tinyfed.commands.options import FiniteFloatRange

    infinite = [f"{path} {p.opts[0]}" for path, cmd in _all_commands() for p in cmd.params
                if isinstance(p.type, click.FloatRange) and not isinstance(p.type, FiniteFloatRange)]
    assert not infinite, f"click's FloatRange takes nan: use FiniteFloatRange for {infinite}"


def test_every_command_has_a_base() -> None:
    assert {path for path, _ in _all_commands()} == set(BASES)


def test_fuzz_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """The counts, printed for the closing note (the module's last test; under xdist, its worker's share)."""
    summary = ", ".join(f"{COUNTS[k]} {k}" for k in FAILURES)
    with capsys.disabled():
        print(f"\nfuzz: {COUNTS['cases']} cases, {summary}")
    assert all(COUNTS[k] == 0 for k in FAILURES), summary
