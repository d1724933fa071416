"""``tinyfed run``: train one model across a fleet with FTTE, FedBuff or FedAvg.

    tinyfed run --simulate 8 --strategy ftte --max-versions 20
    tinyfed run --emulate 8 --board mps2-an386 --target-accuracy 0.85
    tinyfed run --fleet lab.toml --config run.toml --out runs/lab1 --json
    tinyfed run --resume runs/lab1          # continue a killed run from its last checkpoint
    tinyfed run --simulate 8 --model ae.tflite --data machine.npz --partition iid --target-metric 0.9

The task (``--task``) follows the model's last op and the data unless named: SOFTMAX classifies
(accuracy), LOGISTIC tags several labels (micro-F1), any other output regresses on ``y`` (R^2)
or, with no ``y`` in the data, reconstructs its input (an autoencoder: the ROC AUC of the
reconstruction error on ``y_test_anomaly`` when the test split has it, else R^2). The run stops
at a target on that metric (``--target-metric``; ``--target-accuracy`` for a classifier).

A run directory holds everything a resume needs: ``config.toml`` (the run config),
``devices.json`` (the devices and how the fleet was made), ``events.jsonl`` and the newest
checkpoint. ``--simulate`` and ``--fleet`` runs resume on the recorded devices; ``--emulate``
boots new QEMU boards and gives them the recorded names (the names key the local data shards).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import click

from tinyfed.commands.console import RunView, phase, print_jsonl
from tinyfed.commands.options import (
    DEFAULT_BOARD_COUNT,
    MAX_STEPS,
    FiniteFloatRange,
    boards_dir_option,
    check_jsonl,
    core_budget_option,
    count_option,
    dashboard_option,
    dp_options,
    dp_table,
    fleet_option,
    json_option,
    jsonl_option,
    kind_count_option,
    out_dir_option,
    resolve_count,
    robust_options,
    seed_option,
    start_dashboard,
    target_accuracy_option,
)
from tinyfed.errors import TinyfedError
from tinyfed.host.config import DEFAULT_TARGET_ACCURACY, Partition, StrategyParams
from tinyfed.host.strategies import STRATEGIES, Strategy
from tinyfed.training.task import Task

log = logging.getLogger(__name__)


def run_strategy(label: str, params: Any, fleet_size: int | None = None) -> Strategy:
    """The run's strategy: ``label`` (a name or a variant such as ``fedavg+overselect``) with the config's
    [strategy_params] (whose ``overselect_factor`` is the factor of a ``+overselect`` label)."""
    from tinyfed.host.strategies import build_variant

    return build_variant(label, fleet_size=fleet_size, **params.model_dump())


def strategy_payload(label: str, params: Any = None) -> str:
    """The payload ("subset" or "dense") the strategy of ``label`` trains, with ``params`` if given."""
    from tinyfed.host.strategies import parse_variant

    if params is not None:
        return run_strategy(label, params).payload
    variant = parse_variant(label)
    return variant.payload or STRATEGIES[variant.name].default_payload


def emulated_board_for(board: Any, strategy: str | None, model: str | None, boards_dirs: tuple[Path, ...] = (),
                       payload: str | None = None) -> Any:
    """The profile ``--emulate`` boots: ``board``, or for a dense payload the profile its dense plan
    picks (:meth:`~tinyfed.planner.dense.DensePlan.emulated_board`), decided before any boot.

    ``strategy`` is a strategy name or label; ``payload`` (when given) is what it trains, else the
    label's payload. Refuses (with the numbers) when neither fits, so no emulator is booted for a run
    that cannot train.
    """
    from tinyfed.planner.dense import plan_dense_model

    if strategy is None or model is None:
        return board
    if (payload or strategy_payload(strategy)) != "dense":
        return board
    return plan_dense_model(model).emulated_board(board, boards_dirs)


def baseline_note(model: str, strategy: str, requested: str, used: str, boards_dirs: tuple[Path, ...] = ()) -> str:
    """The line a run prints when its emulated boards use the baseline profile instead of ``requested``."""
    from tinyfed.boards import get_board
    from tinyfed.planner.dense import plan_dense_model

    ram_need = plan_dense_model(model).ram_bytes
    req, base = get_board(requested, boards_dirs), get_board(used, boards_dirs)
    return (f"{strategy} trains every layer of {model} ({ram_need:,} bytes of RAM); {requested} offers "
            f"{req.fragment_ram_budget_bytes:,}, so the emulated boards run {used}, an emulator-only budget "
            f"({base.fragment_ram_budget_bytes:,} bytes of RAM), not a real board")


DEVICES_FILE = "devices.json"
DEVICES_FORMAT = 1


def _record_devices(out: Path, source: str, count: int, board: str, fleet_path: Path | None,
                    max_windows: int | None, devices: list) -> None:
    """Write how the fleet was made next to the config, so ``--resume`` can make it again.

    ``baseline_board`` is the profile emulated boards were booted with in place of ``board``
    (a dense baseline that did not fit it; see :func:`emulated_board_for`), else None.
    """
    from tinyfed.host.checkpoint import atomic_write_bytes

    baseline = next((d.board for d in devices if d.board != board), None) if source == "emulate" else None
    body = {"format": DEVICES_FORMAT, "source": source, "count": count, "board": board, "baseline_board": baseline,
            "fleet": str(fleet_path.resolve()) if fleet_path is not None else None, "max_windows": max_windows,
            "devices": [{"name": d.name, "url": d.url, "board": d.board} for d in devices]}
    atomic_write_bytes(out / DEVICES_FILE, (json.dumps(body, indent=1) + "\n").encode("utf-8"))


def _read_devices(run_dir: Path) -> dict[str, Any]:
    """The recorded fleet of a run directory, checked; a clear error naming the file otherwise."""
    path = run_dir / DEVICES_FILE
    fix = "the run directory is incomplete or damaged; start the run again"
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TinyfedError("the run directory does not record its devices", fix=fix, source=str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TinyfedError(f"cannot read the recorded devices ({exc})", fix=fix, source=str(path)) from None
    ok = (isinstance(body, dict) and body.get("format") == DEVICES_FORMAT
          and body.get("source") in ("simulate", "emulate", "fleet") and isinstance(body.get("devices"), list)
          and all(isinstance(d, dict) and all(isinstance(d.get(k), str) for k in ("name", "url", "board"))
                  for d in body["devices"]) and body["devices"]
          and isinstance(body.get("baseline_board"), str | None))
    if not ok:
        raise TinyfedError("the recorded devices are not in the format this tinyfed writes", fix=fix,
                           source=str(path))
    return body


@click.command("run")
@fleet_option("Train on these devices: its entries list device URLs (tty, socket://, sim://).")
@kind_count_option("emulate", "Boot QEMU boards for the run and stop them after")
@kind_count_option("simulate", "Run on in-process simulated boards (sim://)")
@count_option(f"How many boards --emulate / --simulate make (default {DEFAULT_BOARD_COUNT}).", default=None)
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the run in this directory from its last checkpoint (limits may be raised).")
@click.option("--board", "board_name", default="mps2-an386", show_default=True,
              help="Board profile of --emulate / --simulate devices.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Run config TOML (docs/run-config.md); the options below override it.")
@click.option("--model", help="Zoo model name or path to a full-int8 .tflite (default: the config's, har_cnn).")
@click.option("--strategy", help=f"Aggregation strategy ({', '.join(STRATEGIES)}) or a variant label "
                                 "NAME[@subset|@dense][+overselect], e.g. fedbuff@subset.")
@click.option("--task", type=click.Choice([t.value for t in Task]),
              help="What the model learns (default: from its last op and the data): classify (SOFTMAX, "
                   "accuracy), multilabel (LOGISTIC, micro-F1 at 0.5), regress (y real-valued, R^2), autoencode "
                   "(no y: reconstruct x; ROC AUC of the reconstruction error on y_test_anomaly, else R^2).")
@target_accuracy_option(None, f"Classification: stop at this test accuracy (default: the config's, "
                              f"{DEFAULT_TARGET_ACCURACY}, above the pretrained start's 0.83).")
@click.option("--target-metric", type=FiniteFloatRange(max=1),
              help="Stop once the task's test metric reaches this (accuracy, micro_f1, r2 or auc).")
@click.option("--max-versions", type=click.IntRange(1, MAX_STEPS), help="Stop after this many global versions.")
@click.option("--max-seconds", type=FiniteFloatRange(0, min_open=True), help="Stop after this many seconds.")
@click.option("--max-windows", type=click.IntRange(1, MAX_STEPS), help="Cap each device's local windows (speed).")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="NPZ with x and y (and x_test, y_test) to shard across the boards; needed for a .tflite --model. "
                   "y: integer labels (classify), 0/1 rows (multilabel), real rows (regress), none (autoencode; "
                   "y_test_anomaly: 1 per anomalous test sample, 0 per normal one).")
@click.option("--test-data", "test_data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="NPZ with x_test and y_test (autoencode: x_test, optional y_test_anomaly) for the held-out "
                   "evaluation (default: those of --data).")
@click.option("--partition", type=click.Choice(get_args(Partition)),
              help="How the data is sharded across the boards (default: the config's, natural = by user).")
@click.option("--alpha", type=FiniteFloatRange(0, min_open=True),
              help="Dirichlet concentration for --partition dirichlet (smaller is more skewed).")
@seed_option("Seed of the data shards, the boards' shuffles and the strategy's draws (default: the config's, 0).",
             default=None)
@click.option("--nested-subsets", "nested_subsets", is_flag=True, default=None,
              help="Nested subsets (FTTE): each board profile trains the largest superset of the common w* its "
                   "budget holds; per-class update sizes are in the summary.")
@core_budget_option
@robust_options(StrategyParams, show_defaults=False)
@dp_options
@out_dir_option("Run directory (events.jsonl, config.toml, devices.json, checkpoints); default runs/<time>.")
@boards_dir_option
@dashboard_option
@json_option
@jsonl_option
@click.pass_context
def run(ctx: click.Context, fleet_path: Path | None, emulate: int | None, simulate: int | None, count: int | None,
        resume_dir: Path | None, board_name: str, config_path: Path | None, model: str | None, strategy: str | None,
        task: str | None, target_accuracy: float | None, target_metric: float | None, max_versions: int | None,
        max_seconds: float | None,
        max_windows: int | None, data_path: Path | None, test_data_path: Path | None, partition: str | None,
        alpha: float | None, seed: int | None, nested_subsets: bool | None, core_budget: float | None,
        robust: str | None, robust_quantile: float | None, robust_window: int | None, trim_fraction: float | None,
        dp_clip: float | None, dp_noise: float | None, dp_delta: float | None, dp_epsilon_budget: float | None,
        out_dir: Path | None,
        boards_dirs: tuple[Path, ...], as_json: bool, jsonl: bool) -> None:
    """Train a model across a fleet and print where the run stands after every new version.

    \b
    Examples:
      tinyfed run --simulate 8 --max-versions 10
      tinyfed run --simulate --count 4 --model digits_cnn --seed 2
      tinyfed run --emulate 8 --board mps2-an386 --target-accuracy 0.85
      tinyfed run --fleet fleet.toml --out runs/lab --json
      tinyfed run --resume runs/lab --max-seconds 600
      tinyfed run --simulate 8 --dp-clip 0.05 --dp-noise 4 --dp-epsilon-budget 8
      tinyfed run --simulate 4 --max-versions 5 --jsonl | jq -c 'select(.kind == "evaluation")'
    """
    from tinyfed.host.config import RunConfig, load_run_config, looks_like_path

    check_jsonl(as_json, jsonl)
    if target_accuracy is not None and target_metric is not None:
        raise click.UsageError("give one of --target-accuracy and --target-metric (the first is the second's "
                               "name for classification)")
    top = {k: v for k, v in (("model", model), ("strategy", strategy), ("task", task),
                             ("target_accuracy", target_accuracy), ("target_metric", target_metric), ("seed", seed))
           if v is not None}
    nesting = {k: v for k, v in (("nested_subsets", nested_subsets), ("core_budget", core_budget)) if v is not None}
    limits = {k: v for k, v in (("max_versions", max_versions), ("max_seconds", max_seconds)) if v is not None}
    robustness = {k: v for k, v in (("robust", robust), ("robust_quantile", robust_quantile),
                                    ("robust_window", robust_window), ("trim_fraction", trim_fraction))
                  if v is not None}
    privacy = dp_table(dp_clip, dp_noise, dp_delta, dp_epsilon_budget)
    if resume_dir is not None:
        fixed = {"--fleet": fleet_path, "--emulate": emulate, "--simulate": simulate, "--count": count,
                 "--config": config_path,
                 "--model": model, "--strategy": strategy, "--task": task, "--max-windows": max_windows,
                 "--out": out_dir,
                 "--data": data_path, "--test-data": test_data_path, "--partition": partition, "--alpha": alpha,
                 "--nested-subsets": nested_subsets, "--core-budget": core_budget, "--seed": seed,
                 "--dp-clip": dp_clip, "--dp-noise": dp_noise, "--dp-delta": dp_delta,
                 "--dp-epsilon-budget": dp_epsilon_budget,
                 **{"--" + k.replace("_", "-"): v for k, v in robustness.items()}}
        given = [k for k, v in fixed.items() if v is not None]
        if ctx.get_parameter_source("board_name") == click.core.ParameterSource.COMMANDLINE:
            given.append("--board")
        if given:
            raise click.UsageError(f"--resume continues the run as it was recorded; drop {', '.join(given)} "
                                   "(only --target-accuracy / --target-metric, --max-versions and --max-seconds "
                                   "may change)")
        _resume(resume_dir, top, limits, boards_dirs, as_json, jsonl)
        return
    if sum(x is not None for x in (fleet_path, emulate, simulate)) != 1:
        raise click.UsageError("give exactly one of --fleet FLEET, --emulate [N], --simulate [N] (or --resume RUN_DIR)")
    if fleet_path is not None and count is not None:
        raise click.UsageError("--count is for --emulate / --simulate; a fleet file lists its own devices")
    if emulate is not None:
        emulate = resolve_count("emulate", emulate, count)
    if simulate is not None:
        simulate = resolve_count("simulate", simulate, count)
    cfg = load_run_config(config_path) if config_path else RunConfig()
    partition_chosen = partition is not None or "partition" in cfg.data.model_fields_set
    data: dict[str, Any] = {k: str(v.resolve()) for k, v in (("npz", data_path), ("test_npz", test_data_path))
                            if v is not None}
    data.update({k: v for k, v in (("partition", partition), ("alpha", alpha)) if v is not None})
    if model is not None and looks_like_path(model):
        top["model"] = str(Path(model).expanduser().resolve())
    if "target_accuracy" in top or "target_metric" in top:  # the command line's target replaces the file's
        cfg = cfg.model_copy(update={"target_accuracy": None, "target_metric": None})
    cfg = checked_config(cfg.model_dump(), {**top, **nesting, "limits": limits, "data": data,
                                            "strategy_params": robustness,
                                            "privacy": privacy})
    fleet = None
    if fleet_path is not None:  # read once; a fleet that cannot be run is refused before a run directory is named
        from tinyfed.firmware_bridge.link.devices import load_device_fleet, require_urls

        fleet = load_device_fleet(fleet_path, boards_dirs)
        require_urls(fleet)
    out = new_run_dir(out_dir, create=False)
    click.echo(f"run directory {out}", err=True)  # first: loading the model may take a while
    start_dashboard(out)
    with phase(f"loading {Path(cfg.model).name} and its data", quiet=as_json):
        cfg, run_data = checked_run_data(cfg, emulate or simulate, partition_chosen)
    cfg = cfg.model_copy(update={"task": run_data.task.value})  # recorded, so a resume trains the same task
    with ExitStack() as claim:
        # made only now (a bad model or data file leaves no empty run behind) and locked before any write
        claim_run_dir(claim, out, fresh=True)
        cfg.dump(out)
        set_resume_hint(out)
        _train_fresh(cfg, out, run_data, fleet_path=fleet_path, fleet=fleet, emulate=emulate, simulate=simulate,
                     board_name=board_name, boards_dirs=boards_dirs, max_windows=max_windows, as_json=as_json,
                     jsonl=jsonl)


def _train_fresh(cfg: Any, out: Path, run_data: Any, *, fleet_path: Path | None, fleet: Any, emulate: int | None,
                 simulate: int | None, board_name: str, boards_dirs: tuple[Path, ...], max_windows: int | None,
                 as_json: bool, jsonl: bool) -> None:
    """A fresh run in the claimed ``out``: open its devices (``fleet``: ``--fleet``'s file, read and checked
    already), record them, train and report."""
    with ExitStack() as stack:
        devices, source, count = open_devices(stack, fleet=fleet, emulate=emulate, simulate=simulate,
                                              board_name=board_name, boards_dirs=boards_dirs,
                                              strategy=cfg.strategy, model=cfg.model,
                                              payload=strategy_payload(cfg.strategy, cfg.strategy_params),
                                              quiet=as_json)
        _record_devices(out, source, count, board_name, fleet_path, max_windows, devices)
        if source == "emulate" and devices[0].board != board_name:
            click.echo(baseline_note(cfg.model, cfg.strategy, board_name, devices[0].board, boards_dirs), err=True)
        result = train_run(stack, cfg, out, devices, max_windows, boards_dirs, as_json, None, data=run_data,
                           jsonl=jsonl)
    report_run(cfg, result, out, len(devices), as_json, jsonl=jsonl)


def checked_run_data(cfg: Any, n_devices: int | None, partition_chosen: bool = True) -> tuple[Any, Any]:
    """The run's config and its model and data, loaded and checked against its partition before a
    board is booted.

    A bad data file, or a chosen ``partition = "natural"`` on data with no users, is an error up
    front rather than after the emulators have started; when nobody chose the partition, such data
    is shared out iid instead (the config returned records it). ``n_devices`` is None when the
    count is not known yet (a fleet file): then only what does not depend on it is checked here.
    """
    from tinyfed.host.rundata import load_run_data

    data = load_run_data(cfg.model, cfg.data.npz, cfg.data.test_npz, cfg.task)
    if not partition_chosen and cfg.data.partition == "natural" and data.groups is None:
        click.echo(f"{Path(data.name).name}: the data has no users to partition by, so each board gets an iid "
                   "share (--partition chooses)", err=True)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"partition": "iid"})})
    data.check_partition(cfg.data.partition, n_devices, cfg.data.alpha, cfg.seed)
    check_stop_rule(cfg, data.task, data.metric)
    return cfg, data


def check_stop_rule(cfg: Any, task: Task, metric: str) -> float | None:
    """The run's target on ``metric`` (:meth:`~tinyfed.host.config.RunConfig.stop_target`); a run
    with neither a target nor a limit would never end, so it is refused before any board boots."""
    target = cfg.stop_target(task, metric)
    lim = cfg.limits
    if target is None and lim.max_versions is None and lim.max_seconds is None and lim.max_bytes is None:
        raise TinyfedError(f"this {task.value} run has no target and no limit, so it would never stop",
                           fix=f"give --target-metric (a target {metric}), --max-versions or --max-seconds")
    return target


def checked_config(base: dict[str, Any], options: dict[str, Any]) -> Any:
    """A run config from ``base`` with the command line's ``options`` laid over it, checked like a file."""
    from tinyfed.host.config import RunConfig, checked

    merged = dict(base)
    for key, value in options.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    return checked(RunConfig, merged, "the command line")


