"""The wire constants of the C firmware agree with the host's Python modules, in both directions.

The Python modules are the single source of the protocol (``link/framing.py``: commands,
statuses, load targets, frame sizes), of the TFMB / TFTR / TFDS formats (``compile/blob.py``,
``compile/train_blob.py``, ``compile/local_data.py``) and of the op codes (``OP_CODES``). The
firmware repeats them in C. This test reads the C files with a small reader (``#define NAME
value`` and ``enum { NAME = value, ... }``, values evaluated when they are integer or string
literals or arithmetic on earlier names) and fails on any difference: a value that differs, a C
constant with no Python counterpart, or a Python constant with no C one. Constants that exist on
one side by design are listed below with the reason.
"""

from __future__ import annotations

import ast
import operator
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tinyfed.firmware_bridge.compile import blob, local_data, train_blob
from tinyfed.firmware_bridge.compile.blob import OP_CODES
from tinyfed.firmware_bridge.link import framing, keys, profile_link
from tinyfed.firmware_bridge.link.framing import AuthDetail, Command, LoadTarget, Status

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"

#: The firmware files that hold wire constants.
C_FILES = (
    "src/protocol.h",
    "src/auth.h",
    "src/train.h",
    "src/profile.h",
    "src/local_data.c",
    "engine/tfmb.h",
    "engine/tfmb_internal.h",
    "engine/tftr.h",
    "engine/tftr_internal.h",
)

Value = int | bytes | None  # None: a C macro the reader does not evaluate (a macro call)

# --------------------------------------------------------------------------------------
# The C reader
# --------------------------------------------------------------------------------------

_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)(\(?)[ \t]*(.*)$", re.MULTILINE)
_ENUM = re.compile(r"\benum\b[^{;]*\{([^}]*)\}", re.DOTALL)
_INT = re.compile(r"^(0[xX][0-9a-fA-F]+|\d+)[uUlL]*$")
_BINOPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.LShift: operator.lshift,
    ast.BitOr: operator.or_,
}


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", text)


def _evaluate(expr: str, known: dict[str, Value]) -> Value:
    """An integer literal (C suffixes allowed), a string literal, or + - * << | on those and earlier names."""
    expr = expr.strip()
    if re.fullmatch(r'"[^"\\]*"', expr):
        return expr[1:-1].encode()
    expr = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", expr)
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        return None

    def walk(node: ast.expr) -> int | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            value = known.get(node.id)
            return value if isinstance(value, int) else None
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = walk(node.left), walk(node.right)
            return None if left is None or right is None else _BINOPS[type(node.op)](left, right)
        return None

    return walk(tree)


def read_c_constants(text: str) -> dict[str, Value]:
    """Object-like ``#define``s that have a value, and enum members, of one C file."""
    text = _strip_comments(text)
    found: dict[str, Value] = {}
    for name, paren, body in _DEFINE.findall(text):
        if paren or not body.strip():
            continue  # function-like macro, or an include guard / flag without a value
        found[name] = _evaluate(body, found)
    for members in _ENUM.findall(text):
        following = 0
        for member in filter(None, (m.strip() for m in members.split(","))):
            name, _, expr = (part.strip() for part in member.partition("="))
            value = _evaluate(expr, found) if expr else following
            found[name] = value
            following = value + 1 if isinstance(value, int) else 0
    return found


def firmware_constants(root: Path = FIRMWARE) -> dict[str, Value]:
    """Every wire-constant candidate of the firmware, by C name (the names are unique across files)."""
    constants: dict[str, Value] = {}
    for rel in C_FILES:
        for name, value in read_c_constants((root / rel).read_text()).items():
            assert name not in constants, f"{name} is defined in two firmware files"
            constants[name] = value
    return constants


# --------------------------------------------------------------------------------------
# The Python side and the mapping
# --------------------------------------------------------------------------------------


def _module_constants(module: ModuleType) -> dict[str, int | bytes]:
    """UPPER_CASE module-level ints and bytes: a format module's wire constants."""
    return {name: value for name, value in vars(module).items()
            if name.isupper() and isinstance(value, int | bytes) and not isinstance(value, bool)}


def _class_constants(cls: type) -> dict[str, int | bytes]:
    return {name: value for name, value in vars(cls).items() if name.isupper() and isinstance(value, int)}


