"""Pydantic models for board profiles and fleet files.

Board profiles are TOML files (see ``docs/boards.md``); sizes are whole KiB, exposed as bytes
through properties. Every model forbids unknown keys and is strict about types (TOML already
has integers, booleans and strings, so nothing needs coercing). Cross-field checks are written
as field validators that raise :func:`check_error`, so each problem gets its own dotted key
and all problems of a file can be reported together (see :mod:`tinyfed.boards.validation`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

KIB = 1024
#: Erase page the firmware's flash stores are aligned to (firmware/boards/common/sections.ld).
FLASH_PAGE_BYTES = 4096

Core = Literal["cortex-m0plus", "cortex-m4f", "cortex-m33", "cortex-m55", "cortex-m7", "xtensa-lx7"]
Fpu = Literal["none", "sp", "dp"]
ReserveSource = Literal["estimate", "linker-map"]
LinkKind = Literal["uart", "usb"]
#: Character framing of a serial link: 8 data bits (the protocol is binary), parity, stop bits.
Framing = Literal["8N1", "8E1", "8O1", "8N2"]
#: Flow control of a serial link; never XON/XOFF, which would eat 0x11/0x13 bytes of binary frames.
FlowControl = Literal["none", "rtscts"]

CORES: tuple[str, ...] = get_args(Core)
FPUS: tuple[str, ...] = get_args(Fpu)

#: Which ``fpu`` values each core can actually have ("dp" means double precision, which
#: includes single precision). A Cortex-M4F has the FPv4-SP unit by definition; the M55's
#: optional FPU is always half/single/double precision; the M0+ has none.
FPU_BY_CORE: dict[str, tuple[str, ...]] = {
    "cortex-m0plus": ("none",),
    "cortex-m4f": ("sp",),
    "cortex-m33": ("none", "sp"),
    "cortex-m55": ("none", "dp"),
    "cortex-m7": ("none", "sp", "dp"),
    "xtensa-lx7": ("none", "sp"),
}

#: Error type used for cross-field checks; its context carries the problem, the fix and the
#: key path below the validator's location.
CHECK_ERROR = "tinyfed_check"


def check_error(problem: str, *, fix: str, key: tuple[str | int, ...] = ()) -> PydanticCustomError:
    """A validation error for a cross-field check, with its own fix and (sub)key."""
    return PydanticCustomError(CHECK_ERROR, "{problem}", {"problem": problem, "fix": fix, "key": key})


#: Upper bounds of a board file's numbers: what the protocol can carry or no microcontroller comes
#: near, so a typo (an extra digit, a size in bytes where KiB are meant) is named, not planned for.
#: HELLO carries RAM and flash sizes in 32-bit bytes, its payload limit in 16 bits.
MAX_MEMORY_KIB = 4 * 1024 * 1024
MAX_FRAME_BYTES = 65_535
MAX_CLOCK_MHZ = 10_000
MAX_OPS_PER_S = 10**13
MAX_BAUD = 100_000_000
MAX_LINK_BYTES_PER_S = 10**10


class _Table(BaseModel):
    """Base for every TOML table: unknown keys are errors, types are exact, values immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FirmwareReserve(_Table):
    """Memory the firmware itself uses (code, stacks, link buffers, runtime), not fragments."""

    ram_kib: int = Field(ge=0, le=MAX_MEMORY_KIB, description="RAM the firmware uses, in KiB")
    flash_kib: int = Field(ge=0, le=MAX_MEMORY_KIB, description="flash the firmware image uses, in KiB")
    source: ReserveSource = Field(
        description="'estimate' until the firmware build writes back 'linker-map' values",
    )