def new_run_dir(out_dir: Path | None, *, create: bool = True) -> Path:
    """The directory of a new run (``runs/<time>`` by default), made (0700) unless ``create`` is false;
    refuses one another run holds (:mod:`tinyfed.host.rundir`) or that already holds a run."""
    from tinyfed.host.rundir import holds_run, make_run_dir, refuse_if_busy

    out = out_dir or Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    refuse_if_busy(out)
    if holds_run(out):
        raise TinyfedError("this directory already holds a run",
                           fix=f"continue it with `tinyfed run --resume {out}`, or give another --out",
                           source=str(out))
    if create:
        make_run_dir(out)
    return out


def claim_run_dir(stack: ExitStack, out: Path, *, fresh: bool) -> None:
    """Take ``out`` for this run before anything is written there, until ``stack`` closes: files made
    private (0600, directories 0700) and the run directory's lock held, so a second run on it is
    refused before it writes; a ``fresh`` run's directory must hold no run (checked under the lock)."""
    from tinyfed.host.rundir import RunLock, holds_run, make_run_dir, private_files

    stack.enter_context(private_files())
    if fresh:
        make_run_dir(out)
    stack.enter_context(RunLock(out))
    if fresh and holds_run(out):  # a run that took the lock and finished while this one loaded its data
        raise TinyfedError("this directory already holds a run",
                           fix=f"continue it with `tinyfed run --resume {out}`, or give another --out",
                           source=str(out))


