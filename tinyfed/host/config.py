"""The run configuration: one TOML file that says everything a training run depends on.

Every key has a default and a check, so an empty file is a valid run and a wrong value is
caught before any board is booted. Errors are reported the way board files report them (all at
once, with dotted keys and "did you mean" hints; see :mod:`tinyfed.boards.validation`). A run
directory records the exact config it ran with (:meth:`RunConfig.dump`), so a resumed run and a
benchmark table can always say what produced them. The format is documented in
``docs/run-config.md``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tinyfed.boards.schema import MAX_FLEET_DEVICES, check_error
from tinyfed.boards.validation import read_toml, suggest, validate
from tinyfed.errors import DataFileError, FieldIssue
from tinyfed.host.strategies import (
    DEFAULT_OVERSELECT_FACTOR,
    STRATEGIES,
    FedAvgParams,
    FTTEParams,
    StrategyError,
    parse_variant,
)

if TYPE_CHECKING:
    from tinyfed.host.engine import LocalTraining
    from tinyfed.training.privacy import DPConfig
    from tinyfed.training.task import Task

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

__all__ = [
    "Checks",
    "ConfigTable",
    "Data",
    "Devices",
    "Evaluation",
    "Limits",
    "RunConfig",
    "StrategyParams",
    "Training",
    "VariantLabel",
    "checked",
    "load_run_config",
]

Partition = Literal["natural", "iid", "dirichlet"]
Start = Literal["pretrained", "fresh-head"]
#: The names of :class:`tinyfed.training.task.Task` (tests/test_tasks.py checks they stay equal).
TaskName = Literal["classify", "multilabel", "regress", "autoencode"]

#: The stop target of a classification run that names none (test accuracy).
DEFAULT_TARGET_ACCURACY = 0.85

#: The most global versions a limit, a staleness bound or an evaluation period may count: far beyond
#: any run, and a typo's 2**64 is refused before it reaches numpy's int64.
MAX_VERSIONS = 10**9

#: File name of the recorded config inside a run directory.
CONFIG_FILE = "config.toml"


class ConfigTable(BaseModel):
    """Base for every table: unknown keys are errors, types are exact, values immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _known_strategy(name: str) -> str:
    """A name of the strategy registry (:data:`tinyfed.host.strategies.STRATEGIES`), or a "did you mean"."""
    if name not in STRATEGIES:
        listing = ", ".join(repr(n) for n in STRATEGIES)
        close = suggest(name, STRATEGIES)
        raise check_error(f"'{name}' is not a strategy; known strategies: {listing}",
                          fix=f"did you mean '{close}'?" if close else f"use one of: {listing}")
    return name


#: A strategy's name, checked against the registry (so a new strategy needs no edit here).
StrategyName = Annotated[str, AfterValidator(_known_strategy)]


def _known_variant(label: str) -> str:
    """A strategy label ``NAME[@subset|@dense][+overselect]`` (:func:`~tinyfed.host.strategies.parse_variant`)."""
    try:
        return parse_variant(label).label
    except StrategyError as exc:
        raise check_error(exc.problem, fix=exc.fix or "") from None


#: A strategy label: a registry name, optionally with a payload and +overselect (``fedavg@subset+overselect``).
VariantLabel = Annotated[str, AfterValidator(_known_variant)]

ServerOptimizerName = Literal["sgd", "momentum", "adam", "yogi"]
#: The robust rules of :mod:`tinyfed.host.strategies.robust` (tests/test_robust.py holds them equal).
RobustName = Literal["none", "norm-quantile", "median", "trimmed-mean"]
#: The longest window of norms norm-quantile keeps (a window of a million floats is 8 MB of state).
MAX_ROBUST_WINDOW = 1_000_000


class Data(ConfigTable):
    """Where the training data comes from and how it is split across devices."""

    npz: str | None = Field(
        default=None, min_length=1,
        description="NPZ with x and y (train split); default: the zoo model's own dataset",
    )
    test_npz: str | None = Field(
        default=None, min_length=1,
        description="NPZ with x_test and y_test; default: x_test/y_test of `npz`, or the zoo split",
    )
    partition: Partition = Field(default="natural", description="'natural' (by user), 'iid' or 'dirichlet'")
    alpha: float = Field(default=0.5, gt=0,
                         description="Dirichlet concentration (dirichlet only): smaller is more skewed")