def python_namespaces() -> dict[str, dict[str, int | bytes]]:
    return {
        "framing": _module_constants(framing),
        "Command": _class_constants(Command),
        "Status": _class_constants(Status),
        "AuthDetail": _class_constants(AuthDetail),
        "keys": _module_constants(keys),
        "LoadTarget": _class_constants(LoadTarget),
        "blob": _module_constants(blob),
        "OP_CODES": dict(OP_CODES),
        "train_blob": _module_constants(train_blob),
        "ACT_CODES": {k: v for k, v in train_blob.ACT_CODES.items() if isinstance(k, str)},
        "local_data": _module_constants(local_data),
        "profile_link": _module_constants(profile_link),
    }


@dataclass(frozen=True)
class Group:
    """C constants whose name matches ``pattern`` (group 1 = the Python name before ``renames``)
    correspond to the Python namespace ``namespace``. The first matching group claims a name."""

    pattern: str
    namespace: str
    renames: tuple[tuple[str, str], ...] = ()


GROUPS = (
    Group(r"CMD_(\w+)", "Command"),
    Group(r"ST_(\w+)", "Status"),
    Group(r"PROTO_(\w+)", "framing", (("VERSION", "PROTOCOL_VERSION"), ("MAX_PAYLOAD", "DEFAULT_MAX_PAYLOAD"),
                                      ("SEQ_NONE", "NAK_SEQ"))),
    Group(r"LOAD_TARGET_(\w+)", "LoadTarget"),
    Group(r"AUTH_(\w+)", "AuthDetail"),
    Group(r"KEYPAGE_(\w+)", "keys", (("MAGIC", "KEY_PAGE_MAGIC"), ("BYTES", "KEY_PAGE_BYTES"))),
    # tfmb.h: the engines' statuses are protocol statuses
    Group(r"TFMB_(OK|OUT_OF_MEMORY|UNSUPPORTED_OP|WRONG_VERSION|NO_MODEL|BAD_MODEL)", "Status"),
    Group(r"TFMB_OP_(?!BYTES$)(\w+)", "OP_CODES"),
    Group(r"TFMB_(\w+)", "blob", (("NPARAMS", "N_PARAMS"),)),
    Group(r"TFTR_ACT_(\w+)", "ACT_CODES"),
    Group(r"TFTR_(\w+)", "train_blob", (("NPARAMS", "N_PARAMS"),)),
    Group(r"TFDS_(\w+)", "local_data"),
    Group(r"PROFILE_(\w+)", "profile_link"),
)

#: C constants with no Python counterpart, and why.
C_ONLY = {
    "PROTO_MAX_PACKET": "the board's receive buffer: DEFAULT_MAX_PAYLOAD + OVERHEAD (checked below)",
    "PROTO_MAX_ENCODED": "COBS_MAX_ENCODED(PROTO_MAX_PACKET): a buffer size",
    "PROTO_MESSAGE_MAX": "the board truncates its error messages; the host reads any length",
    "PROTO_MAX_BODY": "PROTO_MAX_PAYLOAD - PROTO_TAG_BYTES: the board's bound on a tagged answer's body",
    "TFMB_MAX_DIM": "a bound of the board's validation (TFLite's own limits are lower)",
    "TFMB_MAX_STRIDE": "a bound of the board's validation",
    "TFMB_CORE": "build-time kernel selection, not on the wire",
    "TFMB_CORE_C": "build-time kernel selection",
    "TFMB_CORE_DSP": "build-time kernel selection",
    "TFMB_CORE_MVE": "build-time kernel selection",
    "TFMB_DW_DSP_MAX_TAPS": "which depthwise filters the DSP kernel runs (the others the reference): not on the wire",
}

#: Python constants with no C counterpart, as "namespace.NAME", and why.
PYTHON_ONLY = {
    "framing.PRE_HELLO_PAYLOAD": "the host's own limit before HELLO; the board takes up to max_payload",
    "framing.DELIMITER": "COBS's zero byte; cobs.c and protocol.c use 0x00, which COBS itself fixes",
    "keys.STORE_FORMAT": "the host's key-store file format; never on a board",
}


