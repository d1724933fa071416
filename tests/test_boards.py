"""Board profiles, fleets and `tinyfed boards`: real files, real errors, real CLI."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinyfed.boards import (
    BUILTIN_DIR,
    Board,
    board_dirs,
    fleet_presets,
    get_board,
    list_boards,
    load_board_file,
    load_fleet,
    single_board_fleet,
)
from tinyfed.errors import BoardError, DataFileError

KIB = 1024

VALID = """\
name = "{name}"
description = "test board"
core = "cortex-m4f"
fpu = "sp"
clock_mhz = 80
ram_kib = 128
flash_kib = 512

[firmware_reserve]
ram_kib = 16
flash_kib = 64
source = "estimate"

[link]
kind = "uart"
baud = 921600
max_frame_bytes = 128

[speed]
int8_macs_per_s = 40_000_000
fp32_flops_per_s = 20_000_000
measured = false
source = "test"
"""


def write_board(directory: Path, name: str, text: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(VALID.format(name=name) if text is None else text)
    return path


def issues_by_key(exc: DataFileError) -> dict[str, str]:
    return {i.key: f"{i.problem} | {i.fix}" for i in exc.issues}


# -- shipped boards ------------------------------------------------------------------------------

# name: (core, fpu, clock MHz, RAM KiB, flash KiB, external flash, link kind)
DATASHEET = {
    "nrf52840": ("cortex-m4f", "sp", 64, 256, 1024, False, "uart"),
    "apollo3": ("cortex-m4f", "sp", 48, 384, 1024, False, "uart"),
    "stm32l4r9": ("cortex-m4f", "sp", 120, 640, 2048, False, "uart"),
    "rp2040": ("cortex-m0plus", "none", 133, 264, 2048, True, "usb"),
    "esp32s3": ("xtensa-lx7", "sp", 240, 512, 8192, True, "usb"),
    "mps2-an386": ("cortex-m4f", "sp", 25, 256, 1024, False, "uart"),
    "mps2-an386-large": ("cortex-m4f", "sp", 25, 4096, 4096, False, "uart"),  # QEMU's whole SSRAMs
    "mps3-an547": ("cortex-m55", "dp", 32, 512, 2048, False, "uart"),
}

# name: ([firmware_reserve] RAM KiB, flash KiB, source). Boards with a firmware board layer
# (firmware/boards/<name>/) carry what `python -m tinyfed.firmware_bridge.emulate.build --write-reserve`
# read from the linker map (tests/test_firmware_build.py rebuilds and checks the exact match);
# the others still carry estimates.
RESERVE = {
    "nrf52840": (10, 87, "linker-map"),
    "apollo3": (10, 135, "linker-map"),
    "mps2-an386": (10, 86, "linker-map"),
    "mps2-an386-large": (10, 86, "linker-map"),
    "mps3-an547": (10, 78, "linker-map"),
    "stm32l4r9": (24, 96, "estimate"),
    "rp2040": (32, 128, "estimate"),
    "esp32s3": (160, 384, "estimate"),
}


def test_shipped_boards_are_exactly_the_documented_ones() -> None:
    assert sorted(b.name for b in list_boards()) == sorted(DATASHEET)
    assert sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")) == sorted(DATASHEET)


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_shipped_board_has_datasheet_numbers(name: str) -> None:
    core, fpu, clock, ram, flash, external, link = DATASHEET[name]
    board = load_board_file(BUILTIN_DIR / f"{name}.toml")
    assert (board.core, board.fpu, board.clock_mhz) == (core, fpu, clock)
    assert (board.ram_kib, board.flash_kib, board.flash_external) == (ram, flash, external)
    assert board.link.kind == link
    assert board.ram_bytes == ram * KIB and board.flash_bytes == flash * KIB
    assert 0 < board.fragment_ram_budget_bytes < board.ram_bytes
    assert 0 < board.fragment_flash_budget_bytes < board.flash_bytes
    reserve = board.firmware_reserve
    assert (reserve.ram_kib, reserve.flash_kib, reserve.source) == RESERVE[name]
    # Emulated boards: measured with the firmware's PROFILE (int8: a representative model) and BENCH
    # (fp32) under qemu -icount (bench/speed.py); real boards: estimates until measured on hardware.
    assert board.speed.measured is board.emulated and board.speed.source
    assert board.speed.source.startswith(("firmware BENCH under qemu -icount shift=4",
                                          "firmware PROFILE and BENCH under qemu -icount shift=4")) is board.emulated
    assert board.path == BUILTIN_DIR / f"{name}.toml"


def test_measured_reserves_are_exactly_the_firmware_boards() -> None:
    from tinyfed.firmware_bridge.emulate.build import firmware_boards

    measured = sorted(name for name, (_, _, source) in RESERVE.items() if source == "linker-map")
    assert measured == firmware_boards()


def test_nrf52840_derived_values() -> None:
    b = get_board("nrf52840")
    assert b.reserve_ram_bytes == 10 * KIB and b.reserve_flash_bytes == 87 * KIB
    assert b.fragment_ram_budget_bytes == (256 - 10) * KIB
    assert b.fragment_flash_budget_bytes == (1024 - 87) * KIB
    assert b.link.baud == 115200 and b.link.max_frame_bytes == 256
    assert b.link_bytes_per_s == 11520  # UART 8N1: 10 bits per byte
    assert b.emulator is not None and b.emulator.renode_platform == "platforms/cpus/nrf52840.repl"


def test_special_board_facts() -> None:
    assert get_board("apollo3").burst_clock_mhz == 96
    assert get_board("stm32l4r9").emulator is None  # no Renode platform we are sure of
    rp = get_board("rp2040")
    assert not rp.has_fpu and rp.link.usb_bytes_per_s is not None and rp.link_bytes_per_s == rp.link.usb_bytes_per_s
    an386 = get_board("mps2-an386")
    assert an386.emulated and an386.emulator is not None
    assert an386.emulator.qemu_machine == "mps2-an386" and an386.emulator.stands_in_for == "nrf52840"
    nrf = get_board("nrf52840")
    assert (an386.ram_kib, an386.flash_kib) == (nrf.ram_kib, nrf.flash_kib)
    an547 = get_board("mps3-an547")
    assert an547.emulated and an547.emulator is not None and an547.emulator.qemu_machine == "mps3-an547"
    assert (an547.ram_kib, an547.flash_kib) == (512, 2048)


def test_path_is_not_a_field() -> None:
    b = get_board("nrf52840")
    again = Board.model_validate(b.model_dump())
    assert again.path is None and again.ram_bytes == b.ram_bytes
    assert "path" not in Board.model_fields


# -- validation errors ---------------------------------------------------------------------------


def test_typo_names_file_key_and_suggestion(tmp_path: Path) -> None:
    path = write_board(tmp_path, "typo", VALID.format(name="typo").replace("ram_kib = 128", "ram_kb = 128"))
    with pytest.raises(DataFileError) as info:
        load_board_file(path)
    exc = info.value
    assert exc.path == str(path)
    by_key = issues_by_key(exc)
    assert "unknown key 'ram_kb'; did you mean 'ram_kib'?" in by_key["ram_kb"]
    assert "missing required key 'ram_kib'" in by_key["ram_kib"]
    line = exc.one_line()
    assert str(path) in line and "ram_kb" in line and "'ram_kib'" in line and "\n" not in line


def test_all_errors_of_a_file_are_reported_at_once(tmp_path: Path) -> None:
    text = (
        VALID.format(name="many")
        .replace("clock_mhz = 80", "clock_mzh = 80")
        .replace('fpu = "sp"', 'fpu = "single"')
        .replace("flash_kib = 512", "flash_kib = -5")
        .replace("baud = 921600\n", "")
        .replace("measured = false", 'measured = "no"')
    )
    path = write_board(tmp_path, "many", text)
    with pytest.raises(DataFileError) as info:
        load_board_file(path)
    by_key = issues_by_key(info.value)
    assert {"clock_mzh", "clock_mhz", "fpu", "flash_kib", "link.baud", "speed.measured"} <= set(by_key)
    assert "did you mean 'clock_mhz'" in by_key["clock_mzh"]
    assert "'none', 'sp', 'dp'" in by_key["fpu"]
    assert "must be > 0, got -5" in by_key["flash_kib"]
    assert "uart link needs a baud rate" in by_key["link.baud"]
    assert "expected a boolean, got string" in by_key["speed.measured"]
    assert f"{len(info.value.issues)} problem(s)" in info.value.one_line()


def test_bad_enum_lists_allowed_values_and_suggests(tmp_path: Path) -> None:
    path = write_board(tmp_path, "enum", VALID.format(name="enum").replace('"cortex-m4f"', '"cortex-m4"'))
    with pytest.raises(DataFileError) as info:
        load_board_file(path)
    issue = issues_by_key(info.value)["core"]
    assert "'cortex-m0plus', 'cortex-m4f', 'cortex-m33', 'cortex-m55', 'cortex-m7', 'xtensa-lx7'" in issue
    assert "did you mean 'cortex-m4f'?" in issue


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = write_board(tmp_path, "types", VALID.format(name="types").replace("ram_kib = 128", 'ram_kib = "128"'))
    with pytest.raises(DataFileError) as info:
        load_board_file(path)
    assert "expected an integer, got string '128'" in issues_by_key(info.value)["ram_kib"]


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write_board(tmp_path, "syntax", VALID.format(name="syntax").replace("clock_mhz = 80", "clock_mhz = "))
    with pytest.raises(DataFileError) as info:
        load_board_file(path)
    (issue,) = info.value.issues
    assert issue.key.startswith("line 5, column")
    assert "TOML syntax error" in issue.problem
    assert str(path) in info.value.one_line()


def test_reserve_must_be_smaller_than_memory(tmp_path: Path) -> None:
    text = VALID.format(name="reserve").replace("ram_kib = 16", "ram_kib = 128")
    with pytest.raises(DataFileError) as info:
        load_board_file(write_board(tmp_path, "reserve", text))
    assert "leaves nothing" in issues_by_key(info.value)["firmware_reserve.ram_kib"]


def test_name_must_match_file_stem(tmp_path: Path) -> None:
    path = write_board(tmp_path, "stem", VALID.format(name="other"))
    with pytest.raises(DataFileError) as info:
        load_board_file(path)
    issue = issues_by_key(info.value)["name"]
    assert "does not match the file name 'stem.toml'" in issue and 'set name = "stem"' in issue


def test_fpu_must_suit_core(tmp_path: Path) -> None:
    text = VALID.format(name="m0").replace('"cortex-m4f"', '"cortex-m0plus"')
    with pytest.raises(DataFileError) as info:
        load_board_file(write_board(tmp_path, "m0", text))
    assert 'use fpu = "none"' in issues_by_key(info.value)["fpu"]


def test_usb_link_needs_throughput_and_no_baud(tmp_path: Path) -> None:
    text = VALID.format(name="usb").replace('kind = "uart"', 'kind = "usb"')
    with pytest.raises(DataFileError) as info:
        load_board_file(write_board(tmp_path, "usb", text))
    by_key = issues_by_key(info.value)
    assert "needs its throughput" in by_key["link.usb_bytes_per_s"]
    assert "only to uart" in by_key["link.baud"]


def test_unknown_table_key_suggests_within_table(tmp_path: Path) -> None:
    text = VALID.format(name="tbl").replace("max_frame_bytes = 128", "max_frame_bytes = 128\nmax_frame = 64")
    with pytest.raises(DataFileError) as info:
        load_board_file(write_board(tmp_path, "tbl", text))
    assert "did you mean 'max_frame_bytes'?" in issues_by_key(info.value)["link.max_frame"]


# -- directories and lookup ----------------------------------------------------------------------


def test_user_dir_board_is_listed(tmp_path: Path) -> None:
    path = write_board(tmp_path / "mine", "myboard")
    boards = {b.name: b for b in list_boards([tmp_path / "mine"])}
    assert "myboard" in boards and "nrf52840" in boards
    assert boards["myboard"].path == path
    assert boards["myboard"].link_bytes_per_s == 92160


def test_env_var_dirs_are_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_board(tmp_path / "a", "env-a")
    write_board(tmp_path / "b", "env-b")
    monkeypatch.setenv("TINYFED_BOARDS_PATH", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert board_dirs()[1:] == [tmp_path / "a", tmp_path / "b"]
    names = {b.name for b in list_boards()}
    assert {"env-a", "env-b"} <= names
    assert get_board("env-b").path == tmp_path / "b" / "env-b.toml"


def test_user_board_overrides_builtin_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = (BUILTIN_DIR / "nrf52840.toml").read_text().replace("clock_mhz = 64", "clock_mhz = 80")
    path = write_board(tmp_path, "nrf52840", text)
    with caplog.at_level(logging.INFO, logger="tinyfed.boards"):
        board = get_board("nrf52840", [tmp_path])
    assert board.clock_mhz == 80 and board.path == path
    assert any("overrides the built-in" in r.getMessage() for r in caplog.records)
    assert get_board("nrf52840").clock_mhz == 64  # without the directory, the built-in again


def test_boards_dir_beats_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_board(tmp_path / "cli", "dup", VALID.format(name="dup").replace("clock_mhz = 80", "clock_mhz = 1"))
    write_board(tmp_path / "env", "dup", VALID.format(name="dup").replace("clock_mhz = 80", "clock_mhz = 2"))
    monkeypatch.setenv("TINYFED_BOARDS_PATH", str(tmp_path / "env"))
    assert get_board("dup", [tmp_path / "cli"]).clock_mhz == 1


def test_bad_user_file_is_not_hidden(tmp_path: Path) -> None:
    write_board(tmp_path, "good")
    bad = write_board(tmp_path, "bad", VALID.format(name="bad").replace("ram_kib = 128", "ram_kb = 128"))
    with pytest.raises(DataFileError) as info:
        list_boards([tmp_path])
    assert info.value.path == str(bad)


def test_missing_boards_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BoardError, match="does not exist"):
        list_boards([tmp_path / "nope"])


def test_unknown_stand_in_is_an_error(tmp_path: Path) -> None:
    text = VALID.format(name="emu") + '\n[emulator]\nqemu_machine = "x"\nstands_in_for = "nrf5284"\n'
    with pytest.raises(DataFileError) as info:
        list_boards([write_board(tmp_path, "emu", text).parent])
    assert "did you mean 'nrf52840'?" in issues_by_key(info.value)["emulator.stands_in_for"]


def test_emulated_board_names_a_baseline_profile_that_holds_whole_model_training() -> None:
    an386, large = get_board("mps2-an386"), get_board("mps2-an386-large")
    assert an386.emulator is not None and an386.emulator.baseline_profile == "mps2-an386-large"
    # the same QEMU machine with the budget QEMU's mps2-an386 really has: 4 MiB SSRAM1 (flash), 4 MiB SSRAM2/3
    assert large.emulated and large.emulator is not None and large.emulator.baseline_profile is None
    assert (large.emulator.qemu_machine, large.emulator.qemu_cpu) == ("mps2-an386", "cortex-m4")
    assert large.ram_kib == large.flash_kib == 4096
    assert large.speed.model_dump(exclude={"source"}) == an386.speed.model_dump(exclude={"source"})
    assert "emulator-only" in large.description and "not a real board" in large.description
    assert large.to_dict()["emulator"]["baseline_profile"] is None


def _emulated(name: str, baseline: str) -> str:
    """A valid emulated board whose [emulator] table names ``baseline`` as its baseline profile."""
    return (VALID.format(name=name).replace("[firmware_reserve]", "emulated = true\n\n[firmware_reserve]")
            + f'\n[emulator]\nqemu_machine = "x"\nbaseline_profile = "{baseline}"\n')


@pytest.mark.parametrize(("baseline", "problem"), [
    ("mps2-an386-larg", "did you mean 'mps2-an386-large'?"),
    ("nrf52840", "not an emulated board with a QEMU machine"),
    ("emu", "cannot be its own baseline profile"),
])
def test_baseline_profile_must_name_another_emulated_board(tmp_path: Path, baseline: str, problem: str) -> None:
    with pytest.raises(DataFileError) as info:
        list_boards([write_board(tmp_path, "emu", _emulated("emu", baseline)).parent])
    assert problem in issues_by_key(info.value)["emulator.baseline_profile"]


def test_baseline_profile_may_name_a_user_board(tmp_path: Path) -> None:
    write_board(tmp_path, "big", _emulated("big", "mps2-an386-large").replace("ram_kib = 128", "ram_kib = 1024")
                .replace('baseline_profile = "mps2-an386-large"\n', ""))
    write_board(tmp_path, "small", _emulated("small", "big"))
    small = get_board("small", [tmp_path])
    assert small.emulator is not None and small.emulator.baseline_profile == "big"


def test_baseline_profile_only_on_emulated_boards(tmp_path: Path) -> None:
    text = VALID.format(name="real") + '\n[emulator]\nqemu_machine = "x"\nbaseline_profile = "mps2-an386-large"\n'
    with pytest.raises(DataFileError) as info:
        load_board_file(write_board(tmp_path, "real", text))
    issue = issues_by_key(info.value)["emulator.baseline_profile"]
    assert "only to emulated boards" in issue and "emulated = true" in issue


def test_unknown_board_suggests_closest() -> None:
    with pytest.raises(BoardError) as info:
        get_board("nrf5284")
    exc = info.value
    assert exc.problem.startswith("unknown board 'nrf5284'; did you mean 'nrf52840'? Known: ")
    assert "apollo3" in exc.problem and "rp2040" in exc.problem
    assert exc.fix is not None and "tinyfed boards list" in exc.fix and "TINYFED_BOARDS_PATH" in exc.fix


# -- fleets --------------------------------------------------------------------------------------


def test_fleet_presets() -> None:
    assert {"smartwatch", "emulated"} <= set(fleet_presets())
    watch = load_fleet("smartwatch")
    assert watch.name == "smartwatch" and watch.total_devices == 100
    assert [(b.name, n) for b, n in watch.entries] == [
        ("nrf52840", 40), ("apollo3", 30), ("stm32l4r9", 20), ("rp2040", 10),
    ]
    assert [b.name for b in watch.boards] == ["nrf52840", "apollo3", "stm32l4r9", "rp2040"]
    emu = load_fleet("emulated")
    assert emu.total_devices == 4 and all(b.emulated for b in emu.boards)


def test_fleet_file_by_path_with_user_board(tmp_path: Path) -> None:
    write_board(tmp_path / "boards", "myboard")
    fleet_file = tmp_path / "lab.toml"
    fleet_file.write_text('name = "lab"\n[[boards]]\nboard = "myboard"\ncount = 3\n'
                          '[[boards]]\nboard = "nrf52840"\ncount = 2\n')
    fleet = load_fleet(fleet_file, [tmp_path / "boards"])
    assert fleet.total_devices == 5 and fleet.path == fleet_file
    assert fleet.boards[0].path == tmp_path / "boards" / "myboard.toml"


def test_fleet_with_missing_board_names_key_and_suggestion(tmp_path: Path) -> None:
    fleet_file = tmp_path / "f.toml"
    fleet_file.write_text(
        'name = "f"\n'
        '[[boards]]\nboard = "nrf52840"\ncount = 1\n'
        '[[boards]]\nboard = "apollo3"\ncount = 0\n'
        '[[boards]]\nboard = "nrf5284"\ncount = 2\n'
    )
    with pytest.raises(DataFileError) as info:
        load_fleet(fleet_file)
    exc = info.value
    assert exc.path == str(fleet_file)
    by_key = issues_by_key(exc)
    assert "unknown board 'nrf5284'; did you mean 'nrf52840'?" in by_key["boards[2].board"]
    assert "must be >= 1, got 0" in by_key["boards[1].count"]  # reported together


def test_fleet_duplicate_and_typo_keys(tmp_path: Path) -> None:
    fleet_file = tmp_path / "d.toml"
    fleet_file.write_text('name = "d"\n[[boards]]\nboard = "rp2040"\ncount = 1\n'
                          '[[boards]]\nboard = "rp2040"\ncnt = 1\n')
    with pytest.raises(DataFileError) as info:
        load_fleet(fleet_file)
    by_key = issues_by_key(info.value)
    assert "did you mean 'count'?" in by_key["boards[1].cnt"]
    assert "missing required key 'count'" in by_key["boards[1].count"]


def test_fleet_with_device_urls(tmp_path: Path) -> None:
    fleet_file = tmp_path / "lab.toml"
    fleet_file.write_text(
        'name = "lab"\n'
        '[[boards]]\nboard = "mps2-an386"\nurls = ["socket://127.0.0.1:40111", "socket://127.0.0.1:40112"]\n'
        '[[boards]]\nboard = "nrf52840"\nurl = "/dev/ttyACM0"\n'
        '[[boards]]\nboard = "apollo3"\ncount = 2\nurls = ["sim://apollo3?name=a", "sim://apollo3?name=b"]\n'
        '[[boards]]\nboard = "rp2040"\ncount = 3\n'
    )
    fleet = load_fleet(fleet_file)
    # count defaults to the number of URLs; `url` is one device.
    entries = [(b.name, n) for b, n in fleet.entries]
    assert entries == [("mps2-an386", 2), ("nrf52840", 1), ("apollo3", 2), ("rp2040", 3)]
    assert fleet.total_devices == 8 and fleet.has_urls
    assert [(b.name, url) for b, url in fleet.devices] == [
        ("mps2-an386", "socket://127.0.0.1:40111"), ("mps2-an386", "socket://127.0.0.1:40112"),
        ("nrf52840", "/dev/ttyACM0"),
        ("apollo3", "sim://apollo3?name=a"), ("apollo3", "sim://apollo3?name=b"),
        ("rp2040", None), ("rp2040", None), ("rp2040", None),
    ]
    boards = fleet.to_dict()["boards"]
    assert boards[0] == {"board": "mps2-an386", "count": 2,
                         "urls": ["socket://127.0.0.1:40111", "socket://127.0.0.1:40112"]}
    assert boards[3] == {"board": "rp2040", "count": 3}
    assert not load_fleet("smartwatch").has_urls and load_fleet("smartwatch").devices[0][1] is None


def test_fleet_urls_must_match_count_and_all_errors_are_reported(tmp_path: Path) -> None:
    fleet_file = tmp_path / "bad.toml"
    fleet_file.write_text(
        'name = "bad"\n'
        '[[boards]]\nboard = "nrf52840"\ncount = 3\nurls = ["sim://a"]\n'      # fewer URLs than count
        '[[boards]]\nboard = "apollo3"\ncount = 1\nurls = ["sim://b", "sim://c"]\n'  # more
        '[[boards]]\nboard = "rp2040"\nurl = "sim://d"\nurls = ["sim://e"]\n'  # both forms
        '[[boards]]\nboard = "stm32l4r9"\n'                                    # neither count nor URLs
        '[[boards]]\nboard = "mps2-an386"\nurls = ["sim://f", 7]\n'
        '[[boards]]\nboard = "nrf5284"\nurl = "sim://g"\n'
    )
    with pytest.raises(DataFileError) as info:
        load_fleet(fleet_file)
    by_key = issues_by_key(info.value)
    assert "count = 3 but the entry lists 1 URL; one URL per device" in by_key["boards[0].count"]
    assert "set count = 1" in by_key["boards[0].count"]
    assert "count = 1 but the entry lists 2 URLs" in by_key["boards[1].count"]
    assert "give url or urls, not both" in by_key["boards[2].urls"]
    assert "missing required key 'count'" in by_key["boards[3].count"]
    assert "expected a string, got integer 7" in by_key["boards[4].urls[1]"]
    assert "did you mean 'nrf52840'?" in by_key["boards[5].board"]
    assert f"{len(info.value.issues)} problem(s)" in info.value.one_line() and len(info.value.issues) == 6


@pytest.mark.slow  # a real plan (model conversion)
def test_cli_plan_accepts_a_fleet_written_by_emulate(cli, tmp_path: Path) -> None:
    from tinyfed.firmware_bridge.link.devices import load_device_fleet, write_device_fleet

    urls = ["socket://127.0.0.1:40111", "socket://127.0.0.1:40112"]
    path = write_device_fleet(tmp_path / "fleet.toml", "emulated-mps2-an386", [("mps2-an386", urls)],
                              description="2 x mps2-an386 in QEMU")
    fleet = load_fleet(path)
    assert [(b.name, url) for b, url in fleet.devices] == [("mps2-an386", u) for u in urls]
    assert [d.url for d in load_device_fleet(path).devices] == urls  # `tinyfed devices` reads the same file
    result = CliRunner().invoke(cli, ["plan", "digits_cnn", "--fleet", str(path), "--no-measure",
                                      "--out", str(tmp_path / "plan"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["fits"] is True
    assert doc["fleet"] == "emulated-mps2-an386" and set(doc["boards"]) == {"mps2-an386"}


def test_unknown_fleet_preset_suggests() -> None:
    with pytest.raises(BoardError, match="unknown fleet 'smartwach'; did you mean 'smartwatch'"):
        load_fleet("smartwach")
    with pytest.raises(BoardError, match="fleet file not found"):
        load_fleet("nowhere/fleet.toml")


def test_single_board_fleet() -> None:
    fleet = single_board_fleet(get_board("apollo3"))
    assert fleet.total_devices == 1 and [b.name for b in fleet.boards] == ["apollo3"]
    assert single_board_fleet(get_board("apollo3"), 5).total_devices == 5


# -- CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def cli():
    from tinyfed.cli import cli as root

    return root


def test_cli_list_json_has_all_boards(cli) -> None:
    result = CliRunner().invoke(cli, ["boards", "list", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    by_name = {b["name"]: b for b in payload["boards"]}
    assert set(by_name) == set(DATASHEET)
    assert by_name["nrf52840"]["derived"]["fragment_ram_budget_bytes"] == (256 - 10) * KIB
    assert by_name["stm32l4r9"]["derived"]["fragment_ram_budget_bytes"] == (640 - 24) * KIB  # estimate
    assert by_name["nrf52840"]["path"].endswith("nrf52840.toml")


def test_cli_list_table_marks_estimates_and_user_files(cli, tmp_path: Path) -> None:
    path = write_board(tmp_path, "myboard")
    result = CliRunner().invoke(cli, ["boards", "list", "--boards-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "myboard" in result.stdout and "est." in result.stdout and str(path) in result.stdout


def test_cli_show(cli) -> None:
    result = CliRunner().invoke(cli, ["boards", "show", "nrf52840"])
    assert result.exit_code == 0, result.output
    for text in ("cortex-m4f", "64 MHz", "256 KiB", "1024 KiB", "uart 115200", "renode",
                 "RAM 10 KiB, flash 87 KiB (linker-map)", "251,904 bytes", "959,488 bytes"):
        assert text in result.stdout
    as_json = CliRunner().invoke(cli, ["boards", "show", "nrf52840", "--json"])
    assert json.loads(as_json.stdout)["ram_kib"] == 256


def test_cli_bad_board_dir_is_one_line(cli, tmp_path: Path) -> None:
    write_board(tmp_path, "bad", VALID.format(name="bad").replace("ram_kib = 128", "ram_kb = 128"))
    result = CliRunner().invoke(cli, ["boards", "list", "--boards-dir", str(tmp_path)])
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "bad.toml" in lines[0] and "did you mean 'ram_kib'" in lines[0]
    assert "Traceback" not in result.output


def test_cli_unknown_board(cli) -> None:
    result = CliRunner().invoke(cli, ["boards", "show", "nrf5284"])
    assert result.exit_code == 2
    assert "did you mean 'nrf52840'" in result.stderr and "Traceback" not in result.output
