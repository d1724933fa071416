"""Options shared by several commands."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

#: The most boards a fleet may hold (``tinyfed.boards.schema.MAX_FLEET_DEVICES``, restated so that
#: ``tinyfed --help`` imports no pydantic; tests/test_fuzz_cli.py holds them equal).
MAX_FLEET_DEVICES = 100_000
#: The most QEMU boards one command boots (each is a process with its own RAM).
MAX_EMULATED_BOARDS = 256
#: The most versions, windows or samples a count option takes: far beyond any run, and a typo's
#: 2**64 is refused before it reaches numpy's int64.
MAX_STEPS = 10**9


class FiniteFloatRange(click.FloatRange):
    """A float range that refuses nan and the infinities: click's FloatRange lets ``nan`` through
    (every comparison with nan is false) and ``inf`` wherever the range has no upper end."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number in the range {self._describe_range()}.", param, ctx)
        return rv


def field_range(model: Any, key: str) -> click.ParamType:
    """The click type of a config field (``model``: a pydantic model class): its Field bounds as the
    option's range, so the command line and the config file refuse the same values, in one place."""
    info = model.model_fields[key]
    bounds: dict[str, Any] = {}
    for m in info.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if hasattr(m, name):
                bounds[name] = getattr(m, name)
    lo, hi = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    kind = info.annotation
    if kind is int or kind == int | None:
        if "gt" in bounds:
            lo = bounds["gt"] + 1
        if "lt" in bounds:
            hi = bounds["lt"] - 1
        return click.IntRange(lo, MAX_STEPS if hi is None else hi)
    return FiniteFloatRange(lo, hi, min_open="gt" in bounds, max_open="lt" in bounds)


#: Extra board directories: ``--boards-dir`` (repeatable) and the ``TINYFED_BOARDS_PATH``
#: environment variable (``os.pathsep``-separated) are both searched after the built-in boards.
def _use_boards_dirs(ctx: click.Context, _param: click.Parameter, value: tuple[Path, ...]) -> tuple[Path, ...]:
    """Every board lookup of the command sees ``--boards-dir`` (the planner's, the simulator's, the
    link's), not only those the command passes it to; undone when the command ends."""
    if value:
        from tinyfed.boards.registry import use_board_dirs

        previous = use_board_dirs(value)
        ctx.call_on_close(lambda: use_board_dirs(previous))
    return value


boards_dir_option = click.option(
    "--boards-dir",
    "boards_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    callback=_use_boards_dirs,
    help="Directory with extra board TOML files (repeatable; also $TINYFED_BOARDS_PATH).",
)

def fleet_option(purpose: str, *, required: bool = False) -> Any:
    """``--fleet FLEET`` with one type and spelling in every command: a fleet TOML file or a shipped
    preset's bare name (``tinyfed.boards.fleet.fleet_file`` resolves both); ``purpose`` starts the help."""
    return click.option("--fleet", "fleet_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FLEET",
                        required=required,
                        help=f"{purpose} A fleet TOML file, or a shipped preset's name (smartwatch, emulated).")


def _non_empty(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An empty name is a usage error here, not a missing file or device later."""
    if value is not None and not value.strip():
        raise click.BadParameter("is empty", param=param)
    return value


#: One device instead of a fleet file (``devices``, ``check``).
url_option = click.option("--url", metavar="URL", callback=_non_empty,
                          help="One device instead of --fleet: a tty (/dev/ttyACM0), socket://HOST:PORT or sim://BOARD.")


#: The nested-subset plan's cap on the common core (``plan``, ``simulate``, ``run``): one spelling, one check.
core_budget_option = click.option(
    "--core-budget",
    type=FiniteFloatRange(0, min_open=True),
    default=None,
    help="Cap the common core w*'s training memory: a fraction of whole-model training memory (<= 1, e.g. 0.1) "
         "or bytes (> 1).",
)


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """Record --json where the CLI's error boundary can see it (ctx.meta is shared by all contexts)."""
    if value:
        ctx.meta["tinyfed.json"] = True
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=_remember_json,
    help="Print one JSON object on stdout (an error too, as {error, problem, fix, source}).",
)


jsonl_option = click.option(
    "--jsonl",
    is_flag=True,
    callback=_remember_json,
    help="Stream one JSON object per event on stdout as it happens (the objects of events.jsonl); no live view "
         "or tables, progress still on stderr. Not with --json.",
)


def check_jsonl(as_json: bool, jsonl: bool) -> None:
    """--json (one summary object) and --jsonl (a stream of events) cannot share stdout: a usage error."""
    if as_json and jsonl:
        raise click.UsageError("give one of --json (one summary object) and --jsonl (one object per event)")


# -- one vocabulary for counts, seeds, targets and output directories (docs/cli.md) ------------

#: How many boards a command makes when nobody says (``run``, ``demo``; ``emulate`` boots one).
DEFAULT_BOARD_COUNT = 8