def open_devices(stack: ExitStack, *, fleet: Any = None, emulate: int | None = None,
                 simulate: int | None = None, board_name: str = "mps2-an386",
                 boards_dirs: tuple[Path, ...] = (), strategy: str | None = None,
                 model: str | None = None, payload: str | None = None, quiet: bool = False) -> tuple[list, str, int]:
    """The run's devices from exactly one source; emulators booted here stop when ``stack`` closes.

    ``fleet`` is a fleet file already read and checked (``link.devices.load_device_fleet`` and
    ``require_urls``). Returns the devices, the source's name (``fleet``, ``emulate``, ``simulate``, as
    ``devices.json`` records it) and the count asked for. With ``strategy`` and ``model`` given,
    ``--emulate`` boots the board's baseline profile for a dense baseline that does not fit the
    board (:func:`emulated_board_for`; ``payload`` is the strategy's when its params set one); the
    devices then carry that profile's name.
    """
    from tinyfed.boards import get_board
    from tinyfed.host.setup import DeviceSpec

    if fleet is not None:
        devices = [DeviceSpec(d.name, d.url, d.board) for d in fleet.linked if d.url is not None]
        return devices, "fleet", len(devices)
    if emulate is not None:
        board = emulated_board_for(get_board(board_name, boards_dirs), strategy, model, boards_dirs, payload)
        emus = boot_boards(stack, board, emulate, quiet=quiet)
        return [DeviceSpec(b.name, b.url, board.name) for b in emus.boards], "emulate", emulate
    from tinyfed.firmware_bridge.twin.sim import forget_sim_boards

    assert simulate is not None
    get_board(board_name, boards_dirs)
    forget_sim_boards()
    devices = [DeviceSpec(f"sim{i}", f"sim://{board_name}?name=run{i}", board_name) for i in range(simulate)]
    return devices, "simulate", simulate


