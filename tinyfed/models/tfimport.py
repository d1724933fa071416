"""Import TensorFlow quietly, once, on the conversion side only.

TensorFlow's C++ start-up writes absl pre-initialisation warnings and a oneDNN notice straight
to file descriptor 2, ignoring ``TF_CPP_MIN_LOG_LEVEL``. A planning tool must not greet its
users with that, so the import runs with fd 2 captured; the text goes to the debug log, and
into the error if the import fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

from tinyfed.errors import ModelError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def native_stderr_to_log(what: str) -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 while the block runs; log it at debug level.

    The captured text is also put in the yielded list (after the block), so a caller can add it
    to an error message.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace").strip()
            if text:
                captured.append(text)
                log.debug("%s wrote:\n%s", what, text)


def import_tensorflow() -> ModuleType:
    """The ``tensorflow`` module, imported with its start-up chatter kept off the terminal."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    error: ImportError | None = None
    with native_stderr_to_log("tensorflow start-up"):
        try:
            import keras  # noqa: F401  (Keras 3 pulls in the TF backend)
            import tensorflow as tf
        except ImportError as exc:
            error = exc
    if error is not None:
        raise ModelError(
            f"TensorFlow is needed to convert or score a float model but cannot be imported ({error})",
            fix="pip install 'tinyfed[convert]' (tensorflow-cpu), or plan an int8 .tflite, which needs no TensorFlow",
        ) from error
    return tf