class Link(_Table):
    """The host link: a UART (with a baud rate) or USB CDC (with a measured/estimated rate)."""

    kind: LinkKind = Field(description="'uart' or 'usb'")
    baud: int | None = Field(default=None, gt=0, le=MAX_BAUD, validate_default=True,
                             description="UART baud rate (uart only)")
    usb_bytes_per_s: int | None = Field(
        default=None, gt=0, le=MAX_LINK_BYTES_PER_S, validate_default=True,
        description="sustained USB CDC throughput in bytes/s (usb only)"
    )
    max_frame_bytes: int = Field(
        ge=16, le=MAX_FRAME_BYTES, description="largest frame the board accepts; its link buffers are sized from it"
    )
    framing: Framing = Field(default="8N1", description="data bits, parity, stop bits the host's tty is set to")
    flow_control: FlowControl = Field(default="none", description="'none' or 'rtscts' (hardware) on the host's tty")

    @field_validator("baud")
    @classmethod
    def _baud_for_uart(cls, value: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("kind")
        if kind == "uart" and value is None:
            raise check_error("a uart link needs a baud rate", fix="add `baud = 115200` to [link]")
        if kind == "usb" and value is not None:
            raise check_error(
                "baud applies only to uart links", fix="remove `baud`, or set kind = \"uart\""
            )
        return value

    @field_validator("usb_bytes_per_s")
    @classmethod
    def _rate_for_usb(cls, value: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("kind")
        if kind == "usb" and value is None:
            raise check_error(
                "a usb link needs its throughput",
                fix="add `usb_bytes_per_s = 500000` (an estimate until measured) to [link]",
            )
        if kind == "uart" and value is not None:
            raise check_error(
                "usb_bytes_per_s applies only to usb links", fix="remove it, or set kind = \"usb\""
            )
        return value

    @property
    def bytes_per_s(self) -> float:
        """Payload rate: UART 8N1 moves one byte per 10 bit times."""
        if self.kind == "uart":
            assert self.baud is not None
            return self.baud / 10
        assert self.usb_bytes_per_s is not None
        return float(self.usb_bytes_per_s)


class Emulator(_Table):
    """How to run the board (or a stand-in for it) without hardware."""

    qemu_machine: str | None = Field(default=None, min_length=1, description="QEMU -machine name")
    qemu_cpu: str | None = Field(
        default=None, min_length=1, validate_default=True, description="QEMU -cpu name (needs qemu_machine)"
    )
    renode_platform: str | None = Field(default=None, min_length=1, description="Renode platform .repl path")
    renode_uart: str = Field(default="uart0", min_length=1,
                             description="the UART peripheral's name in the Renode platform (its console)")
    stands_in_for: str | None = Field(
        default=None, min_length=1, description="the real board whose RAM/flash budget this one mimics"
    )
    # Data, not code, says which profile the dense baselines boot when this one's budget cannot
    # hold every layer's training state (the registry checks the name; see docs/boards.md).
    baseline_profile: str | None = Field(
        default=None, min_length=1,
        description="emulated board `tinyfed run --emulate` boots instead for FedAvg/FedBuff when the whole "
                    "model's training state does not fit this one",
    )

    @field_validator("qemu_cpu")
    @classmethod
    def _cpu_needs_machine(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and "qemu_machine" in info.data and info.data["qemu_machine"] is None:
            raise check_error("qemu_cpu is set but qemu_machine is not", fix="add `qemu_machine = \"...\"`")
        return value

    @model_validator(mode="after")
    def _some_emulator(self) -> Emulator:
        if self.qemu_machine is None and self.renode_platform is None:
            raise check_error(
                "an [emulator] table needs qemu_machine or renode_platform",
                fix="add one of them, or remove the [emulator] table",
            )
        return self


class Speed(_Table):
    """Training throughput; estimates until the firmware benchmark measures them."""

    int8_macs_per_s: int = Field(gt=0, le=MAX_OPS_PER_S, description="int8 multiply-accumulates per second")
    fp32_flops_per_s: int = Field(gt=0, le=MAX_OPS_PER_S, description="fp32 floating-point operations per second")
    measured: bool = Field(description="true once the firmware benchmark has measured these numbers")
    source: str = Field(min_length=1, description="where the numbers come from")


class Board(_Table):
    """One board profile. Sizes are KiB in the file; use the ``*_bytes`` properties in code."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]*$",
        description="board name; must equal the file name without .toml",
    )
    description: str = Field(min_length=1, description="one line about the board")
    core: Core = Field(description="CPU core used for training (one core of a multi-core part)")
    fpu: Fpu = Field(description="'none', 'sp' (single precision) or 'dp' (double, includes single)")
    clock_mhz: int = Field(gt=0, le=MAX_CLOCK_MHZ, description="core clock in MHz")
    burst_clock_mhz: int | None = Field(default=None, gt=0, le=MAX_CLOCK_MHZ, description="optional burst clock in MHz")
    ram_kib: int = Field(gt=0, le=MAX_MEMORY_KIB, description="on-chip RAM in KiB")
    flash_kib: int = Field(gt=0, le=MAX_MEMORY_KIB, description="program flash in KiB")
    flash_external: bool = Field(default=False, description="true when flash is an external (QSPI) chip")
    emulated: bool = Field(default=False, description="true when the board exists only as an emulator machine")
    pyocd_target: str | None = Field(default=None, min_length=1,
                                     description="pyOCD target name `tinyfed flash` uses (`pyocd list --targets`)")
    firmware_reserve: FirmwareReserve
    link: Link
    emulator: Emulator | None = None
    speed: Speed

    _path: Path | None = PrivateAttr(default=None)

    @field_validator("fpu")
    @classmethod
    def _fpu_matches_core(cls, value: str, info: ValidationInfo) -> str:
        core = info.data.get("core")
        allowed = FPU_BY_CORE.get(core) if isinstance(core, str) else None
        if allowed is not None and value not in allowed:
            choices = " or ".join(f'"{a}"' for a in allowed)
            raise check_error(f"a {core} cannot have fpu = \"{value}\"", fix=f"use fpu = {choices}")
        return value

    @field_validator("burst_clock_mhz")
    @classmethod
    def _burst_above_base(cls, value: int | None, info: ValidationInfo) -> int | None:
        base = info.data.get("clock_mhz")
        if value is not None and isinstance(base, int) and value <= base:
            raise check_error(
                f"burst_clock_mhz ({value}) must be above clock_mhz ({base})",
                fix="remove burst_clock_mhz or correct it",
            )
        return value

    @field_validator("emulator")
    @classmethod
    def _baseline_only_when_emulated(cls, value: Emulator | None, info: ValidationInfo) -> Emulator | None:
        if value is not None and value.baseline_profile is not None and info.data.get("emulated") is False:
            raise check_error(
                "baseline_profile applies only to emulated boards (a real board cannot be given more RAM)",
                fix="remove emulator.baseline_profile, or set emulated = true",
                key=("baseline_profile",),
            )
        return value

    @field_validator("firmware_reserve")
    @classmethod
    def _reserve_fits(cls, value: FirmwareReserve, info: ValidationInfo) -> FirmwareReserve:
        too_big = []
        for key in ("ram_kib", "flash_kib"):
            total = info.data.get(key)
            if isinstance(total, int) and getattr(value, key) >= total:
                too_big.append((key, getattr(value, key), total))
        if len(too_big) == 1:
            key, reserve, total = too_big[0]
            raise check_error(
                f"reserve of {reserve} KiB leaves nothing of the board's {total} KiB ({key})",
                fix=f"make firmware_reserve.{key} smaller than {key} = {total}",
                key=(key,),
            )
        if too_big:
            what = ", ".join(f"{k} {r} >= {t}" for k, r, t in too_big)
            raise check_error(
                f"reserve is not smaller than the board's memory ({what})",
                fix="make the reserve smaller than ram_kib and flash_kib",
            )
        return value

    # -- derived values -------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        """The TOML file this profile came from (None when built in code)."""
        return self._path

    @property
    def ram_bytes(self) -> int:
        return self.ram_kib * KIB

    @property
    def flash_bytes(self) -> int:
        return self.flash_kib * KIB

    @property
    def reserve_ram_bytes(self) -> int:
        return self.firmware_reserve.ram_kib * KIB

    @property
    def reserve_flash_bytes(self) -> int:
        return self.firmware_reserve.flash_kib * KIB

    @property
    def fragment_ram_budget_bytes(self) -> int:
        """RAM left for a training fragment once the firmware has taken its share."""
        return self.ram_bytes - self.reserve_ram_bytes

    @property
    def fragment_flash_budget_bytes(self) -> int:
        """Flash left for fragment weights once the firmware image is stored."""
        return self.flash_bytes - self.reserve_flash_bytes

    @property
    def program_store_bytes(self) -> int:
        """The firmware's training-program store: 1/16 of flash in whole 4 KiB pages (sections.ld's default)."""
        return (self.flash_bytes // 16) // FLASH_PAGE_BYTES * FLASH_PAGE_BYTES

    @property
    def data_store_bytes(self) -> int:
        """The firmware's local-data store: 3/8 of flash in whole 4 KiB pages, less the page the
        device key takes (sections.ld's default)."""
        return (self.flash_bytes // 8 * 3) // FLASH_PAGE_BYTES * FLASH_PAGE_BYTES - FLASH_PAGE_BYTES

    @property
    def link_bytes_per_s(self) -> float:
        """Host link payload rate in bytes/s (UART 8N1: baud / 10)."""
        return self.link.bytes_per_s

    @property
    def has_fpu(self) -> bool:
        return self.fpu != "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view: the file's fields plus derived byte budgets and the source file."""
        d: dict[str, Any] = self.model_dump(mode="json")
        d["derived"] = {
            "ram_bytes": self.ram_bytes,
            "flash_bytes": self.flash_bytes,
            "reserve_ram_bytes": self.reserve_ram_bytes,
            "reserve_flash_bytes": self.reserve_flash_bytes,
            "fragment_ram_budget_bytes": self.fragment_ram_budget_bytes,
            "fragment_flash_budget_bytes": self.fragment_flash_budget_bytes,
            "link_bytes_per_s": self.link_bytes_per_s,
        }
        d["path"] = str(self.path) if self.path is not None else None
        return d


#: The most devices one fleet (a fleet file, or a simulation) may hold: ten times the largest fleet
#: simulated in BENCHMARKS.md; a bigger number is a typo that would otherwise allocate gigabytes.
MAX_FLEET_DEVICES = 100_000


class FleetEntry(_Table):
    """``count`` devices of one board, optionally with where each device is reached.

    ``urls`` (or ``url`` for one device) are pyserial URLs (``socket://``, ``sim://``, a serial
    port); ``tinyfed emulate --out`` writes them. With URLs, ``count`` may be left out; when
    both are given they must agree.
    """

    board: str = Field(min_length=1, description="board name")
    url: str | None = Field(default=None, min_length=1, description="where the one device of this entry is reached")
    urls: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, validate_default=True, description="where each device is reached (pyserial URLs), one per device"
    )
    # Declared after url/urls so its check sees them; None only when URLs give the count.
    count: int | None = Field(
        default=None,
        ge=1,
        le=MAX_FLEET_DEVICES,
        validate_default=True,
        description="number of devices of this board (default: how many URLs)",
    )

    @field_validator("urls")
    @classmethod
    def _url_or_urls(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is not None and info.data.get("url") is not None:
            raise check_error("give url or urls, not both", fix="move url into the urls list")
        return value

    @field_validator("count")
    @classmethod
    def _count_matches_urls(cls, value: int | None, info: ValidationInfo) -> int | None:
        if "url" not in info.data or "urls" not in info.data:
            return value  # url/urls are wrong themselves; that is reported already
        url, urls = info.data["url"], info.data["urls"]
        given = [url] if url is not None else list(urls or [])
        if value is None and not given:
            raise check_error("missing required key 'count' (or url/urls)",
                              fix="add `count = ...`: number of devices of this board, or list their `urls = [...]`")
        if value is not None and given and value != len(given):
            what = "1 URL" if len(given) == 1 else f"{len(given)} URLs"
            raise check_error(f"count = {value} but the entry lists {what}; one URL per device",
                              fix=f"set count = {len(given)}, or list {value} URL(s), or leave count out")
        return value

    @property
    def device_urls(self) -> list[str]:
        """The entry's URLs (``url`` as a one-item list); empty when it has none."""
        return [self.url] if self.url is not None else list(self.urls or [])

    @property
    def devices(self) -> int:
        """How many devices the entry stands for (``count``, else the number of URLs)."""
        return self.count if self.count is not None else len(self.device_urls)


class Fleet(_Table):
    """A fleet file: which boards, how many of each."""

    name: str = Field(min_length=1, description="fleet name")
    description: str | None = Field(default=None, description="one line about the fleet")
    boards: list[FleetEntry] = Field(min_length=1, description="[[boards]] tables with board and count (and/or urls)")

    @field_validator("boards")
    @classmethod
    def _no_duplicates(cls, value: list[FleetEntry]) -> list[FleetEntry]:
        first: dict[str, int] = {}
        where: dict[str, int] = {}  # a URL listed twice would be one board training twice per round
        for i, entry in enumerate(value):
            for url in ([entry.url] if entry.url else []) + list(entry.urls or []):
                if url in where:
                    raise check_error(f"device URL {url!r} is listed twice (also in boards[{where[url]}])",
                                      fix="give each device once: one URL is one board", key=(i, "urls"))
                where[url] = i
        total = sum(e.count or 0 for e in value)
        if total > MAX_FLEET_DEVICES:
            raise check_error(f"the fleet has {total:,} devices, more than tinyfed plans or runs "
                              f"({MAX_FLEET_DEVICES:,})", fix="split the fleet, or simulate it with `tinyfed simulate`")
        for i, entry in enumerate(value):
            if entry.board in first:
                raise check_error(
                    f"board '{entry.board}' is listed twice (also boards[{first[entry.board]}])",
                    fix="merge the two entries into one count",
                    key=(i, "board"),
                )
            first[entry.board] = i
        return value