def differences(c: dict[str, Value], py: dict[str, dict[str, int | bytes]]) -> list[str]:
    """Every disagreement between the C constants ``c`` and the Python namespaces ``py``."""
    problems: list[str] = []
    matched: set[tuple[str, str]] = set()
    for c_name, c_value in sorted(c.items()):
        group = next((g for g in GROUPS if re.fullmatch(g.pattern, c_name)), None)
        if c_name in C_ONLY:
            continue
        if group is None:
            problems.append(f"C {c_name} belongs to no group: map it to a Python constant or list it in C_ONLY")
            continue
        key = re.fullmatch(group.pattern, c_name).group(1)  # type: ignore[union-attr]
        py_name = dict(group.renames).get(key, key)
        space = py[group.namespace]
        if py_name not in space:
            problems.append(f"C {c_name} = {c_value!r} has no Python {group.namespace}.{py_name}")
            continue
        matched.add((group.namespace, py_name))
        if c_value != space[py_name]:
            problems.append(f"C {c_name} = {c_value!r} but Python {group.namespace}.{py_name} = {space[py_name]!r}")
    for namespace, space in sorted(py.items()):
        for py_name in sorted(space):
            if (namespace, py_name) in matched or f"{namespace}.{py_name}" in PYTHON_ONLY:
                continue
            problems.append(f"Python {namespace}.{py_name} = {space[py_name]!r} has no C constant")
    return problems


# --------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------


def test_firmware_and_python_agree() -> None:
    problems = differences(firmware_constants(), python_namespaces())
    assert not problems, "C and Python wire constants disagree:\n" + "\n".join(problems)


def test_derived_c_sizes() -> None:
    c = firmware_constants()
    assert c["PROTO_MAX_PACKET"] == framing.DEFAULT_MAX_PAYLOAD + framing.OVERHEAD
    assert c["PROTO_HEADER_BYTES"] == framing.HEADER.size and c["PROTO_CRC_BYTES"] == 4  # the CRC-32
    assert c["PROTO_OVERHEAD"] == framing.HEADER.size + 4


def test_every_group_and_exception_is_used() -> None:
    """No stale entry: each group claims a C constant, each one-sided name exists."""
    c = firmware_constants()
    for group in GROUPS:
        assert any(re.fullmatch(group.pattern, name) for name in c if name not in C_ONLY), group
    assert set(C_ONLY) <= set(c)
    py = python_namespaces()
    for entry in PYTHON_ONLY:
        namespace, _, name = entry.partition(".")
        assert name in py[namespace], entry


def test_python_op_codes_and_names_agree() -> None:
    assert {v: k for k, v in OP_CODES.items()} == blob.OP_NAMES
    assert getattr(train_blob, "OP_CODES", OP_CODES) == OP_CODES  # the training compiler's op codes, if it names them
    assert {v: k for k, v in _class_constants(Command).items()} == Command.NAMES
    assert {v: k for k, v in _class_constants(Status).items()} == Status.NAMES


# --------------------------------------------------------------------------------------
# The reader and the comparison can fail
# --------------------------------------------------------------------------------------

_HEADER = """
/* a comment with #define FAKE 1 inside */
#define GUARD_H
#define PROTO_VERSION 1u  // trailing
#define PROTO_HEADER_BYTES 5u
#define PROTO_CRC_BYTES 4u
#define PROTO_OVERHEAD (PROTO_HEADER_BYTES + PROTO_CRC_BYTES)
#define TFMB_MAGIC "TFMB"
#define CALL(x) ((x) + 1)
#define PROTO_MAX_ENCODED CALL(3)
enum codes {
    CMD_A = 0x01,
    CMD_B,
    CMD_C = 0x10, /* comment */
};
"""


def test_reader_reads_defines_and_enums() -> None:
    got = read_c_constants(_HEADER)
    assert got == {
        "PROTO_VERSION": 1, "PROTO_HEADER_BYTES": 5, "PROTO_CRC_BYTES": 4, "PROTO_OVERHEAD": 9, "TFMB_MAGIC": b"TFMB",
        "PROTO_MAX_ENCODED": None, "CMD_A": 1, "CMD_B": 2, "CMD_C": 16,
    }


def _mutated_firmware(tmp_path: Path, rel: str, old: str, new: str) -> dict[str, Value]:
    for name in C_FILES:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        text = (FIRMWARE / name).read_text()
        if name == rel:
            assert old in text, (rel, old)
            text = text.replace(old, new)
        target.write_text(text)
    return firmware_constants(tmp_path)


