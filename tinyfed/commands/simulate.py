"""``tinyfed simulate``: FTTE, FedBuff and FedAvg on one simulated fleet, in the boards' time.

    tinyfed simulate --count 500 --stragglers 0.9 --strategies ftte,fedbuff,fedavg --model har_cnn
    tinyfed simulate --model digits_cnn --partition dirichlet --alpha 0.3 --target-accuracy 0.9 --out build/sim
    tinyfed simulate --board-mix nrf52840:0.5,apollo3:0.3,stm32l4r9:0.2 --slowdown lognormal:1:0.5 --json
    tinyfed simulate --strategies ftte,fedbuff@subset,fedavg@subset+overselect --round-deadline 600

Every strategy runs on the same devices, data shards, straggler factors and seed; the table
gives time to the target in simulated seconds, versions, accuracy, on-device training memory and
bytes, with ratios to FedAvg. A strategy is named by its label, ``NAME[@subset|@dense][+overselect]``
(``fedbuff@subset``: FedBuff on FTTE's w*), and reported under it in the table and in ``--json``.
``--out DIR`` writes ``summary.csv``, ``history.csv``, ``study.json`` and, with matplotlib,
``accuracy_vs_time.png`` and ``bytes_vs_time.png``.
See ``docs/simulator.md``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, get_args

import click
from pydantic import BaseModel

from tinyfed.commands.console import StudyProgress, output_console, phase, print_jsonl
from tinyfed.commands.options import (
    DASHBOARD,
    MAX_STEPS,
    boards_dir_option,
    check_jsonl,
    core_budget_option,
    dashboard_option,
    deprecated_alias,
    dp_options,
    field_range,
    json_option,
    jsonl_option,
    out_dir_option,
    robust_options,
    seed_option,
    start_dashboard,
    target_accuracy_option,
)
from tinyfed.errors import TinyfedError
from tinyfed.host.config import (
    Checks,
    Evaluation,
    Partition,
    Start,
    StrategyParams,
    Training,
)
from tinyfed.host.decomposition import decomposition, format_decomposition
from tinyfed.host.simulator import StudyConfig
from tinyfed.host.strategies import DEFAULT_OVERSELECT_FACTOR, SERVER_OPTIMIZERS, STRATEGIES

log = logging.getLogger(__name__)

#: The most studies `--seeds`/`--partitions` run at once (each is a process with its own data).
MAX_WORKERS = 64

SUMMARY_FIELDS = ("strategy", "payload", "reached_target", "time_to_target_s", "versions_to_target", "versions",
                  "sim_seconds", "final_accuracy", "end_accuracy_mean", "best_accuracy", "device_memory_bytes",
                  "bytes_per_update", "bytes_to_target", "bytes_total", "bytes_down", "bytes_up", "tasks",
                  "board_steps", "updates_accepted", "updates_rejected", "updates_lost", "updates_lost_offline",
                  "wall_seconds", "board_steps_per_s", "stop_reason")
HISTORY_FIELDS = ("strategy", "version", "sim_time_s", "accuracy", "loss", "bytes_down", "bytes_up", "bytes_total",
                  "updates_accepted", "wall_s")
RATIO_FIELDS = ("time_to_target_s", "device_memory_bytes", "bytes_per_update", "bytes_to_target", "bytes_total")


def ratios(results: dict[str, Any], base: str = "fedavg") -> dict[str, dict[str, float | None]]:
    """Each strategy's figures divided by ``base``'s (None where either is missing)."""
    if base not in results:
        return {}
    b = results[base].to_dict()
    out: dict[str, dict[str, float | None]] = {}
    for name, r in results.items():
        d = r.to_dict()
        out[name] = {k: (d[k] / b[k] if d[k] is not None and b[k] not in (None, 0) else None) for k in RATIO_FIELDS}
    return out


def _num(v: Any, fmt: str = ",.0f") -> str:
    return "-" if v is None else format(v, fmt)


def format_table(results: dict[str, Any], target: float | None, horizon_s: float | None = None) -> str:
    """The side-by-side table (markdown, so it pastes into a paper's notes or BENCHMARKS.md)."""
    rat = ratios(results)
    head = ("| strategy | time to target (sim s) | versions | final acc | end mean acc | best acc | device memory (B) "
            "| bytes / update | bytes to target | bytes total | x FedAvg: time | memory | bytes/update "
            "| bytes to target |")
    lines = [head, "|" + " --- |" * 2 + " ---: |" * 12]
    for name, r in results.items():
        ttt = _num(r.time_to_target_s, ",.1f") if r.reached_target else f"not reached ({r.sim_seconds:,.0f})"
        x = rat.get(name, {})
        lines.append(f"| {name} | {ttt} | {r.versions} | {r.final_accuracy:.4f} | {r.end_accuracy_mean:.4f} "
                     f"| {r.best_accuracy:.4f} | {r.device_memory_bytes:,} | {r.bytes_per_update:,} "
                     f"| {_num(r.bytes_to_target, ',')} | {r.bytes_total:,} "
                     f"| {_num(x.get('time_to_target_s'), '.4f')} | {_num(x.get('device_memory_bytes'), '.4f')} "
                     f"| {_num(x.get('bytes_per_update'), '.4f')} | {_num(x.get('bytes_to_target'), '.4f')} |")
    lines.append(_notes(target, horizon_s))
    return "\n".join(lines)


def result_tables(results: dict[str, Any], target: float | None, horizon_s: float | None = None) -> list[Any]:
    """The results as the terminal shows them: one table of figures, one of ratios to FedAvg, and
    the notes (the same numbers as :func:`format_table`'s markdown, in two narrower tables)."""
    from rich.table import Table

    rat = ratios(results)
    main = Table(title="results", title_justify="left")
    for col in ("strategy", "time to target (sim s)", "versions", "final acc", "end mean acc", "best acc",
                "device memory (B)", "bytes / update", "bytes to target", "bytes total"):
        main.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=col == "strategy")
    vs = Table(title="x FedAvg", title_justify="left")
    for col in ("strategy", "time to target", "device memory", "bytes / update", "bytes to target"):
        vs.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=col == "strategy")
    for name, r in results.items():
        ttt = _num(r.time_to_target_s, ",.1f") if r.reached_target else f"not reached ({r.sim_seconds:,.0f})"
        main.add_row(name, ttt, str(r.versions), f"{r.final_accuracy:.4f}", f"{r.end_accuracy_mean:.4f}",
                     f"{r.best_accuracy:.4f}", f"{r.device_memory_bytes:,}", f"{r.bytes_per_update:,}",
                     _num(r.bytes_to_target, ","), f"{r.bytes_total:,}")
        x = rat.get(name, {})
        vs.add_row(name, *(_num(x.get(k), ".4f") for k in ("time_to_target_s", "device_memory_bytes",
                                                           "bytes_per_update", "bytes_to_target")))
    return [main, vs, _notes(target, horizon_s)]