def boot_boards(stack: ExitStack, board: Any, count: int, *, quiet: bool = False) -> Any:
    """Boot ``count`` QEMU boards (stopped when ``stack`` closes), saying on stderr that they boot
    and each board as it answers a ping."""
    from tinyfed.firmware_bridge.emulate.emulator import EmulatorFleet

    def ready(emu: Any, seconds: float) -> None:
        if not quiet:
            click.echo(f"{emu.name} answers ping after {seconds:.1f} s", err=True)

    with phase(f"booting {count} QEMU {board.name} boards (and building their firmware if needed)", quiet=quiet):
        return stack.enter_context(EmulatorFleet(board, count, on_ready=ready))


def _resume(run_dir: Path, top: dict[str, Any], limits: dict[str, Any], boards_dirs: tuple[Path, ...],
            as_json: bool, jsonl: bool = False) -> None:
    """``--resume``: rebuild the recorded fleet and continue from the newest checkpoint."""
    from tinyfed.host.config import CONFIG_FILE, load_run_config

    if not run_dir.is_dir():
        raise TinyfedError("no such run directory", fix="give the --out directory of an earlier `tinyfed run`",
                           source=str(run_dir))
    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        raise TinyfedError(f"not a run directory: it has no {CONFIG_FILE}",
                           fix="give the --out directory of an earlier `tinyfed run`", source=str(run_dir))
    recorded = _read_devices(run_dir)
    set_resume_hint(run_dir)
    start_dashboard(run_dir)
    cfg = load_run_config(config_file)
    if "target_accuracy" in top or "target_metric" in top:  # a new target replaces the recorded one
        cfg = cfg.model_copy(update={"target_accuracy": None, "target_metric": None})
    cfg = cfg.model_copy(update={**top, "limits": cfg.limits.model_copy(update=limits)})
    with ExitStack() as claim:
        # the lock first: a host still running on this directory must not have its checkpoints read mid-write
        claim_run_dir(claim, run_dir, fresh=False)
        _resume_claimed(run_dir, cfg, recorded, top, limits, boards_dirs, as_json, jsonl)