class _OptionalCount(click.ParamType):
    """A board count that may be left out: ``--simulate`` alone means "the ``--count`` boards".

    click hands the bare flag's ``flag_value`` (the int 0) through :meth:`convert`; a count typed
    on the command line arrives as text and must be a positive integer.
    """

    name = "N"

    def __init__(self, most: int = MAX_FLEET_DEVICES) -> None:
        self.min, self.max = 1, most  # read as a range by tests/test_fuzz_cli.py

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            if value == 0 or 1 <= value <= self.max:
                return value
        try:
            n = int(str(value), 10)
        except ValueError:
            self.fail(f"{value!r} is not a whole number of boards", param, ctx)
        if n < 1:
            self.fail(f"{n} boards: give at least 1", param, ctx)
        if n > self.max:
            self.fail(f"{n} boards: give at most {self.max:,}", param, ctx)
        return n


def kind_count_option(name: str, what: str) -> Any:
    """``--simulate [N]`` / ``--emulate [N]``: which kind of boards, and optionally how many
    (the same as ``--count N``); the value is 0 when the flag comes without a count."""
    most = MAX_EMULATED_BOARDS if name == "emulate" else MAX_FLEET_DEVICES
    return click.option(f"--{name}", name, type=_OptionalCount(most), is_flag=False, flag_value=0, default=None,
                        metavar="[N]", help=f"{what}; N is the same as --count N (at most {most:,}).")


def count_option(help_text: str, default: int | None = DEFAULT_BOARD_COUNT, *,
                 most: int = MAX_FLEET_DEVICES) -> Any:
    """``--count N``: how many boards, in every command that makes boards (``most``: a bound)."""
    return click.option("--count", "count", type=click.IntRange(min=1, max=most), default=default,
                        show_default=default is not None, help=help_text)


def resolve_count(kind: str, given: int | None, count: int | None, default: int = DEFAULT_BOARD_COUNT) -> int:
    """The number of boards from ``--simulate/--emulate [N]`` and ``--count N`` (they must agree)."""
    if given and count is not None and given != count:
        raise click.UsageError(f"--{kind} {given} and --count {count} disagree: give the number once")
    return given or count or default


def deprecated_alias(old: str, new: str, dest: str, param_type: Any) -> Any:
    """A hidden spelling kept so scripts written before ``new`` keep working; it warns once."""

    def _warn(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is not None:
            click.echo(f"note: {old} is now {new}", err=True)
            ctx.meta[f"tinyfed.alias.{dest}"] = value
        return value

    return click.option(old, f"{dest}_alias", type=param_type, hidden=True, expose_value=True, callback=_warn,
                        help=f"Old spelling of {new}.")


def seed_option(help_text: str, default: int | None = 0) -> Any:
    """``--seed N``: a non-negative integer in every command, recorded with what it made."""
    return click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=default,
                        show_default=default is not None, help=help_text)


def target_accuracy_option(default: float | None, why: str) -> Any:
    """``--target-accuracy A``: the same name and range (0 < A <= 1) everywhere; each command's
    default and the reason for it are in its help and in docs/cli.md."""
    return click.option("--target-accuracy", type=FiniteFloatRange(0, 1, min_open=True), default=default,
                        show_default=default is not None, help=why)


def out_dir_option(help_text: str) -> Any:
    """``--out DIR``: always a directory (made if missing); what goes in it is the help's to say."""
    return click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                        help=help_text)


def check_representative(model: str, representative: Path | None) -> None:
    """``--representative`` calibrates a ``.keras`` MODEL's int8 conversion: for any other MODEL it
    would be silently ignored, so it is refused; for a ``.keras`` it is read and checked before the
    slow conversion starts."""
    if representative is None:
        return
    if Path(model).suffix.lower() != ".keras":
        raise click.BadParameter(f"{representative} calibrates a .keras MODEL's int8 conversion, and {model} is "
                                 "a zoo model or an int8 .tflite already: drop it", param_hint="--representative")
    from tinyfed.models.arrays import read_array

    read_array(representative, key="x")