class StrategyParams(ConfigTable):
    """Knobs of the aggregation strategy (names follow docs/ftte.md: K, a, gamma, eta_g, m).

    The defaults are the strategies' own (their ``Params``), so a run, a study and a strategy built
    in code agree.
    """

    buffer_size: int = Field(default=FTTEParams.buffer_size, ge=1, le=MAX_FLEET_DEVICES,
                             description="K: updates buffered before a new version (ftte, fedbuff)")
    staleness_exponent: float = Field(default=FTTEParams.staleness_exponent, ge=0,
                                      description="a in s(tau) = (1 + tau)^-a (ftte, fedbuff)")
    variance_gamma: float = Field(default=FTTEParams.variance_gamma, ge=0,
                                  description="gamma of the variance weight (ftte); 0 turns it off")
    variance_floor: float = Field(default=FTTEParams.variance_floor, ge=0, le=1,
                                  description="g_min: least variance factor before gamma (ftte); 1 turns it off")
    agreement_exponent: float = Field(default=FTTEParams.agreement_exponent, ge=0,
                                      description="beta of max(0, cos(delta_i, buffer mean))^beta (ftte); 0: off")
    concurrency: int | None = Field(default=FTTEParams.concurrency, ge=1, le=MAX_FLEET_DEVICES,
                                    description="most devices training at once (ftte, fedbuff); None: every idle one")
    server_lr: float = Field(default=FTTEParams.server_lr, gt=0, description="eta_g: server step size")
    server_optimizer: ServerOptimizerName = Field(
        default="sgd", description="the server's step on the weighted mean of the deltas: sgd (plain), momentum "
                                   "(FedAvgM), adam (FedAdam) or yogi (FedYogi)")
    server_momentum: float = Field(default=FTTEParams.server_momentum, ge=0, lt=1,
                                   description="beta1 of momentum, adam and yogi")
    server_beta2: float = Field(default=FTTEParams.server_beta2, ge=0, lt=1, description="beta2 of adam and yogi")
    server_tau: float = Field(default=FTTEParams.server_tau, gt=0,
                              description="tau, the adaptivity epsilon of adam and yogi")
    robust: RobustName = Field(
        default="none", description="robust aggregation on top of the weights, for every strategy: none (the "
                                    "weighted mean), norm-quantile (each delta scaled down to a quantile of the "
                                    "fleet's recent update norms), median or trimmed-mean (weighted, per coordinate)")
    robust_quantile: float = Field(default=FTTEParams.robust_quantile, gt=0, le=1,
                                   description="q of norm-quantile: the bound is the q-quantile of recent norms")
    robust_window: int = Field(default=FTTEParams.robust_window, ge=1, le=MAX_ROBUST_WINDOW,
                               description="W of norm-quantile: the norms of the last W accepted updates")
    trim_fraction: float = Field(default=FTTEParams.trim_fraction, ge=0, lt=0.5,
                                 description="beta of trimmed-mean: the fraction of weight cut from each end")
    clients_per_round: int = Field(default=FedAvgParams.clients_per_round, ge=1, le=MAX_FLEET_DEVICES,
                                   description="m: devices sampled per round (fedavg)")
    round_deadline_s: float | None = Field(default=FedAvgParams.round_deadline_s, gt=0,
                                           description="seconds after its dispatch a round closes with what "
                                                       "arrived (fedavg); None: wait for every device")
    overselect_factor: float = Field(default=DEFAULT_OVERSELECT_FACTOR, ge=1,
                                     description="f of a '+overselect' strategy label (fedavg): a round samples "
                                                 "ceil(f * m) devices and closes at m arrivals")