def _resume_claimed(run_dir: Path, cfg: Any, recorded: dict[str, Any], top: dict[str, Any], limits: dict[str, Any],
                    boards_dirs: tuple[Path, ...], as_json: bool, jsonl: bool) -> None:
    """``--resume`` once the run directory is locked: continue from its newest checkpoint and report."""
    from tinyfed.host.engine import latest_checkpoint
    from tinyfed.host.events import EventLog
    from tinyfed.host.setup import DeviceSpec

    with ExitStack() as stack:
        events = stack.enter_context(EventLog(run_dir))
        checkpoint = latest_checkpoint(run_dir)
        if top or limits:
            cfg.dump(run_dir)  # the record says which limits the resumed run used
        devices = [DeviceSpec(d["name"], d["url"], d["board"]) for d in recorded["devices"]]
        if recorded["source"] == "emulate":
            from tinyfed.boards import get_board

            # the profile the run was booted with: the baseline profile when a dense baseline needed it
            board = get_board(recorded.get("baseline_board") or recorded["board"], boards_dirs)
            emus = boot_boards(stack, board, len(devices), quiet=as_json)
            devices = [DeviceSpec(d.name, b.url, d.board) for d, b in zip(devices, emus.boards, strict=True)]
        elif recorded["source"] == "simulate":
            from tinyfed.firmware_bridge.twin.sim import forget_sim_boards

            forget_sim_boards()
        if not as_json:
            click.echo(err=jsonl, message=f"resuming {run_dir} at version {checkpoint.version} (checkpoint generation "
                       f"{checkpoint.generation})")
        result = train_run(stack, cfg, run_dir, devices, recorded.get("max_windows"), boards_dirs, as_json, checkpoint,
                           events=events, jsonl=jsonl)
    report_run(cfg, result, run_dir, len(devices), as_json, resumed_from=checkpoint.version, jsonl=jsonl)


