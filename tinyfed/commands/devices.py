"""``tinyfed devices --fleet FILE``: say HELLO to every device of a fleet and list what answers."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich import box
from rich.table import Table

from tinyfed.commands.console import output_console
from tinyfed.commands.options import FiniteFloatRange, boards_dir_option, fleet_option, json_option, url_option


@click.command("devices")
@fleet_option("The devices to list: its entries list device URLs (`tinyfed emulate --out` writes one).")
@url_option
@click.option("--scan", is_flag=True, help="List this machine's serial ports and debug probes instead (no fleet).")
@click.option("--timeout", type=FiniteFloatRange(0, 60, min_open=True), default=0.5, show_default=True,
              help="Seconds to wait for each response.")
@click.option("--retries", type=click.IntRange(0, 100), default=2, show_default=True,
              help="Retransmissions before a device counts as unreachable.")
@boards_dir_option
@json_option
def devices(fleet_path: Path | None, url: str | None, scan: bool, timeout: float, retries: int,
            boards_dirs: tuple[Path, ...], as_json: bool) -> None:
    """List every device of a fleet: board id, firmware build, protocol, free RAM/flash, round-trip time.

    Exits 1 when a device is unreachable (it is still listed).

    \b
    Examples:
      tinyfed devices --fleet fleet.toml
      tinyfed devices --fleet fleet.toml --timeout 2 --json
      tinyfed devices --url /dev/ttyACM0
      tinyfed devices --scan
    """
    if scan:
        if fleet_path is not None or url is not None:
            raise click.UsageError("--scan lists what is attached to this machine; drop --fleet/--url")
        _print_scan(as_json)
        return
    from tinyfed.firmware_bridge.link.devices import fleet_or_url, probe_devices

    fleet = fleet_or_url(fleet_path, url, boards_dirs)
    statuses = probe_devices(fleet.devices, timeout=timeout, retries=retries)
    if as_json:
        devices_json = [s.to_dict() for s in statuses]
        click.echo(json.dumps({"fleet": fleet.name, "path": str(fleet.path), "devices": devices_json}))
    else:
        console = output_console()
        table = Table(title=f"fleet {fleet.name}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("device", "url", "board id", "build", "proto", "arena KiB", "slot KiB", "fw RAM/flash KiB",
                    "RTT ms", "status"):
            table.add_column(col, justify="right" if "KiB" in col or col in ("RTT ms", "proto") else "left",
                             no_wrap=col in ("device", "url"))
        for s in statuses:
            h = s.hello
            if h:
                row = [h["board_id"], h["build"], str(h["protocol_version"]), f"{h['arena_bytes'] / 1024:,.1f}",
                       f"{h['fragment_slot_bytes'] / 1024:,.1f}",
                       f"{h['firmware_ram_bytes'] / 1024:,.0f}/{h['firmware_flash_bytes'] / 1024:,.0f}",
                       f"{s.rtt_s * 1000:.2f}" if s.rtt_s is not None else "-", "[green]ok[/]"]
            else:
                row = ["-"] * 7 + [f"[red]unreachable[/]: {s.error}"]
            table.add_row(s.device.name, s.device.url or "-", *row)
        console.print(table)
        up = sum(s.reachable for s in statuses)
        console.print(f"{up} of {len(statuses)} device(s) reachable. arena: RAM free for a fragment; "
                      "slot: flash per fragment slot.")
    if not all(s.reachable for s in statuses):
        raise SystemExit(1)


def _print_scan(as_json: bool) -> None:
    """Serial ports and debug probes, as a table or one JSON object."""
    from tinyfed.firmware_bridge.link.scan import scan

    found = scan()
    if as_json:
        click.echo(json.dumps(found.to_dict()))
        return
    console = output_console()
    if found.ports:
        ports = Table(title="serial ports", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("device", "description", "USB vid:pid", "hwid"):
            ports.add_column(col, no_wrap=col == "device")
        for p in found.ports:
            ports.add_row(p.device, p.description, p.vid_pid or "-", p.hwid)
        console.print(ports)
    else:
        console.print("no serial ports")
    if found.probes:
        probes = Table(title="debug probes", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("unique id", "vendor", "product"):
            probes.add_column(col)
        for pr in found.probes:
            probes.add_row(pr.unique_id, pr.vendor, pr.product)
        console.print(probes)
    else:
        console.print("no debug probes" + (f" ({found.probe_problem})" if found.probe_problem else ""))
    console.print("a port goes into a fleet file as url = \"/dev/ttyACM0\", or try it: tinyfed devices --url PORT")