class Limits(ConfigTable):
    """When to stop if the target (the task's metric) is not reached; each limit is optional."""

    max_seconds: float | None = Field(default=None, gt=0, description="wall-clock seconds of training")
    max_versions: int | None = Field(default=None, gt=0, le=MAX_VERSIONS, description="global model versions")
    max_bytes: int | None = Field(
        default=None, gt=0,
        description="task bytes over the links (weights down plus updates up; provisioning not counted)")


class Training(ConfigTable):
    """Local training on each device."""

    epochs: int = Field(default=1, ge=1, le=1000, description="local epochs per task")
    lr: float = Field(default=0.01, gt=0, le=10, description="device SGD learning rate")
    batch_size: int = Field(default=16, ge=1, le=4096, description="device mini-batch size")
    per_channel: bool = Field(default=False, description="int8 update scale per output channel instead of per tensor")
    head_cache: bool = Field(default=True, description="reuse the frozen fragment's outputs after the first epoch")

    def local_training(self) -> LocalTraining:
        """The table as the device step the engine and the simulator run."""
        from tinyfed.host.engine import LocalTraining

        return LocalTraining(self.epochs, self.lr, self.batch_size, self.per_channel, self.head_cache)


class Privacy(ConfigTable):
    """On-device differential privacy (docs/privacy.md): off unless clip and noise are given."""

    clip: float | None = Field(default=None, gt=0, le=1e6,
                               description="L2 norm C each device clips its update to before the noise")
    noise: float | None = Field(default=None, gt=0, le=1e6,
                                description="noise multiplier sigma: Gaussian noise of std sigma * C per value")
    delta: float = Field(default=1e-5, gt=0, lt=1, description="delta of the reported (epsilon, delta)")
    epsilon_budget: float | None = Field(default=None, gt=0, le=1e6,
                                         description="stop before any device's epsilon would pass this")

    @model_validator(mode="after")
    def _clip_and_noise_together(self) -> Privacy:
        if (self.clip is None) != (self.noise is None):
            raise check_error("differential privacy needs both clip and noise",
                              fix="give both --dp-clip and --dp-noise (config [privacy] clip and noise), or neither",
                              key=("noise" if self.noise is None else "clip",))
        if self.clip is None and self.epsilon_budget is not None:
            raise check_error("an epsilon budget needs differential privacy on",
                              fix="give --dp-clip and --dp-noise too", key=("epsilon_budget",))
        return self

    def dp_config(self) -> DPConfig | None:
        """The mechanism and accountant settings, or None when DP is off."""
        from tinyfed.training.privacy import DPConfig

        if self.clip is None or self.noise is None:
            return None
        return DPConfig(self.clip, self.noise, self.delta, self.epsilon_budget)


class Checks(ConfigTable):
    """Bounds an arriving update must meet; one that fails is rejected with the reason."""

    norm_bound: float = Field(
        default=100.0, gt=0, description="largest L2 norm of a dequantized update (raise it to loosen the check)",
    )
    max_staleness: int = Field(
        default=20, ge=0, le=MAX_VERSIONS, description="oldest accepted update, in versions behind the global model",
    )


class Evaluation(ConfigTable):
    """How often the global model is evaluated on the held-out split."""

    every_versions: int = Field(default=1, ge=1, le=MAX_VERSIONS, description="evaluate after every N-th new version")


class Devices(ConfigTable):
    """What happens when a device is slow, disconnects or resets."""

    device_timeout_s: float = Field(default=120.0, gt=0,
                                    description="seconds a task may take before the device is marked late")
    retries: int = Field(default=3, ge=0, le=100,
                         description="reconnect attempts before a device is dropped from the run")
    backoff_s: float = Field(default=1.0, ge=0, description="first retry delay; doubles on each further attempt")


