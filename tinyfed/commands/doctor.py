"""``tinyfed doctor``: what this machine has for each capability, and what to install for the rest."""

from __future__ import annotations

import json

import click

from tinyfed.commands.options import json_option

_STYLE = {"ok": "green", "missing": "red", "partial": "yellow", "unknown": "yellow"}


@click.command("doctor")
@json_option
def doctor(as_json: bool) -> None:
    """Check what is installed for each capability and say what installs the rest.

    Looks for the Arm cross-compiler and newlib, QEMU and the machines of the board profiles,
    Renode, pyOCD and attached probes, serial ports, TensorFlow, Ray, Chromium and the HAPT data,
    without the network and in about a second. Exits 0 when the core (training on simulated
    boards) works, 1 when it does not; everything else is optional.

    \b
    Examples:
      tinyfed doctor
      tinyfed doctor --json | jq '.capabilities[] | select(.ok | not)'
    """
    from tinyfed.doctor import diagnose

    report = diagnose()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print(report)
    if not report.core_ok:
        raise SystemExit(1)


def _print(report: object) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from tinyfed.commands.console import output_console
    from tinyfed.doctor import Report

    assert isinstance(report, Report)
    data = report.to_dict()
    console = output_console()
    console.print(f"tinyfed {data['tinyfed']}, firmware protocol {data['protocol_version']}", highlight=False)
    items = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("item", "status", "version", "found / to install"):
        items.add_column(col, no_wrap=col != "found / to install", overflow="fold")
    for i in report.items:
        text = escape(i.detail)
        if not i.ok and i.install:
            text += f"\n[bold]install:[/] {escape(i.install)}"
        items.add_row(i.name, f"[{_STYLE[i.status]}]{i.status}[/]", i.version or "-", text)
    console.print(items)
    caps = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    caps.add_column("capability", overflow="fold")
    caps.add_column("status", no_wrap=True)
    for c in report.capabilities:
        blockers = report.blockers(c.key)
        label = c.what + (" [bold](core)[/]" if c.core else "")
        status = "[green]ok[/]" if not blockers else "[red]blocked[/] by " + ", ".join(i.name for i in blockers)
        caps.add_row(label, status)
    console.print(caps)
    if report.core_ok:
        console.print("core: ok. Every other capability is optional; a blocked one names what to install above.")
    else:
        console.print("[red]core: blocked[/]: install what the core's items above say (exit 1).")