@pytest.mark.parametrize(
    ("rel", "old", "new", "expected"),
    [
        ("src/protocol.h", "CMD_PING = 0x02,", "CMD_PING = 0x05,", "C CMD_PING = 5 but Python Command.PING = 2"),
        ("src/protocol.h", "    ST_NO_UPDATE = 15,\n", "", "Python Status.NO_UPDATE = 15 has no C constant"),
        ("src/protocol.h", "CMD_EVALUATE = 0x43,", "CMD_EVALUATE = 0x43,\n    CMD_EXTRA = 0x44,",
         "C CMD_EXTRA = 68 has no Python Command.EXTRA"),
        ("src/protocol.h", "#define PROTO_CRC_BYTES 4u", "#define PROTO_CRC_BYTES 2u",
         "C PROTO_CRC_BYTES = 2 but Python framing.CRC_BYTES = 4"),
        ("engine/tfmb_internal.h", "#define TFMB_OP_SOFTMAX 25u", "#define TFMB_OP_SOFTMAX 26u",
         "C TFMB_OP_SOFTMAX = 26 but Python OP_CODES.SOFTMAX = 25"),
        ("engine/tfmb_internal.h", '#define TFMB_MAGIC "TFMB"', '#define TFMB_MAGIC "TFMX"',
         "C TFMB_MAGIC = b'TFMX' but Python blob.MAGIC = b'TFMB'"),
        ("engine/tftr_internal.h", "#define TFTR_UNIT_BYTES 24u", "#define TFTR_UNIT_BYTES 28u",
         "C TFTR_UNIT_BYTES = 28 but Python train_blob.UNIT_BYTES = 24"),
        ("src/local_data.c", "#define TFDS_HEADER_BYTES 32u", "#define TFDS_HEADER_BYTES 36u",
         "C TFDS_HEADER_BYTES = 36 but Python local_data.HEADER_BYTES = 32"),
        ("src/train.h", "#define LOAD_TARGET_DATA 2u\n", "#define LOAD_TARGET_DATA 2u\n#define NEW_THING 7u\n",
         "C NEW_THING belongs to no group"),
    ],
)
def test_a_changed_c_file_is_caught(tmp_path: Path, rel: str, old: str, new: str, expected: str) -> None:
    problems = differences(_mutated_firmware(tmp_path, rel, old, new), python_namespaces())
    assert any(p.startswith(expected) for p in problems), problems


def test_a_changed_python_constant_is_caught() -> None:
    py = python_namespaces()
    py["Command"] = {**py["Command"], "TRAIN": 0x44}
    py["local_data"] = {**py["local_data"], "SOMETHING_NEW": 3}
    problems = differences(firmware_constants(), py)
    assert "C CMD_TRAIN = 65 but Python Command.TRAIN = 68" in problems
    assert "Python local_data.SOMETHING_NEW = 3 has no C constant" in problems


def test_task_codes_agree_across_formats() -> None:
    """The target kinds are one set of codes in TFDS and TFTR, C and Python; every task maps to a
    loss and a target kind the program accepts; the C reader takes the loss fields at the offsets
    the Python header packs them."""
    from tinyfed.training.task import Loss, Task, loss_of

    c = firmware_constants()
    for name in ("CLASS", "LABELS", "REAL", "INPUT"):
        codes = {c[f"TFDS_TARGET_{name}"], c[f"TFTR_TARGET_{name}"], getattr(local_data, f"TARGET_{name}"),
                 getattr(train_blob, f"TARGET_{name}")}
        assert len(codes) == 1, name
    assert set(train_blob.LOSS_CODES) == set(Loss)
    for task in Task:
        code = train_blob.LOSS_CODES[loss_of(task)]
        assert local_data.target_kind(task) in train_blob.LOSS_TARGETS[code], task
    fmt = train_blob._HEADER.format
    prefix = fmt[: fmt.index("BBxxfi")]
    at = struct.calcsize(prefix)
    assert (at, struct.calcsize(prefix + "BBxx"), struct.calcsize(prefix + "BBxxf")) == (84, 88, 92)
    reader = (FIRMWARE / "engine/tftr.c").read_text()
    for read in ("v.loss = blob[84]", "v.target_kind = blob[85]", "tftr_rdf(blob + 88)", "tfmb_rd32(blob + 92)"):
        assert read in reader, read
    assert local_data._HEADER.format.endswith("IB11x") and struct.calcsize(local_data._HEADER.format[:-4]) == 20
    assert "uint8_t k = d[20];" in (FIRMWARE / "src/local_data.c").read_text()