class RunConfig(ConfigTable):
    """Everything a run depends on. ``RunConfig()`` is the default run."""

    model: str = Field(default="har_cnn", min_length=1, description="zoo model name or path to an int8 .tflite")
    strategy: VariantLabel = Field(default="ftte",
                                   description="a strategy of the registry ('ftte', 'fedbuff' or 'fedavg'), or a "
                                               "variant label such as 'fedbuff@subset' or 'fedavg+overselect'")
    task: TaskName | None = Field(
        default=None,
        description="'classify', 'multilabel', 'regress' or 'autoencode'; default: from the model's last op and "
                    "the data (a run directory records the one it ran)",
    )
    target_accuracy: float | None = Field(
        default=None, gt=0, le=1,
        description=f"classification: stop once test accuracy reaches this (default {DEFAULT_TARGET_ACCURACY})",
    )
    target_metric: float | None = Field(
        default=None, le=1,
        description="stop once the task's metric (accuracy, micro_f1, r2 or auc) reaches this",
    )
    seed: int = Field(default=0, ge=0, lt=2**63, description="seed of every random choice of the run")
    start: Start = Field(
        default="pretrained",
        description="'pretrained' (the model as given) or 'fresh-head' (its classifier head drawn anew, seeded)",
    )
    nested_subsets: bool = Field(
        default=False, description="subset strategies: each board profile trains the largest superset of the "
                                   "common w* its budget holds (nested subsets)")
    core_budget: float | None = Field(
        default=None, gt=0, description="cap of w*'s (the common core's) training memory: a fraction of "
                                        "whole-model training memory (<= 1) or bytes")
    data: Data = Field(default_factory=Data, validate_default=True)
    strategy_params: StrategyParams = Field(default_factory=StrategyParams)
    limits: Limits = Field(default_factory=Limits)
    training: Training = Field(default_factory=Training)
    checks: Checks = Field(default_factory=Checks)
    privacy: Privacy = Field(default_factory=Privacy)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    devices: Devices = Field(default_factory=Devices)

    @field_validator("model")
    @classmethod
    def _zoo_or_path(cls, value: str) -> str:
        if looks_like_path(value):
            return value
        from tinyfed.models.zoo import ZOO_NAMES

        if value not in ZOO_NAMES:
            close = suggest(value, ZOO_NAMES)
            names = ", ".join(ZOO_NAMES)
            fix = f"did you mean '{close}'?" if close else f"use a zoo model ({names}) or a path to a .tflite file"
            raise check_error(f"'{value}' is neither a zoo model nor a .tflite path", fix=fix)
        return value

    @field_validator("target_accuracy")
    @classmethod
    def _accuracy_is_for_classifiers(cls, value: float | None, info: ValidationInfo) -> float | None:
        task = info.data.get("task")
        if value is not None and task not in (None, "classify"):
            raise check_error(f"target_accuracy is the classification spelling of target_metric; a {task} run "
                              "is not scored by accuracy", fix="give target_metric instead")
        return value

    @field_validator("target_metric")
    @classmethod
    def _one_target(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("target_accuracy") is not None:
            raise check_error("both target_accuracy and target_metric are given",
                              fix="keep one: target_accuracy is target_metric's name for classification")
        return value

    def stop_target(self, task: Task, metric: str) -> float | None:
        """The value of ``task``'s ``metric`` the run stops at: ``target_metric``, or ``target_accuracy``
        (classification only; the default there is :data:`DEFAULT_TARGET_ACCURACY`); None for
        another task that names no target (it stops at its limits).

        ``task`` may have been resolved after the config was checked (``task`` unset): a target
        spelled as accuracy for another task is refused here.
        """
        from tinyfed.errors import TinyfedError
        from tinyfed.training.task import Task

        if self.target_metric is not None:
            return self.target_metric
        if task is not Task.CLASSIFY:
            if self.target_accuracy is not None:
                raise TinyfedError(f"--target-accuracy is the classification spelling of --target-metric; this "
                                   f"{task.value} run is scored by {metric}",
                                   fix=f"give --target-metric (config: target_metric) as a target {metric}")
            return None
        return self.target_accuracy if self.target_accuracy is not None else DEFAULT_TARGET_ACCURACY

    @field_validator("data")
    @classmethod
    def _data_fits_model(cls, value: Data, info: ValidationInfo) -> Data:
        model = info.data.get("model")
        if isinstance(model, str) and looks_like_path(model) and value.npz is None:
            raise check_error(
                "a model given as a file needs its training data",
                fix='add `npz = "train.npz"` (arrays x and y) to [data]', key=("npz",),
            )
        return value

    # -- recording ---------------------------------------------------------------------------

    def to_toml(self) -> str:
        """The config as TOML that :func:`load_run_config` reads back to an equal config.

        Keys left at ``None`` are omitted (TOML has no null); every such key defaults to None.
        """
        data = self.model_dump(mode="python")
        lines = ["# tinyfed run configuration (docs/run-config.md)"]
        tables = {k: v for k, v in data.items() if isinstance(v, dict)}
        for key, value in data.items():
            if not isinstance(value, dict) and value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        for name, table in tables.items():
            lines.append("")
            lines.append(f"[{name}]")
            for key, value in table.items():
                if value is not None:
                    lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def dump(self, path: str | Path) -> Path:
        """Write :meth:`to_toml` atomically to ``path`` (a run directory means its config.toml)."""
        from tinyfed.host.checkpoint import atomic_write_bytes

        target = Path(path)
        if target.is_dir():
            target = target / CONFIG_FILE
        atomic_write_bytes(target, self.to_toml().encode("utf-8"))
        log.debug("run config recorded in %s", target)
        return target


def looks_like_path(model: str) -> bool:
    """A model value names a file when it has a directory part or a .tflite suffix."""
    return "/" in model or "\\" in model or model.lower().endswith(".tflite")


def load_run_config(path: str | Path) -> RunConfig:
    """Read and check a run config; every problem of the file is reported in one DataFileError.

    Relative paths in the file (``model``, ``data.npz``, ``data.test_npz``) are resolved against
    the file's directory, so a config can travel with its data; the returned config holds the
    absolute paths, and each one must exist.
    """
    file = Path(path)
    config = checked(RunConfig, read_toml(file), str(file))
    resolved, issues = _resolve_paths(config, file.parent)
    if issues:
        raise DataFileError(str(file), issues)
    log.debug("run config %s: %s", file, resolved.model_dump())
    return resolved


def _resolve_paths(config: RunConfig, base: Path) -> tuple[RunConfig, list[FieldIssue]]:
    issues: list[FieldIssue] = []

    def resolve(key: str, value: str | None, what: str) -> str | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = base / p
        if not p.is_file():
            issues.append(FieldIssue(key, f"{what} '{value}' does not exist (looked for {p})",
                                     "check the path; relative paths start at the config file's directory"))
        return str(p.resolve()) if p.exists() else str(p)

    model = config.model
    if looks_like_path(model):
        model = resolve("model", model, "model file") or model
    npz = resolve("data.npz", config.data.npz, "data file")
    test_npz = resolve("data.test_npz", config.data.test_npz, "test data file")
    data = config.data.model_copy(update={"npz": npz, "test_npz": test_npz})
    return config.model_copy(update={"model": model, "data": data}), issues


def checked(model: type[T], values: dict[str, Any], source: str, *,
            keys: dict[str, str] | None = None) -> T:
    """``values`` validated as ``model`` (a run config, a study config); every problem at once in one
    DataFileError naming ``source`` (a file, or "the command line").

    ``keys`` renames dotted keys in the report (e.g. to the command-line options that set them); an
    item of a list is reported under its list's new name.
    """
    config, issues = validate(model, values)
    if config is None:
        rename = keys or {}
        raise DataFileError(source, [FieldIssue(rename.get(i.key.partition("[")[0], i.key), i.problem, i.fix)
                                     for i in _dedupe(issues)])
    return config


def _dedupe(issues: list[FieldIssue]) -> list[FieldIssue]:
    """Pydantic reports a union's failure once per member; keep one issue per key and text."""
    seen: set[tuple[str, str]] = set()
    out = []
    for issue in issues:
        if (issue.key, issue.problem) not in seen:
            seen.add((issue.key, issue.problem))
            out.append(issue)
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot record a non-finite number {value!r}")
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return _toml_string(value)
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_string(text: str) -> str:
    """A TOML basic string: escape quote, backslash and the control characters TOML forbids."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