def complete_board_names(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of ``--board``: the built-in and ``$TINYFED_BOARDS_PATH`` board profiles."""
    from click.shell_completion import CompletionItem

    from tinyfed.boards import list_boards

    return [CompletionItem(b.name, help=b.description) for b in list_boards() if b.name.startswith(incomplete)]


def complete_model_names(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of ``--model``: the zoo's names, then files (.tflite, .keras) by the shell."""
    from click.shell_completion import CompletionItem

    from tinyfed.models.zoo import ZOO_NAMES

    names = [CompletionItem(n) for n in ZOO_NAMES if n.startswith(incomplete)]
    return names or [CompletionItem(incomplete, type="file")]


#: ``ctx.meta`` key: the port ``--dashboard`` asked for (absent: no dashboard).
DASHBOARD = "tinyfed.dashboard"


def _remember_dashboard(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if param.name == "dashboard" and value:
        ctx.meta.setdefault(DASHBOARD, 0)
    elif param.name == "dashboard_port" and value is not None:
        ctx.meta[DASHBOARD] = value
    return value


def dashboard_option(command: Any) -> Any:
    """``--dashboard`` and ``--dashboard-port`` (run, demo, simulate): kept in ``ctx.meta``, not passed to
    the command, which calls :func:`start_dashboard` once it knows its output directory."""
    command = click.option("--dashboard-port", type=click.IntRange(0, 65535), default=None, expose_value=False,
                           callback=_remember_dashboard, is_eager=True,
                           help="Port of --dashboard (implies it; default: a free port).")(command)
    return click.option("--dashboard", is_flag=True, expose_value=False, callback=_remember_dashboard,
                        is_eager=True, help="Serve the live web dashboard of this run on 127.0.0.1 while it goes "
                                            "(see `tinyfed dashboard`).")(command)


def start_dashboard(out: Path) -> None:
    """Start the web dashboard on ``out`` if ``--dashboard`` asked for it; it stops when the command ends."""
    ctx = click.get_current_context()
    port = ctx.meta.get(DASHBOARD)
    if port is None:
        return
    from tinyfed.web.serve import BackgroundDashboard

    server = BackgroundDashboard([out], port=port)
    ctx.call_on_close(server.stop)
    click.echo(f"dashboard {server.url}", err=True)


#: The robust rules ``--robust`` takes (``tinyfed.host.strategies.robust.ROBUST_RULES``, restated so that
#: ``tinyfed --help`` imports no numpy; tests/test_robust.py holds them equal).
ROBUST_RULES = ("none", "norm-quantile", "median", "trimmed-mean")


def robust_options(table: Any, *, show_defaults: bool) -> Any:
    """``--robust``, ``--robust-quantile``, ``--robust-window`` and ``--trim-fraction`` with one spelling and
    the ranges of ``table`` (the run config's [strategy_params]) on ``run`` and ``simulate``.
    ``show_defaults``: the table's defaults are the options' (``simulate``); else None, and the run
    config decides (``run``)."""

    def default(key: str) -> Any:
        return table.model_fields[key].default if show_defaults else None

    options = [
        click.option("--robust", type=click.Choice(ROBUST_RULES), default=default("robust"),
                     show_default=show_defaults,
                     help="Robust aggregation under the strategy's weights: norm-quantile (each update scaled "
                          "down to a quantile of the fleet's recent update norms), median or trimmed-mean "
                          "(weighted, per coordinate of a buffer or round); docs/strategies.md."),
        click.option("--robust-quantile", type=field_range(table, "robust_quantile"),
                     default=default("robust_quantile"), show_default=show_defaults,
                     help="q of norm-quantile: updates are bounded by the q-quantile of recent norms."),
        click.option("--robust-window", type=field_range(table, "robust_window"),
                     default=default("robust_window"), show_default=show_defaults,
                     help="W of norm-quantile: the norms of the last W accepted updates."),
        click.option("--trim-fraction", type=field_range(table, "trim_fraction"),
                     default=default("trim_fraction"), show_default=show_defaults,
                     help="beta of trimmed-mean: the fraction of weight cut from each end of every coordinate."),
    ]

    def wrap(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


#: Bounds of the DP options, as the run config's [privacy] table states them (tinyfed.host.config.Privacy;
#: restated so that ``--help`` imports no pydantic).
MAX_DP_PARAMETER = 1e6


def dp_options(command: Any) -> Any:
    """``--dp-clip C --dp-noise SIGMA [--dp-delta D] [--dp-epsilon-budget E]`` (docs/privacy.md)."""
    positive = FiniteFloatRange(0, MAX_DP_PARAMETER, min_open=True)
    for option in reversed((
        click.option("--dp-clip", "dp_clip", type=positive, metavar="C",
                     help="Differential privacy: each board clips its update to L2 norm C (with --dp-noise)."),
        click.option("--dp-noise", "dp_noise", type=positive, metavar="SIGMA",
                     help="Differential privacy: Gaussian noise of std SIGMA * C per value of the update."),
        click.option("--dp-delta", "dp_delta", type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
                     metavar="D", help="delta of the reported (epsilon, delta) (default 1e-5)."),
        click.option("--dp-epsilon-budget", "dp_epsilon_budget", type=positive, metavar="E",
                     help="Stop before any board's epsilon would pass E."),
    )):
        command = option(command)
    return command


def dp_table(dp_clip: float | None, dp_noise: float | None, dp_delta: float | None,
             dp_epsilon_budget: float | None) -> dict[str, float]:
    """The DP options given, as keys of the run config's [privacy] table."""
    return {k: v for k, v in (("clip", dp_clip), ("noise", dp_noise), ("delta", dp_delta),
                              ("epsilon_budget", dp_epsilon_budget)) if v is not None}
