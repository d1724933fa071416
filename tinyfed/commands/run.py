"""``tinyfed run``: train one model across a fleet with FTTE, FedBuff or FedAvg.

    tinyfed run --simulate 8 --strategy ftte --max-versions 20
    tinyfed run --emulate 8 --board mps2-an386 --target-accuracy 0.85
    tinyfed run --fleet lab.toml --config run.toml --out runs/lab1 --json
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from tinyfed.commands.options import boards_dir_option, json_option
from tinyfed.errors import TinyfedError


def _check_dense_fits(setup, boards: set[str], boards_dirs) -> None:
    """The baselines train every layer: refuse up front when a board cannot hold that state."""
    from tinyfed.boards import get_board
    from tinyfed.firmware_bridge.train_blob import parse_program

    info = parse_program(setup.program)
    rows = sum(c for c, _ in setup.unit_shapes)
    need = info.ram_bytes + 4 * rows + (info.input_elems + 7) // 8 * 8
    for name in sorted(boards):
        b = get_board(name, boards_dirs)
        store = (b.flash_bytes // 16) // 4096 * 4096
        if need > b.fragment_ram_budget_bytes or len(setup.program) > store:
            raise TinyfedError(
                f"{setup.model}: training every layer (the {setup.payload} baselines) needs {need:,} bytes of RAM and a "
                f"{len(setup.program):,}-byte training program; {name} offers {b.fragment_ram_budget_bytes:,} bytes of "
                f"RAM and a {store:,}-byte program store",
                fix="run --strategy ftte (it trains the plan's subset), use a smaller model, or boards with more RAM",
                source=name)


@click.command("run")
@click.option("--fleet", "fleet_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Fleet file whose entries list device URLs (tty, socket://, sim://).")
@click.option("--emulate", type=click.IntRange(min=1), help="Boot N QEMU boards for the run and stop them after.")
@click.option("--simulate", type=click.IntRange(min=1), help="Run on N in-process simulated boards (sim://).")
@click.option("--board", "board_name", default="mps2-an386", show_default=True,
              help="Board profile of --emulate / --simulate devices.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Run config TOML (docs/run-config.md); the options below override it.")
@click.option("--model", help="Zoo model name (default: the config's, har_cnn).")
@click.option("--strategy", type=click.Choice(["ftte", "fedbuff", "fedavg"]), help="Aggregation strategy.")
@click.option("--target-accuracy", type=click.FloatRange(0, 1, min_open=True), help="Stop at this test accuracy.")
@click.option("--max-versions", type=click.IntRange(min=1), help="Stop after this many global versions.")
@click.option("--max-seconds", type=click.FloatRange(0, min_open=True), help="Stop after this many seconds.")
@click.option("--max-windows", type=click.IntRange(min=1), help="Cap each device's local windows (speed).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (events.jsonl, config.toml); default runs/<time>.")
@boards_dir_option
@json_option
def run(fleet_path: Path | None, emulate: int | None, simulate: int | None, board_name: str, config_path: Path | None,
        model: str | None, strategy: str | None, target_accuracy: float | None, max_versions: int | None,
        max_seconds: float | None, max_windows: int | None, out_dir: Path | None, boards_dirs: tuple[Path, ...],
        as_json: bool) -> None:
    """Train a model across a fleet and print where the run stands after every new version."""
    from contextlib import ExitStack

    from tinyfed.boards import get_board
    from tinyfed.host.config import RunConfig, load_run_config
    from tinyfed.host.engine import Engine, Limits, LocalTraining
    from tinyfed.host.events import EventLog
    from tinyfed.host.setup import DeviceSpec, prepare_run
    from tinyfed.host.strategies import get_strategy

    if sum(x is not None for x in (fleet_path, emulate, simulate)) != 1:
        raise click.UsageError("give exactly one of --fleet FILE, --emulate N, --simulate N")
    cfg = load_run_config(config_path) if config_path else RunConfig()
    top = {k: v for k, v in (("model", model), ("strategy", strategy), ("target_accuracy", target_accuracy))
           if v is not None}
    limits = {k: v for k, v in (("max_versions", max_versions), ("max_seconds", max_seconds)) if v is not None}
    cfg = cfg.model_copy(update={**top, "limits": cfg.limits.model_copy(update=limits)})
    out = out_dir or Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    cfg.dump(out)

    with ExitStack() as stack:
        if fleet_path is not None:
            from tinyfed.firmware_bridge.devices import load_device_fleet

            fleet = load_device_fleet(fleet_path, boards_dirs)
            devices = [DeviceSpec(d.name, d.url, d.board) for d in fleet.linked]
            if not devices:
                raise TinyfedError(f"{fleet_path} lists no device URLs", fix="add url/urls to its [[boards]] entries",
                                   source=str(fleet_path))
        elif emulate is not None:
            from tinyfed.firmware_bridge.emulator import EmulatorFleet

            board = get_board(board_name, boards_dirs)
            emus = stack.enter_context(EmulatorFleet(board, emulate))
            devices = [DeviceSpec(b.name, b.url, board.name) for b in emus.boards]
        else:
            from tinyfed.firmware_bridge.sim import forget_sim_boards

            get_board(board_name, boards_dirs)
            forget_sim_boards()
            devices = [DeviceSpec(f"sim{i}", f"sim://{board_name}?name=run{i}", board_name) for i in range(simulate)]
        payload = "subset" if cfg.strategy == "ftte" else "dense"
        setup = prepare_run(cfg.model, devices, payload, work_dir=out, partition=cfg.data.partition,
                            alpha=cfg.data.alpha, seed=cfg.seed, batch_size=cfg.training.batch_size,
                            max_windows=max_windows)
        if payload == "dense":
            _check_dense_fits(setup, {d.board for d in devices}, boards_dirs)
        strat = get_strategy(cfg.strategy, ignore_extra=True, **cfg.strategy_params.model_dump())
        t = cfg.training
        events = stack.enter_context(EventLog(out))

        def progress(row: dict) -> None:
            if not as_json:
                click.echo(f"version {row['version']:4d}  accuracy {row['accuracy']:.4f}  loss {row['loss']:.4f}  "
                           f"t {row['t']:7.1f} s")

        engine = Engine(setup, devices, strat, events,
                        training=LocalTraining(t.epochs, t.lr, t.batch_size, t.per_channel, t.head_cache),
                        limits=Limits(cfg.target_accuracy, cfg.limits.max_versions, cfg.limits.max_seconds,
                                      cfg.limits.max_bytes),
                        seed=cfg.seed, norm_bound=cfg.checks.norm_bound, max_staleness=cfg.checks.max_staleness,
                        retries=cfg.devices.retries, backoff_s=cfg.devices.backoff_s,
                        device_timeout_s=cfg.devices.device_timeout_s,
                        evaluate_every=cfg.evaluation.every_versions, progress=progress)
        result = engine.run()
    summary = {**result.to_dict(), "model": cfg.model, "devices": len(devices), "run_dir": str(out),
               "target_accuracy": cfg.target_accuracy}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"{result.strategy}: {result.versions} versions, accuracy {result.final_accuracy:.4f} "
                   f"({'reached' if result.reached_target else 'did not reach'} {cfg.target_accuracy}), "
                   f"{result.updates_accepted} updates accepted, {result.updates_rejected} rejected, "
                   f"{result.updates_lost} lost; up {result.bytes_up:,} B, down {result.bytes_down:,} B; "
                   f"{result.wall_seconds:.1f} s; events in {out / 'events.jsonl'}")
