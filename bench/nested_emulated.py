"""A nested-subset run on emulated boards of two memory classes (issue 15, part D).

Boots ``--small`` QEMU mps2-an386 boards (the nRF52840's 256 KiB budget) and ``--large``
mps2-an386-large boards, writes a fleet file of their socket URLs, and runs ``tinyfed run --fleet
... --nested-subsets --core-budget 0.1`` from a fresh head to the demo's target (0.75), so each class
is provisioned with its own frozen fragment and training program and the summary shows each
class's update size. The run directory is ``--out``.

Run: ``.venv/bin/python bench/nested_emulated.py [--small 4] [--large 4] [--out runs/nested-emulated]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from tinyfed.commands.demo import DEMO_TARGET
from tinyfed.firmware_bridge.emulate.emulator import EmulatorFleet
from tinyfed.firmware_bridge.link.devices import write_device_fleet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=4)
    ap.add_argument("--large", type=int, default=4)
    ap.add_argument("--core-budget", default="0.1")
    ap.add_argument("--target-accuracy", default=str(DEMO_TARGET))
    ap.add_argument("--max-seconds", default="1800")
    ap.add_argument("--out", type=Path, default=Path("runs/nested-emulated"))
    args = ap.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        small = stack.enter_context(EmulatorFleet("mps2-an386", args.small))
        large = stack.enter_context(EmulatorFleet("mps2-an386-large", args.large))
        fleet = write_device_fleet(Path(tmp) / "fleet.toml", "nested-emulated",
                                   [("mps2-an386", small.urls), ("mps2-an386-large", large.urls)])
        config = Path(tmp) / "run.toml"
        config.write_text('model = "har_cnn"\nstrategy = "ftte"\nstart = "fresh-head"\n')
        cmd = [sys.executable, "-m", "tinyfed.cli", "run", "--fleet", str(fleet), "--config", str(config),
               "--nested-subsets", "--core-budget", args.core_budget, "--target-accuracy", args.target_accuracy,
               "--max-seconds", args.max_seconds, "--out", str(args.out)]
        print(" ".join(cmd[1:]), flush=True)
        sys.exit(subprocess.run(cmd, check=False).returncode)


if __name__ == "__main__":
    main()