def _notes(target: float | None, horizon_s: float | None) -> str:
    notes = ["times are the boards' simulated seconds"]
    if target is not None:
        notes.insert(0, f"target test accuracy {target:g}")
    if horizon_s is not None:
        notes.append(f"final accuracy at the common horizon, {horizon_s:,.0f} simulated s")
    notes.append("end mean: time-weighted over the last tenth of each run")
    return f"({'; '.join(notes)})"


def write_outputs(out: Path, study: Any, results: dict[str, Any], config: dict[str, Any]) -> list[Path]:
    """summary.csv, summary.md (the table in markdown, to paste), history.csv, study.json and the
    plots (when matplotlib is importable)."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "summary.csv", out / "summary.md", out / "history.csv", out / "study.json"]
    files[1].write_text(format_table(results, config.get("target_accuracy"), study.horizon_s) + "\n")
    with open(files[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in results.values():
            w.writerow(r.to_dict())
    with open(files[2], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        for name, r in results.items():
            for row in r.history:
                w.writerow({"strategy": name, **row})
    doc = {"config": config, "study": study.describe(), "results": {k: r.to_dict() for k, r in results.items()},
           "ratios_to_fedavg": ratios(results), "decomposition": decomposition(results)}
    files[3].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    files.extend(plot(out, results, config.get("target_accuracy")))
    return files


def plot(out: Path, results: dict[str, Any], target: float | None) -> list[Path]:
    """accuracy_vs_time.png (linear and log time) and bytes_vs_time.png (log-log), drawn by
    :mod:`tinyfed.host.plots` as ``run`` and ``runs compare`` draw theirs; none without matplotlib."""
    from tinyfed.host.plots import Curve, PlotError, bytes_chart, metric_chart

    curves = [Curve(label=name, time_s=[h["sim_time_s"] for h in r.history], version=[h["version"] for h in r.history],
                    value=[h["accuracy"] for h in r.history], bytes=[h["bytes_total"] for h in r.history],
                    end_s=r.sim_seconds, simulated=True) for name, r in results.items()]
    try:
        return [metric_chart(out / "accuracy_vs_time.png", curves, targets=[target] if target is not None else [],
                             log_panel=True),
                bytes_chart(out / "bytes_vs_time.png", curves, log=True)]
    except PlotError as exc:
        log.warning("no plots: %s", exc.one_line())
        return []


#: Where each option of ``tinyfed simulate`` lands in the study config (``table.key`` for the run
#: config's tables); an option not listed here sets the study key of its own name.
OPTION_KEYS = {
    "epochs": "training.epochs", "lr": "training.lr", "batch_size": "training.batch_size",
    "buffer_size": "strategy_params.buffer_size", "clients_per_round": "strategy_params.clients_per_round",
    "server_lr": "strategy_params.server_lr", "staleness_exponent": "strategy_params.staleness_exponent",
    "variance_gamma": "strategy_params.variance_gamma", "variance_floor": "strategy_params.variance_floor",
    "agreement_exponent": "strategy_params.agreement_exponent", "concurrency": "strategy_params.concurrency",
    "server_optimizer": "strategy_params.server_optimizer", "server_momentum": "strategy_params.server_momentum",
    "server_beta2": "strategy_params.server_beta2", "server_tau": "strategy_params.server_tau",
    "robust": "strategy_params.robust", "robust_quantile": "strategy_params.robust_quantile",
    "robust_window": "strategy_params.robust_window", "trim_fraction": "strategy_params.trim_fraction",
    "round_deadline": "round_deadline_s", "head_cache": "training.head_cache", "max_staleness": "checks.max_staleness",
    "norm_bound": "checks.norm_bound", "evaluate_every": "evaluation.every_versions",
    "run_past_target": "stop_at_target",
    "dp_clip": "privacy.clip", "dp_noise": "privacy.noise", "dp_delta": "privacy.delta",
    "dp_epsilon_budget": "privacy.epsilon_budget",
}


def _table_default(table: type[BaseModel], key: str) -> Any:
    """A run config table's default, shown as the option's (a study trains and checks as a run does)."""
    return table.model_fields[key].default


@click.command("simulate")
@click.option("--model", default="har_cnn", show_default=True, help="Zoo model (har_cnn, digits_cnn).")
@click.option("--count", "clients", type=field_range(StudyConfig, "clients"), default=500, show_default=True,
              help="How many simulated boards.")
@deprecated_alias("--clients", "--count", "clients", field_range(StudyConfig, "clients"))
@click.option("--strategies", default=",".join(STRATEGIES), show_default=True,
              help="Comma-separated strategy labels NAME[@subset|@dense][+overselect]: @subset trains FTTE's w* "
                   "(int8 updates, head cache), @dense the whole model (float32 updates), +overselect samples "
                   "--overselect-factor x m devices per FedAvg round and closes it at m.")
@target_accuracy_option(None, "Time to target = simulated time of the first version with test accuracy >= this "
                             "[default: 0.8 for har_cnn, 0.75 for digits_cnn: reachable from a fresh head by "
                             "every strategy].")
@click.option("--stragglers", type=field_range(StudyConfig, "stragglers"),
              default=0.9, show_default=True, help="Fraction of straggling devices.")
@click.option("--slowdown", default="uniform:2:10", show_default=True,
              help="Straggler factor: uniform:LOW:HIGH, lognormal:MU:SIGMA or fixed:F.")
@click.option("--dropout", type=field_range(StudyConfig, "dropout"),
              default=0.0, show_default=True, help="Probability a task is lost.")
@click.option("--attack", default="none", show_default=True,
              help="What the --attackers boards send after training honestly: none, sign-flip (the update "
                   "negated) or scale:F (times F), each with its true variance (docs/strategies.md).")
@click.option("--attackers", type=field_range(StudyConfig, "attackers"), default=0.0, show_default=True,
              help="Fraction of the boards that attack (drawn from --seed, the same for every strategy).")
@click.option("--availability", default="always", show_default=True,
              help="When devices can work: always, or PERIOD:FRACTION (online FRACTION of every PERIOD simulated "
                   "seconds, each device at its own phase; a task still running when its window closes is lost).")
@click.option("--board-mix", default="nrf52840:0.5,apollo3:0.3,stm32l4r9:0.2", show_default=True,
              help="Fleet mix, BOARD:SHARE,...")
@click.option("--partition", type=click.Choice(get_args(Partition)), default=None,
              help="Data split (default: natural when the data has users, else iid).")
@click.option("--alpha", type=field_range(StudyConfig, "alpha"),
              default=0.5, show_default=True, help="Dirichlet concentration.")
@seed_option("Seed of the fleet, the data shards, the stragglers and every draw of the strategies.")
@click.option("--start", type=click.Choice(sorted(get_args(Start))), default="fresh-head", show_default=True,
              help="fresh-head: the classifier head drawn anew (seeded), the same for every strategy.")
@click.option("--epochs", type=field_range(Training, "epochs"),
              default=_table_default(Training, "epochs"), show_default=True,
              help="Local epochs per training task on a board.")
@click.option("--lr", type=field_range(Training, "lr"), default=_table_default(Training, "lr"), show_default=True,
              help="Device SGD learning rate.")
@click.option("--batch-size", type=field_range(Training, "batch_size"),
              default=_table_default(Training, "batch_size"), show_default=True,
              help="Local mini-batch size on a board.")
@click.option("--buffer-size", type=field_range(StrategyParams, "buffer_size"),
              default=_table_default(StrategyParams, "buffer_size"), show_default=True,
              help="K of FTTE and FedBuff.")
@click.option("--clients-per-round", type=field_range(StrategyParams, "clients_per_round"),
              default=_table_default(StrategyParams, "clients_per_round"),
              show_default=True, help="m of FedAvg.")
@click.option("--server-lr", type=field_range(StrategyParams, "server_lr"),
              default=_table_default(StrategyParams, "server_lr"), show_default=True,
              help="Server learning rate: the step the aggregated update is applied with.")
@click.option("--staleness-exponent", type=field_range(StrategyParams, "staleness_exponent"),
              default=_table_default(StrategyParams, "staleness_exponent"),
              show_default=True, help="a in (1 + tau)^-a, FTTE's and FedBuff's staleness weight.")
@click.option("--variance-gamma", type=field_range(StrategyParams, "variance_gamma"),
              default=_table_default(StrategyParams, "variance_gamma"),
              show_default=True, help="gamma of FTTE's variance weight (0 turns it off).")
@click.option("--variance-floor", type=field_range(StrategyParams, "variance_floor"),
              default=_table_default(StrategyParams, "variance_floor"), show_default=True,
              help="g_min: the least variance factor FTTE gives an update (0: no floor).")
@click.option("--agreement-exponent", type=field_range(StrategyParams, "agreement_exponent"),
              default=_table_default(StrategyParams, "agreement_exponent"), show_default=True,
              help="beta of FTTE's max(0, cos(update, buffer mean))^beta weight (0: off).")
@click.option("--concurrency", type=field_range(StrategyParams, "concurrency"), default=None,
              help="Most devices training at once under FTTE and FedBuff [default: every idle device].")
@click.option("--server-optimizer", type=click.Choice(SERVER_OPTIMIZERS),
              default=_table_default(StrategyParams, "server_optimizer"), show_default=True,
              help="The server's step on the weighted mean of the updates, for every strategy: sgd (plain), "
                   "momentum (FedAvgM), adam (FedAdam), yogi (FedYogi).")
@click.option("--server-momentum", type=field_range(StrategyParams, "server_momentum"),
              default=_table_default(StrategyParams, "server_momentum"),
              show_default=True, help="beta1 of momentum, adam and yogi.")
@click.option("--server-beta2", type=field_range(StrategyParams, "server_beta2"),
              default=_table_default(StrategyParams, "server_beta2"),
              show_default=True, help="beta2 of adam and yogi.")
@click.option("--server-tau", type=field_range(StrategyParams, "server_tau"),
              default=_table_default(StrategyParams, "server_tau"), show_default=True,
              help="Adaptivity epsilon of adam and yogi.")
@robust_options(StrategyParams, show_defaults=True)
@click.option("--round-deadline", type=field_range(StudyConfig, "round_deadline_s"), default=None,
              help="Simulated seconds after its dispatch a FedAvg round closes with what arrived (a round "
                   "with nothing in is sampled again) [default: wait for every sampled device].")
@click.option("--overselect-factor", type=field_range(StudyConfig, "overselect_factor"),
              default=DEFAULT_OVERSELECT_FACTOR, show_default=True,
              help="f of the +overselect variants: ceil(f x m) devices sampled, the round closes at m.")
@click.option("--head-cache/--no-head-cache", default=_table_default(Training, "head_cache"), show_default=True,
              help="Run the frozen fragment once per task and reuse its outputs (subset payloads).")
@click.option("--max-staleness", type=field_range(Checks, "max_staleness"),
              default=_table_default(Checks, "max_staleness"), show_default=True,
              help="Update check (as tinyfed run).")
@click.option("--norm-bound", type=field_range(Checks, "norm_bound"),
              default=_table_default(Checks, "norm_bound"), show_default=True,
              help="Update check (as tinyfed run).")
@click.option("--max-versions", type=field_range(StudyConfig, "max_versions"), default=400, show_default=True,
              help="Stop a strategy after this many global versions.")
@click.option("--max-sim-seconds", type=field_range(StudyConfig, "max_sim_seconds"),
              default=None, help="Stop at this simulated time.")
@click.option("--run-past-target", is_flag=True, help="Keep going after the target (to the max limits).")
@click.option("--horizon", default="auto", show_default=True,
              help="Run every strategy on to this simulated time after its target and take the final accuracies "
                   "there: auto = the latest time any strategy stopped at / 0.9 (so every end window, the last "
                   "tenth, lies after every time to target), none = each stops at its own target, or seconds.")
@click.option("--evaluate-every", type=field_range(Evaluation, "every_versions"),
              default=_table_default(Evaluation, "every_versions"), show_default=True,
              help="Evaluate every N-th version.")
@click.option("--eval-samples", type=click.IntRange(0, MAX_STEPS), default=0, show_default=True,
              help="Evaluate each version on this many test samples (fixed, seeded; 0 = the whole test split). "
                   "Faster for the dense baselines, but the time to target gets noisier; the final accuracy is "
                   "always on the whole test split.")
@click.option("--nested-subsets", is_flag=True,
              help="Subset strategies train nested subsets: each board profile the largest superset of the common "
                   "w* its own budget holds (the server averages each value over the updates that carry it).")
@core_budget_option
@click.option("--nested-refresh-versions", type=field_range(StudyConfig, "nested_refresh_versions"), default=None,
              help="With --nested-subsets: every N versions re-cut each class's frozen fragment and tail from the "
                   "global vector and send them again (charged to each board's next download); default never.")
@dp_options
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the boards' training steps run: this process, or Ray tasks (same results, for a seed).")
@click.option("--address", default=None,
              help="With --backend ray: join the Ray cluster at HOST:PORT (default: start Ray on this machine).")
@click.option("--seeds", default=None,
              help="Run one study per seed and split (LOW-HIGH or a comma list, e.g. 0-4) and print the summary "
                   "over them: mean [min-max] per split and strategy, the decomposition, the goals.")
@click.option("--partitions", default=None,
              help="With several studies: the data splits, comma-separated (natural, iid, dirichlet:ALPHA), "
                   "e.g. natural,iid,dirichlet:0.1,dirichlet:0.5 [default: --partition's].")
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS), default=2, show_default=True,
              help="With --seeds/--partitions: studies run at once, each in its own process.")
@out_dir_option("Write summary.csv, history.csv, study.json and PNG plots here (several studies: "
                "fair_study.json, fair_runs.csv, fair_summary.csv).")
@boards_dir_option
@dashboard_option
@json_option
@jsonl_option
def simulate(backend: str, address: str | None, out_dir: Path | None, boards_dirs: tuple[Path, ...], as_json: bool,
             jsonl: bool, seeds: str | None, partitions: str | None, workers: int, **options: Any) -> None:
    """Simulate FTTE and its baselines on hundreds of heterogeneous, straggling boards.

    \b
    Examples:
      tinyfed simulate --count 500 --stragglers 0.9 --out build/sim
      tinyfed simulate --strategies ftte,fedbuff@subset --seeds 0-4 --workers 2
      tinyfed simulate --count 50 --max-versions 20 --out build/sim --jsonl
    """
    check_jsonl(as_json, jsonl)
    if options.get("clients_alias") is not None and click.get_current_context().get_parameter_source(
            "clients") == click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("give --count once (--clients is its old spelling)")
    cfg = study_config(options)
    if click.get_current_context().meta.get(DASHBOARD) is not None:
        if out_dir is None:
            raise click.UsageError("--dashboard shows the study's --out directory; add --out DIR")
        start_dashboard(out_dir)
    if seeds is not None or partitions is not None:
        if backend != "local" or boards_dirs:
            raise TinyfedError("several studies run on the local backend with the built-in boards",
                               fix="drop --backend/--boards-dir, or run one study (no --seeds/--partitions)")
        if jsonl:
            raise click.UsageError("--jsonl streams one study's events; drop it with --seeds/--partitions")
        many_studies(cfg, seeds, partitions, workers, out_dir, as_json)
        return
    if address is not None and backend != "ray":
        raise TinyfedError("--address joins a Ray cluster", fix="add --backend ray, or drop --address")
    from tinyfed.host.events import StudyLog

    with StudyLog(out_dir) as events:
        if jsonl:
            events.listeners.append(print_jsonl)
        study, results, files = _run_study(cfg, backend, address, boards_dirs, out_dir, events, as_json, jsonl)
    if jsonl:
        return
    if as_json:
        click.echo(json.dumps({"study": study.describe(), "strategies": strategies_json(cfg, results),
                               "results": {k: r.to_dict() for k, r in results.items()},
                               "ratios_to_fedavg": ratios(results), "decomposition": decomposition(results),
                               "files": [str(p) for p in files]}))
        return
    say = (lambda text: None) if as_json else click.echo
    output_console().print(*result_tables(results, cfg.target_accuracy, study.horizon_s))
    for name, r in results.items():
        if r.epsilon is not None:
            say(f"{name}: epsilon {r.epsilon:.3g} at delta {r.delta:g} per board (docs/privacy.md), "
                f"stopped on {r.stop_reason}")
        for board, c in r.classes.items():
            say(f"{name} nested class {board}: {c['values']:,} values, training memory {c['device_memory_bytes']:,} B, "
                f"{c['bytes_per_update']:,} B per update")
    say(format_decomposition(decomposition(results)))
    for p in files:
        say(f"wrote {p}")


def _run_study(cfg: Any, backend: str, address: str | None, boards_dirs: tuple[Path, ...], out_dir: Path | None,
               events: Any, as_json: bool, jsonl: bool) -> tuple[Any, dict[str, Any], list[Path]]:
    """One study, each slow step said on stderr (``--json``: nothing) and every strategy's progress in
    a bar, its events in ``events`` (a :class:`~tinyfed.host.events.StudyLog`); the study, its
    results and the files written."""
    from tinyfed.host.simulator import Study

    def say(text: str) -> None:  # stdout carries the one JSON object (--json) or the events (--jsonl)
        if not as_json:
            click.echo(text, err=jsonl)

    with phase(f"building the study: {cfg.model}'s data split across {cfg.clients:,} simulated boards",
               quiet=as_json):
        study = Study(cfg, boards_dirs=boards_dirs)
    info = study.describe()
    say(f"tinyfed simulate: {cfg.model}, {info['fleet']} (slowdown {info['slowdown']}), {info['partition']} split, "
        f"{info['samples_per_device']['mean']:.1f} samples per device, seed {cfg.seed}")
    for payload in dict.fromkeys(study.payload_of(cfg.strategy(label)) for label in cfg.strategies):
        with phase(f"planning {cfg.model} ({payload} payload) and running its frozen part over the training data",
                   quiet=as_json):
            study.model(payload)
    events.append("study_start", strategies=list(cfg.strategies), target_accuracy=cfg.target_accuracy,
                  clients=cfg.clients, model=cfg.model, seed=cfg.seed, study=info)
    bars = StudyProgress(list(cfg.strategies), cfg.max_versions, cfg.max_sim_seconds, quiet=as_json)
    runner = None
    if backend == "ray":
        from tinyfed.host.ray_backend import RayBackend

        runner = RayBackend(address)

    def progress(row: dict[str, Any]) -> None:
        events.append("evaluation", **row)
        bars.update(row)

    def on_leg(text: str) -> None:
        name = "horizon" if "horizon" in text.split(":")[0] else "target"
        events.append("leg", name=name, text=text)
        bars.leg(name, text, study.horizon_s)

    def announce(name: str, r: Any) -> None:
        events.append("strategy_end", strategy=name, result=r.to_dict())
        bars.done(name, f"{name}: {r.versions} versions, {r.sim_seconds:,.0f} simulated s, accuracy "
                        f"{r.final_accuracy:.4f} ({r.stop_reason}); {r.board_steps} board steps in "
                        f"{r.wall_seconds:.1f} s wall ({backend} backend)")

    try:
        results = study.run_all(backend=runner, progress=progress, announce=announce, on_leg=on_leg)
    finally:
        bars.close()
        if runner is not None:
            runner.close()
    files: list[Path] = []
    if out_dir is not None:
        with phase(f"writing the tables and plots to {out_dir}", quiet=as_json):
            files = write_outputs(out_dir, study, results, cfg.record())
    events.append("study_end", files=[str(p) for p in files + ([events.path] if events.path else [])])
    return study, results, files


def strategies_json(cfg: Any, results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``--json``'s ``strategies``: per label, what it is (name, payload, over-selection, the params it
    ran with) and its results."""
    from dataclasses import asdict

    from tinyfed.host.strategies import parse_variant

    out: dict[str, dict[str, Any]] = {}
    for label, r in results.items():
        variant, strategy = parse_variant(label), cfg.strategy(label)
        out[label] = {"name": variant.name, "overselect": variant.overselect, "params": asdict(strategy.params),
                      **r.to_dict()}
    return out