def train_run(stack: ExitStack, cfg: Any, out: Path, devices: list, max_windows: int | None,
           boards_dirs: tuple[Path, ...], as_json: bool, checkpoint: Any, events: Any = None,
           announce: Any = None, data: Any = None, jsonl: bool = False) -> Any:
    """Prepare the run for the devices and drive the engine to its end (fresh or resumed).

    ``announce`` (if given) sees the prepared :class:`~tinyfed.host.setup.RunSetup` before training;
    ``data`` is the run's :class:`~tinyfed.host.rundata.RunData` when already loaded (else loaded here).
    ``jsonl`` streams every event on stdout instead of the live view (progress stays on stderr).
    """
    from tinyfed.host.engine import Engine, Limits
    from tinyfed.host.events import EventLog, write_history
    from tinyfed.host.setup import check_stores, prepare_run

    strat = run_strategy(cfg.strategy, cfg.strategy_params)
    payload = strat.payload  # the plan's subset (FTTE, @subset variants) or the whole model (the baselines)
    with phase(f"planning {Path(cfg.model).name} for {len(devices)} boards and preparing their fragment, training "
               "program and local data", quiet=as_json):
        setup = prepare_run(cfg.model, devices, payload, work_dir=out, partition=cfg.data.partition,
                            alpha=cfg.data.alpha, seed=cfg.seed, batch_size=cfg.training.batch_size,
                            max_windows=max_windows, start=cfg.start, npz=cfg.data.npz, test_npz=cfg.data.test_npz,
                            data=data, task=cfg.task, core_budget=cfg.core_budget if payload == "subset" else None,
                            nested=cfg.nested_subsets and payload == "subset")
    target = check_stop_rule(cfg, setup.task, setup.metric)
    if announce is not None:
        announce(setup)
    if payload == "dense":  # the baselines train every layer: refuse up front when a board cannot hold that
        from tinyfed.boards import get_board
        from tinyfed.planner.dense import DensePlan

        assert isinstance(setup.plan, DensePlan)
        setup.plan.check_fits(get_board(name, boards_dirs) for name in {d.board for d in devices})
    if setup.classes:  # nested subsets: each board holds its own class's program
        for profile, c in setup.classes.items():
            check_stores([d for d in devices if d.board == profile], c.program, setup.images,
                         setup.facts["local_windows"], boards_dirs)
    else:
        check_stores(devices, setup.program, setup.images, setup.facts["local_windows"], boards_dirs)
    if events is None:
        events = stack.enter_context(EventLog(out))
    if jsonl:
        events.listeners.append(print_jsonl)

    from tinyfed.host.dashboard import Dashboard

    view = stack.enter_context(RunView(Dashboard(cfg.strategy, target, len(devices), metric=setup.metric),
                                       quiet=as_json, stream=jsonl))
    progress = view.progress

    engine = Engine(setup, devices, strat, events,
                    training=replace(cfg.training.local_training(), dp=cfg.privacy.dp_config()),
                    limits=Limits(target, cfg.limits.max_versions, cfg.limits.max_seconds,
                                  cfg.limits.max_bytes),
                    seed=cfg.seed, norm_bound=cfg.checks.norm_bound, max_staleness=cfg.checks.max_staleness,
                    retries=cfg.devices.retries, backoff_s=cfg.devices.backoff_s,
                    device_timeout_s=cfg.devices.device_timeout_s,
                    evaluate_every=cfg.evaluation.every_versions, progress=progress, resume_from=checkpoint)
    result = engine.run()
    write_history(out)  # history.csv, as simulate writes one: per evaluated version, from events.jsonl
    plots = run_plots(out)  # and its charts, also from events.jsonl: after a resume they cover the whole run
    view.finish(result.reached_target)  # the last frame: how the run ended, not an estimate of what is left
    # the deployable result: the full int8 model (and, for FTTE, its fragments) with the final w*
    from tinyfed.host.export import export_run

    exported = export_run(out / "export", setup.source, result.vector,
                          facts={"version": result.versions, "task": result.task, result.metric: result.final_metric})
    result.export = {k: str(v) for k, v in exported.files.items()}
    result.plots = plots
    return result


