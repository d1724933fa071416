"""Device fleets: fleet files whose ``[[boards]]`` entries also say where each device is.

A plain fleet file (``name``, ``[[boards]]`` with ``board`` and ``count``) stays valid; an entry
may add where its devices are reached, as a list of pyserial URLs (or one ``url``)::

    name = "lab"

    [[boards]]
    board = "mps2-an386"
    urls = ["socket://127.0.0.1:40111", "socket://127.0.0.1:40112"]   # count defaults to 2

    [[boards]]
    board = "nrf52840"
    url = "/dev/ttyACM0"

The planner's loader (:func:`tinyfed.boards.load_fleet`, used by ``tinyfed plan --fleet``) reads
the same format, including ``url``/``urls``. This module keeps its own model because it is more
lenient in one way: an entry may list fewer URLs than its ``count``, the rest being devices not
linked yet (``tinyfed devices`` lists them as such), where the planner requires one URL per
device. :func:`probe_devices` says HELLO to every device.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tinyfed.boards.schema import MAX_FLEET_DEVICES, check_error
from tinyfed.errors import BoardError, DataFileError, TinyfedError


class DeviceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    board: str = Field(min_length=1, description="board name")
    count: int | None = Field(default=None, ge=1, le=MAX_FLEET_DEVICES,
                              description="devices of this board (default: how many URLs)")
    url: str | None = Field(default=None, min_length=1, description="where the one device is reached")
    urls: list[str] = Field(default_factory=list, description="where each device is reached (pyserial URLs)")

    @model_validator(mode="after")
    def _consistent(self) -> DeviceEntry:
        if self.url is not None and self.urls:
            raise check_error("give url or urls, not both", fix="move url into the urls list")
        if self.count is None and self.url is None and not self.urls:
            raise check_error("an entry needs count, url or urls", fix="add `count = 1` or `urls = [...]`")
        if self.count is not None and len(self.all_urls) > self.count:
            raise check_error(f"{len(self.all_urls)} URLs for count = {self.count}",
                              fix=f"set count = {len(self.all_urls)} or remove URLs")
        return self

    @property
    def all_urls(self) -> list[str]:
        return [self.url] if self.url is not None else list(self.urls)

    @property
    def devices(self) -> int:
        return self.count if self.count is not None else len(self.all_urls)


class DeviceFleetFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(min_length=1)
    description: str | None = None
    boards: list[DeviceEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _each_device_once(self) -> DeviceFleetFile:
        """One URL is one board: listed twice, it would train twice per round and both updates count."""
        where: dict[str, int] = {}
        for i, entry in enumerate(self.boards):
            for url in entry.all_urls:
                if url in where:
                    place = f"in boards[{i}]" if where[url] == i else f"in boards[{where[url]}] and boards[{i}]"
                    raise check_error(f"device URL {url!r} is listed twice ({place})", fix="give each device once")
                where[url] = i
        total = sum(e.devices for e in self.boards)
        if total > MAX_FLEET_DEVICES:
            raise check_error(f"the fleet has {total:,} devices, more than tinyfed runs ({MAX_FLEET_DEVICES:,})",
                              fix="split the fleet, or simulate it with `tinyfed simulate`")
        return self


@dataclass(frozen=True)
class Device:
    """One device of a fleet: its board profile name, a display name and its URL (None: not linked)."""

    board: str
    name: str
    url: str | None


@dataclass(frozen=True)
class DeviceFleet:
    name: str
    devices: list[Device]
    path: Path | None = None
    description: str | None = None

    @property
    def linked(self) -> list[Device]:
        return [d for d in self.devices if d.url is not None]


def load_device_fleet(path: Path | str, extra_dirs: Iterable[Path | str] = ()) -> DeviceFleet:
    """Read a fleet file (or a shipped preset by bare name), with the optional per-entry
    ``url``/``urls``; every problem is reported at once."""
    from tinyfed.boards.fleet import fleet_file, unknown_board_issues
    from tinyfed.boards.registry import boards_by_name
    from tinyfed.boards.validation import read_toml, validate

    path = fleet_file(path)
    data = read_toml(path)
    fleet, issues = validate(DeviceFleetFile, data)
    issues.extend(unknown_board_issues(data, boards_by_name(extra_dirs)))
    if issues or fleet is None:
        raise DataFileError(str(path), issues)
    devices: list[Device] = []
    for entry in fleet.boards:
        urls = entry.all_urls
        for i in range(entry.devices):
            devices.append(Device(entry.board, f"{entry.board}#{i}", urls[i] if i < len(urls) else None))
    return DeviceFleet(fleet.name, devices, path, fleet.description)


def one_url_fleet(url: str) -> DeviceFleet:
    """A fleet of the one device at ``url`` (``--url``); its board kind is the ``sim://`` URL's, else
    left for its HELLO to tell."""
    board = url.split("://", 1)[1].split("?", 1)[0] if url.startswith("sim://") else "?"
    return DeviceFleet(url, [Device(board, "device", url)])


def fleet_or_url(fleet_path: Path | str | None, url: str | None, extra_dirs: Iterable[Path | str] = ()) -> DeviceFleet:
    """The devices a command talks to: a fleet file's (``--fleet``), or one device's (``--url``)."""
    if (fleet_path is None) == (url is None):
        raise BoardError("give exactly one of --fleet FLEET and --url URL",
                         fix="e.g. --fleet fleet.toml (`tinyfed emulate --out` writes one), or --url sim://nrf52840")
    if url is not None:
        return one_url_fleet(url)
    assert fleet_path is not None
    fleet = load_device_fleet(fleet_path, extra_dirs)
    require_urls(fleet)
    return fleet


def require_urls(fleet: DeviceFleet) -> None:
    """Refuse a fleet none of whose devices has a URL (a planning preset such as ``smartwatch``):
    there is nothing to talk to, and the fix is a different fleet, not a retry."""
    if not any(d.url for d in fleet.devices):
        raise BoardError(f"fleet '{fleet.name}' lists board kinds and counts but no device URLs (a fleet to plan "
                         "for, not one to talk to)",
                         fix="give a fleet file whose [[boards]] entries have url/urls (`tinyfed emulate --out "
                             "fleet.toml` writes one), or use simulated boards: --simulate N --board BOARD",
                         source=str(fleet.path))


def write_device_fleet(path: Path | str, name: str, entries: Sequence[tuple[str, Sequence[str]]],
                       description: str | None = None) -> Path:
    """Write a fleet file of ``(board, urls)`` entries (atomically)."""
    lines = [f"name = {_toml_str(name)}"]
    if description:
        lines.append(f"description = {_toml_str(description)}")
    for board, urls in entries:
        lines += ["", "[[boards]]", f"board = {_toml_str(board)}", f"count = {len(urls)}",
                  "urls = [" + ", ".join(_toml_str(u) for u in urls) + "]"]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class DeviceStatus:
    device: Device
    reachable: bool
    hello: dict[str, Any] | None = None
    rtt_s: float | None = None
    error: str | None = None
    error_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.device.name,
            "board": self.device.board,
            "url": self.device.url,
            "reachable": self.reachable,
            "hello": self.hello,
            "rtt_s": self.rtt_s,
            "error": self.error,
            "error_type": self.error_type,
        }


def probe(device: Device, *, timeout: float = 0.5, retries: int = 2, pings: int = 5) -> DeviceStatus:
    """HELLO and a few PINGs to one device; an unreachable device is a status, not an exception."""
    from tinyfed.firmware_bridge.link.client import BoardClient
    from tinyfed.firmware_bridge.link.transport import serial_settings

    if device.url is None:
        return DeviceStatus(device, False, error="no url in the fleet file", error_type="NoUrl")
    try:
        with BoardClient(device.url, timeout=timeout, retries=retries, name=device.name,
                         serial=serial_settings(device.board)) as client:
            info = client.hello()
            rtts = [client.ping(b"tinyfed") for _ in range(max(1, pings))]
    except TinyfedError as exc:
        return DeviceStatus(device, False, error=exc.problem, error_type=type(exc).__name__)
    rtts.sort()
    return DeviceStatus(device, True, hello=info.to_dict(), rtt_s=rtts[len(rtts) // 2])


def probe_devices(devices: Sequence[Device], *, timeout: float = 0.5, retries: int = 2,
                  workers: int = 8) -> list[DeviceStatus]:
    """Probe every device (in parallel threads); results in the order given."""
    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(devices))) as pool:
        out = list(pool.map(lambda d: probe(d, timeout=timeout, retries=retries), devices))
    return out


# -- check: run a fragment on every device and compare with TFLM ---------------------------------


@dataclass(frozen=True)
class Fragment:
    """A frozen int8 fragment: which ops of the model, its .tflite and its compiled blob."""

    label: str
    tflite: bytes
    blob: bytes


def frozen_fragment(tflite: bytes, *, source: str = "<model>") -> Fragment:
    """The whole model as one blob if the firmware can run all of it, else the longest head that it can."""
    from tinyfed.errors import ModelError
    from tinyfed.firmware_bridge.compile.blob import compile_blob
    from tinyfed.models.tflite_graph import TfliteGraph

    try:
        return Fragment("whole model", tflite, compile_blob(tflite, source=source))
    except ModelError as whole:
        first_error = whole
    graph = TfliteGraph.from_bytes(tflite, source=source)
    for k in sorted(graph.cut_points(), reverse=True):
        head = graph.extract(0, k)
        try:
            return Fragment(f"ops 0..{k - 1} (frozen head)", head, compile_blob(head, source=f"{source}[:{k}]"))
        except ModelError:
            continue
    raise first_error


def load_inputs(path: Path | None, tflm_model: Any, samples: int, seed: int = 0) -> np.ndarray:
    """Int8 inputs, batch first: from an .npz (key ``x`` or its only array; float is quantized) or random."""
    from tinyfed.models.tflm import quantize

    d = tflm_model.input_details[0]
    shape = tuple(int(s) for s in d["shape"])
    if path is None:
        rng = np.random.default_rng(seed)
        return rng.integers(-128, 128, size=(samples, *shape[1:]), dtype=np.int8)
    from tinyfed.models.arrays import read_array

    x = read_array(path, key="x")
    if x.shape == shape[1:]:
        x = x[None]
    if tuple(x.shape[1:]) != shape[1:]:
        raise TinyfedError(f"inputs have shape {x.shape}, the fragment takes (batch, {', '.join(map(str, shape[1:]))})",
                           fix="save a batch-first array of model inputs", source=str(path))
    if x.dtype != np.int8:
        if not np.issubdtype(x.dtype, np.floating):
            raise TinyfedError(f"inputs are {x.dtype}", fix="save float32 (quantized here) or int8 inputs",
                               source=str(path))
        bad = int(np.count_nonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
        if bad:  # quantizing would turn them into some int8 value and report a "bit-exact" match on garbage
            raise TinyfedError(f"{bad} of {len(x)} input(s) hold NaN or infinite values",
                               fix="clean or drop those samples", source=str(path))
        q = d["quantization_parameters"]
        x = quantize(x, float(q["scales"][0]), int(q["zero_points"][0]))
    return x[:samples] if samples else x


def check_device(device: Device, fragment: Fragment, x: np.ndarray, expected: np.ndarray, *,
                 timeout: float = 0.5, retries: int = 5) -> dict[str, Any]:
    """Load ``fragment`` onto one device, run every input, compare with ``expected``."""
    from tinyfed.firmware_bridge.link.client import BoardClient
    from tinyfed.firmware_bridge.link.transport import serial_settings

    row: dict[str, Any] = {"name": device.name, "board": device.board, "url": device.url, "samples": 0,
                           "mismatches": 0, "max_abs_diff": None, "error": None, "error_type": None}
    if device.url is None:
        row.update(error="no url in the fleet file", error_type="NoUrl")
        return row
    try:
        with BoardClient(device.url, timeout=timeout, retries=retries, name=device.name,
                         serial=serial_settings(device.board)) as client:
            info = client.hello()
            start = time.monotonic()
            loaded = client.load_fragment(fragment.blob)
            row["load_s"] = time.monotonic() - start
            row["board_id"], row["build"], row["arena_bytes"] = info.board_id, info.build, loaded.arena_bytes
            worst = 0
            cycles = []
            for i in range(len(x)):
                y = client.infer(x[i:i + 1])
                want = expected[i].reshape(-1)
                if y.shape != want.shape:
                    row["mismatches"] += 1
                    worst = max(worst, 256)
                else:
                    diff = int(np.max(np.abs(y.astype(np.int16) - want.astype(np.int16)), initial=0))
                    row["mismatches"] += diff > 0
                    worst = max(worst, diff)
                row["samples"] += 1
                cycles.append(client.last_cycles or 0)
            row["max_abs_diff"] = worst
            row["cycles_median"] = int(np.median(cycles)) if cycles else None
    except TinyfedError as exc:
        row.update(error=exc.problem, error_type=type(exc).__name__)
    return row


def check_devices(devices: Sequence[Device], fragment: Fragment, x: np.ndarray, expected: np.ndarray, *,
                  timeout: float = 0.5, retries: int = 5, workers: int = 8) -> list[dict[str, Any]]:
    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(devices))) as pool:
        return list(pool.map(lambda d: check_device(d, fragment, x, expected, timeout=timeout, retries=retries),
                             devices))