def many_studies(cfg: Any, seeds: str | None, partitions: str | None, workers: int, out_dir: Path | None,
                 as_json: bool) -> None:
    """``--seeds``/``--partitions``: one study per (seed, split) in ``workers`` processes, then the summary."""
    from tinyfed.host import fair_study as fair

    seed_list = fair.parse_seeds(seeds) if seeds is not None else [cfg.seed]
    if partitions is not None:
        splits = fair.parse_splits(partitions)
    else:
        splits = [fair.Split(cfg.partition, cfg.alpha if cfg.partition == "dirichlet" else None)] \
            if cfg.partition is not None else [fair.Split("natural" if cfg.model == "har_cnn" else "iid")]
    if workers < 1:
        raise TinyfedError(f"--workers {workers} is not a number of processes", fix="give 1 or more, e.g. --workers 2")
    say = (lambda text: None) if as_json else click.echo
    say(f"tinyfed simulate: {len(seed_list)} seed(s) x {len(splits)} split(s) of {', '.join(cfg.strategies)}, "
        f"{workers} worker(s)")

    def done(rec: dict[str, Any]) -> None:
        say(f"{rec['split']} seed {rec['seed']}: horizon {rec['horizon_s']:,.0f} simulated s, {rec['wall_s']:,.0f} s "
            f"wall (load {rec['load_after'][0]:.1f})")

    records = fair.run_fair_study(cfg, seed_list, splits, workers=workers, done=done,
                                  cache=None if out_dir is None else out_dir / "studies")
    summary = fair.summarize(records)
    config = {**cfg.record(), "seeds": seed_list, "splits": [str(s) for s in splits], "workers": workers}
    files = fair.write_fair_outputs(out_dir, records, summary, config) if out_dir is not None else []
    if as_json:
        click.echo(json.dumps({"config": config, "studies": records, "summary": summary,
                               "files": [str(p) for p in files]}, default=str))
        return
    say(fair.format_summary(summary, cfg.target_accuracy))
    for p in files:
        say(f"wrote {p}")