def run_plots(out: Path) -> list[str]:
    """The run's charts, ``<metric>_vs_time.png`` and ``bytes_vs_time.png`` (:func:`tinyfed.host.runs.write_run_plots`);
    a chart that cannot be drawn is a warning, never a failed run."""
    from tinyfed.host.runs import write_run_plots

    try:
        return [str(p) for p in write_run_plots(out)]
    except TinyfedError as exc:
        log.warning("no charts for %s: %s", out, exc.one_line())
        return []


def _recorded_baseline(out: Path) -> str | None:
    """The baseline profile ``devices.json`` of ``out`` records (None when the run used its board as asked)."""
    try:
        return _read_devices(out).get("baseline_board")
    except TinyfedError:
        return None


def set_resume_hint(out: Path) -> None:
    """Leave the command that continues the run in ``out`` for the CLI's Ctrl-C message."""
    from tinyfed.cli import RESUME_HINT, RUN_DIR

    meta = click.get_current_context().meta
    meta[RESUME_HINT] = f"tinyfed run --resume {out}"
    meta[RUN_DIR] = str(out)


def report_run(cfg: Any, result: Any, out: Path, n_devices: int, as_json: bool,
               resumed_from: int | None = None, jsonl: bool = False) -> None:
    """The run's summary: one JSON object (``--json``) or a line; says when emulated boards ran a baseline profile.
    With ``jsonl`` nothing more goes to stdout: the event stream ended with ``run_end``.

    A run that stopped on a limit before its target exits 1 (after the summary), so scripts and CI
    can tell "trained to the target" from "ran out of time"."""
    from tinyfed.cli import EXIT_FAILED

    baseline = _recorded_baseline(out)
    failed = failed_boards(out)
    target = cfg.stop_target(Task(result.task), result.metric)
    targets = {"target_metric": target, **({"target_accuracy": target} if result.metric == "accuracy" else {})}
    summary = {**result.to_dict(), "model": cfg.model, "devices": n_devices, "run_dir": str(out),
               **targets, "resumed_from": resumed_from,
               "baseline_board": baseline, "export": getattr(result, "export", {}),
               "plots": getattr(result, "plots", []), **({"boards_failed": failed} if failed else {})}
    if as_json:
        click.echo(json.dumps(summary))
    elif not jsonl:
        reached = "no target" if target is None else \
            f"{'reached' if result.reached_target else 'did not reach'} {target}"
        click.echo(f"{result.strategy}: {result.task}, {result.versions} versions, {result.metric} "
                   f"{result.final_metric:.4f} ({reached}), "
                   f"{result.updates_accepted} updates accepted, {result.updates_rejected} rejected"
                   f"{_reasons(getattr(result, 'rejections', {}))}, "
                   f"{result.updates_lost} lost, {result.tasks_unfinished} unfinished at the stop; "
                   f"up {result.bytes_up:,} B, down {result.bytes_down:,} B "
                   f"(provisioning {result.provision_bytes_down:,} B down); "
                   f"{result.wall_seconds:.1f} s; "
                   + (f"boards: {baseline} (emulator-only baseline budget, not a real board); " if baseline else "")
                   + (f"epsilon {result.epsilon:.3g} at delta {result.delta:g} (per board, docs/privacy.md); "
                      if result.epsilon is not None else "")
                   + f"events in {out / 'events.jsonl'}")
        for board, c in getattr(result, "classes", {}).items():
            click.echo(f"nested class {board}: {c['values']:,} values, training memory "
                       f"{c['training_memory_bytes']:,} B, {c['bytes_per_update']:,} B per update")
        final = getattr(result, "export", {}).get("final")
        if final:
            click.echo(f"deployable int8 model: {final}")
        if getattr(result, "plots", None):
            click.echo(f"charts: {', '.join(result.plots)}")
    if failed:
        _fail_no_boards(failed, result.updates_accepted)
    if getattr(result, "stop_reason", None) == "privacy_budget":
        click.echo(f"the run stopped at its epsilon budget {cfg.privacy.epsilon_budget:g}: every board's next "
                   f"task would have passed it (epsilon spent {result.epsilon:.3g} at delta {result.delta:g})",
                   err=True)
    if target is not None and not result.reached_target:
        best = max((row[result.metric] for row in result.history if row.get(result.metric) is not None),
                   default=result.final_metric)
        click.echo(f"the run stopped before its target {result.metric} {target:g} (best {best:.4f}), so it exits "
                   f"{EXIT_FAILED}; `tinyfed run --resume {out}` with a higher --max-versions or --max-seconds "
                   "trains on", err=True)
        raise SystemExit(EXIT_FAILED)


