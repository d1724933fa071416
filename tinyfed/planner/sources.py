"""Resolve what the user named as a model: a zoo name, a ``.keras`` file or an int8 ``.tflite``."""

from __future__ import annotations

import difflib
from pathlib import Path

from tinyfed.errors import ModelError
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.plan import ModelSource


def load_model_source(spec: str, representative: Path | None, cfg: TrainingConfig) -> ModelSource:
    """A zoo model comes with its float model and proxy split; a user file with what it has."""
    from tinyfed.models.tfimport import import_tensorflow
    from tinyfed.models.zoo import ZOO_NAMES

    path = Path(spec)
    if spec in ZOO_NAMES:
        return _zoo(spec, cfg)
    if path.suffix == ".tflite":
        if not path.is_file():
            raise ModelError(f"no such file {spec}", fix="give the path of an int8 .tflite file")
        graph = TfliteGraph.from_file(path).int8_graph()
        return ModelSource(name=path.name, kind="tflite", tflite=graph.data, warnings=list(graph.warnings))
    if path.suffix == ".keras":
        if representative is None:
            raise ModelError(
                "a .keras model needs representative input data for int8 calibration",
                fix="add --representative data.npy (an array of model inputs, first axis = samples)",
                source=spec,
            )
        from tinyfed.models.convert import convert_keras_to_int8, load_user_keras

        import_tensorflow()
        model, rep = load_user_keras(path, representative)
        return ModelSource(
            name=path.name,
            kind="keras",
            tflite=convert_keras_to_int8(model, rep),
            keras_model=model,
            proxy_x=rep[: cfg.proxy_samples],
        )
    close = difflib.get_close_matches(spec, ZOO_NAMES, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ModelError(
        f"unknown model '{spec}': not a zoo model ({', '.join(ZOO_NAMES)}) nor a .keras or .tflite file",
        fix=f"{hint}name a zoo model or give a path ending in .keras (with --representative) or .tflite",
    )


def _zoo(name: str, cfg: TrainingConfig) -> ModelSource:
    """The shipped int8 model and Fisher ranking (no TensorFlow); the float model only for a ranking on
    another proxy batch size than the shipped one."""
    from tinyfed.models.prebuilt_zoo import load_fisher, proxy_batch
    from tinyfed.models.zoo import get_zoo_model

    tflite = get_zoo_model(name).int8_tflite()
    fisher = load_fisher(name, tflite, cfg.proxy_samples) if cfg.importance == "fisher" else None
    if fisher is not None or cfg.importance != "fisher":
        return ModelSource(name=name, kind="zoo", tflite=tflite, fisher=fisher)
    from tinyfed.models.tfimport import import_tensorflow

    import_tensorflow()
    x, y = proxy_batch(name, cfg.proxy_samples)
    return ModelSource(name=name, kind="zoo", tflite=tflite,
                       keras_model=get_zoo_model(name).load_pretrained(batch_size=1), proxy_x=x, proxy_y=y)
