"""har_cnn set up as the engine tests' short runs on simulated boards use it, written once."""

from __future__ import annotations

from typing import Any

import pytest

from tinyfed.host.setup import DeviceSpec, RunSetup, prepare_run

#: Windows each board keeps: enough for a few local epochs, few enough that provisioning is quick.
HAR_WINDOWS = 48


def har_subset_setup(tmp_path_factory: pytest.TempPathFactory, devices: list[DeviceSpec], **kw: Any) -> RunSetup:
    """har_cnn planned as FTTE trains it (w* behind a frozen fragment, ``subset``) for ``devices``,
    :data:`HAR_WINDOWS` windows each; ``kw`` goes to ``prepare_run`` (a partition, a start, nesting)."""
    return prepare_run("har_cnn", devices, "subset", work_dir=tmp_path_factory.mktemp("har"),
                       max_windows=HAR_WINDOWS, **kw)