def _reasons(counts: dict[str, int]) -> str:
    """`` (bad_mac 2, norm_too_large 1)``: the rejections by reason, or nothing when there were none."""
    return f" ({', '.join(f'{k} {n}' for k, n in sorted(counts.items()))})" if counts else ""


def failed_boards(out: Path) -> list[dict[str, str]]:
    """Every board of the run with its URL and last failure when all of them ended dropped (no board
    left to train on), else an empty list; read from ``devices.json`` and ``events.jsonl``."""
    import re

    from tinyfed.host.events import read_events

    try:
        recorded = _read_devices(out)["devices"]
        events = list(read_events(out))
    except TinyfedError:
        return []
    state: dict[str, str] = {}
    reason: dict[str, str] = {}
    refused: dict[str, str] = {}  # the last authentication (or update check) refusal, by reason code
    for ev in events:
        device = ev.get("device")
        if ev["kind"] == "rejection" and isinstance(device, str):
            refused[device] = str(ev.get("reason"))
        if ev["kind"] == "device_state" and isinstance(device, str):
            state[device] = str(ev["state"])
        if ev["kind"] in ("device_state", "lost") and isinstance(device, str) and ev.get("reason"):
            reason[device] = str(ev["reason"])
    if not recorded or any(state.get(d["name"]) != "dropped" for d in recorded):
        return []
    rows = []
    for d in recorded:
        why = re.sub(r"^[A-Z]\w*: ", "", reason.get(d["name"], "no reason recorded"))  # the exception's class name
        why = why.removeprefix(f"{d['name']}: ").split(" Fix: ")[0].rstrip(".")
        rows.append({"device": d["name"], "url": d["url"], "reason": why,
                     **({"rejection": refused[d["name"]]} if d["name"] in refused else {})})
    return rows


def _fail_no_boards(failed: list[dict[str, str]], accepted: int) -> None:
    """Say which boards failed and why, and exit 1: a run whose every board was dropped did not train."""
    from tinyfed.cli import EXIT_FAILED

    what = "no board could be reached" if accepted == 0 else "every board failed and was dropped"
    from tinyfed.firmware_bridge.link.errors import AUTH_REASONS

    listing = "; ".join(f"{b['device']} ({b['url']}): {b['reason']}" for b in failed)
    refused = sorted({b["rejection"] for b in failed if b.get("rejection") in AUTH_REASONS})
    check = (f"boards refused authentication ({', '.join(refused)}): pass the --key-store that provisioned them, "
             "or provision them again (docs/security.md)" if refused else
             "check that each board is powered and answers at its URL (`tinyfed devices --url URL`)")
    # not --resume: a board dropped at the checkpoint stays dropped in the resumed run
    click.echo(f"error: {what}: {listing}. Fix: {check}, then start the run again with another --out", err=True)
    raise SystemExit(EXIT_FAILED)