#: Options that choose how many studies run, not what one study is.
MANY_STUDIES_OPTIONS = ("seeds", "partitions", "workers")
#: Options that choose what the command prints, not what the study is.
OUTPUT_OPTIONS = ("jsonl",)


def study_config(options: dict[str, Any]) -> Any:
    """The :class:`~tinyfed.host.simulator.StudyConfig` of the command's options, checked as a run
    config is: every bad value in one error, named by its option."""
    from tinyfed.host.config import checked
    from tinyfed.host.simulator import DEFAULT_TARGETS, StudyConfig

    given = {k: v for k, v in options.items() if k not in MANY_STUDIES_OPTIONS + OUTPUT_OPTIONS
             and not (k.startswith("dp_") and v is None)}
    alias = given.pop("clients_alias", None)  # --clients, the old spelling of --count
    if alias is not None:
        given["clients"] = alias
    given["strategies"] = tuple(s.strip() for s in given["strategies"].split(",") if s.strip())
    given["run_past_target"] = not given["run_past_target"]  # the option's negation is the config's stop_at_target
    given["eval_samples"] = given["eval_samples"] or None
    given["horizon"] = parse_horizon(given["horizon"])
    if given["target_accuracy"] is None:
        given["target_accuracy"] = DEFAULT_TARGETS.get(given["model"], 0.75)
    values: dict[str, Any] = {}
    for name, value in given.items():
        table, _, key = OPTION_KEYS.get(name, name).rpartition(".")
        (values.setdefault(table, {}) if table else values)[key] = value
    flags = {OPTION_KEYS.get(name, name): "--" + name.replace("_", "-") for name in given}
    flags["clients"] = "--count"  # the study's key keeps its old name; the option is the CLI's --count
    return checked(StudyConfig, values, "the command line", keys=flags)


def parse_horizon(text: str) -> float | str | None:
    """``--horizon``: "auto", None for "none", or a positive number of simulated seconds."""
    value = str(text).strip().lower()
    if value in ("auto", "none"):
        return None if value == "none" else "auto"
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise TinyfedError(f"--horizon {text!r} is not auto, none or a number of simulated seconds",
                           fix="e.g. --horizon auto, --horizon none or --horizon 9000")
    return seconds
